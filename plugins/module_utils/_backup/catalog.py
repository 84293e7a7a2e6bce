# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog in a repository: one ``backup.json`` per finished backup, ``in-progress.json`` while one
runs, ``verified.json`` after a verification; listing, abandoned runs, removal.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base

CATALOG_FORMAT = 1
RECORD = "backup.json"
IN_PROGRESS = "in-progress.json"
VERIFIED = "verified.json"
STALE_AFTER = datetime.timedelta(hours=6)


class BackupError(_errors.DrError):
    """A backup problem the operator can act on; the message says what and what to do next."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value):
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    text = value.replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text)


def new_backup_id(kind="F", now=None):
    """Sortable, unique per second and kind: 20261127T105548F (full), ...L (logical)."""
    return (now or utcnow()).strftime("%Y%m%dT%H%M%S") + kind


# -- the catalog ----------------------------------------------------------------------------------------------------
def list_backups(repository, area="backup"):
    """Every backup in a repository: catalog records (status valid) and leftovers without one (status
    incomplete). Sorted oldest first."""
    by_id = {}
    for obj in repository.list(area + "/"):
        parts = obj["key"].split("/")
        if len(parts) < 3:
            continue
        by_id.setdefault(parts[1], []).append(obj)
    found = []
    for backup_id, objects in sorted(by_id.items()):
        names = {o["key"].split("/", 2)[2]: o for o in objects}
        if RECORD in names:
            try:
                record = json.loads(repository.get_bytes("%s/%s/%s" % (area, backup_id, RECORD)))
            except (ValueError, repo_base.RepositoryError) as exc:
                found.append({"id": backup_id, "status": "damaged", "problem": "catalog record unreadable: %s"
                              % exc, "repository": repository.name})
                continue
            record["status"] = "valid"
            if VERIFIED in names:
                try:
                    record["last_verification"] = json.loads(
                        repository.get_bytes("%s/%s/%s" % (area, backup_id, VERIFIED)))
                except (ValueError, repo_base.RepositoryError):
                    pass
            record["repository"] = repository.name
            found.append(record)
        else:
            newest = max(o["mtime"] for o in objects)
            entry = {"id": backup_id, "status": "incomplete", "repository": repository.name,
                     "objects": len(objects), "last_write": iso(newest)}
            if IN_PROGRESS in names:
                try:
                    entry["in_progress"] = json.loads(
                        repository.get_bytes("%s/%s/%s" % (area, backup_id, IN_PROGRESS)))
                except (ValueError, repo_base.RepositoryError):
                    pass
            found.append(entry)
    return found


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def is_abandoned(entry, now=None, stale_after=STALE_AFTER):
    """An incomplete backup nobody is still writing: its writer on this host is gone, or it is stale."""
    now = now or utcnow()
    marker = entry.get("in_progress") or {}
    if marker.get("host") == socket.gethostname() and marker.get("pid") and not _pid_alive(marker["pid"]):
        return True
    last = parse_iso(entry.get("last_write"))
    return last is None or now - last > stale_after


def remove_backup(repository, backup_id, area="backup"):
    """Uncommit first (the catalog record), then the rest: an interruption leaves an incomplete backup, never a
    valid one with missing parts. Returns (deleted keys, skipped {key: reason})."""
    prefix = "%s/%s/" % (area, backup_id)
    keys = [o["key"] for o in repository.list(prefix)]
    record = prefix + RECORD
    locked = {k: repository.locked(k) for k in keys}
    locked = {k: v for k, v in locked.items() if v}
    if locked:
        return [], locked
    deleted, skipped = [], {}
    if record in keys:
        d, s = repository.delete([record])
        deleted += d
        skipped.update(s)
        if s:
            return deleted, skipped
    d, s = repository.delete([k for k in keys if k != record])
    return deleted + d, dict(skipped, **s)


def clean_incomplete(repository, area="backup", now=None, check_mode=False):
    removed = []
    for entry in list_backups(repository, area):
        if entry["status"] == "incomplete" and is_abandoned(entry, now):
            if not check_mode:
                remove_backup(repository, entry["id"], area)
            removed.append(entry["id"])
    return removed


# -- taking a backup -------------------------------------------------------------------------------------------------
def cluster_identity(conn):
    """system identifier, server_version_num, timeline, wal_segment_size, and whether this is a standby."""
    cur = conn.cursor()
    cur.execute("SELECT system_identifier::text FROM pg_control_system()")
    system_identifier = cur.fetchone()[0]
    cur.execute("SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
                "timeline_id FROM pg_control_checkpoint()")
    version, in_recovery, seg_size, timeline = cur.fetchone()
    return {"system_identifier": system_identifier, "pg_version": version, "in_recovery": in_recovery,
            "wal_segment_size": int(seg_size), "timeline": timeline}


def find_by_label(backups, label):
    return [b for b in backups if b.get("status") == "valid" and b.get("label") == label]
