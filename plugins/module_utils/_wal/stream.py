# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL streaming into the repository, for an RPO near zero: pg_receivewal plus an uploader.

The archive_command stores a segment only once it is complete (or archive_timeout forces it out), so the archive
lags the primary by up to a segment. The streamer runs on a database host in another region, as the postgres user:

- ``pg_receivewal --slot S --synchronous`` receives the primary's WAL as it is flushed into a local directory (the
  slot keeps the primary from recycling WAL the streamer has not received; the conninfo lists every database host
  with ``target_session_attrs=read-write``, so it follows the primary after a failover);
- an uploader thread stores every completed segment (and timeline history file) under ``stream/`` in every
  repository (this region's first), in the archive's object format, and the growing ``.partial`` as immutable
  pieces ``stream/<tl+log>/<segment>.partial/<start>-<end>`` at most every ``upload_interval`` seconds. A fetch
  falls back to ``stream/`` when ``wal/`` lacks a segment, and with ``--partial`` assembles the pieces into the
  segment recovery ends in.

Never under ``wal/``: the primary's archive_command and the streamer can never write the same key. Completed
segments leave the local directory once stored (the slot, not the directory, says where to resume).

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import pusher as wal_pusher
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version

PAGE = 8192  # XLOG_BLCKSZ: every written WAL page starts with a non-zero header (xlp_magic)
DEFAULTS = {
    "slot": "immersiverse_dr_stream",
    "dir": "/var/lib/postgresql/immersiverse-dr/stream",
    "pg_bin_dir": pg_version.DEFAULT_PG_BIN,
    "upload_interval": 0.2,
    "poll_interval": 0.02,
    "spool_max": 16,
    "retry_max_seconds": 10.0,
}


class StreamError(wal_objects.WalArchiveError):
    pass


class StreamSettings:
    """The ``stream`` section of the configuration."""

    def __init__(self, doc, require_conninfo=True):
        section = dict(DEFAULTS, **(doc.get("stream") or {}))
        self.conninfo = section.get("conninfo") or ""
        if require_conninfo and not self.conninfo:
            raise StreamError("the configuration has no stream.conninfo: streaming is not configured on this host")
        if "password=" in self.conninfo.replace(" ", ""):
            raise StreamError("stream.conninfo must not hold a password: put it in the passfile it names")
        self.slot = section["slot"]
        if not self.slot.replace("_", "").isalnum() or not self.slot.islower() or len(self.slot) > 63:
            raise StreamError("stream.slot %r: use lower-case letters, digits and _ (PostgreSQL's slot names)"
                              % (self.slot,))
        self.dir = section["dir"]
        self.pg_bin_dir = section["pg_bin_dir"]
        self.upload_interval = max(0.0, float(section["upload_interval"]))
        self.poll_interval = max(0.005, float(section["poll_interval"]))
        self.spool_max = max(1, int(section["spool_max"]))
        self.retry_max = max(1.0, float(section["retry_max_seconds"]))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)


# -- the pg_receivewal command lines --------------------------------------------------------------------------------
def create_slot_argv(settings):
    return [os.path.join(settings.pg_bin_dir, "pg_receivewal"), "--create-slot", "--if-not-exists",
            "--slot", settings.slot, "--no-password", "--dbname", settings.conninfo]


def receive_argv(settings):
    return [os.path.join(settings.pg_bin_dir, "pg_receivewal"), "--directory", settings.path("wal"),
            "--slot", settings.slot, "--synchronous", "--no-loop", "--no-password", "--status-interval", "1",
            "--dbname", settings.conninfo]


