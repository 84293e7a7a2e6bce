# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL facts: what a server is (role, timeline, LSNs, replication, WAL receiver, archiver) and its fence
state, read over one connection. The engine behind the detect phase (pg_info, pg_survey).

Private to the collection (leading underscore): modules import it, users do not. Plain Python, importable and
testable without Ansible.
"""

from __future__ import annotations

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import fence as pg_fence


def gather_facts(conn):
    """What the detect phase needs to know about one PostgreSQL instance, as plain JSON-able data."""
    # a server that accepts connections but hangs (a stuck disk) must not hold a failover's detect phase forever
    pg_connection.query(conn, "SET statement_timeout = '15s'")
    base = pg_connection.query(conn, """
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
        "started_at": pg_connection.iso(base["started_at"]),
        "data_directory": base["data_directory"],
        "settings": {k: base[k] for k in ("wal_level", "archive_mode", "max_wal_senders",
                                          "default_transaction_read_only", "synchronous_standby_names")},
        # Where a standby is told to stream from (primary_conninfo's host and port only: never the whole string,
        # which may hold a password). Known also while its receiver is down: the failover reads it to tell the
        # dead primary from a dead standby.
        "upstream": pg_connection.upstream_of(base["primary_conninfo"]) if base["in_recovery"] else None,
    }
    if base["in_recovery"]:
        rec = pg_connection.query(conn, """
            SELECT pg_last_wal_receive_lsn()::text AS receive_lsn,
                   pg_last_wal_replay_lsn()::text AS replay_lsn,
                   pg_last_xact_replay_timestamp() AS last_replay_at,
                   pg_is_wal_replay_paused() AS replay_paused
        """)[0]
        receiver = pg_connection.query(conn, """
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
            "last_replay_at": pg_connection.iso(rec["last_replay_at"]),
            "replay_paused": rec["replay_paused"],
            "replay_lag_bytes": pg_fence.text_diff(rec["receive_lsn"], rec["replay_lsn"]),
            "wal_receiver": None if wr is None else {
                "status": wr["status"], "sender_host": wr["sender_host"], "sender_port": wr["sender_port"],
                "slot_name": wr["slot_name"], "latest_end_lsn": wr["latest_end_lsn"],
                "last_msg_receipt_time": pg_connection.iso(wr["last_msg_receipt_time"]),
            },
            "replication": [],
        })
    else:
        cur = pg_connection.query(
            conn, "SELECT pg_current_wal_lsn()::text AS lsn, pg_walfile_name(pg_current_wal_lsn()) AS f")[0]
        repl = pg_connection.query(conn, """
            SELECT application_name, client_addr::text AS client_addr, state, sync_state,
                   sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
                   EXTRACT(epoch FROM replay_lag)::float AS replay_lag_seconds
              FROM pg_stat_replication ORDER BY application_name
        """)
        facts.update({
            "timeline": pg_connection.timeline_of_walfile(cur["f"]),
            "current_lsn": cur["lsn"],
            "receive_lsn": None,
            "replay_lsn": None,
            "last_replay_at": None,
            "replay_paused": False,
            "replay_lag_bytes": 0,
            "wal_receiver": None,
            "replication": repl,
        })
    arch = pg_connection.query(conn, """
        SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
               last_failed_time FROM pg_stat_archiver
    """)[0]
    facts["archiver"] = {k: (pg_connection.iso(v) if k.endswith("_time") else v) for k, v in arch.items()}
    return facts


def facts_argument_spec():
    spec = pg_connection.connection_argument_spec()
    spec.update(fail_on_unreachable=dict(type="bool", default=True), fence_dir=dict(type="path"))
    return spec


def facts_task(params, check_mode=False, diff=False):
    """pg_facts: the instance's facts and ``reachable``; its fence state (start.conf, marker) when fence_dir is
    given, read even when the server is down. Unreachable: failed, or ``reachable: false`` and ``error`` when
    fail_on_unreachable is false."""
    del check_mode, diff  # reads only
    if not pg_connection.HAS_PSYCOPG2:
        return {"failed": True, "msg": pg_connection.MISSING_PSYCOPG2}
    fence = {"fence": pg_fence.read_fence(params["fence_dir"])} if params.get("fence_dir") else {}
    try:
        conn = pg_connection.connect(params)
        try:
            facts = gather_facts(conn)
        finally:
            conn.close()
    except _errors.ENGINE_ERRORS as exc:
        if params.get("fail_on_unreachable", True):
            return dict(fence, failed=True, msg=_errors.message(exc), reachable=False)
        return dict(fence, changed=False, reachable=False, error=_errors.message(exc))
    return dict(facts, changed=False, reachable=True, **fence)
