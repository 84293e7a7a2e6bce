"""The runbooks' decisions (_failover): fence, promote, follow, refuse.

Every summary is built through _topology.summarise() from what pg_facts returns per host, so the tests exercise the
rows the playbooks really hand to the engine: a reachable primary or standby (gather_facts plus reachable=True), a
host whose PostgreSQL is down (reachable=False with the error; the host itself answered), a host Ansible could not
reach at all ({"unreachable": True, "msg": ...}), and the optional "fence" key (read_fence()'s result).
"""

from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import fence as pg_fence
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook.decisions import (
    failover_plan,
    former_primaries,
    lag_of,
    lsn_int,
    position,
    rejoin_refusals,
    slot_name,
    switchover_plan,
    synchronous_setting,
    synchronous_standbys,
)
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook.topology import summarise

REGIONS = ["primary", "secondary", "tertiary"]
SYSID = "7441234567890123456"
OTHER_SYSID = "7449999999999999999"
T0 = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)
SSH_DOWN = "Failed to connect to the host via ssh: ssh: connect to host 10.0.1.11 port 22: No route to host"
PG_DOWN = ("cannot connect to postgres@/var/run/postgresql:5432/postgres: connection to server on socket "
           "\"/var/run/postgresql/.s.PGSQL.5432\" failed: No such file or directory; the server is down or "
           "unreachable from this host (check the region, firewall and port)")
FENCED = {"start_conf": "manual", "marker": {"fenced_at": "2026-12-02T03:00:00Z", "by": "isolate"}, "fenced": True}
NOT_FENCED = {"start_conf": "auto", "marker": None, "fenced": False}
MIB = 1 << 20


# --- pg_facts results, as the detect role registers them ---------------------------------------------------------

def _common(sysid, in_recovery):
    return {
        "changed": False,
        "reachable": True,
        "server_version": "15.10 (Debian 15.10-1.pgdg120+1)",
        "server_version_num": 150010,
        "system_identifier": sysid,
        "in_recovery": in_recovery,
        "role": "standby" if in_recovery else "primary",
        "started_at": (T0 - timedelta(days=3)).isoformat(),
        "data_directory": "/var/lib/postgresql/15/main",
        "settings": {"wal_level": "replica", "archive_mode": "on", "max_wal_senders": 10,
                     "default_transaction_read_only": "off"},
        "archiver": {"archived_count": 42, "last_archived_wal": "000000010000000000000004",
                     "last_archived_time": T0.isoformat(), "failed_count": 0, "last_failed_wal": None,
                     "last_failed_time": None},
    }


def _with_fence(entry, fence):
    if fence is not None:
        entry["facts"]["fence"] = fence
    return entry


def primary(name, region, lsn="0/5000000", timeline=1, replication=(), sysid=SYSID, fence=None):
    facts = _common(sysid, in_recovery=False)
    facts.update({"timeline": timeline, "current_lsn": lsn, "receive_lsn": None, "replay_lsn": None,
                  "last_replay_at": None, "replay_paused": False, "replay_lag_bytes": 0, "wal_receiver": None,
                  "replication": list(replication)})
    return _with_fence({"host": name, "region": region, "facts": facts}, fence)


def replica_row(standby_host, lsn="0/5000000", lag_bytes=0, lag_seconds=0.0, sync_state="async"):
    """A pg_stat_replication row as gather_facts() reads it on the primary."""
    return {"application_name": slot_name(standby_host), "client_addr": "10.0.2.11", "state": "streaming",
            "sync_state": sync_state, "sent_lsn": lsn, "replay_lsn": lsn, "replay_lag_bytes": lag_bytes,
            "replay_lag_seconds": lag_seconds}


def standby(name, region, receive="0/5000000", replay=None, replayed_at=T0, sender="db-a", status="streaming",
            timeline=1, sysid=SYSID, fence=None, upstream="sender"):
    replay = replay or receive
    facts = _common(sysid, in_recovery=True)
    upstream = sender if upstream == "sender" else upstream
    facts.update({
        "upstream": {"host": upstream, "port": 5432} if upstream else None,
        "timeline": timeline,
        "current_lsn": replay,
        "receive_lsn": receive,
        "replay_lsn": replay,
        "last_replay_at": replayed_at.isoformat() if replayed_at else None,
        "replay_paused": False,
        "replay_lag_bytes": max(0, (lsn_int(receive) or 0) - (lsn_int(replay) or 0)),
        "wal_receiver": None if status is None else {
            "status": status, "sender_host": sender, "sender_port": 5432, "slot_name": slot_name(name),
            "latest_end_lsn": receive, "last_msg_receipt_time": T0.isoformat()},
        "replication": [],
    })
    return _with_fence({"host": name, "region": region, "facts": facts}, fence)


def pg_down(name, region, fence=None):
    """pg_facts with fail_on_unreachable=false on a host whose PostgreSQL does not answer."""
    return _with_fence({"host": name, "region": region,
                        "facts": {"changed": False, "reachable": False, "error": PG_DOWN}}, fence)


def unreachable(name, region):
    """What Ansible registers (ignore_unreachable) for a host it could not reach at all."""
    return {"host": name, "region": region, "facts": {"unreachable": True, "changed": False, "msg": SSH_DOWN}}


def summary(*hosts):
    return summarise(list(hosts), regions=REGIONS)


def fences(plan):
    return {f["host"]: f for f in plan["fence"]}


def healthy(a_lsn="0/5000000", b_lsn="0/5000000", c_lsn="0/5000000", b_lag=0.2, c_lag=0.3):
    """db-a serves in primary; db-b (secondary) and db-c (tertiary) stream from it."""
    return summary(primary("db-a", "primary", lsn=a_lsn,
                           replication=[replica_row("db-b", b_lsn, lag_seconds=b_lag),
                                        replica_row("db-c", c_lsn, lag_seconds=c_lag)]),
                   standby("db-b", "secondary", receive=b_lsn), standby("db-c", "tertiary", receive=c_lsn))


