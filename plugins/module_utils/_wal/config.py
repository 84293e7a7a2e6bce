# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL engine's configuration on a database host (/etc/immersiverse-dr/wal.json): repositories, spool,
compression, concurrency and the cluster identity every pushed and fetched segment is checked against.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects

EXIT_ABORT = 126  # restore_command: > 125 makes PostgreSQL stop recovery instead of treating it as "not there"
DEFAULT_QUEUE_MAX_BYTES = 4 << 30  # 4 GiB of .ready WAL in pg_wal while no repository takes any


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
        # the pusher stays this much longer while a repository is owed segments (its back-off reaches 60 s), so a
        # region back from a short outage gets them without waiting for PostgreSQL to archive again
        self.owed_linger = max(0.0, float(doc.get("owed_linger_seconds", 180)))
        self.pg_wal = doc.get("pg_wal_dir")
        self.fetch_partial = bool(doc.get("fetch_partial", False))
        # the cluster this archive belongs to: segments of another are never stored nor served
        self.system_identifier = str(doc.get("system_identifier") or "") or None
        self.segment_size = int(doc.get("wal_segment_size", wal_naming.DEFAULT_SEGMENT_SIZE))
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
        wal_objects.compress(b"", self.compression)  # validates

    @classmethod
    def load(cls, path):
        try:
            with open(path) as fh:
                doc = json.load(fh)
            doc["_path"] = path
            return cls(doc)
        except (OSError, ValueError) as exc:
            raise wal_objects.WalArchiveError("cannot read the configuration %s: %s" % (path, exc)) from None

    def repositories(self):
        if self._repos is None:
            self._repos = [repo_spec.open_repository(spec) for spec in self.repository_specs]
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


def clip_error(error, size=500):
    text = str(error) if error is not None else ""
    return text if len(text) <= size else text[:size] + "..."


def mtime_of(path):
    try:
        return int(os.path.getmtime(path))
    except OSError:
        return None


fsync_dir = repo_local.fsync_dir  # one rule for making a rename durable


def touch(path):
    with open(path, "w"):
        pass


def write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


def remove_file(path):
    """True when something was removed."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def config_identity(config):
    """sha1 of the configuration file, as `sha1sum` prints it: prefetched files are trusted (by the wrapper too)
    only while the configuration that fetched them is in force."""
    path = config.doc.get("_path")
    if not path:
        return hashlib.sha1(json.dumps(config.doc, sort_keys=True).encode()).hexdigest()
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()
