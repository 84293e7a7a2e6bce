"""Region outage in synchronous mode: the primary's host was killed under traffic, failover.yml -l secondary ran
twice."""

from datetime import datetime

import scenario as sc


def test_the_failover_succeeded_and_changed_the_cluster():
    run = sc.run("failover")
    assert run["rc"] == 0, run["out"][-3000:]
    assert sum(h["changed"] for h in run["recap"].values()) > 0


def test_running_it_again_changes_nothing():
    run = sc.run("failover-again")
    assert run["rc"] == 0, run["out"][-3000:]
    assert {h: r["changed"] for h, r in run["recap"].items() if r["changed"]} == {}
    assert "already the primary" in run["out"]


def test_secondary_serves_on_a_new_timeline_and_tertiary_follows_it():
    before, after = sc.detect("detect-before.json"), sc.detect()
    assert after["current_primary"] == "pg-secondary-1"
    # a new timeline (PostgreSQL takes the next free ID: at least one more, more when the archive holds others)
    assert sc.row(after, "pg-secondary-1")["timeline"] > sc.row(before, "pg-secondary-1")["timeline"]
    tertiary = sc.row(after, "pg-tertiary-1")
    assert tertiary["role"] == "standby" and tertiary["receiver_status"] == "streaming"
    assert tertiary["sender_host"] == "dr-lab-secondary-db"
    assert not after["split_brain"]


def test_the_dead_primary_is_fenced_out_of_band_and_stays_down():
    assert sc.podman("inspect", "--format", "{{.State.Running}}", "dr-lab-primary-db") == "false"
    report = sc.report_of("failover", "failover")
    assert report["fenced"] == ["pg-primary-1"]
    assert [f["how"] for f in report["plan"]["fence"]] == ["out_of_band"]


def test_the_run_report_has_every_phase_and_the_decision():
    report = sc.report_of("failover", "failover")
    assert report["outcome"] == "succeeded"
    # the service's isolation (the failed region's Redis, app and traffic) follows the promotion, off the write path
    assert [p["name"] for p in report["phases"]] == ["detect", "isolate", "promote", "service-isolate", "repoint",
                                                     "verify", "reopen"]
    for p in report["phases"]:
        assert datetime.fromisoformat(p["start"]) <= datetime.fromisoformat(p["end"])
    assert report["promoted"]["host"] == "pg-secondary-1"
    assert report["promoted"]["timeline"] > report["promoted"]["timeline_before"]
    assert report["repointed"] == ["pg-tertiary-1"]
    assert set(report["lsns_at_decision"]) == {"pg-primary-1", "pg-secondary-1", "pg-tertiary-1"}
    assert sc.report_of("failover-again", "failover")["phases"][2]["outcome"] == "already primary"


def test_synchronous_mode_lost_no_acknowledged_write_and_service_came_back():
    before = sc.detect("detect-before.json")
    primary = sc.row(before, "pg-primary-1")
    # before the kill: the primary waited for one of the two others, and they were its quorum standbys
    assert primary["synchronous_standby_names"] == 'ANY 1 ("standby_pg_secondary_1", "standby_pg_tertiary_1")'
    assert sorted(r["sync_state"] for r in primary["replication"]) == ["quorum", "quorum"]
    m = sc.compare()
    print(f"acked {m['acked']}, lost {m['missing']} (before the failure {m['lost_before_failure']}), "
          f"RTO (client) {m['rto_seconds']} s")
    assert m["acked"] > 100
    assert m["missing"] == 0 and m["lost_before_failure"] == 0, m["missing_writes"][:5]
    assert m["lost_after_failure"] == 0
    assert m["rto_seconds"] is not None, "no write was acknowledged after the failure"
    assert m["first_ack_after_failure"]["region"] == "secondary"


def test_the_new_primary_waits_for_the_other_two_regions_and_tertiary_is_its_quorum_standby():
    after = sc.detect()
    new = sc.row(after, "pg-secondary-1")
    assert new["synchronous_standby_names"] == 'ANY 1 ("standby_pg_primary_1", "standby_pg_tertiary_1")'
    assert [(r["application_name"], r["sync_state"]) for r in new["replication"]] == [
        ("standby_pg_tertiary_1", "quorum")]
    report = sc.report_of("failover", "failover")
    # the run checked it: after the repoint, tertiary acknowledges the new primary's commits
    assert report["synchronous"] == {"setting": 'ANY 1 ("standby_pg_primary_1", "standby_pg_tertiary_1")',
                                     "quorum_standbys": ["standby_pg_tertiary_1"]}
    # and it read the synchronous standbys again once the dead primary was fenced
    out = sc.run("failover")["out"]
    reread = out.split("synchronous mode, nobody is ahead of the candidate after the fence", 1)[1]
    compared = reread.split("TASK [", 1)[0]
    assert "WAL received after the fence" in compared, reread[:2000]
    assert "pg-tertiary-1" in compared and "pg-secondary-1" in compared, reread[:2000]
    # the engine told the dead primary (the standbys' upstream) from a synchronous standby that could hold more
    assert report["plan"]["former_primaries"] == ["pg-primary-1"]


def test_the_service_recovery_ran_once_and_the_rerun_found_it_done():
    first = {s["step"]: s for s in sc.report_of("failover", "failover")["service"] if s["step"] == "recovered"}
    again = sc.report_of("failover-again", "failover")["service"]
    # the promotion may have lost writes: the cache was flushed and the DR event published, under the promotion's
    # timeline; the re-run (plan: promoted) found that event and flushed and rewound nothing
    timeline = sc.report_of("failover", "failover")["promoted"]["timeline"]
    assert first["recovered"]["key"] == f"failover:secondary:timeline-{timeline}"
    assert first["recovered"]["dr_event"], first
    redone = [s for s in again if s["step"] == "recovered"]
    assert len(redone) == 1 and redone[0]["outcome"].startswith("already"), redone
    assert redone[0]["key"] == first["recovered"]["key"]
    # the DNS record set was final after the first run's isolate step: the re-run sent Route 53 no change
    assert [s["outcome"] for s in again if s.get("what") == "traffic"] == ["dns: []", "dns: []"]