# --- lsn_int / slot_name / position ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lsn, value", [
    ("0/0", 0),
    ("0/3000148", 0x3000148),
    ("16/B374D848", 0x16B374D848),
    ("16/b374d848", 0x16B374D848),
    ("FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF),
])
def test_lsn_int_parses_and_agrees_with_pg(lsn, value):
    assert lsn_int(lsn) == value
    assert lsn_int(lsn) == pg_connection.lsn_to_int(lsn)


@pytest.mark.parametrize("bad", [None, "", "16", "16/", "/1", "G/1", "1/2/3", "123456789/0", " 0/1", "0/1 "])
def test_lsn_int_is_none_for_anything_else(bad):
    assert lsn_int(bad) is None


def test_lsn_int_orders_across_the_high_word():
    assert lsn_int("1/0") > lsn_int("0/FFFFFFFF")
    assert lsn_int("1/0") - lsn_int("0/FFFFFFFF") == 1


@pytest.mark.parametrize("host, slot", [
    ("db2", "standby_db2"),
    ("pg_tertiary_1", "standby_pg_tertiary_1"),
    ("db-secondary-1", "standby_db_secondary_1"),
    ("db1.eu-west.example.com", "standby_db1_eu_west_example_com"),
    ("DB1", "standby___1"),  # as the standby role's regex_replace('[^a-z0-9_]', '_'): case-sensitive
])
def test_slot_name_matches_the_standby_role(host, slot):
    assert slot_name(host) == slot


def _row(entry):
    return summary(entry)["hosts"][0]


def test_position_of_a_primary_is_its_current_lsn():
    assert position(_row(primary("db-a", "primary", lsn="2/10"))) == (2 << 32) + 0x10


def test_position_of_a_standby_is_the_larger_of_received_and_replayed():
    assert position(_row(standby("db-b", "secondary", receive="0/5000000", replay="0/4000000"))) == 0x5000000
    # receive_lsn is NULL when WAL only came from the archive (restore_command): the replayed position counts
    restored = standby("db-b", "secondary", receive="0/4000000", status=None)
    restored["facts"]["receive_lsn"] = None
    assert position(_row(restored)) == 0x4000000


def test_position_is_none_when_nothing_is_known():
    assert position(_row(pg_down("db-a", "primary"))) is None
    assert position(_row(unreachable("db-a", "primary"))) is None
    blank = standby("db-b", "secondary")
    blank["facts"].update(receive_lsn=None, replay_lsn=None, current_lsn=None)
    assert position(_row(blank)) is None


# --- lag_of ---------------------------------------------------------------------------------------------------------

def test_lag_against_a_reachable_primary_uses_its_replication_row_for_the_candidate():
    s = healthy(a_lsn="0/5100000", b_lsn="0/5000000", c_lsn="0/5100000", b_lag=42.5, c_lag=0.1)
    lag = lag_of(s, "db-b")
    assert lag["known"] is True
    assert lag["bytes"] == 0x100000
    assert lag["seconds"] == 42.5, "the row whose application_name is slot_name('db-b'), not db-c's"
    assert (lag["reference_host"], lag["reference_region"], lag["reference_lsn"]) == ("db-a", "primary", "0/5100000")
    assert (lag["most_advanced"], lag["most_advanced_region"]) == ("db-c", "tertiary")
    assert lag["candidate_lsn"] == "0/5000000"


def test_lag_reference_is_the_reachable_primary_when_the_candidate_is_level_with_it():
    s = healthy(b_lag=1.5)
    lag = lag_of(s, "db-b")
    assert lag["bytes"] == 0 and lag["seconds"] == 1.5
    assert (lag["reference_host"], lag["reference_region"], lag["reference_lsn"]) == ("db-a", "primary", "0/5000000")


def test_lag_seconds_ignore_replay_times_when_the_primary_measured_the_candidate():
    s = summary(primary("db-a", "primary", replication=[replica_row("db-b", lag_seconds=3.25)]),
                standby("db-b", "secondary", replayed_at=T0 - timedelta(hours=1)),
                standby("db-c", "tertiary", replayed_at=T0))
    assert lag_of(s, "db-b")["seconds"] == 3.25


def test_lag_seconds_null_replay_lag_on_the_primary_counts_as_caught_up():
    s = summary(primary("db-a", "primary", replication=[replica_row("db-b", lag_seconds=None)]),
                standby("db-b", "secondary"), standby("db-c", "tertiary"))
    assert lag_of(s, "db-b")["seconds"] == 0.0


def test_lag_seconds_without_the_primary_are_the_gap_between_replayed_commits():
    s = summary(unreachable("db-a", "primary"),
                standby("db-b", "secondary", receive="0/5000000", replayed_at=T0),
                standby("db-c", "tertiary", receive="0/5000400", replayed_at=T0 + timedelta(seconds=12.5)))
    lag = lag_of(s, "db-b")
    assert lag["seconds"] == 12.5
    assert lag["bytes"] == 0x400
    assert (lag["reference_host"], lag["reference_region"], lag["reference_lsn"]) == ("db-c", "tertiary", "0/5000400")
    assert lag_of(s, "db-c")["seconds"] == 0.0, "the most recent replay has no gap to itself"
    assert lag_of(s, "db-c")["bytes"] == 0


def test_lag_seconds_fall_back_to_replay_times_when_the_primary_does_not_see_the_candidate():
    s = summary(primary("db-a", "primary", replication=[replica_row("db-c")]),
                standby("db-b", "secondary", replayed_at=T0),
                standby("db-c", "tertiary", replayed_at=T0 + timedelta(seconds=7)))
    assert lag_of(s, "db-b")["seconds"] == 7.0


