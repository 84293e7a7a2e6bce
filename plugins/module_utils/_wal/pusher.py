# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The asynchronous pusher: a detached process that reads ahead of PostgreSQL's archiver (the ``.ready``
files), pushes segments in parallel to every repository, leaves a marker per segment, and backfills what a
repository is owed.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import backfill as wal_backfill
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import status as wal_status


# -- asynchronous push ------------------------------------------------------------------------------------------------
def marker_dirs(config):
    for sub in ("ok", "error", "fetch", "owed"):
        os.makedirs(config.path(sub), mode=0o700, exist_ok=True)


def archive(config, path):
    """archive_command: push (asynchronously or here), with the bound on pg_wal. When no repository takes the
    segment and the ``.ready`` WAL in pg_wal is more than ``queue_max_bytes``, the segment is reported archived
    without being stored: only after this very push tried every repository for it (a failure the pusher reported
    is tried again here first; the name and the cluster were checked before), only once the gap is recorded
    durably (else WalArchiveError: PostgreSQL keeps the segment), and loudly (PostgreSQL's log). Never under the
    bound, never for a refusal (a conflict, another cluster's segment), never for a history or backup file (small;
    PITR needs them). Returns "async", "sync" or "dropped"."""
    name = os.path.basename(path)
    bounded = bool(config.queue_max_bytes) and bool(wal_naming.SEGMENT_RE.match(name))
    pg_wal = config.pg_wal or os.path.dirname(os.path.abspath(path))
    try:
        if config.asynchronous:
            return push_async(config, path)
        wal_push.push_file(config, path, name)
        return "sync"
    except wal_objects.NoRepositoryTookIt as exc:
        if not bounded or ready_bytes(pg_wal) <= config.queue_max_bytes:
            raise
        failure = exc
    if not failure.tried_every:  # the pusher's word for it, maybe from a while ago: this push tries them all
        try:
            wal_push.push_file(config, path, name)
            return "sync"
        except wal_objects.NoRepositoryTookIt as exc:
            failure = exc
    queued = ready_bytes(pg_wal)
    if not failure.tried_every or queued <= config.queue_max_bytes:
        raise failure
    drop(config, name, queued, failure.reason)
    return "dropped"


def ready_bytes(pg_wal):
    """Bytes of the WAL files PostgreSQL has not archived yet (``archive_status/*.ready``)."""
    try:
        names = os.listdir(os.path.join(pg_wal, "archive_status"))
    except OSError:
        return 0
    total = 0
    for entry in names:
        if entry.endswith(".ready"):
            try:
                total += os.stat(os.path.join(pg_wal, entry[:-6])).st_size
            except OSError:
                pass
    return total


def drop(config, name, queued, why):
    """Record ``name`` as dropped in ``gaps.jsonl`` (appended, fsynced), then say so loudly. A gap that cannot be
    recorded is no drop: WalArchiveError, the archive_command fails and PostgreSQL keeps the segment. The status
    file's view of the gaps is updated after (for monitoring; the record is the gaps file)."""
    record = wal_status.gaps_path(config)
    try:
        entry = wal_status.record_gap(config, name, queued, why)
    except OSError as exc:
        raise wal_objects.WalArchiveError(
            "no repository takes %s (%s) and %d MiB of WAL wait in pg_wal, more than queue_max_bytes (%d MiB), but "
            "the gap cannot be recorded in %s (%s): not dropped, not archived. PostgreSQL keeps the segment and "
            "pg_wal keeps growing: fix the spool %s (space, permissions) or a repository"
            % (name, why, queued >> 20, config.queue_max_bytes >> 20, record, exc, config.spool)) from None
    span = name
    try:
        with wal_status.status_update(config) as doc:
            gaps = [g for g in (doc.get("gaps") or []) if isinstance(g, dict)]
            wal_status.merge_gap(gaps, entry)
            doc["gaps"] = gaps
            span = "%s..%s" % (gaps[-1]["first"], gaps[-1]["last"])
    except (OSError, wal_objects.WalArchiveError) as exc:
        sys.stderr.write("immersiverse-dr-wal push %s: cannot update the view of the gaps in %s (%s); the gap is "
                         "recorded in %s\n" % (name, config.path("status.json"), exc, record))
    sys.stderr.write(
        "immersiverse-dr-wal push %s: WARNING: WAL DROPPED, NOT ARCHIVED. No repository takes it (%s) and %d MiB "
        "of WAL wait in pg_wal, more than queue_max_bytes (%d MiB): reported as archived so pg_wal stops growing. "
        "Point-in-time recovery across %s is impossible. Once a repository is back, take a new full backup, then "
        "run 'immersiverse-dr-wal status --clear-gaps'. Recorded in %s\n"
        % (name, why, queued >> 20, config.queue_max_bytes >> 20, span, record))


