# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL push and fetch: what PostgreSQL's archive_command and restore_command run on the database host.

Stored object: a one-line header ``IMDRWAL1 <sha256 of the WAL file> <size> <compression>\\n`` and the compressed
file. The header makes every object self-describing and lets a push tell "same name, same content" (success, so
a re-run after a crash is harmless) from "same name, different content" (refused, never overwritten). A fetch
checks the stored bytes' checksum (the repository's), decompresses, checks the header's sha256 and size, and
renames into place.

Asynchronous mode, like pgBackRest's: a background pusher reads ahead of PostgreSQL's archiver (the ``.ready``
files in pg_wal/archive_status), pushes up to ``concurrency`` segments at a time to every repository, and leaves a
marker per segment in the spool; the archive_command then only finds the marker (the installed shell wrapper does
that without starting Python). The spool holds markers, never WAL: segments stay in pg_wal until PostgreSQL
recycles them after a success, so an unreachable repository never loses a segment; the failure is in the spool's
``error`` file, in PostgreSQL's log, and in pg_stat_archiver, and the pusher catches up when the repository returns.
Fetches prefetch the next segments in parallel into the spool, so recovery does not wait on the network.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal

MAGIC = b"IMDRWAL1"
HEADER_RE = re.compile(rb"^IMDRWAL1 ([0-9a-f]{64}) (\d+) (none|lz4|zstd)\n")
EXIT_ABORT = 126  # restore_command: > 125 makes PostgreSQL stop recovery instead of treating it as "not there"


class WalArchiveError(Exception):
    """A push or fetch that must not be taken as success; the message says what and what to do."""


class CorruptWal(WalArchiveError):
    pass


class ForeignWal(CorruptWal):
    """A segment of another cluster (another system identifier) than the one this archive belongs to."""


def check_cluster(config, name, raw, what):
    """Raise ForeignWal when ``raw`` is a WAL segment of another cluster than the configuration's (system_identifier,
    written by the wal_archive role from the serving primary). Names other than segments and configurations without
    an identifier are not checked."""
    want = config.system_identifier
    if not want or not _wal.SEGMENT_RE.match(name.split(".", 1)[0]):
        return
    got = _wal.segment_system_identifier(raw)
    if got is not None and got != want:
        raise ForeignWal("%s belongs to the cluster with system identifier %s, not to this archive's cluster %s: %s. "
                         "Another cluster may be archiving into this repository" % (name, got, want, what))


class BadName(WalArchiveError):
    """Not a WAL file name: a caller's mistake, never "not archived" (recovery must not end on it)."""


# -- the object format -------------------------------------------------------------------------------------------
def compress(data, method):
    if method == "lz4":
        import lz4.frame

        return lz4.frame.compress(data, compression_level=0)
    if method == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(data)
    if method == "none":
        return data
    raise WalArchiveError("unknown compression %r (none, lz4, zstd)" % (method,))


def decompress(data, method):
    if method == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if method == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
    return data


def pack(raw, method):
    digest = hashlib.sha256(raw).hexdigest()
    header = b"%s %s %d %s\n" % (MAGIC, digest.encode(), len(raw), method.encode())
    return header + compress(raw, method), digest


def parse_header(blob):
    match = HEADER_RE.match(blob[:120])
    if not match:
        raise CorruptWal("not a WAL object of this archive (bad header)")
    return match.group(1).decode(), int(match.group(2)), match.group(3).decode(), match.end()


def unpack(blob, name=""):
    digest, size, method, offset = parse_header(blob)
    try:
        raw = decompress(blob[offset:], method)
    except Exception as exc:  # any decompression failure is corruption
        raise CorruptWal("%s: the stored object does not decompress (%s): it is damaged" % (name, exc)) from None
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
        raise CorruptWal("%s: the stored object's content does not match its checksum: it is damaged" % name)
    return raw


