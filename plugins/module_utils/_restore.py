# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore: choose the backup that serves a target, prove the WAL reaches it, restore the files, watch recovery.

The plan comes first and changes nothing: the newest valid backup that ends before the target (same system
identifier), the timeline path from that backup to the target (history files), and every WAL segment in between,
found in a repository (``wal/``, or ``stream/`` from the streaming receiver). A target the repositories cannot
reach (before the oldest backup, after the end of the archive, behind a missing segment) is refused here, before
anything is touched; PostgreSQL's own check ("recovery ended before configured recovery target was reached") is
the second line, and ``wait_for_recovery`` reports it as a failure, never as success at an earlier point.

The restore never deletes, and never leaves a host without its data directory: the backup is restored into
``<data_dir>.restoring`` beside the current one, and only when every file matched its stored sha256 and the backup
manifest's checksums is the current one renamed to ``<data_dir>.replaced-<UTC time>`` and the new one renamed into
place. A failure while the files are restored leaves the current data directory as it was. A state file beside the
data directory (``<data_dir>.immersiverse-dr-restore.json``) records each step, so a re-run after an interruption
continues (or starts the restore over) instead of moving a half-restored directory aside as if it were the damaged
one.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _backup, _recovery
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal, _walarchive

TARGET_TYPES = ("end", "immediate", "time", "lsn", "xid", "name")
CHUNK = 1024 * 1024
STATE_SUFFIX = ".immersiverse-dr-restore.json"


class RestoreError(_errors.DrError):
    """A restore that must not go on; the message says why and what to do next."""


# -- targets ---------------------------------------------------------------------------------------------------------
def parse_target_time(value):
    """A recovery_target_time as an aware datetime, by the same rule pg_recovery writes it with: an explicit zone
    (offset, Z/UTC, or an IANA name), never a naive time nor an abbreviation."""
    try:
        return _recovery.parse_time(str(value or "").strip())
    except _recovery.RecoveryError as exc:
        raise RestoreError(str(exc)) from None


def normalise_target(target):
    """{'type', 'value', 'inclusive', 'timeline'} checked; the value parsed for time and LSN targets."""
    target = dict(target or {})
    kind = target.get("type") or "end"
    if kind not in TARGET_TYPES:
        raise RestoreError("unknown target type %r (one of %s)" % (kind, ", ".join(TARGET_TYPES)))
    value = target.get("value")
    out = {"type": kind, "value": value, "inclusive": bool(target.get("inclusive", True)),
           "timeline": str(target.get("timeline") or "latest")}
    if kind in ("end", "immediate"):
        if value not in (None, ""):
            raise RestoreError("a %s target takes no value (got %r)" % (kind, value))
        out["value"] = None
    elif value in (None, ""):
        raise RestoreError("a %s target needs a value" % kind)
    elif kind == "time":
        out["moment"] = parse_target_time(value)
        out["value"] = str(value)
    elif kind == "lsn":
        try:
            out["lsn_int"] = _wal.lsn_to_int(value)
        except _wal.WalError as exc:
            raise RestoreError("target_lsn: %s" % exc) from None
        out["value"] = _wal.int_to_lsn(out["lsn_int"])
    elif kind == "xid":
        if not re.match(r"^[1-9][0-9]{0,19}$", str(value)):
            raise RestoreError("target_xid %r is not a transaction id" % (value,))
        out["value"] = str(value)
    elif kind == "name":
        if re.search(r"['\n\r\0\\]", str(value)) or len(str(value)) > 63:
            raise RestoreError("target_name %r: at most 63 characters, no quotes, backslashes or newlines"
                               % (value,))
    tl = out["timeline"]
    if tl not in ("latest", "current") and not re.match(r"^[1-9][0-9]{0,9}$", tl):
        raise RestoreError("target timeline %r: latest, current or a timeline number" % tl)
    return out


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
            raise RestoreError("history file line %r does not parse" % line)
        entries.append((int(fields[0]), _wal.lsn_to_int(fields[1])))
    return entries


