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

When a region is down (docs/wal-archiving.md, "When a repository is down"): a segment is archived once at least
one repository stores it (or holds the same content). Every repository that failed (or is in back-off after
failing), this region's (the first, "home") as much as an offsite one, is *owed* the segment: a durable marker
``<spool>/owed/<repository>/<segment>`` is written (fsynced) before the push reports success, and the backfill copies
the stored object later from whichever repository holds a good copy (create-only, content compared) and removes the
marker. A different-content conflict in any repository still refuses the push. The push fails only when no
repository took the segment, every one of them tried by this very push; only then, once the ``.ready`` segments in
pg_wal exceed ``queue_max_bytes``, does the archive_command report success for a segment without storing it, after
the gap is appended (fsynced) to ``<spool>/gaps.jsonl``: a gap that cannot be recorded is not dropped (the push
fails, PostgreSQL keeps the segment). That file is only ever appended to (``status --clear-gaps`` moves it aside to
a timestamped name). ``<spool>/status.json`` holds, per repository, the owed count, the oldest owed segment, the
last error and the last success, and a view of the gaps for monitoring. The markers live on the primary's spool
only: after a failover or a rebuild, ``backfill --reconcile`` (:func:`reconcile`) compares the repositories'
listings and copies what one holds and another lacks.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal

MAGIC = b"IMDRWAL1"
HEADER_RE = re.compile(rb"^IMDRWAL1 ([0-9a-f]{64}) (\d+) (none|lz4|zstd)\n")
EXIT_ABORT = 126  # restore_command: > 125 makes PostgreSQL stop recovery instead of treating it as "not there"
DEFAULT_QUEUE_MAX_BYTES = 4 << 30  # 4 GiB of .ready WAL in pg_wal while no repository takes any


class WalArchiveError(_errors.DrError):
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


class NoRepositoryTookIt(WalArchiveError):
    """No repository stored the segment: every one failed (down, unreachable, unwritable, timed out). Unlike a
    refusal (a conflict, another cluster's segment), this is what the pg_wal bound (queue_max_bytes) may turn into
    a recorded gap, and only when ``tried_every`` (this very push tried every repository for this segment; false
    for a failure the background pusher reported). ``reason``: what the repositories said."""

    def __init__(self, message, reason=None, tried_every=False):
        super().__init__(message)
        self.reason = reason or message
        self.tried_every = tried_every


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
        # the bound on pg_wal while every repository fails: .ready segments beyond it are dropped (0: never)
        self.queue_max_bytes = max(0, int(doc.get("queue_max_bytes", DEFAULT_QUEUE_MAX_BYTES)))
        # with several repositories, one that failed (the home one too, despite the option's name) is not tried
        # again for up to this long (doubling from 5 s) unless no other takes the segment; the backfill run by the
        # pusher spends at most backfill_seconds per round
        self.offsite_retry_max = max(1.0, float(doc.get("offsite_retry_max_seconds", 60)))
        self.backfill_seconds = max(0.5, float(doc.get("backfill_seconds", 5)))
        # restore_command under --unreachable missing (a streaming standby): per request, one S3 attempt of at most
        # this many seconds of silence, so a paused or blackholed endpoint cannot hold the startup process
        self.fetch_unreachable = doc.get("fetch_unreachable", "abort")
        self.fetch_missing_timeout = max(0.1, float(doc.get("fetch_missing_timeout", 2)))
        self.fetch_missing_attempts = max(1, int(doc.get("fetch_missing_attempts", 1)))
        self.prefetch_wait = 30.0
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

    def fail_fast(self):
        """Short S3 timeouts and few attempts, for a fetch that answers "not archived" when no repository answers
        (a streaming standby goes back to streaming). Before the repositories are first used."""
        # botocore's max_attempts counts the retries after the first attempt
        self.repository_specs = [dict(spec, connect_timeout=self.fetch_missing_timeout,
                                      read_timeout=self.fetch_missing_timeout,
                                      max_attempts=self.fetch_missing_attempts - 1) for spec in self.repository_specs]
        self._repos = None
        # a prefetcher downloading the very segment is waited for about as long as one request may take
        self.prefetch_wait = max(1.0, 2 * self.fetch_missing_timeout * self.fetch_missing_attempts)

    def path(self, *parts):
        return os.path.join(self.spool, *parts)


