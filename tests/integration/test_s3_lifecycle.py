"""s3_backup_lifecycle against a real S3-compatible HTTP endpoint (moto's server, the ``s3_endpoint`` fixture).

The module runs for real: its main() with module args (argument spec, no_log, check mode, diff) in-process, and
playbooks/lifecycle.yml through ansible-playbook over three "regions". What moto only stores (lifecycle execution,
replication, bucket-policy conditions) is covered by the simulator tests in tests/unit; see docs/s3-lifecycle.md.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".collections"))
from ansible.module_utils.testing import patch_module_args  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import bucket as s3policy_bucket  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.modules import s3_backup_lifecycle  # noqa: E402

pytestmark = pytest.mark.integration

POLICY = {"pitr_window_days": 14, "full_interval_days": 7, "retention_days": 120}
PREFIX = "auth-db"


def run_module(args, check=False):
    """The module's main() as Ansible runs it; returns its JSON result (failed results too)."""
    out = io.StringIO()
    full = {**args, "_ansible_check_mode": check, "_ansible_diff": True}
    with patch_module_args(full), contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        s3_backup_lifecycle.main()
    return json.loads(out.getvalue())


@pytest.fixture
def base_args(s3_endpoint):
    def make(bucket, **extra):
        return {"bucket": bucket, "prefix": PREFIX, "endpoint_url": s3_endpoint.endpoint_url,
                "access_key": s3_endpoint.access_key, "secret_key": s3_endpoint.secret_key, "policy": dict(POLICY),
                # plain-HTTP test endpoint: a TLS-only policy would lock us out (and moto ignores policy conditions)
                "deny_insecure_transport": False, "deny_unencrypted_uploads": False, **extra}
    return make


def bucket_state(client, bucket):
    return s3policy_bucket.read_state(client, bucket)


def test_check_then_apply_then_nothing_to_do(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    foreign = {"ID": "tmp-cleanup", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    before = bucket_state(client, bucket)

    dry = run_module(base_args(bucket), check=True)
    assert dry["changed"] and not dry.get("failed")
    assert dry["changes"] == ["versioning", "lifecycle_rules", "encryption"]
    assert dry["diff"]["before"]["lifecycle_rules"] == []
    assert [r["ID"] for r in dry["diff"]["after"]["lifecycle_rules"]] == [
        "immersiverse-dr-auth-db-backup", "immersiverse-dr-auth-db-logical", "immersiverse-dr-auth-db-wal"]
    assert bucket_state(client, bucket) == before, "check mode changed the bucket"

    applied = run_module(base_args(bucket))
    assert applied["changed"] and applied["changes"] == dry["changes"]
    assert applied["foreign_lifecycle_rules"] == ["tmp-cleanup"]
    after = bucket_state(client, bucket)
    assert after["versioning"] == "Enabled"
    assert after["encryption"] == {"sse_algorithm": "AES256", "kms_key_id": None, "bucket_key_enabled": False}
    read_back = {r["ID"]: r for r in after["lifecycle_rules"]}
    assert read_back["tmp-cleanup"] == foreign, "a rule it does not own was changed"
    for rule in applied["lifecycle_rules"]:
        assert s3policy_bucket.normalise_rule(read_back[rule["ID"]]) == s3policy_bucket.normalise_rule(rule)
    assert read_back["immersiverse-dr-auth-db-wal"]["Transitions"] == [{"Days": 22, "StorageClass": "GLACIER"}]
    assert read_back["immersiverse-dr-auth-db-backup"]["Expiration"] == {"Days": 128}

    again = run_module(base_args(bucket))
    assert not again["changed"] and again["changes"] == []
    assert not run_module(base_args(bucket), check=True)["changed"]


def test_sse_none_leaves_default_encryption_alone(s3_endpoint, base_args):
    """For servers without default bucket encryption (Ceph RGW 16.2 refuses PutBucketEncryption): none applies the
    rest and never calls it; an existing default encryption stays; asking to deny unencrypted uploads is refused."""
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    applied = run_module(base_args(bucket, encryption={"sse_algorithm": "none"}))
    assert applied["changed"] and "encryption" not in applied["changes"], applied
    assert bucket_state(client, bucket)["encryption"] is None
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    again = run_module(base_args(bucket, encryption={"sse_algorithm": "none"}))
    assert not again["changed"], again
    assert bucket_state(client, bucket)["encryption"]["sse_algorithm"] == "AES256"
    refused = run_module(base_args(bucket, encryption={"sse_algorithm": "none"}, deny_unencrypted_uploads=True))
    assert refused.get("failed") and "deny_unencrypted_uploads needs encryption" in refused["msg"], refused


def test_a_policy_change_touches_only_its_rules(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    run_module(base_args(bucket))
    other_repo = run_module(base_args(bucket, prefix="billing-db"))  # a second repository in the same bucket
    assert other_repo["changes"] == ["lifecycle_rules"]
    longer = run_module(base_args(bucket, policy={**POLICY, "retention_days": 200}))
    assert longer["changes"] == ["lifecycle_rules"]
    rules = {r["ID"]: r for r in bucket_state(client, bucket)["lifecycle_rules"]}
    assert rules["immersiverse-dr-auth-db-backup"]["Expiration"] == {"Days": 208}
    assert rules["immersiverse-dr-billing-db-backup"]["Expiration"] == {"Days": 128}
    assert len(rules) == 6


@pytest.mark.parametrize("change,expected", [
    ({"policy": {**POLICY, "pitr_window_days": 30, "retention_days": 14}},
     "pitr_window_days (30) is longer than retention_days (14)"),
    ({"policy": {**POLICY, "archive_storage_class": "COLDEST"}}, "archive_storage_class 'COLDEST' is not a storage"),
    ({"policy": {**POLICY, "wal_expire_days": 60}}, "wal_expire_days (60) is less than backup_expire_days (128)"),
    ({"object_lock": {"mode": "COMPLIANCE", "days": 30}}, "was not created with Object Lock"),
    ({"deny_insecure_transport": True}, "would lock out the endpoint in use"),
])
def test_bad_input_fails_before_anything_changes(s3_endpoint, base_args, change, expected):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    before = bucket_state(client, bucket)
    result = run_module(base_args(bucket, **change))
    assert result["failed"] and expected in result["msg"]
    assert "nothing was changed" in result["msg"]
    assert bucket_state(client, bucket) == before


def test_a_foreign_rule_that_breaks_the_guarantee_is_refused(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "expire-all", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 5}}]})
    result = run_module(base_args(bucket))
    assert result["failed"] and "rule expire-all expires them earlier" in result["msg"]


def test_secrets_never_reach_the_result(s3_endpoint, base_args):
    bucket = s3_endpoint.create_bucket()
    text = json.dumps(run_module(base_args(bucket, secret_key="a-secret-nobody-may-see")))
    assert "a-secret-nobody-may-see" not in text


def test_object_lock_default_retention_and_a_locked_version_survives(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket(ObjectLockEnabledForBucket=True)
    args = base_args(bucket, object_lock={"mode": "GOVERNANCE", "days": 30})
    assert run_module(args, check=True)["changes"] == ["lifecycle_rules", "encryption", "object_lock"]
    assert bucket_state(client, bucket)["object_lock"] is None
    applied = run_module(args)
    assert "object_lock" in applied["changes"]
    assert bucket_state(client, bucket)["object_lock"] == {"mode": "GOVERNANCE", "days": 30, "years": None}
    assert not run_module(args)["changed"]

    key = "backup/20260101T013000F/backup.json"
    version = client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=b'{"id": 1}')["VersionId"]
    with pytest.raises(Exception) as err:  # the API refuses: retention cannot delete it
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version)
    assert s3policy_bucket.error_code(err.value) == "AccessDenied", err.value
    # the repository retention deletes through reports the lock and skips the object
    repo = repository(s3_endpoint, bucket)
    assert repo.locked(key).startswith("object lock (GOVERNANCE) until ")
    assert repo.delete([key]) == ([], {key: repo.locked(key)})
    # an overwrite is a new version: the locked one is still there, unchanged
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=b"ransom")
    assert client.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version)["Body"].read() == b'{"id": 1}'


def repository(endpoint, bucket):
    return repo_spec.open_repository({
        "type": "s3", "name": "primary", "bucket": bucket, "prefix": PREFIX, "endpoint_url": endpoint.endpoint_url,
        "region": "us-east-1", "access_key": endpoint.access_key, "secret_key": endpoint.secret_key})


def test_compliance_lock_cannot_be_bypassed(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket(ObjectLockEnabledForBucket=True)
    run_module(base_args(bucket, object_lock={"mode": "COMPLIANCE", "days": 30}))
    key = "wal/000000010000000000000001"
    version = client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=b"wal")["VersionId"]
    with pytest.raises(Exception) as err:
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version, BypassGovernanceRetention=True)
    assert s3policy_bucket.error_code(err.value) == "AccessDenied", err.value
    assert repository(s3_endpoint, bucket).locked(key).startswith("object lock (COMPLIANCE) until ")
    # an unlocked object in a bucket without a default retention is deleted as usual
    plain = s3_endpoint.create_bucket()
    client.put_bucket_versioning(Bucket=plain, VersioningConfiguration={"Status": "Enabled"})
    client.put_object(Bucket=plain, Key=f"{PREFIX}/{key}", Body=b"wal")
    assert repository(s3_endpoint, plain).delete([key]) == ([key], {})


