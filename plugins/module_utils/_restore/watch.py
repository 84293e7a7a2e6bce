# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Watching a recovery: PostgreSQL's log scanned for its refusals, pg_isready, the wait until the target is
reached (or refused), and pg_controldata.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target


# -- watching recovery -------------------------------------------------------------------------------------------------
LOG_PATTERNS = {
    "stopping": re.compile(r"recovery stopping .*"),
    "redo_done": re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)"),
    "last_tx": re.compile(r"last completed transaction was at log time (.+)"),
    "paused": re.compile(r"pausing at the end of recovery|recovery has paused"),
    "fatal": re.compile(r"(?:FATAL|PANIC):\s+(.*)"),
    "timeline": re.compile(r"selected new timeline ID: (\d+)"),
}


def scan_log(text):
    found = {}
    for line in text.splitlines():
        for key, pattern in LOG_PATTERNS.items():
            match = pattern.search(line)
            if match:
                if key == "fatal":
                    found.setdefault("fatal", []).append(match.group(1).strip())
                else:
                    found[key] = match.group(1) if match.groups() else match.group(0)
    return found


def log_since(path, offset):
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""


# what PostgreSQL answers while it is not ready for connections yet: keep waiting
STILL_STARTING = ("starting up", "not accepting connections", "not yet accepting connections",
                  "consistent recovery state", "shutting down", "in recovery mode")
CONNECT_GRACE = 20.0


def pg_isready(pg_bin, host, port):
    """``ping()`` for wait_for_recovery, by pg_isready (PQping: the server's answer, whatever its language):
    "accepting", "rejecting" (starting up, not consistent yet), "no-response", or None when it cannot tell."""

    def ping():
        argv = [os.path.join(pg_bin, "pg_isready"), "-q", "-t", "3", "-p", str(port)] + (["-h", host] if host else [])
        try:
            rc = subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode
        except (OSError, subprocess.TimeoutExpired):
            return None
        return {0: "accepting", 1: "rejecting", 2: "no-response"}.get(rc)

    return ping


def wait_for_recovery(connect, data_dir, log_file, log_offset=0, timeout=3600, poll=1.0, progress=None, ping=None):
    """Poll a server in recovery until it pauses at its target or finishes recovery (promoted); RestoreError when
    it stops instead (PostgreSQL refuses a target it cannot reach) or the timeout passes. ``connect`` returns a
    DB-API connection or raises. ``ping`` (pg_isready) tells a server still starting from one that refuses this
    connection (wrong socket or port, authentication), which is reported after CONNECT_GRACE seconds instead of at
    the timeout. Returns what was reached."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    last = {}
    seen_running = False
    refused_since = None
    for _poll in range(int(timeout / max(poll, 0.05)) + 2):
        if time.monotonic() > deadline:
            break
        try:
            conn = connect()
        except Exception as exc:  # noqa: BLE001 - not up yet, or stopped: the pid file tells
            text = str(exc).strip()
            if "psycopg2 is required" in text:
                raise restore_target.RestoreError(text) from None
            running = restore_datadir.postmaster_running(data_dir) is not None
            if not running and (seen_running or time.monotonic() - t0 > 15):
                found = scan_log(log_since(log_file, log_offset))
                reason = "; ".join(found.get("fatal", [])[-3:]) or text
                aside = (restore_datadir.read_state(data_dir) or {}).get("moved_aside")
                raise restore_target.RestoreError(
                    "PostgreSQL stopped during recovery: %s. It did not open at an earlier point; %s"
                    % (reason, "the data directory it replaced is untouched in %s" % aside if aside
                       else "nothing else was changed")) from None
            seen_running = seen_running or running
            answer = ping() if (running and ping) else None
            starting = answer == "rejecting" if answer else any(word in text for word in STILL_STARTING)
            if running and not starting:
                # up, but this connection is refused (wrong socket or port, authentication): say so now
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > CONNECT_GRACE:
                    raise restore_target.RestoreError(
                        "PostgreSQL runs and recovers, but the restore cannot connect to it to watch: %s. Check the "
                        "socket directory and port (restore_socket_dir, restore_port; login_unix_socket, "
                        "login_port) and that the user may connect locally; recovery goes on meanwhile (its log: "
                        "%s)" % (text, log_file or "the server log")) from None
            else:
                refused_since = None
            time.sleep(poll)
            continue
        seen_running = True
        refused_since = None
        try:
            cur = conn.cursor()
            cur.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                        "pg_last_xact_replay_timestamp()::text, "
                        "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END")
            in_recovery, replay_lsn, replay_time, pause = cur.fetchone()
            last = {"in_recovery": in_recovery, "replay_lsn": replay_lsn, "replay_time": replay_time,
                    "pause_state": pause}
            if not in_recovery:
                cur.execute("SELECT pg_current_wal_lsn()::text, "
                            "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
                current_lsn, timeline = cur.fetchone()
                found = scan_log(log_since(log_file, log_offset))
                return {"outcome": "promoted", "timeline": timeline, "current_lsn": current_lsn,
                        "recovered_to_lsn": found.get("redo_done"), "recovered_to_time": found.get("last_tx"),
                        "stopped": found.get("stopping"), "seconds": round(time.monotonic() - t0, 3)}
            if pause == "paused":
                found = scan_log(log_since(log_file, log_offset))
                cur.execute("SELECT timeline_id FROM pg_control_checkpoint()")
                return {"outcome": "paused", "timeline": cur.fetchone()[0], "recovered_to_lsn": replay_lsn,
                        "recovered_to_time": replay_time, "stopped": found.get("stopping"),
                        "seconds": round(time.monotonic() - t0, 3)}
        except Exception:  # noqa: BLE001 - the server is changing state; try again
            pass
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        if progress:
            progress(last)
        time.sleep(poll)
    raise restore_target.RestoreError(
        "recovery did not reach its target within %d s (last seen: %s); PostgreSQL is still "
        "replaying: look at its log, or raise the timeout" % (timeout, last))


def pg_controldata(pg_bin, data_dir):
    """The fields of pg_controldata as a dict ({} when the directory holds no cluster)."""
    try:
        out = subprocess.run([os.path.join(pg_bin, "pg_controldata"), "-D", data_dir], capture_output=True,
                             text=True, timeout=60, check=False, env=dict(os.environ, LC_ALL="C"))
    except OSError:
        return {}
    if out.returncode != 0:
        return {}
    fields = {}
    for line in out.stdout.splitlines():
        key, _sep, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields
