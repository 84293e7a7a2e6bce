# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The offsite store's bucket rules, derived from the retention policy: the engine behind s3_backup_lifecycle.

Private to the collection. Plain Python, importable and testable without Ansible; S3 is reached through a boto3
client the caller makes (so AWS, MinIO, Ceph or a test endpoint work alike).

Layout of a repository inside a bucket (the contract with the backup engine), under a prefix P (may be empty):
``P/backup/<backup_id>/...`` base backups (``backup.json`` written last), ``P/wal/...`` WAL segments and history
files, ``P/logical/<backup_id>/...`` logical dumps.

The guarantee: a restore to any point inside the PITR window never meets an object that is gone or in a slow
(archive) storage class, and any point inside the retention period stays restorable (perhaps slowly). Lifecycle
rules act on object age only, so the numbers are derived from the worst case of the backup schedule:

- the newest base backup that can restore the oldest point of the window ended before ``now - window``, and it
  started at most ``full_interval_days`` (+ ``margin_days`` for the backup's own duration and clock skew) before
  that: every base-backup object and every WAL segment a restore inside the window may read is younger than
  ``window + full_interval + margin`` days. Nothing younger than that may be transitioned to a slow class.
- the same argument with ``retention_days`` gives the age before which nothing may expire; WAL must outlive the
  oldest base backup that is still kept, since that backup needs it.

``simulate()`` / ``object_timeline()`` say what S3 will do to an object on a given date under a set of rules, so
the guarantee is tested without waiting for S3 (test endpoints store lifecycle rules but never run them).
"""

from __future__ import annotations

import copy
import datetime
import json

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

ID_PREFIX = "immersiverse-dr-"
SID_PREFIX = "ImmersiverseDr"
KINDS = ("backup", "wal", "logical")

# Storage classes a lifecycle transition may target, cheapest last (S3 applies the cheapest due transition).
COST_ORDER = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER",
              "DEEP_ARCHIVE")
TRANSITION_CLASSES = COST_ORDER[1:]
# Reading needs a restore-from-archive first (minutes to hours): never for an object a fast restore needs.
SLOW_CLASSES = frozenset(("GLACIER", "DEEP_ARCHIVE"))
# AWS refuses a transition to these classes earlier than 30 days after creation.
TRANSITION_MIN_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}
# Minimum storage duration billed by AWS: expiring earlier costs an early-deletion fee (a warning, not an error).
MIN_STORAGE_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
# Since 2024 S3 does not transition objects smaller than this unless a rule says otherwise.
MIN_TRANSITION_SIZE = 128 * 1024
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
SSE_ALGORITHMS = ("AES256", "aws:kms")

POLICY_DEFAULTS = {
    "pitr_window_days": None,        # any point in the last N days restores without touching an archive tier
    "full_interval_days": None,      # a full base backup is taken at least every N days
    "retention_days": None,          # any point in the last N days stays restorable (perhaps from an archive tier)
    "archive_storage_class": "GLACIER",  # where old copies go; None/"" = never transition
    "archive_after_days": None,      # default: the earliest safe age
    "backup_expire_days": None,      # default: the earliest safe age
    "wal_expire_days": None,         # default: backup_expire_days
    "logical_fast_days": None,       # default: pitr_window_days
    "logical_retention_days": None,  # default: retention_days
    "noncurrent_version_days": 7,
    "abort_incomplete_multipart_days": 2,
    "margin_days": 1,
}


class LifecycleError(_errors.DrError):
    """A bucket problem the operator can act on; the message says what to do next."""


class PolicyError(LifecycleError):
    """The requested policy would break the restore guarantee or S3 would refuse it; nothing was changed."""


# -- policy -> numbers -> rules ------------------------------------------------------------------------------------
def _int(policy, name, problems, minimum=0):
    value = policy.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value)
        except (TypeError, ValueError):
            problems.append("%s must be a whole number of days, not %r" % (name, policy.get(name)))
            return None
    if value < minimum:
        problems.append("%s must be at least %d (got %d)" % (name, minimum, value))
        return None
    return value


def derive(policy):
    """Validate a retention policy and derive the age limits per prefix kind.

    Returns ``{"backup"|"wal"|"logical": {"fast_days", "keep_days", "archive_after_days", "expire_days"},
    "storage_class", "noncurrent_version_days", "abort_incomplete_multipart_days", "warnings": [...]}``.
    ``fast_days``/``keep_days`` are the ages up to which an object may be needed fast / at all; the rule numbers
    are never below them. Raises PolicyError listing every conflict, with the numbers that conflict.
    """
    unknown = sorted(set(policy) - set(POLICY_DEFAULTS))
    p = dict(POLICY_DEFAULTS)
    p.update({k: v for k, v in policy.items() if v is not None})
    problems = ["unknown policy key %s (known: %s)" % (k, ", ".join(sorted(POLICY_DEFAULTS))) for k in unknown]
    warnings = []
    for name in ("pitr_window_days", "full_interval_days", "retention_days"):
        if p[name] is None:
            problems.append("%s is required" % name)
    window = _int(p, "pitr_window_days", problems, 1)
    full = _int(p, "full_interval_days", problems, 1)
    retention = _int(p, "retention_days", problems, 1)
    margin = _int(p, "margin_days", problems, 0)
    noncurrent = _int(p, "noncurrent_version_days", problems, 1)
    abort = _int(p, "abort_incomplete_multipart_days", problems, 1)
    archive_after = _int(p, "archive_after_days", problems, 1)
    backup_expire = _int(p, "backup_expire_days", problems, 1)
    wal_expire = _int(p, "wal_expire_days", problems, 1)
    logical_fast = _int(p, "logical_fast_days", problems, 1)
    logical_keep = _int(p, "logical_retention_days", problems, 1)

    storage_class = p["archive_storage_class"]
    if storage_class in ("", "NONE", "none"):
        storage_class = None
    if storage_class is not None:
        storage_class = str(storage_class)
        if storage_class not in TRANSITION_CLASSES:
            problems.append("archive_storage_class %r is not a storage class S3 can transition to (one of: %s; "
                            "or null for no transition)" % (storage_class, ", ".join(TRANSITION_CLASSES)))
            storage_class = None
    if None in (window, full, retention, margin):
        raise PolicyError("retention policy refused, nothing was changed: " + "; ".join(problems))

    if window > retention:
        problems.append("pitr_window_days (%d) is longer than retention_days (%d): points inside the fast-restore "
                        "window would already be deleted; raise retention_days to at least %d or shorten the window"
                        % (window, retention, window))
    need_fast = window + full + margin
    need_keep = max(retention, window) + full + margin
    fast_formula = "pitr_window_days (%d) + full_interval_days (%d) + margin_days (%d) = %d" % (
        window, full, margin, need_fast)
    keep_formula = "retention_days (%d) + full_interval_days (%d) + margin_days (%d) = %d" % (
        retention, full, margin, need_keep)

    if archive_after is None:
        archive_after = need_fast
    elif archive_after < need_fast:
        problems.append("archive_after_days (%d) is less than %s: the base backup and WAL that restore the oldest "
                        "point of the window would already be in %s"
                        % (archive_after, fast_formula, storage_class or "the archive tier"))
    if backup_expire is None:
        backup_expire = need_keep
    elif backup_expire < need_keep:
        problems.append("backup_expire_days (%d) is less than %s: the base backup that restores the oldest point "
                        "of the retention period would expire while a newer full backup has not replaced it"
                        % (backup_expire, keep_formula))
    if wal_expire is None:
        wal_expire = backup_expire
    elif wal_expire < backup_expire:
        problems.append("wal_expire_days (%d) is less than backup_expire_days (%d): WAL would expire before the "
                        "oldest kept base backup (up to %d days old) that needs it for recovery"
                        % (wal_expire, backup_expire, backup_expire))
    elif wal_expire > backup_expire:
        warnings.append("wal_expire_days (%d) > backup_expire_days (%d): WAL older than the oldest kept base "
                        "backup cannot be replayed and only costs storage" % (wal_expire, backup_expire))
    logical_fast = window if logical_fast is None else logical_fast
    logical_keep = retention if logical_keep is None else logical_keep
    if logical_fast > logical_keep:
        problems.append("logical_fast_days (%d) is longer than logical_retention_days (%d)"
                        % (logical_fast, logical_keep))
    if storage_class in TRANSITION_MIN_DAYS and archive_after < TRANSITION_MIN_DAYS[storage_class]:
        problems.append("archive_after_days (%d) is less than %d: S3 refuses transitions to %s before %d days"
                        % (archive_after, TRANSITION_MIN_DAYS[storage_class], storage_class,
                           TRANSITION_MIN_DAYS[storage_class]))
    if problems:
        raise PolicyError("retention policy refused, nothing was changed: " + "; ".join(problems))

    kinds = {
        "backup": {"fast_days": need_fast, "keep_days": need_keep, "archive_after_days": archive_after,
                   "expire_days": backup_expire},
        "wal": {"fast_days": need_fast, "keep_days": need_keep, "archive_after_days": archive_after,
                "expire_days": wal_expire},
        "logical": {"fast_days": logical_fast, "keep_days": logical_keep,
                    "archive_after_days": max(logical_fast, TRANSITION_MIN_DAYS.get(storage_class, 0)),
                    "expire_days": logical_keep},
    }
    for kind, k in kinds.items():
        if storage_class is None:
            k["archive_after_days"] = None
        elif k["archive_after_days"] >= k["expire_days"]:
            warnings.append("%s objects expire at %d days, before they could move to %s at %d days: no transition"
                            % (kind, k["expire_days"], storage_class, k["archive_after_days"]))
            k["archive_after_days"] = None
        elif k["expire_days"] - k["archive_after_days"] < MIN_STORAGE_DAYS.get(storage_class, 0):
            warnings.append("%s objects spend %d days in %s before expiring, less than its %d-day minimum storage "
                            "charge (an early-deletion fee)" % (kind, k["expire_days"] - k["archive_after_days"],
                                                                storage_class, MIN_STORAGE_DAYS[storage_class]))
    return {
        **kinds,
        "storage_class": storage_class,
        "pitr_window_days": window,
        "full_interval_days": full,
        "retention_days": retention,
        "margin_days": margin,
        "noncurrent_version_days": noncurrent,
        "abort_incomplete_multipart_days": abort,
        "warnings": warnings,
    }


def repository_root(prefix):
    """``auth-db`` / ``auth-db/`` / ``/auth-db/`` -> ``auth-db/``; empty -> ``""`` (the whole bucket)."""
    prefix = (prefix or "").strip("/")
    return prefix + "/" if prefix else ""


def kind_prefixes(prefix):
    root = repository_root(prefix)
    return {kind: "%s%s/" % (root, kind) for kind in KINDS}


def rule_id(prefix, kind, id_prefix=ID_PREFIX):
    stem = (prefix or "").strip("/")
    return "%s%s%s" % (id_prefix, stem + "-" if stem else "", kind)


def build_rules(plan, prefix, id_prefix=ID_PREFIX):
    """The lifecycle rules this repository owns, one per prefix kind, in a stable order."""
    rules = []
    for kind, key_prefix in kind_prefixes(prefix).items():
        k = plan[kind]
        rule = {"ID": rule_id(prefix, kind, id_prefix), "Status": "Enabled", "Filter": {"Prefix": key_prefix}}
        if k["archive_after_days"] is not None:
            rule["Transitions"] = [{"Days": k["archive_after_days"], "StorageClass": plan["storage_class"]}]
        rule["Expiration"] = {"Days": k["expire_days"]}
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": plan["noncurrent_version_days"]}
        rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": plan["abort_incomplete_multipart_days"]}
        if len(rule["ID"]) > 255:
            raise PolicyError("rule ID %r is longer than S3's 255 characters: shorten the prefix" % rule["ID"])
        rules.append(rule)
    return rules


def validate_rules(rules):
    """What S3 itself refuses (test endpoints accept some of it): returns a list of problems."""
    problems = []
    ids = [r.get("ID") for r in rules]
    for dup in sorted({i for i in ids if ids.count(i) > 1 and i}):
        problems.append("rule ID %s is used twice" % dup)
    if len(rules) > 1000:
        problems.append("S3 allows at most 1000 lifecycle rules (got %d)" % len(rules))
    for r in rules:
        rid = r.get("ID", "?")
        if r.get("Status") not in ("Enabled", "Disabled"):
            problems.append("rule %s: Status must be Enabled or Disabled" % rid)
        expire = (r.get("Expiration") or {}).get("Days")
        for t in r.get("Transitions") or []:
            sc = t.get("StorageClass")
            if sc not in TRANSITION_CLASSES:
                problems.append("rule %s: unknown storage class %r" % (rid, sc))
            days = t.get("Days")
            if days is not None and sc in TRANSITION_MIN_DAYS and days < TRANSITION_MIN_DAYS[sc]:
                problems.append("rule %s: transition to %s after %d days (S3 needs at least %d)"
                                % (rid, sc, days, TRANSITION_MIN_DAYS[sc]))
            if days is not None and expire is not None and days >= expire:
                problems.append("rule %s: transition after %d days is not before expiration after %d days"
                                % (rid, days, expire))
    return problems


# -- the simulator -------------------------------------------------------------------------------------------------
def _utc(when):
    if isinstance(when, datetime.datetime):
        return when.replace(tzinfo=datetime.timezone.utc) if when.tzinfo is None else when.astimezone(
            datetime.timezone.utc)
    if isinstance(when, datetime.date):
        return datetime.datetime(when.year, when.month, when.day, tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromisoformat(str(when).replace("Z", "+00:00")).astimezone(datetime.timezone.utc)


def action_time(start, days):
    """When S3 acts on a ``Days: N`` rule: start + N days, rounded up to the next midnight UTC (the earliest it can
    happen; S3 may act later, never earlier)."""
    t = _utc(start) + datetime.timedelta(days=days)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == t else midnight + datetime.timedelta(days=1)


def rule_filter(rule):
    """(prefix, tags, size_greater_than, size_less_than) of a rule, whatever form S3 returned it in."""
    f = rule.get("Filter")
    if f is None:
        return rule.get("Prefix", ""), {}, None, None
    if "And" in f:
        a = f["And"]
        return (a.get("Prefix", ""), {t["Key"]: t["Value"] for t in a.get("Tags") or []},
                a.get("ObjectSizeGreaterThan"), a.get("ObjectSizeLessThan"))
    tags = {f["Tag"]["Key"]: f["Tag"]["Value"]} if "Tag" in f else {}
    return f.get("Prefix", ""), tags, f.get("ObjectSizeGreaterThan"), f.get("ObjectSizeLessThan")


def rule_matches(rule, key, size=None, tags=None):
    """Whether a rule applies to an object. An unknown size matches size filters (the worst case)."""
    if rule.get("Status") != "Enabled":
        return False
    prefix, rule_tags, greater, less = rule_filter(rule)
    if not key.startswith(prefix or ""):
        return False
    tags = tags or {}
    if any(tags.get(k) != v for k, v in rule_tags.items()):
        return False
    if size is not None and ((greater is not None and size <= greater) or (less is not None and size >= less)):
        return False
    return True


def object_timeline(rules, key, created, storage_class="STANDARD", size=None, tags=None, noncurrent_since=None):
    """Every action S3 will take on one object version, in time order: ``[(when, action, storage_class, rule_id)]``
    with action ``transition`` or ``expire``. ``noncurrent_since`` makes it a noncurrent version (versioned bucket).

    S3's conflict rules: expiration wins over transition; of the due transitions the cheapest class wins; a
    transition never moves an object to a more expensive class; objects below 128 KiB are not transitioned.
    """
    events = []
    for rule in rules:
        if not rule_matches(rule, key, size, tags):
            continue
        rid = rule.get("ID", "")
        if noncurrent_since is None:
            exp = rule.get("Expiration") or {}
            if exp.get("Days") is not None:
                events.append((action_time(created, exp["Days"]), "expire", None, rid))
            elif exp.get("Date") is not None:
                events.append((_utc(exp["Date"]), "expire", None, rid))
            for t in rule.get("Transitions") or []:
                when = action_time(created, t["Days"]) if t.get("Days") is not None else _utc(t["Date"])
                events.append((when, "transition", t["StorageClass"], rid))
        else:
            nexp = rule.get("NoncurrentVersionExpiration") or {}
            if nexp.get("NoncurrentDays") is not None:
                events.append((action_time(noncurrent_since, nexp["NoncurrentDays"]), "expire", None, rid))
            for t in rule.get("NoncurrentVersionTransitions") or []:
                events.append((action_time(noncurrent_since, t["NoncurrentDays"]), "transition", t["StorageClass"],
                               rid))
    events.sort(key=lambda e: (e[0], 0 if e[1] == "expire" else 1, -COST_ORDER.index(e[2]) if e[2] else 0))
    out = []
    current = storage_class
    for when, action, sc, rid in events:
        if action == "expire":
            out.append((when, action, None, rid))
            break
        if size is not None and size < MIN_TRANSITION_SIZE:
            continue
        if sc in COST_ORDER and (current not in COST_ORDER or COST_ORDER.index(sc) > COST_ORDER.index(current)):
            current = sc
            out.append((when, action, sc, rid))
    return out


def simulate(rules, key, created, on, storage_class="STANDARD", size=None, tags=None, noncurrent_since=None):
    """What S3 has done to one object version by ``on``: ``{"present", "storage_class", "slow", "rule"}``
    (``rule`` = the rule that last acted on it, or None)."""
    on = _utc(on)
    state = {"present": True, "storage_class": storage_class, "slow": storage_class in SLOW_CLASSES, "rule": None}
    for when, action, sc, rid in object_timeline(rules, key, created, storage_class, size, tags, noncurrent_since):
        if when > on:
            break
        state["rule"] = rid
        if action == "expire":
            state.update(present=False, storage_class=None, slow=False)
        else:
            state.update(storage_class=sc, slow=sc in SLOW_CLASSES)
    return state


def guarantee_problems(rules, plan, prefix):
    """Run the simulator on the bucket's whole rule set (ours and anyone else's) for the worst-case object of each
    kind: created exactly at midnight UTC, read at the last moment it may be needed. Returns the broken
    promises, naming the rule that breaks them."""
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    eps = datetime.timedelta(seconds=1)
    out = []
    for kind, key_prefix in kind_prefixes(prefix).items():
        key = key_prefix + "20260101T000000F/probe"
        k = plan[kind]
        fast = simulate(rules, key, created, created + datetime.timedelta(days=k["fast_days"]) - eps)
        if not fast["present"] or fast["slow"]:
            out.append("%s objects must stay fast to read for %d days, but rule %s %s them earlier"
                       % (kind, k["fast_days"], fast["rule"], "expires" if not fast["present"] else "archives"))
            continue
        keep = simulate(rules, key, created, created + datetime.timedelta(days=k["keep_days"]) - eps)
        if not keep["present"]:
            out.append("%s objects must be kept for %d days, but rule %s expires them earlier"
                       % (kind, k["keep_days"], keep["rule"]))
    return out


# -- reading and normalising bucket state --------------------------------------------------------------------------
def _code(exc):
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _call(client, bucket, op, missing=(), **kwargs):
    """One S3 call; a "not configured" error code in ``missing`` returns None; other errors become
    LifecycleError naming the bucket and operation."""
    try:
        return getattr(client, op)(Bucket=bucket, **kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore errors are classified by their code
        code = _code(exc)
        if code and code in missing:
            return None
        if code in ("NoSuchBucket",):
            raise LifecycleError("bucket %s does not exist: create it first (playbooks/lab.yml does in the lab)"
                                 % bucket) from exc
        raise LifecycleError("bucket %s: %s failed: %s" % (bucket, op, exc)) from exc


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
    return rule_filter(rule_)[0].startswith(root)


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
        raise LifecycleError("bucket %s does not exist" % bucket)
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
        out.append({"Sid": SID_PREFIX + "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                    "Action": "s3:*", "Resource": [arn, arn + "/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}}})
    if deny_unencrypted_uploads:
        out.append({"Sid": SID_PREFIX + "DenyUploadsWithoutEncryptionHeader", "Effect": "Deny", "Principal": "*",
                    "Action": "s3:PutObject", "Resource": arn + "/*",
                    "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}})
        out.append({"Sid": SID_PREFIX + "DenyUploadsWithOtherEncryption", "Effect": "Deny", "Principal": "*",
                    "Action": "s3:PutObject", "Resource": arn + "/*",
                    "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": sse_algorithm}}})
    return out


def _dest_arn(bucket):
    return bucket if bucket.startswith("arn:") else "arn:aws:s3:::%s" % bucket


def replication_rules(prefix, destinations, id_prefix=ID_PREFIX, first_priority=1):
    root = repository_root(prefix)
    rules = []
    for i, dest in enumerate(destinations):
        name = dest["bucket"].split(":::")[-1]
        rule = {"ID": rule_id(prefix, "replicate-" + name, id_prefix), "Priority": first_priority + i,
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
        if lock.get("mode") not in LOCK_MODES:
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
        if enc.get("sse_algorithm") not in SSE_ALGORITHMS:
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
            if d.get("storage_class") and d["storage_class"] not in COST_ORDER:
                problems.append("replication destination %s: unknown storage class %r"
                                % (d.get("bucket"), d["storage_class"]))
    if lock and not spec.get("versioning", True):
        problems.append("object_lock needs versioning: true")
    if problems:
        raise PolicyError("refused, nothing was changed: " + "; ".join(problems))


def reconcile(client, spec, check_mode=False):
    """Compare the bucket with what the policy asks for and apply the difference (unless ``check_mode``).

    ``spec``: bucket, prefix, policy, versioning (bool), object_lock ({mode, days} or None), encryption
    ({sse_algorithm, kms_key_id, bucket_key_enabled} or None), deny_insecure_transport, deny_unencrypted_uploads,
    replication ({role_arn, destinations: [{bucket, storage_class}]} or None), id_prefix, endpoint_url.
    Everything is validated and read before the first write. Returns the result the module returns.
    """
    bucket = spec["bucket"]
    prefix = spec.get("prefix") or ""
    id_prefix = spec.get("id_prefix") or ID_PREFIX
    plan = derive(spec.get("policy") or {})
    _check_spec(spec, plan)
    ours = build_rules(plan, prefix, id_prefix)
    problems = validate_rules(ours)
    if problems:  # pragma: no cover - derive() already refuses these
        raise PolicyError("refused, nothing was changed: " + "; ".join(problems))

    cur = read_state(client, bucket)
    root = repository_root(prefix)
    ids = {r["ID"] for r in ours}
    foreign = [r for r in cur["lifecycle_rules"] if not _owned(r, root, ids, id_prefix)]
    merged = foreign + ours
    problems = validate_rules(merged) + guarantee_problems(merged, plan, prefix)
    lock = spec.get("object_lock")
    if lock and not cur["object_lock_enabled"]:
        problems.append("object_lock %s asked for, but bucket %s was not created with Object Lock (S3 only turns it "
                        "on at creation: create a new bucket with ObjectLockEnabledForBucket and copy the repository "
                        "there)" % (lock.get("mode"), bucket))
    if problems:
        raise PolicyError("refused, nothing was changed: " + "; ".join(problems))

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
    mine = [s for s in cur_statements if str(s.get("Sid", "")).startswith(SID_PREFIX)]
    others = [s for s in cur_statements if not str(s.get("Sid", "")).startswith(SID_PREFIX)]
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
            raise PolicyError("refused, nothing was changed: bucket %s already replicates (rules %s) as role %s; a "
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
                raise LifecycleError("bucket %s: applying %s failed (already applied: %s): %s"
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


# -- restores and retention meet archived or locked objects --------------------------------------------------------
class ArchivedObjectError(LifecycleError):
    """An object a restore needs is in an archive tier; ``request_restore`` brings it back (minutes to hours)."""


def archive_state(head):
    """From a head_object response: ``{"storage_class", "archived", "restore"}`` where ``archived`` means a GET
    fails now (GLACIER/DEEP_ARCHIVE without a completed restore) and ``restore`` is ``none``, ``in-progress`` or
    ``done`` (then ``restore_expiry`` says until when the temporary copy stays)."""
    sc = head.get("StorageClass") or "STANDARD"
    restore = head.get("Restore") or ""
    state, expiry = "none", None
    if 'ongoing-request="true"' in restore:
        state = "in-progress"
    elif 'ongoing-request="false"' in restore:
        state = "done"
        if "expiry-date=" in restore:
            expiry = restore.split("expiry-date=", 1)[1].strip().strip('"')
    return {"storage_class": sc, "archived": sc in SLOW_CLASSES and state != "done", "restore": state,
            "restore_expiry": expiry}


def require_readable(head, bucket, key):
    """Raise ArchivedObjectError with a message saying what to do when the object cannot be read now."""
    st = archive_state(head)
    if st["archived"]:
        what = ("a restore from %s is in progress; wait for it" % st["storage_class"] if st["restore"] == "in-progress"
                else "request a restore from %s (hours for GLACIER Standard, up to 12 h for DEEP_ARCHIVE)"
                % st["storage_class"])
        raise ArchivedObjectError("s3://%s/%s is archived in %s and cannot be read now: %s"
                                  % (bucket, key, st["storage_class"], what))
    return st


def request_restore(client, bucket, key, version_id=None, days=1, tier="Standard"):
    """Ask S3 to bring an archived object back for ``days``. Idempotent: a restore already running is not an
    error. Returns ``"requested"``, ``"in-progress"`` or ``"done"``."""
    kwargs = {"Key": key, "RestoreRequest": {"Days": days, "GlacierJobParameters": {"Tier": tier}}}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        response = client.restore_object(Bucket=bucket, **kwargs)
    except Exception as exc:  # noqa: BLE001
        if _code(exc) == "RestoreAlreadyInProgress":
            return "in-progress"
        raise LifecycleError("s3://%s/%s: restore_object failed: %s" % (bucket, key, exc)) from exc
    status = (response or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return "done" if status == 200 else "requested"


def object_lock_state(client, bucket, key, version_id=None, now=None):
    """Lock of one object version: ``{"mode", "retain_until", "legal_hold", "locked"}``. ``locked`` is True while
    a retention date is in the future or a legal hold is on: neither our retention nor anyone else can delete
    or overwrite that version then (COMPLIANCE: not even the root account)."""
    kwargs = {"Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    head = client.head_object(Bucket=bucket, **kwargs)
    until = head.get("ObjectLockRetainUntilDate")
    now = _utc(now or datetime.datetime.now(datetime.timezone.utc))
    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
    return {"mode": head.get("ObjectLockMode"), "retain_until": until.isoformat() if until else None,
            "legal_hold": hold, "locked": hold or bool(until and _utc(until) > now)}


def is_locked_error(exc):
    """Whether a delete/overwrite failure may be Object Lock refusing it. S3 says only AccessDenied (some
    endpoints add "object lock" to the message), so confirm with object_lock_state before reporting it as a lock."""
    return _code(exc) in ("AccessDenied", "InvalidRequest") and (
        _code(exc) == "AccessDenied" or "lock" in str(exc).lower())


def delete_unless_locked(client, bucket, key, version_id):
    """Delete one object version; a version under Object Lock is skipped and reported, not an error.
    Returns ``{"deleted": bool, "key", "version_id", "lock": {...} or None}``."""
    try:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
    except Exception as exc:  # noqa: BLE001
        if not is_locked_error(exc):
            raise
        lock = object_lock_state(client, bucket, key, version_id)
        if not lock["locked"]:
            raise
        return {"deleted": False, "key": key, "version_id": version_id, "lock": lock}
    return {"deleted": True, "key": key, "version_id": version_id, "lock": None}