def test_lag_of_the_most_advanced_candidate_is_zero_and_it_is_its_own_reference():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/6000000"),
                standby("db-c", "tertiary", receive="0/6000000"))
    lag = lag_of(s, "db-b")
    assert lag["bytes"] == 0 and lag["seconds"] == 0.0
    assert lag["reference_host"] == "db-b", "a tie goes to the candidate"
    assert lag["most_advanced"] == "db-b"


def test_lag_ignores_hosts_of_another_cluster():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/5000000"),
                standby("db-c", "tertiary", receive="0/5000000"),
                standby("db-x", "tertiary", receive="9/0", sysid=OTHER_SYSID))
    lag = lag_of(s, "db-b")
    assert lag["bytes"] == 0
    assert lag["reference_host"] != "db-x" and lag["most_advanced"] != "db-x"


def test_lag_is_unknown_when_the_candidate_reports_no_position():
    blank = standby("db-b", "secondary")
    blank["facts"].update(receive_lsn=None, replay_lsn=None, current_lsn=None)
    lag = lag_of(summary(unreachable("db-a", "primary"), blank, standby("db-c", "tertiary")), "db-b")
    assert lag["known"] is False
    assert lag["bytes"] is None and lag["seconds"] is None and lag["most_advanced"] is None


# --- failover_plan: the ordinary unplanned failover -----------------------------------------------------------------

def test_dead_primary_fails_over_to_the_secondary():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), standby("db-c", "tertiary"))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "promote"
    assert plan["candidate"] == "db-b" and plan["candidate_region"] == "secondary"
    assert plan["fence"] == [{"host": "db-a", "region": "primary", "was": "down", "how": "out_of_band",
                              "already_fenced": False,
                              "reason": f"cannot be read ({SSH_DOWN}): it may still serve writes"}]
    assert plan["follow"] == ["db-c"]
    assert plan["refusals"] == [] and plan["forced"] == [] and plan["warnings"] == []
    assert plan["lag"]["known"] and plan["lag"]["bytes"] == 0 and plan["lag"]["seconds"] == 0.0
    assert plan["positions"] == {"db-a": None, "db-b": "0/5000000", "db-c": "0/5000000"}
    assert plan["primaries"] == []


def test_the_most_advanced_standby_of_the_target_region_is_the_candidate():
    s = summary(unreachable("db-a", "primary"), standby("db-b1", "secondary", receive="0/5000000"),
                standby("db-b2", "secondary", receive="0/5000100"), standby("db-c", "tertiary", receive="0/5000100"))
    plan = failover_plan(s, "secondary")
    assert plan["candidate"] == "db-b2"
    assert plan["state"] == "promote"
    assert sorted(plan["follow"]) == ["db-b1", "db-c"], "the other standby of the region follows too"


def test_a_serving_primary_is_stopped_and_the_operator_is_pointed_at_switchover():
    plan = failover_plan(healthy(), "secondary")
    assert plan["state"] == "promote" and plan["candidate"] == "db-b"
    a = fences(plan)["db-a"]
    assert (a["how"], a["was"], a["already_fenced"]) == ("stop", "primary", False)
    assert a["reason"] == "accepts writes (timeline 1, LSN 0/5000000)"
    assert plan["follow"] == ["db-c"]
    assert len(plan["warnings"]) == 1
    warning = plan["warnings"][0]
    assert "db-a (primary) is up and serving" in warning
    assert "playbooks/switchover.yml -l secondary" in warning
    assert plan["primaries"] == ["db-a"]
    assert plan["lag"]["seconds"] == 0.2 and plan["lag"]["reference_host"] == "db-a"


def test_a_host_whose_postgresql_is_down_is_stopped_not_fenced_out_of_band():
    s = summary(pg_down("db-a", "primary"), standby("db-b", "secondary"), standby("db-c", "tertiary"))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "promote"
    assert plan["fence"] == [{"host": "db-a", "region": "primary", "was": "down", "how": "stop",
                              "already_fenced": False,
                              "reason": "its PostgreSQL is down: it must not start as a primary"}]


@pytest.mark.parametrize("fence, already", [(FENCED, True), (NOT_FENCED, False), (None, False)])
def test_a_down_host_with_the_fence_marker_is_already_fenced(fence, already):
    s = summary(pg_down("db-a", "primary", fence=fence), standby("db-b", "secondary"), standby("db-c", "tertiary"))
    a = fences(failover_plan(s, "secondary"))["db-a"]
    assert a["how"] == "stop"
    assert a["already_fenced"] is already


def test_read_fence_output_through_summarise_marks_the_host_already_fenced(tmp_path):
    (tmp_path / "start.conf").write_text("# fenced\nmanual\n", encoding="utf-8")
    (tmp_path / pg_fence.FENCE_MARKER).write_text('{"fenced_at": "2026-12-02T03:00:00Z"}', encoding="utf-8")
    s = summary(pg_down("db-a", "primary", fence=pg_fence.read_fence(str(tmp_path))), standby("db-b", "secondary"),
                standby("db-c", "tertiary"))
    assert s["hosts"][0]["fence"]["start_conf"] == "manual"
    a = fences(failover_plan(s, "secondary"))["db-a"]
    assert (a["how"], a["already_fenced"]) == ("stop", True)
    assert rejoin_refusals(_after_failover(pg_down("db-a", "primary", fence=pg_fence.read_fence(str(tmp_path)))),
                           "db-a") == []


def test_a_serving_primary_with_a_stale_fence_marker_is_not_already_fenced():
    s = summary(primary("db-a", "primary", fence=FENCED), standby("db-b", "secondary"), standby("db-c", "tertiary"))
    a = fences(failover_plan(s, "secondary"))["db-a"]
    assert a["already_fenced"] is False, "it accepts writes whatever its marker says"
    assert a["how"] == "stop"


