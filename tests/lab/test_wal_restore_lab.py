"""Restores on the running lab, through the playbooks an operator runs: a PITR of a standby region to a time taken
under the workload generator (paused at the target, read-only, so the lab keeps one primary), then the same region's
data directory deleted and rebuilt as a standby from its own region's repository (restore_mode=standby).

Needs WAL archiving on and a backup taken with it in the restored region's repository: test_wal_lab.py, just before
in the lab stage (tests/lab/conftest.py: LAB_ORDER), leaves both; archived_backup() checks that, and sets them up when
this file runs alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from conftest import REPO, assert_no_secret, playbook
from test_wal_lab import REGIONS, archived_backup, s3, serving_region, switch_and_wait_archived

INVENTORY = str(REPO / "inventories" / "lab")


def standby_region(serving: str) -> str:
    return [r for r in REGIONS if r != serving][-1]


def sql(region: str, query: str, db: str = "authdb") -> str:
    out = subprocess.run(["podman", "exec", "-u", "postgres", f"dr-lab-{region}-db", "psql", "-AtX", "-d", db,
                          "-c", query], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def history_objects() -> dict[str, set[str]]:
    """Every region's timeline history files: a restore that opened would archive a new one."""
    out = {}
    for region in REGIONS:
        pages = s3(region).get_paginator("list_objects_v2").paginate(Bucket=f"immersiverse-dr-{region}",
                                                                     Prefix="auth-db/wal/")
        out[region] = {o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".history")}
    return out


def test_pitr_of_a_standby_region_then_rebuild_it_from_its_own_repository(tmp_path):
    serving = serving_region()
    region = standby_region(serving)
    archived_backup(region)  # in the lab stage: test_wal_lab.py's newest backup, WAL archived since

    journal = tmp_path / "journal.jsonl"
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.Popen([sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app",
                            "--dbname", "authdb", "--endpoint",
                            f"{serving}=127.0.0.1:{REGIONS[serving] * 10000 + 5432}", "--rate", "100",
                            "--duration", "6"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert gen.wait(90) == 0, gen.stderr.read()
    acks = [json.loads(line) for line in journal.read_text().splitlines()]
    acks = [a for a in acks if a.get("type") == "ack"]
    assert len(acks) > 200
    pivot = acks[len(acks) // 2]
    target = datetime.fromisoformat(pivot["acked_at"].replace("Z", "+00:00"))
    target_text = target.strftime("%Y-%m-%dT%H:%M:%S.%f+00")  # no space: -e key=value splits on it
    switch_and_wait_archived(serving)  # the target's segment, in every region's repository

    # what the serving primary knows: when each write's transaction started (its commit came later)
    run = pivot["run_id"]
    started = dict(line.split("|") for line in sql(serving, (
        "SELECT request_id::text, extract(epoch FROM occurred_at) FROM audit_logs "
        f"WHERE details->>'run_id' = '{run}'")).splitlines())
    must = {a["request_id"] for a in acks if datetime.fromisoformat(a["acked_at"].replace("Z", "+00:00")) <= target}
    must_not = {rid for rid, epoch in started.items() if float(epoch) > target.timestamp()}
    assert len(must) > 100 and len(must_not) > 100

    # the default target action (promote): in a region that does not serve, the restore must end paused anyway
    args = ["-i", INVENTORY, str(REPO / "playbooks" / "pitr.yml"), "-e", f"restore_region={region}",
            "-e", f"target_time={target_text}"]
    check = playbook(*args, "--check")
    assert check.rc == 0, check.out[-4000:]
    assert "from backup" in check.out and "WAL segments" in check.out
    assert sql(region, "SELECT pg_is_in_recovery()") == "t"
    assert "streaming" in sql(region, "SELECT status FROM pg_stat_wal_receiver", "postgres")  # untouched

    refused = playbook(*args)
    assert refused.rc != 0 and "confirm=true" in refused.out
    late = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00")
    unreachable = playbook("-i", INVENTORY, str(REPO / "playbooks" / "pitr.yml"), "-e", f"restore_region={region}",
                           "-e", f"target_time={late}", "-e", "confirm=true")
    assert unreachable.rc != 0 and "after the last transaction in the WAL" in unreachable.out, unreachable.out[-3000:]
    assert "streaming" in sql(region, "SELECT status FROM pg_stat_wal_receiver", "postgres")  # nothing was stopped

    histories_before = history_objects()
    pitr = playbook(*args, "-e", "confirm=true", "-vvv")
    assert pitr.rc == 0, pitr.out[-6000:]
    assert_no_secret(pitr)
    assert "will end paused at the target" in pitr.out and "still accepts writes" in pitr.out
    assert serving_region() == serving, "one primary: the restored region did not open for writes"
    assert history_objects() == histories_before, "the paused restore archived a timeline into the repositories"
    present = set(sql(region, f"SELECT request_id::text FROM audit_logs WHERE details->>'run_id' = '{run}'")
                  .splitlines())
    assert must <= present, f"{len(must - present)} writes acknowledged before the target are missing"
    assert not (must_not & present), f"{len(must_not & present)} writes begun after the target were replayed"
    assert sql(region, "SELECT pg_get_wal_replay_pause_state()") == "paused"
    aside = subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "sh", "-c",
                            "ls -d /var/lib/postgresql/15/main.replaced-*"], capture_output=True, text=True,
                           check=False).stdout.split()
    assert aside, "the old data directory was not kept"

    # a full restore would open this region at the end of the archive while another serves: refused, nothing stops
    full = playbook("-i", INVENTORY, str(REPO / "playbooks" / "restore.yml"), "-e", f"restore_region={region}",
                    "-e", "confirm=true")
    assert full.rc != 0 and "opens it for writes at the end of the archive" in full.out, full.out[-3000:]
    assert sql(region, "SELECT pg_get_wal_replay_pause_state()") == "paused"  # still the paused PITR, untouched

    # the data directory is lost; the region's standby comes back from its own repository, then streams
    subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "pg_ctlcluster", "15", "main", "stop", "-m",
                    "immediate"], check=False, capture_output=True)
    subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "rm", "-rf", "/var/lib/postgresql/15/main"],
                   check=True)
    rebuilt = playbook("-i", INVENTORY, str(REPO / "playbooks" / "restore.yml"), "-e", f"restore_region={region}",
                       "-e", "restore_mode=standby", "-e", "confirm=true", "-vvv")
    assert rebuilt.rc == 0, rebuilt.out[-6000:]
    assert_no_secret(rebuilt)
    # a standby treats an archive it cannot reach as "not archived yet" and streams on; it never shuts down on it
    restore_command = sql(region, "SHOW restore_command", "postgres")
    assert "--unreachable missing" in restore_command, restore_command
    deadline = time.monotonic() + 60
    primary_count = sql(serving, "SELECT count(*) FROM audit_logs")
    while time.monotonic() < deadline and sql(region, "SELECT count(*) FROM audit_logs") != primary_count:
        time.sleep(1)
    assert sql(region, "SELECT count(*) FROM audit_logs") == primary_count
    assert sql(region, "SELECT pg_is_in_recovery()") == "t"
    assert "streaming" in sql(region, "SELECT status FROM pg_stat_wal_receiver", "postgres")
