# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data directory a restore writes: checks (space, mount, a running server), the staging directory placed
with the old one moved aside (never deleted), the restore's own state file and lock, and the pruning of old
moved-aside directories.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery as pg_recovery
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery_conf as pg_recovery_conf
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import files as restore_files
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

STATE_SUFFIX = ".immersiverse-dr-restore.json"


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
        return pg_recovery.running_pid(data_dir)
    except pg_recovery_conf.RecoveryError as exc:
        raise restore_target.RestoreError(str(exc)) from None


def _nonempty(path):
    try:
        return bool(os.listdir(path))
    except FileNotFoundError:
        return False


def restore_request(plan_doc):
    """What identifies one restore: the backup and the target (a re-run of the same request continues it)."""
    return {"backup_id": plan_doc["backup"]["id"], "target": plan_doc["target"], "timeline": plan_doc["timeline"]}


def same_request(previous_state, plan_doc):
    """Is the plan the request the data directory's last restore was? A restore that opened (``recovered``) made a
    new timeline, which a target on the ``latest`` timeline now resolves to: the same backup and target is still
    that restore, never a second one (which would throw away every write since it opened)."""
    if not previous_state or not previous_state.get("request"):
        return False
    before, now = previous_state["request"], restore_request(plan_doc)
    if before == now:
        return True
    return (previous_state.get("phase") == "recovered" and before.get("backup_id") == now["backup_id"]
            and before.get("target") == now["target"])


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
        raise restore_target.RestoreError(
            "%s is a symbolic link (to %s): the restore builds the new data directory beside the path "
            "it is given and renames it into place, which would replace the link, not the directory "
            "on the data volume. Set restore_data_dir to %s (the link keeps pointing there). Nothing "
            "was changed." % (data_dir, os.path.realpath(data_dir), os.path.realpath(data_dir)))
    if os.path.ismount(data_dir) or data_dir in _mount_points():
        raise restore_target.RestoreError(
            "%s is a mount point: the restore builds the new data directory beside it (%s.restoring) "
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
        seg = wal_naming.DEFAULT_SEGMENT_SIZE
        wal = (wal_naming.lsn_to_int(backup["stop_lsn"]) // seg - wal_naming.lsn_to_int(backup[
            "start_lsn"]) // seg + 1) * seg
    except (KeyError, TypeError, wal_naming.WalError):
        wal = 0
    need = int(need * 1.05) + wal + RECOVERY_WAL_ALLOWANCE + SPACE_MARGIN
    free = shutil.disk_usage(parent).free + _tree_bytes(data_dir + ".restoring")
    if free < need:
        raise restore_target.RestoreError(
            "%s has %.1f GiB free; the restore needs about %.1f GiB beside the current data directory "
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
            raise restore_target.RestoreError(
                "another restore is working on this data directory (%s): wait for it, or stop it "
                "first; nothing was changed" % (holder or self.path)) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d since %s" % (os.getpid(), backup_catalog.iso(backup_catalog.utcnow()))).encode())
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
        raise restore_target.RestoreError(
            "PostgreSQL is running on %s (pid %s): stop it first (the restore role does), a "
            "restore never replaces a live data directory" % (data_dir, pid))
    same = bool(state and state.get("request") == request)
    phase = state.get("phase") if same else None
    if phase in DONE_PHASES and _nonempty(data_dir):
        return {"changed": False, "moved_aside": state.get("moved_aside"), "restored": False, "state": state}
    staging = data_dir + ".restoring"
    if state and not same and state.get("phase") in ("moving-aside", "placing") and not _nonempty(data_dir):
        raise restore_target.RestoreError(
            "an earlier restore (backup %s) was interrupted between its two renames: %s is missing, its complete "
            "new copy is %s and the data directory it replaced is %s. Nothing was changed. Run that same restore "
            "again to finish it (restore_backup_id=%s and the same target), or put %s back as %s by hand."
            % (state["request"].get("backup_id"), data_dir, staging if _nonempty(staging) else "gone",
               state.get("moved_aside") or "none", state["request"].get("backup_id"),
               state.get("moved_aside") or "the old directory", data_dir))
    now = now or backup_catalog.utcnow()
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
    started = backup_catalog.iso(now)
    if staged:
        summary = state.get("restored")
    else:
        check_data_dir(plan_doc, data_dir)
        if os.path.exists(staging):
            shutil.rmtree(staging)  # an interrupted restore of ours: start it over
        write_state(data_dir, {"request": request, "phase": "restoring", "moved_aside": moved, "started": started})
        repo = restore_plan.repository_of(repositories, plan_doc["backup"])
        os.makedirs(staging, mode=0o700)
        try:
            record = json.loads(repo.get_bytes("backup/%s/%s" % (plan_doc["backup"]["id"], backup_catalog.RECORD)))
            summary = restore_files.restore_files(repo, record, staging, progress)
            with open(os.path.join(staging, MARKER), "w") as fh:
                json.dump({"request": request, "restored": summary}, fh)
            _fsync_tree(staging)  # every restored file on disk before "staged" lets a re-run trust the copy
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            write_state(data_dir, {"request": request, "phase": "failed", "moved_aside": moved, "started": started,
                                   "reason": str(exc)})
            if isinstance(exc, Exception):
                kept = ("%s was not touched" % data_dir) if _nonempty(data_dir) else ("%s stays empty" % data_dir)
                raise restore_target.RestoreError(
                    "%s. %s; the half-restored copy was removed. Run again once the cause is "
                    "fixed (it starts over), or start PostgreSQL on the old data directory if it "
                    "should serve meanwhile" % (_message(exc), kept)) from exc
            raise
        write_state(data_dir, {"request": request, "phase": "staged", "moved_aside": moved, "started": started,
                               "restored": summary})
    pid = postmaster_running(data_dir)  # started by someone while the files were restored?
    if pid:
        raise restore_target.RestoreError(
            "PostgreSQL was started on %s (pid %s) while the backup was restored beside it: it was "
            "left alone. Stop it and run again to put the restored copy (%s) in place"
            % (data_dir, pid, staging))
    if _nonempty(data_dir):
        if os.path.exists(aside):
            raise restore_target.RestoreError("%s already exists: wait a second and run again" % aside)
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
    if isinstance(exc, (restore_target.RestoreError, repo_base.RepositoryError)):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


def set_phase(data_dir, phase, **extra):
    state = read_state(data_dir) or {}
    state.update(extra)
    state["phase"] = phase
    return write_state(data_dir, state)


def prune_moved_aside(data_dir, keep_days, now=None, protect=(), check_mode=False):
    """Delete ``<data_dir>.replaced-*`` directories older than keep_days, never one in ``protect``."""
    now = now or backup_catalog.utcnow()
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
