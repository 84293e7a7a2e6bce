# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository in an S3 bucket through boto3 (AWS, Ceph RGW, MinIO: ``endpoint_url``): multipart uploads,
create-only writes (``If-None-Match``), the sha256 in object metadata, one shared boto3 session per process.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base

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


def after_fork_in_child():
    """A forked child starts with a lock of its own: one held by another thread at the fork would never be let go."""
    global _SESSION_LOCK  # noqa: PLW0603  # pylint: disable=global-statement
    _SESSION_LOCK = threading.Lock()
    _SESSION.update(pid=None, session=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)


def s3_client(config, verify, endpoint_url=None, region=None, access_key=None, secret_key=None, session_token=None):
    """An S3 client from this process's shared session, with these credentials and region (None: the default
    chain, as a session of its own would resolve them)."""
    with _SESSION_LOCK:
        if _SESSION["pid"] != os.getpid():
            _SESSION.update(pid=os.getpid(), session=boto3.session.Session())
        return _SESSION["session"].client("s3", endpoint_url=endpoint_url, config=config, verify=verify,
                                          region_name=region, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, aws_session_token=session_token)


def content_md5(data):
    """The Content-MD5 header of a body: transport integrity, not security (FIPS builds allow it as such); None
    where this Python has no MD5 at all (the request then goes without, as botocore's own would)."""
    try:
        try:
            digest = hashlib.md5(data, usedforsecurity=False)
        except TypeError:  # pragma: no cover - Python before 3.9
            digest = hashlib.md5(data)  # nosec B324
    except ValueError:  # pragma: no cover - MD5 disabled outright
        return None
    return base64.b64encode(digest.digest()).decode()


