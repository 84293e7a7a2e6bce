"""The lab's S3 is a real server, Ceph RGW (one gateway per region, each its own realm): what moto could not show.

Each region's S3 has its own keys and namespace; create-only writes (the WAL push, the runbook lock) hold on
unversioned, versioned and Object Lock buckets against writers racing in the same instant; the server's Object Lock
keeps a backup that retention wants gone; SSE-KMS is ciphertext at rest and SSE-S3 is not; the lifecycle role's
encryption-header policy is enforced, its TLS-only one is not; and a region's gateway stopped (the process gone, not
paused) while the generator writes loses no WAL segment in any region. Test buckets are named ``lab-test-*``; the
lab's repositories are read, never changed, except that the outage test archives WAL into them as the lab always
does.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import botocore.exceptions
import pytest
from conftest import REPO, playbook
from test_wal_lab import REGIONS, serving_region, superuser_sql

from drlab import s3 as lab_s3

sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook import lock as runbook_lock  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import bucket as s3policy_bucket  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects  # noqa: E402


def scratch_bucket(region: str, name: str, versioning: bool = False, object_lock: bool = False) -> str:
    """A ``lab-test-<name>`` bucket in ``region``'s S3 (made once; kept: the lab's data dies with the cluster)."""
    bucket = f"lab-test-{name}"
    client = lab_s3.client(region)
    try:
        client.create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if object_lock else {}))
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    if versioning and not object_lock:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def repository(region: str, bucket: str, prefix: str):
    spec = {**lab_s3.repository(region, prefix=prefix), "bucket": bucket}
    return repo_spec.open_repository(spec)


def rgw(region: str, action: str) -> None:
    """Stop (the process is gone: connections are refused) or start a region's gateway, out of band."""
    host = f"dr-lab-{region}-svc"
    if action == "stop":
        subprocess.run(["podman", "exec", host, "lab-ceph", "rgw-stop"], check=True, timeout=30)
    else:
        subprocess.run(["podman", "exec", "-d", host, "lab-ceph", "rgw", region], check=True, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                lab_s3.client(region).list_buckets()
                return
            except botocore.exceptions.BotoCoreError:
                assert time.monotonic() < deadline, f"the {region} gateway did not come back in 60 s"
                time.sleep(0.5)


def test_each_region_has_its_own_keys_and_buckets():
    primary = lab_s3.client("primary")
    assert lab_s3.bucket("primary") in [b["Name"] for b in primary.list_buckets()["Buckets"]]
    assert lab_s3.bucket("secondary") not in [b["Name"] for b in primary.list_buckets()["Buckets"]]
    creds = lab_s3.credentials("secondary")
    import boto3

    foreign = boto3.client("s3", endpoint_url=lab_s3.endpoint("primary"), region_name="us-east-1",
                           aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])
    with pytest.raises(botocore.exceptions.ClientError) as err:
        foreign.list_objects_v2(Bucket=lab_s3.bucket("primary"), MaxKeys=1)
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"