# -- configuration -------------------------------------------------------------------------------------------------
class Config:
    """The JSON file the role writes (/etc/immersiverse-dr/wal.json), or a dict in tests."""

    def __init__(self, doc):
        self.doc = doc
        self.compression = doc.get("compression", "lz4")
        self.spool = doc.get("spool_dir") or "/var/lib/postgresql/immersiverse-dr/spool"
        self.asynchronous = bool(doc.get("async", True))
        self.concurrency = max(1, int(doc.get("concurrency", 4)))
        self.queue_max = max(1, int(doc.get("queue_max", 64)))
        self.prefetch = max(0, int(doc.get("prefetch", 8)))
        self.wait_seconds = float(doc.get("async_wait_seconds", 30))
        self.idle_exit = float(doc.get("idle_exit_seconds", 30))
        self.pg_wal = doc.get("pg_wal_dir")
        self.fetch_partial = bool(doc.get("fetch_partial", False))
        # the cluster this archive belongs to: segments of another are never stored nor served
        self.system_identifier = str(doc.get("system_identifier") or "") or None
        self.segment_size = int(doc.get("wal_segment_size", _wal.DEFAULT_SEGMENT_SIZE))
        self.path_of_config = doc.get("_path")
        self.repository_specs = [doc["repository"]] + list(doc.get("offsite", []))
        self._repos = None
        compress(b"", self.compression)  # validates

    @classmethod
    def load(cls, path):
        try:
            with open(path) as fh:
                doc = json.load(fh)
            doc["_path"] = path
            return cls(doc)
        except (OSError, ValueError) as exc:
            raise WalArchiveError("cannot read the configuration %s: %s" % (path, exc)) from None

    def repositories(self):
        if self._repos is None:
            self._repos = [repo_mod.open_repository(spec) for spec in self.repository_specs]
        return self._repos

    def path(self, *parts):
        return os.path.join(self.spool, *parts)


# -- push ----------------------------------------------------------------------------------------------------------
def push_file(config, path, name=None, key=None, absent_from=()):
    """Store one WAL file in every repository. Same content already there: success. Different: refused.
    ``key``: another place than the archive's (the streamer stores under ``stream/``). ``absent_from``: names of
    repositories a listing made moments ago showed without this key (the pusher lists a batch's prefix once instead
    of reading every object's header first: on S3 that is one request per segment fewer)."""
    name = name or os.path.basename(path)
    if not _wal.is_wal_file_name(name):
        raise WalArchiveError("%s is not a WAL file name: refusing to archive it" % name)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise WalArchiveError("cannot read %s: %s" % (path, exc)) from None
    check_cluster(config, name, raw, "refusing to archive it")
    blob, digest = pack(raw, config.compression)
    key = key or _wal.wal_key(name)
    # every repository is checked before any is written: a conflict in one stores nothing anywhere
    existing = [(repo, None if repo.name in absent_from else _peek_header(repo, key)) for repo in config.repositories()]
    for repo, found in existing:
        if found is not None and found != digest:
            raise WalArchiveError(
                "%s already holds %s with different content (sha256 %s, this one %s): refusing to overwrite it. "
                "Two clusters may be archiving into one repository, or a timeline was reused; find out before "
                "touching either" % (repo.describe(), name, found, digest))
    results = []
    for repo, found in existing:
        if found is not None:
            results.append((repo.name, "present"))
            continue
        # create-only: another writer that stored this name since the check above (or inside the listing's
        # window) is never replaced; its copy is compared instead
        if repo.create(key, blob):
            results.append((repo.name, "stored"))
            continue
        theirs = _peek_header(repo, key)
        if theirs != digest:
            raise WalArchiveError(
                "%s: another writer stored %s a moment ago with different content (sha256 %s, this one %s): it "
                "was kept and this one refused. Two clusters may be archiving into one repository, or a timeline "
                "was reused; find out before touching either" % (repo.describe(), name, theirs, digest))
        results.append((repo.name, "present"))
    return results


def _peek_header(repo, key):
    """The content sha256 in a stored object's header; None when there is no such object."""
    head = repo.read_start(key, 120)
    if head is None:
        return None
    try:
        return parse_header(head)[0]
    except CorruptWal:
        return "unreadable-header"


# -- asynchronous push ------------------------------------------------------------------------------------------------
def marker_dirs(config):
    for sub in ("ok", "error", "fetch"):
        os.makedirs(config.path(sub), mode=0o700, exist_ok=True)


def push_async(config, path):
    """archive_command in async mode: make sure the pusher runs, then wait for this segment's marker. When the
    pusher has not got to it in time, push it here (never report success for WAL that is not stored)."""
    name = os.path.basename(path)
    try:
        return _push_async(config, path, name)
    except OSError as exc:  # the spool is unusable (full, read-only): the segment still gets stored, here
        sys.stderr.write("immersiverse-dr-wal: spool %s unusable (%s); pushing %s directly\n"
                         % (config.spool, exc, name))
        push_file(config, path, name)
        return "sync"


def _push_async(config, path, name):
    marker_dirs(config)
    ok = config.path("ok", name)
    err = config.path("error", name)
    if marker_matches(config, name, path):
        os.unlink(ok)
        return "async"
    _remove(ok)  # a marker for another file of that name (a re-created cluster): worthless
    config.pg_wal = config.pg_wal or os.path.dirname(os.path.abspath(path))
    ensure_pusher(config)
    deadline = time.monotonic() + config.wait_seconds
    while time.monotonic() < deadline:
        if marker_matches(config, name, path):
            os.unlink(ok)
            return "async"
        if os.path.exists(err):
            with open(err) as fh:
                message = fh.read().strip()
            os.unlink(err)
            raise WalArchiveError(message or "the background pusher failed on %s" % name)
        time.sleep(0.02)
    push_file(config, path, name)
    return "sync"


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


