# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: which backups a policy keeps (count and age), never one a kept backup or the WAL it needs
depends on, and the WAL and streamed pieces older than the oldest kept backup.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming


# -- WAL in the repository and the recoverability window -------------------------------------------------------------
def wal_inventory(repository):
    """{timeline: {segno: ObjectInfo}} for the WAL segments under ``wal/``, plus the history files."""
    segments, histories = {}, []
    for obj in repository.list("wal/"):
        base = obj["key"].rsplit("/", 1)[-1]
        name = base.split(".", 1)[0]
        if base.endswith(".history"):
            histories.append(base)
            continue
        if not wal_naming.SEGMENT_RE.match(name) or ".partial" in base or ".backup" in base:
            continue
        timeline, segno = wal_naming.parse_segment(name)
        segments.setdefault(timeline, {})[segno] = obj
    return segments, histories


def recoverability(backups, wal_segments):
    """For each valid backup, how far WAL in the repository lets it recover (contiguous segments from its start
    segment on its timeline), and the overall window."""
    window = {"earliest": None, "latest": None, "backups": []}
    for record in backups:
        if record.get("status") != "valid":
            continue
        seg_size = record.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE
        tl = record["timeline"]
        start = wal_naming.segment_number(record["start_lsn"], seg_size)
        stop = wal_naming.segment_number(record["stop_lsn"], seg_size)
        have = wal_segments.get(tl, {})
        last = stop  # the backup's own pg_wal archive makes it consistent up to its stop LSN
        n = start
        while n in have:
            last = max(last, n)
            n += 1
        reach_lsn = wal_naming.int_to_lsn((last + 1) * seg_size - 1) if last > stop else record["stop_lsn"]
        reach_time = backup_catalog.iso(have[last]["mtime"]) if last > stop and last in have else record["stop_time"]
        item = {"id": record["id"], "from_lsn": record["stop_lsn"], "from_time": record["stop_time"],
                "to_lsn": reach_lsn, "to_time": reach_time, "timeline": tl,
                "wal_segments_after_backup": max(0, last - stop)}
        window["backups"].append(item)
        if window["earliest"] is None:
            window["earliest"] = {"time": record["stop_time"], "lsn": record["stop_lsn"], "backup": record["id"]}
        window["latest"] = {"time": reach_time, "lsn": reach_lsn, "backup": record["id"]}
    return window


# -- retention -------------------------------------------------------------------------------------------------------
def plan_retention(backups, now=None, keep_full=None, keep_days=None):
    """Which valid backups to keep and which to delete. A backup is kept when it is among the newest
    ``keep_full``, or needed to restore any point in the last ``keep_days`` (every backup started inside the
    window, plus the newest one before it). The newest valid backup is always kept. Returns (keep, delete),
    each a list of (record, reason)."""
    if keep_full is None and keep_days is None:
        raise backup_catalog.BackupError("retention needs keep_full, keep_days or both")
    if keep_full is not None and keep_full < 1:
        raise backup_catalog.BackupError("keep_full must be at least 1 (the last valid backup is never deleted)")
    if keep_days is not None and keep_days < 0:
        raise backup_catalog.BackupError("keep_days must not be negative")
    now = now or backup_catalog.utcnow()
    valid = sorted((b for b in backups if b.get("status") == "valid"), key=lambda b: b["stop_time"])
    reasons = {}
    if keep_full is not None:
        for b in valid[-keep_full:]:
            reasons.setdefault(b["id"], "among the newest %d" % keep_full)
    if keep_days is not None:
        edge = now - datetime.timedelta(days=keep_days)
        inside = [b for b in valid if backup_catalog.parse_iso(b["stop_time"]) >= edge]
        before = [b for b in valid if backup_catalog.parse_iso(b["stop_time"]) < edge]
        for b in inside:
            reasons.setdefault(b["id"], "inside the %d-day window" % keep_days)
        if before:
            reasons.setdefault(before[-1]["id"], "needed to restore the start of the %d-day window" % keep_days)
    if valid:
        reasons.setdefault(valid[-1]["id"], "the newest valid backup")
    keep = [(b, reasons[b["id"]]) for b in valid if b["id"] in reasons]
    delete = [(b, "older than the policy keeps") for b in valid if b["id"] not in reasons]
    return keep, delete


def plan_wal_retention(kept, wal_segments):
    """WAL segments no kept backup needs: those before the oldest kept backup's start segment (history files are
    always kept). Without any kept backup nothing is deleted."""
    if not kept:
        return []
    oldest = min(wal_naming.segment_number(b["start_lsn"], b.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE)
                 for b in kept)
    victims = []
    for timeline in sorted(wal_segments):
        for segno, obj in sorted(wal_segments[timeline].items()):
            if segno < oldest:
                victims.append(obj["key"])
    return victims


def plan_stream_retention(kept, objects):
    """Streamed WAL (``stream/``: whole segments and the pieces of partial ones) that no kept backup needs: the same
    rule as plan_wal_retention. History files are always kept."""
    if not kept:
        return []
    oldest = min(wal_naming.segment_number(b["start_lsn"], b.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE)
                 for b in kept)
    victims = []
    for obj in objects:
        parts = obj["key"].split("/")
        name = parts[-1]
        if len(parts) >= 2 and parts[-2].endswith(".partial"):
            name = parts[-2][:-len(".partial")]
        if not wal_naming.SEGMENT_RE.match(name):
            continue
        if wal_naming.parse_segment(name)[1] < oldest:
            victims.append(obj["key"])
    return victims


def apply_retention(repository, keep_full=None, keep_days=None, now=None, check_mode=False, area="backup"):
    """Plan and (unless check_mode) apply retention in one repository. Returns a report."""
    backups = backup_catalog.list_backups(repository, area)
    keep, delete = plan_retention(backups, now=now, keep_full=keep_full, keep_days=keep_days)
    wal_victims = []
    if area == "backup":  # logical backups need no WAL
        segments = wal_inventory(repository)[0]
        wal_victims = plan_wal_retention([b for b, _r in keep], segments)
        wal_victims += plan_stream_retention([b for b, _r in keep], repository.list("stream/"))
    incomplete = [b["id"] for b in backups if b.get("status") == "incomplete" and backup_catalog.is_abandoned(b, now)]
    report = {"repository": repository.describe(), "kept": [{"id": b["id"], "reason": r} for b, r in keep],
              "deleted": [], "skipped": {}, "wal_deleted": 0, "wal_skipped": {}, "incomplete_removed": incomplete,
              "would_delete": [b["id"] for b, _r in delete], "would_delete_wal": len(wal_victims)}
    if check_mode:
        return report
    for b, _reason in delete:
        _deleted, skipped = backup_catalog.remove_backup(repository, b["id"], area)
        if skipped:
            report["skipped"][b["id"]] = sorted(set(skipped.values()))[0]
        else:
            report["deleted"].append(b["id"])
    if wal_victims:
        deleted, skipped = repository.delete(wal_victims)
        report["wal_deleted"] = len(deleted)
        report["wal_skipped"] = skipped
    for backup_id in incomplete:
        backup_catalog.remove_backup(repository, backup_id, area)
    return report