def test_every_host_that_is_no_reachable_standby_of_the_cluster_is_fenced():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), pg_down("db-c", "tertiary"),
                standby("db-x", "tertiary", sysid=OTHER_SYSID))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "promote"
    assert plan["follow"] == []
    f = fences(plan)
    assert set(f) == {"db-a", "db-c", "db-x"}
    assert f["db-a"]["how"] == "out_of_band" and f["db-c"]["how"] == "stop" and f["db-x"]["how"] == "stop"
    assert f["db-x"]["reason"] == f"belongs to another cluster (system identifier {OTHER_SYSID})"
    assert f["db-x"]["was"] == "standby"


def test_a_foreign_primary_is_fenced_without_the_switchover_warning():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), standby("db-c", "tertiary"),
                primary("db-x", "tertiary", sysid=OTHER_SYSID))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "promote"
    assert fences(plan)["db-x"]["was"] == "primary" and fences(plan)["db-x"]["how"] == "stop"
    assert plan["warnings"] == [], "a foreign primary serves no data of the cluster"


# --- failover_plan: lag limits --------------------------------------------------------------------------------------

def _behind_tertiary():
    """db-a is gone; db-b (secondary) has 32 MiB less WAL than db-c (tertiary)."""
    return summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/3000000"),
                   standby("db-c", "tertiary", receive="0/5000000"))


def test_a_candidate_lagging_the_tertiary_is_refused_and_told_where_to_go():
    plan = failover_plan(_behind_tertiary(), "secondary")
    assert plan["state"] == "refused"
    assert plan["candidate"] == "db-b", "the refused plan still says whom it looked at"
    assert plan["lag"]["bytes"] == 32 * MIB
    assert len(plan["refusals"]) == 1 and plan["forced"] == []
    msg = plan["refusals"][0]
    assert msg.startswith("db-b lags 32.0 MiB of WAL (33554432 bytes; limit 16777216) behind db-c (tertiary, LSN "
                          "0/5000000; the candidate is at 0/3000000)")
    assert "The most advanced standby is db-c in region 'tertiary'" in msg
    assert "-l tertiary" in msg and "-e force=true" in msg
    # what would be done is still described
    assert plan["follow"] == ["db-c"] and list(fences(plan)) == ["db-a"]


def test_force_accepts_the_lag_and_keeps_the_message():
    refused = failover_plan(_behind_tertiary(), "secondary")
    plan = failover_plan(_behind_tertiary(), "secondary", force=True)
    assert plan["state"] == "promote"
    assert plan["refusals"] == []
    assert plan["forced"] == refused["refusals"] and len(plan["forced"]) == 1
    assert plan["forced"][0].startswith("db-b lags 32.0 MiB of WAL (33554432 bytes; limit 16777216) behind db-c")
    assert plan["candidate"] == "db-b"


def test_the_byte_limit_is_a_strict_maximum_and_can_be_raised_or_disabled():
    assert failover_plan(_behind_tertiary(), "secondary", max_lag_bytes=32 * MIB)["state"] == "promote"
    assert failover_plan(_behind_tertiary(), "secondary", max_lag_bytes=32 * MIB - 1)["state"] == "refused"
    assert failover_plan(_behind_tertiary(), "secondary", max_lag_bytes=None)["state"] == "promote"
    assert failover_plan(_behind_tertiary(), "tertiary")["state"] == "promote", "the most advanced one may serve"


def test_small_lag_is_reported_in_bytes():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/5000000"),
                standby("db-c", "tertiary", receive="0/5000200"))
    plan = failover_plan(s, "secondary", max_lag_bytes=100)
    assert plan["state"] == "refused"
    assert "db-b lags 512 B of WAL (512 bytes; limit 100)" in plan["refusals"][0]


def test_lag_in_seconds_measured_by_the_reachable_primary_is_refused():
    # db-b received every WAL byte but its replay is 45 s behind (a query conflict holds it back)
    s = summary(primary("db-a", "primary", replication=[replica_row("db-b", "0/4F00000", lag_seconds=45.0),
                                                        replica_row("db-c", lag_seconds=0.5)]),
                standby("db-b", "secondary", receive="0/5000000", replay="0/4F00000"),
                standby("db-c", "tertiary"))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert plan["lag"]["bytes"] == 0 and plan["lag"]["seconds"] == 45.0
    msg = plan["refusals"][0]
    assert msg.startswith("db-b lags 45.0 s of commits (limit 30.0 s) behind db-a (primary, LSN 0/5000000")
    # the candidate is the most advanced standby itself: no circular "fail over there", the way out is named
    assert "No standby is more advanced: wait until db-b has caught up with db-a" in msg
    assert "playbooks/switchover.yml -l secondary" in msg
    assert failover_plan(s, "secondary", max_lag_seconds=60)["state"] == "promote"
    assert failover_plan(s, "secondary", max_lag_seconds=None)["state"] == "promote"
    assert failover_plan(s, "tertiary")["state"] == "promote", "the primary measures db-c at 0.5 s"


def test_lag_in_seconds_from_replay_times_when_the_primary_is_gone():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/5000000", replayed_at=T0),
                standby("db-c", "tertiary", receive="0/5000800", replayed_at=T0 + timedelta(seconds=90)))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert plan["lag"]["seconds"] == 90.0
    assert "90.0 s of commits (limit 30.0 s)" in plan["refusals"][0]
    assert " behind db-c (tertiary, " in plan["refusals"][0]


def test_bytes_and_seconds_over_the_limit_are_both_named():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/1000000", replayed_at=T0),
                standby("db-c", "tertiary", receive="0/5000000", replayed_at=T0 + timedelta(minutes=5)))
    msg = failover_plan(s, "secondary")["refusals"][0]
    assert "64.0 MiB of WAL (67108864 bytes; limit 16777216) and 300.0 s of commits (limit 30.0 s)" in msg


