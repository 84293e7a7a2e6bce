# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup repository's interface, which the local directory (local.py) and S3 (s3.py) implement.

Keys are relative to the repository's root (``backup/<id>/base.tar.lz4``, ``wal/...``, ``logical/<id>/...``) and
are validated part by part: no ``..``, no absolute paths, nothing outside ``[A-Za-z0-9._-]``. Every write reports
the sha256 of what was stored. A write never replaces different content under an existing name unless the
caller says so. S3 goes through boto3 with ``endpoint_url``, so AWS, MinIO and Ceph work unchanged; retries are
declared once, here (botocore's standard mode: exponential back-off with jitter).

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import datetime
import hashlib
import re

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors


CHUNK = 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
MAX_NAME = 128


class RepositoryError(_errors.DrError):
    """A repository problem the operator can act on; the message says what and what to do next."""


class ChecksumMismatch(RepositoryError):
    pass


class ObjectExists(RepositoryError):
    pass


class NotFound(RepositoryError):
    pass


# -- names -----------------------------------------------------------------------------------------------------
def validate_name(value, what="name"):
    """A label, id or key part: letters, digits, ``._-``; no path tricks. Returns the value or raises ValueError."""
    text = "" if value is None else str(value)
    if not text or len(text) > MAX_NAME or not NAME_RE.match(text) or ".." in text:
        raise ValueError(
            "%s %r is not allowed: use 1-%d of A-Z a-z 0-9 . _ - (not starting with '.' or '-', no '..', no '/')"
            % (what, text, MAX_NAME))
    return text


def validate_key(key, what="key"):
    parts = str(key or "").split("/")
    for part in parts:
        validate_name(part, what + " part")
    return "/".join(parts)


def validate_prefix(prefix, what="prefix"):
    """An S3 prefix or path below a root: name parts joined by '/'; may be empty."""
    text = str(prefix or "").strip("/")
    if not text:
        return ""
    return validate_key(text, what)


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


class ObjectInfo(dict):
    """key, size, sha256 (when known), mtime (datetime), storage_class, plus anything the backend adds."""


class HashingReader:
    """Wraps a readable stream and hashes what is read through it."""

    def __init__(self, stream):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size=-1):
        data = self.stream.read(size)
        if data:
            self.sha256.update(data)
            self.size += len(data)
        return data

    def close(self):
        close = getattr(self.stream, "close", None)
        if close:
            close()


class Repository:
    """The interface. ``name`` is what reports call it (a region), ``describe()`` never contains a secret."""

    kind = "abstract"

    def __init__(self, name=""):
        self.name = name or self.kind

    # writes
    def writer(self, key, overwrite=False):
        """A streaming writer: ``write(bytes)``, ``commit() -> ObjectInfo``, ``abort()``."""
        raise NotImplementedError

    def put_bytes(self, key, data, overwrite=False):
        existing = None if overwrite else self.head(key)
        digest = hashlib.sha256(data).hexdigest()
        if existing is not None:
            return self._same_or_refuse(key, existing, digest)
        w = self.writer(key, overwrite=True)
        try:
            w.write(data)
            return w.commit(sha256=digest)
        except BaseException:
            w.abort()
            raise

    def create(self, key, data):
        """Store ``data`` under ``key`` only if nothing is stored there, in one atomic step: two writers racing for one
        name never both succeed, and neither replaces the other. True: stored; False: something was already there
        (the caller compares it). Local: ``link(2)`` of a finished temporary file; S3: ``If-None-Match: *``."""
        raise NotImplementedError

    def put_file(self, key, path, overwrite=False):
        with open(path, "rb") as src:
            return self.put_stream(key, src, overwrite=overwrite)

    def put_stream(self, key, stream, overwrite=False):
        w = self.writer(key, overwrite=overwrite)
        try:
            while True:
                data = stream.read(CHUNK * 8)
                if not data:
                    break
                w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def _same_or_refuse(self, key, existing, digest):
        if existing.get("sha256") == digest:
            existing["unchanged"] = True
            return existing
        raise ObjectExists(
            "%s already holds %s with different content (sha256 %s, new %s): refusing to overwrite it; "
            "find out why two different files claim the same name before removing either"
            % (self.describe(), key, existing.get("sha256") or "unknown", digest))

    # reads
    def open(self, key):
        raise NotImplementedError

    def get_bytes(self, key):
        stream = self.open(key)
        try:
            return stream.read()
        finally:
            stream.close()

    def head(self, key):
        """ObjectInfo, or None when the key does not exist."""
        raise NotImplementedError

    def read(self, key):
        """``(content, ObjectInfo)`` of a whole object, or None when it does not exist. The info carries the
        sha256 recorded at write time where the store keeps one."""
        info = self.head(key)
        if info is None:
            return None
        return self.get_bytes(key), info

    def read_start(self, key, size):
        """The first ``size`` bytes of an object, or None when it does not exist."""
        try:
            stream = self.open(key)
        except NotFound:
            return None
        try:
            return stream.read(size)
        finally:
            stream.close()

    def list(self, prefix=""):
        """ObjectInfo for every key under prefix (a key prefix, not necessarily a directory), sorted by key."""
        raise NotImplementedError

    def delete(self, keys):
        """Delete keys; returns ``(deleted, skipped)`` where skipped maps key → reason (locked, ...)."""
        raise NotImplementedError

    def locked(self, key):
        """Why the key may not be deleted now (object lock, legal hold), or None."""
        return None

    def describe(self):
        raise NotImplementedError

    def check(self):
        """A cheap preflight that the repository is reachable and usable; raises RepositoryError."""

    def same_store(self, other):
        """True when a server-side copy from ``other`` to here is possible."""
        return False

    def server_copy(self, other, key):
        raise NotImplementedError

    def verify(self, key, expected_sha256, expected_size=None):
        """Read the whole object back and compare; ChecksumMismatch names what differs."""
        stream = HashingReader(self.open(key))
        try:
            while stream.read(CHUNK * 8):
                pass
        finally:
            stream.close()
        digest = stream.sha256.hexdigest()
        if expected_size is not None and stream.size != expected_size:
            raise ChecksumMismatch("%s: %s is %d bytes, the catalog says %d"
                                   % (self.describe(), key, stream.size, expected_size))
        if digest != expected_sha256:
            raise ChecksumMismatch("%s: %s has sha256 %s, the catalog says %s: the stored object is damaged"
                                   % (self.describe(), key, digest, expected_sha256))
        return stream.size


def copy_object(src, dst, key, expected_sha256=None, overwrite=False):
    """Copy one object between repositories: server-side where the store allows it, else streamed with the
    sha256 recomputed on the way and compared. Returns the destination's ObjectInfo (``method`` says how)."""
    existing = dst.head(key)
    if existing is not None and not overwrite:
        if expected_sha256 and existing.get("sha256") == expected_sha256:
            existing["unchanged"] = True
            existing["method"] = "present"
            return existing
    if dst.same_store(src):
        info = dst.server_copy(src, key)
        info["method"] = "server-side"
        return info
    reader = HashingReader(src.open(key))
    try:
        info = dst.put_stream(key, reader, overwrite=True)
    finally:
        reader.close()
    digest = reader.sha256.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        dst.delete([key])
        raise ChecksumMismatch("%s: %s read with sha256 %s while copying, the catalog says %s: not copied"
                               % (src.describe(), key, digest, expected_sha256))
    info["method"] = "streamed"
    return info