# -- push ----------------------------------------------------------------------------------------------------------
def push_file(config, path, name=None, key=None, absent_from=()):
    """Store one WAL file. Archived once at least one repository stores it (or holds the same content); every
    repository that fails (or is in back-off after failing), the home one included, is owed it: a durable marker in
    the spool, copied by the backfill. Same content already there: success. Different content in any repository:
    refused, nothing written anywhere. When no repository took it, the ones in back-off are tried too before
    NoRepositoryTookIt (``tried_every``) is raised: that failure always means every repository failed this push.
    The name and the cluster (system identifier) are checked before any repository is asked.
    ``key``: another place than the archive's (the streamer stores under ``stream/``, one repository at a time;
    nothing is owed there: every repository must take it, a failure is raised as it comes). ``absent_from``: names
    of repositories a listing made moments ago showed without this key (the pusher lists a batch's prefix once
    instead of reading every object's header first: on S3 that is one request per segment fewer).
    Returns ``[(repository name, "stored" | "present" | "owed")]``."""
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
    owing = key is None and hasattr(config, "spool")  # the archive's own keys, with a spool to keep the debt in
    key = key or _wal.wal_key(name)
    if not owing:
        return _push_everywhere(config.repositories(), name, key, blob, digest, absent_from)
    return _push_owing(config, name, key, blob, digest, absent_from)


def _push_everywhere(repos, name, key, blob, digest, absent_from):
    """Every repository must take it; a repository error is raised as it comes (the streamer's, per repository)."""
    found = [(repo, None if repo.name in absent_from else _peek_header(repo, key)) for repo in repos]
    _refuse_conflicts(found, name, digest)
    return [(repo.name, "present" if theirs is not None else _create(repo, key, blob, digest, name))
            for repo, theirs in found]


def _push_owing(config, name, key, blob, digest, absent_from):
    repos = config.repositories()
    ids = repository_ids(config)
    skipped = backing_off(config) if len(repos) > 1 else set()
    down = repo_mod.unavailable_errors()
    failed = {}  # index -> why that repository is owed this segment
    took = {}  # index -> "stored" | "present"
    tried = []
    # the repositories not in back-off first; the others only when none of those took it, so a failure is never
    # reported before every repository failed this very push
    first = [i for i in range(len(repos)) if ids[i] not in skipped]
    later = [i for i in range(len(repos)) if ids[i] in skipped]
    for batch in (first, later):
        if took or not batch:
            continue
        tried += batch
        # every repository of the batch is checked before any is written: a conflict in one stores nothing anywhere
        # (nothing was written by an earlier batch: it took nothing)
        found = {}
        for index in batch:
            if repos[index].name in absent_from:
                found[index] = None
                continue
            try:
                found[index] = _peek_header(repos[index], key)
            except down as exc:
                failed[index] = _why(repos[index], exc)
        _refuse_conflicts(((repos[i], theirs) for i, theirs in found.items()), name, digest)
        for index, theirs in found.items():
            if theirs is not None:
                took[index] = "present"
                continue
            # create-only: another writer that stored this name since the check above (or inside the listing's
            # window) is never replaced; its copy is compared instead
            try:
                took[index] = _create(repos[index], key, blob, digest, name)
            except down as exc:
                failed[index] = _why(repos[index], exc)
    if not took:
        reason = "; ".join(failed[i] for i in tried)
        note_outcomes(config, {ids[i]: failed[i] for i in tried}, force=True)
        raise NoRepositoryTookIt(
            "no repository could store %s (%s). Not archived: PostgreSQL keeps the segment and retries; fix the "
            "repositories or their network path" % (name, reason), reason=reason, tried_every=True)
    for index in range(len(repos)):
        if index not in took and index not in failed:
            failed[index] = "not tried: in back-off after failing"
    _settle(config, ids, name, key, digest, failed, tried)
    return [(repo.name, took.get(index, "owed")) for index, repo in enumerate(repos)]