def test_unmeasurable_lag_is_a_warning_not_a_refusal():
    blank = standby("db-b", "secondary")
    blank["facts"].update(receive_lsn=None, replay_lsn=None, current_lsn=None)
    plan = failover_plan(summary(unreachable("db-a", "primary"), blank, standby("db-c", "tertiary")), "secondary")
    assert plan["state"] == "promote"
    assert plan["warnings"] == ["the lag of db-b could not be measured (no position read from it or any other host)"]


# --- failover_plan: refusals that are not about lag ----------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_split_brain_is_refused_even_when_forced(force):
    s = summary(primary("db-a", "primary", timeline=1), primary("db-b", "secondary", timeline=2),
                standby("db-c", "tertiary"))
    assert s["split_brain"]
    plan = failover_plan(s, "secondary", force=force)
    assert plan["state"] == "refused"
    assert plan["candidate"] is None and plan["fence"] == [] and plan["follow"] == [] and plan["forced"] == []
    assert len(plan["refusals"]) == 1
    assert plan["refusals"][0].startswith("SPLIT BRAIN: db-a and db-b all accept writes")
    assert "playbooks/rejoin.yml" in plan["refusals"][0]


def test_unknown_target_region_is_refused_naming_the_regions():
    plan = failover_plan(_behind_tertiary(), "nowhere", force=True)
    assert plan["state"] == "refused" and plan["candidate"] is None
    assert plan["refusals"] == ["no database host of the inventory is in region 'nowhere' (regions: primary, "
                                "secondary, tertiary); -l names the region that will serve"]


def test_target_region_without_a_reachable_standby_is_refused_listing_its_hosts():
    s = summary(unreachable("db-a", "primary"), unreachable("db-b1", "secondary"), pg_down("db-b2", "secondary"),
                standby("db-b3", "secondary", sysid=OTHER_SYSID), standby("db-c", "tertiary"),
                standby("db-c2", "tertiary"))
    plan = failover_plan(s, "secondary", force=True)
    assert plan["state"] == "refused" and plan["candidate"] is None
    assert len(plan["refusals"]) == 1
    msg = plan["refusals"][0]
    assert msg.startswith("region 'secondary' has no reachable standby of the cluster to promote (")
    assert f"db-b1: unreachable ({SSH_DOWN})" in msg
    assert f"db-b2: unreachable ({PG_DOWN})" in msg
    assert "db-b3: standby" in msg
    assert "playbooks/restore.yml" in msg


# --- failover_plan: a re-run after the promotion --------------------------------------------------------------------

def _after_failover(old_primary):
    return summary(old_primary,
                   primary("db-b", "secondary", lsn="0/6000000", timeline=2, replication=[replica_row("db-c")]),
                   standby("db-c", "tertiary", receive="0/6000000", sender="db-b", timeline=2))


def test_already_failed_over_is_promoted_and_still_fences_the_old_primary():
    plan = failover_plan(_after_failover(unreachable("db-a", "primary")), "secondary")
    assert plan["state"] == "promoted"
    assert plan["candidate"] == "db-b"
    assert plan["refusals"] == [] and plan["warnings"] == []
    assert plan["fence"] == [{"host": "db-a", "region": "primary", "was": "down", "how": "out_of_band",
                              "already_fenced": False,
                              "reason": f"cannot be read ({SSH_DOWN}): it may still serve writes"}]
    assert plan["follow"] == ["db-c"]
    assert plan["lag"] is None, "nothing is promoted, so nothing is measured"
    assert plan["primaries"] == ["db-b"]


def test_already_failed_over_with_the_old_primary_back_and_fenced():
    plan = failover_plan(_after_failover(pg_down("db-a", "primary", fence=FENCED)), "secondary")
    assert plan["state"] == "promoted"
    assert fences(plan)["db-a"]["how"] == "stop"
    assert fences(plan)["db-a"]["already_fenced"] is True
    assert plan["follow"] == ["db-c"]


def test_already_failed_over_ignores_lag_and_sync_rules():
    s = summary(unreachable("db-a", "primary"), primary("db-b", "secondary", lsn="0/1000000", timeline=2),
                standby("db-c", "tertiary", receive="0/9000000", sender="db-b", timeline=2))
    plan = failover_plan(s, "secondary", sync_regions=["tertiary"])
    assert plan["state"] == "promoted" and plan["refusals"] == []


def test_the_old_primary_writable_again_is_split_brain_not_promoted():
    s = _after_failover(primary("db-a", "primary", lsn="0/5000100", timeline=1))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert "db-a and db-b" in plan["refusals"][0] and plan["refusals"][0].startswith("SPLIT BRAIN")


# --- failover_plan: synchronous mode --------------------------------------------------------------------------------

def _sync_cluster(c=None):
    return summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/5000000"),
                   c or standby("db-c", "tertiary", receive="0/5000000"))


def test_sync_candidate_region_not_synchronous_is_refused():
    plan = failover_plan(_sync_cluster(), "secondary", sync_regions=["tertiary"])
    assert plan["state"] == "refused"
    assert plan["refusals"] == ["synchronous mode: region 'secondary' is not a synchronous region "
                                "(dr_synchronous_regions: tertiary): it may lack acknowledged writes; "
                                "-e force=true accepts the loss"]


def test_sync_in_step_candidate_of_a_synchronous_region_is_promoted():
    plan = failover_plan(_sync_cluster(), "secondary", sync_regions=("secondary", "tertiary"))
    assert plan["state"] == "promote" and plan["refusals"] == [] and plan["forced"] == []


