# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base backups: pg_basebackup streamed into a repository, verified on the way, committed by the catalog record.

A backup lives under ``backup/<id>/`` in a repository: the tar archives pg_basebackup writes (``base.tar.lz4``,
one per tablespace, ``pg_wal.tar``), its ``backup_manifest``, and last ``backup.json``, the catalog record. A backup
exists only once its ``backup.json`` is written: an interrupted backup leaves files without one, is listed as
incomplete, never as valid, and the next run removes it. While the archives are still being written, a reader
follows them, decompresses and walks the tar stream, computes each file's CRC-32C and checks it against the
manifest at the end (the checks pg_verifybackup makes; PostgreSQL 15's pg_verifybackup cannot read tar backups),
checks that the WAL the backup needs for consistency is in ``pg_wal.tar``, and uploads what it read, with its
sha256, to the repository. Nothing is read twice.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _wal

try:
    import crc32c as _crc32c

    def crc32c(data, value=0):
        return _crc32c.crc32c(data, value)

    HAS_CRC32C = True
except ImportError:  # pragma: no cover - the manifest then carries SHA256, which hashlib checks
    HAS_CRC32C = False

try:
    import lz4.frame as _lz4frame
except ImportError:  # pragma: no cover
    _lz4frame = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None

CATALOG_FORMAT = 1
RECORD = "backup.json"
IN_PROGRESS = "in-progress.json"
VERIFIED = "verified.json"
STALE_AFTER = datetime.timedelta(hours=6)
COMPRESSION_SUFFIX = {"none": "", "gzip": ".gz", "lz4": ".lz4", "zstd": ".zst"}
# Options of pg_basebackup the module owns: extra_args may not override them.
OWNED_OPTIONS = (
    "-D", "--pgdata", "-F", "--format", "-X", "--wal-method", "-l", "--label", "-Z", "--compress",
    "-c", "--checkpoint", "-r", "--max-rate", "-h", "--host", "-p", "--port", "-U", "--username", "-d",
    "--dbname", "-W", "--password", "-w", "--no-password", "-t", "--target", "--manifest-checksums",
    "--no-manifest", "--manifest-force-encode", "-P", "--progress", "-T", "--tablespace-mapping", "--waldir",
    "-z", "--gzip", "-R", "--write-recovery-conf", "-n", "--no-clean", "-N", "--no-sync",
)


class BackupError(_errors.DrError):
    """A backup problem the operator can act on; the message says what and what to do next."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value):
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    text = value.replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text)


def new_backup_id(kind="F", now=None):
    """Sortable, unique per second and kind: 20261127T105548F (full), ...L (logical)."""
    return (now or utcnow()).strftime("%Y%m%dT%H%M%S") + kind


# -- pg_basebackup argv -----------------------------------------------------------------------------------------
def compress_option(method="lz4", location="client", level=None, workers=None):
    """pg_basebackup --compress value, or None for no compression. Validates the combination."""
    if method not in COMPRESSION_SUFFIX:
        raise BackupError("compression must be one of none, gzip, lz4, zstd; got %r" % (method,))
    if location not in ("client", "server"):
        raise BackupError("compression_location must be client or server; got %r" % (location,))
    if method == "none":
        return None
    if workers and method != "zstd":
        raise BackupError("compression_workers works with zstd only (PostgreSQL's long-distance workers)")
    detail = []
    if level is not None:
        detail.append("level=%d" % int(level))
    if workers:
        detail.append("workers=%d" % int(workers))
    return "%s-%s%s" % (location, method, (":" + ",".join(detail)) if detail else "")


def check_extra_args(extra_args):
    for arg in extra_args or []:
        flag = str(arg).split("=", 1)[0]
        if flag in OWNED_OPTIONS or any(flag.startswith(o) and len(o) == 2 and not o.startswith("--")
                                        for o in OWNED_OPTIONS if o.startswith("-") and len(flag) > 2
                                        and not flag.startswith("--") and flag[:2] == o):
            raise BackupError(
                "extra_args may not contain %s: the module owns that option (use its own parameter: target "
                "directory, format, WAL method, label, compression, checkpoint, max_rate, connection)" % arg)


def basebackup_argv(pg_basebackup, target_dir, conn, label, checkpoint="fast", compression="lz4",
                    compression_location="server", compression_level=None, compression_workers=None,
                    max_rate=None, manifest_checksums="CRC32C", extra_args=None):
    """The pg_basebackup command line: tar format, WAL streamed into the backup, a manifest, progress.
    No password ever appears here: it reaches libpq through a pgpass file (see pgpass_env)."""
    if checkpoint not in ("fast", "spread"):
        raise BackupError("checkpoint must be fast or spread; got %r" % (checkpoint,))
    check_extra_args(extra_args)
    argv = [pg_basebackup, "-D", target_dir, "-F", "t", "-X", "stream", "-c", checkpoint, "-l", label,
            "--manifest-checksums=" + manifest_checksums, "--progress", "--no-password"]
    comp = compress_option(compression, compression_location, compression_level, compression_workers)
    if comp:
        argv.append("--compress=" + comp)
    if max_rate:
        argv += ["-r", str(max_rate)]
    argv += conn_argv(conn)
    argv += [str(a) for a in (extra_args or [])]
    return argv


def conn_argv(conn):
    argv = []
    host = conn.get("login_unix_socket") or conn.get("login_host")
    if host:
        argv += ["-h", host]
    if conn.get("login_port"):
        argv += ["-p", str(conn["login_port"])]
    if conn.get("login_user"):
        argv += ["-U", conn["login_user"]]
    return argv


def pgpass_env(conn, directory):
    """Environment for a PostgreSQL client: the password in a 0600 pgpass file in ``directory``, never argv.
    Returns (env, path or None); the caller removes the file."""
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    password = conn.get("login_password")
    if not password:
        return env, None
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".pgpass-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        fh.write("*:*:*:*:%s\n" % escaped)
    os.chmod(path, 0o600)
    env["PGPASSFILE"] = path
    env["PGCONNECT_TIMEOUT"] = str(conn.get("connect_timeout") or 5)
    return env, path


# -- streaming tar verification ---------------------------------------------------------------------------------
def decompressor_for(name):
    """A streaming decompressor for an archive name, exposing decompress(bytes) -> bytes."""
    if name.endswith(".lz4"):
        if _lz4frame is None:
            raise BackupError("python lz4 is needed to verify lz4 backups on this host (python3-lz4)")
        return _lz4frame.LZ4FrameDecompressor()
    if name.endswith(".gz"):
        return zlib.decompressobj(wbits=31)
    if name.endswith(".zst"):
        if _zstd is None:
            raise BackupError("python zstandard is needed to verify zstd backups on this host "
                              "(python3-zstandard)")
        return _zstd.ZstdDecompressor().decompressobj()
    return _Identity()


class _Identity:
    def decompress(self, data):
        return data


class TarWalker:
    """Walks a tar stream fed in arbitrary pieces; records every regular file's size and checksum, and keeps the
    content of small members asked for (backup_label)."""

    def __init__(self, algorithm="CRC32C", keep=("backup_label",)):
        self.algorithm = algorithm
        self.keep = set(keep)
        self.files = {}
        self.kept = {}
        self.buf = bytearray()
        self.current = None  # [name, remaining, state, padding, kept bytes or None, size]
        self.finished = False
        self.long_name = None
        self.sink = None  # optional: start(name, typeflag), write(view), end() - a restore writes the files

    def _new_state(self):
        if self.algorithm == "CRC32C":
            return 0
        if self.algorithm == "NONE":
            return None
        return hashlib.new(self.algorithm.lower().replace("-", ""))

    def _update(self, state, data):
        if self.algorithm == "CRC32C":
            return crc32c(data, state)
        if state is not None:
            state.update(data)
        return state

    def _final(self, state):
        if self.algorithm == "CRC32C":
            return state.to_bytes(4, "little").hex()
        if state is None:
            return None
        return state.hexdigest()

    def feed(self, data):
        """Consume the next piece of the tar stream. Member data is checksummed straight from ``data`` (no copy);
        only a header split between two pieces is buffered."""
        if self.finished or not data:
            return
        if self.buf:
            data = bytes(self.buf) + bytes(data)
            self.buf = bytearray()
        view = memoryview(data)
        pos = 0
        n = len(view)
        while pos < n:
            cur = self.current
            if cur is not None:
                take = min(cur[1], n - pos)
                if take:
                    if cur[2] is not None:
                        cur[2] = self._update(cur[2], view[pos:pos + take])
                    if cur[4] is not None:
                        cur[4] += view[pos:pos + take]
                    if self.sink is not None and cur[0] is not None and cur[0] != "\0longname":
                        self.sink.write(view[pos:pos + take])
                    cur[1] -= take
                    pos += take
                if cur[1]:
                    break
                pad = min(cur[3], n - pos)
                cur[3] -= pad
                pos += pad
                if cur[3]:
                    break
                self._finish_member(cur)
                self.current = None
                continue
            if n - pos < 512:
                self.buf = bytearray(view[pos:])
                break
            header = bytes(view[pos:pos + 512])
            pos += 512
            if header == b"\0" * 512:
                self.finished = True
                break
            self._start_member(header)

    def _start_member(self, header):
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix and header[257:262] == b"ustar":
            name = prefix + "/" + name
        size_field = header[124:136]
        if size_field[0] & 0x80:  # base-256 for huge files
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        typeflag = header[156:157]
        if self.long_name is not None:
            name, self.long_name = self.long_name, None
        padding = (512 - size % 512) % 512
        if self.sink is not None and typeflag not in (b"L", b"x", b"g"):
            self.sink.start(name, typeflag)
        if typeflag in (b"0", b"\0", b"7"):
            keep = bytearray() if name in self.keep else None
            self.current = [name, size, self._new_state(), padding, keep, size]
        elif typeflag == b"L":
            self.current = ["\0longname", size, None, padding, bytearray(), size]
        else:  # directories, links, pax headers: skip their data
            self.current = [None, size, None, padding, None, size]
        if size == 0 and padding == 0:
            self._finish_member(self.current)
            self.current = None

    def _finish_member(self, cur):
        name, _remaining, state, _pad, kept, size = cur
        if self.sink is not None and name != "\0longname":
            self.sink.end()
        if name is None:
            return
        if name == "\0longname":
            self.long_name = bytes(kept).split(b"\0", 1)[0].decode("utf-8", "replace")
            return
        self.files[name] = {"checksum": self._final(state), "size": size}
        if kept is not None:
            self.kept[name] = bytes(kept)


def parse_backup_label(text):
    """The fields of a backup_label file."""
    info = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    start = info.get("START WAL LOCATION", "")
    match = re.match(r"^([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", start)
    return {
        "start_lsn": match.group(1) if match else None,
        "start_wal": match.group(2) if match else None,
        "checkpoint_lsn": info.get("CHECKPOINT LOCATION"),
        "start_time": info.get("START TIME"),
        "label": info.get("LABEL"),
        "timeline": int(info["START TIMELINE"]) if info.get("START TIMELINE", "").isdigit() else None,
        "backup_from": info.get("BACKUP FROM"),
    }


def check_manifest(manifest, walked):
    """Compare the files pg_basebackup put in its tar archives with its manifest. Returns a list of problems."""
    problems = []
    listed = {f["Path"]: f for f in manifest.get("Files", [])}
    for path, entry in listed.items():
        got = walked.get(path)
        if got is None:
            problems.append("%s is in the manifest but not in the backup" % path)
            continue
        if got.get("size") is not None and got["size"] != entry.get("Size"):
            problems.append("%s is %s bytes, the manifest says %s" % (path, got["size"], entry.get("Size")))
        want = entry.get("Checksum")
        if want and got.get("checksum") and want.lower() != got["checksum"].lower():
            problems.append("%s has checksum %s, the manifest says %s" % (path, got["checksum"], want))
    for path in walked:
        if path not in listed and not path.startswith("pg_wal/") and path not in ("backup_manifest",):
            problems.append("%s is in the backup but not in the manifest" % path)
    return problems


def check_wal(manifest, wal_names, segment_size=_wal.DEFAULT_SEGMENT_SIZE):
    """Every WAL segment the manifest's WAL-Ranges need must be in the backup's pg_wal archive."""
    problems = []
    present = {os.path.basename(n) for n in wal_names}
    for rng in manifest.get("WAL-Ranges", []):
        for name in _wal.segment_range(int(rng["Timeline"]), rng["Start-LSN"], rng["End-LSN"], segment_size):
            if name not in present:
                problems.append("WAL segment %s (needed from %s to %s) is not in the backup"
                                % (name, rng["Start-LSN"], rng["End-LSN"]))
    return problems


def manifest_self_check(raw):
    """pg_verifybackup's first check: the manifest's own SHA256 over everything before its last line."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    idx = text.rfind('"Manifest-Checksum"')
    if idx < 0:
        return ["the backup manifest has no Manifest-Checksum"]
    body = text[:idx].encode("utf-8")
    want = json.loads(text).get("Manifest-Checksum")
    got = hashlib.sha256(body).hexdigest()
    return [] if got == want else ["the backup manifest is damaged (its checksum %s, computed %s)" % (want, got)]


# -- following a file while pg_basebackup writes it ------------------------------------------------------------------
class Follower(threading.Thread):
    """Reads pg_basebackup's output directory while it grows: every archive is hashed, walked (decompressed +
    per-file checksums) and streamed into the repository. pg_wal.tar and the manifest are rewritten in place by
    pg_basebackup, so they are read only after it exits (finish())."""

    def __init__(self, directory, repository, key_prefix, algorithm, process, chunk=1024 * 1024,
                 progress=None):
        super().__init__(daemon=True)
        self.directory = directory
        self.repository = repository
        self.key_prefix = key_prefix
        self.algorithm = algorithm
        self.process = process
        self.chunk = chunk
        self.done = {}
        self.walkers = {}
        self.error = None
        self.writers = []
        self.stop_flag = threading.Event()
        self.progress = progress

    def _archives(self):
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if re.match(r"^(base|\d+)\.tar(\.gz|\.lz4|\.zst)?$", n))

    def run(self):
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.error = exc
            for w in self.writers:
                w.abort()

    def _run(self):
        deadline = time.monotonic() + 7 * 24 * 3600
        while time.monotonic() < deadline:
            pending = [n for n in self._archives() if n not in self.done]
            if not pending:
                if self.process.poll() is not None or self.stop_flag.is_set():
                    return
                time.sleep(0.02)
                continue
            self._follow(pending[0])

    def _follow(self, name):
        path = os.path.join(self.directory, name)
        walker = TarWalker(self.algorithm)
        decomp = decompressor_for(name)
        in_place = isinstance(self.repository, repo_mod.LocalRepository)
        # a local repository stages on its own filesystem: hash while reading, then rename into place (no copy)
        writer = _HashOnly() if in_place else self.repository.writer(self.key_prefix + name, overwrite=True)
        self.writers.append(writer)
        with open(path, "rb") as fh:
            idle = 0
            while True:
                data = fh.read(self.chunk)
                if data:
                    idle = 0
                    writer.write(data)
                    walker.feed(decomp.decompress(data))
                    if self.progress:
                        self.progress(len(data))
                    continue
                if self.stop_flag.is_set():
                    raise BackupError("stopped while reading %s" % name)
                finished = self.process.poll() is not None
                later = [n for n in self._archives() if n > name and n not in self.done]
                if finished or (later and idle > 2):
                    # once pg_basebackup moved on (or exited) and a read returned nothing twice, the file is whole
                    if finished and idle < 1:
                        idle += 1
                        continue
                    break
                idle += 1
                time.sleep(0.01)
        if in_place:
            info = self.repository.adopt(self.key_prefix + name, path, sha256=writer.sha256.hexdigest())
        else:
            info = writer.commit()
        self.writers.remove(writer)
        self.done[name] = info
        self.walkers[name] = walker


