# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Timelines and WAL chains: the history files in the repositories, the timeline a target lies on, and the
segments from a backup's start to a target on it.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects


# -- WAL in the repositories -----------------------------------------------------------------------------------------
def parse_history(text):
    """A timeline history file: [(parent timeline, switch LSN as int)], oldest first."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise restore_target.RestoreError("history file line %r does not parse" % line)
        entries.append((int(fields[0]), wal_naming.lsn_to_int(fields[1])))
    return entries


class WalCatalog:
    """Every WAL object the repositories hold: archived (``wal/``) and streamed (``stream/``) segments, streamed
    ``.partial`` segments, and the timeline history files (read, they are small)."""

    def __init__(self, repositories, segment_size=wal_naming.DEFAULT_SEGMENT_SIZE):
        self.segment_size = segment_size
        self.segments = {}  # (tl, segno) -> info dict
        self.copies = {}  # (tl, segno) -> [(repository, info), ...]: every repository's copy
        self.partials = {}
        self.histories = {}  # tl -> [(parent, switch_lsn)]
        for repo in repositories:
            for area in ("wal/", "stream/"):
                try:
                    objects = repo.list(area)
                except repo_base.RepositoryError as exc:
                    raise restore_target.RestoreError("cannot list %s in %s: %s" % (area, repo.describe(),
                                                                                    exc)) from None
                for obj in objects:
                    self._add(repo, area, obj)

    def _add(self, repo, area, obj):
        parts = obj["key"].split("/")
        base = parts[-1]
        info = {"key": obj["key"], "mtime": obj["mtime"], "repository": repo.name, "area": area.rstrip("/"),
                "size": obj["size"], "storage_class": obj.get("storage_class") or "STANDARD"}
        if len(parts) >= 2 and parts[-2].endswith(".partial") and wal_naming.parse_piece_key(base):
            # a piece of a streamed partial segment (stream/<tl+log>/<segment>.partial/<start>-<end>)
            name = parts[-2][:-len(".partial")]
            if wal_naming.SEGMENT_RE.match(name):
                key = wal_naming.parse_segment(name, self.segment_size)
                known = self.partials.get(key)
                if known is None or known["mtime"] < info["mtime"]:
                    self.partials[key] = info
            return
        match = wal_naming.HISTORY_RE.match(base)
        if match:
            tl = int(match.group(1), 16)
            if tl not in self.histories:
                raw = repo.get_bytes(obj["key"])
                try:
                    raw = wal_objects.unpack(raw, base)
                except Exception:  # noqa: BLE001 - a plain history file (copied by hand) is fine too
                    pass
                self.histories[tl] = parse_history(raw.decode("utf-8", "replace"))
            return
        name, _dot, suffix = base.partition(".")
        if not wal_naming.SEGMENT_RE.match(name) or suffix not in ("", "partial"):
            return
        timeline, segno = wal_naming.parse_segment(name, self.segment_size)
        if suffix == "partial":  # a .partial PostgreSQL archived at a promotion: recovery never asks for it
            return
        self.copies.setdefault((timeline, segno), []).append((repo, info))
        known = self.segments.get((timeline, segno))
        if known is None or (known["area"] == "stream" and info["area"] == "wal"):
            self.segments[(timeline, segno)] = info  # prefer the archive's copy

    def timelines(self):
        return sorted(set(tl for tl, _n in self.segments) | set(self.histories) | set(tl for tl, _n in self.partials))


def timeline_path(histories, target_tl):
    """[(timeline, begin LSN, end LSN or None)] from the first timeline to ``target_tl``."""
    if target_tl == 1 and 1 not in histories:
        return [(1, 0, None)]
    if target_tl not in histories:
        raise restore_target.RestoreError(
            "timeline %d has no history file in the repositories (%08X.history): it cannot be "
            "followed" % (target_tl, target_tl))
    path, begin = [], 0
    for parent, switch in histories[target_tl]:
        path.append((parent, begin, switch))
        begin = switch
    path.append((target_tl, begin, None))
    return path


def choose_timeline(catalog, backup, requested):
    """The timeline recovery will follow from ``backup``: its own (current), a given one, or the newest one whose
    history passes through the backup's timeline after the backup started (latest)."""
    btl = int(backup["timeline"])
    start = wal_naming.lsn_to_int(backup["start_lsn"])

    def passes(tl):
        try:
            path = timeline_path(catalog.histories, tl)
        except restore_target.RestoreError:
            return False
        return any(t == btl and b <= start and (e is None or e > start) for t, b, e in path)

    if requested == "current":
        return btl
    if requested != "latest":
        tl = int(requested)
        if not passes(tl):
            raise restore_target.RestoreError(
                "timeline %d does not descend from backup %s's timeline %d after its start %s"
                % (tl, backup["id"], btl, backup["start_lsn"]))
        return tl
    candidates = [tl for tl in catalog.timelines() if tl >= btl and passes(tl)]
    return max(candidates) if candidates else btl


def wal_chain(catalog, backup, target_tl, use_partial=True):
    """Walk the segments recovery needs after the backup, on the timeline path to ``target_tl``.
    Returns {'last_segno', 'last_name', 'last_time', 'segments', 'partial', 'gap', 'after_gap'}."""
    seg_size = catalog.segment_size
    path = timeline_path(catalog.histories, target_tl) if target_tl != int(backup["timeline"]) else \
        [(int(backup["timeline"]), 0, None)]

    def tl_for(segno):
        chosen = path[0][0]
        for tl, begin, _end in path:
            if begin // seg_size <= segno:
                chosen = tl
        return chosen

    stop_segno = wal_naming.segment_number(backup["stop_lsn"], seg_size)
    segno = stop_segno + 1
    names = []
    keys = []
    last_time = backup_catalog.parse_iso(backup["stop_time"])
    last_segno = stop_segno
    for _step in range(1 << 24):  # bounded: 2^24 segments is 256 TB of WAL
        info = catalog.segments.get((tl_for(segno), segno))
        if info is None:
            break
        names.append(wal_naming.segment_name(tl_for(segno), segno, seg_size))
        keys.append((tl_for(segno), segno))
        last_time = max(last_time, info["mtime"])
        last_segno = segno
        segno += 1
    partial = catalog.partials.get((tl_for(segno), segno)) if use_partial else None
    if partial is not None:
        last_time = max(last_time, partial["mtime"])
    later = sorted(n for (tl, n) in catalog.segments if n > segno and tl in {p[0] for p in path})
    return {
        "first": names[0] if names else None,
        "keys": keys,
        "partial_key": (tl_for(segno), segno) if partial else None,
        "last_segno": last_segno,
        "last": wal_naming.segment_name(tl_for(last_segno), last_segno, seg_size),
        "last_time": last_time,
        "segments": len(names),
        "bytes": len(names) * seg_size + (seg_size if partial else 0),
        "partial": wal_naming.segment_name(tl_for(segno), segno, seg_size) + ".partial" if partial else None,
        "missing": wal_naming.segment_name(tl_for(segno), segno, seg_size) if later else None,
        "segments_after_gap": len(later),
        "reach_lsn_int": (last_segno + 1) * seg_size - 1,
    }