def test_sync_another_synchronous_standby_ahead_is_refused_with_the_bytes():
    s = _sync_cluster(standby("db-c", "tertiary", receive="0/5001000"))
    plan = failover_plan(s, "secondary", sync_regions=("secondary", "tertiary"))
    assert plan["state"] == "refused"
    assert plan["refusals"] == ["synchronous mode: the synchronous standby db-c (tertiary) is 4096 bytes ahead: it "
                                "holds acknowledged writes db-b lacks; -e force=true accepts the loss"]


def test_sync_an_unreadable_synchronous_standby_is_refused():
    for c in (unreachable("db-c", "tertiary"), pg_down("db-c", "tertiary")):
        plan = failover_plan(_sync_cluster(c), "secondary", sync_regions=("secondary", "tertiary"))
        assert plan["state"] == "refused"
        assert plan["refusals"] == ["synchronous mode: the synchronous standby db-c (tertiary) could not be read: it "
                                    "may hold acknowledged writes db-b lacks; -e force=true accepts the loss"]


def test_sync_the_dead_primary_outside_the_synchronous_regions_is_not_a_synchronous_standby():
    plan = failover_plan(_sync_cluster(), "secondary", sync_regions=("secondary", "tertiary"))
    assert not any("db-a" in m for m in plan["refusals"] + plan["forced"])


def test_sync_the_dead_primary_of_a_synchronous_region_is_told_from_a_dead_synchronous_standby():
    # every region synchronous (the usual set-up): db-a is dead, and the standbys stream from it - it was the primary
    every = ("primary", "secondary", "tertiary")
    plan = failover_plan(_sync_cluster(), "secondary", sync_regions=every)
    assert plan["state"] == "promote" and plan["refusals"] == [] and plan["former_primaries"] == ["db-a"]
    # their receivers already gave up: primary_conninfo still names db-a
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", status=None, upstream="db-a"),
                standby("db-c", "tertiary", status=None, upstream="db-a"))
    assert failover_plan(s, "secondary", sync_regions=every)["state"] == "promote"
    # two dead: the one the standby is not told to stream from may hold what db-b lacks
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), unreachable("db-c", "tertiary"))
    plan = failover_plan(s, "secondary", sync_regions=every)
    assert plan["state"] == "refused" and plan["former_primaries"] == ["db-a"]
    assert plan["refusals"] == ["synchronous mode: the synchronous standby db-c (tertiary) could not be read: it "
                                "may hold acknowledged writes db-b lacks; -e force=true accepts the loss"]


def test_a_stale_upstream_does_not_hide_a_dead_synchronous_standby():
    # db-a served and died with db-b; db-d still names db-b (a stale primary_conninfo): which one served is unknown
    every = ("primary", "secondary", "tertiary")
    s = summary(unreachable("db-a", "primary"), unreachable("db-b", "secondary"),
                standby("db-c", "tertiary", sender="db-a"),
                standby("db-d", "tertiary", sender=None, status=None, upstream="db-b"))
    assert former_primaries(s) == []
    plan = failover_plan(s, "tertiary", sync_regions=every)
    assert plan["state"] == "refused"
    assert [m for m in plan["refusals"] if "db-b (secondary) could not be read" in m]
    assert [m for m in plan["refusals"] if "db-a (primary) could not be read" in m]


def _with_sync_setting(entry, value):
    entry["facts"]["settings"] = {**entry["facts"]["settings"], "synchronous_standby_names": value}
    return entry


def test_hosts_running_synchronous_replication_with_no_regions_given_are_refused_unless_forced():
    s = summary(unreachable("db-a", "primary"),
                _with_sync_setting(standby("db-b", "secondary"), 'ANY 1 ("standby_db_a", "standby_db_c")'),
                standby("db-c", "tertiary"))
    plan = failover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert plan["refusals"] == [
        "the hosts run synchronous replication (db-b: 'ANY 1 (\"standby_db_a\", \"standby_db_c\")') but this run was "
        "not told its regions (dr_synchronous_regions is empty), so it would apply the asynchronous rules and could "
        "promote a standby that lacks acknowledged writes. Set dr_synchronous_regions as playbooks/synchronous.yml "
        "was run (in the inventory, or -e), or accept the risk with -e force=true"]
    assert failover_plan(s, "secondary", force=True)["state"] == "promote"
    assert failover_plan(s, "secondary", sync_regions=("primary", "secondary", "tertiary"))["state"] == "promote"
    # an empty setting is asynchronous: nothing to refuse
    s = summary(unreachable("db-a", "primary"), _with_sync_setting(standby("db-b", "secondary"), ""),
                standby("db-c", "tertiary"))
    assert failover_plan(s, "secondary")["state"] == "promote"


def test_former_primaries_match_the_standbys_upstream_by_address():
    rows = [unreachable("pg-a", "primary"), standby("pg-b", "secondary", sender="10.0.1.5"),
            pg_down("pg-c", "tertiary")]
    rows[0]["address"] = "10.0.1.5"
    assert former_primaries(summarise(rows, regions=REGIONS)) == ["pg-a"]
    # nobody streams from anyone readable: no former primary is known, so none is assumed
    assert former_primaries(summary(unreachable("db-a", "primary"), pg_down("db-c", "tertiary"))) == []


def test_sync_force_accepts_every_synchronous_refusal():
    s = _sync_cluster(unreachable("db-c", "tertiary"))
    plan = failover_plan(s, "secondary", sync_regions=("tertiary",), force=True)
    assert plan["state"] == "promote"
    assert plan["refusals"] == []
    assert plan["forced"] == [
        "synchronous mode: region 'secondary' is not a synchronous region (dr_synchronous_regions: tertiary): it "
        "may lack acknowledged writes",
        "synchronous mode: the synchronous standby db-c (tertiary) could not be read: it may hold acknowledged "
        "writes db-b lacks",
    ]


