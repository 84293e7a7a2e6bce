"""The offsite store's lifecycle, run by the server: a week and more of daily backups and continuous WAL under the
rules s3_backup_lifecycle derives, on a Ceph RGW whose lifecycle day lasts DAY seconds; then what the server left
is asked for every point the policy promises.

The gateway is one of its own (realm "lifecycle" in dr-lab-ceph, 127.0.0.1:49000): the regions' repositories keep
real days. The database is a local PostgreSQL 15 (the suite's pg_server_factory) archiving with the collection's
own archive_command; restores use the engine's plan and restore, and PostgreSQL's recovery with the collection's
restore_command, into scratch servers that pause at their target. What RGW does not do as AWS does (no midnight
rounding; GLACIER reads at once) is in docs/lab.md; the plan refuses GLACIER objects as it must on AWS.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3
import jinja2
import psycopg2
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import watch as restore_watch  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import bucket as s3policy_bucket  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import derive as s3policy_derive  # noqa: E402

DAY = 6  # seconds: the lifecycle gateway's day
DAYS = 11  # simulated days of daily backups and continuous WAL
ENDPOINT = "http://127.0.0.1:49000"
POLICY = {"pitr_window_days": 2, "full_interval_days": 1, "retention_days": 4, "margin_days": 1,
          "noncurrent_version_days": 1, "abort_incomplete_multipart_days": 1}
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TEMPLATE = REPO / "roles" / "wal_archive" / "templates" / "immersiverse-dr-wal.j2"
POSTGRES = pwd.getpwnam("postgres")


def gateway(day: str) -> dict:
    """Start (``day`` seconds a day) or stop the lifecycle gateway; its user's keys."""
    subprocess.run(["podman", "exec", "dr-lab-ceph", "lab-ceph", "lifecycle-gateway", day], check=True, timeout=120,
                   capture_output=True)
    if day == "stop":
        return {}
    user = json.loads(subprocess.run(
        ["podman", "exec", "dr-lab-ceph", "radosgw-admin", "user", "info", "--uid=dr-lab", "--rgw-realm=lifecycle",
         "--rgw-zonegroup=lifecycle", "--rgw-zone=lifecycle-a"], check=True, timeout=60, capture_output=True,
        text=True).stdout)["keys"][0]
    creds = {"access_key": user["access_key"], "secret_key": user["secret_key"]}
    client = s3(creds)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            return creds
        except Exception:  # noqa: BLE001 - not up yet
            assert time.monotonic() < deadline, "the lifecycle gateway did not answer in 60 s"
            time.sleep(0.5)


def s3(creds: dict):
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1", aws_access_key_id=creds["access_key"],
                        aws_secret_access_key=creds["secret_key"])


def as_postgres(path: Path) -> Path:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, POSTGRES.pw_uid, POSTGRES.pw_gid)
    return path


def wrapper(root: Path, repository: dict) -> Path:
    """The wal_archive role's wrapper and config, in ``root``."""
    spool = root / "spool"
    spool.mkdir(parents=True)
    config = root / "wal.json"
    config.write_text(json.dumps({"repository": repository, "spool_dir": str(spool), "async": False,
                                  "fetch_unreachable": "abort"}))
    config.chmod(0o600)
    path = root / "immersiverse-dr-wal"
    path.write_text(jinja2.Template(TEMPLATE.read_text()).render(
        wal_archive_spool_dir=str(spool), wal_archive_install_dir=str(REPO / ".collections"),
        wal_archive_python="/usr/bin/python3", wal_archive_config_file=str(config)))
    path.chmod(0o755)
    as_postgres(root)
    return path


@pytest.fixture
def lifecycle_bucket():
    creds = gateway(str(DAY))
    bucket = f"lab-test-lifecycle-{uuid.uuid4().hex[:8]}"
    client = s3(creds)
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    yield bucket, creds
    gateway("stop")


