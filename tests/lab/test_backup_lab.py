"""Backups on the running lab: the backup playbook against the real database hosts and each region's S3 endpoint."""

from __future__ import annotations

import json
import subprocess
import time

from conftest import REPO, assert_no_secret, playbook

from drlab import s3 as lab_s3

INVENTORY = str(REPO / "inventories" / "lab")
REGIONS = {"primary": (19000, "immersiverse-dr-primary"), "secondary": (29000, "immersiverse-dr-secondary"),
           "tertiary": (39000, "immersiverse-dr-tertiary")}


def s3_client(region: str):
    return lab_s3.client(region)


def bucket_keys(region: str, prefix: str = "auth-db/") -> list[str]:
    bucket = REGIONS[region][1]
    client = s3_client(region)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def committed(keys: list[str], area: str) -> set[str]:
    return {k.split("/")[2] for k in keys if k.startswith(f"auth-db/{area}/") and k.endswith("/backup.json")}


def labelled(region: str, label: str) -> set[str]:
    """The committed full backups in ``region``'s repository whose catalog record carries ``label``."""
    client, bucket = s3_client(region), REGIONS[region][1]
    return {backup_id for backup_id in committed(bucket_keys(region, "auth-db/backup/"), "backup")
            if json.loads(client.get_object(Bucket=bucket, Key=f"auth-db/backup/{backup_id}/backup.json")["Body"]
                          .read()).get("label") == label}


def test_check_mode_runs_nothing_and_writes_nothing():
    # backups and logical dumps only: WAL archiving, when a test before turned it on, writes wal/ meanwhile
    before = {r: bucket_keys(r, "auth-db/backup/") + bucket_keys(r, "auth-db/logical/") for r in REGIONS}
    run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"), "--check")
    assert run.rc == 0, run.out[-3000:]
    assert "would run: " in run.out and "--no-password" in run.out
    assert {r: bucket_keys(r, "auth-db/backup/") + bucket_keys(r, "auth-db/logical/") for r in REGIONS} == before


def test_full_and_logical_backups_reach_every_region_and_the_schedule_runs_the_same_engine():
    extra = json.dumps({"backup_actions": ["full", "logical", "retention", "schedule"], "backup_label": "lab-weekly"})
    run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"), "-e", extra, "-vvv")
    assert run.rc == 0, run.out[-4000:]
    assert_no_secret(run)
    fulls = {r: committed(bucket_keys(r), "backup") for r in REGIONS}
    logicals = {r: committed(bucket_keys(r), "logical") for r in REGIONS}
    # this run's full backup (or, on a lab that kept its buckets, the one an earlier run took with this label): one,
    # the same in every region
    weekly = {r: labelled(r, "lab-weekly") for r in REGIONS}
    assert len(weekly["primary"]) == 1 and weekly["primary"] == weekly["secondary"] == weekly["tertiary"], weekly
    assert fulls["primary"] == fulls["secondary"] == fulls["tertiary"], fulls
    assert logicals["primary"] == logicals["secondary"] == logicals["tertiary"] and logicals["primary"], logicals

    # the same label again: nothing new anywhere
    again = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"), "-e",
                     json.dumps({"backup_label": "lab-weekly"}))
    assert again.rc == 0, again.out[-3000:]
    assert {r: committed(bucket_keys(r), "backup") for r in REGIONS} == fulls

    # every region's catalog, verified byte for byte from the controller
    info = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup_info.yml"), "-e", "backup_verify=checksums")
    assert info.rc == 0, info.out[-3000:]
    for region in REGIONS:
        assert f"{region}: " in info.out

    # the scheduled command, installed by the role, run as cron would run it, on every database host
    for region in REGIONS:
        cron = subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "cat", "/etc/cron.d/immersiverse-dr-backup"],
                              capture_output=True, text=True, check=True).stdout
        assert "postgres immersiverse-dr-backup full --config /etc/immersiverse-dr/backup.json" in cron
        listed = subprocess.run(["podman", "exec", "-u", "postgres", f"dr-lab-{region}-db", "immersiverse-dr-backup",
                                 "info", "--config", "/etc/immersiverse-dr/backup.json"],
                                capture_output=True, text=True, check=False)
        assert listed.returncode == 0, listed.stderr
        assert set(json.loads(listed.stdout)["backups"]) >= fulls[region]
        mode = subprocess.run(["podman", "exec", f"dr-lab-{region}-db", "stat", "-c", "%a %U",
                               "/etc/immersiverse-dr/backup.json"], capture_output=True, text=True, check=True)
        assert mode.stdout.split() == ["600", "postgres"]


def test_a_backup_job_that_dies_before_its_first_progress_ends_the_wait_at_once():
    """A staging directory the postgres user cannot create: the job fails before any progress can be written. The
    poll must not wait out the job's 6-hour timeout, and the operator sees the job's own message."""
    t0 = time.monotonic()
    run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"), "-e",
                   "backup_staging_dir=/root/not-for-postgres", timeout=600)
    took = time.monotonic() - t0
    assert run.rc != 0
    assert "Full | result" in run.out and "/root/not-for-postgres" in run.out, run.out[-3000:]
    assert took < 300, f"the poll waited {took:.0f} s on a job that had already failed"
