# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository on a local or mounted filesystem: objects written to a temporary name, fsynced and renamed
(create-only by hard link), with the sha256 in a sidecar.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import threading

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base


# -- local directory ---------------------------------------------------------------------------------------------
class LocalRepository(repo_base.Repository):
    """A directory (local disk, NFS, a mounted volume). Writes go to a temporary name, are fsynced, then renamed."""

    kind = "local"

    def __init__(self, path, name=""):
        super().__init__(name)
        if not path or not os.path.isabs(path):
            raise ValueError("repository.path must be an absolute directory path, got %r" % (path,))
        self.root = os.path.normpath(path)

    def describe(self):
        return "local repository %s" % self.root

    def check(self):
        probe = self.root
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise repo_base.RepositoryError("%s: %s is not writable by this user" % (self.describe(), probe))

    def _path(self, key):
        return os.path.join(self.root, *repo_base.validate_key(key).split("/"))

    def writer(self, key, overwrite=False):
        return _LocalWriter(self, key, overwrite)

    def open(self, key):
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise repo_base.NotFound("%s has no %s" % (self.describe(), key)) from None

    def head(self, key):
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        info = repo_base.ObjectInfo(key=key, size=st.st_size, mtime=mtime)
        sidecar = _read_sidecar(path)
        if sidecar:
            info["sha256"] = sidecar
        return info

    def list(self, prefix=""):
        base = self.root
        found = []
        start = os.path.join(base, *[p for p in prefix.split("/")[:-1] if p]) if "/" in prefix else base
        if not os.path.isdir(start):
            return found
        for dirpath, _dirs, files in os.walk(start):
            for fname in files:
                if fname.startswith("."):
                    continue  # temporary files and checksum sidecars
                full = os.path.join(dirpath, fname)
                key = os.path.relpath(full, base).replace(os.sep, "/")
                if key.startswith(prefix):
                    st = os.stat(full)
                    found.append(repo_base.ObjectInfo(key=key, size=st.st_size,
                                                      mtime=datetime.datetime.fromtimestamp(st.st_mtime,
                                                                                            datetime.timezone.utc)))
        found.sort(key=lambda o: o["key"])
        return found

    def delete(self, keys):
        deleted = []
        for key in keys:
            path = self._path(key)
            for victim in (path, _sidecar_path(path)):
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass
            deleted.append(key)
            _prune_empty_dirs(os.path.dirname(path), self.root)
        return deleted, {}

    def create(self, key, data):
        dest = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        tmp = os.path.join(os.path.dirname(dest),
                           ".%s.create-%d-%d" % (os.path.basename(dest), os.getpid(), threading.get_ident()))
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, dest)  # fails when the name exists, whoever made it: the atomic create
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            side = _sidecar_path(dest)
            with open(side + ".tmp-%d" % os.getpid(), "w") as fh:
                fh.write(digest + "\n")
            os.replace(side + ".tmp-%d" % os.getpid(), side)
            fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise repo_base.RepositoryError(disk_error_message(exc, self.describe())) from None
        return True

    def adopt(self, key, path, sha256=None):
        """Move a file already on the repository's filesystem into place (no copy), fsynced, with its sha256.
        Returns its ObjectInfo."""
        dest = self._path(key)
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if sha256:
                with open(_sidecar_path(dest), "w") as fh:
                    fh.write(sha256 + "\n")
            os.replace(path, dest)
            fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            raise repo_base.RepositoryError(disk_error_message(exc, self.describe())) from None
        return self.head(key)


def _sidecar_path(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".sha256")


def _read_sidecar(path):
    try:
        with open(_sidecar_path(path)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune_empty_dirs(path, root):
    while path.startswith(root) and path != root:
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)


def disk_error_message(exc, where):
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return "no space left on %s: free space or point the repository/staging elsewhere (%s)" % (where, exc)
    return "cannot write to %s: %s" % (where, exc)


class _LocalWriter:
    def __init__(self, repo, key, overwrite):
        self.repo = repo
        self.key = key
        self.path = repo._path(key)
        if not overwrite and os.path.exists(self.path):
            self.existing = repo.head(key)
        else:
            self.existing = None
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.tmp = os.path.join(os.path.dirname(self.path), ".%s.tmp-%d" % (os.path.basename(self.path),
                                                                            os.getpid()))
        self.fh = open(self.tmp, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        try:
            self.fh.write(data)
        except OSError as exc:
            self.abort()
            raise repo_base.RepositoryError(disk_error_message(exc, self.repo.describe())) from None
        self.sha256.update(data)
        self.size += len(data)

    def commit(self, sha256=None):
        digest = self.sha256.hexdigest()
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            if self.existing is not None:
                if self.existing.get("sha256") == digest:
                    os.unlink(self.tmp)
                    self.existing["unchanged"] = True
                    return self.existing
                os.unlink(self.tmp)
                self.repo._same_or_refuse(self.key, self.existing, digest)
            with open(_sidecar_path(self.path), "w") as fh:
                fh.write(digest + "\n")
            os.replace(self.tmp, self.path)
            fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.abort()
            raise repo_base.RepositoryError(disk_error_message(exc, self.repo.describe())) from None
        return repo_base.ObjectInfo(key=self.key, size=self.size, sha256=digest)

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
