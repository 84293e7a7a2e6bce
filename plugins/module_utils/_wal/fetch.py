# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL fetch: what restore_command runs. The segment from the first repository that has a good copy (checked,
decompressed, renamed into place), the streamed partial at the end of the archive, and a prefetch of the next
segments into the spool so recovery does not wait on the network.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import pusher as wal_pusher


# -- fetch ------------------------------------------------------------------------------------------------------------
def fetch_raw(config, name, partial=False, warn=None):
    """The verified content of a WAL file from the first repository that has it; None when none has it.

    Looked for under ``wal/`` (what the archive_command stored), then ``stream/`` (what the streamer completed),
    then, with ``partial``, the streamed partial of that segment padded to a whole segment with zeros: recovery
    replays to its last complete record and ends there (barman-wal-restore -P does the same).
    A damaged copy in one repository is passed over for the next repository's copy (the regions hold the same WAL);
    only when no repository has a good copy is the damage raised (CorruptWal: recovery stops, never ends early).
    A repository that fails (down, unreachable, timed out) is not asked again within this fetch."""
    errors, damaged = [], []
    failed = set()  # positions of repositories that failed: a stalled endpoint costs its timeout once, not per key
    down = repo_spec.unavailable_errors()
    for key in (wal_naming.wal_key(name), wal_naming.stream_key(name)):
        for index, repo in enumerate(config.repositories()):
            if index in failed:
                continue
            try:
                raw = _read_verified(repo, key, name)
                if raw is not None:
                    wal_objects.check_cluster(config, name, raw, "%s's copy is not served" % getattr(repo, "name", "a"))
            except wal_objects.CorruptWal as exc:
                damaged.append(exc)
                continue
            except down as exc:
                errors.append(exc)
                failed.add(index)
                continue
            if raw is not None:
                if damaged:
                    (warn or sys.stderr.write)("immersiverse-dr-wal fetch %s: used %s's copy; passed over: %s\n"
                                               % (name, repo.name, "; ".join(str(d) for d in damaged)))
                return raw
    if damaged:
        raise wal_objects.CorruptWal("%s: no repository holds a good copy (%s)" % (name,
                                                                                   "; ".join(str(d) for d in damaged)))
    if partial and wal_naming.SEGMENT_RE.match(name):
        raw = fetch_partial(config, name, errors, failed)
        if raw is not None:
            wal_objects.check_cluster(config, name, raw, "the streamed partial is not served")
            return raw
    if errors:
        raise wal_objects.WalArchiveError("no repository answered for %s: %s" % (name, errors[-1]))
    return None


def _read_verified(repo, key, name):
    found = repo.read(key)
    if found is None:
        return None
    blob, info = found
    stored = info.get("sha256")
    if stored and hashlib.sha256(blob).hexdigest() != stored:
        raise wal_objects.CorruptWal("%s: %s does not match its stored checksum: the object is damaged" % (
            repo.describe(), key))
    try:
        return wal_objects.unpack(blob, "%s in %s" % (key, repo.describe()))
    except wal_objects.CorruptWal as exc:
        raise wal_objects.CorruptWal("%s: %s" % (repo.describe(), exc)) from None


def fetch_partial(config, name, errors, failed=()):
    """The longest contiguous streamed prefix of segment ``name`` over the repositories, padded with zeros to the
    segment size; None when no repository holds a piece of it. A damaged piece is CorruptWal. ``failed``: positions
    of repositories not to ask (they failed moments ago)."""
    best = b""
    for position, repo in enumerate(config.repositories()):
        if position in failed:
            continue
        try:
            keys = [o["key"] for o in repo.list(wal_naming.partial_prefix(name))]
        except repo_spec.unavailable_errors() as exc:
            errors.append(exc)
            continue
        by_range = {}
        for key in keys:
            span = wal_naming.parse_piece_key(key)
            if span is not None:
                by_range[span] = key
        chosen, end = wal_naming.cover(by_range)
        if end <= len(best):
            continue
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            parts = list(pool.map(_read_verified, [repo] * len(chosen), [by_range[s] for s in chosen],
                                  [name] * len(chosen)))
        data = bytearray()
        for index, (start, stop) in enumerate(chosen):
            part = parts[index]
            if part is None or len(part) != stop - start:  # removed meanwhile (the segment completed): ask again
                raise wal_objects.WalArchiveError("%s: a piece of %s.partial changed while it was read" % (
                    repo.describe(), name))
            data += part[len(data) - start:]
        best = bytes(data[:end])
    if not best:
        return None
    if len(best) > config.segment_size:
        raise wal_objects.CorruptWal("%s.partial: %d bytes are more than a segment (%d)" % (name, len(best),
                                                                                            config.segment_size))
    return best + b"\0" * (config.segment_size - len(best))