class _HashOnly:
    def __init__(self):
        self.sha256 = hashlib.sha256()

    def write(self, data):
        self.sha256.update(data)

    def abort(self):
        pass


# -- the catalog ----------------------------------------------------------------------------------------------------
def list_backups(repository, area="backup"):
    """Every backup in a repository: catalog records (status valid) and leftovers without one (status
    incomplete). Sorted oldest first."""
    by_id = {}
    for obj in repository.list(area + "/"):
        parts = obj["key"].split("/")
        if len(parts) < 3:
            continue
        by_id.setdefault(parts[1], []).append(obj)
    found = []
    for backup_id, objects in sorted(by_id.items()):
        names = {o["key"].split("/", 2)[2]: o for o in objects}
        if RECORD in names:
            try:
                record = json.loads(repository.get_bytes("%s/%s/%s" % (area, backup_id, RECORD)))
            except (ValueError, repo_mod.RepositoryError) as exc:
                found.append({"id": backup_id, "status": "damaged", "problem": "catalog record unreadable: %s"
                              % exc, "repository": repository.name})
                continue
            record["status"] = "valid"
            if VERIFIED in names:
                try:
                    record["last_verification"] = json.loads(
                        repository.get_bytes("%s/%s/%s" % (area, backup_id, VERIFIED)))
                except (ValueError, repo_mod.RepositoryError):
                    pass
            record["repository"] = repository.name
            found.append(record)
        else:
            newest = max(o["mtime"] for o in objects)
            entry = {"id": backup_id, "status": "incomplete", "repository": repository.name,
                     "objects": len(objects), "last_write": iso(newest)}
            if IN_PROGRESS in names:
                try:
                    entry["in_progress"] = json.loads(
                        repository.get_bytes("%s/%s/%s" % (area, backup_id, IN_PROGRESS)))
                except (ValueError, repo_mod.RepositoryError):
                    pass
            found.append(entry)
    return found


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def is_abandoned(entry, now=None, stale_after=STALE_AFTER):
    """An incomplete backup nobody is still writing: its writer on this host is gone, or it is stale."""
    now = now or utcnow()
    marker = entry.get("in_progress") or {}
    if marker.get("host") == socket.gethostname() and marker.get("pid") and not _pid_alive(marker["pid"]):
        return True
    last = parse_iso(entry.get("last_write"))
    return last is None or now - last > stale_after


