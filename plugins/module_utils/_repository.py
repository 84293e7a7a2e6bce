# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup repository: one interface, a local-directory and an S3 implementation.

Keys are relative to the repository's root (``backup/<id>/base.tar.lz4``, ``wal/...``, ``logical/<id>/...``) and
are validated part by part: no ``..``, no absolute paths, nothing outside ``[A-Za-z0-9._-]``. Every write reports
the sha256 of what was stored. A write never replaces different content under an existing name unless the
caller says so. S3 goes through boto3 with ``endpoint_url``, so AWS, MinIO and Ceph work unchanged; retries are
declared once, here (botocore's standard mode: exponential back-off with jitter).

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

# boto3 is imported when the first S3 repository is made (a quarter of a second here): the WAL commands that
# PostgreSQL runs for local repositories, or before any S3 call, do not pay for it.
boto3 = None
botocore = None
BOTO3_IMPORT_ERROR = None


def load_boto3():
    """Import boto3 and botocore on first use; True when they are there."""
    global boto3, botocore, BOTO3_IMPORT_ERROR  # noqa: PLW0603  # pylint: disable=global-statement
    if boto3 is None and BOTO3_IMPORT_ERROR is None:
        try:
            import boto3 as boto3_mod
            import botocore.config
            import botocore.exceptions

            boto3 = boto3_mod
            botocore = sys.modules["botocore"]
        except ImportError as exc:  # pragma: no cover - reported to the caller
            BOTO3_IMPORT_ERROR = exc
    return boto3 is not None


# One boto3 session per process for every S3 repository it opens: a session of its own loads the S3 service model
# again (0.07-0.2 s a client here, against 5 ms from a shared one), and the failover's runbook lock opens one per
# region on its critical path. Credentials and region go to each client, so repositories never share them. A client
# made by a botocore session is not thread-safe to create: the lock. A forked process makes its own.
_SESSION = {"pid": None, "session": None}
_SESSION_LOCK = threading.Lock()


def _after_fork_in_child():
    """A forked child starts with a lock of its own: one held by another thread at the fork would never be let go."""
    global _SESSION_LOCK  # noqa: PLW0603  # pylint: disable=global-statement
    _SESSION_LOCK = threading.Lock()
    _SESSION.update(pid=None, session=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def s3_client(config, verify, endpoint_url=None, region=None, access_key=None, secret_key=None, session_token=None):
    """An S3 client from this process's shared session, with these credentials and region (None: the default
    chain, as a session of its own would resolve them)."""
    with _SESSION_LOCK:
        if _SESSION["pid"] != os.getpid():
            _SESSION.update(pid=os.getpid(), session=boto3.session.Session())
        return _SESSION["session"].client("s3", endpoint_url=endpoint_url, config=config, verify=verify,
                                          region_name=region, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, aws_session_token=session_token)


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


def unavailable_errors(*more):
    """What a repository that is down, unreachable or unwritable raises: RepositoryError, OSError (a local
    directory), and botocore's own errors once boto3 is loaded (a body read that stalls or breaks), with ``more``
    exception classes. For ``except``."""
    found = (RepositoryError, OSError) + tuple(more)
    if botocore is not None:
        found += (botocore.exceptions.BotoCoreError,)
    return found


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


# -- local directory ---------------------------------------------------------------------------------------------
class LocalRepository(Repository):
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
            raise RepositoryError("%s: %s is not writable by this user" % (self.describe(), probe))

    def _path(self, key):
        return os.path.join(self.root, *validate_key(key).split("/"))

    def writer(self, key, overwrite=False):
        return _LocalWriter(self, key, overwrite)

    def open(self, key):
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound("%s has no %s" % (self.describe(), key)) from None

    def head(self, key):
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        info = ObjectInfo(key=key, size=st.st_size, mtime=mtime)
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
                    found.append(ObjectInfo(key=key, size=st.st_size,
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
            _fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RepositoryError(disk_error_message(exc, self.describe())) from None
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
            _fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            raise RepositoryError(disk_error_message(exc, self.describe())) from None
        return self.head(key)


def _sidecar_path(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".sha256")


def _read_sidecar(path):
    try:
        with open(_sidecar_path(path)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _fsync_dir(path):
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
            raise RepositoryError(disk_error_message(exc, self.repo.describe())) from None
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
            _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.abort()
            raise RepositoryError(disk_error_message(exc, self.repo.describe())) from None
        return ObjectInfo(key=self.key, size=self.size, sha256=digest)

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# -- S3 ------------------------------------------------------------------------------------------------------------
S3_ERROR_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it (playbooks/lab.yml, your IaC) or fix repository.bucket",
    "AccessDenied": "access denied: the credentials need s3:ListBucket, s3:GetObject, s3:PutObject and "
                    "s3:DeleteObject on this bucket and prefix",
    "AllAccessDisabled": "access to the bucket is disabled by its owner",
    "InvalidAccessKeyId": "the access key is not known to the endpoint: check repository.access_key / "
                          "AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check repository.secret_key",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "InvalidObjectState": "the object is archived (GLACIER/DEEP_ARCHIVE): request a restore from the archive "
                          "tier first",
    "PermanentRedirect": "the bucket lives in another region: set repository.region to the bucket's region",
    "AuthorizationHeaderMalformed": "wrong region for this bucket: set repository.region to the bucket's region",
}


class S3Repository(Repository):
    kind = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None, secret_key=None,
                 session_token=None, sse=None, sse_kms_key_id=None, storage_class=None, tags=None,
                 part_size_mb=16, concurrency=4, max_attempts=5, validate_certs=True, ca_bundle=None, name="",
                 connect_timeout=5, read_timeout=60):
        super().__init__(name)
        if not load_boto3():
            raise RepositoryError("boto3 is required for an S3 repository on this host: %s" % BOTO3_IMPORT_ERROR)
        if not bucket or not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ValueError("repository.bucket %r is not a valid S3 bucket name" % (bucket,))
        if sse not in (None, "", "none", "AES256", "aws:kms"):
            raise ValueError("repository.sse must be none, AES256 or aws:kms, got %r" % (sse,))
        if sse_kms_key_id and sse != "aws:kms":
            raise ValueError("repository.sse_kms_key_id needs repository.sse: aws:kms")
        self.bucket = bucket
        self.prefix = validate_prefix(prefix)
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.access_key = access_key or None
        self.part_size = max(5, int(part_size_mb)) * 1024 * 1024
        self.concurrency = max(1, int(concurrency))
        self.put_args = {}
        if sse and sse != "none":
            self.put_args["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self.put_args["SSEKMSKeyId"] = sse_kms_key_id
        if storage_class:
            self.put_args["StorageClass"] = storage_class
        if tags:
            from urllib.parse import urlencode

            self.put_args["Tagging"] = urlencode(sorted((str(k), str(v)) for k, v in tags.items()))
        # read_timeout is botocore's socket timeout: the longest silence within a request, not its total time. The
        # WAL fetch of a streaming standby passes short ones (and one attempt): a paused server must not hold it.
        self.timeouts = (float(connect_timeout), float(read_timeout), int(max_attempts))
        config = botocore.config.Config(
            retries={"max_attempts": int(max_attempts), "mode": "standard"},
            max_pool_connections=self.concurrency + 4,
            connect_timeout=float(connect_timeout), read_timeout=float(read_timeout),
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        verify = ca_bundle if ca_bundle else bool(validate_certs)
        self.client = s3_client(config, verify, endpoint_url=self.endpoint_url, region=self.region,
                                access_key=access_key or None, secret_key=secret_key or None,
                                session_token=session_token or None)
        self._lock_enabled = None
        # create(): a per-thread flag read by the before-sign hook, which adds the conditional header; retries of
        # that request are signed again and carry it too.
        self._if_none_match = threading.local()
        self.client.meta.events.register("before-sign.s3.PutObject", self._add_if_none_match)

    def _add_if_none_match(self, request=None, **_kwargs):
        if request is not None and getattr(self._if_none_match, "on", False):
            request.headers["If-None-Match"] = "*"

    def describe(self):
        where = "s3://%s/%s" % (self.bucket, self.prefix)
        return "S3 repository %s%s" % (where.rstrip("/"), " at " + self.endpoint_url if self.endpoint_url else "")

    def _key(self, key):
        key = validate_key(key)
        return self.prefix + "/" + key if self.prefix else key

    def _list_prefix(self, prefix):
        parts = str(prefix or "").split("/")
        for part in parts[:-1]:
            validate_name(part, "prefix part")
        if parts[-1]:
            validate_name(parts[-1], "prefix part")
        return (self.prefix + "/" if self.prefix else "") + "/".join(parts)

    def _rel(self, full):
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, operation, _if_none_match=False, **kwargs):
        """One S3 call with errors turned into RepositoryError that say what to do. ``_if_none_match``: the request
        carries ``If-None-Match: *`` (create only); an existing object is ObjectExists."""
        try:
            if _if_none_match:
                self._if_none_match.on = True
                try:
                    return getattr(self.client, operation)(**kwargs)
                finally:
                    self._if_none_match.on = False
            return getattr(self.client, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            raise self._error(exc, operation, kwargs.get("Key")) from None
        except botocore.exceptions.NoCredentialsError:
            raise RepositoryError("%s: no S3 credentials: set repository.access_key and repository.secret_key "
                                  "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance profile)"
                                  % self.describe()) from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError) as exc:
            raise RepositoryError("%s: cannot reach the S3 endpoint (%s): check the network path and "
                                  "repository.endpoint_url" % (self.describe(), exc)) from None

    def _error(self, exc, operation, key=None):
        err = exc.response.get("Error", {})
        code = err.get("Code") or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        if code in ("PreconditionFailed", "412") and operation == "put_object":
            return ObjectExists("%s already holds %s" % (self.describe(), self._rel(key)))
        if code in ("NoSuchKey", "404", "NotFound") and key:
            return NotFound("%s has no %s" % (self.describe(), self._rel(key)))
        if code == "403" and operation == "head_object":
            code = "AccessDenied"
        hint = S3_ERROR_HINTS.get(code, err.get("Message") or str(exc))
        what = " (%s)" % self._rel(key) if key else ""
        return RepositoryError("%s: %s failed%s: %s: %s" % (self.describe(), operation, what, code, hint))

    def check(self):
        """Prove the bucket exists and is listable with these credentials (a cheap preflight)."""
        self.call("list_objects_v2", Bucket=self.bucket, Prefix=self._list_prefix(""), MaxKeys=1)

    def head(self, key):
        try:
            resp = self.call("head_object", Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return None
        return self._info(key, resp)

    def _info(self, key, resp):
        info = ObjectInfo(key=key, size=resp.get("ContentLength"), mtime=resp.get("LastModified"),
                          storage_class=resp.get("StorageClass") or "STANDARD")
        sha = (resp.get("Metadata") or {}).get("sha256")
        if sha:
            info["sha256"] = sha
        if resp.get("ObjectLockMode"):
            info["lock_mode"] = resp["ObjectLockMode"]
            info["lock_until"] = resp.get("ObjectLockRetainUntilDate")
        if resp.get("ObjectLockLegalHoldStatus") == "ON":
            info["legal_hold"] = True
        if resp.get("Restore"):
            info["restore"] = resp["Restore"]
        return info

    def open(self, key):
        resp = self.call("get_object", Bucket=self.bucket, Key=self._key(key))
        return resp["Body"]

    def read(self, key):
        """One GET: the content and the sha256 from its metadata (no HEAD first)."""
        try:
            resp = self.call("get_object", Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return None
        return self._body(resp, key), self._info(key, resp)

    def read_start(self, key, size):
        try:
            resp = self.call("get_object", Bucket=self.bucket, Key=self._key(key), Range="bytes=0-%d" % (size - 1))
        except NotFound:
            return None
        return self._body(resp, key)

    def _body(self, resp, key):
        """The whole body of a GET; a transfer that stalls or breaks half-way is a RepositoryError like any other."""
        import urllib3.exceptions  # botocore's own dependency

        try:
            return resp["Body"].read()
        except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise RepositoryError("%s: reading %s broke off (%s): check the network path and repository.endpoint_url"
                                  % (self.describe(), key, exc)) from None

    def list(self, prefix=""):
        found = []
        token = None
        for _page in range(100000):  # bounded: 1000 keys a page
            kwargs = dict(Bucket=self.bucket, Prefix=self._list_prefix(prefix))
            if token:
                kwargs["ContinuationToken"] = token
            resp = self.call("list_objects_v2", **kwargs)
            for obj in resp.get("Contents", []):
                found.append(ObjectInfo(key=self._rel(obj["Key"]), size=obj["Size"], mtime=obj["LastModified"],
                                        storage_class=obj.get("StorageClass") or "STANDARD"))
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
        found.sort(key=lambda o: o["key"])
        return found

    def lock_enabled(self):
        if self._lock_enabled is None:
            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                self._lock_enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except botocore.exceptions.ClientError:
                self._lock_enabled = False
            except botocore.exceptions.BotoCoreError:
                self._lock_enabled = False
        return self._lock_enabled

    def locked(self, key):
        if not self.lock_enabled():
            return None
        info = self.head(key)
        if info is None:
            return None
        if info.get("legal_hold"):
            return "legal hold"
        until = info.get("lock_until")
        if info.get("lock_mode") and until and until > now_utc():
            return "object lock (%s) until %s" % (info["lock_mode"], until.isoformat())
        return None

    def delete(self, keys):
        deleted, skipped = [], {}
        todo = []
        for key in keys:
            reason = self.locked(key)
            if reason:
                skipped[key] = reason
            else:
                todo.append(key)
        for start in range(0, len(todo), 1000):
            batch = todo[start:start + 1000]
            resp = self.call("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True})
            failed = {self._rel(e["Key"]): "%s: %s" % (e.get("Code"), e.get("Message")) for e in resp.get("Errors", [])}
            skipped.update(failed)
            deleted.extend(k for k in batch if k not in failed)
        return deleted, skipped

    def writer(self, key, overwrite=False):
        existing = None if overwrite else self.head(key)
        return _S3Writer(self, key, existing)

    def put_bytes(self, key, data, overwrite=False):
        digest = hashlib.sha256(data).hexdigest()
        if not overwrite:
            existing = self.head(key)
            if existing is not None:
                return self._same_or_refuse(key, existing, digest)
        self.call("put_object", Bucket=self.bucket, Key=self._key(key), Body=data,
                  Metadata={"sha256": digest}, **self.put_args)
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    def create(self, key, data):
        # The header goes on the request itself (botocore's before-sign event), so a botocore too old to know the
        # IfNoneMatch parameter (Debian 12's, on the database hosts) sends it as well. A server that ignores it (S3
        # before 2024-08, old MinIO/Ceph) makes this a plain PUT: the caller's read-before-write still refuses
        # different content seen at that moment, but two writers in the same instant are no longer kept apart.
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.call("put_object", Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest},
                      _if_none_match=True, **self.put_args)
        except ObjectExists:
            return False
        return True

    def same_store(self, other):
        return (isinstance(other, S3Repository) and other.endpoint_url == self.endpoint_url
                and other.access_key == self.access_key)

    def server_copy(self, other, key):
        src = {"Bucket": other.bucket, "Key": other._key(key)}
        head = other.call("head_object", **src)
        size = head.get("ContentLength") or 0
        extra = dict(self.put_args)
        extra.pop("Tagging", None)
        if size <= 5 * 1024 * 1024 * 1024:
            self.call("copy_object", Bucket=self.bucket, Key=self._key(key), CopySource=src,
                      MetadataDirective="COPY", **extra)
        else:
            try:
                self.client.copy(src, self.bucket, self._key(key), ExtraArgs=extra or None)
            except botocore.exceptions.ClientError as exc:
                raise self._error(exc, "copy", self._key(key)) from None
        info = self.head(key)
        if info is None or info.get("size") != size:
            raise RepositoryError("%s: server-side copy of %s did not arrive whole" % (self.describe(), key))
        return info


class _S3Writer:
    """Streams into S3: one PUT for small objects, multipart (parts uploaded by a bounded thread pool) otherwise.
    Nothing is visible under the key until commit() completes the upload; abort() leaves nothing behind."""

    def __init__(self, repo, key, existing):
        self.repo = repo
        self.key = key
        self.full = repo._key(key)
        self.existing = existing
        self.buffer = bytearray()
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.upload_id = None
        self.parts = []
        self.futures = []
        self.pool = None
        self.lock = threading.Lock()

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        self.buffer += data
        while len(self.buffer) >= self.repo.part_size:
            part = bytes(self.buffer[:self.repo.part_size])
            del self.buffer[:self.repo.part_size]
            self._submit(part)

    def _submit(self, data):
        if self.upload_id is None:
            resp = self.repo.call("create_multipart_upload", Bucket=self.repo.bucket, Key=self.full,
                                  **self.repo.put_args)
            self.upload_id = resp["UploadId"]
            self.pool = ThreadPoolExecutor(max_workers=self.repo.concurrency)
        number = len(self.futures) + 1
        # bounded memory: at most `concurrency` parts in flight
        in_flight = [f for f in self.futures if not f.done()]
        if len(in_flight) >= self.repo.concurrency:
            in_flight[0].result()
        self.futures.append(self.pool.submit(self._upload_part, number, data))

    def _upload_part(self, number, data):
        resp = self.repo.call("upload_part", Bucket=self.repo.bucket, Key=self.full, UploadId=self.upload_id,
                              PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def commit(self, sha256=None):
        digest = self.sha256.hexdigest()
        if self.existing is not None:
            self.abort()
            return self.repo._same_or_refuse(self.key, self.existing, digest)
        try:
            if self.upload_id is None:
                self.repo.call("put_object", Bucket=self.repo.bucket, Key=self.full, Body=bytes(self.buffer),
                               Metadata={"sha256": digest}, **self.repo.put_args)
            else:
                if self.buffer:
                    self._submit(bytes(self.buffer))
                    self.buffer = bytearray()
                parts = [f.result() for f in self.futures]
                self.repo.call("complete_multipart_upload", Bucket=self.repo.bucket, Key=self.full,
                               UploadId=self.upload_id, MultipartUpload={"Parts": parts})
                self.pool.shutdown(wait=True)
        except BaseException:
            self.abort()
            raise
        return ObjectInfo(key=self.key, size=self.size, sha256=digest)

    def abort(self):
        if self.pool is not None:
            for f in self.futures:
                f.cancel()
            self.pool.shutdown(wait=True)
        if self.upload_id is not None:
            try:
                self.repo.client.abort_multipart_upload(Bucket=self.repo.bucket, Key=self.full,
                                                        UploadId=self.upload_id)
            except Exception:  # best effort: the bucket's abort-incomplete-multipart rule is the backstop
                pass
            self.upload_id = None


# -- construction from module / config parameters --------------------------------------------------------------------
def repository_argument_spec():
    """The ``repository`` option every backup module shares (see doc_fragments/repository.py)."""
    return dict(
        type=dict(type="str", default="s3", choices=["s3", "local"]),
        name=dict(type="str", default=""),
        path=dict(type="path"),
        bucket=dict(type="str"),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
        session_token=dict(type="str", no_log=True),
        sse=dict(type="str", choices=["none", "AES256", "aws:kms"]),
        sse_kms_key_id=dict(type="str", no_log=False),
        storage_class=dict(type="str"),
        tags=dict(type="dict"),
        part_size_mb=dict(type="int", default=16),
        concurrency=dict(type="int", default=4),
        max_attempts=dict(type="int", default=5),
        validate_certs=dict(type="bool", default=True),
        ca_bundle=dict(type="path"),
    )


def open_repository(spec):
    """A Repository from a ``repository`` dict (module option, CLI config)."""
    spec = dict(spec or {})
    kind = spec.get("type") or ("local" if spec.get("path") and not spec.get("bucket") else "s3")
    name = spec.get("name") or ""
    if name:
        validate_name(name, "repository.name")
    if kind == "local":
        return LocalRepository(spec.get("path"), name=name)
    if kind == "s3":
        return S3Repository(
            spec.get("bucket"), prefix=spec.get("prefix") or "", endpoint_url=spec.get("endpoint_url"),
            region=spec.get("region"), access_key=spec.get("access_key"), secret_key=spec.get("secret_key"),
            session_token=spec.get("session_token"), sse=spec.get("sse"),
            sse_kms_key_id=spec.get("sse_kms_key_id"), storage_class=spec.get("storage_class"),
            tags=spec.get("tags"), part_size_mb=spec.get("part_size_mb") or 16,
            concurrency=spec.get("concurrency") or 4,
            max_attempts=5 if spec.get("max_attempts") is None else spec["max_attempts"],
            validate_certs=spec.get("validate_certs", True), ca_bundle=spec.get("ca_bundle"), name=name,
            # not module options: the WAL engine's configuration sets them (a streaming standby's fetch)
            connect_timeout=spec.get("connect_timeout") or 5, read_timeout=spec.get("read_timeout") or 60)
    raise ValueError("repository.type must be s3 or local, got %r" % (kind,))
