# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connection and facts: the engine behind the detect phase.

Private to the collection (leading underscore): modules import it, users do not. Plain Python, importable and
testable without Ansible. Passwords reach libpq as a connection keyword, never on a command line.
"""

from __future__ import annotations

import json
import os
import re
import time
from urllib.parse import unquote, urlsplit

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal

try:
    import psycopg2
    import psycopg2.extras

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the module
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = exc


class PgError(_errors.DrError):
    """A PostgreSQL problem the operator can act on; the message says what to do next."""


def connection_argument_spec():
    """The connection options every module of the collection shares (see doc_fragments/postgres.py)."""
    return dict(
        login_host=dict(type="str", default=""),
        login_port=dict(type="int", default=5432),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", default="", no_log=True),
        login_unix_socket=dict(type="str", default=""),
        login_db=dict(type="str", default="postgres"),
        connect_timeout=dict(type="int", default=5),
        ssl_mode=dict(type="str", default="prefer",
                      choices=["allow", "disable", "prefer", "require", "verify-ca", "verify-full"]),
    )


def connect_kwargs(params):
    """Map module parameters to psycopg2.connect() keywords. A unix socket directory wins over a host."""
    kw = {
        "dbname": params.get("login_db") or "postgres",
        "user": params.get("login_user") or "postgres",
        "port": params.get("login_port") or 5432,
        "connect_timeout": params.get("connect_timeout") or 5,
        "application_name": "immersiverse.dr",
    }
    host = params.get("login_unix_socket") or params.get("login_host")
    if host:
        kw["host"] = host
    if params.get("login_password"):
        kw["password"] = params["login_password"]
    if params.get("ssl_mode") and not params.get("login_unix_socket"):
        kw["sslmode"] = params["ssl_mode"]
    return kw


def describe_target(params):
    """Where we connect, for error messages (never the password)."""
    where = params.get("login_unix_socket") or params.get("login_host") or "local socket"
    return "%s@%s:%s/%s" % (params.get("login_user") or "postgres", where, params.get("login_port") or 5432,
                            params.get("login_db") or "postgres")


def connect(params):
    if not HAS_PSYCOPG2:
        raise PgError("psycopg2 is required on the host the module runs on (Debian: apt install python3-psycopg2)")
    try:
        conn = psycopg2.connect(**connect_kwargs(params))
    except psycopg2.OperationalError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        hint = "is PostgreSQL running and reachable, and are the credentials right?"
        if "password authentication failed" in msg:
            hint = "the password is wrong for this user (check the vault / pgpass entry)"
        elif "timeout" in msg or "Connection refused" in msg or "could not connect" in msg:
            hint = "the server is down or unreachable from this host (check the region, firewall and port)"
        raise PgError("cannot connect to %s: %s; %s" % (describe_target(params), msg, hint)) from None
    conn.autocommit = True
    return conn


def query(conn, sql, args=None):
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, args)
        if cur.description is None:
            return []
        return [dict(r) for r in cur.fetchall()]


_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def lsn_to_int(lsn):
    """'16/B374D848' -> 0x16B374D848. None stays None. (WAL arithmetic lives in _wal.)"""
    return None if lsn is None else _wal.lsn_to_int(lsn)


int_to_lsn = _wal.int_to_lsn


def timeline_of_walfile(name):
    """The timeline of a WAL file name ('0000000200000000000000A1' -> 2)."""
    if not re.match(r"^[0-9A-F]{24}$", name or ""):
        raise ValueError("not a WAL segment name: %r" % (name,))
    return int(name[:8], 16)


def _iso(value):
    return value.isoformat() if value is not None else None


def _conninfo_pairs(conninfo):
    """The keyword/value pairs of a libpq key/value conninfo, tokenised as libpq does (values in single quotes,
    backslash escapes, spaces around '='). None when it is malformed."""
    pairs, i, n = {}, 0, len(conninfo)
    while i < n:
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and conninfo[i] != "=" and not conninfo[i].isspace():
            i += 1
        key = conninfo[start:i]
        while i < n and conninfo[i].isspace():
            i += 1
        if not key or i >= n or conninfo[i] != "=":
            return None
        i += 1
        while i < n and conninfo[i].isspace():
            i += 1
        value, quoted = [], i < n and conninfo[i] == "'"
        i += 1 if quoted else 0
        while i < n and (quoted or not conninfo[i].isspace()):
            if conninfo[i] == "\\" and i + 1 < n:
                value.append(conninfo[i + 1])
                i += 2
                continue
            if quoted and conninfo[i] == "'":
                break
            value.append(conninfo[i])
            i += 1
        if quoted:
            if i >= n:
                return None  # unterminated quote
            i += 1
        pairs[key] = "".join(value)
    return pairs


def upstream_of(conninfo):
    """{"host", "port"} of a libpq conninfo (primary_conninfo; key/value or URI), or None when it names no single
    host (none, several, or a string libpq would not parse). Never anything else of it: the string may hold a
    password."""
    if not conninfo:
        return None
    if re.match(r"^postgres(?:ql)?://", conninfo):
        try:
            parsed = urlsplit(conninfo)
            host, port = unquote(parsed.hostname or ""), str(parsed.port or "")
        except ValueError:
            return None
    else:
        pairs = _conninfo_pairs(conninfo)
        if pairs is None:
            return None
        host, port = pairs.get("host", ""), pairs.get("port", "")
    if not host or "," in host or "," in port:
        return None
    return {"host": host, "port": int(port) if port.isdigit() else 5432}


def gather_facts(conn):
    """What the detect phase needs to know about one PostgreSQL instance, as plain JSON-able data."""
    # a server that accepts connections but hangs (a stuck disk) must not hold a failover's detect phase forever
    query(conn, "SET statement_timeout = '15s'")
    base = query(conn, """
        SELECT current_setting('server_version') AS server_version,
               current_setting('server_version_num')::int AS server_version_num,
               (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier,
               pg_is_in_recovery() AS in_recovery,
               (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline,
               (SELECT min_recovery_end_timeline FROM pg_control_recovery()) AS recovery_timeline,
               pg_postmaster_start_time() AS started_at,
               now() AS now,
               current_setting('data_directory') AS data_directory,
               current_setting('wal_level') AS wal_level,
               current_setting('archive_mode') AS archive_mode,
               current_setting('max_wal_senders')::int AS max_wal_senders,
               current_setting('default_transaction_read_only') AS default_transaction_read_only,
               current_setting('synchronous_standby_names') AS synchronous_standby_names,
               CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')  -- superuser-only setting
                    THEN current_setting('primary_conninfo') END AS primary_conninfo
    """)[0]
    facts = {
        "server_version": base["server_version"],
        "server_version_num": base["server_version_num"],
        "system_identifier": base["system_identifier"],
        "in_recovery": base["in_recovery"],
        "role": "standby" if base["in_recovery"] else "primary",
        "started_at": _iso(base["started_at"]),
        "data_directory": base["data_directory"],
        "settings": {k: base[k] for k in ("wal_level", "archive_mode", "max_wal_senders",
                                          "default_transaction_read_only", "synchronous_standby_names")},
        # Where a standby is told to stream from (primary_conninfo's host and port only: never the whole string,
        # which may hold a password). Known also while its receiver is down: the failover reads it to tell the
        # dead primary from a dead standby.
        "upstream": upstream_of(base["primary_conninfo"]) if base["in_recovery"] else None,
    }
    if base["in_recovery"]:
        rec = query(conn, """
            SELECT pg_last_wal_receive_lsn()::text AS receive_lsn,
                   pg_last_wal_replay_lsn()::text AS replay_lsn,
                   pg_last_xact_replay_timestamp() AS last_replay_at,
                   pg_is_wal_replay_paused() AS replay_paused
        """)[0]
        receiver = query(conn, """
            SELECT status, received_tli, sender_host, sender_port, slot_name,
                   latest_end_lsn::text AS latest_end_lsn, last_msg_receipt_time
              FROM pg_stat_wal_receiver
        """)
        wr = receiver[0] if receiver else None
        facts.update({
            # The newest of: what the receiver streams, the minimum recovery point's (advances with replay), the
            # last restartpoint's. A standby whose receiver is gone would otherwise report a stale checkpoint's.
            "timeline": max(t for t in ((wr or {}).get("received_tli"), base["recovery_timeline"],
                                        base["checkpoint_timeline"]) if t),
            "current_lsn": rec["replay_lsn"],
            "receive_lsn": rec["receive_lsn"],
            "replay_lsn": rec["replay_lsn"],
            "last_replay_at": _iso(rec["last_replay_at"]),
            "replay_paused": rec["replay_paused"],
            "replay_lag_bytes": _diff(rec["receive_lsn"], rec["replay_lsn"]),
            "wal_receiver": None if wr is None else {
                "status": wr["status"], "sender_host": wr["sender_host"], "sender_port": wr["sender_port"],
                "slot_name": wr["slot_name"], "latest_end_lsn": wr["latest_end_lsn"],
                "last_msg_receipt_time": _iso(wr["last_msg_receipt_time"]),
            },
            "replication": [],
        })
    else:
        cur = query(conn, "SELECT pg_current_wal_lsn()::text AS lsn, pg_walfile_name(pg_current_wal_lsn()) AS f")[0]
        repl = query(conn, """
            SELECT application_name, client_addr::text AS client_addr, state, sync_state,
                   sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
                   EXTRACT(epoch FROM replay_lag)::float AS replay_lag_seconds
              FROM pg_stat_replication ORDER BY application_name
        """)
        facts.update({
            "timeline": timeline_of_walfile(cur["f"]),
            "current_lsn": cur["lsn"],
            "receive_lsn": None,
            "replay_lsn": None,
            "last_replay_at": None,
            "replay_paused": False,
            "replay_lag_bytes": 0,
            "wal_receiver": None,
            "replication": repl,
        })
    arch = query(conn, """
        SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
               last_failed_time FROM pg_stat_archiver
    """)[0]
    facts["archiver"] = {k: (_iso(v) if k.endswith("_time") else v) for k, v in arch.items()}
    return facts


# Written by the isolate phase (and the lab's out-of-band fence) beside start.conf; removed when the host is made a
# standby again. It says the host was a primary that must not serve: the rejoin reads it.
FENCE_MARKER = "immersiverse-dr-fence.json"


def read_fence(conf_dir):
    """The fence state of a Debian cluster from its configuration directory (/etc/postgresql/<v>/<cluster>).

    start_conf: the first word of start.conf that is not a comment (auto, manual, disabled) or None.
    marker: the fence marker's content (a dict) or None. fenced: a marker is present.
    """
    start = None
    try:
        with open(os.path.join(conf_dir, "start.conf"), encoding="utf-8") as fh:
            for line in fh:
                word = line.split("#", 1)[0].strip()
                if word:
                    start = word
                    break
    except OSError:
        pass
    marker = None
    try:
        with open(os.path.join(conf_dir, FENCE_MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        if not isinstance(marker, dict):
            marker = {"unreadable": "not a JSON object"}
    except FileNotFoundError:
        marker = None
    except (OSError, ValueError) as exc:
        marker = {"unreadable": str(exc)}
    return {"start_conf": start, "marker": marker, "fenced": marker is not None}


# "disabled", not "manual": pg_ctlcluster (and so systemd's postgresql@ unit, at boot or by hand) refuses to start a
# disabled cluster; "manual" only skips the start at boot and would let an enabled unit start a fenced primary.
START_FENCED = "# fenced by immersiverse.dr: this host must not serve until it is made a standby again\ndisabled\n"
START_SERVING = "# immersiverse.dr: started at boot\nauto\n"


def set_fence(conf_dir, fenced, marker=None, check_mode=False):
    """Fence (start.conf ``disabled`` and the marker) or unfence (``auto``, no marker) a Debian cluster.

    Idempotent and compared by meaning: a start.conf that already says ``disabled`` (whoever wrote it) is left alone;
    an existing marker is kept (the first fence's reason and time survive re-runs). Files are replaced atomically and
    owned like the configuration directory. Returns {"changed", "actions", "before", "after"} (read_fence() each).
    """
    # Imported here, not at the top: _recovery -> _archiving -> _pg would make a cycle.
    from ansible_collections.immersiverse.dr.plugins.module_utils import _recovery

    if not os.path.isdir(conf_dir):
        raise PgError("%s is not a directory: is the cluster created (pg_lsclusters) and the path right?" % conf_dir)
    before = read_fence(conf_dir)
    want_start = "disabled" if fenced else "auto"
    actions = []
    if before["start_conf"] != want_start:
        actions.append("start.conf: %s -> %s" % (before["start_conf"], want_start))
    if fenced and before["marker"] is None:
        actions.append("fence marker written")
    if not fenced and before["marker"] is not None:
        actions.append("fence marker removed")
    if actions and not check_mode:
        info = os.stat(conf_dir)
        start = os.path.join(conf_dir, "start.conf")
        if before["start_conf"] != want_start:
            _recovery.write_file(start, (START_FENCED if fenced else START_SERVING).encode(), info.st_uid,
                                 info.st_gid, 0o644)
        marker_path = os.path.join(conf_dir, FENCE_MARKER)
        if fenced and before["marker"] is None:
            _recovery.write_file(marker_path, (json.dumps(marker or {}, indent=2, sort_keys=True) + "\n").encode(),
                                 info.st_uid, info.st_gid, 0o644)
        if not fenced and before["marker"] is not None:
            _recovery.remove_file(marker_path)
    after = read_fence(conf_dir) if not check_mode else {
        "start_conf": want_start, "marker": (before["marker"] or marker or {}) if fenced else None, "fenced": fenced}
    return {"changed": bool(actions), "actions": actions, "before": before, "after": after}


def _diff(a, b):
    if a is None or b is None:
        return None
    return max(0, lsn_to_int(a) - lsn_to_int(b))


def wait_for_replay(conn, lsn, seconds, step=0.05):
    """Wait until the standby has replayed up to ``lsn`` (each check a short transaction of its own, so recovery is
    never held up by this session). Returns the replay LSN reached; raises PgError when ``seconds`` pass first."""
    target = lsn_to_int(lsn)
    deadline = time.monotonic() + max(0.0, float(seconds))
    while True:
        now = query(conn, "SELECT pg_last_wal_replay_lsn()::text AS lsn")[0]["lsn"]
        if now is not None and lsn_to_int(now) >= target:
            return now
        if time.monotonic() >= deadline:
            raise PgError("the standby replayed WAL only up to %s, not %s, within %s s; nothing was promoted. Check "
                          "its replication (pg_stat_wal_receiver) and log before trying again" % (now, lsn, seconds))
        time.sleep(step)


def promote(conn, wait_seconds=60, check_mode=False, replay_lsn=None, catchup_seconds=30):
    """Promote a standby and wait until it accepts writes.

    replay_lsn: promote only once the standby has replayed WAL up to this LSN (a switchover passes the old primary's
    shutdown checkpoint, so that nothing it acknowledged is lost); PgError after catchup_seconds, nothing promoted.

    Returns {"changed", "promoted", "before", "after"} where before/after are gather_facts() results. A server that
    is already a primary is left alone (changed False). In check mode nothing is run: pg_promote is not
    transactional, so it cannot be tried and rolled back.
    """
    before = gather_facts(conn)
    if not before["in_recovery"]:
        return {"changed": False, "promoted": False, "before": before, "after": before}
    if check_mode:
        return {"changed": True, "promoted": False, "before": before, "after": None,
                "would_run": "SELECT pg_promote(false), then pg_is_in_recovery() until false (%d s at most)"
                % wait_seconds}
    if replay_lsn:
        before["replayed_to"] = wait_for_replay(conn, replay_lsn, catchup_seconds)
    # pg_promote(wait => true) looks ten times a second; the failover's RTO waits on this, so signal and look
    # every 10 ms here instead (each look a short query of its own)
    if not query(conn, "SELECT pg_promote(false) AS signalled")[0]["signalled"]:
        raise PgError("pg_promote could not signal the postmaster; nothing was promoted. Check the server's log.")
    deadline = time.monotonic() + max(1, int(wait_seconds))
    while query(conn, "SELECT pg_is_in_recovery() AS r")[0]["r"]:
        if time.monotonic() >= deadline:
            raise PgError("the promotion was requested and had not finished within %d s: the server is still in "
                          "recovery but MAY STILL PROMOTE when its replay ends. Treat it as promoting: fence it or "
                          "watch it (its log says why it waits, for example a missing WAL segment) before failing "
                          "over to another region." % wait_seconds)
        time.sleep(0.01)
    after = gather_facts(conn)
    if after["in_recovery"]:
        raise PgError("pg_promote returned but the server is still in recovery; check its log")
    return {"changed": True, "promoted": True, "before": before, "after": after}


# The tasks behind the pg_facts and pg_promote modules, as plain functions of (params, check_mode, diff) that return
# the module's result (``failed`` and ``msg`` when it fails). The modules call them; so do their action plugins, which
# run them on the target over the task's connection without the module wrapper (plugins/plugin_utils/_remote.py).
MISSING_PSYCOPG2 = "psycopg2 is required on the host the module runs on (Debian: apt install python3-psycopg2)"


def facts_argument_spec():
    spec = connection_argument_spec()
    spec.update(fail_on_unreachable=dict(type="bool", default=True), fence_dir=dict(type="path"))
    return spec


def facts_task(params, check_mode=False, diff=False):
    """pg_facts: the instance's facts and ``reachable``; its fence state (start.conf, marker) when fence_dir is
    given, read even when the server is down. Unreachable: failed, or ``reachable: false`` and ``error`` when
    fail_on_unreachable is false."""
    del check_mode, diff  # reads only
    if not HAS_PSYCOPG2:
        return {"failed": True, "msg": MISSING_PSYCOPG2}
    fence = {"fence": read_fence(params["fence_dir"])} if params.get("fence_dir") else {}
    try:
        conn = connect(params)
        try:
            facts = gather_facts(conn)
        finally:
            conn.close()
    except _errors.ENGINE_ERRORS as exc:
        if params.get("fail_on_unreachable", True):
            return dict(fence, failed=True, msg=_errors.message(exc), reachable=False)
        return dict(fence, changed=False, reachable=False, error=_errors.message(exc))
    return dict(facts, changed=False, reachable=True, **fence)


def promote_argument_spec():
    spec = connection_argument_spec()
    spec.update(wait_seconds=dict(type="int", default=60), replay_lsn=dict(type="str"),
                catchup_seconds=dict(type="float", default=30))
    return spec


def promote_task(params, check_mode=False, diff=False):
    """pg_promote: promote when in recovery (after replaying up to replay_lsn, when given) and wait for writes."""
    if not HAS_PSYCOPG2:
        return {"failed": True, "msg": MISSING_PSYCOPG2}
    try:
        conn = connect(params)
        try:
            res = promote(conn, params["wait_seconds"], check_mode, replay_lsn=params.get("replay_lsn"),
                          catchup_seconds=params["catchup_seconds"])
        finally:
            conn.close()
    except _errors.ENGINE_ERRORS as exc:
        return {"failed": True, "msg": _errors.message(exc)}
    after = res["after"] or {}
    result = {"changed": res["changed"], "promoted": res["promoted"], "timeline_before": res["before"]["timeline"],
              "timeline": after.get("timeline"), "current_lsn": after.get("current_lsn")}
    if "would_run" in res:
        result["would_run"] = res["would_run"]
    if diff:
        result["diff"] = {"before": {"role": res["before"]["role"]},
                          "after": {"role": "primary" if res["changed"] else res["before"]["role"]}}
    return result
