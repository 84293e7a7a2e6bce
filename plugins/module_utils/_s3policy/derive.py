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

``simulate.simulate()`` / ``simulate.object_timeline()`` say what S3 will do to an object on a given date under a
set of rules, so the guarantee is tested without waiting for S3 (test endpoints store lifecycle rules but never run
them).
"""

from __future__ import annotations

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