def push_async(config, path):
    """archive_command in async mode: make sure the pusher runs, then wait for this segment's marker. When the
    pusher has not got to it in time, push it here (never report success for WAL that is not stored)."""
    name = os.path.basename(path)
    try:
        return _push_async(config, path, name)
    except OSError as exc:  # the spool is unusable (full, read-only): the segment still gets stored, here
        sys.stderr.write("immersiverse-dr-wal: spool %s unusable (%s); pushing %s directly\n"
                         % (config.spool, exc, name))
        wal_push.push_file(config, path, name)
        return "sync"


def _push_async(config, path, name):
    marker_dirs(config)
    ok = config.path("ok", name)
    err = config.path("error", name)
    if marker_matches(config, name, path):
        os.unlink(ok)
        return "async"
    wal_config.remove_file(ok)  # a marker for another file of that name (a re-created cluster): worthless
    config.pg_wal = config.pg_wal or os.path.dirname(os.path.abspath(path))
    ensure_pusher(config)
    if wal_status.all_failing(
            config):  # the pusher cannot get through (it backs off): try here at once, not after waiting
        wal_push.push_file(config, path, name)
        return "sync"
    deadline = time.monotonic() + config.wait_seconds
    while time.monotonic() < deadline:
        if marker_matches(config, name, path):
            os.unlink(ok)
            return "async"
        if os.path.exists(err):
            failure = _pusher_error(config, err, name)
            if failure is not None:
                raise failure
        time.sleep(0.02)
    wal_push.push_file(config, path, name)
    return "sync"


def _pusher_error(config, err, name):
    """The pusher's failure on ``name`` (the error file, removed), or None when the file is older than a repository's
    last success (that failure may be over: the wait goes on, and this command pushes itself at its end)."""
    try:
        stale = os.path.getmtime(err) < wal_status.last_success(config)
        with open(err) as fh:
            text = fh.read().strip()
    except FileNotFoundError:  # the pusher stored it meanwhile, and removed its error
        return None
    wal_config.remove_file(err)
    if stale:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = {"message": text}
    if not isinstance(found, dict):
        found = {"message": text}
    message = found.get("message") or "the background pusher failed on %s" % name
    if found.get("kind") == "unavailable":  # never dropped on that word alone: archive() tries every one itself
        return wal_objects.NoRepositoryTookIt(message, reason=found.get("reason"), tried_every=False)
    return wal_objects.WalArchiveError(message)


def ensure_pusher(config):
    """Start the background pusher unless one holds the lock."""
    return spawn_detached(config.path("pusher.lock"), run_pusher, config, log=config.path("pusher.log"))


