"""The service around the database on the running lab, through the playbooks an operator runs: a PITR of the
serving region to before a burst of token revocations, with the generator publishing every revocation to the
region's Kafka (the Tansu stand-in) and caching it in its Redis (a real redis-server), and the app in the region's
Kubernetes stand-in.

Afterwards: every token revoked before the disaster is revoked again (checked against the generator's journal),
the consumer group sits at the recovery point, Redis holds no auth state newer than the database, a DR event is on
dr.events, and the app serves again. The other regions, left on the old timeline, are rejoined so that the next
file finds one primary and two streaming standbys.

Needs WAL archiving on and a backup with its WAL in the serving region's repository: test_wal_lab.py leaves both
(archived_backup() sets them up when this file runs alone)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

from conftest import REPO, assert_no_secret, detect, playbook, podman
from test_failover_lab import heal, lab_ok
from test_wal_lab import REGIONS, archived_backup, serving_region, switch_and_wait_archived
from test_wal_restore_lab import sql

INVENTORY = str(REPO / "inventories" / "lab")
TOPIC = "auth.token-revocations"
GROUP = "auth-service"


def kafka(region: str) -> str:
    return f"127.0.0.1:{REGIONS[region]}9092"


def redis_url(region: str) -> str:
    return f"redis://127.0.0.1:{REGIONS[region]}6379/0"


def k8s(region: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{REGIONS[region]}6443"
    cfg.api_key = {"authorization": "Bearer lab-dummy-token"}
    return client.ApiClient(cfg)


def generate(tmp_path, name: str, region: str, weights: str, seconds: float) -> list[dict]:
    journal = tmp_path / f"{name}.jsonl"
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.run(
        [sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app", "--dbname", "authdb",
         "--endpoint", f"{region}=127.0.0.1:{REGIONS[region]}5432", "--kafka", f"{region}={kafka(region)}",
         "--redis", f"{region}={redis_url(region)}", "--rate", "60", "--duration", str(seconds), "--weights", weights],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert gen.returncode == 0, gen.stderr[-3000:]
    acks = [json.loads(line) for line in journal.read_text().splitlines()]
    return [a for a in acks if a.get("type") == "ack"]


def committed_to_end(region: str) -> dict[int, int]:
    """The app's consumers had read everything: their group's offsets at the end of each partition."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=kafka(region), group_id=GROUP, enable_auto_commit=False)
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC))]
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()