def checksum_options(endpoint_url):
    """botocore Config options for an S3-compatible server (endpoint_url set): checksums only where the operation
    requires one. botocore 1.36 and later otherwise send every PutObject over HTTPS as aws-chunked with a trailing
    CRC32, which servers that predate that (Ceph RGW 16.2 in the lab: MissingContentLength; older MinIO) refuse.
    Bodies carry a Content-MD5 instead (S3Repository.call), and the collection's own SHA-256 (object metadata,
    checked on every read of a WAL segment or backup file) is the integrity check. AWS itself (no endpoint_url)
    keeps botocore's default; an older botocore has no such options (and adds a Content-MD5 itself)."""
    known = getattr(botocore.config.Config, "OPTION_DEFAULTS", {})
    if not endpoint_url or "request_checksum_calculation" not in known:
        return {}
    return {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


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


class S3Repository(repo_base.Repository):
    kind = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None, secret_key=None,
                 session_token=None, sse=None, sse_kms_key_id=None, storage_class=None, tags=None,
                 part_size_mb=16, concurrency=4, max_attempts=5, validate_certs=True, ca_bundle=None, name="",
                 connect_timeout=5, read_timeout=60, create_check="versions"):
        super().__init__(name)
        if not load_boto3():
            raise repo_base.RepositoryError(
                "boto3 is required for an S3 repository on this host: %s" % BOTO3_IMPORT_ERROR)
        if not bucket or not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ValueError("repository.bucket %r is not a valid S3 bucket name" % (bucket,))
        if sse not in (None, "", "none", "AES256", "aws:kms"):
            raise ValueError("repository.sse must be none, AES256 or aws:kms, got %r" % (sse,))
        if sse_kms_key_id and sse != "aws:kms":
            raise ValueError("repository.sse_kms_key_id needs repository.sse: aws:kms")
        self.bucket = bucket
        self.prefix = repo_base.validate_prefix(prefix)
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
            **checksum_options(self.endpoint_url),
        )
        verify = ca_bundle if ca_bundle else bool(validate_certs)
        self.client = s3_client(config, verify, endpoint_url=self.endpoint_url, region=self.region,
                                access_key=access_key or None, secret_key=secret_key or None,
                                session_token=session_token or None)
        self._lock_enabled = None
        if create_check not in ("versions", "header"):
            raise ValueError("repository.create_check must be versions or header, got %r" % (create_check,))
        self.create_check = create_check
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
        key = repo_base.validate_key(key)
        return self.prefix + "/" + key if self.prefix else key

    def _list_prefix(self, prefix):
        parts = str(prefix or "").split("/")
        for part in parts[:-1]:
            repo_base.validate_name(part, "prefix part")
        if parts[-1]:
            repo_base.validate_name(parts[-1], "prefix part")
        return (self.prefix + "/" if self.prefix else "") + "/".join(parts)

    def _rel(self, full):
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, operation, _if_none_match=False, **kwargs):
        """One S3 call with errors turned into RepositoryError that say what to do. ``_if_none_match``: the request
        carries ``If-None-Match: *`` (create only); an existing object is ObjectExists. Every body sent (PutObject,
        UploadPart) carries its Content-MD5, which S3 requires on buckets with Object Lock retention: botocore
        before 1.36 added it itself, later ones send a trailing checksum instead, which checksum_options turns off
        against an endpoint_url."""
        if operation in ("put_object", "upload_part") and "ContentMD5" not in kwargs \
                and isinstance(kwargs.get("Body"), (bytes, bytearray, memoryview)):
            md5 = content_md5(kwargs["Body"])
            if md5:
                kwargs["ContentMD5"] = md5
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
            raise repo_base.RepositoryError(
                "%s: no S3 credentials: set repository.access_key and repository.secret_key "
                "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance profile)"
                % self.describe()) from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError) as exc:
            raise repo_base.RepositoryError("%s: cannot reach the S3 endpoint (%s): check the network path and "
                                            "repository.endpoint_url" % (self.describe(), exc)) from None

    def _error(self, exc, operation, key=None):
        err = exc.response.get("Error", {})
        code = err.get("Code") or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        if code in ("PreconditionFailed", "412") and operation == "put_object":
            return repo_base.ObjectExists("%s already holds %s" % (self.describe(), self._rel(key)))
        if code in ("NoSuchKey", "404", "NotFound") and key:
            return repo_base.NotFound("%s has no %s" % (self.describe(), self._rel(key)))
        if code == "403" and operation == "head_object":
            code = "AccessDenied"
        hint = S3_ERROR_HINTS.get(code, err.get("Message") or str(exc))
        what = " (%s)" % self._rel(key) if key else ""
        return repo_base.RepositoryError("%s: %s failed%s: %s: %s" % (self.describe(), operation, what, code, hint))

    def check(self):
        """Prove the bucket exists and is listable with these credentials (a cheap preflight)."""
        self.call("list_objects_v2", Bucket=self.bucket, Prefix=self._list_prefix(""), MaxKeys=1)

    def head(self, key):
        try:
            resp = self.call("head_object", Bucket=self.bucket, Key=self._key(key))
        except repo_base.NotFound:
            return None
        return self._info(key, resp)

    def _info(self, key, resp):
        info = repo_base.ObjectInfo(key=key, size=resp.get("ContentLength"), mtime=resp.get("LastModified"),
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
        except repo_base.NotFound:
            return None
        return self._body(resp, key), self._info(key, resp)

    def read_start(self, key, size):
        try:
            resp = self.call("get_object", Bucket=self.bucket, Key=self._key(key), Range="bytes=0-%d" % (size - 1))
        except repo_base.NotFound:
            return None
        return self._body(resp, key)

    def _body(self, resp, key):
        """The whole body of a GET; a transfer that stalls or breaks half-way is a RepositoryError like any other."""
        import urllib3.exceptions  # botocore's own dependency

        try:
            return resp["Body"].read()
        except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise repo_base.RepositoryError(
                "%s: reading %s broke off (%s): check the network path and repository.endpoint_url"
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
                found.append(repo_base.ObjectInfo(key=self._rel(obj["Key"]), size=obj["Size"],
                                                  mtime=obj["LastModified"],
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
        if info.get("lock_mode") and until and until > repo_base.now_utc():
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
        return repo_base.ObjectInfo(key=key, size=len(data), sha256=digest)

    def create(self, key, data):
        # The header goes on the request itself (botocore's before-sign event), so a botocore too old to know the
        # IfNoneMatch parameter (Debian 12's, on the database hosts) sends it as well. A server that ignores it (S3
        # before 2024-08, old MinIO) makes this a plain PUT. On a versioned bucket the PUT is then checked against
        # the bucket's versions (settle_create below), which keeps two writers apart again; on an unversioned
        # bucket only the caller's read-before-write is left (different content seen at that moment is refused,
        # two writers in the same instant are not kept apart).
        digest = hashlib.sha256(data).hexdigest()
        try:
            resp = self.call("put_object", Bucket=self.bucket, Key=self._key(key), Body=data,
                             Metadata={"sha256": digest}, _if_none_match=True, **self.put_args)
        except repo_base.ObjectExists:
            return False
        version = resp.get("VersionId")
        if not version or version == "null" or self.create_check == "header":
            return True
        try:
            return self.settle_create(key, version)
        except BaseException:
            # not proven first: our version is taken back, so that a loser's content never stays current
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(key), VersionId=version)
            raise

    def settle_create(self, key, mine):
        """After a create-only PUT that made version ``mine`` on a versioned bucket: True when it is the first
        version of ``key`` since the key was last deleted (the create created it), False when another writer was
        first (``mine`` is then taken back). Raises RepositoryError when the listing cannot tell.

        Ceph RGW 16.2 honours ``If-None-Match: *`` on unversioned buckets only: on a versioned one the PUT adds a
        version whatever exists. Of two writers the first version wins; the other takes its version back (deleted
        by version id, or, where Object Lock keeps it, the first writer's version copied over it, so that the key
        reads the first writer's content again) and its create returns False, as a 412 would have. The order is
        the server's version order; a delete marker with the same timestamp as a version around it cannot be
        ordered and is an error (nothing assumed). Needs s3:ListBucketVersions; ``create_check: header`` trusts the
        header instead, for servers that honour it on versioned buckets (AWS S3)."""
        full = self._key(key)
        try:
            resp = self.call("list_object_versions", Bucket=self.bucket, Prefix=full, MaxKeys=1000)
        except repo_base.RepositoryError as exc:
            if "AccessDenied" in str(exc):
                raise repo_base.RepositoryError(
                    "%s: create-only writes to a versioned bucket are checked against the key's versions, which "
                    "needs s3:ListBucketVersions on the bucket: grant it, or set repository.create_check: header "
                    "only if this server honours If-None-Match on versioned buckets (AWS S3 does; Ceph RGW 16.2 "
                    "does not). Nothing was written." % self.describe()) from None
            raise
        if resp.get("IsTruncated") and resp.get("NextKeyMarker", full) <= full:
            raise repo_base.RepositoryError("%s: %s has more than 1000 versions: cannot tell whether another writer "
                                            "created it first; nothing is assumed" % (self.describe(), key))
        versions = [v for v in resp.get("Versions", []) if v.get("Key") == full]  # the server's order, newest first
        markers = [m["LastModified"] for m in resp.get("DeleteMarkers", []) if m.get("Key") == full]
        ids = [v.get("VersionId") for v in versions]
        if mine not in ids:
            raise repo_base.RepositoryError(
                "%s: the version %s just written to %s is not in the bucket's version listing: cannot tell whether "
                "another writer created it first; nothing is assumed, run again" % (self.describe(), mine, key))
        idx = ids.index(mine)
        ours = versions[idx]["LastModified"]
        older = versions[idx + 1:]
        cut = max((t for t in markers if t < ours), default=None)
        # among versions the server's order is the truth (it is what makes one of them current; RGW's order need
        # not follow LastModified); a delete marker can only be placed by its time
        if ours in markers or (cut is not None and any(v["LastModified"] == cut for v in older)):
            raise repo_base.RepositoryError(
                "%s: the versions of %s cannot be ordered (a delete at the same moment as a write): nothing is "
                "assumed, run again" % (self.describe(), key))
        rivals = [v for v in older if cut is None or v["LastModified"] > cut]
        if not rivals:
            return True
        winner = rivals[-1]["VersionId"]
        try:
            self.call("delete_object", Bucket=self.bucket, Key=full, VersionId=mine)
        except repo_base.RepositoryError as exc:
            if not self._locked_version(full, mine):
                raise repo_base.RepositoryError("%s: another writer created %s first, and this writer's version "
                                                "could not be taken back: %s" % (self.describe(), key, exc)) from None
            # Object Lock keeps it: the first writer's content is made current again, if the first writer is still
            # the first since the last delete (a release and a new create meanwhile must not be overwritten)
            now = self.call("list_object_versions", Bucket=self.bucket, Prefix=full, MaxKeys=1000)
            current = [v for v in now.get("Versions", []) if v.get("Key") == full]
            later_deletes = [m for m in now.get("DeleteMarkers", []) if m.get("Key") == full
                             and (cut is None or m["LastModified"] > cut)]
            if later_deletes or winner not in [v.get("VersionId") for v in current]:
                raise repo_base.RepositoryError(
                    "%s: another writer created %s first, this writer's version is kept by Object Lock, and the key "
                    "changed since: look at its versions before going on" % (self.describe(), key)) from None
            self.call("copy_object", Bucket=self.bucket, Key=full, MetadataDirective="COPY",
                      CopySource={"Bucket": self.bucket, "Key": full, "VersionId": winner},
                      **{k: v for k, v in self.put_args.items() if k != "Tagging"})
        return False

    def _locked_version(self, full, version):
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, VersionId=version)
        except botocore.exceptions.ClientError:
            return False
        until = head.get("ObjectLockRetainUntilDate")
        return head.get("ObjectLockLegalHoldStatus") == "ON" or bool(
            head.get("ObjectLockMode") and until and until > repo_base.now_utc())

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
            raise repo_base.RepositoryError("%s: server-side copy of %s did not arrive whole" % (self.describe(), key))
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
        return repo_base.ObjectInfo(key=self.key, size=self.size, sha256=digest)

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