# -- reading what pg_receivewal wrote --------------------------------------------------------------------------------
def data_end(fd, start, size):
    """The end of the WAL written into a zero-padded .partial file, looking from ``start`` on: the last non-zero
    byte before the first all-zero page (a written WAL page never is one). Reads from start's page only."""
    pos = start - start % PAGE
    end = start
    for _block in range(size // (PAGE * 8) + 2):
        if pos >= size:
            break
        block = os.pread(fd, PAGE * 8, pos)
        if not block:
            break
        for off in range(0, len(block), PAGE):
            used = len(block[off:off + PAGE].rstrip(b"\0"))
            if not used:
                return max(end, start)
            end = pos + off + used
        pos += len(block)
    return max(end, start)


def classify(names):
    """The files of the receive directory: (completed segments, partial segment names, history files)."""
    complete, partial, history = [], [], []
    for name in names:
        if wal_naming.SEGMENT_RE.match(name):
            complete.append(name)
        elif name.endswith(".partial") and wal_naming.SEGMENT_RE.match(name[:-8]):
            partial.append(name[:-8])
        elif wal_naming.HISTORY_RE.match(name):
            history.append(name)
    return sorted(complete), sorted(partial), sorted(history)


def contiguous_end(keys):
    """How much of a partial the stored pieces (their keys) cover from byte 0."""
    return wal_naming.cover([span for span in (wal_naming.parse_piece_key(k) for k in keys) if span])[1]


# -- the uploader ---------------------------------------------------------------------------------------------------
class Uploader:
    """Stores what pg_receivewal writes: each tick (``poll_interval``) looks at the directory; a partial whose
    data grew is uploaded as one piece per repository at most every ``upload_interval`` seconds."""

    def __init__(self, config, settings, log):
        self.config = config
        self.settings = settings
        self.log = log
        self.repos = config.repositories()
        self.sent = {}  # (repo index, segment) -> end of the partial stored there
        self.last_put = {}  # (repo index, segment) -> monotonic time of the last piece
        self.done = {}  # completed segment or history file -> set of repo indexes that hold it
        self.seen = {}  # partial segment -> (mtime_ns, time it last changed)
        self.status = {"uploads": 0, "errors": 0, "last_error": None, "last_upload_at": None, "partial": None,
                       "stored_end": None}
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(self.repos)))

    def _each_repo(self, func, *args):
        futures = [self.pool.submit(func, idx, *args) for idx in range(len(self.repos))]
        return [f.result() for f in futures]

    def tick(self, final=False):
        directory = self.settings.path("wal")
        try:
            names = os.listdir(directory)
        except OSError:
            return
        complete, partial, history = classify(names)
        for name in history + complete:
            self._store_whole(name)
        for name in partial:
            self._store_partial(name, final)
        self._prune(complete)

    # whole files: completed segments and history files
    def _store_whole(self, name):
        holders = self.done.setdefault(name, set())
        if len(holders) == len(self.repos):
            return
        path = self.settings.path("wal", name)

        def one(idx):
            if idx in holders:
                return
            repo = self.repos[idx]
            cfg = _OneRepo(self.config, repo)
            try:
                wal_push.push_file(cfg, path, name, key=wal_naming.stream_key(name))
            except (wal_objects.WalArchiveError, repo_base.RepositoryError, OSError) as exc:
                self._error("store %s in %s: %s" % (name, repo.describe(), exc))
                return
            holders.add(idx)
            if wal_naming.SEGMENT_RE.match(name):  # its partial's pieces are superseded
                self._drop_pieces(idx, name)

        self._each_repo(one)

    def _drop_pieces(self, idx, name):
        repo = self.repos[idx]
        try:
            keys = [o["key"] for o in repo.list(wal_naming.partial_prefix(name))]
            if keys:
                repo.delete(keys)
        except repo_base.RepositoryError as exc:
            self._error("remove the pieces of %s.partial from %s: %s" % (name, repo.describe(), exc))
        self.sent.pop((idx, name), None)
        self.last_put.pop((idx, name), None)

    # the growing partial
    def _store_partial(self, name, final):
        path = self.settings.path("wal", name + ".partial")
        try:
            st = os.stat(path)
        except OSError:
            return
        now = time.monotonic()
        mtime, changed_at = self.seen.get(name, (None, now))
        if st.st_mtime_ns != mtime:
            changed_at = now
            self.seen[name] = (st.st_mtime_ns, now)
        elif not final and now - changed_at > 2 * self.settings.upload_interval + 1 and all(
                (idx, name) in self.sent for idx in range(len(self.repos))):
            return  # settled and looked at after it settled
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            self._each_repo(self._put_piece, name, fd, st.st_size, final)
        finally:
            os.close(fd)

    def _put_piece(self, idx, name, fd, size, final):
        repo = self.repos[idx]
        key = (idx, name)
        if key not in self.sent:
            try:
                self.sent[key] = contiguous_end(o["key"] for o in repo.list(wal_naming.partial_prefix(name)))
            except repo_base.RepositoryError as exc:
                self._error("list the pieces of %s.partial in %s: %s" % (name, repo.describe(), exc))
                return
        start = self.sent[key]
        now = time.monotonic()
        if not final and now - self.last_put.get(key, 0.0) < self.settings.upload_interval:
            return
        try:
            end = data_end(fd, start, size)
            if end <= start:
                return
            raw = os.pread(fd, end - start, start)
        except OSError as exc:
            self._error("read %s.partial: %s" % (name, exc))
            return
        end = start + len(raw)
        blob, digest = wal_objects.pack(raw, self.config.compression)
        piece = wal_naming.piece_key(name, start, end)
        try:
            # pieces are immutable: one already stored under this range (a restarted streamer) is kept when it holds
            # the same WAL; different WAL there (another streamer or cluster on this prefix) is never taken as ours
            if not repo.create(piece, blob):
                stored = wal_objects.peek_header(repo, piece)
                if stored != digest:
                    self._error("%s in %s already holds other WAL for %s.partial [%d, %d) than this host receives "
                                "(content sha256 %s, not %s): another streamer or cluster writes this prefix; "
                                "nothing was overwritten, and this range is not counted as stored there"
                                % (piece, repo.describe(), name, start, end, stored, digest))
                    return
        except (repo_base.RepositoryError, wal_objects.WalArchiveError) as exc:
            self._error("store %s.partial [%d, %d) in %s: %s" % (name, start, end, repo.describe(), exc))
            return
        self.sent[key] = end
        self.last_put[key] = now
        if idx == 0:
            self.status.update(uploads=self.status["uploads"] + 1, last_upload_at=time.time(), partial=name,
                               stored_end=end)

    def _prune(self, complete):
        """Completed segments every repository holds leave the directory; the newest one stays (pg_receivewal
        looks there for where to resume when the slot cannot tell). More than spool_max waiting: the oldest ones
        this region's repository holds go too (the offsite copies are then the archive's, not the stream's)."""
        stored_all = [n for n in complete[:-1] if len(self.done.get(n, ())) == len(self.repos)]
        stored_here = [n for n in complete[:-1] if 0 in self.done.get(n, ())]
        excess = stored_here[:max(0, len(complete) - self.settings.spool_max)]
        for name in sorted(set(stored_all) | set(excess)):
            if name in excess and name not in stored_all:
                self._error("spool over %d segments: %s removed before every offsite repository had it"
                            % (self.settings.spool_max, name))
            try:
                os.unlink(self.settings.path("wal", name))
            except OSError:
                pass
            self.done.pop(name, None)

    def _error(self, message):
        self.status["errors"] += 1
        self.status["last_error"] = message
        self.log(message)

    def close(self):
        self.pool.shutdown(wait=True)


