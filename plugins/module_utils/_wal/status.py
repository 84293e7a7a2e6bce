# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the archiving owes and how it went: the owed markers per repository, ``status.json`` (last success and
error, back-off), and the append-only ``gaps.jsonl`` of segments PostgreSQL was told were archived without a copy.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects


def why_failed(repo, exc):
    """An error with the repository it came from (a RepositoryError names it already; an OSError does not)."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, repo_base.RepositoryError) else "%s: %s" % (repo.describe(), text)


def owe(config, rid, name, key, digest, error):
    """Record, durably, that repository ``rid`` lacks ``name``. False when it was recorded already."""
    directory = config.path("owed", rid)
    final = os.path.join(directory, name)
    if os.path.exists(final):
        return False
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        wal_config.fsync_dir(os.path.dirname(directory))
        wal_config.fsync_dir(config.spool)
    tmp = os.path.join(directory, ".%s.%d-%d.tmp" % (name, os.getpid(), threading.get_ident()))
    with open(tmp, "w") as fh:
        json.dump({"key": key, "sha256": digest, "time": int(time.time()), "error": wal_config.clip_error(error)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    wal_config.fsync_dir(directory)
    return True


def owed_names(config, rid):
    try:
        return sorted(n for n in os.listdir(config.path("owed", rid)) if not n.startswith("."))
    except OSError:
        return []


def read_owed(config, rid, name):
    try:
        with open(config.path("owed", rid, name)) as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


class StatusUnreadable(wal_objects.WalArchiveError):
    """status.json does not parse: it is never rewritten as if it were empty."""


def read_status(config):
    """``<spool>/status.json``: per repository (``repositories``: role, owed, oldest_owed, oldest_owed_time,
    last_success_time, last_error, last_error_time, failures, retry_after_time) and a view of the recorded gaps
    (``gap``: the latest, ``gaps``: all since the last ``status --clear-gaps``; the record is ``gaps.jsonl``, see
    :func:`read_gaps`). Times are Unix seconds. {} when there is none, or when it cannot be read or parsed (for the
    decisions that can do without it: the back-off, a fresh success)."""
    try:
        return _load_status(config)
    except (OSError, wal_objects.WalArchiveError):
        return {}


def _load_status(config):
    """The status file, {} when there is none; OSError when it cannot be read, StatusUnreadable when it does not
    parse."""
    path = config.path("status.json")
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StatusUnreadable("%s does not parse (%s)" % (path, exc)) from None
    if not isinstance(doc, dict):
        raise StatusUnreadable("%s is not a JSON object" % path)
    return doc


@contextlib.contextmanager
def status_update(config, durable=False):
    """Read-modify-write of the status file under its lock (the pusher's threads, the archive_command and the
    backfill all write it). The owed counts are recounted from the markers on every write. A status file that does
    not parse is moved aside (``status.json.unreadable``) and rebuilt, its gaps read again from ``gaps.jsonl``;
    one that cannot be read is OSError (never overwritten)."""
    os.makedirs(config.spool, mode=0o700, exist_ok=True)
    # read-only is enough for flock, and a lock file made by another user (root running the backfill) still works
    fd = os.open(config.path("status.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            doc = _load_status(config)
        except StatusUnreadable as exc:
            aside = config.path("status.json.unreadable")
            os.replace(config.path("status.json"), aside)
            doc = {"gaps": read_gaps(config)[0]}
            sys.stderr.write("immersiverse-dr-wal: %s: moved to %s and rebuilt, the gaps from %s\n"
                             % (exc, aside, gaps_path(config)))
        yield doc
        recount(config, doc)
        doc["updated_time"] = int(time.time())
        doc["queue_max_bytes"] = config.queue_max_bytes
        doc["gaps"] = gaps = doc.get("gaps") or []
        doc["gap"] = gaps[-1] if gaps else None
        path = config.path("status.json")
        tmp = "%s.%d-%d.tmp" % (path, os.getpid(), threading.get_ident())
        with open(tmp, "w") as fh:
            json.dump(doc, fh, sort_keys=True, indent=1)
            fh.write("\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # no secret inside; monitoring may read it
        os.replace(tmp, path)
        if durable:
            wal_config.fsync_dir(config.spool)
    finally:
        os.close(fd)


STATUS_FIELDS = (("last_success_time", None), ("last_error", None), ("last_error_time", None), ("failures", 0),
                 ("retry_after_time", None))


def recount(config, doc):
    """Per repository: its role, description, and what it is owed, counted from the markers (in ``doc``)."""
    old = doc.get("repositories") or {}
    repos = config._repos  # described when made already; never made just for that
    out = {}
    for index, rid in enumerate(wal_config.repository_ids(config)):
        entry = dict(old.get(rid) or {})
        for field, empty in STATUS_FIELDS:  # the same keys always, for monitoring
            entry.setdefault(field, empty)
        entry["role"] = "offsite" if index else "home"
        if repos:
            entry["description"] = repos[index].describe()
        names = owed_names(config, rid)
        entry["owed"] = len(names)
        entry["oldest_owed"] = names[0] if names else None
        entry["oldest_owed_time"] = wal_config.mtime_of(config.path("owed", rid, names[0])) if names else None
        out[rid] = entry
    doc["repositories"] = out


def note_outcomes(config, outcomes, force=False, backoff=True):
    """Record successes (None) and failures (a message) per repository id; a failure starts or doubles the back-off
    unless ``backoff`` is false (the repository answered, with a conflict). Without ``force``, skipped when it would
    only refresh a success noted less than 5 s ago (a push per segment must not mean a status write per segment)."""
    now = time.time()
    if not force:
        current = read_status(config).get("repositories") or {}
        if all(error is None and _fresh_success(current.get(rid), now) for rid, error in outcomes.items()):
            return
    try:
        with status_update(config) as doc:
            entries = doc.setdefault("repositories", {})
            for rid, error in outcomes.items():
                entry = entries.setdefault(rid, {})
                if error is None:
                    entry.update(failures=0, retry_after_time=None, last_success_time=int(now))
                    continue
                entry.update(last_error=wal_config.clip_error(error), last_error_time=int(now))
                if backoff:
                    failures = int(entry.get("failures") or 0) + 1
                    entry.update(failures=failures, retry_after_time=int(now + min(
                        config.offsite_retry_max, 5 * 2 ** min(failures - 1, 10))))
                else:  # it answered (a conflict): reachable, no back-off
                    entry.update(failures=0, retry_after_time=None)
    except OSError as exc:  # the status is for people and monitoring; the markers are the record
        sys.stderr.write("immersiverse-dr-wal: cannot update %s: %s\n" % (config.path("status.json"), exc))


def _fresh_success(entry, now):
    """The entry says: succeeded less than 5 s ago, nothing failed since."""
    if not entry or entry.get("failures"):
        return False
    last_ok = entry.get("last_success_time") or 0
    return (entry.get("last_error_time") or 0) <= last_ok and now - last_ok < 5


def backing_off(config, doc=None):
    """Ids of the repositories not to be tried first now: they failed and their back-off has not run out (a push
    tries them anyway when no other took the segment)."""
    doc = read_status(config) if doc is None else doc
    now = time.time()
    return {rid for rid, entry in (doc.get("repositories") or {}).items()
            if isinstance(entry, dict) and (entry.get("retry_after_time") or 0) > now}


FAILING_SECONDS = 10  # every repository failed this recently: the archive_command pushes at once


def all_failing(config, within=FAILING_SECONDS):
    """Every repository's last attempt failed, the latest less than ``within`` seconds ago. Only ever a reason to
    push at once instead of waiting for the pusher, never one to drop: a drop follows this very push's own failure
    in every repository."""
    entries = read_status(config).get("repositories") or {}
    now = time.time()
    for rid in wal_config.repository_ids(config):
        entry = entries.get(rid) or {}
        failed_at = entry.get("last_error_time") or 0
        if failed_at <= (entry.get("last_success_time") or 0) or now - failed_at >= within:
            return False
    return True


def last_success(config):
    """The latest success of any repository (Unix seconds) the status file holds; 0 when none."""
    entries = (read_status(config).get("repositories") or {}).values()
    return max([int(e.get("last_success_time") or 0) for e in entries if isinstance(e, dict)] or [0])


# the gaps: what the bound on pg_wal dropped. Appended, fsynced, never rewritten (status.json has a view of them)
def gaps_path(config):
    return config.path("gaps.jsonl")


def record_gap(config, name, queued, why):
    """Append one dropped segment to ``gaps.jsonl`` and fsync it (and the spool, when the file is new) before any
    drop is reported. OSError when that cannot be done. Returns the entry."""
    entry = {"segment": name, "time": int(time.time()), "queued_bytes": queued,
             "queue_max_bytes": config.queue_max_bytes,
             "reason": wal_config.clip_error("no repository takes it: %s" % why)}
    path = gaps_path(config)
    os.makedirs(config.spool, mode=0o700, exist_ok=True)
    lock = os.open(config.path("gaps.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # against status --clear-gaps moving the file aside meanwhile
        new = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            line = json.dumps(entry, sort_keys=True) + "\n"
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a line torn by a crash stays alone, unparsed, and this one parses
            data = line.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            wal_config.fsync_dir(config.spool)
    finally:
        os.close(lock)
    return entry


def read_gaps(config, path=None):
    """The gaps recorded in ``gaps.jsonl`` (or ``path``), consecutive segments merged into one (``first``, ``last``,
    ``count``, ``first_time``, ``last_time``, ``queued_bytes``, ``queue_max_bytes``, ``reason``), and how many lines
    did not parse. ``([], 0)`` when there is no such file; OSError when it cannot be read."""
    gaps, bad = [], 0
    try:
        fh = open(path or gaps_path(config))
    except FileNotFoundError:
        return gaps, bad
    with fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(entry, dict) or not wal_naming.SEGMENT_RE.match(str(entry.get("segment"))):
                bad += 1
                continue
            merge_gap(gaps, entry)
    return gaps, bad


def merge_gap(gaps, entry):
    """Add one dropped segment to ``gaps`` (extending the latest gap when it is its next segment)."""
    name, when = entry["segment"], int(entry.get("time") or 0)
    last = gaps[-1] if gaps else None
    if last and wal_naming.follows(last.get("last"), name):
        last.update(last=name, count=int(last.get("count") or 0) + 1, last_time=when,
                    queued_bytes=entry.get("queued_bytes"))
    elif not (last and last.get("first", "") <= name <= last.get("last", "")):  # not the same drop again
        gaps.append({"first": name, "last": name, "count": 1, "first_time": when, "last_time": when,
                     "queued_bytes": entry.get("queued_bytes"), "queue_max_bytes": entry.get("queue_max_bytes"),
                     "reason": entry.get("reason")})


def clear_gaps(config):
    """After a new full backup: the gaps file is moved aside to ``gaps-<UTC time>.jsonl`` (kept, never deleted)
    and the status file's view emptied. Returns (how many gaps there were, where the file went or None)."""
    path = gaps_path(config)
    os.makedirs(config.spool, mode=0o700, exist_ok=True)
    lock = os.open(config.path("gaps.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        count = len(read_gaps(config)[0])
        moved = None
        if os.path.exists(path):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = config.path("gaps-%s.jsonl" % stamp)
            for n in range(1, 1000):
                if not os.path.exists(moved):
                    break
                moved = config.path("gaps-%s-%d.jsonl" % (stamp, n))
            os.rename(path, moved)
            wal_config.fsync_dir(config.spool)
        with status_update(config, durable=True) as doc:
            doc["gaps"] = []
    finally:
        os.close(lock)
    return count, moved


def any_owed(config):
    return any(owed_names(config, rid) for rid in wal_config.repository_ids(config))