@pytest.mark.parametrize("kind", ["plain", "versioned", "locked"])
def test_create_only_writes_keep_the_first_writer(kind):
    """The WAL push's and the runbook lock's create-only write: an existing key is never replaced, and of writers
    racing in the same instant exactly one wins and the key holds its content. RGW 16.2 ignores If-None-Match on
    versioned buckets (asserted below, so that this test knows what it tests): there the repository's check of the
    bucket's versions is what keeps the writers apart."""
    bucket = scratch_bucket("primary", f"create-{kind}", versioning=kind != "plain", object_lock=kind == "locked")
    client = lab_s3.client("primary")
    if kind == "locked":
        client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    repo = repository("primary", bucket, prefix)
    key = "wal/000000010000000000000001"
    assert repo.create(key, b"first") is True
    assert repo.create(key, b"second") is False
    assert repo.read(key)[0] == b"first"

    client.put_object(Bucket=bucket, Key=f"{prefix}/probe", Body=b"1")
    try:
        client.put_object(Bucket=bucket, Key=f"{prefix}/probe", Body=b"2", IfNoneMatch="*")
        honoured = False
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "PreconditionFailed"
        honoured = True
    assert honoured == (kind == "plain"), "RGW's If-None-Match behaviour changed: see _repo/s3.py first_version"

    writers = 6
    for attempt in range(3):
        race_key = f"wal/00000001000000000000001{attempt}"
        barrier = threading.Barrier(writers)
        results = {}

        def write(n, race_key, barrier, results):
            mine = repository("primary", bucket, prefix)
            barrier.wait(timeout=30)
            results[n] = mine.create(race_key, f"writer {n}".encode())

        threads = [threading.Thread(target=write, args=(n, race_key, barrier, results)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == writers, results
        winners = [n for n, won in results.items() if won]
        assert len(winners) == 1, f"{kind}: {len(winners)} writers all created {race_key}: {results}"
        assert repo.read(race_key)[0] == f"writer {winners[0]}".encode()


def test_two_controllers_never_both_hold_the_runbook_lock():
    """Two runs take the runbook lock at the same instant in the three regions' (versioned) repositories: one holds
    it, the other is told who does."""
    prefix = f"lab-test-lock-{uuid.uuid4().hex[:8]}"
    for attempt in range(3):
        barrier = threading.Barrier(2)
        results = {}

        def take(run_id, barrier, results):
            repos = [repository(r, lab_s3.bucket(r), prefix) for r in REGIONS]
            barrier.wait(timeout=30)
            try:
                results[run_id] = runbook_lock.acquire(repos, "failover", run_id, "lab test")["acquired"]
            except runbook_lock.LockHeld as exc:
                results[run_id] = str(exc)

        threads = [threading.Thread(target=take, args=(f"run-{attempt}-{n}", barrier, results)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        held = [run for run, got in results.items() if got is True]
        assert len(held) == 1, f"both runs or neither hold the lock: {results}"
        loser = next(got for got in results.values() if got is not True)
        assert "held by" in loser and held[0] in loser, loser
        repos = [repository(r, lab_s3.bucket(r), prefix) for r in REGIONS]
        runbook_lock.release(repos, "failover", held[0], record=False)


def test_a_locked_backup_survives_retention():
    """Retention asks the server to delete a backup that Object Lock protects: the server refuses, the backup stays
    whole and readable, and retention says why it was skipped; the unlocked one it may delete goes."""
    source = serving_region()
    for _take in range(3):  # the earlier lab tests took some; this one needs three in the serving region's
        if len(committed_backups(source)) >= 3:
            break
        run = playbook("-i", str(REPO / "inventories" / "lab"), str(REPO / "playbooks" / "backup.yml"))
        assert run.rc == 0, run.out[-3000:]
    assert len(committed_backups(source)) >= 3
    src_client, src_bucket = lab_s3.client(source), lab_s3.bucket(source)
    older, middle, newest = committed_backups(source)[-3:]
    bucket = scratch_bucket(source, "retention-locked", object_lock=True)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=30)
    for backup_id in (older, middle, newest):
        for obj in src_client.list_objects_v2(Bucket=src_bucket, Prefix=f"auth-db/backup/{backup_id}/")["Contents"]:
            key = prefix + obj["Key"][len("auth-db"):]
            src_client.copy_object(Bucket=bucket, Key=key, MetadataDirective="COPY",
                                   CopySource={"Bucket": src_bucket, "Key": obj["Key"]})
            if backup_id == older:  # RGW 16.2 ignores lock headers on a copy: the retention is set on the object
                src_client.put_object_retention(Bucket=bucket, Key=key,
                                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until})
                assert src_client.head_object(Bucket=bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    repo = repository(source, bucket, prefix)
    report = backup_operations.retention(repo, keep_full=1)
    assert report["kept"] == [{"id": newest, "reason": report["kept"][0]["reason"]}], report
    assert report["deleted"] == [middle], report
    assert list(report["skipped"]) == [older] and "lock" in report["skipped"][older], report
    left = {b["id"] for b in backup_catalog.list_backups(repo) if b.get("status") != "incomplete"}
    assert left == {older, newest}, left
    # whole: every object of the locked backup still reads back with the checksum it was stored with
    record = next(b for b in backup_catalog.list_backups(repo) if b["id"] == older)
    for f in record.get("files", []):
        data, _info = repo.read(f"backup/{older}/{f['name']}")
        assert len(data) == f["size"], f
    again = backup_operations.retention(repo, keep_full=1)
    assert again["deleted"] == [] and list(again["skipped"]) == [older], again


def rados_head(region: str, bucket: str, key: str) -> bytes:
    """What RADOS holds for a small object (its head object, ``<bucket marker>_<key>`` in the zone's data pool), read
    out of band on dr-lab-ceph: the bytes at rest, whatever the gateway answers."""
    pool = f"{region}-a.rgw.buckets.data"
    listed = subprocess.run(["podman", "exec", "dr-lab-ceph", "rados", "-p", pool, "ls"], check=True, timeout=60,
                            capture_output=True, text=True).stdout.split()
    oids = [oid for oid in listed if oid.endswith("_" + key)]
    assert len(oids) == 1, f"{bucket}/{key}: head objects {oids} in {pool}"
    return subprocess.run(["podman", "exec", "dr-lab-ceph", "rados", "-p", pool, "get", oids[0], "-"], check=True,
                          timeout=60, capture_output=True).stdout


@pytest.mark.parametrize("sse", ["aws:kms", "AES256"])
def test_server_side_encryption_is_what_the_server_stores(sse):
    """A repository with ``sse`` writes through the engine (one PUT, and a multipart upload whose parts carry their
    Content-MD5): the gateway reports the encryption and reads the content back. At rest, SSE-KMS (RGW's testing
    KMS backend, key lab-kms-key) is ciphertext; SSE-S3 (AES256) is accepted and reported by RGW 16.2 but stored in
    plaintext and not reported back, as docs/lab.md says: on such a server it protects nothing."""
    region = "primary"
    bucket = scratch_bucket(region, "sse")
    prefix = f"sse-{uuid.uuid4().hex[:12]}"
    spec = {**lab_s3.repository(region, prefix=prefix), "bucket": bucket, "sse": sse, "part_size_mb": 5,
            **({"sse_kms_key_id": "lab-kms-key"} if sse == "aws:kms" else {})}
    repo = repo_spec.open_repository(spec)
    marker = f"immersiverse-dr plaintext {uuid.uuid4().hex} ".encode()
    small = marker * 64
    repo.put_bytes("small", small)
    big = os.urandom(11 << 20) + marker
    writer = repo.writer("big")
    for at in range(0, len(big), 1 << 20):
        writer.write(big[at:at + (1 << 20)])
    writer.commit()
    client = lab_s3.client(region)
    for key, body in (("small", small), ("big", big)):
        head = client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        # RGW 16.2 reports SSE-KMS back and says nothing of SSE-S3, which it does not apply
        reported = sse if sse == "aws:kms" else None
        assert head.get("ServerSideEncryption") == reported, (key, head.get("ServerSideEncryption"))
        data, _info = repo.read(key)
        assert data == body, key
    assert client.head_object(Bucket=bucket, Key=f"{prefix}/big")["ETag"].strip('"').endswith("-3")  # multipart
    at_rest = rados_head(region, bucket, f"{prefix}/small")
    assert len(at_rest) >= len(small)
    if sse == "aws:kms":
        assert marker not in at_rest, "SSE-KMS: the plaintext is in RADOS"
    else:
        assert marker in at_rest, "RGW 16.2 now encrypts SSE-S3 objects: docs/lab.md and this test are out of date"


def test_the_bucket_policies_the_lifecycle_role_writes_are_enforced_by_the_server():
    """The statements s3_backup_lifecycle writes, each on a scratch bucket of its own: under deny_unencrypted_uploads
    (aws:kms) RGW refuses an engine upload without the encryption header or with another algorithm and takes one
    with it. Under deny_insecure_transport RGW 16.2 still takes requests over plain HTTP: it leaves
    aws:SecureTransport unset there, so the statement's condition (\"false\") never matches. The test asserts that,
    so that it fails the day the server enforces it; docs/s3-lifecycle.md says what to do meanwhile (a gateway with
    no plain-HTTP listener)."""
    region = "primary"
    client = lab_s3.client(region)
    tag = uuid.uuid4().hex[:10]

    def policy(bucket, insecure, unencrypted):
        statements = s3policy_bucket.policy_statements(bucket, insecure, unencrypted, "aws:kms")
        document = {"Version": "2012-10-17", "Statement": statements}
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(document))

    def put(bucket, sse):
        spec = {**lab_s3.repository(region, prefix="policy"), "bucket": bucket, "sse": sse,
                **({"sse_kms_key_id": "lab-kms-key"} if sse == "aws:kms" else {})}
        repo_spec.open_repository(spec).put_bytes(f"obj-{sse.replace(':', '-')}", b"policy test", overwrite=True)

    encrypted, tls = f"lab-test-enc-{tag}", f"lab-test-tls-{tag}"
    for bucket in (encrypted, tls):
        client.create_bucket(Bucket=bucket)
    try:
        policy(encrypted, insecure=False, unencrypted=True)
        for sse in ("none", "AES256"):
            with pytest.raises(repo_base.RepositoryError, match="AccessDenied"):
                put(encrypted, sse)
        put(encrypted, "aws:kms")
        policy(tls, insecure=True, unencrypted=False)
        assert json.loads(client.get_bucket_policy(Bucket=tls)["Policy"])["Statement"][0]["Condition"] == {
            "Bool": {"aws:SecureTransport": "false"}}
        put(tls, "none")  # over http://: AWS would refuse it (AccessDenied); RGW 16.2 does not
        client.get_object(Bucket=tls, Key="policy/obj-none")
    finally:
        for bucket in (encrypted, tls):
            try:
                client.delete_bucket_policy(Bucket=bucket)
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for o in page.get("Contents", []):
                        client.delete_object(Bucket=bucket, Key=o["Key"])
                client.delete_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError:
                pass  # a scratch bucket left behind dies with the lab's cluster


def committed_backups(region: str) -> list[str]:
    client, bucket = lab_s3.client(region), lab_s3.bucket(region)
    ids = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="auth-db/backup/"):
        ids |= {o["Key"].split("/")[2] for o in page.get("Contents", []) if o["Key"].endswith("/backup.json")}
    return sorted(ids)


def test_a_regions_s3_outage_loses_no_segment(tmp_path):
    """An offsite region's gateway is stopped while the generator writes and WAL is switched and archived: archiving
    never fails (another region takes each segment, the stopped one is owed it), the other regions' S3 answer
    throughout, and once the gateway is back every segment arrives there, verified."""
    serving = serving_region()
    down = next(r for r in REGIONS if r != serving)
    failed_before = int(superuser_sql(serving, "SELECT failed_count FROM pg_stat_archiver"))
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.Popen([sys.executable, "-m", "drlab.generator", "--journal", str(tmp_path / "journal.jsonl"),
                            "--user", "auth_app", "--dbname", "authdb", "--endpoint",
                            f"{serving}=127.0.0.1:{REGIONS[serving] * 10000 + 5432}", "--rate", "200",
                            "--duration", "30"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = superuser_sql(serving, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    rgw(down, "stop")
    try:
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            lab_s3.client(down, retries={"max_attempts": 1}, connect_timeout=2).list_buckets()
        for _switch in range(4):
            time.sleep(3)
            superuser_sql(serving, "SELECT pg_switch_wal()")
            for region in REGIONS:
                if region != down:  # the other regions' S3 are untouched by this one's outage
                    lab_s3.client(region).head_bucket(Bucket=lab_s3.bucket(region))
        last = superuser_sql(serving, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        deadline = time.monotonic() + 60
        while superuser_sql(serving, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last[:24] \
                and time.monotonic() < deadline:
            superuser_sql(serving, "SELECT pg_switch_wal()")
            time.sleep(1)
    finally:
        rgw(down, "start")
    assert gen.wait(90) == 0, gen.stderr.read()
    assert int(superuser_sql(serving, "SELECT failed_count FROM pg_stat_archiver")) == failed_before
    tl, lo = wal_naming.parse_segment(first)
    hi = wal_naming.parse_segment(last)[1]
    assert hi - lo >= 4, "too few segments were made while the region was down to prove anything"
    names = [wal_naming.segment_name(tl, n) for n in range(lo, hi + 1)]
    # the lab's back-off bound is 10 s (wal_archive_offsite_retry_max_seconds); the pusher, which stays while the
    # region is owed segments, backfills every 5 s
    deadline = time.monotonic() + 90
    for region in REGIONS:
        client, bucket = lab_s3.client(region), lab_s3.bucket(region)
        for name in names:
            while True:
                try:
                    body = client.get_object(Bucket=bucket, Key="auth-db/" + wal_naming.wal_key(name))["Body"].read()
                    break
                except client.exceptions.NoSuchKey:
                    assert time.monotonic() < deadline, f"{name} never reached {region} after its S3 came back"
                    time.sleep(1)
            assert len(wal_objects.unpack(body, name)) == 16 * 1024 * 1024