def bind_fetch_spool(config):
    """Empty the prefetch spool when it was filled under another configuration (other repositories)."""
    source = config.path("fetch", ".source")
    ident = wal_config.config_identity(config)
    try:
        with open(source) as fh:
            current = fh.read().strip()
    except OSError:
        current = None
    if current != ident:
        for entry in os.listdir(config.path("fetch")):
            wal_config.remove_file(config.path("fetch", entry))
        wal_config.write_text(source, ident)


def fetch(config, name, dest, partial=None):
    """restore_command: verified, decompressed, renamed into place. Returns True, or False when not archived.
    ``partial`` (default: the configuration's fetch_partial): serve a streamed partial segment as a last resort."""
    if not wal_naming.is_wal_file_name(name) and name != "RECOVERYHISTORY":
        raise wal_objects.BadName("%s is not a WAL file name" % name)
    wal_pusher.marker_dirs(config)
    bind_fetch_spool(config)
    local = config.path("fetch", name)
    _wait_for_prefetch(config, name)
    if os.path.exists(local):
        _place(local, dest, move=True)
        _start_prefetch(config, name)
        return True
    raw = fetch_raw(config, name, partial=config.fetch_partial if partial is None else partial)
    if raw is None:
        return False
    tmp = dest + ".immersiverse-dr.tmp"
    with open(tmp, "wb") as fh:
        fh.write(raw)
    os.replace(tmp, dest)
    _start_prefetch(config, name)
    return True


ABSENT_TTL = 30  # seconds the wrapper answers "not there" for a history file a restore's plan found missing


def warm(config, first, depth=None, absent_histories=()):
    """Start the prefetcher at segment ``first`` before recovery asks for anything (a restore knows its WAL range
    from its plan), so the first requests already find their segments in the spool. ``absent_histories``: history
    files the plan found in no repository (the next timeline's, which PostgreSQL probes when recovery starts and
    when it ends); for ABSENT_TTL seconds the wrapper answers "not there" for them without starting Python.
    Returns False when a prefetcher runs already."""
    timeline, segno = wal_naming.parse_segment(first)
    if depth:
        config.prefetch = max(1, int(depth))
    wal_pusher.marker_dirs(config)
    bind_fetch_spool(config)
    for name in absent_histories:
        if not wal_naming.HISTORY_RE.match(name):
            raise wal_objects.WalArchiveError("%s is not a timeline history file name" % name)
        wal_config.write_text(config.path("fetch", ".absent-" + name), "%d\n" % (time.time() + ABSENT_TTL))
    before = wal_naming.segment_name(timeline, segno - 1) if segno else first
    # The first two segments are marked in flight before the prefetcher exists, so a request that comes while it
    # is still importing boto3 waits for it (in the wrapper) instead of starting a Python of its own.
    claimed = [config.path("fetch", "." + seg + ".tmp") for seg in next_segments(before, 2)
               if not os.path.exists(config.path("fetch", seg))]
    if not wal_pusher.lock_free(config.path("prefetch.lock")):
        return False
    for path in claimed:
        wal_config.touch(path)
    started = wal_pusher.spawn_detached(config.path("prefetch.lock"), run_prefetch, config, before, True)
    if not started:  # another one won the race: it does not know about these claims
        for path in claimed:
            wal_config.remove_file(path)
    return started


def _wait_for_prefetch(config, name, timeout=None):
    """When the prefetcher is downloading this very segment, wait for it instead of downloading it twice (at most
    the configuration's prefetch_wait: 30 s, or about one request under --unreachable missing)."""
    inflight = config.path("fetch", "." + name + ".tmp")
    deadline = time.monotonic() + (config.prefetch_wait if timeout is None else timeout)
    while os.path.exists(inflight) and time.monotonic() < deadline:
        time.sleep(0.01)


