# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore plan: the backup that serves a target, and the proof that the WAL reaches it. The restore itself is
files.py (the archives), datadir.py (the data directory) and watch.py (recovery).

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
import os
import re
import shutil
import subprocess
import tempfile

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import timeline as restore_timeline
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import fetch as wal_fetch
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects


# -- the plan --------------------------------------------------------------------------------------------------------
def all_backups(repositories):
    """Valid full backups across repositories, the first repository's copy preferred; oldest first."""
    seen = {}
    for repo in repositories:
        try:
            found = backup_catalog.list_backups(repo)
        except repo_base.RepositoryError as exc:
            raise restore_target.RestoreError("cannot list backups in %s: %s" % (repo.describe(), exc)) from None
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
    target = restore_target.normalise_target(target)
    backups = all_backups(repositories)
    if not backups:
        raise restore_target.RestoreError("no valid backup in %s: take one first (playbooks/backup.yml)"
                                          % ", ".join(r.describe() for r in repositories))
    identities = sorted(set(b["system_identifier"] for b in backups))
    if system_identifier:
        backups = [b for b in backups if b["system_identifier"] == str(system_identifier)]
        if not backups:
            raise restore_target.RestoreError(
                "no backup of cluster %s in the repositories (they hold %s): wrong region or wrong "
                "repository?" % (system_identifier, ", ".join(identities)))
    elif len(identities) > 1:
        raise restore_target.RestoreError(
            "the repositories hold backups of %d clusters (%s): say which with system_identifier"
            % (len(identities), ", ".join(identities)))
    oldest = backups[0]
    if backup_id:
        chosen = [b for b in backups if b["id"] == backup_id]
        if not chosen:
            raise restore_target.RestoreError("backup %s is not a valid backup here; valid: %s"
                                              % (backup_id, ", ".join(b["id"] for b in backups)))
        candidates = chosen
    elif target["type"] == "time":
        candidates = [b for b in backups if backup_catalog.parse_iso(b["stop_time"]) < target["moment"]]
        if not candidates:
            raise restore_target.RestoreError(
                "target time %s is before the oldest backup's end, %s: no backup can restore it. The "
                "earliest point these repositories can restore is %s"
                % (target["value"], _describe(oldest), oldest["stop_time"]))
    elif target["type"] == "lsn":
        candidates = [b for b in backups if wal_naming.lsn_to_int(b["stop_lsn"]) <= target["lsn_int"]]
        if not candidates:
            raise restore_target.RestoreError(
                "target LSN %s is before the oldest backup's end, %s: no backup can restore it"
                % (target["value"], _describe(oldest)))
    else:
        candidates = backups
    record = candidates[-1]
    if target["type"] == "time" and backup_catalog.parse_iso(record["stop_time"]) >= target["moment"]:
        raise restore_target.RestoreError("backup %s ends after the target time %s" % (record["id"], target["value"]))
    if target["type"] == "lsn" and wal_naming.lsn_to_int(record["stop_lsn"]) > target["lsn_int"]:
        raise restore_target.RestoreError("backup %s ends after the target LSN %s" % (record["id"], target["value"]))

    tablespaces = tablespace_archives(record)
    if tablespaces:
        raise restore_target.RestoreError(
            "backup %s has tablespace archives (%s): this version restores only the main data "
            "directory, so it refuses here, before anything stops. Restore a backup taken without "
            "tablespaces (backup_id), or move the tables into pg_default (ALTER TABLE ... SET "
            "TABLESPACE pg_default) and take a new backup. Nothing was changed."
            % (record["id"], ", ".join(tablespaces)))
    seg_size = record.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE
    catalog = restore_timeline.WalCatalog(repositories, seg_size)
    tl = restore_timeline.choose_timeline(catalog, record, target["timeline"])
    chain = restore_timeline.wal_chain(catalog, record, tl, use_partial)
    warnings = []
    bound = None
    if target["type"] == "time" and commit_times is not None:
        bound = wal_time_bound(repositories, catalog, chain, commit_times, warnings)
    problem = _reach_problem(target, record, chain, bound)
    if problem:
        raise restore_target.RestoreError(problem)
    archived = archived_objects(repositories, record, catalog, chain)
    if archived:
        raise restore_target.RestoreError(
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
        "timeline_path": [[t, wal_naming.int_to_lsn(b), wal_naming.int_to_lsn(e) if e is not None else None]
                          for t, b, e in (restore_timeline.timeline_path(catalog.histories,
                                                                         tl) if tl != int(record["timeline"])
                                          else [(tl, 0, None)])],
        "wal": {"first": chain["first"], "last": chain["last"], "segments": chain["segments"],
                "bytes_to_replay": chain["bytes"], "partial": chain["partial"],
                "archive_ends": backup_catalog.iso(bound or chain["last_time"]),
                "archive_ends_from": "the last commit in the WAL" if bound else "upload time",
                "reach_lsn": wal_naming.int_to_lsn(chain["reach_lsn_int"])},
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
    except repo_base.RepositoryError:
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
    repo = repository_of(repositories, record)
    heads = 0
    for item in record.get("files", []):
        key = "backup/%s/%s" % (record["id"], item["name"])
        info = None
        try:
            info = repo.head(key)
        except repo_base.RepositoryError:
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
        name = wal_naming.segment_name(tl, segno, seg_size)
        try:
            if kind == "partial":
                raw = wal_fetch.fetch_partial(_PlanConfig(repositories, seg_size), name, [])
            else:
                info = catalog.segments[(tl, segno)]
                raw = wal_objects.unpack(by_name[info["repository"]].get_bytes(info["key"]), name)
            times = commit_times(raw, name) if raw is not None else []
        except (restore_target.RestoreError, repo_base.RepositoryError, wal_objects.WalArchiveError, KeyError) as exc:
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
                raise restore_target.RestoreError("pg_waldump could not read %s: %s" % (name, exc)) from None
            if proc.returncode != 0 and not any(word in proc.stderr for word in WALDUMP_END_OF_WAL):
                raise restore_target.RestoreError("pg_waldump could not read %s: %s" % (name,
                                                                                        proc.stderr.strip()[-300:]))
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
                        % (target["value"], record["id"], chain["partial"] or chain["last"], backup_catalog.iso(bound),
                           gap))
            return None
        if chain["last_time"] < target["moment"]:
            return ("target time %s is after the end of the WAL these repositories hold for backup %s (last "
                    "segment %s, stored %s).%s Nothing was changed. Pick an earlier target, or wait for the next "
                    "segment to be archived (SELECT pg_switch_wal() on the primary)."
                    % (target["value"], record["id"], chain["last"], backup_catalog.iso(chain["last_time"]), gap))
        return None
    if kind == "lsn":
        seg = wal_naming.segment_number(target["lsn_int"],
                                        record.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE)
        covered = chain["last_segno"] + (1 if chain["partial"] else 0)
        if seg > covered:
            return ("target LSN %s is after the end of the WAL these repositories hold for backup %s (last "
                    "segment %s).%s Nothing was changed." % (target["value"], record["id"], chain["last"], gap))
        return None
    if gap:  # end, xid, name: a gap would end recovery early without anyone asking for that point
        return ("recovery to %s would stop early:%s. Nothing was changed. Restore the segment (from another "
                "region's repository), or ask for that point explicitly with a target before it (target_lsn %s)."
                % ("the end of the archive" if kind == "end" else "%s %s" % (kind, target["value"]), gap,
                   wal_naming.int_to_lsn(chain["reach_lsn_int"])))
    return None


def repository_of(repositories, backup):
    for repo in repositories:
        if repo.name == backup.get("repository"):
            return repo
    return repositories[0]
