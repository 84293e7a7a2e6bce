# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Promoting a standby: wait until it has replayed what it was given, then ``pg_promote`` and wait until it
accepts writes; a check-mode call says what it would do.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import time

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts


def wait_for_replay(conn, lsn, seconds, step=0.05):
    """Wait until the standby has replayed up to ``lsn`` (each check a short transaction of its own, so recovery is
    never held up by this session). Returns the replay LSN reached; raises PgError when ``seconds`` pass first."""
    target = pg_connection.lsn_to_int(lsn)
    deadline = time.monotonic() + max(0.0, float(seconds))
    while True:
        now = pg_connection.query(conn, "SELECT pg_last_wal_replay_lsn()::text AS lsn")[0]["lsn"]
        if now is not None and pg_connection.lsn_to_int(now) >= target:
            return now
        if time.monotonic() >= deadline:
            raise pg_connection.PgError(
                "the standby replayed WAL only up to %s, not %s, within %s s; nothing was promoted. Check "
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
    before = pg_facts.gather_facts(conn)
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
    if not pg_connection.query(conn, "SELECT pg_promote(false) AS signalled")[0]["signalled"]:
        raise pg_connection.PgError(
            "pg_promote could not signal the postmaster; nothing was promoted. Check the server's log.")
    deadline = time.monotonic() + max(1, int(wait_seconds))
    while pg_connection.query(conn, "SELECT pg_is_in_recovery() AS r")[0]["r"]:
        if time.monotonic() >= deadline:
            raise pg_connection.PgError(
                "the promotion was requested and had not finished within %d s: the server is still in "
                "recovery but MAY STILL PROMOTE when its replay ends. Treat it as promoting: fence it or "
                "watch it (its log says why it waits, for example a missing WAL segment) before failing "
                "over to another region." % wait_seconds)
        time.sleep(0.01)
    after = pg_facts.gather_facts(conn)
    if after["in_recovery"]:
        raise pg_connection.PgError("pg_promote returned but the server is still in recovery; check its log")
    return {"changed": True, "promoted": True, "before": before, "after": after}


def promote_argument_spec():
    spec = pg_connection.connection_argument_spec()
    spec.update(wait_seconds=dict(type="int", default=60), replay_lsn=dict(type="str"),
                catchup_seconds=dict(type="float", default=30))
    return spec


def promote_task(params, check_mode=False, diff=False):
    """pg_promote: promote when in recovery (after replaying up to replay_lsn, when given) and wait for writes."""
    if not pg_connection.HAS_PSYCOPG2:
        return {"failed": True, "msg": pg_connection.MISSING_PSYCOPG2}
    try:
        conn = pg_connection.connect(params)
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