def _refuse_conflicts(found, name, digest):
    """``found``: ``(repository, content sha256 in its header or None)``; raise on the first other content."""
    for repo, theirs in found:
        if theirs is not None and theirs != digest:
            raise WalArchiveError(
                "%s already holds %s with different content (sha256 %s, this one %s): refusing to overwrite it. "
                "Two clusters may be archiving into one repository, or a timeline was reused; find out before "
                "touching either" % (repo.describe(), name, theirs, digest))


def _create(repo, key, blob, digest, name):
    """"stored", or "present" when another writer stored the same content first; different content is refused."""
    if repo.create(key, blob):
        return "stored"
    theirs = _peek_header(repo, key)
    if theirs != digest:
        raise WalArchiveError(
            "%s: another writer stored %s a moment ago with different content (sha256 %s, this one %s): it "
            "was kept and this one refused. Two clusters may be archiving into one repository, or a timeline "
            "was reused; find out before touching either" % (repo.describe(), name, theirs, digest))
    return "present"


def _why(repo, exc):
    """An error with the repository it came from (a RepositoryError names it already; an OSError does not)."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, repo_mod.RepositoryError) else "%s: %s" % (repo.describe(), text)


def _settle(config, ids, name, key, digest, failed, tried):
    """After a push that at least one repository took: the debts recorded (durably: success is reported only once
    the markers are on disk), repaid ones removed, the status of the repositories tried noted."""
    changed = False
    for index, rid in enumerate(ids):
        if index in failed:
            try:
                changed = owe(config, rid, name, key, digest, failed[index]) or changed
            except OSError as exc:
                raise WalArchiveError("%s could not be stored in %s and the spool cannot record that it is owed "
                                      "(%s): not archived, PostgreSQL keeps it and retries; free the spool %s"
                                      % (name, rid, exc, config.spool)) from None
        else:
            changed = _remove(config.path("owed", rid, name)) or changed
    note_outcomes(config, {ids[i]: failed.get(i) for i in tried}, force=changed)


# -- what repositories are owed, the gaps, and the status file ----------------------------------------------------
def repository_ids(config):
    """A name per repository for the spool and the status file: its name, with its position when two share one.
    From the configuration alone (no client is made: an archive_command that only waits for the pusher does not
    import boto3)."""
    names = [_spec_name(spec) for spec in config.repository_specs]
    return [n if names.count(n) == 1 else "%s-%d" % (n, i) for i, n in enumerate(names)]


def _spec_name(spec):
    """The name open_repository gives the repository of ``spec`` (its name, else its type)."""
    spec = spec or {}
    kind = spec.get("type") or ("local" if spec.get("path") and not spec.get("bucket") else "s3")
    return spec.get("name") or kind


def owe(config, rid, name, key, digest, error):
    """Record, durably, that repository ``rid`` lacks ``name``. False when it was recorded already."""
    directory = config.path("owed", rid)
    final = os.path.join(directory, name)
    if os.path.exists(final):
        return False
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _fsync_dir(os.path.dirname(directory))
        _fsync_dir(config.spool)
    tmp = os.path.join(directory, ".%s.%d-%d.tmp" % (name, os.getpid(), threading.get_ident()))
    with open(tmp, "w") as fh:
        json.dump({"key": key, "sha256": digest, "time": int(time.time()), "error": _clip(error)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    return True


def owed_names(config, rid):
    try:
        return sorted(n for n in os.listdir(config.path("owed", rid)) if not n.startswith("."))
    except OSError:
        return []


def _read_owed(config, rid, name):
    try:
        with open(config.path("owed", rid, name)) as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


class StatusUnreadable(WalArchiveError):
    """status.json does not parse: it is never rewritten as if it were empty."""


def read_status(config):
    """``<spool>/status.json``: per repository (``repositories``: role, owed, oldest_owed, oldest_owed_time,
    last_success_time, last_error, last_error_time, failures, retry_after_time) and a view of the recorded gaps
    (``gap``: the latest, ``gaps``: all since the last ``status --clear-gaps``; the record is ``gaps.jsonl``, see
    :func:`read_gaps`). Times are Unix seconds. {} when there is none, or when it cannot be read or parsed (for the
    decisions that can do without it: the back-off, a fresh success)."""
    try:
        return _load_status(config)
    except (OSError, WalArchiveError):
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
            _fsync_dir(config.spool)
    finally:
        os.close(fd)


STATUS_FIELDS = (("last_success_time", None), ("last_error", None), ("last_error_time", None), ("failures", 0),
                 ("retry_after_time", None))


def recount(config, doc):
    """Per repository: its role, description, and what it is owed, counted from the markers (in ``doc``)."""
    old = doc.get("repositories") or {}
    repos = config._repos  # described when made already; never made just for that
    out = {}
    for index, rid in enumerate(repository_ids(config)):
        entry = dict(old.get(rid) or {})
        for field, empty in STATUS_FIELDS:  # the same keys always, for monitoring
            entry.setdefault(field, empty)
        entry["role"] = "offsite" if index else "home"
        if repos:
            entry["description"] = repos[index].describe()
        names = owed_names(config, rid)
        entry["owed"] = len(names)
        entry["oldest_owed"] = names[0] if names else None
        entry["oldest_owed_time"] = _mtime(config.path("owed", rid, names[0])) if names else None
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
                entry.update(last_error=_clip(error), last_error_time=int(now))
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


def _all_failing(config, within=FAILING_SECONDS):
    """Every repository's last attempt failed, the latest less than ``within`` seconds ago. Only ever a reason to
    push at once instead of waiting for the pusher, never one to drop: a drop follows this very push's own failure
    in every repository."""
    entries = read_status(config).get("repositories") or {}
    now = time.time()
    for rid in repository_ids(config):
        entry = entries.get(rid) or {}
        failed_at = entry.get("last_error_time") or 0
        if failed_at <= (entry.get("last_success_time") or 0) or now - failed_at >= within:
            return False
    return True


def _last_success(config):
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
             "queue_max_bytes": config.queue_max_bytes, "reason": _clip("no repository takes it: %s" % why)}
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
            _fsync_dir(config.spool)
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
            if not isinstance(entry, dict) or not _wal.SEGMENT_RE.match(str(entry.get("segment"))):
                bad += 1
                continue
            _merge_gap(gaps, entry)
    return gaps, bad


def _merge_gap(gaps, entry):
    """Add one dropped segment to ``gaps`` (extending the latest gap when it is its next segment)."""
    name, when = entry["segment"], int(entry.get("time") or 0)
    last = gaps[-1] if gaps else None
    if last and _follows(last.get("last"), name):
        last.update(last=name, count=int(last.get("count") or 0) + 1, last_time=when,
                    queued_bytes=entry.get("queued_bytes"))
    elif not (last and last.get("first", "") <= name <= last.get("last", "")):  # not the same drop again
        gaps.append({"first": name, "last": name, "count": 1, "first_time": when, "last_time": when,
                     "queued_bytes": entry.get("queued_bytes"), "queue_max_bytes": entry.get("queue_max_bytes"),
                     "reason": entry.get("reason")})


def _clip(error, size=500):
    text = str(error) if error is not None else ""
    return text if len(text) <= size else text[:size] + "..."


def _mtime(path):
    try:
        return int(os.path.getmtime(path))
    except OSError:
        return None


_fsync_dir = repo_mod._fsync_dir  # one rule for making a rename durable


# -- backfill: the owed segments, from the stored objects ---------------------------------------------------------
class _SourceDown(Exception):
    """No repository that answered holds a good copy and one did not answer (it may hold one): try again later."""


def backfill(config, max_seconds=None, honor_backoff=False, log=None):
    """Copy what each repository, the home one as much as an offsite one, is owed from a repository that holds a good
    copy (the home one first, then the others in order), create-only and compared, then remove the markers. The
    stored object is copied, never pg_wal's file (PostgreSQL may have recycled it). A repository that fails stops
    its round (and, with ``honor_backoff``, as the pusher runs it, one in back-off is not tried); a conflict keeps
    that marker and the others go on. ``max_seconds``: no new copy starts after that. Returns ``{"copied": [(id,
    name, how)], "owed": {id: count}, "errors": {id: message}}``."""
    repos = config.repositories()
    ids = repository_ids(config)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    skipped = backing_off(config) if honor_backoff else set()
    down = repo_mod.unavailable_errors()
    report = {"copied": [], "owed": {}, "errors": {}}
    outcomes, conflicts = {}, {}
    for index, target in enumerate(repos):
        rid = ids[index]
        names = owed_names(config, rid)
        if not names or rid in skipped:
            continue
        sources = [r for i, r in enumerate(repos) if i != index]
        for name in names:
            if deadline is not None and time.monotonic() > deadline:
                break
            marker = _read_owed(config, rid, name)
            key = marker.get("key") or _wal.wal_key(name)
            try:
                how = _backfill_one(target, sources, key, name, marker.get("sha256"))
            except _SourceDown as exc:
                report["errors"][rid] = str(exc)
                break
            except WalArchiveError as exc:  # a conflict, or no copy anywhere: a person must look; the rest goes on
                conflicts[rid] = report["errors"][rid] = str(exc)
                continue
            except down as exc:
                outcomes[rid] = report["errors"][rid] = _why(target, exc)
                break
            _remove(config.path("owed", rid, name))
            report["copied"].append((rid, name, how))
            outcomes.setdefault(rid, None)
            if log:
                log("backfilled %s to %s (%s)" % (name, rid, how))
    if outcomes:
        note_outcomes(config, outcomes, force=True)
    if conflicts:
        note_outcomes(config, conflicts, force=True, backoff=False)
    for rid in ids:
        count = len(owed_names(config, rid))
        if count:
            report["owed"][rid] = count
    return report


def _backfill_one(target, sources, key, name, want):
    """"copied" or "present" (the target held the same content already); WalArchiveError on a conflict."""
    theirs = _peek_header(target, key)
    if theirs is not None and (want is None or theirs == want):
        return "present"
    if theirs is not None:
        raise WalArchiveError(
            "%s holds %s with different content (sha256 %s, the archived one %s): not copied, it stays owed. Two "
            "clusters may be archiving into one repository, or a timeline was reused; find out before touching "
            "either" % (target.describe(), name, theirs, want))
    blob, digest = _stored_copy(sources, key, name, want)
    if target.create(key, blob):
        return "copied"
    theirs = _peek_header(target, key)
    if theirs != digest:
        raise WalArchiveError(
            "%s: another writer stored %s a moment ago with different content (sha256 %s, the archived one %s): "
            "it was kept, it stays owed; find out why before touching either" % (target.describe(), name, theirs,
                                                                                 digest))
    return "present"


def _stored_copy(sources, key, name, want):
    """A verified stored object of ``key`` (the bytes and its content sha256) from the first source that has one."""
    problems = []
    any_down = False
    down = repo_mod.unavailable_errors()
    for src in sources:
        try:
            found = src.read(key)
        except down as exc:
            any_down = True
            problems.append(_why(src, exc))
            continue
        if found is None:
            problems.append("%s has no %s" % (src.describe(), key))
            continue
        blob, info = found
        try:
            stored = info.get("sha256")
            if stored and hashlib.sha256(blob).hexdigest() != stored:
                raise CorruptWal("%s: %s does not match its stored checksum" % (src.describe(), key))
            unpack(blob, "%s in %s" % (key, src.describe()))
            digest = parse_header(blob)[0]
        except CorruptWal as exc:
            problems.append(str(exc))
            continue
        if want and digest != want:
            problems.append("%s holds %s with other content (sha256 %s) than was archived (%s)"
                            % (src.describe(), key, digest, want))
            continue
        return blob, digest
    if any_down:
        raise _SourceDown("no repository that answered holds a good copy of %s and one did not answer (%s): it is "
                          "copied once that one answers" % (name, "; ".join(problems)))
    raise WalArchiveError("no repository holds a good copy of %s to backfill from (%s): it cannot be copied. If it "
                          "was expired, remove its owed marker and take a new full backup"
                          % (name, "; ".join(problems)))


def reconcile(config, everything=False, max_seconds=None, log=None):
    """What the owed markers cannot cover (they live on one primary's spool: a failover, a rebuild, async off with
    no pusher): list ``wal/`` in every repository and copy every WAL file some repository holds and another lacks,
    as the backfill copies (verified, create-only, never over different content). A repository gets only what is
    not older than the oldest segment it holds itself, so what its lifecycle expired, or what it never had before
    it joined, does not come back (timeline history files always; a repository holding no segment gets none);
    ``everything``: from the oldest any repository holds. A name the other repositories hold with different content
    is a conflict: reported, not copied. One listing per repository; ``max_seconds``: no copy starts after that.
    Returns ``{"copied": [(id, name, how)], "missing": {id: count not copied}, "older": {id: (count, the oldest
    segment it holds)}, "conflicts": [message], "errors": {id: message}}``."""
    repos = config.repositories()
    ids = repository_ids(config)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    down = repo_mod.unavailable_errors()
    report = {"copied": [], "missing": {}, "older": {}, "conflicts": [], "errors": {}}
    held = {}  # position -> the WAL file names it holds
    for index, repo in enumerate(repos):
        try:
            keys = [o["key"] for o in repo.list("wal/")]
        except down as exc:
            report["errors"][ids[index]] = "cannot list its WAL: %s" % _why(repo, exc)
            continue
        held[index] = {k.rsplit("/", 1)[-1] for k in keys if _wal.wal_key(k.rsplit("/", 1)[-1]) == k
                       and _wal.is_wal_file_name(k.rsplit("/", 1)[-1])}
    outcomes = {}
    for index in sorted(held):
        rid, target = ids[index], repos[index]
        mine = held[index]
        floor = min((n for n in mine if _wal.SEGMENT_RE.match(n)), default=None)

        def older(name, floor=floor):
            return not everything and not _wal.HISTORY_RE.match(name) and (floor is None or name[:24] < floor)

        others = set().union(*(held[i] for i in held if i != index)) if len(held) > 1 else set()
        wanted = sorted(others - mine)
        skipped = [n for n in wanted if older(n)]
        if skipped:
            report["older"][rid] = (len(skipped), floor)
        todo = [n for n in wanted if not older(n)]
        left = 0
        for position, name in enumerate(todo):
            if deadline is not None and time.monotonic() > deadline:
                left += len(todo) - position
                break
            key = _wal.wal_key(name)
            holders = [repos[i] for i in sorted(held) if i != index and name in held[i]]
            try:
                how = _backfill_one(target, holders, key, name, _agreed(holders, key, name))
            except _SourceDown as exc:
                report["errors"][rid] = str(exc)
                left += 1
                continue
            except WalArchiveError as exc:  # a conflict, or no good copy: a person must look; the rest goes on
                report["conflicts"].append(str(exc))
                left += 1
                continue
            except down as exc:
                outcomes[rid] = report["errors"][rid] = _why(target, exc)
                left += len(todo) - position
                break
            _remove(config.path("owed", rid, name))
            report["copied"].append((rid, name, how))
            outcomes.setdefault(rid, None)
            if log:
                log("reconciled %s to %s (%s)" % (name, rid, how))
        if left:
            report["missing"][rid] = left
    if outcomes:
        note_outcomes(config, outcomes, force=True)
    return report


def _agreed(holders, key, name):
    """The content sha256 every repository holding ``key`` has in its header (None when none could be read); a
    WalArchiveError when two hold different content."""
    seen = {}
    for repo in holders:
        try:
            digest = _peek_header(repo, key)
        except repo_mod.unavailable_errors():
            continue  # the copy itself reads the others
        if digest not in (None, "unreadable-header"):
            seen.setdefault(digest, []).append(repo.describe())
    if len(seen) > 1:
        raise WalArchiveError(
            "the repositories hold %s with different content (%s): not copied anywhere. Two clusters may be "
            "archiving into one repository, or a timeline was reused; find out before touching either"
            % (name, "; ".join("%s: sha256 %s" % (", ".join(where), d) for d, where in sorted(seen.items()))))
    return next(iter(seen), None)


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
    bounded = bool(config.queue_max_bytes) and bool(_wal.SEGMENT_RE.match(name))
    pg_wal = config.pg_wal or os.path.dirname(os.path.abspath(path))
    try:
        if config.asynchronous:
            return push_async(config, path)
        push_file(config, path, name)
        return "sync"
    except NoRepositoryTookIt as exc:
        if not bounded or ready_bytes(pg_wal) <= config.queue_max_bytes:
            raise
        failure = exc
    if not failure.tried_every:  # the pusher's word for it, maybe from a while ago: this push tries them all
        try:
            push_file(config, path, name)
            return "sync"
        except NoRepositoryTookIt as exc:
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
    record = gaps_path(config)
    try:
        entry = record_gap(config, name, queued, why)
    except OSError as exc:
        raise WalArchiveError(
            "no repository takes %s (%s) and %d MiB of WAL wait in pg_wal, more than queue_max_bytes (%d MiB), but "
            "the gap cannot be recorded in %s (%s): not dropped, not archived. PostgreSQL keeps the segment and "
            "pg_wal keeps growing: fix the spool %s (space, permissions) or a repository"
            % (name, why, queued >> 20, config.queue_max_bytes >> 20, record, exc, config.spool)) from None
    span = name
    try:
        with status_update(config) as doc:
            gaps = [g for g in (doc.get("gaps") or []) if isinstance(g, dict)]
            _merge_gap(gaps, entry)
            doc["gaps"] = gaps
            span = "%s..%s" % (gaps[-1]["first"], gaps[-1]["last"])
    except (OSError, WalArchiveError) as exc:
        sys.stderr.write("immersiverse-dr-wal push %s: cannot update the view of the gaps in %s (%s); the gap is "
                         "recorded in %s\n" % (name, config.path("status.json"), exc, record))
    sys.stderr.write(
        "immersiverse-dr-wal push %s: WARNING: WAL DROPPED, NOT ARCHIVED. No repository takes it (%s) and %d MiB "
        "of WAL wait in pg_wal, more than queue_max_bytes (%d MiB): reported as archived so pg_wal stops growing. "
        "Point-in-time recovery across %s is impossible. Once a repository is back, take a new full backup, then "
        "run 'immersiverse-dr-wal status --clear-gaps'. Recorded in %s\n"
        % (name, why, queued >> 20, config.queue_max_bytes >> 20, span, record))


def _follows(last, name):
    try:
        tli_a, seg_a = _wal.parse_segment(last)
        tli_b, seg_b = _wal.parse_segment(name)
    except (_wal.WalError, TypeError):
        return False
    return tli_a == tli_b and seg_b == seg_a + 1


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
            _fsync_dir(config.spool)
        with status_update(config, durable=True) as doc:
            doc["gaps"] = []
    finally:
        os.close(lock)
    return count, moved


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
    if _all_failing(config):  # the pusher cannot get through (it backs off): try here at once, not after waiting
        push_file(config, path, name)
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
    push_file(config, path, name)
    return "sync"


def _pusher_error(config, err, name):
    """The pusher's failure on ``name`` (the error file, removed), or None when the file is older than a repository's
    last success (that failure may be over: the wait goes on, and this command pushes itself at its end)."""
    try:
        stale = os.path.getmtime(err) < _last_success(config)
        with open(err) as fh:
            text = fh.read().strip()
    except FileNotFoundError:  # the pusher stored it meanwhile, and removed its error
        return None
    _remove(err)
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
        return NoRepositoryTookIt(message, reason=found.get("reason"), tried_every=False)
    return WalArchiveError(message)


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
                                _write(config.path("ok", name), file_identity(os.path.join(config.pg_wal, name)))
                            failures.pop(name, None)
                            _remove(config.path("error", name))
                        else:
                            failures[name] = (failures.get(name, (0, 0))[0] + 1, time.monotonic())
                            unavailable = isinstance(exc, NoRepositoryTookIt)
                            _write(config.path("error", name), json.dumps(
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
                    in_flight[name] = pool.submit(push_file, config, os.path.join(config.pg_wal, name), name,
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
                    if any_owed(config):
                        backfilling = backfiller.submit(backfill, config, config.backfill_seconds, True, log)
                        backfill_rounds += 1
                if in_flight or todo:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > config.idle_exit:
                    if backfill_rounds == 0 and backfilling is None and any_owed(config):
                        next_backfill = 0.0  # owed segments: one round before the pusher exits, however short idle
                        continue
                    break
                # ok markers PostgreSQL will never ask for again (it archived them another way) do not pile up
                if _tick % 500 == 0:
                    _prune_markers(config, set(ready))
                time.sleep(0.01)
    finally:
        backfiller.shutdown(wait=True)  # a round ends within backfill_seconds (plus one copy)
        os.close(lock_fd)


def any_owed(config):
    return any(owed_names(config, rid) for rid in repository_ids(config))


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
        repos = self.config.repositories()
        skipped = backing_off(self.config) if len(repos) > 1 else set()  # failed lately: not listed, not written
        ids = repository_ids(self.config)
        for position, repo in enumerate(repos):
            if ids[position] in skipped:
                continue
            cached = self.cache.get((repo.name, prefix))
            if cached is None or time.monotonic() - cached[0] > self.MAX_AGE:
                try:
                    cached = (time.monotonic(), set(o["key"] for o in repo.list(prefix)))
                except repo_mod.unavailable_errors():
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
    """True when something was removed."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


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
    down = repo_mod.unavailable_errors()
    for key in (_wal.wal_key(name), _wal.stream_key(name)):
        for index, repo in enumerate(config.repositories()):
            if index in failed:
                continue
            try:
                raw = _read_verified(repo, key, name)
                if raw is not None:
                    check_cluster(config, name, raw, "%s's copy is not served" % getattr(repo, "name", "a"))
            except CorruptWal as exc:
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
        raise CorruptWal("%s: no repository holds a good copy (%s)" % (name, "; ".join(str(d) for d in damaged)))
    if partial and _wal.SEGMENT_RE.match(name):
        raw = fetch_partial(config, name, errors, failed)
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


def fetch_partial(config, name, errors, failed=()):
    """The longest contiguous streamed prefix of segment ``name`` over the repositories, padded with zeros to the
    segment size; None when no repository holds a piece of it. A damaged piece is CorruptWal. ``failed``: positions
    of repositories not to ask (they failed moments ago)."""
    best = b""
    for position, repo in enumerate(config.repositories()):
        if position in failed:
            continue
        try:
            keys = [o["key"] for o in repo.list(_wal.partial_prefix(name))]
        except repo_mod.unavailable_errors() as exc:
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