def remove_backup(repository, backup_id, area="backup"):
    """Uncommit first (the catalog record), then the rest: an interruption leaves an incomplete backup, never a
    valid one with missing parts. Returns (deleted keys, skipped {key: reason})."""
    prefix = "%s/%s/" % (area, backup_id)
    keys = [o["key"] for o in repository.list(prefix)]
    record = prefix + RECORD
    locked = {k: repository.locked(k) for k in keys}
    locked = {k: v for k, v in locked.items() if v}
    if locked:
        return [], locked
    deleted, skipped = [], {}
    if record in keys:
        d, s = repository.delete([record])
        deleted += d
        skipped.update(s)
        if s:
            return deleted, skipped
    d, s = repository.delete([k for k in keys if k != record])
    return deleted + d, dict(skipped, **s)


def clean_incomplete(repository, area="backup", now=None, check_mode=False):
    removed = []
    for entry in list_backups(repository, area):
        if entry["status"] == "incomplete" and is_abandoned(entry, now):
            if not check_mode:
                remove_backup(repository, entry["id"], area)
            removed.append(entry["id"])
    return removed


# -- taking a backup -------------------------------------------------------------------------------------------------
def cluster_identity(conn):
    """system identifier, server_version_num, timeline, wal_segment_size, and whether this is a standby."""
    cur = conn.cursor()
    cur.execute("SELECT system_identifier::text FROM pg_control_system()")
    system_identifier = cur.fetchone()[0]
    cur.execute("SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
                "timeline_id FROM pg_control_checkpoint()")
    version, in_recovery, seg_size, timeline = cur.fetchone()
    return {"system_identifier": system_identifier, "pg_version": version, "in_recovery": in_recovery,
            "wal_segment_size": int(seg_size), "timeline": timeline}


