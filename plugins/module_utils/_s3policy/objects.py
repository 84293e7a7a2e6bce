# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One stored object under the policy: archived (GLACIER) or readable, a restore request, its Object Lock
state, and a delete that skips what is locked.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime

from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import derive as s3policy_derive
from ansible_collections.immersiverse.dr.plugins.module_utils._s3policy import simulate as s3policy_simulate


# -- reading and normalising bucket state --------------------------------------------------------------------------
def error_code(exc):
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


# -- restores and retention meet archived or locked objects --------------------------------------------------------
class ArchivedObjectError(s3policy_derive.LifecycleError):
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
    return {"storage_class": sc, "archived": sc in s3policy_derive.SLOW_CLASSES and state != "done", "restore": state,
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
        if error_code(exc) == "RestoreAlreadyInProgress":
            return "in-progress"
        raise s3policy_derive.LifecycleError("s3://%s/%s: restore_object failed: %s" % (bucket, key, exc)) from exc
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
    now = s3policy_simulate.as_utc(now or datetime.datetime.now(datetime.timezone.utc))
    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
    return {"mode": head.get("ObjectLockMode"), "retain_until": until.isoformat() if until else None,
            "legal_hold": hold, "locked": hold or bool(until and s3policy_simulate.as_utc(until) > now)}


def is_locked_error(exc):
    """Whether a delete/overwrite failure may be Object Lock refusing it. S3 says only AccessDenied (some
    endpoints add "object lock" to the message), so confirm with object_lock_state before reporting it as a lock."""
    return error_code(exc) in ("AccessDenied", "InvalidRequest") and (
        error_code(exc) == "AccessDenied" or "lock" in str(exc).lower())


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
