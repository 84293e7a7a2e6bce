# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving on the server side: the settings that turn it on (ALTER SYSTEM, compared after normalisation) and
the archiver's status (pg_stat_archiver, segments waiting, lag, an estimate of the current RPO).

Private to the collection; plain Python. The pure functions (normalise, plan, archive_status, ...) take plain data so
unit tests call them directly; ``run()`` is the one call the module makes.
"""

from __future__ import annotations

import datetime

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import settings as pg_settings
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

# What state=present manages, in the order the SQL runs. archive_library is kept empty: PostgreSQL 15 ignores
# archive_command while a library is set.
PRESENT_SETTINGS = ("wal_level", "max_wal_senders", "archive_mode", "archive_library", "archive_command",
                    "archive_timeout", "restore_command")
# What state=absent sets. archive_timeout goes back to 0 too: the checkpointer forces segment switches on
# archive_timeout whether or not anything archives them.
ABSENT_SETTINGS = {"archive_mode": "off", "archive_command": "", "archive_timeout": 0}
STATUS_SETTINGS = ("archive_mode", "archive_timeout", "wal_segment_size")

# archive_timeout derived from the RPO target: half of it, so the forced segment still has the other half to reach
# the archive (archive_command, and a retry round if it failed once), never under the floor: every forced switch
# ships a whole segment (16 MiB by default) however little was written.
ARCHIVE_TIMEOUT_FLOOR = 30
MIN_RPO_SECONDS = 2 * ARCHIVE_TIMEOUT_FLOOR
# A segment's long page header: an insert position at most this far into the segment after the last archived one
# means nothing was written since that segment was switched out.
SEGMENT_HEADER_BYTES = 40
# What pg_settings shows for archive_command while archive_mode is off.
ARCHIVE_COMMAND_HIDDEN = "(disabled)"


# -- what to ask for ------------------------------------------------------------------------------------------------
def derive_archive_timeout(rpo_seconds):
    """archive_timeout (seconds) for an RPO target: half of it, at least ARCHIVE_TIMEOUT_FLOOR."""
    if rpo_seconds is None or int(rpo_seconds) < MIN_RPO_SECONDS:
        raise pg_settings.SettingError(
            "rpo_seconds=%s: WAL archiving cannot promise an RPO under %d s without forcing a %s switch every few "
            "seconds; use synchronous replication for that, or set rpo_seconds to %d or more"
            % (rpo_seconds, MIN_RPO_SECONDS, "segment", MIN_RPO_SECONDS))
    return max(ARCHIVE_TIMEOUT_FLOOR, int(rpo_seconds) // 2)


def desired_settings(params):
    """``(desired, notes)``: the raw values to ensure, by setting name, for the module's parameters."""
    notes = []
    if params.get("state", "present") == "absent":
        return dict(ABSENT_SETTINGS), notes
    if params.get("archive_command") is None:
        raise pg_settings.SettingError(
            "archive_command is required with state=present (for example '/usr/local/bin/immersiverse-dr-wal push "
            "%p', installed by the wal_archive role)")
    if not str(params["archive_command"]).strip():
        raise pg_settings.SettingError(
            "archive_command is empty: that archives nothing; use state=absent to turn archiving off")
    if params.get("archive_timeout") is not None and str(params["archive_timeout"]).strip() != "":
        archive_timeout = params["archive_timeout"]
    else:
        archive_timeout = derive_archive_timeout(params.get("rpo_seconds"))
        notes.append("archive_timeout=%ds derived from rpo_seconds=%s" % (archive_timeout, params.get("rpo_seconds")))
    archive_mode = pg_settings.normalise(params.get("archive_mode", "on"),
                                         {"name": "archive_mode", "vartype": "enum", "enumvals": ["always", "on",
                                                                                                  "off"]})
    if archive_mode not in ("on", "always"):
        raise pg_settings.SettingError(
            "archive_mode=%s with state=present: use on or always (state=absent turns archiving off)"
            % archive_mode)
    desired = {
        "wal_level": params.get("wal_level") or "replica",
        "max_wal_senders": params.get("max_wal_senders", 10),
        "archive_mode": archive_mode,
        "archive_library": "",
        "archive_command": params["archive_command"],
        "archive_timeout": archive_timeout,
    }
    if params.get("restore_command") is not None:
        desired["restore_command"] = params["restore_command"]
    return desired, notes