def find_by_label(backups, label):
    return [b for b in backups if b.get("status") == "valid" and b.get("label") == label]


def take_backup(repository, conn_params, identity, pg_bin="/usr/lib/postgresql/15/bin", label=None,
                staging_dir=None, checkpoint="fast", compression="lz4", compression_location="server",
                compression_level=None, compression_workers=None, max_rate=None, extra_args=None,
                region="", progress_file=None, now=None):
    """Run pg_basebackup into the repository. Returns the catalog record (plus duration and throughput).
    ``progress_file``: a JSON file rewritten about once a second with pg_basebackup's own progress and the bytes
    stored so far, for a poller (the backup role) to show."""
    backup_id = new_backup_id("F", now)
    label = label or "immersiverse-dr-" + backup_id
    repo_mod.validate_name(label, "label")
    prefix = "backup/%s/" % backup_id
    if repository.head(prefix + RECORD) is not None or repository.list(prefix):
        raise BackupError("a backup %s is already in %s: retry in a second" % (backup_id, repository.describe()))
    algorithm = "CRC32C" if HAS_CRC32C else "SHA256"
    local = isinstance(repository, repo_mod.LocalRepository)
    if local:
        work_root = os.path.join(repository.root, ".staging")
    else:
        work_root = staging_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-staging")
    work = os.path.join(work_root, backup_id)
    try:
        os.makedirs(work_root, exist_ok=True)
        if os.path.exists(work):
            shutil.rmtree(work)
        os.makedirs(work, mode=0o700)
    except OSError as exc:
        raise BackupError(repo_mod.disk_error_message(exc, work_root)) from None
    target = os.path.join(work, "data")
    started = utcnow()
    t0 = time.monotonic()
    marker = {"id": backup_id, "label": label, "host": socket.gethostname(), "pid": os.getpid(),
              "started": iso(started), "region": region}
    repository.put_bytes(prefix + IN_PROGRESS, json.dumps(marker).encode(), overwrite=True)
    env, pgpass = pgpass_env(conn_params, work)
    argv = basebackup_argv(os.path.join(pg_bin, "pg_basebackup"), target, conn_params, label,
                           checkpoint=checkpoint, compression=compression,
                           compression_location=compression_location, compression_level=compression_level,
                           compression_workers=compression_workers, max_rate=max_rate,
                           manifest_checksums=algorithm, extra_args=extra_args)
    stderr_path = os.path.join(work, "pg_basebackup.log")
    process = None
    follower = None
    reporter = None
    try:
        with open(stderr_path, "wb") as err:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                       env=env, close_fds=True)
        reporter = ProgressReporter(progress_file, stderr_path, backup_id) if progress_file else None
        follower = Follower(target, repository, prefix, algorithm, process,
                            progress=reporter.add if reporter else None)
        follower.start()
        rc = process.wait()
        follower.join()
        if rc != 0:
            raise BackupError("pg_basebackup failed (exit %d): %s" % (rc, _tail(stderr_path)))
        if follower.error is not None:
            raise BackupError("streaming the backup into %s failed: %s"
                              % (repository.describe(), follower.error))
        files = dict(follower.done)
        walked = {}
        for walker in follower.walkers.values():
            walked.update(walker.files)
        kept = {}
        for walker in follower.walkers.values():
            kept.update(walker.kept)
        # pg_wal archive and manifest: complete only now
        with open(os.path.join(target, "backup_manifest"), "rb") as fh:
            manifest_raw = fh.read()
        wal_names = []
        for name in sorted(os.listdir(target)):
            if name in files or not (name.startswith("pg_wal.tar") or name == "backup_manifest"):
                continue
            path = os.path.join(target, name)
            if name.startswith("pg_wal.tar"):
                walker = TarWalker("NONE")
                decomp = decompressor_for(name)
                writer = _HashOnly() if local else repository.writer(prefix + name, overwrite=True)
                try:
                    with open(path, "rb") as fh:
                        for data in iter(lambda: fh.read(1024 * 1024), b""):
                            writer.write(data)
                            walker.feed(decomp.decompress(data))
                    if local:
                        files[name] = repository.adopt(prefix + name, path, sha256=writer.sha256.hexdigest())
                    else:
                        files[name] = writer.commit()
                except BaseException:
                    writer.abort()
                    raise
                wal_names = list(walker.files)
            elif local:
                files[name] = repository.adopt(prefix + name, path,
                                               sha256=hashlib.sha256(manifest_raw).hexdigest())
            else:
                files[name] = repository.put_bytes(prefix + name, manifest_raw, overwrite=True)
        manifest = json.loads(manifest_raw)
        problems = manifest_self_check(manifest_raw) + check_manifest(manifest, walked)
        problems += check_wal(manifest, wal_names, identity.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE)
        if problems:
            raise BackupError("the backup does not match its manifest, so it does not count: %s"
                              % "; ".join(problems[:10]))
        label_info = parse_backup_label(kept.get("backup_label", b"").decode("utf-8", "replace"))
        rng = manifest["WAL-Ranges"][0]
        stopped = utcnow()
        duration = time.monotonic() - t0
        db_bytes = sum(f.get("Size", 0) for f in manifest.get("Files", []))
        stored = sum(info["size"] for info in files.values())
        record = {
            "format": CATALOG_FORMAT,
            "kind": "full",
            "id": backup_id,
            "label": label,
            "region": region,
            "host": socket.gethostname(),
            "system_identifier": identity["system_identifier"],
            "pg_version": identity["pg_version"],
            "wal_segment_size": identity.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE,
            "timeline": int(rng["Timeline"]),
            "start_lsn": rng["Start-LSN"],
            "stop_lsn": rng["End-LSN"],
            "checkpoint_lsn": label_info.get("checkpoint_lsn"),
            "start_wal": _wal.segment_of_lsn(int(rng["Timeline"]), rng["Start-LSN"],
                                             identity.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE),
            "stop_wal": _wal.segment_of_lsn(int(rng["Timeline"]), rng["End-LSN"],
                                            identity.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE),
            "start_time": iso(started),
            "stop_time": iso(stopped),
            "backup_from": label_info.get("backup_from"),
            "compression": {"method": compression, "location": compression_location, "level": compression_level,
                            "workers": compression_workers},
            "manifest_checksum_algorithm": algorithm,
            "database_bytes": db_bytes,
            "stored_bytes": stored,
            "files": [{"name": name, "size": info["size"], "sha256": info["sha256"]}
                      for name, info in sorted(files.items())],
            "verification": {"result": "ok", "time": iso(stopped), "method": "manifest+wal, while streaming",
                             "files_checked": len(manifest.get("Files", []))},
            "duration_seconds": round(duration, 3),
        }
        repository.put_bytes(prefix + RECORD, json.dumps(record, indent=1, sort_keys=True).encode())
        repository.delete([prefix + IN_PROGRESS])
        if reporter:
            reporter.write("committed")
        record["status"] = "valid"
        record["throughput_mb_s"] = round(db_bytes / 1048576 / duration, 1) if duration else None
        return record
    except BaseException:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if follower is not None:
            follower.stop_flag.set()
            follower.join(timeout=30)
        try:
            remove_backup(repository, backup_id)
        except repo_mod.RepositoryError:
            pass  # stays incomplete: never listed as valid, removed by the next run
        raise
    finally:
        cleanup_work(pgpass, work)