def _place(src, dest, move):
    try:
        os.replace(src, dest)
    except OSError:  # another filesystem
        tmp = dest + ".immersiverse-dr.tmp"
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while True:
                chunk = fin.read(1 << 20)
                if not chunk:
                    break
                fout.write(chunk)
        os.replace(tmp, dest)
        if move:
            os.unlink(src)


def next_segments(name, count):
    try:
        timeline, segno = wal_naming.parse_segment(name)
    except wal_naming.WalError:
        return []
    return [wal_naming.segment_name(timeline, segno + i) for i in range(1, count + 1)]


def _start_prefetch(config, name):
    if not config.prefetch:
        return
    wanted = [n for n in next_segments(name, config.prefetch) if not os.path.exists(config.path("fetch", n))]
    if not wanted:
        return
    wal_pusher.spawn_detached(config.path("prefetch.lock"), run_prefetch, config, name)


def run_prefetch(config, name, ramp=False):
    """Keep the ``prefetch`` segments after the newest one recovery has taken in the spool, verified, fetched
    ``concurrency`` at a time, until recovery stops asking (idle_exit) or the archive ends. ``ramp`` (a warm start,
    before PostgreSQL runs): two segments ahead until recovery takes the first one."""
    lock_fd = os.open(config.path("prefetch.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        return
    claimed = [config.path("fetch", "." + seg + ".tmp") for seg in next_segments(name, 2)] if ramp else []
    try:
        _prefetch_loop(config, name, ramp, lock_fd)
    finally:
        for path in claimed:  # warm()'s claims this run did not get to (it failed early): nobody waits on them
            wal_config.remove_file(path)


def _prefetch_loop(config, name, ramp, lock_fd):
    _prune_fetched(config)
    config.repositories()  # built once, before the worker threads share them
    log = open(config.path("prefetch.log"), "a")
    in_flight = {}
    fetched = set()
    end_of_archive = None
    consumed = name
    taken_any = not ramp
    idle_since = time.monotonic()

    def note(text):
        log.write("%s %s" % (time.strftime("%F %T"), text))
        log.flush()

    def one(seg):
        tmp = config.path("fetch", "." + seg + ".tmp")
        wal_config.touch(tmp)
        try:
            raw = fetch_raw(config, seg, warn=note)
            if raw is None:
                return False
            with open(tmp, "wb") as fh:
                fh.write(raw)
            os.replace(tmp, config.path("fetch", seg))
            return True
        finally:
            wal_config.remove_file(tmp)

    try:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            for _tick in range(10 ** 9):  # bounded by idle_exit
                for seg, fut in list(in_flight.items()):
                    if not fut.done():
                        continue
                    del in_flight[seg]
                    try:
                        if fut.result():
                            fetched.add(seg)
                        elif end_of_archive is None or seg < end_of_archive:
                            end_of_archive = seg
                    except Exception as exc:  # noqa: BLE001 - logged; the fetch of that segment reports it
                        log.write("%s prefetch %s: %s\n" % (time.strftime("%F %T"), seg, exc))
                        log.flush()
                        end_of_archive = seg if end_of_archive is None else min(end_of_archive, seg)
                # recovery took every fetched segment that is gone from the spool
                taken = [seg for seg in fetched if not os.path.exists(config.path("fetch", seg))]
                for seg in taken:
                    taken_any = True
                    fetched.discard(seg)
                    consumed = max(consumed, seg)
                    idle_since = time.monotonic()
                # two ahead until recovery takes its first one: a restore warms the spool while PostgreSQL is still
                # syncing the data directory, which a burst of writes into the spool would slow down
                window = next_segments(consumed, config.prefetch if taken_any else min(2, config.prefetch))
                for seg in window:
                    if end_of_archive is not None and seg >= end_of_archive:
                        break
                    if seg in in_flight or seg in fetched or os.path.exists(config.path("fetch", seg)):
                        continue
                    in_flight[seg] = pool.submit(one, seg)
                if not in_flight and time.monotonic() - idle_since > config.idle_exit:
                    break
                if not in_flight and end_of_archive is not None and not fetched:
                    break
                time.sleep(0.01)
    finally:
        log.close()
        os.close(lock_fd)


def _prune_fetched(config):
    try:
        names = os.listdir(config.path("fetch"))
    except OSError:
        return
    for name in names:
        path = config.path("fetch", name)
        try:
            if time.time() - os.path.getmtime(path) > 3600:
                os.unlink(path)
        except OSError:
            pass