def test_sync_and_lag_refusals_add_up():
    s = _sync_cluster(standby("db-c", "tertiary", receive="0/7000000"))
    plan = failover_plan(s, "secondary", sync_regions=("secondary", "tertiary"))
    assert plan["state"] == "refused"
    assert len(plan["refusals"]) == 2
    assert plan["refusals"][0].startswith("db-b lags 32.0 MiB of WAL")
    assert "33554432 bytes ahead" in plan["refusals"][1]
    forced = failover_plan(s, "secondary", sync_regions=("secondary", "tertiary"), force=True)
    assert forced["state"] == "promote" and len(forced["forced"]) == 2


# --- switchover_plan ------------------------------------------------------------------------------------------------

def test_switchover_switches_to_the_streaming_standby():
    plan = switchover_plan(healthy(), "secondary")
    assert plan["state"] == "switch"
    assert (plan["primary"], plan["candidate"]) == ("db-a", "db-b")
    assert plan["follow"] == ["db-c"]
    assert plan["refusals"] == [] and plan["warnings"] == []


def test_switchover_picks_the_most_advanced_streaming_standby():
    s = summary(primary("db-a", "primary"), standby("db-b1", "secondary", receive="0/4FFFF00"),
                standby("db-b2", "secondary", receive="0/5000000"), standby("db-c", "tertiary"))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "switch" and plan["candidate"] == "db-b2"
    assert plan["follow"] == ["db-b1", "db-c"] and plan["rejoin"] == ["db-a"]


def test_switchover_refuses_while_another_host_is_down_or_unreachable():
    # the promotion would refuse such a host once writes have stopped: the plan refuses first, nothing stops
    s = summary(primary("db-a", "primary"), standby("db-b", "secondary"), pg_down("db-c", "tertiary"),
                unreachable("db-d", "tertiary"))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert plan["refusals"][0].startswith("db-c is down: a switchover promotes only while every other host")
    assert plan["refusals"][1].startswith("db-d is unreachable")
    assert all("playbooks/rejoin.yml -l tertiary" in r for r in plan["refusals"])


def test_switchover_is_done_when_the_target_region_already_serves():
    s = summary(standby("db-a", "primary", sender="db-b", timeline=2),
                primary("db-b", "secondary", timeline=2, replication=[replica_row("db-a"), replica_row("db-c")]),
                standby("db-c", "tertiary", sender="db-b", timeline=2))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "done"
    assert (plan["primary"], plan["candidate"]) == ("db-b", "db-b")
    assert plan["follow"] == ["db-a", "db-c"]
    assert plan["refusals"] == []


def test_switchover_refused_when_no_region_serves():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), standby("db-c", "tertiary"))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "refused" and plan["candidate"] is None
    assert plan["refusals"] == ["no region serves writes: a switchover moves a serving primary; use "
                                "playbooks/failover.yml -l secondary"]


@pytest.mark.parametrize("status, shown", [("startup", "db-b: startup"), (None, "db-b: standby")])
def test_switchover_refused_when_the_target_standby_is_not_streaming(status, shown):
    s = summary(primary("db-a", "primary"), standby("db-b", "secondary", status=status),
                standby("db-c", "tertiary"))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "refused"
    assert plan["candidate"] is None
    msg = plan["refusals"][0]
    assert msg.startswith(f"region 'secondary' has no standby streaming from db-a ({shown})")
    assert "playbooks/rejoin.yml -l secondary" in msg


def test_switchover_refused_when_the_target_host_is_down():
    s = summary(primary("db-a", "primary"), pg_down("db-b", "secondary"), standby("db-c", "tertiary"))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "refused" and "(db-b: down)" in plan["refusals"][0]


def test_switchover_refused_for_a_streaming_standby_of_another_cluster():
    s = summary(primary("db-a", "primary"), standby("db-b", "secondary", sysid=OTHER_SYSID),
                standby("db-c", "tertiary"))
    assert switchover_plan(s, "secondary")["state"] == "refused"


def test_switchover_refused_in_split_brain():
    s = summary(primary("db-a", "primary"), primary("db-b", "secondary", timeline=2), standby("db-c", "tertiary"))
    plan = switchover_plan(s, "tertiary")
    assert plan["state"] == "refused"
    assert plan["refusals"] == ["SPLIT BRAIN: db-a and db-b all accept writes; a switchover needs exactly one "
                                "primary"]


def test_switchover_refused_for_an_unknown_region():
    plan = switchover_plan(healthy(), "nowhere")
    assert plan["state"] == "refused"
    assert plan["refusals"] == ["no database host of the inventory is in region 'nowhere'"]


# --- rejoin_refusals ------------------------------------------------------------------------------------------------

def test_rejoin_refuses_the_serving_primary():
    refusals = rejoin_refusals(healthy(), "db-a")
    assert len(refusals) == 1
    assert refusals[0].startswith("db-a is the serving primary (primary)")
    assert "playbooks/switchover.yml" in refusals[0]


def test_rejoin_refuses_a_writable_old_primary_of_the_cluster_as_split_brain():
    s = _after_failover(primary("db-a", "primary", lsn="0/5000100", timeline=1))
    refusals = rejoin_refusals(s, "db-a")
    assert len(refusals) == 1
    assert refusals[0].startswith("SPLIT BRAIN: db-a and db-b all accept writes")


def test_rejoin_refuses_a_writable_host_of_another_cluster_until_fenced():
    s = _after_failover(primary("db-a", "primary", lsn="0/100", timeline=1, sysid=OTHER_SYSID))
    assert not s["split_brain"] and s["current_primary"] == "db-b"
    assert rejoin_refusals(s, "db-a") == [
        "db-a accepts writes (timeline 1, LSN 0/100) while db-b serves: fence it first (playbooks/failover.yml "
        "-l secondary fences every other writable host)"]


def test_rejoin_refuses_an_unreachable_host():
    assert rejoin_refusals(_after_failover(unreachable("db-a", "primary")), "db-a") == [
        f"db-a cannot be reached ({SSH_DOWN}): bring the host back first"]


