"""Planned switchover to secondary and back to primary under traffic."""

import scenario as sc


def test_both_switchovers_succeeded():
    for name, region in (("to-secondary", "secondary"), ("to-primary", "primary")):
        run = sc.run(name)
        assert run["rc"] == 0, run["out"][-3000:]
        report = sc.report_of(name, "switchover")
        assert report["outcome"] == "succeeded" and report["region"] == region
        assert report["plan"]["state"] == "switch"
        print(f"{name}: writes unavailable {report['write_unavailable_seconds']} s "
              "(stop -> promoted, as Ansible saw it)")


def test_no_acknowledged_write_was_lost():
    m = sc.compare()
    print(f"acked {m['acked']}, lost {m['lost_before_failure'] + m['lost_after_failure']}, "
          f"outages {[round(o['seconds'], 3) for o in m['outages']]}")
    assert m["acked"] > 100
    assert m["lost_before_failure"] == 0 and m["lost_after_failure"] == 0 and m["missing"] == 0


def test_no_data_directory_was_recloned():
    out = sc.outcome()
    assert out["inode_before"] == out["inode_after"]
    for name in ("to-secondary", "to-primary"):
        text = sc.run(name)["out"]
        # the old primary became a standby by pg_rewind, never by pg_basebackup
        assert "changed: [" in text.split("Rewind onto the primary's timeline", 1)[1].split("TASK", 1)[0]
        assert "Take the base backup from the primary" not in text


def test_primary_serves_again_and_both_others_stream_from_it():
    after = sc.detect()
    assert after["current_primary"] == "pg-primary-1"
    for host in ("pg-secondary-1", "pg-tertiary-1"):
        r = sc.row(after, host)
        assert r["role"] == "standby" and r["receiver_status"] == "streaming"
        assert r["sender_host"] == "dr-lab-primary-db"