def test_the_server_runs_the_derived_rules_and_every_promised_point_restores(lifecycle_bucket, pg_server_factory):
    bucket, creds = lifecycle_bucket
    client = s3(creds)
    applied = s3policy_bucket.reconcile(client, {
        "bucket": bucket, "prefix": "auth-db", "policy": POLICY, "versioning": True, "object_lock": None,
        "encryption": None, "deny_insecure_transport": False, "deny_unencrypted_uploads": False, "replication": None,
        "id_prefix": s3policy_derive.ID_PREFIX, "endpoint_url": ENDPOINT})
    plan = applied["plan"]
    fast, archive_at, expire_at = (plan["backup"]["fast_days"], plan["backup"]["archive_after_days"],
                                   plan["backup"]["expire_days"])
    assert (fast, archive_at, expire_at) == (4, 4, 6), plan
    repository = {"type": "s3", "name": "lifecycle", "bucket": bucket, "prefix": "auth-db", "endpoint_url": ENDPOINT,
                  "region": "us-east-1", **creds}
    repo = repo_spec.open_repository(repository)
    work = Path(tempfile.mkdtemp(prefix="drlab-lifecycle-"))
    work.chmod(0o711)
    try:
        archive = wrapper(work / "archive", repository)
        source = pg_server_factory("lifecycle-src", settings={
            "wal_level": "replica", "archive_mode": "on", "track_commit_timestamp": "on",
            "archive_command": f"'{archive} push %p'"})
        source.psql("CREATE TABLE ticks (n int PRIMARY KEY)")
        params = {"login_host": source.host, "login_port": source.port, "login_user": "postgres",
                  "login_password": source.password, "login_db": "postgres", "login_unix_socket": "",
                  "connect_timeout": 5, "ssl_mode": "disable"}
        ident = backup_operations.cluster_identity(params)

        # the weeks (DAYS x DAY seconds): a full backup at the start of each day, a tick every 0.25 s, a WAL
        # switch every 2 s; the server runs its lifecycle rounds all along
        stop = threading.Event()
        ticker = threading.Thread(target=tick, args=(source, stop))
        ticker.start()
        backups = []
        try:
            t0 = time.time()
            for day in range(DAYS):
                while time.time() < t0 + day * DAY:
                    time.sleep(0.05)
                backups.append(backup_full.take_backup(repo, params, ident, pg_bin=str(PG_BIN)))
                while time.time() < t0 + (day + 1) * DAY - 0.5:
                    time.sleep(2)
                    source.psql("SELECT pg_switch_wal()")
        finally:
            stop.set()
            ticker.join(30)
        source.psql("SELECT pg_switch_wal()")
        wait_archived(source)

        # what the server did, at this moment: the oldest backups expired, older objects transitioned, nothing
        # young touched (RGW's debug day has no midnight rounding: an object expires at exactly N days; one day of
        # slack for a lifecycle round that is still to run)
        now = time.time()
        listed = {o["key"]: o for o in repo.list("")}
        gone = [b["id"] for b in backups if f"backup/{b['id']}/backup.json" not in listed]
        assert backups[0]["id"] in gone, f"the server expired no backup: {sorted(listed)[:5]}"
        for b in backups:
            age_days = (now - backup_catalog.parse_iso(b["start_time"]).timestamp()) / DAY
            if age_days < expire_at:
                assert b["id"] not in gone, f"{b['id']} ({age_days:.1f} days old) expired before {expire_at} days"
        classes = {o["storage_class"] for o in listed.values()}
        assert "GLACIER" in classes, f"the server transitioned nothing: {classes}"
        started = {b["id"]: backup_catalog.parse_iso(b["start_time"]).timestamp() for b in backups}
        young = [k for k, o in listed.items() if k.startswith("backup/") and o["storage_class"] != "STANDARD"
                 and (now - started[k.split("/")[1]]) / DAY < archive_at]
        assert not young, f"objects transitioned younger than {archive_at} days: {young[:5]}"

        # the promise is about this moment: the server's lifecycle clock is stopped here (the gateway back on real
        # days), so the restores below see what the server left now, however long they take
        gateway("-1")
        ticks = dict(source.psql("SELECT n, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float FROM ticks"))
        # inside the window: the plan finds everything in STANDARD, and the restore is exact
        for back in (0.3, POLICY["pitr_window_days"] - 0.2):
            moment = now - back * DAY
            restored = restore(work, f"window-{back}", repo, archive, moment, source.password)
            expect = max(n for n, at in ticks.items() if at <= moment)
            assert restored == expect, f"{back} days back: restored up to tick {restored}, expected {expect}"
        # inside retention but older than the window: restorable, perhaps from the archive tier (the plan names it)
        try:
            restore_plan.plan([repo], target_at(now - (POLICY["retention_days"] - 0.5) * DAY))
        except restore_target.RestoreError as exc:
            assert "archive storage class" in str(exc) and "restore-object" in str(exc), str(exc)
        # beyond what the server kept: refused, saying so
        with pytest.raises(restore_target.RestoreError):
            restore_plan.plan([repo], target_at(now - (DAYS + 1) * DAY))
    finally:
        for sub in work.glob("restore-*"):
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(sub / "data"),
                            "-m", "immediate", "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def tick(source, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        source.psql("INSERT INTO ticks VALUES (%s)", (n,))
        stop.wait(0.25)


def wait_archived(source) -> None:
    last = source.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    deadline = time.monotonic() + 60
    while source.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0] < last:
        assert time.monotonic() < deadline, "archiving fell behind"
        source.psql("SELECT pg_switch_wal()")
        time.sleep(0.5)


def target_at(moment: float) -> dict:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment)) + f".{int((moment % 1) * 1e6):06d}+00"
    return {"type": "time", "value": when, "inclusive": True}


def restore(work: Path, name: str, repo, archive: Path, moment: float, password: str) -> int:
    """The engine's restore of ``repo`` to ``moment`` into a scratch server that pauses there; its last tick."""
    target = target_at(moment)
    plan = restore_plan.plan([repo], target)
    root = work / f"restore-{name}"
    data = root / "data"
    run = root / "run"
    run.mkdir(parents=True)
    restore_datadir.prepare_data_dir([repo], plan, str(data))
    port = 45500 + len(list(work.glob("restore-*")))
    (data / "postgresql.auto.conf").write_text(
        f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{run}'\narchive_mode = off\n"
        f"restore_command = '{archive} fetch %f %p'\nrecovery_target_time = '{target['value']}'\n"
        "recovery_target_inclusive = on\nrecovery_target_action = 'pause'\n")
    (data / "recovery.signal").touch()
    root.chmod(0o711)
    as_postgres(root)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                    str(root / "server.log"), "-w", "-t", "120", "start"], check=False, timeout=150,
                   capture_output=True)

    def connect():
        return psycopg2.connect(host=str(run), port=port, user="postgres", password=password, dbname="postgres",
                                connect_timeout=2)

    restore_watch.wait_for_recovery(connect, str(data), str(root / "server.log"), timeout=120, poll=0.3)
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT coalesce(max(n), 0) FROM ticks")
        return cur.fetchone()[0]
    finally:
        conn.close()