@pytest.mark.parametrize("fence", [FENCED, None])
def test_rejoin_allows_a_down_host(fence):
    assert rejoin_refusals(_after_failover(pg_down("db-a", "primary", fence=fence)), "db-a") == []


def test_rejoin_allows_a_standby_to_be_rebuilt():
    assert rejoin_refusals(_after_failover(pg_down("db-a", "primary")), "db-c") == []


def test_rejoin_refused_when_no_region_serves():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary"), pg_down("db-c", "tertiary", FENCED))
    refusals = rejoin_refusals(s, "db-c")
    assert len(refusals) == 1 and refusals[0].startswith("no region serves writes")
    assert "playbooks/failover.yml" in refusals[0]


def test_rejoin_refused_for_a_host_the_detect_phase_did_not_read():
    assert rejoin_refusals(healthy(), "db-z") == ["db-z was not read by the detect phase"]


def test_rejoin_refused_in_split_brain_even_for_a_down_host():
    s = summary(primary("db-a", "primary"), primary("db-b", "secondary", timeline=2), pg_down("db-c", "tertiary"))
    assert rejoin_refusals(s, "db-c")[0].startswith("SPLIT BRAIN: db-a and db-b")


# --- the filter plugin hands the engine's answers through -----------------------------------------------------------

def test_the_failover_plan_filter_maps_max_lag_and_force():
    from ansible_collections.immersiverse.dr.plugins.filter.topology import FilterModule

    filters = FilterModule().filters()
    assert filters["failover_plan"](_behind_tertiary(), "secondary")["state"] == "refused"
    assert filters["failover_plan"](_behind_tertiary(), "secondary", max_lag={"bytes": 64 * MIB})["state"] == "promote"
    assert filters["failover_plan"](_behind_tertiary(), "secondary", force="yes")["forced"]
    assert filters["failover_plan"](_sync_cluster(), "secondary", sync_regions=["tertiary"])["state"] == "refused"
    assert filters["switchover_plan"](healthy(), "secondary")["state"] == "switch"
    assert filters["rejoin_refusals"](healthy(), "db-a")


def test_a_fenced_former_primary_running_again_in_the_target_region_is_not_taken_for_the_serving_one():
    s = summary(primary("db-a", "primary", fence=FENCED), unreachable("db-b", "secondary"),
                standby("db-c", "tertiary"))
    plan = failover_plan(s, "primary")
    assert plan["state"] == "refused" and plan["candidate"] is None
    assert "db-a runs as a primary although the isolate phase fenced it" in plan["refusals"][0]


def test_a_primary_on_an_older_timeline_than_the_cluster_is_refused_as_stale():
    s = summary(primary("db-a", "primary", timeline=1), unreachable("db-b", "secondary"),
                standby("db-c", "tertiary", timeline=2))
    plan = failover_plan(s, "primary")
    assert plan["state"] == "refused"
    assert "db-a is a primary on timeline 1 while the cluster has reached timeline 2" in plan["refusals"][0]


def test_a_switchover_rerun_rejoins_only_the_host_a_switchover_fenced():
    by_switchover = {"start_conf": "disabled", "fenced": True,
                     "marker": {"reason": "switchover to secondary (db-b): becomes its standby"}}
    by_failover = {"start_conf": "disabled", "fenced": True, "marker": {"reason": "failover to secondary"}}
    s = summary(_with_fence(pg_down("db-a", "primary"), by_switchover),
                primary("db-b", "secondary", timeline=2), _with_fence(pg_down("db-c", "tertiary"), by_failover))
    plan = switchover_plan(s, "secondary")
    assert plan["state"] == "done" and plan["rejoin"] == ["db-a"]
    assert plan["warnings"] and plan["warnings"][0].startswith("db-c: down or unreachable, not fenced by a switchover")


def test_lag_in_seconds_is_unknown_not_zero_without_replay_times_and_only_bytes_are_checked():
    s = summary(unreachable("db-a", "primary"), standby("db-b", "secondary", receive="0/5000000"),
                standby("db-c", "tertiary", receive="0/5000400"))
    for row in s["hosts"]:
        row["last_replay_at"] = None
    plan = failover_plan(s, "secondary", max_lag_seconds=1)
    assert plan["lag"]["seconds"] is None and plan["state"] == "promote"
    assert any("in seconds is unknown" in w for w in plan["warnings"])


# --- synchronous_standby_names --------------------------------------------------------------------------------------

def test_a_primary_waits_for_the_standbys_of_the_other_synchronous_regions():
    hosts = [["pg-primary-1", "primary"], ["pg-secondary-1", "secondary"], ["pg-tertiary-1", "tertiary"],
             ["pg-Tertiary.2", "tertiary"]]
    every = ["primary", "secondary", "tertiary"]
    assert synchronous_standbys(hosts, "primary", every) == [
        "standby_pg_secondary_1", "standby_pg_tertiary_1", "standby_pg__ertiary_2"]
    assert synchronous_standbys(hosts, "secondary", ["secondary", "tertiary"]) == [
        "standby_pg_tertiary_1", "standby_pg__ertiary_2"]
    assert synchronous_standbys(hosts, "secondary", ["secondary"]) == []
    assert synchronous_standbys(hosts, "primary", []) == synchronous_standbys(hosts, "primary", None) == []
    # the names are the ones the standby role streams with
    assert synchronous_standbys(hosts, "primary", ["secondary"]) == [slot_name("pg-secondary-1")]


def test_the_setting_is_a_quorum_of_the_names_or_empty():
    assert synchronous_setting(["standby_b", "standby_c"]) == 'ANY 1 ("standby_b", "standby_c")'
    assert synchronous_setting(["standby_b", "standby_c"], 2) == 'ANY 2 ("standby_b", "standby_c")'
    assert synchronous_setting([]) == ""
