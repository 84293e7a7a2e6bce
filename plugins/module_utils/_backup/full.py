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

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import tar as backup_tar
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version

COMPRESSION_SUFFIX = {"none": "", "gzip": ".gz", "lz4": ".lz4", "zstd": ".zst"}
# Options of pg_basebackup the module owns: extra_args may not override them.
OWNED_OPTIONS = (
    "-D", "--pgdata", "-F", "--format", "-X", "--wal-method", "-l", "--label", "-Z", "--compress",
    "-c", "--checkpoint", "-r", "--max-rate", "-h", "--host", "-p", "--port", "-U", "--username", "-d",
    "--dbname", "-W", "--password", "-w", "--no-password", "-t", "--target", "--manifest-checksums",
    "--no-manifest", "--manifest-force-encode", "-P", "--progress", "-T", "--tablespace-mapping", "--waldir",
    "-z", "--gzip", "-R", "--write-recovery-conf", "-n", "--no-clean", "-N", "--no-sync",
)


# -- pg_basebackup argv -----------------------------------------------------------------------------------------
def compress_option(method="lz4", location="client", level=None, workers=None):
    """pg_basebackup --compress value, or None for no compression. Validates the combination."""
    if method not in COMPRESSION_SUFFIX:
        raise backup_catalog.BackupError("compression must be one of none, gzip, lz4, zstd; got %r" % (method,))
    if location not in ("client", "server"):
        raise backup_catalog.BackupError("compression_location must be client or server; got %r" % (location,))
    if method == "none":
        return None
    if workers and method != "zstd":
        raise backup_catalog.BackupError(
            "compression_workers works with zstd only (PostgreSQL's long-distance workers)")
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
            raise backup_catalog.BackupError(
                "extra_args may not contain %s: the module owns that option (use its own parameter: target "
                "directory, format, WAL method, label, compression, checkpoint, max_rate, connection)" % arg)


def basebackup_argv(pg_basebackup, target_dir, conn, label, checkpoint="fast", compression="lz4",
                    compression_location="server", compression_level=None, compression_workers=None,
                    max_rate=None, manifest_checksums="CRC32C", extra_args=None):
    """The pg_basebackup command line: tar format, WAL streamed into the backup, a manifest, progress.
    No password ever appears here: it reaches libpq through a pgpass file (see pgpass_env)."""
    if checkpoint not in ("fast", "spread"):
        raise backup_catalog.BackupError("checkpoint must be fast or spread; got %r" % (checkpoint,))
    check_extra_args(extra_args)
    argv = [pg_basebackup, "-D", target_dir, "-F", "t", "-X", "stream", "-c", checkpoint, "-l", label,
            "--manifest-checksums=" + manifest_checksums, "--progress", "--no-password"]
    comp = compress_option(compression, compression_location, compression_level, compression_workers)
    if comp:
        argv.append("--compress=" + comp)
    if max_rate:
        argv += ["-r", str(max_rate)]
    argv += pg_connection.conn_argv(conn)
    argv += [str(a) for a in (extra_args or [])]
    return argv


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
        walker = backup_tar.TarWalker(self.algorithm)
        decomp = backup_tar.decompressor_for(name)
        in_place = isinstance(self.repository, repo_local.LocalRepository)
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
                    raise backup_catalog.BackupError("stopped while reading %s" % name)
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