def plan(desired, rows, file_values):
    """Which settings to change, and what the server then still needs.

    ``desired``: raw values by name. ``rows``: pg_settings rows by name (name, setting, unit, vartype, context,
    enumvals, boot_val, source, pending_restart). ``file_values``: the last pg_file_settings value by name.

    Returns {"changes": [{name, before, after, context, sql}], "before": {...}, "after": {...}, "restart": [names],
    "reload": [names]}. ``before``/``after`` are the configured values, rendered. A setting is to change when its
    configured value does not satisfy the desired one, so a re-run before the restart changes nothing. ``restart``
    / ``reload`` list the managed settings whose running value still differs from the configured one after the
    changes (or that pg_settings already marks pending_restart), by context.
    """
    result = {"changes": [], "before": {}, "after": {}, "restart": [], "reload": []}
    for name in desired:
        if name not in rows:
            raise pg_settings.SettingError("the server has no setting %s (is it PostgreSQL 15 or later?)" % name)
        row = rows[name]
        want = pg_settings.normalise(desired[name], row)
        configured = pg_settings.normalise(pg_settings.configured_value(row, file_values.get(name)), row)
        running = pg_settings.normalise(row["setting"], row)
        result["before"][name] = pg_settings.render(configured, row)
        after = configured
        if not pg_settings.satisfies(name, configured, want):
            if row.get("source") in ("command line", "environment variable"):
                raise pg_settings.SettingError(
                    "%s is set on the server's %s (%s), which overrides ALTER SYSTEM; remove it there first"
                    % (name, row["source"], pg_settings.render(running, row)))
            after = want
            text = pg_settings.render(want, row)
            result["changes"].append({"name": name, "before": pg_settings.render(configured, row), "after": text,
                                      "context": row["context"], "sql": pg_settings.alter_system_sql(name, text)})
        result["after"][name] = pg_settings.render(after, row)
        if name == "archive_command" and row["setting"] == ARCHIVE_COMMAND_HIDDEN:
            # Not shown while archiving is off; it takes effect with the restart that turns archive_mode on.
            running = after
        if running != after or row.get("pending_restart"):
            if row["context"] == "postmaster" or row.get("pending_restart"):
                result["restart"].append(name)
            else:
                result["reload"].append(name)
    return result


# -- status ---------------------------------------------------------------------------------------------------------
def _seconds(later, earlier):
    return round(max(0.0, (later - earlier).total_seconds()), 3)


def _iso(value):
    return value.isoformat() if isinstance(value, (datetime.datetime, datetime.date)) else value