def run_pusher(config):
    """Push .ready segments ahead of the archiver, ``concurrency`` at a time, until idle for idle_exit seconds."""
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
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        for _tick in range(10 ** 9):  # bounded by idle_exit
            for name, fut in list(in_flight.items()):
                if fut.done():
                    del in_flight[name]
                    exc = fut.exception()
                    if exc is None:
                        _write(config.path("ok", name), file_identity(os.path.join(config.pg_wal, name)))
                        failures.pop(name, None)
                        _remove(config.path("error", name))
                    else:
                        failures[name] = (failures.get(name, (0, 0))[0] + 1, time.monotonic())
                        _write(config.path("error", name), "archive push of %s failed: %s" % (name, exc))
                        sys.stderr.write("%s push %s failed: %s\n" % (time.strftime("%F %T"), name, exc))
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
                in_flight[name] = pool.submit(push_file, config, os.path.join(config.pg_wal, name), name,
                                              absent_from=absent)
            if in_flight or todo:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > config.idle_exit:
                break
            # ok markers PostgreSQL will never ask for again (it archived them another way) do not pile up
            if _tick % 500 == 0:
                _prune_markers(config, set(ready))
            time.sleep(0.01)
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
        if not _wal.SEGMENT_RE.match(name):
            return ()
        key = _wal.wal_key(name)
        prefix = key.rsplit("/", 1)[0] + "/"
        absent = []
        for repo in self.config.repositories():
            cached = self.cache.get((repo.name, prefix))
            if cached is None or time.monotonic() - cached[0] > self.MAX_AGE:
                try:
                    cached = (time.monotonic(), set(o["key"] for o in repo.list(prefix)))
                except (repo_mod.RepositoryError, OSError):
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


def _touch(path):
    with open(path, "w"):
        pass


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# -- fetch ------------------------------------------------------------------------------------------------------------
def fetch_raw(config, name, partial=False, warn=None):
    """The verified content of a WAL file from the first repository that has it; None when none has it.

    Looked for under ``wal/`` (what the archive_command stored), then ``stream/`` (what the streamer completed),
    then, with ``partial``, the streamed partial of that segment padded to a whole segment with zeros: recovery
    replays to its last complete record and ends there (barman-wal-restore -P does the same).
    A damaged copy in one repository is passed over for the next repository's copy (the regions hold the same WAL);
    only when no repository has a good copy is the damage raised (CorruptWal: recovery stops, never ends early)."""
    errors, damaged = [], []
    for key in (_wal.wal_key(name), _wal.stream_key(name)):
        for repo in config.repositories():
            try:
                raw = _read_verified(repo, key, name)
                if raw is not None:
                    check_cluster(config, name, raw, "%s's copy is not served" % getattr(repo, "name", "a"))
            except CorruptWal as exc:
                damaged.append(exc)
                continue
            except repo_mod.RepositoryError as exc:
                errors.append(exc)
                continue
            if raw is not None:
                if damaged:
                    (warn or sys.stderr.write)("immersiverse-dr-wal fetch %s: used %s's copy; passed over: %s\n"
                                               % (name, repo.name, "; ".join(str(d) for d in damaged)))
                return raw
    if damaged:
        raise CorruptWal("%s: no repository holds a good copy (%s)" % (name, "; ".join(str(d) for d in damaged)))
    if partial and _wal.SEGMENT_RE.match(name):
        raw = fetch_partial(config, name, errors)
        if raw is not None:
            check_cluster(config, name, raw, "the streamed partial is not served")
            return raw
    if errors:
        raise WalArchiveError("no repository answered for %s: %s" % (name, errors[-1]))
    return None


def _read_verified(repo, key, name):
    found = repo.read(key)
    if found is None:
        return None
    blob, info = found
    stored = info.get("sha256")
    if stored and hashlib.sha256(blob).hexdigest() != stored:
        raise CorruptWal("%s: %s does not match its stored checksum: the object is damaged" % (repo.describe(), key))
    try:
        return unpack(blob, "%s in %s" % (key, repo.describe()))
    except CorruptWal as exc:
        raise CorruptWal("%s: %s" % (repo.describe(), exc)) from None