class WalCatalog:
    """Every WAL object the repositories hold: archived (``wal/``) and streamed (``stream/``) segments, streamed
    ``.partial`` segments, and the timeline history files (read, they are small)."""

    def __init__(self, repositories, segment_size=_wal.DEFAULT_SEGMENT_SIZE):
        self.segment_size = segment_size
        self.segments = {}  # (tl, segno) -> info dict
        self.copies = {}  # (tl, segno) -> [(repository, info), ...]: every repository's copy
        self.partials = {}
        self.histories = {}  # tl -> [(parent, switch_lsn)]
        for repo in repositories:
            for area in ("wal/", "stream/"):
                try:
                    objects = repo.list(area)
                except repo_mod.RepositoryError as exc:
                    raise RestoreError("cannot list %s in %s: %s" % (area, repo.describe(), exc)) from None
                for obj in objects:
                    self._add(repo, area, obj)

    def _add(self, repo, area, obj):
        parts = obj["key"].split("/")
        base = parts[-1]
        info = {"key": obj["key"], "mtime": obj["mtime"], "repository": repo.name, "area": area.rstrip("/"),
                "size": obj["size"], "storage_class": obj.get("storage_class") or "STANDARD"}
        if len(parts) >= 2 and parts[-2].endswith(".partial") and _wal.parse_piece_key(base):
            # a piece of a streamed partial segment (stream/<tl+log>/<segment>.partial/<start>-<end>)
            name = parts[-2][:-len(".partial")]
            if _wal.SEGMENT_RE.match(name):
                key = _wal.parse_segment(name, self.segment_size)
                known = self.partials.get(key)
                if known is None or known["mtime"] < info["mtime"]:
                    self.partials[key] = info
            return
        match = _wal.HISTORY_RE.match(base)
        if match:
            tl = int(match.group(1), 16)
            if tl not in self.histories:
                raw = repo.get_bytes(obj["key"])
                try:
                    raw = _walarchive.unpack(raw, base)
                except Exception:  # noqa: BLE001 - a plain history file (copied by hand) is fine too
                    pass
                self.histories[tl] = parse_history(raw.decode("utf-8", "replace"))
            return
        name, _dot, suffix = base.partition(".")
        if not _wal.SEGMENT_RE.match(name) or suffix not in ("", "partial"):
            return
        timeline, segno = _wal.parse_segment(name, self.segment_size)
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
        raise RestoreError("timeline %d has no history file in the repositories (%08X.history): it cannot be "
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
    start = _wal.lsn_to_int(backup["start_lsn"])

    def passes(tl):
        try:
            path = timeline_path(catalog.histories, tl)
        except RestoreError:
            return False
        return any(t == btl and b <= start and (e is None or e > start) for t, b, e in path)

    if requested == "current":
        return btl
    if requested != "latest":
        tl = int(requested)
        if not passes(tl):
            raise RestoreError("timeline %d does not descend from backup %s's timeline %d after its start %s"
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

    stop_segno = _wal.segment_number(backup["stop_lsn"], seg_size)
    segno = stop_segno + 1
    names = []
    keys = []
    last_time = _backup.parse_iso(backup["stop_time"])
    last_segno = stop_segno
    for _step in range(1 << 24):  # bounded: 2^24 segments is 256 TB of WAL
        info = catalog.segments.get((tl_for(segno), segno))
        if info is None:
            break
        names.append(_wal.segment_name(tl_for(segno), segno, seg_size))
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
        "last": _wal.segment_name(tl_for(last_segno), last_segno, seg_size),
        "last_time": last_time,
        "segments": len(names),
        "bytes": len(names) * seg_size + (seg_size if partial else 0),
        "partial": _wal.segment_name(tl_for(segno), segno, seg_size) + ".partial" if partial else None,
        "missing": _wal.segment_name(tl_for(segno), segno, seg_size) if later else None,
        "segments_after_gap": len(later),
        "reach_lsn_int": (last_segno + 1) * seg_size - 1,
    }


# -- the plan --------------------------------------------------------------------------------------------------------
def all_backups(repositories):
    """Valid full backups across repositories, the first repository's copy preferred; oldest first."""
    seen = {}
    for repo in repositories:
        try:
            found = _backup.list_backups(repo)
        except repo_mod.RepositoryError as exc:
            raise RestoreError("cannot list backups in %s: %s" % (repo.describe(), exc)) from None
        for record in found:
            if record.get("status") == "valid" and record.get("kind", "full") == "full":
                seen.setdefault(record["id"], record)
    return sorted(seen.values(), key=lambda r: (r["stop_time"], r["id"]))


def _describe(record):
    return "%s (ended %s at %s, timeline %s)" % (record["id"], record["stop_time"], record["stop_lsn"],
                                                 record["timeline"])


PLAN_BACKUP_FIELDS = ("id", "label", "repository", "region", "system_identifier", "timeline", "start_lsn", "stop_lsn",
                      "start_wal", "stop_wal", "start_time", "stop_time", "database_bytes", "stored_bytes",
                      "pg_version")


def plan(repositories, target, system_identifier=None, backup_id=None, use_partial=True, commit_times=None):
    """What a restore to ``target`` would use, or RestoreError saying why the target cannot be reached.
    ``use_partial``: restore_command serves streamed partial segments (immersiverse-dr-wal fetch --partial).
    ``commit_times(raw, name)``: the commit/abort times in one WAL segment (``pg_waldump_commit_times``); with it a
    time target is bounded by the WAL's own last transaction, not by when the segment was uploaded."""
    target = normalise_target(target)
    backups = all_backups(repositories)
    if not backups:
        raise RestoreError("no valid backup in %s: take one first (playbooks/backup.yml)"
                           % ", ".join(r.describe() for r in repositories))
    identities = sorted(set(b["system_identifier"] for b in backups))
    if system_identifier:
        backups = [b for b in backups if b["system_identifier"] == str(system_identifier)]
        if not backups:
            raise RestoreError("no backup of cluster %s in the repositories (they hold %s): wrong region or wrong "
                               "repository?" % (system_identifier, ", ".join(identities)))
    elif len(identities) > 1:
        raise RestoreError("the repositories hold backups of %d clusters (%s): say which with system_identifier"
                           % (len(identities), ", ".join(identities)))
    oldest = backups[0]
    if backup_id:
        chosen = [b for b in backups if b["id"] == backup_id]
        if not chosen:
            raise RestoreError("backup %s is not a valid backup here; valid: %s"
                               % (backup_id, ", ".join(b["id"] for b in backups)))
        candidates = chosen
    elif target["type"] == "time":
        candidates = [b for b in backups if _backup.parse_iso(b["stop_time"]) < target["moment"]]
        if not candidates:
            raise RestoreError("target time %s is before the oldest backup's end, %s: no backup can restore it. The "
                               "earliest point these repositories can restore is %s"
                               % (target["value"], _describe(oldest), oldest["stop_time"]))
    elif target["type"] == "lsn":
        candidates = [b for b in backups if _wal.lsn_to_int(b["stop_lsn"]) <= target["lsn_int"]]
        if not candidates:
            raise RestoreError("target LSN %s is before the oldest backup's end, %s: no backup can restore it"
                               % (target["value"], _describe(oldest)))
    else:
        candidates = backups
    record = candidates[-1]
    if target["type"] == "time" and _backup.parse_iso(record["stop_time"]) >= target["moment"]:
        raise RestoreError("backup %s ends after the target time %s" % (record["id"], target["value"]))
    if target["type"] == "lsn" and _wal.lsn_to_int(record["stop_lsn"]) > target["lsn_int"]:
        raise RestoreError("backup %s ends after the target LSN %s" % (record["id"], target["value"]))

    tablespaces = tablespace_archives(record)
    if tablespaces:
        raise RestoreError("backup %s has tablespace archives (%s): this version restores only the main data "
                           "directory, so it refuses here, before anything stops. Restore a backup taken without "
                           "tablespaces (backup_id), or move the tables into pg_default (ALTER TABLE ... SET "
                           "TABLESPACE pg_default) and take a new backup. Nothing was changed."
                           % (record["id"], ", ".join(tablespaces)))
    seg_size = record.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE
    catalog = WalCatalog(repositories, seg_size)
    tl = choose_timeline(catalog, record, target["timeline"])
    chain = wal_chain(catalog, record, tl, use_partial)
    warnings = []
    bound = None
    if target["type"] == "time" and commit_times is not None:
        bound = wal_time_bound(repositories, catalog, chain, commit_times, warnings)
    problem = _reach_problem(target, record, chain, bound)
    if problem:
        raise RestoreError(problem)
    archived = archived_objects(repositories, record, catalog, chain)
    if archived:
        raise RestoreError(
            "%d object(s) this restore needs are in an archive storage class and cannot be read now: %s%s. Nothing "
            "was changed. Bring them back first (aws s3api restore-object --bucket <bucket> --key <key> "
            "--restore-request Days=2; hours for GLACIER, up to 12 h for DEEP_ARCHIVE) and run again once the "
            "restores completed, or restore from another region's repository or an older backup (backup_id)."
            % (len(archived), "; ".join(archived[:10]), " and %d more" % (len(archived) - 10)
               if len(archived) > 10 else ""))
    if target["type"] in ("xid", "name"):
        warnings.append("where %s %s lies is known only to the WAL: PostgreSQL stops the restore if it does not "
                        "find it; pass backup_id to start from an older backup" % (target["type"], target["value"]))
    if chain["partial"]:
        warnings.append("the last WAL is the streamed partial segment %s" % chain["partial"])
    return {
        "target": {k: v for k, v in target.items() if k not in ("moment", "lsn_int")},
        "backup": {k: record.get(k) for k in PLAN_BACKUP_FIELDS},
        "timeline": tl,
        "timeline_path": [[t, _wal.int_to_lsn(b), _wal.int_to_lsn(e) if e is not None else None]
                          for t, b, e in (timeline_path(catalog.histories, tl) if tl != int(record["timeline"])
                                          else [(tl, 0, None)])],
        "wal": {"first": chain["first"], "last": chain["last"], "segments": chain["segments"],
                "bytes_to_replay": chain["bytes"], "partial": chain["partial"],
                "archive_ends": _backup.iso(bound or chain["last_time"]),
                "archive_ends_from": "the last commit in the WAL" if bound else "upload time",
                "reach_lsn": _wal.int_to_lsn(chain["reach_lsn_int"])},
        "warnings": warnings,
        # PostgreSQL probes for this one when recovery starts and ends (is there a newer timeline?)
        "absent_history": "%08X.history" % (max(catalog.timelines() + [tl]) + 1),
    }


def tablespace_archives(record):
    """The archives of a backup that are neither the main data directory, its WAL nor the manifest."""
    return [f["name"] for f in record.get("files", [])
            if not (f["name"].startswith(("base.tar", "pg_wal.tar")) or f["name"] == "backup_manifest")]


ARCHIVE_CLASSES = frozenset(("GLACIER", "DEEP_ARCHIVE"))
MAX_ARCHIVE_HEADS = 2000


def _unreadable(repo, key, info=None):
    """Why an object in an archive class cannot be read now (None when it can: a restore of it completed)."""
    try:
        head = repo.head(key)
    except repo_mod.RepositoryError:
        head = None
    head = head or info or {}
    storage_class = head.get("storage_class") or "STANDARD"
    restore = head.get("restore") or ""
    if storage_class not in ARCHIVE_CLASSES or 'ongoing-request="false"' in restore:
        return None
    state = ("a restore is in progress" if 'ongoing-request="true"' in restore
             else "no restore requested" if head else "its restore state unknown")
    return "%s (%s, %s)" % (object_name(repo, key), storage_class, state)


def object_name(repo, key):
    """``s3://bucket/prefix/key`` for an S3 object (what ``aws s3api restore-object`` takes), else the repository
    and the key."""
    if getattr(repo, "bucket", None):
        return "s3://%s/%s" % (repo.bucket, repo._key(key))
    return "%s %s" % (repo.describe(), key)


def archived_objects(repositories, record, catalog, chain):
    """Objects of the plan in an archive storage class with no completed restore: the backup's own objects, and
    WAL segments whose every copy is archived. Listing shows the class for free; HEAD tells a restored copy."""
    found = []
    repo = _repository_of(repositories, record)
    heads = 0
    for item in record.get("files", []):
        key = "backup/%s/%s" % (record["id"], item["name"])
        info = None
        try:
            info = repo.head(key)
        except repo_mod.RepositoryError:
            pass
        if info and (info.get("storage_class") or "STANDARD") in ARCHIVE_CLASSES:
            why = _unreadable(repo, key, info)
            if why:
                found.append(why)
    unchecked = 0
    for seg in chain["keys"]:
        # the copies the restore_command can use: every wal/ copy; a stream/ copy only in a repository whose wal/
        # copy is not archived (the fetch asks a repository for wal/ first and passes over it when that fails)
        copies = catalog.copies.get(seg, [])
        archived_wal = set(c[0].name for c in copies if c[1]["area"] == "wal"
                           and c[1]["storage_class"] in ARCHIVE_CLASSES)
        usable = [c for c in copies if c[1]["area"] == "wal" or c[0].name not in archived_wal]
        if not copies or any(c[1]["storage_class"] not in ARCHIVE_CLASSES for c in usable):
            continue
        readable = False
        for copy_repo, info in usable:
            if heads >= MAX_ARCHIVE_HEADS:
                unchecked += 1
                readable = None
                break
            heads += 1
            if _unreadable(copy_repo, info["key"], info) is None:
                readable = True
                break
        if readable is False:
            first_repo, info = usable[0] if usable else copies[0]
            found.append("%s (%s)" % (object_name(first_repo, info["key"]), info["storage_class"]))
    if found and unchecked:
        found.append("%d more WAL segment(s) in an archive class, not checked" % unchecked)
    return found


WAL_TIME_LOOKBACK = 64  # segments (1 GiB) read back from the end of the chain to find its last transaction


def wal_time_bound(repositories, catalog, chain, commit_times, warnings):
    """The time of the last commit or abort in the WAL the chain reaches, read from the WAL itself (the streamed
    partial first, then the complete segments from the last one back); None (with a warning) when none of the
    last segments holds a transaction, or they cannot be read."""
    by_name = {r.name: r for r in repositories}
    seg_size = catalog.segment_size
    candidates = []
    if chain.get("partial_key"):
        candidates.append(("partial", chain["partial_key"]))
    candidates += [("segment", k) for k in reversed(chain["keys"][-WAL_TIME_LOOKBACK:])]
    for kind, (tl, segno) in candidates:
        name = _wal.segment_name(tl, segno, seg_size)
        try:
            if kind == "partial":
                raw = _walarchive.fetch_partial(_PlanConfig(repositories, seg_size), name, [])
            else:
                info = catalog.segments[(tl, segno)]
                raw = _walarchive.unpack(by_name[info["repository"]].get_bytes(info["key"]), name)
            times = commit_times(raw, name) if raw is not None else []
        except (RestoreError, repo_mod.RepositoryError, _walarchive.WalArchiveError, KeyError) as exc:
            warnings.append("could not read %s to find the WAL's last transaction (%s): the time bound comes from "
                            "upload times, which archiving that ran late makes too late" % (name, exc))
            return None
        if times:
            return max(times)
    if len(chain["keys"]) <= WAL_TIME_LOOKBACK:
        return NO_TRANSACTION  # read it all: no transaction after the backup, so no time target can be reached
    warnings.append("no transaction in the last %d WAL segments: the time bound comes from upload times"
                    % len(candidates))
    return None


NO_TRANSACTION = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


class _PlanConfig:
    """What ``_walarchive.fetch_partial`` needs of a configuration."""

    concurrency = 4

    def __init__(self, repositories, segment_size):
        self._repositories = repositories
        self.segment_size = segment_size

    def repositories(self):
        return self._repositories


COMMIT_RE = re.compile(r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (?:[0-9]+: )?"
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


# how pg_waldump reports reaching the end of the valid WAL in a segment (normal for the last one, and for a zero-padded
# streamed partial); anything else on stderr with a failure means it could not read the segment at all
WALDUMP_END_OF_WAL = ("invalid record length", "could not find a valid record", "invalid magic number 0000",
                      "incorrect prev-link", "invalid record offset", "contrecord is requested",
                      "there is no contrecord flag")


def pg_waldump_commit_times(pg_bin):
    """``commit_times(raw, name)`` for ``plan``: the commit and abort times in one WAL segment, by pg_waldump
    (TZ=UTC, so it prints them in UTC). Reaching the end of the valid WAL is normal for the last segment."""

    def commit_times(raw, name):
        tmp = tempfile.mkdtemp(prefix="immersiverse-dr-waldump-")
        try:
            path = os.path.join(tmp, name)
            with open(path, "wb") as fh:
                fh.write(raw)
            try:
                proc = subprocess.run([os.path.join(pg_bin, "pg_waldump"), "--rmgr=Transaction", path],
                                      capture_output=True, text=True, timeout=120,
                                      env=dict(os.environ, TZ="UTC", LC_ALL="C"), check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RestoreError("pg_waldump could not read %s: %s" % (name, exc)) from None
            if proc.returncode != 0 and not any(word in proc.stderr for word in WALDUMP_END_OF_WAL):
                raise RestoreError("pg_waldump could not read %s: %s" % (name, proc.stderr.strip()[-300:]))
            found = []
            for match in COMMIT_RE.finditer(proc.stdout):
                found.append(datetime.datetime.strptime(match.group(1) + ("" if "." in match.group(1) else ".0"),
                                                        "%Y-%m-%d %H:%M:%S.%f")
                             .replace(tzinfo=datetime.timezone.utc))
            return found
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return commit_times


def _reach_problem(target, record, chain, bound=None):
    gap = ""
    if chain["missing"]:
        gap = (" WAL segment %s is missing from every repository while %d later segments exist: recovery "
               "cannot pass it" % (chain["missing"], chain["segments_after_gap"]))
    kind = target["type"]
    if kind == "immediate":
        return None
    if kind == "time":
        if bound is not None:
            # PostgreSQL stops at the first transaction after the target (inclusive) or at or after it (exclusive);
            # with none in the WAL it ends recovery early and refuses to open
            if bound is NO_TRANSACTION:
                return ("target time %s cannot be reached from backup %s: the WAL after it holds no transaction, "
                        "and PostgreSQL stops at a time target only at a commit after it.%s Nothing was changed. "
                        "Restore to the end of the archive instead (a full restore, no target)."
                        % (target["value"], record["id"], gap))
            if bound < target["moment"] or (target["inclusive"] and bound == target["moment"]):
                return ("target time %s is after the last transaction in the WAL these repositories hold for backup "
                        "%s (the last commit, in %s or before, is at %s by the WAL itself).%s Nothing was changed. "
                        "Pick an earlier target; a restore to the end of the archive (a full restore, no target) "
                        "ends at that last transaction; or, if the primary still runs, wait for its next segment to "
                        "be archived."
                        % (target["value"], record["id"], chain["partial"] or chain["last"], _backup.iso(bound), gap))
            return None
        if chain["last_time"] < target["moment"]:
            return ("target time %s is after the end of the WAL these repositories hold for backup %s (last "
                    "segment %s, stored %s).%s Nothing was changed. Pick an earlier target, or wait for the next "
                    "segment to be archived (SELECT pg_switch_wal() on the primary)."
                    % (target["value"], record["id"], chain["last"], _backup.iso(chain["last_time"]), gap))
        return None
    if kind == "lsn":
        seg = _wal.segment_number(target["lsn_int"], record.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE)
        covered = chain["last_segno"] + (1 if chain["partial"] else 0)
        if seg > covered:
            return ("target LSN %s is after the end of the WAL these repositories hold for backup %s (last "
                    "segment %s).%s Nothing was changed." % (target["value"], record["id"], chain["last"], gap))
        return None
    if gap:  # end, xid, name: a gap would end recovery early without anyone asking for that point
        return ("recovery to %s would stop early:%s. Nothing was changed. Restore the segment (from another "
                "region's repository), or ask for that point explicitly with a target before it (target_lsn %s)."
                % ("the end of the archive" if kind == "end" else "%s %s" % (kind, target["value"]), gap,
                   _wal.int_to_lsn(chain["reach_lsn_int"])))
    return None


# -- restoring the files ---------------------------------------------------------------------------------------------
class _FileSink:
    """Receives a tar stream's members from a TarWalker and writes them under ``root``, refusing escapes."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.fd = None
        self.files = 0

    def _path(self, name):
        if name.startswith("/") or ".." in name.split("/"):
            raise RestoreError("archive member %r would land outside the data directory" % name)
        path = os.path.join(self.root, name)
        parent = os.path.realpath(os.path.dirname(path))
        if parent != self.root and not parent.startswith(self.root + os.sep):
            raise RestoreError("archive member %r would land outside the data directory" % name)
        return path

    def start(self, name, typeflag):
        path = self._path(name.rstrip("/"))
        if typeflag == b"5":
            os.makedirs(path, mode=0o700, exist_ok=True)
        elif typeflag in (b"0", b"\0", b"7"):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.files += 1
        elif typeflag in (b"1", b"2"):
            raise RestoreError("archive member %r is a link: backups with tablespaces are not restorable by this "
                               "version (restore them with pg_basebackup's tar files and tar -x)" % name)

    def write(self, view):
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def end(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _stage(func, inq, outq, errors):
    """One stage of the restore pipeline: func(item) -> item for the next stage (None ends the stream)."""
    item = None
    try:
        for _item in range(1 << 40):
            item = inq.get()
            if item is None or errors:
                break
            result = func(item)
            if outq is not None and result:
                outq.put(result)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        errors.append(exc)
    finally:
        if outq is not None:
            outq.put(None)
        for _rest in range(1 << 40):  # drain so an upstream producer never blocks forever
            if item is None:
                break
            item = inq.get()


def _restore_archive(repository, key, name, expected_sha, dest, walker, progress=None):
    """Fetch, hash, decompress, walk and write one tar archive with three threads (reading, decompressing and
    writing each release the GIL in their C parts, so the stages overlap on two cores)."""
    os.makedirs(dest, mode=0o700, exist_ok=True)
    sink = _FileSink(dest)
    walker.sink = sink
    sha = hashlib.sha256()
    decomp = _backup.decompressor_for(name)
    errors = []
    q_raw, q_plain = queue.Queue(maxsize=8), queue.Queue(maxsize=8)

    bounded = hasattr(decomp, "needs_input")  # lz4: output in pieces of at most CHUNK

    def decompress(data):
        # A 1 MiB lz4 chunk of a database expands to up to 16 MiB (empty pages); unbounded, each piece is a fresh
        # mmap'd allocation (page faults) that the CRC and the write then re-read from memory. Pieces of CHUNK are
        # reused and stay in the CPU caches: for 1.9 GB, system time 2.6 -> 1.3 s, wall 7.5 -> 5.2 s (bench/restore.py)
        if not bounded:
            return [decomp.decompress(data)]
        pieces = [decomp.decompress(data, max_length=CHUNK)]
        for _piece in range(1 << 20):  # bounded: lz4 expands at most ~255x
            if decomp.needs_input or decomp.eof:
                break
            pieces.append(decomp.decompress(b"", max_length=CHUNK))
        return pieces

    def walk(pieces):
        for data in pieces:
            walker.feed(data)
            if progress:
                progress(len(data))

    workers = [threading.Thread(target=_stage, args=(decompress, q_raw, q_plain, errors), daemon=True),
               threading.Thread(target=_stage, args=(walk, q_plain, None, errors), daemon=True)]
    for w in workers:
        w.start()
    stream = repository.open(key)
    try:
        for _chunk in range(1 << 40):
            if errors:
                break
            data = stream.read(CHUNK)
            if not data:
                break
            sha.update(data)
            q_raw.put(data)
    except repo_mod.RepositoryError as exc:
        errors.append(exc)
    finally:
        q_raw.put(None)
        for w in workers:
            w.join()
        sink.end()
        close = getattr(stream, "close", None)
        if close:
            close()
    if errors:
        exc = errors[0]
        if isinstance(exc, (RestoreError, repo_mod.RepositoryError)) or not isinstance(exc, Exception):
            raise exc
        raise RestoreError("%s: %s" % (name, exc)) from exc
    if sha.hexdigest() != expected_sha:
        raise RestoreError("%s of backup %s does not match its stored sha256: the copy in %s is damaged. Nothing "
                           "was put in place; restore from another region's copy (repository) or an older backup"
                           % (name, key.split("/")[-2], repository.describe()))
    return sink.files


def restore_files(repository, record, dest, progress=None):
    """Restore a backup's files into the empty directory ``dest``, checking the stored sha256 of every object
    and the manifest's checksum of every file. Returns a summary."""
    names = {f["name"]: f for f in record["files"]}
    extra = [n for n in names if not (n.startswith(("base.tar", "pg_wal.tar")) or n == "backup_manifest")]
    if extra:
        raise RestoreError("backup %s has tablespace archives (%s): not restorable by this version"
                           % (record["id"], ", ".join(extra)))
    prefix = "backup/%s/" % record["id"]
    manifest_raw = repository.get_bytes(prefix + "backup_manifest")
    if hashlib.sha256(manifest_raw).hexdigest() != names["backup_manifest"]["sha256"]:
        raise RestoreError("backup_manifest of %s does not match its stored sha256: damaged" % record["id"])
    manifest = json.loads(manifest_raw)
    algorithm = record.get("manifest_checksum_algorithm") or "CRC32C"
    base_name = next(n for n in names if n.startswith("base.tar"))
    walker = _backup.TarWalker(algorithm, keep=())
    t0 = time.monotonic()
    files = _restore_archive(repository, prefix + base_name, base_name, names[base_name]["sha256"], dest, walker,
                             progress)
    wal_names = []
    wal_name = next((n for n in names if n.startswith("pg_wal.tar")), None)
    if wal_name:
        wal_walker = _backup.TarWalker("NONE", keep=())
        files += _restore_archive(repository, prefix + wal_name, wal_name, names[wal_name]["sha256"],
                                  os.path.join(dest, "pg_wal"), wal_walker, progress)
        wal_names = list(wal_walker.files)
    problems = _backup.check_manifest(manifest, walker.files)
    problems += _backup.check_wal(manifest, wal_names, record.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE)
    if problems:
        raise RestoreError("the restored files do not match backup %s's manifest: %s"
                           % (record["id"], "; ".join(problems[:10])))
    with open(os.path.join(dest, "backup_manifest"), "wb") as fh:
        fh.write(manifest_raw)
    for sub in ("pg_wal/archive_status",):
        os.makedirs(os.path.join(dest, sub), mode=0o700, exist_ok=True)
    os.chmod(dest, 0o700)
    return {"files": files, "bytes": sum(f.get("Size", 0) for f in manifest.get("Files", [])),
            "seconds": round(time.monotonic() - t0, 3)}


# -- the data directory's state --------------------------------------------------------------------------------------
def state_path(data_dir):
    return data_dir.rstrip("/") + STATE_SUFFIX


def read_state(data_dir):
    try:
        with open(state_path(data_dir)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_state(data_dir, doc):
    path = state_path(data_dir)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")
    return doc


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def postmaster_running(data_dir):
    """The pid of a live postmaster using data_dir, else None (pg_recovery's check, one rule for both)."""
    try:
        return _recovery.running_pid(data_dir)
    except _recovery.RecoveryError as exc:
        raise RestoreError(str(exc)) from None


def _nonempty(path):
    try:
        return bool(os.listdir(path))
    except FileNotFoundError:
        return False


def restore_request(plan_doc):
    """What identifies one restore: the backup and the target (a re-run of the same request continues it)."""
    return {"backup_id": plan_doc["backup"]["id"], "target": plan_doc["target"], "timeline": plan_doc["timeline"]}


SPACE_MARGIN = 64 * 1024 * 1024
RECOVERY_WAL_ALLOWANCE = 1024 * 1024 * 1024  # WAL restored into pg_wal during recovery, about max_wal_size
MARKER = "immersiverse-dr-restored.json"  # in the restored data directory: which request made it
# phases of a request whose complete copy exists (staged beside, or already in place): no second copy is needed
STAGED_PHASES = ("staged", "moving-aside", "placing")
DONE_PHASES = ("restored", "paused", "recovered")


def _mount_points():
    try:
        with open("/proc/self/mountinfo") as fh:
            return set(line.split()[4].replace("\\040", " ") for line in fh if len(line.split()) > 4)
    except OSError:
        return set()


def check_data_dir(plan_doc, data_dir):
    """What the host would refuse only later, refused before anything stops: a data directory that is a mount
    point or a symbolic link (the new one is built beside it and renamed into place), too little free space beside
    it for a second copy (the current one is kept until the new one is complete)."""
    data_dir = os.path.abspath(data_dir.rstrip("/"))
    if os.path.islink(data_dir):
        raise RestoreError("%s is a symbolic link (to %s): the restore builds the new data directory beside the path "
                           "it is given and renames it into place, which would replace the link, not the directory "
                           "on the data volume. Set restore_data_dir to %s (the link keeps pointing there). Nothing "
                           "was changed." % (data_dir, os.path.realpath(data_dir), os.path.realpath(data_dir)))
    if os.path.ismount(data_dir) or data_dir in _mount_points():
        raise RestoreError("%s is a mount point: the restore builds the new data directory beside it (%s.restoring) "
                           "and renames it into place, which a mount point cannot take part in. Mount the volume "
                           "one level up (for example at /var/lib/postgresql), or put the data directory in a "
                           "directory inside the mount and point both PostgreSQL's data_directory and "
                           "restore_data_dir at it. Nothing was changed." % (data_dir, data_dir))
    parent = os.path.dirname(data_dir)
    for _step in range(64):  # bounded: the path's depth
        if os.path.isdir(parent) or parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    backup = plan_doc["backup"]
    need = int(backup.get("database_bytes") or 0)
    if not need:
        return None
    try:  # the backup's own WAL (pg_wal.tar), whole segments
        seg = _wal.DEFAULT_SEGMENT_SIZE
        wal = (_wal.lsn_to_int(backup["stop_lsn"]) // seg - _wal.lsn_to_int(backup["start_lsn"]) // seg + 1) * seg
    except (KeyError, TypeError, _wal.WalError):
        wal = 0
    need = int(need * 1.05) + wal + RECOVERY_WAL_ALLOWANCE + SPACE_MARGIN
    free = shutil.disk_usage(parent).free + _tree_bytes(data_dir + ".restoring")
    if free < need:
        raise RestoreError("%s has %.1f GiB free; the restore needs about %.1f GiB beside the current data directory "
                           "(kept until the new one is complete: the backup, its WAL and about 1 GiB of WAL "
                           "restored during recovery). Free space there (older %s.replaced-* directories are kept "
                           "restore_keep_replaced_days), or restore onto a host with room. Nothing was changed."
                           % (parent, free / 2 ** 30, need / 2 ** 30, os.path.basename(data_dir)))
    return {"free_bytes": free, "needed_bytes": need}


def _tree_bytes(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for fname in files:
            try:
                total += os.lstat(os.path.join(dirpath, fname)).st_size
            except OSError:
                pass
    return total


def _fsync_tree(root):
    """fsync every file and directory under root (in parallel, so the device sees many writes at once). Only what
    the restore wrote: a machine-wide sync would also wait for every other process's dirty pages."""
    paths = []
    for dirpath, _dirs, files in os.walk(root):
        paths.extend(os.path.join(dirpath, name) for name in files)
        paths.append(dirpath)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_fsync_dir, paths))  # opens read-only and fsyncs: a file or a directory alike


def _marker_matches(path, request):
    try:
        with open(os.path.join(path, MARKER)) as fh:
            return json.load(fh).get("request") == request
    except (OSError, ValueError, AttributeError):
        return False


def lock_path(data_dir):
    return data_dir.rstrip("/") + ".immersiverse-dr-restore.lock"


class _Lock:
    """An exclusive lock beside the data directory for as long as a restore works on it: a second run (an async
    job that outlived its controller, another operator) is refused instead of racing the first one's renames."""

    def __init__(self, data_dir):
        self.path = lock_path(data_dir)
        self.fd = None

    def __enter__(self):
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 200).decode("utf-8", "replace").strip()
            os.close(self.fd)
            raise RestoreError("another restore is working on this data directory (%s): wait for it, or stop it "
                               "first; nothing was changed" % (holder or self.path)) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d since %s" % (os.getpid(), _backup.iso(_backup.utcnow()))).encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def prepare_data_dir(repositories, plan_doc, data_dir, now=None, check_mode=False, progress=None):
    """Restore the planned backup into ``<data_dir>.restoring`` beside the current data directory and check it;
    only then move the current one aside and rename the new one into place. Whatever fails while the files are
    restored (a damaged object, S3 going away) leaves ``data_dir`` exactly as it was. Idempotent: the same request
    already restored (or being recovered) is left alone; an interrupted one continues or starts over. One restore
    at a time per data directory (a lock beside it).
    Returns {'changed', 'moved_aside', 'restored', 'state'}."""
    data_dir = os.path.abspath(data_dir.rstrip("/"))
    if check_mode:
        return _prepare(repositories, plan_doc, data_dir, now, True, progress)
    with _Lock(data_dir):
        return _prepare(repositories, plan_doc, data_dir, now, False, progress)


def _prepare(repositories, plan_doc, data_dir, now, check_mode, progress):
    request = restore_request(plan_doc)
    state = read_state(data_dir)
    pid = None if check_mode else postmaster_running(data_dir)  # check mode: the caller stops it before the run
    if pid:
        if state and state.get("request") == request:
            return {"changed": False, "moved_aside": state.get("moved_aside"), "restored": False, "state": state}
        raise RestoreError("PostgreSQL is running on %s (pid %s): stop it first (the restore role does), a "
                           "restore never replaces a live data directory" % (data_dir, pid))
    same = bool(state and state.get("request") == request)
    phase = state.get("phase") if same else None
    if phase in DONE_PHASES and _nonempty(data_dir):
        return {"changed": False, "moved_aside": state.get("moved_aside"), "restored": False, "state": state}
    staging = data_dir + ".restoring"
    if state and not same and state.get("phase") in ("moving-aside", "placing") and not _nonempty(data_dir):
        raise RestoreError(
            "an earlier restore (backup %s) was interrupted between its two renames: %s is missing, its complete "
            "new copy is %s and the data directory it replaced is %s. Nothing was changed. Run that same restore "
            "again to finish it (restore_backup_id=%s and the same target), or put %s back as %s by hand."
            % (state["request"].get("backup_id"), data_dir, staging if _nonempty(staging) else "gone",
               state.get("moved_aside") or "none", state["request"].get("backup_id"),
               state.get("moved_aside") or "the old directory", data_dir))
    now = now or _backup.utcnow()
    aside = data_dir + ".replaced-" + now.strftime("%Y%m%dT%H%M%SZ")
    staged = phase in STAGED_PHASES and _marker_matches(staging, request)
    placed = phase == "placing" and not os.path.exists(staging) and _marker_matches(data_dir, request)
    moved = state.get("moved_aside") if same else None
    if check_mode:
        if placed:
            return {"changed": True, "moved_aside": moved, "restored": False, "state": state}
        if not staged:
            check_data_dir(plan_doc, data_dir)
        return {"changed": True, "moved_aside": aside if _nonempty(data_dir) else moved, "restored": not staged,
                "state": state}
    if placed:
        # interrupted between the rename into place and the state update: the directory is ours, complete
        state["phase"] = "restored"
        return {"changed": True, "moved_aside": moved, "restored": True, "state": write_state(data_dir, state)}
    started = _backup.iso(now)
    if staged:
        summary = state.get("restored")
    else:
        check_data_dir(plan_doc, data_dir)
        if os.path.exists(staging):
            shutil.rmtree(staging)  # an interrupted restore of ours: start it over
        write_state(data_dir, {"request": request, "phase": "restoring", "moved_aside": moved, "started": started})
        repo = _repository_of(repositories, plan_doc["backup"])
        os.makedirs(staging, mode=0o700)
        try:
            record = json.loads(repo.get_bytes("backup/%s/%s" % (plan_doc["backup"]["id"], _backup.RECORD)))
            summary = restore_files(repo, record, staging, progress)
            with open(os.path.join(staging, MARKER), "w") as fh:
                json.dump({"request": request, "restored": summary}, fh)
            _fsync_tree(staging)  # every restored file on disk before "staged" lets a re-run trust the copy
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            write_state(data_dir, {"request": request, "phase": "failed", "moved_aside": moved, "started": started,
                                   "reason": str(exc)})
            if isinstance(exc, Exception):
                kept = ("%s was not touched" % data_dir) if _nonempty(data_dir) else ("%s stays empty" % data_dir)
                raise RestoreError("%s. %s; the half-restored copy was removed. Run again once the cause is "
                                   "fixed (it starts over), or start PostgreSQL on the old data directory if it "
                                   "should serve meanwhile" % (_message(exc), kept)) from exc
            raise
        write_state(data_dir, {"request": request, "phase": "staged", "moved_aside": moved, "started": started,
                               "restored": summary})
    pid = postmaster_running(data_dir)  # started by someone while the files were restored?
    if pid:
        raise RestoreError("PostgreSQL was started on %s (pid %s) while the backup was restored beside it: it was "
                           "left alone. Stop it and run again to put the restored copy (%s) in place"
                           % (data_dir, pid, staging))
    if _nonempty(data_dir):
        if os.path.exists(aside):
            raise RestoreError("%s already exists: wait a second and run again" % aside)
        write_state(data_dir, {"request": request, "phase": "moving-aside", "moved_aside": aside, "started": started,
                               "restored": summary})
        os.rename(data_dir, aside)
        moved = aside
    elif os.path.isdir(data_dir):
        os.rmdir(data_dir)  # empty: nothing to keep
    write_state(data_dir, {"request": request, "phase": "placing", "moved_aside": moved, "started": started,
                           "restored": summary})
    os.rename(staging, data_dir)
    _fsync_dir(os.path.dirname(data_dir))
    doc = write_state(data_dir, {"request": request, "phase": "restored", "moved_aside": moved,
                                 "started": started, "restored": summary})
    return {"changed": True, "moved_aside": moved, "restored": True, "state": doc, "summary": summary}


def _message(exc):
    if isinstance(exc, (RestoreError, repo_mod.RepositoryError)):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


def _repository_of(repositories, backup):
    for repo in repositories:
        if repo.name == backup.get("repository"):
            return repo
    return repositories[0]


def set_phase(data_dir, phase, **extra):
    state = read_state(data_dir) or {}
    state.update(extra)
    state["phase"] = phase
    return write_state(data_dir, state)


def prune_moved_aside(data_dir, keep_days, now=None, protect=(), check_mode=False):
    """Delete ``<data_dir>.replaced-*`` directories older than keep_days, never one in ``protect``."""
    now = now or _backup.utcnow()
    parent, base = os.path.split(os.path.abspath(data_dir.rstrip("/")))
    removed = []
    for entry in sorted(os.listdir(parent)):
        match = re.match(re.escape(base) + r"\.replaced-(\d{8}T\d{6}Z)$", entry)
        if not match:
            continue
        path = os.path.join(parent, entry)
        when = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        if path in protect or now - when < datetime.timedelta(days=keep_days):
            continue
        if not check_mode:
            shutil.rmtree(path)
        removed.append(path)
    return removed


# -- watching recovery -------------------------------------------------------------------------------------------------
LOG_PATTERNS = {
    "stopping": re.compile(r"recovery stopping .*"),
    "redo_done": re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)"),
    "last_tx": re.compile(r"last completed transaction was at log time (.+)"),
    "paused": re.compile(r"pausing at the end of recovery|recovery has paused"),
    "fatal": re.compile(r"(?:FATAL|PANIC):\s+(.*)"),
    "timeline": re.compile(r"selected new timeline ID: (\d+)"),
}


def scan_log(text):
    found = {}
    for line in text.splitlines():
        for key, pattern in LOG_PATTERNS.items():
            match = pattern.search(line)
            if match:
                if key == "fatal":
                    found.setdefault("fatal", []).append(match.group(1).strip())
                else:
                    found[key] = match.group(1) if match.groups() else match.group(0)
    return found


def log_since(path, offset):
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# what PostgreSQL answers while it is not ready for connections yet: keep waiting
STILL_STARTING = ("starting up", "not accepting connections", "not yet accepting connections",
                  "consistent recovery state", "shutting down", "in recovery mode")
CONNECT_GRACE = 20.0


def pg_isready(pg_bin, host, port):
    """``ping()`` for wait_for_recovery, by pg_isready (PQping: the server's answer, whatever its language):
    "accepting", "rejecting" (starting up, not consistent yet), "no-response", or None when it cannot tell."""

    def ping():
        argv = [os.path.join(pg_bin, "pg_isready"), "-q", "-t", "3", "-p", str(port)] + (["-h", host] if host else [])
        try:
            rc = subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode
        except (OSError, subprocess.TimeoutExpired):
            return None
        return {0: "accepting", 1: "rejecting", 2: "no-response"}.get(rc)

    return ping


def wait_for_recovery(connect, data_dir, log_file, log_offset=0, timeout=3600, poll=1.0, progress=None, ping=None):
    """Poll a server in recovery until it pauses at its target or finishes recovery (promoted); RestoreError when
    it stops instead (PostgreSQL refuses a target it cannot reach) or the timeout passes. ``connect`` returns a
    DB-API connection or raises. ``ping`` (pg_isready) tells a server still starting from one that refuses this
    connection (wrong socket or port, authentication), which is reported after CONNECT_GRACE seconds instead of at
    the timeout. Returns what was reached."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    last = {}
    seen_running = False
    refused_since = None
    for _poll in range(int(timeout / max(poll, 0.05)) + 2):
        if time.monotonic() > deadline:
            break
        try:
            conn = connect()
        except Exception as exc:  # noqa: BLE001 - not up yet, or stopped: the pid file tells
            text = str(exc).strip()
            if "psycopg2 is required" in text:
                raise RestoreError(text) from None
            running = postmaster_running(data_dir) is not None
            if not running and (seen_running or time.monotonic() - t0 > 15):
                found = scan_log(log_since(log_file, log_offset))
                reason = "; ".join(found.get("fatal", [])[-3:]) or text
                aside = (read_state(data_dir) or {}).get("moved_aside")
                raise RestoreError("PostgreSQL stopped during recovery: %s. It did not open at an earlier point; %s"
                                   % (reason, "the data directory it replaced is untouched in %s" % aside if aside
                                      else "nothing else was changed")) from None
            seen_running = seen_running or running
            answer = ping() if (running and ping) else None
            starting = answer == "rejecting" if answer else any(word in text for word in STILL_STARTING)
            if running and not starting:
                # up, but this connection is refused (wrong socket or port, authentication): say so now
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > CONNECT_GRACE:
                    raise RestoreError(
                        "PostgreSQL runs and recovers, but the restore cannot connect to it to watch: %s. Check the "
                        "socket directory and port (restore_socket_dir, restore_port; login_unix_socket, "
                        "login_port) and that the user may connect locally; recovery goes on meanwhile (its log: "
                        "%s)" % (text, log_file or "the server log")) from None
            else:
                refused_since = None
            time.sleep(poll)
            continue
        seen_running = True
        refused_since = None
        try:
            cur = conn.cursor()
            cur.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                        "pg_last_xact_replay_timestamp()::text, "
                        "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END")
            in_recovery, replay_lsn, replay_time, pause = cur.fetchone()
            last = {"in_recovery": in_recovery, "replay_lsn": replay_lsn, "replay_time": replay_time,
                    "pause_state": pause}
            if not in_recovery:
                cur.execute("SELECT pg_current_wal_lsn()::text, "
                            "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
                current_lsn, timeline = cur.fetchone()
                found = scan_log(log_since(log_file, log_offset))
                return {"outcome": "promoted", "timeline": timeline, "current_lsn": current_lsn,
                        "recovered_to_lsn": found.get("redo_done"), "recovered_to_time": found.get("last_tx"),
                        "stopped": found.get("stopping"), "seconds": round(time.monotonic() - t0, 3)}
            if pause == "paused":
                found = scan_log(log_since(log_file, log_offset))
                cur.execute("SELECT timeline_id FROM pg_control_checkpoint()")
                return {"outcome": "paused", "timeline": cur.fetchone()[0], "recovered_to_lsn": replay_lsn,
                        "recovered_to_time": replay_time, "stopped": found.get("stopping"),
                        "seconds": round(time.monotonic() - t0, 3)}
        except Exception:  # noqa: BLE001 - the server is changing state; try again
            pass
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        if progress:
            progress(last)
        time.sleep(poll)
    raise RestoreError("recovery did not reach its target within %d s (last seen: %s); PostgreSQL is still "
                       "replaying: look at its log, or raise the timeout" % (timeout, last))


def pg_controldata(pg_bin, data_dir):
    """The fields of pg_controldata as a dict ({} when the directory holds no cluster)."""
    try:
        out = subprocess.run([os.path.join(pg_bin, "pg_controldata"), "-D", data_dir], capture_output=True,
                             text=True, timeout=60, check=False, env=dict(os.environ, LC_ALL="C"))
    except OSError:
        return {}
    if out.returncode != 0:
        return {}
    fields = {}
    for line in out.stdout.splitlines():
        key, _sep, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields
