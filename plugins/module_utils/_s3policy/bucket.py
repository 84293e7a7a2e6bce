# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bucket brought to the policy: lifecycle rules, versioning, Object Lock, the bucket policy (TLS only,
encrypted uploads) and replication, each read, compared normalised, and changed only where it differs.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import copy
import json

from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import derive as s3policy_derive
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import simulate as s3policy_simulate


def error_code(exc):
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _call(client, bucket, op, missing=(), **kwargs):
    """One S3 call; a "not configured" error code in ``missing`` returns None; other errors become
    LifecycleError naming the bucket and operation."""
    try:
        return getattr(client, op)(Bucket=bucket, **kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore errors are classified by their code
        code = error_code(exc)
        if code and code in missing:
            return None
        if code in ("NoSuchBucket",):
            raise s3policy_derive.LifecycleError(
                "bucket %s does not exist: create it first (playbooks/lab.yml does in the lab)"
                % bucket) from exc
        raise s3policy_derive.LifecycleError("bucket %s: %s failed: %s" % (bucket, op, exc)) from exc


def normalise_rule(rule):
    r = {k: v for k, v in rule.items() if v not in (None, [], {})}
    if "Filter" not in r:
        r["Filter"] = {"Prefix": r.pop("Prefix", "")}
    elif not r["Filter"]:
        r["Filter"] = {"Prefix": ""}
    if "Transitions" in r:
        r["Transitions"] = sorted(({k: v for k, v in t.items() if v is not None} for t in r["Transitions"]),
                                  key=lambda t: (t.get("Days") or 0, str(t.get("Date"))))
    if "Expiration" in r:
        r["Expiration"] = {k: v for k, v in r["Expiration"].items() if v not in (None, False) or k == "Days"}
    return r


def _owned(rule_, root, ids, id_prefix):
    if rule_.get("ID") in ids:
        return True
    if not str(rule_.get("ID", "")).startswith(id_prefix):
        return False
    return s3policy_simulate.rule_filter(rule_)[0].startswith(root)


def _normalise_statement(st):
    st = copy.deepcopy(st)
    for key in ("Action", "Resource"):
        if isinstance(st.get(key), str):
            st[key] = [st[key]]
        if isinstance(st.get(key), list):
            st[key] = sorted(st[key])
    if st.get("Principal") == {"AWS": "*"}:
        st["Principal"] = "*"
    return st


def read_state(client, bucket):
    """The bucket's current configuration, raw (for merging) and as read."""
    if _call(client, bucket, "head_bucket") is None:  # pragma: no cover - head_bucket raises instead
        raise s3policy_derive.LifecycleError("bucket %s does not exist" % bucket)
    versioning = (_call(client, bucket, "get_bucket_versioning") or {}).get("Status", "Disabled")
    lc = _call(client, bucket, "get_bucket_lifecycle_configuration", missing=("NoSuchLifecycleConfiguration",))
    enc = _call(client, bucket, "get_bucket_encryption", missing=("ServerSideEncryptionConfigurationNotFoundError",))
    lock = _call(client, bucket, "get_object_lock_configuration",
                 missing=("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"))
    pol = _call(client, bucket, "get_bucket_policy", missing=("NoSuchBucketPolicy",))
    repl = _call(client, bucket, "get_bucket_replication", missing=("ReplicationConfigurationNotFoundError",))
    lock_conf = (lock or {}).get("ObjectLockConfiguration") or {}
    retention = (lock_conf.get("Rule") or {}).get("DefaultRetention") or {}
    enc_rule = (((enc or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or [{}])[0]
    by_default = enc_rule.get("ApplyServerSideEncryptionByDefault") or {}
    return {
        "versioning": versioning,
        "lifecycle_rules": (lc or {}).get("Rules") or [],
        "encryption": {"sse_algorithm": by_default.get("SSEAlgorithm"), "kms_key_id": by_default.get("KMSMasterKeyID"),
                       "bucket_key_enabled": bool(enc_rule.get("BucketKeyEnabled"))} if by_default else None,
        "object_lock_enabled": lock_conf.get("ObjectLockEnabled") == "Enabled",
        "object_lock": {"mode": retention.get("Mode"), "days": retention.get("Days") or None,
                        "years": retention.get("Years") or None} if retention else None,
        "policy": json.loads(pol["Policy"]) if pol and pol.get("Policy") else None,
        "replication": (repl or {}).get("ReplicationConfiguration"),
    }


# -- desired state -------------------------------------------------------------------------------------------------
def policy_statements(bucket, deny_insecure_transport, deny_unencrypted_uploads, sse_algorithm):
    arn = "arn:aws:s3:::%s" % bucket
    out = []
    if deny_insecure_transport:
        out.append({"Sid": s3policy_derive.SID_PREFIX + "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                    "Action": "s3:*", "Resource": [arn, arn + "/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}}})
    if deny_unencrypted_uploads:
        out.append({"Sid": s3policy_derive.SID_PREFIX + "DenyUploadsWithoutEncryptionHeader", "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject", "Resource": arn + "/*",
                    "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}})
        out.append({"Sid": s3policy_derive.SID_PREFIX + "DenyUploadsWithOtherEncryption", "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject", "Resource": arn + "/*",
                    "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": sse_algorithm}}})
    return out


def _dest_arn(bucket):
    return bucket if bucket.startswith("arn:") else "arn:aws:s3:::%s" % bucket


def replication_rules(prefix, destinations, id_prefix=s3policy_derive.ID_PREFIX, first_priority=1):
    root = s3policy_derive.repository_root(prefix)
    rules = []
    for i, dest in enumerate(destinations):
        name = dest["bucket"].split(":::")[-1]
        rule = {"ID": s3policy_derive.rule_id(prefix, "replicate-" + name, id_prefix), "Priority": first_priority + i,
                "Status": "Enabled", "Filter": {"Prefix": root},
                # Deletions are not replicated: a delete in one region (ransomware, a mistake) never reaches the
                # copies in the others.
                "DeleteMarkerReplication": {"Status": "Disabled"},
                "Destination": {"Bucket": _dest_arn(dest["bucket"])}}
        if dest.get("storage_class"):
            rule["Destination"]["StorageClass"] = dest["storage_class"]
        rules.append(rule)
    return rules


def _check_spec(spec, plan):
    """Everything that can be refused before reading the bucket."""
    problems = []
    lock = spec.get("object_lock")
    if lock:
        if lock.get("mode") not in s3policy_derive.LOCK_MODES:
            problems.append("object_lock.mode must be GOVERNANCE or COMPLIANCE (got %r)" % lock.get("mode"))
        if not isinstance(lock.get("days"), int) or lock["days"] < 1:
            problems.append("object_lock.days must be a whole number of days >= 1 (got %r)" % lock.get("days"))
        elif lock["days"] < plan["backup"]["fast_days"]:
            plan["warnings"].append(
                "object_lock.days (%d) is shorter than the %d days a backup may be needed for a fast restore: "
                "someone with delete rights can remove a needed backup after %d days"
                % (lock["days"], plan["backup"]["fast_days"], lock["days"]))
    enc = spec.get("encryption")
    if enc:
        if enc.get("sse_algorithm") not in s3policy_derive.SSE_ALGORITHMS:
            problems.append("encryption.sse_algorithm must be AES256 (SSE-S3) or aws:kms (SSE-KMS), not %r"
                            % enc.get("sse_algorithm"))
        elif enc["sse_algorithm"] == "aws:kms" and not enc.get("kms_key_id"):
            problems.append("encryption.sse_algorithm aws:kms needs encryption.kms_key_id (key id, ARN or alias)")
        elif enc["sse_algorithm"] == "AES256" and enc.get("kms_key_id"):
            problems.append("encryption.kms_key_id is only used with sse_algorithm aws:kms")
    if spec.get("deny_unencrypted_uploads") and not enc:
        problems.append("deny_unencrypted_uploads needs encryption (which algorithm uploads must ask for)")
    endpoint = spec.get("endpoint_url") or ""
    if spec.get("deny_insecure_transport") and endpoint.startswith("http://"):
        problems.append("deny_insecure_transport would lock out the endpoint in use (%s is plain HTTP): use an "
                        "https endpoint or set deny_insecure_transport to false" % endpoint)
    repl = spec.get("replication")
    if repl:
        if not spec.get("versioning", True):
            problems.append("replication needs versioning: true")
        if not str(repl.get("role_arn") or "").startswith("arn:"):
            problems.append("replication.role_arn must be the ARN of the IAM role S3 replicates as (got %r)"
                            % repl.get("role_arn"))
        if not repl.get("destinations"):
            problems.append("replication.destinations is empty")
        for d in repl.get("destinations") or []:
            if d.get("bucket", "").split(":::")[-1] == spec["bucket"]:
                problems.append("replication destination %s is the bucket itself" % d["bucket"])
            if d.get("storage_class") and d["storage_class"] not in s3policy_derive.COST_ORDER:
                problems.append("replication destination %s: unknown storage class %r"
                                % (d.get("bucket"), d["storage_class"]))
    if lock and not spec.get("versioning", True):
        problems.append("object_lock needs versioning: true")
    if problems:
        raise s3policy_derive.PolicyError("refused, nothing was changed: " + "; ".join(problems))


def reconcile(client, spec, check_mode=False):
    """Compare the bucket with what the policy asks for and apply the difference (unless ``check_mode``).

    ``spec``: bucket, prefix, policy, versioning (bool), object_lock ({mode, days} or None), encryption
    ({sse_algorithm, kms_key_id, bucket_key_enabled} or None), deny_insecure_transport, deny_unencrypted_uploads,
    replication ({role_arn, destinations: [{bucket, storage_class}]} or None), id_prefix, endpoint_url.
    Everything is validated and read before the first write. Returns the result the module returns.
    """
    bucket = spec["bucket"]
    prefix = spec.get("prefix") or ""
    id_prefix = spec.get("id_prefix") or s3policy_derive.ID_PREFIX
    plan = s3policy_derive.derive(spec.get("policy") or {})
    _check_spec(spec, plan)
    ours = s3policy_derive.build_rules(plan, prefix, id_prefix)
    problems = s3policy_derive.validate_rules(ours)
    if problems:  # pragma: no cover - derive() already refuses these
        raise s3policy_derive.PolicyError("refused, nothing was changed: " + "; ".join(problems))

    cur = read_state(client, bucket)
    root = s3policy_derive.repository_root(prefix)
    ids = {r["ID"] for r in ours}
    foreign = [r for r in cur["lifecycle_rules"] if not _owned(r, root, ids, id_prefix)]
    merged = foreign + ours
    problems = s3policy_derive.validate_rules(merged) + s3policy_simulate.guarantee_problems(merged, plan, prefix)
    lock = spec.get("object_lock")
    if lock and not cur["object_lock_enabled"]:
        problems.append("object_lock %s asked for, but bucket %s was not created with Object Lock (S3 only turns it "
                        "on at creation: create a new bucket with ObjectLockEnabledForBucket and copy the repository "
                        "there)" % (lock.get("mode"), bucket))
    if problems:
        raise s3policy_derive.PolicyError("refused, nothing was changed: " + "; ".join(problems))

    before, after, actions = {}, {}, []

    def section(name, current, desired, action):
        before[name], after[name] = current, desired
        if current != desired:
            actions.append(action)

    if spec.get("versioning", True) or lock or spec.get("replication"):
        section("versioning", cur["versioning"], "Enabled", ("versioning", lambda: client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})))

    cur_ours = sorted((normalise_rule(r) for r in cur["lifecycle_rules"] if _owned(r, root, ids, id_prefix)),
                      key=lambda r: r.get("ID", ""))
    section("lifecycle_rules", cur_ours, sorted((normalise_rule(r) for r in ours), key=lambda r: r["ID"]),
            ("lifecycle_rules", lambda: client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": merged})))

    enc = spec.get("encryption")
    if enc:
        want = {"sse_algorithm": enc["sse_algorithm"], "kms_key_id": enc.get("kms_key_id") or None,
                "bucket_key_enabled": bool(enc.get("bucket_key_enabled"))}
        by_default = {"SSEAlgorithm": want["sse_algorithm"]}
        if want["kms_key_id"]:
            by_default["KMSMasterKeyID"] = want["kms_key_id"]
        section("encryption", cur["encryption"], want, ("encryption", lambda: client.put_bucket_encryption(
            Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
                {"ApplyServerSideEncryptionByDefault": by_default, "BucketKeyEnabled": want["bucket_key_enabled"]}]})))

    if lock:
        want_lock = {"mode": lock["mode"], "days": lock["days"], "years": None}
        section("object_lock", cur["object_lock"], want_lock, ("object_lock", lambda: (
            client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": lock["mode"], "Days": lock["days"]}}}))))

    statements = policy_statements(bucket, spec.get("deny_insecure_transport"), spec.get("deny_unencrypted_uploads"),
                                   (enc or {}).get("sse_algorithm"))
    cur_policy = cur["policy"] or {"Version": "2012-10-17", "Statement": []}
    cur_statements = cur_policy.get("Statement") or []
    if isinstance(cur_statements, dict):
        cur_statements = [cur_statements]
    mine = [s for s in cur_statements if str(s.get("Sid", "")).startswith(s3policy_derive.SID_PREFIX)]
    others = [s for s in cur_statements if not str(s.get("Sid", "")).startswith(s3policy_derive.SID_PREFIX)]
    if statements or mine:
        new_policy = dict(cur_policy, Version=cur_policy.get("Version", "2012-10-17"), Statement=others + statements)

        def put_policy():
            if new_policy["Statement"]:
                client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(new_policy))
            else:
                client.delete_bucket_policy(Bucket=bucket)
        section("policy_statements", sorted((_normalise_statement(s) for s in mine), key=lambda s: s["Sid"]),
                sorted((_normalise_statement(s) for s in statements), key=lambda s: s["Sid"]),
                ("policy_statements", put_policy))

    repl = spec.get("replication")
    if repl:
        cur_repl = cur["replication"] or {}
        want_rules = replication_rules(prefix, repl["destinations"], id_prefix)
        want_ids = {r["ID"] for r in want_rules}
        rep_foreign = [r for r in cur_repl.get("Rules") or [] if not _owned(r, root, want_ids, id_prefix)]
        if rep_foreign and cur_repl.get("Role") and cur_repl["Role"] != repl["role_arn"]:
            raise s3policy_derive.PolicyError(
                "refused, nothing was changed: bucket %s already replicates (rules %s) as role %s; a "
                "bucket has one replication role, so use that role_arn or move those rules"
                % (bucket, ", ".join(r.get("ID", "?") for r in rep_foreign), cur_repl["Role"]))
        first = max([r.get("Priority", 0) for r in rep_foreign] + [0]) + 1
        want_rules = replication_rules(prefix, repl["destinations"], id_prefix, first_priority=first)
        cur_mine = sorted((r for r in cur_repl.get("Rules") or [] if _owned(r, root, want_ids, id_prefix)),
                          key=lambda r: r["ID"])
        section("replication", {"role": cur_repl.get("Role"), "rules": cur_mine},
                {"role": repl["role_arn"], "rules": sorted(want_rules, key=lambda r: r["ID"])},
                ("replication", lambda: client.put_bucket_replication(
                    Bucket=bucket, ReplicationConfiguration={"Role": repl["role_arn"],
                                                             "Rules": rep_foreign + want_rules})))

    if not check_mode:
        # Versioning first: Object Lock and replication need it.
        for index, (name, apply) in enumerate(actions):
            try:
                apply()
            except Exception as exc:  # noqa: BLE001 - reported with what was already done
                done = [action[0] for action in actions[:index]]
                raise s3policy_derive.LifecycleError("bucket %s: applying %s failed (already applied: %s): %s"
                                                     % (bucket, name, ", ".join(done) or "nothing", exc)) from exc
    changes = [action[0] for action in actions]
    return {
        "changed": bool(changes),
        "changes": changes,
        "bucket": bucket,
        "prefix": root,
        "plan": {k: v for k, v in plan.items() if k != "warnings"},
        "lifecycle_rules": ours,
        "foreign_lifecycle_rules": [r.get("ID") for r in foreign],
        "warnings": plan["warnings"],
        "diff": {"before": before, "after": after},
    }