def test_bucket_policy_merges_by_sid(s3_endpoint, base_args):
    """Statements are applied and read back; statements it does not own stay. (moto evaluates Deny statements
    without their conditions, so the deny itself is not exercised here: docs/s3-lifecycle.md.)"""
    client = s3_endpoint.client()
    bucket = s3_endpoint.create_bucket()
    theirs = {"Sid": "AuditorsRead", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
              "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]}))
    args = base_args(bucket, deny_unencrypted_uploads=True,
                     encryption={"sse_algorithm": "aws:kms", "kms_key_id": "alias/dr"})
    applied = run_module(args)
    assert "policy_statements" in applied["changes"] and "encryption" in applied["changes"]
    policy = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["AuditorsRead"] == theirs
    assert by_sid["ImmersiverseDrDenyUploadsWithOtherEncryption"]["Condition"] == {
        "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}}
    assert "ImmersiverseDrDenyUploadsWithoutEncryptionHeader" in by_sid
    assert bucket_state(client, bucket)["encryption"]["kms_key_id"] == "alias/dr"
    assert not run_module(args)["changed"]
    # turned off: our statements go, theirs stays
    off = run_module(base_args(bucket, encryption={"sse_algorithm": "aws:kms", "kms_key_id": "alias/dr"}))
    assert off["changes"] == ["policy_statements"]
    assert json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"] == [theirs]


def test_replication_is_configured(s3_endpoint, base_args):
    client = s3_endpoint.client()
    bucket, dest = s3_endpoint.create_bucket(), s3_endpoint.create_bucket()
    repl = {"role_arn": "arn:aws:iam::123456789012:role/dr-replication",
            "destinations": [{"bucket": dest, "storage_class": "STANDARD_IA"}]}
    applied = run_module(base_args(bucket, replication=repl))
    assert "replication" in applied["changes"]
    conf = client.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]
    assert conf["Role"] == repl["role_arn"]
    (rule,) = conf["Rules"]
    assert rule["ID"] == f"immersiverse-dr-auth-db-replicate-{dest}"
    assert rule["Destination"] == {"Bucket": f"arn:aws:s3:::{dest}", "StorageClass": "STANDARD_IA"}
    assert rule["DeleteMarkerReplication"] == {"Status": "Disabled"}


@pytest.mark.xfail(strict=True, reason="moto 5 returns a replication rule's Filter as {'Prefix': ''} whatever was "
                                       "stored, so the read-back differs; real S3 keeps it (docs/s3-lifecycle.md)")
def test_replication_second_run_is_not_changed(s3_endpoint, base_args):
    bucket, dest = s3_endpoint.create_bucket(), s3_endpoint.create_bucket()
    repl = {"role_arn": "arn:aws:iam::123456789012:role/dr-replication", "destinations": [{"bucket": dest}]}
    run_module(base_args(bucket, replication=repl))
    assert not run_module(base_args(bucket, replication=repl))["changed"]


def test_playbook_applies_every_regions_bucket(s3_endpoint, tmp_path):
    """playbooks/lifecycle.yml through ansible-playbook: check mode changes nothing, then apply, then not changed."""
    client = s3_endpoint.client()
    buckets = {r: s3_endpoint.create_bucket() for r in ("primary", "secondary", "tertiary")}
    inventory = {"all": {
        "vars": {"dr_regions": list(buckets), "dr_s3_prefix": PREFIX, "dr_s3_access_key": s3_endpoint.access_key,
                 "dr_s3_secret_key": s3_endpoint.secret_key},
        "children": {r: {"hosts": {f"pg-{r}-1": {"ansible_connection": "local"}},
                         "vars": {"dr_region": r, "dr_s3_bucket": b, "dr_s3_region": "us-east-1",
                                  "dr_s3_endpoint_url": s3_endpoint.endpoint_url}}
                     for r, b in buckets.items()}}}
    inv = tmp_path / "inventory.yml"
    inv.write_text(json.dumps(inventory))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    play = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "lifecycle.yml")]

    def run(*extra):
        proc = subprocess.run([*play, *extra], check=False, capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert s3_endpoint.secret_key not in proc.stdout + proc.stderr
        recap = proc.stdout.rsplit("PLAY RECAP", 1)[1]
        return int(recap.split("changed=")[1].split()[0])

    assert run("--check", "--diff") == 1
    assert all(bucket_state(client, b)["lifecycle_rules"] == [] for b in buckets.values())
    assert run() == 1
    for b in buckets.values():
        assert {r["ID"] for r in bucket_state(client, b)["lifecycle_rules"]} == {
            "immersiverse-dr-auth-db-backup", "immersiverse-dr-auth-db-wal", "immersiverse-dr-auth-db-logical"}
    assert run() == 0
    # replication where asked: each region's repository to the other regions' buckets
    assert run("-e", "s3_lifecycle_replication_role_arn=arn:aws:iam::123456789012:role/dr-replication") == 1
    conf = client.get_bucket_replication(Bucket=buckets["primary"])["ReplicationConfiguration"]
    assert sorted(r["Destination"]["Bucket"] for r in conf["Rules"]) == sorted(
        f"arn:aws:s3:::{buckets[r]}" for r in ("secondary", "tertiary"))
