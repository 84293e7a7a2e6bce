"""Partition: the primary region was cut off under traffic, failover.yml -l secondary ran, the partition healed,
rejoin.yml -l primary brought the old primary back."""

import scenario as sc


def test_the_failover_fenced_the_cut_off_primary_out_of_band():
    run = sc.run("failover")
    assert run["rc"] == 0, run["out"][-3000:]
    report = sc.report_of("failover", "failover")
    assert report["outcome"] == "succeeded"
    assert [(f["host"], f["how"]) for f in report["plan"]["fence"]] == [("pg-primary-1", "out_of_band")]
    assert report["promoted"]["host"] == "pg-secondary-1"


def test_after_the_heal_the_old_primary_accepted_no_write():
    out = sc.outcome()
    # pg_lsclusters: "15 main 5432 down postgres ..." - the fence keeps it down when its host comes back
    assert " down " in f" {out['old_primary_clusters_after_heal']} ", out["old_primary_clusters_after_heal"]
    assert sc.acks_after("primary", out["healed_at"]) == []
    # and nothing was acknowledged there after the partition either (it could not be reached)
    assert sc.acks_after("primary", out["fault_at"]) == []
    m = sc.compare()
    assert m["rto_seconds"] is not None and m["first_ack_after_failure"]["region"] == "secondary"
    assert m["lost_after_failure"] == 0


def test_asynchronous_loss_is_within_the_replication_lag():
    m = sc.compare()
    print(f"acked {m['acked']}, lost before the partition {m['lost_before_failure']}, RPO {m['rpo_seconds']} s")
    assert m["acked"] > 100
    # Asynchronous replication: what was lost was acknowledged within the last second before the partition (the
    # lab's standbys replay within milliseconds), never more.
    assert m["rpo_seconds"] is not None and m["rpo_seconds"] <= 1.0


def test_rejoin_made_it_a_standby_of_secondary_without_a_reclone():
    run = sc.run("rejoin")
    assert run["rc"] == 0, run["out"][-3000:]
    report = sc.report_of("rejoin", "rejoin")
    assert report["rewound"] is True
    out = sc.outcome()
    assert out["inode_before"] == out["inode_after"]
    after = sc.detect()
    primary = sc.row(after, "pg-primary-1")
    assert primary["role"] == "standby" and primary["receiver_status"] == "streaming"
    assert primary["sender_host"] == "dr-lab-secondary-db"
    assert not (primary["fence"] or {}).get("fenced")
    assert after["current_primary"] == "pg-secondary-1" and not after["split_brain"]