def cleanup_work(pgpass, work):
    """Remove a run's temporary pgpass file and staging directory, whatever happened."""
    if pgpass:
        try:
            os.unlink(pgpass)
        except OSError:
            pass
    shutil.rmtree(work, ignore_errors=True)


def write_progress(path, phase, **extra):
    """Write a final progress document (the module does, whatever happened, so a poller never waits in vain)."""
    if not path:
        return
    doc = dict(extra, phase=phase, time=iso(utcnow()))
    try:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError:
        pass


class ProgressReporter:
    """Writes {"id", "phase", "done_kb", "total_kb", "percent", "stored_bytes", "time"} at most once a second."""

    def __init__(self, path, log_path, backup_id):
        self.path = path
        self.log_path = log_path
        self.backup_id = backup_id
        self.stored = 0
        self.last = 0.0
        self.write("starting")

    def add(self, nbytes):
        self.stored += nbytes
        if time.monotonic() - self.last >= 1.0:
            self.write("copying")

    def write(self, phase):
        self.last = time.monotonic()
        doc = {"id": self.backup_id, "phase": phase, "stored_bytes": self.stored, "time": iso(utcnow())}
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 400))
                tail = fh.read().decode("utf-8", "replace")
            found = re.findall(r"(\d+)/(\d+) kB \((\d+)%\)", tail)
            if found:
                done, total, pct = found[-1]
                doc.update(done_kb=int(done), total_kb=int(total), percent=int(pct))
        except OSError:
            pass
        try:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is a courtesy; never fail a backup over it


