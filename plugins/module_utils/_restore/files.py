# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing a backup's files into a staging directory: each archive streamed, checked against its stored sha256
and the backup manifest while it is written, in parallel stages.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import tar as backup_tar
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

CHUNK = 1024 * 1024


# -- restoring the files ---------------------------------------------------------------------------------------------
class _FileSink:
    """Receives a tar stream's members from a TarWalker and writes them under ``root``, refusing escapes."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.fd = None
        self.files = 0

    def _path(self, name):
        if name.startswith("/") or ".." in name.split("/"):
            raise restore_target.RestoreError("archive member %r would land outside the data directory" % name)
        path = os.path.join(self.root, name)
        parent = os.path.realpath(os.path.dirname(path))
        if parent != self.root and not parent.startswith(self.root + os.sep):
            raise restore_target.RestoreError("archive member %r would land outside the data directory" % name)
        return path

    def start(self, name, typeflag):
        path = self._path(name.rstrip("/"))
        if typeflag == b"5":
            os.makedirs(path, mode=0o700, exist_ok=True)
        elif typeflag in (b"0", b"\0", b"7"):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.files += 1
        elif typeflag in (b"1", b"2"):
            raise restore_target.RestoreError(
                "archive member %r is a link: backups with tablespaces are not restorable by this "
                "version (restore them with pg_basebackup's tar files and tar -x)" % name)

    def write(self, view):
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def end(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _stage(func, inq, outq, errors):
    """One stage of the restore pipeline: func(item) -> item for the next stage (None ends the stream)."""
    item = None
    try:
        for _item in range(1 << 40):
            item = inq.get()
            if item is None or errors:
                break
            result = func(item)
            if outq is not None and result:
                outq.put(result)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        errors.append(exc)
    finally:
        if outq is not None:
            outq.put(None)
        for _rest in range(1 << 40):  # drain so an upstream producer never blocks forever
            if item is None:
                break
            item = inq.get()


def _restore_archive(repository, key, name, expected_sha, dest, walker, progress=None):
    """Fetch, hash, decompress, walk and write one tar archive with three threads (reading, decompressing and
    writing each release the GIL in their C parts, so the stages overlap on two cores)."""
    os.makedirs(dest, mode=0o700, exist_ok=True)
    sink = _FileSink(dest)
    walker.sink = sink
    sha = hashlib.sha256()
    decomp = backup_tar.decompressor_for(name)
    errors = []
    q_raw, q_plain = queue.Queue(maxsize=8), queue.Queue(maxsize=8)

    bounded = hasattr(decomp, "needs_input")  # lz4: output in pieces of at most CHUNK

    def decompress(data):
        # A 1 MiB lz4 chunk of a database expands to up to 16 MiB (empty pages); unbounded, each piece is a fresh
        # mmap'd allocation (page faults) that the CRC and the write then re-read from memory. Pieces of CHUNK are
        # reused and stay in the CPU caches: for 1.9 GB, system time 2.6 -> 1.3 s, wall 7.5 -> 5.2 s (bench/restore.py)
        if not bounded:
            return [decomp.decompress(data)]
        pieces = [decomp.decompress(data, max_length=CHUNK)]
        for _piece in range(1 << 20):  # bounded: lz4 expands at most ~255x
            if decomp.needs_input or decomp.eof:
                break
            pieces.append(decomp.decompress(b"", max_length=CHUNK))
        return pieces

    def walk(pieces):
        for data in pieces:
            walker.feed(data)
            if progress:
                progress(len(data))

    workers = [threading.Thread(target=_stage, args=(decompress, q_raw, q_plain, errors), daemon=True),
               threading.Thread(target=_stage, args=(walk, q_plain, None, errors), daemon=True)]
    for w in workers:
        w.start()
    stream = repository.open(key)
    try:
        for _chunk in range(1 << 40):
            if errors:
                break
            data = stream.read(CHUNK)
            if not data:
                break
            sha.update(data)
            q_raw.put(data)
    except repo_base.RepositoryError as exc:
        errors.append(exc)
    finally:
        q_raw.put(None)
        for w in workers:
            w.join()
        sink.end()
        close = getattr(stream, "close", None)
        if close:
            close()
    if errors:
        exc = errors[0]
        if isinstance(exc, (restore_target.RestoreError, repo_base.RepositoryError)) or not isinstance(exc, Exception):
            raise exc
        raise restore_target.RestoreError("%s: %s" % (name, exc)) from exc
    if sha.hexdigest() != expected_sha:
        raise restore_target.RestoreError(
            "%s of backup %s does not match its stored sha256: the copy in %s is damaged. Nothing "
            "was put in place; restore from another region's copy (repository) or an older backup"
            % (name, key.split("/")[-2], repository.describe()))
    return sink.files


def restore_files(repository, record, dest, progress=None):
    """Restore a backup's files into the empty directory ``dest``, checking the stored sha256 of every object
    and the manifest's checksum of every file. Returns a summary."""
    names = {f["name"]: f for f in record["files"]}
    extra = [n for n in names if not (n.startswith(("base.tar", "pg_wal.tar")) or n == "backup_manifest")]
    if extra:
        raise restore_target.RestoreError("backup %s has tablespace archives (%s): not restorable by this version"
                                          % (record["id"], ", ".join(extra)))
    prefix = "backup/%s/" % record["id"]
    manifest_raw = repository.get_bytes(prefix + "backup_manifest")
    if hashlib.sha256(manifest_raw).hexdigest() != names["backup_manifest"]["sha256"]:
        raise restore_target.RestoreError(
            "backup_manifest of %s does not match its stored sha256: damaged" % record["id"])
    manifest = json.loads(manifest_raw)
    algorithm = record.get("manifest_checksum_algorithm") or "CRC32C"
    base_name = next(n for n in names if n.startswith("base.tar"))
    walker = backup_tar.TarWalker(algorithm, keep=())
    t0 = time.monotonic()
    files = _restore_archive(repository, prefix + base_name, base_name, names[base_name]["sha256"], dest, walker,
                             progress)
    wal_names = []
    wal_name = next((n for n in names if n.startswith("pg_wal.tar")), None)
    if wal_name:
        wal_walker = backup_tar.TarWalker("NONE", keep=())
        files += _restore_archive(repository, prefix + wal_name, wal_name, names[wal_name]["sha256"],
                                  os.path.join(dest, "pg_wal"), wal_walker, progress)
        wal_names = list(wal_walker.files)
    problems = backup_tar.check_manifest(manifest, walker.files)
    problems += backup_tar.check_wal(manifest, wal_names,
                                     record.get("wal_segment_size") or wal_naming.DEFAULT_SEGMENT_SIZE)
    if problems:
        raise restore_target.RestoreError("the restored files do not match backup %s's manifest: %s"
                                          % (record["id"], "; ".join(problems[:10])))
    with open(os.path.join(dest, "backup_manifest"), "wb") as fh:
        fh.write(manifest_raw)
    for sub in ("pg_wal/archive_status",):
        os.makedirs(os.path.join(dest, sub), mode=0o700, exist_ok=True)
    os.chmod(dest, 0o700)
    return {"files": files, "bytes": sum(f.get("Size", 0) for f in manifest.get("Files", [])),
            "seconds": round(time.monotonic() - t0, 3)}