def archive_status(archiver, ready, position, now, archive_mode, archive_timeout, in_recovery=False,
                   segment_size=wal_naming.DEFAULT_SEGMENT_SIZE):
    """The archiver's status from plain data.

    ``archiver``: the pg_stat_archiver row. ``ready``: ``[(file name without .ready, modification time)]`` from
    pg_ls_archive_statusdir(). ``position``: ``{"lsn", "timeline"}`` where WAL is written (primary: the insert
    position; standby: the received/replayed position). ``archive_timeout`` in seconds.

    - lag_segments: completed segments not yet archived: insert segment - last archived segment - 1 on the same
      timeline (the segment being written cannot be archived yet); when the last archived file is not a plain
      segment of this timeline (nothing archived yet, a .history/.backup/.partial file, another timeline): the
      number of segments waiting (.ready).
    - lag_seconds: age of the oldest .ready file (how long the oldest waiting file has waited); 0 when none waits.
    - rpo_seconds (estimate of the WAL that exists only on this host, in seconds): the age of the oldest .ready file
      when one waits (a lower bound: that segment's first record is older than its completion); otherwise 0 when
      nothing was written since the last archived segment was switched out; otherwise the time since the last
      archived segment, at most archive_timeout (the checkpointer forces a switch once WAL is that old); None when
      archiving is not active here or nothing was ever archived and archive_timeout is 0.
    """
    active = archive_mode == "always" or (archive_mode == "on" and not in_recovery)
    ready = sorted(ready, key=lambda item: (item[1], item[0]))
    ready_segments = sorted(n for n, _m in ready if wal_naming.SEGMENT_RE.match(n))
    oldest = ready[0] if ready else None
    last = archiver.get("last_archived_wal")
    timeline, current_segno = None, None
    if position and position.get("lsn"):
        timeline = position.get("timeline")
        current_segno = wal_naming.segment_number(position["lsn"], segment_size)
    last_segno = None
    if last and wal_naming.SEGMENT_RE.match(last) and timeline is not None:
        last_tl, segno = wal_naming.parse_segment(last, segment_size)
        if last_tl == timeline:
            last_segno = segno
    if last_segno is not None and current_segno is not None:
        lag_segments, basis = max(0, current_segno - last_segno - 1), "insert_segment"
    else:
        lag_segments, basis = len(ready_segments), "ready_segments"
    lag_seconds = _seconds(now, oldest[1]) if oldest else 0.0
    status = {
        "archiving_active": active,
        "archive_mode": archive_mode,
        "archive_timeout": archive_timeout,
        "in_recovery": in_recovery,
        "archived_count": archiver.get("archived_count"),
        "last_archived_wal": last,
        "last_archived_time": _iso(archiver.get("last_archived_time")),
        "failed_count": archiver.get("failed_count"),
        "last_failed_wal": archiver.get("last_failed_wal"),
        "last_failed_time": _iso(archiver.get("last_failed_time")),
        "stats_reset": _iso(archiver.get("stats_reset")),
        "ready_count": len(ready),
        "ready_segments": len(ready_segments),
        "oldest_ready_wal": oldest[0] if oldest else None,
        "oldest_ready_time": _iso(oldest[1]) if oldest else None,
        "current_lsn": position.get("lsn") if position else None,
        "current_wal": (wal_naming.segment_name(timeline, current_segno, segment_size)
                        if timeline and current_segno is not None else None),
        "lag_segments": lag_segments,
        "lag_segments_basis": basis,
        "lag_seconds": lag_seconds,
    }
    last_time = archiver.get("last_archived_time")
    if not active:
        rpo, rpo_basis = None, "archiving_inactive"
    elif oldest:
        rpo, rpo_basis = lag_seconds, "oldest_ready"
    elif (last_segno is not None and current_segno == last_segno + 1
          and wal_naming.lsn_to_int(position["lsn"]) % segment_size <= SEGMENT_HEADER_BYTES):
        rpo, rpo_basis = 0.0, "nothing_unarchived"
    elif last_time is not None:
        since = _seconds(now, last_time)
        if archive_timeout and archive_timeout > 0 and since > archive_timeout:
            rpo, rpo_basis = float(archive_timeout), "archive_timeout"
        else:
            rpo, rpo_basis = since, "since_last_archived"
    elif archive_timeout and archive_timeout > 0:
        rpo, rpo_basis = float(archive_timeout), "archive_timeout"
    else:
        rpo, rpo_basis = None, "unknown"
    status["rpo_seconds"] = rpo
    status["rpo_basis"] = rpo_basis
    return status


def gather_status(conn, in_recovery):
    """archive_status() for a live server (needs a superuser or pg_monitor for pg_ls_archive_statusdir)."""
    rows = pg_settings.read_settings(conn, STATUS_SETTINGS)
    archive_timeout = pg_settings.normalise(rows["archive_timeout"]["setting"], rows["archive_timeout"])
    size_row = rows["wal_segment_size"]
    segment_size = int(size_row["setting"]) * (pg_settings.unit_scale(size_row["unit"])[1] if size_row.get(
        "unit") else 1)
    archiver = pg_connection.query(conn, """
        SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
               last_failed_time, stats_reset FROM pg_stat_archiver
    """)[0]
    ready = [(r["name"][:-len(".ready")], r["modification"]) for r in pg_connection.query(
        conn, "SELECT name, modification FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready'")]
    if in_recovery:
        pos = pg_connection.query(conn, """
            SELECT COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text AS lsn,
                   COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                            (SELECT timeline_id FROM pg_control_checkpoint())) AS timeline,
                   clock_timestamp() AS now
        """)[0]
    else:
        pos = pg_connection.query(conn, """
            SELECT pg_current_wal_insert_lsn()::text AS lsn,
                   ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int AS timeline,
                   clock_timestamp() AS now
        """)[0]
    return archive_status(archiver, ready, {"lsn": pos["lsn"], "timeline": pos["timeline"]}, pos["now"],
                          rows["archive_mode"]["setting"], archive_timeout, in_recovery=in_recovery,
                          segment_size=segment_size)