def _tail(path, limit=1500):
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    lines = [ln for ln in re.split(r"[\r\n]+", text) if ln.strip() and not re.match(r"^\s*\d+/\d+ kB", ln)]
    return " | ".join(lines)[-limit:] or "(no output)"


# -- verification on demand ------------------------------------------------------------------------------------------
def verify_checksums(repository, record, area="backup"):
    """Read every stored file back and compare size and sha256 with the catalog. Returns a list of problems."""
    problems = []
    for entry in record.get("files", []):
        key = "%s/%s/%s" % (area, record["id"], entry["name"])
        try:
            repository.verify(key, entry["sha256"], entry.get("size"))
        except repo_mod.RepositoryError as exc:
            problems.append(str(exc))
    return problems


def verify_full(repository, record, pg_bin, scratch_dir):
    """Restore the backup into a scratch directory with tar and run PostgreSQL's own pg_verifybackup on it
    (manifest, every file's checksum, and the WAL it needs, parsed with pg_waldump)."""
    problems = verify_checksums(repository, record)
    if problems:
        return problems
    os.makedirs(scratch_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="verify-%s-" % record["id"], dir=scratch_dir)
    try:
        data = os.path.join(work, "data")
        os.makedirs(os.path.join(data, "pg_wal"), mode=0o700)
        os.chmod(data, 0o700)
        for entry in record["files"]:
            name = entry["name"]
            key = "backup/%s/%s" % (record["id"], name)
            if name == "backup_manifest":
                with open(os.path.join(data, name), "wb") as fh:
                    fh.write(repository.get_bytes(key))
                continue
            dest = os.path.join(data, "pg_wal") if name.startswith("pg_wal.tar") else data
            if not name.startswith(("base.tar", "pg_wal.tar")):
                continue  # tablespaces: pg_verifybackup would need them mapped; checked by checksum above
            extract_tar_stream(repository.open(key), name, dest)
        result = subprocess.run([os.path.join(pg_bin, "pg_verifybackup"), "-q", data], capture_output=True, check=False,
                                text=True, timeout=3600)
        if result.returncode != 0:
            problems.append("pg_verifybackup: %s" % (result.stderr.strip() or result.stdout.strip()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return problems


def extract_tar_stream(stream, name, dest):
    """Decompress and extract a tar archive read from the repository, refusing members that escape ``dest``."""
    decomp = decompressor_for(name)
    reader = _DecompressingReader(stream, decomp)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            target = os.path.realpath(os.path.join(dest, member.name))
            if not target.startswith(os.path.realpath(dest) + os.sep) and target != os.path.realpath(dest):
                raise BackupError("archive member %r would land outside the restore directory" % member.name)
            if member.issym() or member.islnk():
                continue
            tar.extract(member, dest, set_attrs=False)
            if member.isfile():
                os.chmod(os.path.join(dest, member.name), 0o600)


class _DecompressingReader:
    def __init__(self, stream, decomp):
        self.stream = stream
        self.decomp = decomp
        self.buf = bytearray()
        self.eof = False

    def read(self, size=-1):
        while not self.eof and (size < 0 or len(self.buf) < size):
            data = self.stream.read(1024 * 1024)
            if not data:
                self.eof = True
                break
            self.buf += self.decomp.decompress(data)
        if size < 0:
            out, self.buf = bytes(self.buf), bytearray()
        else:
            out = bytes(self.buf[:size])
            del self.buf[:size]
        return out


def record_verification(repository, record, result, method, problems, area="backup"):
    doc = {"result": result, "method": method, "time": iso(utcnow()), "problems": problems[:50]}
    repository.put_bytes("%s/%s/%s" % (area, record["id"], VERIFIED), json.dumps(doc).encode(), overwrite=True)
    return doc


# -- WAL in the repository and the recoverability window -------------------------------------------------------------
def wal_inventory(repository):
    """{timeline: {segno: ObjectInfo}} for the WAL segments under ``wal/``, plus the history files."""
    segments, histories = {}, []
    for obj in repository.list("wal/"):
        base = obj["key"].rsplit("/", 1)[-1]
        name = base.split(".", 1)[0]
        if base.endswith(".history"):
            histories.append(base)
            continue
        if not _wal.SEGMENT_RE.match(name) or ".partial" in base or ".backup" in base:
            continue
        timeline, segno = _wal.parse_segment(name)
        segments.setdefault(timeline, {})[segno] = obj
    return segments, histories


def recoverability(backups, wal_segments):
    """For each valid backup, how far WAL in the repository lets it recover (contiguous segments from its start
    segment on its timeline), and the overall window."""
    window = {"earliest": None, "latest": None, "backups": []}
    for record in backups:
        if record.get("status") != "valid":
            continue
        seg_size = record.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE
        tl = record["timeline"]
        start = _wal.segment_number(record["start_lsn"], seg_size)
        stop = _wal.segment_number(record["stop_lsn"], seg_size)
        have = wal_segments.get(tl, {})
        last = stop  # the backup's own pg_wal archive makes it consistent up to its stop LSN
        n = start
        while n in have:
            last = max(last, n)
            n += 1
        reach_lsn = _wal.int_to_lsn((last + 1) * seg_size - 1) if last > stop else record["stop_lsn"]
        reach_time = iso(have[last]["mtime"]) if last > stop and last in have else record["stop_time"]
        item = {"id": record["id"], "from_lsn": record["stop_lsn"], "from_time": record["stop_time"],
                "to_lsn": reach_lsn, "to_time": reach_time, "timeline": tl,
                "wal_segments_after_backup": max(0, last - stop)}
        window["backups"].append(item)
        if window["earliest"] is None:
            window["earliest"] = {"time": record["stop_time"], "lsn": record["stop_lsn"], "backup": record["id"]}
        window["latest"] = {"time": reach_time, "lsn": reach_lsn, "backup": record["id"]}
    return window


# -- retention -------------------------------------------------------------------------------------------------------
def plan_retention(backups, now=None, keep_full=None, keep_days=None):
    """Which valid backups to keep and which to delete. A backup is kept when it is among the newest
    ``keep_full``, or needed to restore any point in the last ``keep_days`` (every backup started inside the
    window, plus the newest one before it). The newest valid backup is always kept. Returns (keep, delete),
    each a list of (record, reason)."""
    if keep_full is None and keep_days is None:
        raise BackupError("retention needs keep_full, keep_days or both")
    if keep_full is not None and keep_full < 1:
        raise BackupError("keep_full must be at least 1 (the last valid backup is never deleted)")
    if keep_days is not None and keep_days < 0:
        raise BackupError("keep_days must not be negative")
    now = now or utcnow()
    valid = sorted((b for b in backups if b.get("status") == "valid"), key=lambda b: b["stop_time"])
    reasons = {}
    if keep_full is not None:
        for b in valid[-keep_full:]:
            reasons.setdefault(b["id"], "among the newest %d" % keep_full)
    if keep_days is not None:
        edge = now - datetime.timedelta(days=keep_days)
        inside = [b for b in valid if parse_iso(b["stop_time"]) >= edge]
        before = [b for b in valid if parse_iso(b["stop_time"]) < edge]
        for b in inside:
            reasons.setdefault(b["id"], "inside the %d-day window" % keep_days)
        if before:
            reasons.setdefault(before[-1]["id"], "needed to restore the start of the %d-day window" % keep_days)
    if valid:
        reasons.setdefault(valid[-1]["id"], "the newest valid backup")
    keep = [(b, reasons[b["id"]]) for b in valid if b["id"] in reasons]
    delete = [(b, "older than the policy keeps") for b in valid if b["id"] not in reasons]
    return keep, delete


def plan_wal_retention(kept, wal_segments):
    """WAL segments no kept backup needs: those before the oldest kept backup's start segment (history files are
    always kept). Without any kept backup nothing is deleted."""
    if not kept:
        return []
    oldest = min(_wal.segment_number(b["start_lsn"], b.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE)
                 for b in kept)
    victims = []
    for timeline in sorted(wal_segments):
        for segno, obj in sorted(wal_segments[timeline].items()):
            if segno < oldest:
                victims.append(obj["key"])
    return victims


def plan_stream_retention(kept, objects):
    """Streamed WAL (``stream/``: whole segments and the pieces of partial ones) that no kept backup needs: the same
    rule as plan_wal_retention. History files are always kept."""
    if not kept:
        return []
    oldest = min(_wal.segment_number(b["start_lsn"], b.get("wal_segment_size") or _wal.DEFAULT_SEGMENT_SIZE)
                 for b in kept)
    victims = []
    for obj in objects:
        parts = obj["key"].split("/")
        name = parts[-1]
        if len(parts) >= 2 and parts[-2].endswith(".partial"):
            name = parts[-2][:-len(".partial")]
        if not _wal.SEGMENT_RE.match(name):
            continue
        if _wal.parse_segment(name)[1] < oldest:
            victims.append(obj["key"])
    return victims


def apply_retention(repository, keep_full=None, keep_days=None, now=None, check_mode=False, area="backup"):
    """Plan and (unless check_mode) apply retention in one repository. Returns a report."""
    backups = list_backups(repository, area)
    keep, delete = plan_retention(backups, now=now, keep_full=keep_full, keep_days=keep_days)
    wal_victims = []
    if area == "backup":  # logical backups need no WAL
        segments = wal_inventory(repository)[0]
        wal_victims = plan_wal_retention([b for b, _r in keep], segments)
        wal_victims += plan_stream_retention([b for b, _r in keep], repository.list("stream/"))
    incomplete = [b["id"] for b in backups if b.get("status") == "incomplete" and is_abandoned(b, now)]
    report = {"repository": repository.describe(), "kept": [{"id": b["id"], "reason": r} for b, r in keep],
              "deleted": [], "skipped": {}, "wal_deleted": 0, "wal_skipped": {}, "incomplete_removed": incomplete,
              "would_delete": [b["id"] for b, _r in delete], "would_delete_wal": len(wal_victims)}
    if check_mode:
        return report
    for b, _reason in delete:
        _deleted, skipped = remove_backup(repository, b["id"], area)
        if skipped:
            report["skipped"][b["id"]] = sorted(set(skipped.values()))[0]
        else:
            report["deleted"].append(b["id"])
    if wal_victims:
        deleted, skipped = repository.delete(wal_victims)
        report["wal_deleted"] = len(deleted)
        report["wal_skipped"] = skipped
    for backup_id in incomplete:
        remove_backup(repository, backup_id, area)
    return report


# -- offsite copies --------------------------------------------------------------------------------------------------
def copy_backup(source, destination, record, area="backup"):
    """Copy a committed backup to another repository, each file checksummed, the catalog record last."""
    prefix = "%s/%s/" % (area, record["id"])
    existing = destination.head(prefix + RECORD)
    if existing is not None:
        return {"repository": destination.describe(), "name": destination.name, "changed": False,
                "method": "present"}
    t0 = time.monotonic()
    methods = set()
    for entry in record["files"]:
        info = repo_mod.copy_object(source, destination, prefix + entry["name"], expected_sha256=entry["sha256"],
                                    overwrite=True)
        methods.add(info.get("method"))
    raw = source.get_bytes(prefix + RECORD)
    destination.put_bytes(prefix + RECORD, raw, overwrite=True)
    return {"repository": destination.describe(), "name": destination.name, "changed": True,
            "method": ",".join(sorted(m for m in methods if m)), "seconds": round(time.monotonic() - t0, 3)}