def fetch_partial(config, name, errors):
    """The longest contiguous streamed prefix of segment ``name`` over the repositories, padded with zeros to the
    segment size; None when no repository holds a piece of it. A damaged piece is CorruptWal."""
    best = b""
    for repo in config.repositories():
        try:
            keys = [o["key"] for o in repo.list(_wal.partial_prefix(name))]
        except repo_mod.RepositoryError as exc:
            errors.append(exc)
            continue
        by_range = {}
        for key in keys:
            span = _wal.parse_piece_key(key)
            if span is not None:
                by_range[span] = key
        chosen, end = _wal.cover(by_range)
        if end <= len(best):
            continue
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            parts = list(pool.map(_read_verified, [repo] * len(chosen), [by_range[s] for s in chosen],
                                  [name] * len(chosen)))
        data = bytearray()
        for index, (start, stop) in enumerate(chosen):
            part = parts[index]
            if part is None or len(part) != stop - start:  # removed meanwhile (the segment completed): ask again
                raise WalArchiveError("%s: a piece of %s.partial changed while it was read" % (repo.describe(), name))
            data += part[len(data) - start:]
        best = bytes(data[:end])
    if not best:
        return None
    if len(best) > config.segment_size:
        raise CorruptWal("%s.partial: %d bytes are more than a segment (%d)" % (name, len(best), config.segment_size))
    return best + b"\0" * (config.segment_size - len(best))


def config_identity(config):
    """sha1 of the configuration file, as `sha1sum` prints it: prefetched files are trusted (by the wrapper too)
    only while the configuration that fetched them is in force."""
    path = config.doc.get("_path")
    if not path:
        return hashlib.sha1(json.dumps(config.doc, sort_keys=True).encode()).hexdigest()
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()


def bind_fetch_spool(config):
    """Empty the prefetch spool when it was filled under another configuration (other repositories)."""
    source = config.path("fetch", ".source")
    ident = config_identity(config)
    try:
        with open(source) as fh:
            current = fh.read().strip()
    except OSError:
        current = None
    if current != ident:
        for entry in os.listdir(config.path("fetch")):
            _remove(config.path("fetch", entry))
        _write(source, ident)


def fetch(config, name, dest, partial=None):
    """restore_command: verified, decompressed, renamed into place. Returns True, or False when not archived.
    ``partial`` (default: the configuration's fetch_partial): serve a streamed partial segment as a last resort."""
    if not _wal.is_wal_file_name(name) and name != "RECOVERYHISTORY":
        raise BadName("%s is not a WAL file name" % name)
    marker_dirs(config)
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
    timeline, segno = _wal.parse_segment(first)
    if depth:
        config.prefetch = max(1, int(depth))
    marker_dirs(config)
    bind_fetch_spool(config)
    for name in absent_histories:
        if not _wal.HISTORY_RE.match(name):
            raise WalArchiveError("%s is not a timeline history file name" % name)
        _write(config.path("fetch", ".absent-" + name), "%d\n" % (time.time() + ABSENT_TTL))
    before = _wal.segment_name(timeline, segno - 1) if segno else first
    # The first two segments are marked in flight before the prefetcher exists, so a request that comes while it
    # is still importing boto3 waits for it (in the wrapper) instead of starting a Python of its own.
    claimed = [config.path("fetch", "." + seg + ".tmp") for seg in next_segments(before, 2)
               if not os.path.exists(config.path("fetch", seg))]
    if not _lock_free(config.path("prefetch.lock")):
        return False
    for path in claimed:
        _touch(path)
    started = spawn_detached(config.path("prefetch.lock"), run_prefetch, config, before, True)
    if not started:  # another one won the race: it does not know about these claims
        for path in claimed:
            _remove(path)
    return started


def _lock_free(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _wait_for_prefetch(config, name, timeout=30.0):
    """When the prefetcher is downloading this very segment, wait for it instead of downloading it twice."""
    inflight = config.path("fetch", "." + name + ".tmp")
    deadline = time.monotonic() + timeout
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
        timeline, segno = _wal.parse_segment(name)
    except _wal.WalError:
        return []
    return [_wal.segment_name(timeline, segno + i) for i in range(1, count + 1)]


def _start_prefetch(config, name):
    if not config.prefetch:
        return
    wanted = [n for n in next_segments(name, config.prefetch) if not os.path.exists(config.path("fetch", n))]
    if not wanted:
        return
    spawn_detached(config.path("prefetch.lock"), run_prefetch, config, name)


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
            _remove(path)


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
        _touch(tmp)
        try:
            raw = fetch_raw(config, seg, warn=note)
            if raw is None:
                return False
            with open(tmp, "wb") as fh:
                fh.write(raw)
            os.replace(tmp, config.path("fetch", seg))
            return True
        finally:
            _remove(tmp)

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