def take_backup(repository, conn_params, identity, pg_bin=pg_version.DEFAULT_PG_BIN, label=None,
                staging_dir=None, checkpoint="fast", compression="lz4", compression_location="server",
                compression_level=None, compression_workers=None, max_rate=None, extra_args=None,
                region="", progress_file=None, now=None):
    """Run pg_basebackup into the repository. Returns the catalog record (plus duration and throughput).
    ``progress_file``: a JSON file rewritten about once a second with pg_basebackup's own progress and the bytes
    stored so far, for a poller (the backup role) to show."""
    backup_id = backup_catalog.new_backup_id("F", now)
    label = label or "immersiverse-dr-" + backup_id
    repo_base.validate_name(label, "label")
    prefix = "backup/%s/" % backup_id
    if repository.head(prefix + backup_catalog.RECORD) is not None or repository.list(prefix):
        raise backup_catalog.BackupError("a backup %s is already in %s: retry in a second" % (backup_id,
                                                                                              repository.describe()))
    algorithm = "CRC32C" if backup_tar.HAS_CRC32C else "SHA256"
    local = isinstance(repository, repo_local.LocalRepository)
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
        raise backup_catalog.BackupError(repo_local.disk_error_message(exc, work_root)) from None
    target = os.path.join(work, "data")
    started = backup_catalog.utcnow()
    t0 = time.monotonic()
    marker = {"id": backup_id, "label": label, "host": socket.gethostname(), "pid": os.getpid(),
              "started": backup_catalog.iso(started), "region": region}
    repository.put_bytes(prefix + backup_catalog.IN_PROGRESS, json.dumps(marker).encode(), overwrite=True)
    env, pgpass = pg_connection.pgpass_env(conn_params, work)
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
            raise backup_catalog.BackupError("pg_basebackup failed (exit %d): %s" % (rc, _tail(stderr_path)))
        if follower.error is not None:
            raise backup_catalog.BackupError("streaming the backup into %s failed: %s"
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
                walker = backup_tar.TarWalker("NONE")
                decomp = backup_tar.decompressor_for(name)
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
        problems = backup_tar.manifest_self_check(manifest_raw) + backup_tar.check_manifest(manifest, walked)
        problems += backup_tar.check_wal(manifest, wal_names,
                                         identity.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE)
        if problems:
            raise backup_catalog.BackupError("the backup does not match its manifest, so it does not count: %s"
                                             % "; ".join(problems[:10]))
        label_info = backup_tar.parse_backup_label(kept.get("backup_label", b"").decode("utf-8", "replace"))
        rng = manifest["WAL-Ranges"][0]
        stopped = backup_catalog.utcnow()
        duration = time.monotonic() - t0
        db_bytes = sum(f.get("Size", 0) for f in manifest.get("Files", []))
        stored = sum(info["size"] for info in files.values())
        record = {
            "format": backup_catalog.CATALOG_FORMAT,
            "kind": "full",
            "id": backup_id,
            "label": label,
            "region": region,
            "host": socket.gethostname(),
            "system_identifier": identity["system_identifier"],
            "pg_version": identity["pg_version"],
            "wal_segment_size": identity.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE,
            "timeline": int(rng["Timeline"]),
            "start_lsn": rng["Start-LSN"],
            "stop_lsn": rng["End-LSN"],
            "checkpoint_lsn": label_info.get("checkpoint_lsn"),
            "start_wal": wal_naming.segment_of_lsn(int(rng["Timeline"]), rng["Start-LSN"],
                                                   identity.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE),
            "stop_wal": wal_naming.segment_of_lsn(int(rng["Timeline"]), rng["End-LSN"],
                                                  identity.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE),
            "start_time": backup_catalog.iso(started),
            "stop_time": backup_catalog.iso(stopped),
            "backup_from": label_info.get("backup_from"),
            "compression": {"method": compression, "location": compression_location, "level": compression_level,
                            "workers": compression_workers},
            "manifest_checksum_algorithm": algorithm,
            "database_bytes": db_bytes,
            "stored_bytes": stored,
            "files": [{"name": name, "size": info["size"], "sha256": info["sha256"]}
                      for name, info in sorted(files.items())],
            "verification": {"result": "ok", "time": backup_catalog.iso(stopped),
                             "method": "manifest+wal, while streaming",
                             "files_checked": len(manifest.get("Files", []))},
            "duration_seconds": round(duration, 3),
        }
        repository.put_bytes(prefix + backup_catalog.RECORD, json.dumps(record, indent=1, sort_keys=True).encode())
        repository.delete([prefix + backup_catalog.IN_PROGRESS])
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
            backup_catalog.remove_backup(repository, backup_id)
        except repo_base.RepositoryError:
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
    doc = dict(extra, phase=phase, time=backup_catalog.iso(backup_catalog.utcnow()))
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
        doc = {"id": self.backup_id, "phase": phase, "stored_bytes": self.stored,
               "time": backup_catalog.iso(backup_catalog.utcnow())}
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