class _OneRepo:
    """A configuration view with one repository, so push_file stores into just that one."""

    def __init__(self, config, repo):
        self.compression = config.compression
        self.system_identifier = config.system_identifier
        self._repo = repo

    def repositories(self):
        return [self._repo]


# -- the service ----------------------------------------------------------------------------------------------------
class Streamer:
    def __init__(self, config, settings=None):
        self.config = config
        self.settings = settings or StreamSettings(config.doc)
        self.stop = threading.Event()
        self.child = None
        self._log_lock = threading.Lock()
        self._state = {"value": "starting"}

    def log(self, message):
        with self._log_lock:
            os.write(2, ("%s %s\n" % (time.strftime("%F %T"), message)).encode())

    def write_status(self, uploader, state):
        doc = dict(uploader.status, receivewal=state, pid=os.getpid(), at=time.time())
        tmp = self.settings.path("status.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, self.settings.path("status.json"))

    def _upload_loop(self, uploader):
        last_status = 0.0
        state = self._state
        while not self.stop.is_set():
            try:
                uploader.tick()
            except Exception as exc:  # noqa: BLE001 - the uploader must outlive any one failure; logged
                uploader._error("uploader: %s" % exc)
            if time.monotonic() - last_status > 1:
                last_status = time.monotonic()
                self.write_status(uploader, state["value"])
            self.stop.wait(self.settings.poll_interval)

    def run(self, install_signals=True):
        """Until SIGTERM/SIGINT: keep pg_receivewal running (bounded back-off between attempts) and upload."""
        os.makedirs(self.settings.path("wal"), mode=0o700, exist_ok=True)
        lock_fd = os.open(self.settings.path("stream.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StreamError("a streamer already runs for %s (lock %s)"
                              % (self.settings.dir, self.settings.path("stream.lock"))) from None
        wal_config.write_text(self.settings.path("stream.pid"), str(os.getpid()))
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_a: self.stop.set())
        uploader = Uploader(self.config, self.settings, self.log)
        thread = threading.Thread(target=self._upload_loop, args=(uploader,), name="uploader", daemon=True)
        thread.start()
        self.log("streamer started: slot %s, directory %s, %d repositories, upload every %.2f s"
                 % (self.settings.slot, self.settings.path("wal"), len(uploader.repos), self.settings.upload_interval))
        backoff = 1.0
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self._state["value"] = "connecting"
                if self._run_child(create_slot_argv(self.settings), timeout=30) == 0:
                    self._state["value"] = "streaming"
                    rc = self._run_child(receive_argv(self.settings))
                    if not self.stop.is_set():
                        self.log("pg_receivewal exited with %s; starting it again" % rc)
                self._state["value"] = "waiting"
                backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self.settings.retry_max)
                self.stop.wait(backoff)
        finally:
            self.stop.set()
            thread.join(30)
            try:
                uploader.tick(final=True)  # what arrived last
            finally:
                self.write_status(uploader, "stopped")
                uploader.close()
                wal_config.remove_file(self.settings.path("stream.pid"))
                os.close(lock_fd)
                self.log("streamer stopped")

    def _run_child(self, argv, timeout=None):
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD",)}
        env.update(LC_ALL="C", PGAPPNAME="immersiverse_dr_stream")
        try:
            self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=2, stderr=2, env=env)
        except OSError as exc:
            self.log("cannot run %s: %s" % (argv[0], exc))
            return None
        deadline = time.monotonic() + timeout if timeout else None
        try:
            for _tick in range(10 ** 9):  # until it exits, the stop signal, or the timeout
                rc = self.child.poll()
                if rc is not None:
                    return rc
                if self.stop.is_set() or (deadline and time.monotonic() > deadline):
                    self.child.terminate()  # pg_receivewal flushes what it has, then exits
                    try:
                        return self.child.wait(10)
                    except subprocess.TimeoutExpired:
                        self.child.kill()
                        return self.child.wait(10)
                self.stop.wait(0.2)
        finally:
            self.child = None
        return None