def run(conn, params, check_mode=False, reload_timeout=10):
    """Ensure the archiving settings (unless status_only) and report the archiver's status.

    Returns a dict of the module's return values (plus "warnings" for the module to emit).
    """
    priv = pg_settings.privileges(conn)
    status_only = bool(params.get("status_only"))
    result = {"changed": False, "warnings": [], "role": "standby" if priv["in_recovery"] else "primary",
              "system_identifier": priv["system_identifier"]}
    if not (priv["superuser"] or priv["pg_monitor"]):
        raise pg_settings.SettingError(
            "role %s can read neither the archive status directory nor the archiver statistics it needs: connect "
            "as a superuser, or GRANT pg_monitor TO %s" % (priv["user"], priv["user"]))
    if not status_only:
        if not priv["superuser"]:
            raise pg_settings.SettingError(
                "role %s is not a superuser: ALTER SYSTEM and pg_file_settings need one (use status_only=true "
                "to only read the status as a pg_monitor member)" % priv["user"])
        desired, notes = desired_settings(params)
        if priv["in_recovery"] and params.get("state", "present") == "present" and \
                str(desired["archive_mode"]).lower() != "always":
            # Configured like the primary on purpose: a promoted standby must archive from its first new segment.
            result["warnings"].append(
                "this server is a standby: with archive_mode=%s it archives nothing until it is promoted, then it "
                "archives like the primary (archive_mode=always archives on the standby too)" % desired["archive_mode"])
        names = list(desired)
        rows = pg_settings.read_settings(conn, names)
        steps = plan(desired, rows, pg_settings.read_file_settings(conn, names))
        sql = [c["sql"] for c in steps["changes"]]
        if not check_mode:
            for statement in sql:
                pg_connection.query(conn, statement)
        will_reload = bool(params.get("reload", True)) and bool(steps["reload"]) and not steps["restart"]
        reloaded = False
        if will_reload:
            sql.append("SELECT pg_reload_conf()")
            if not check_mode:
                pg_connection.query(conn, "SELECT pg_reload_conf()")
                pg_settings.wait_for_reload(conn, steps["reload"], steps["after"], reload_timeout)
                reloaded = True
        if steps["restart"] and steps["reload"]:
            notes.append("not reloaded for %s: the restart %s needs applies them too"
                         % (", ".join(steps["reload"]), ", ".join(steps["restart"])))
        result.update({
            "changed": bool(steps["changes"]) or will_reload,
            "changes": [{k: c[k] for k in ("name", "before", "after", "context")} for c in steps["changes"]],
            "settings": steps["after"],
            "restart_required": bool(steps["restart"]),
            "restart_settings": steps["restart"],
            "reload_required": bool(steps["reload"]) and not will_reload,
            "reload_settings": [] if will_reload else steps["reload"],
            "reloaded": reloaded,
            "executed": [] if check_mode else sql,
            "notes": notes,
            "diff": {"before": steps["before"], "after": steps["after"]},
        })
        if check_mode:
            result["would_run"] = sql
        timeout = pg_settings.normalise(desired["archive_timeout"], rows["archive_timeout"])
        rpo = params.get("rpo_seconds")
        if params.get("state", "present") == "present" and rpo and timeout and timeout >= rpo:
            result["warnings"].append(
                "archive_timeout=%ds is not below rpo_seconds=%ds: an idle database may hold unarchived WAL longer "
                "than the RPO target" % (timeout, rpo))
    result["status"] = gather_status(conn, priv["in_recovery"])
    if priv["in_recovery"] and not result["status"]["archiving_active"]:
        result["warnings"].append("this standby archives nothing (archive_mode=%s); its status shows the primary's "
                                  "WAL only as received" % result["status"]["archive_mode"])
    return result