def first_offsets_at_or_after(region: str, moment: datetime) -> dict[int, int]:
    """Read every event of the topic: per partition, the first offset whose timestamp is at or after the moment."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka(region), enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC))]
        ends = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        first = {tp.partition: ends[tp] for tp in tps}
        cut = int(moment.timestamp() * 1000)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for r in records:
                    if r.timestamp >= cut and r.offset < first[tp.partition]:
                        first[tp.partition] = r.offset
        return first
    finally:
        consumer.close()


def group_offsets(region: str) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka(region))
    try:
        got = admin.list_group_offsets(GROUP).get(GROUP, {})
        return {tp.partition: meta.offset for tp, meta in got.items() if tp.topic == TOPIC}
    finally:
        admin.close()


def dr_events(region: str) -> list[tuple[str, dict]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer("dr.events", bootstrap_servers=kafka(region), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=4000)
    try:
        return [(m.key.decode(), json.loads(m.value)) for m in consumer]
    finally:
        consumer.close()


def cutoffs(region: str) -> int:
    """Cut-offs recorded (the table is made on the first one, or by the schema of a newer database)."""
    if sql(region, "SELECT to_regclass('token_revocation_cutoff') IS NULL") == "t":
        return 0
    return int(sql(region, "SELECT count(*) FROM token_revocation_cutoff"))


def test_pitr_of_the_serving_region_puts_back_every_revocation_made_after_the_point(tmp_path):
    import redis
    from kubernetes import client

    region = serving_region()
    archived_backup(region)
    committed_before = committed_to_end(region)
    before = generate(tmp_path, "before", region, "signup=2,login=4,revoke=4", 5)
    time.sleep(0.5)
    target = datetime.now(UTC)
    time.sleep(0.5)
    burst = generate(tmp_path, "burst", region, "signup=0,login=1,revoke=9", 4)  # the burst the PITR forgets
    revoked_before = {a["jti"] for a in before if a.get("op") == "revoke"}
    revoked_burst = {a["jti"] for a in burst if a.get("op") == "revoke"}
    assert len(revoked_before) > 20 and len(revoked_burst) > 60, (len(revoked_before), len(revoked_burst))
    assert all(a.get("kafka_acked") for a in burst if a.get("op") == "revoke"), "the generator's Kafka side failed"
    cache = redis.Redis.from_url(redis_url(region))
    for i in range(50):  # sessions the app cached after the point, of logins the PITR forgets
        cache.set(f"session:lab-{i}", "s", ex=600)
    committed_to_end(region)
    switch_and_wait_archived(region)

    target_text = target.strftime("%Y-%m-%dT%H:%M:%S.%f+00")
    run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "pitr.yml"), "-e", f"restore_region={region}",
                   "-e", f"target_time={target_text}", "-e", "confirm=true", "-vvv", timeout=900)
    assert run.rc == 0, run.out[-6000:]
    assert_no_secret(run)
    assert serving_region() == region
    # once open, its restore_command is a running cluster's: were it "abort", a standby made of it one day would
    # stop when a region's S3 does not answer, at its promotion too (the partition scenario's failover did)
    auto_conf = podman("exec", f"dr-lab-{region}-db", "cat", "/var/lib/postgresql/15/main/postgresql.auto.conf")
    restore_lines = [line for line in auto_conf.splitlines() if line.startswith("restore_command")]
    assert restore_lines and all("--unreachable missing" in line for line in restore_lines), restore_lines

    # every token revoked before the disaster is revoked again: before the point by the restore, after it by the
    # re-apply from the revocation stream (the journal is the truth); no cut-off was needed (the stream answered)
    blacklisted = set(sql(region, "SELECT jti::text FROM token_blacklist").splitlines())
    assert revoked_before <= blacklisted, f"{len(revoked_before - blacklisted)} revocations before the point lost"
    assert revoked_burst <= blacklisted, f"{len(revoked_burst - blacklisted)} revocations after the point lost"
    assert cutoffs(region) == 0
    steps = re.findall(r"\breapplied['\"]?:\s*(\d+)", run.out)
    assert steps and int(steps[-1]) >= len(revoked_burst), steps
    # what the PITR did forget (the burst's logins) is gone: the restore really went back
    logins_after = {a["request_id"] for a in burst if a.get("op") == "login"}
    present = set(sql(region, "SELECT request_id::text FROM audit_logs WHERE occurred_at > now() - interval '1 hour'")
                  .splitlines())
    assert not (logins_after & present), "writes after the point survived: the restore did not go back"

    # Redis holds no auth state newer than the database
    assert not list(cache.scan_iter(match="session:*"))
    cached = {k.decode().split(":", 1)[1] for k in cache.scan_iter(match="revoked:*")}
    assert cached and cached <= blacklisted

    # downstream is told, once, with the point the database was recovered to (its last commit at or before the
    # target)
    events = [e for k, e in dr_events(region) if e.get("region") == region and e.get("type") == "pitr"]
    assert events and events[-1]["recovery_point"]
    point = datetime.fromisoformat(events[-1]["recovery_point"].replace(" ", "T"))
    assert point <= target

    # the consumers process every event after the point again
    wanted = first_offsets_at_or_after(region, point)
    got = group_offsets(region)
    assert got == wanted, (got, wanted, committed_before)
    assert all(got[p] < committed_before[p] + 1000 for p in got)

    # the app serves again: replicas, ready, no deny-all policy
    apps = client.AppsV1Api(k8s(region))
    dep = apps.read_namespaced_deployment("auth-service", "auth")
    assert dep.spec.replicas == 3 and dep.status.ready_replicas == 3
    policies = client.NetworkingV1Api(k8s(region)).list_namespaced_network_policy("auth").items
    assert not [p for p in policies if p.metadata.name == "immersiverse-dr-deny-all"]

    # a re-run changes nothing and puts nothing back twice
    again = playbook("-i", INVENTORY, str(REPO / "playbooks" / "pitr.yml"), "-e", f"restore_region={region}",
                     "-e", f"target_time={target_text}", "-e", "confirm=true", timeout=900)
    assert again.rc == 0, again.out[-6000:]
    assert "nothing to do" in again.out
    # the recovery's DR event was found: no cache flushed again, no consumer rewound again (while the app serves)
    assert "done by an earlier run: DR event" in again.out, again.out[-6000:]
    assert cutoffs(region) == 0
    assert len([e for k, e in dr_events(region) if e.get("region") == region and e.get("type") == "pitr"]) == len(
        events)

    # the other regions are on the old timeline: rejoined, so the next file finds the lab's layout
    heal(tmp_path, detect(tmp_path))
    assert lab_ok(detect(tmp_path))