def ensure(config):
    """Start the streamer detached unless one runs (cron calls this every minute). True when it started one."""
    settings = StreamSettings(config.doc)
    os.makedirs(settings.dir, mode=0o700, exist_ok=True)
    return wal_pusher.spawn_detached(settings.path("stream.lock"), _run_detached, config,
                                     log=settings.path("stream.log"))


def _run_detached(config):
    Streamer(config).run()


def running_pid(settings):
    """The pid of the streamer holding the lock; None when none runs."""
    try:
        fd = os.open(settings.path("stream.lock"), os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        with open(settings.path("stream.pid")) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def stop(config, timeout=20.0):
    """SIGTERM the running streamer (it stops pg_receivewal and uploads what arrived last), then wait; its process
    group gets SIGKILL when it does not stop in time. True when one was running."""
    settings = StreamSettings(config.doc, require_conninfo=False)
    pid = running_pid(settings)
    if pid is None:
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(settings) is None:
            return True
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    return True


def _signal(pid, sig):
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)  # the detached streamer leads its group: pg_receivewal goes with it
        else:
            os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def status(config):
    settings = StreamSettings(config.doc, require_conninfo=False)
    try:
        with open(settings.path("status.json")) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        doc = {}
    doc["running"] = running_pid(settings) is not None
    return doc