def spawn_detached(lock_path, target, config, *args, log=None):
    """Run target(config, *args) in a detached grandchild unless a process holds lock_path (the target takes the
    lock itself). Returns False when one runs already."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # child: detach, run, exit
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for stream_fd in (0, 1, 2):
                os.dup2(devnull, stream_fd)
            if log:
                os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), 2)
            target(config, *args)
        except BaseException:  # pragma: no cover - the targets log what they can
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True


BACKFILL_INTERVAL = 5.0  # seconds between two of the pusher's backfill rounds


def run_pusher(config):
    """Push .ready segments ahead of the archiver, ``concurrency`` at a time, until idle for idle_exit seconds.
    Every few seconds, while repositories are owed segments, a backfill round (at most backfill_seconds,
    repositories in back-off left alone) runs beside the pushes in a thread of its own."""
    lock_fd = os.open(config.path("pusher.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    status_dir = os.path.join(config.pg_wal, "archive_status")
    config.repositories()  # built once, before the worker threads share them
    in_flight = {}
    failures = {}
    listings = _Listings(config)
    idle_since = time.monotonic()
    backfiller = ThreadPoolExecutor(max_workers=1)
    backfilling = None
    backfill_rounds = 0
    next_backfill = time.monotonic() + 1.0

    def log(text):
        sys.stderr.write("%s %s\n" % (time.strftime("%F %T"), text))

    try:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            for _tick in range(10 ** 9):  # bounded by idle_exit
                for name, fut in list(in_flight.items()):
                    if fut.done():
                        del in_flight[name]
                        exc = fut.exception()
                        if exc is None:
                            with contextlib.suppress(OSError):  # recycled meanwhile: nobody asks for it again
                                wal_config.write_text(config.path("ok", name),
                                                      file_identity(os.path.join(config.pg_wal, name)))
                            failures.pop(name, None)
                            wal_config.remove_file(config.path("error", name))
                        else:
                            failures[name] = (failures.get(name, (0, 0))[0] + 1, time.monotonic())
                            unavailable = isinstance(exc, wal_objects.NoRepositoryTookIt)
                            wal_config.write_text(config.path("error", name), json.dumps(
                                {"kind": "unavailable" if unavailable else "refused",
                                 "reason": exc.reason if unavailable else None,
                                 "message": "archive push of %s failed: %s" % (name, exc)}))
                            log("push %s failed: %s" % (name, exc))
                try:
                    ready = sorted(n[:-6] for n in os.listdir(status_dir) if n.endswith(".ready"))
                except OSError:
                    ready = []
                todo = [n for n in ready if n not in in_flight and not os.path.exists(config.path("ok", n))]
                for name in todo[:max(0, config.queue_max - len(in_flight))]:
                    tries, last = failures.get(name, (0, 0))
                    if tries and time.monotonic() - last < min(30, 2 ** tries):  # back off while the store is down
                        continue
                    if len(in_flight) >= config.concurrency * 2:
                        break
                    absent = listings.absent_from(name) if not tries else ()
                    in_flight[name] = pool.submit(wal_push.push_file, config, os.path.join(config.pg_wal, name), name,
                                                  absent_from=absent)
                if backfilling is not None and backfilling.done():
                    try:
                        if backfilling.result()["copied"]:
                            idle_since = time.monotonic()  # making progress: not idle while it does
                    except Exception as exc:  # noqa: BLE001 - logged; the markers stay, the next round retries
                        log("backfill failed: %s" % exc)
                    backfilling = None
                if backfilling is None and time.monotonic() >= next_backfill:
                    next_backfill = time.monotonic() + BACKFILL_INTERVAL
                    if wal_status.any_owed(config):
                        backfilling = backfiller.submit(wal_backfill.backfill, config, config.backfill_seconds, True,
                                                        log)
                        backfill_rounds += 1
                if in_flight or todo:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > config.idle_exit:
                    if backfill_rounds == 0 and backfilling is None and wal_status.any_owed(config):
                        next_backfill = 0.0  # owed segments: one round before the pusher exits, however short idle
                        continue
                    if time.monotonic() - idle_since <= config.idle_exit + config.owed_linger and \
                            wal_status.any_owed(config):
                        # lingering (bounded) for a region to come back: a backfill round every BACKFILL_INTERVAL
                        time.sleep(0.2)
                        continue
                    break
                # ok markers PostgreSQL will never ask for again (it archived them another way) do not pile up
                if _tick % 500 == 0:
                    _prune_markers(config, set(ready))
                time.sleep(0.01)
    finally:
        backfiller.shutdown(wait=True)  # a round ends within backfill_seconds (plus one copy)
        os.close(lock_fd)


class _Listings:
    """Which WAL keys each repository holds, per ``wal/<timeline+log>/`` prefix, listed at most every few seconds:
    a segment not listed is pushed without reading the repository first. A listing that fails just means the header
    is read as usual."""

    MAX_AGE = 5.0

    def __init__(self, config):
        self.config = config
        self.cache = {}  # (repo name, prefix) -> (monotonic time, set of keys)

    def absent_from(self, name):
        if not wal_naming.SEGMENT_RE.match(name):
            return ()
        key = wal_naming.wal_key(name)
        prefix = key.rsplit("/", 1)[0] + "/"
        absent = []
        repos = self.config.repositories()
        skipped = wal_status.backing_off(self.config) if len(
            repos) > 1 else set()  # failed lately: not listed, not written
        ids = wal_config.repository_ids(self.config)
        for position, repo in enumerate(repos):
            if ids[position] in skipped:
                continue
            cached = self.cache.get((repo.name, prefix))
            if cached is None or time.monotonic() - cached[0] > self.MAX_AGE:
                try:
                    cached = (time.monotonic(), set(o["key"] for o in repo.list(prefix)))
                except repo_spec.unavailable_errors():
                    continue
                self.cache[(repo.name, prefix)] = cached
            if key not in cached[1]:
                absent.append(repo.name)
        return tuple(absent)


def _prune_markers(config, ready):
    for sub in ("ok", "error"):
        try:
            names = os.listdir(config.path(sub))
        except OSError:
            continue
        for name in names:
            if name not in ready:
                path = config.path(sub, name)
                try:
                    if time.time() - os.path.getmtime(path) > 3600:
                        os.unlink(path)
                except OSError:
                    pass


def file_identity(path):
    """What a marker vouches for: inode, size and mtime of the WAL file, as `stat -c '%i %s %Y'` prints them, so
    the shell wrapper can check a marker against the file it is asked about (a stale marker from a re-created
    cluster or a recycled segment never matches)."""
    st = os.stat(path)
    return "%d %d %d" % (st.st_ino, st.st_size, int(st.st_mtime))


def marker_matches(config, name, path):
    try:
        with open(config.path("ok", name)) as fh:
            return fh.read().strip() == file_identity(path)
    except OSError:
        return False


def lock_free(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
