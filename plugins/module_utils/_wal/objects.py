# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stored WAL object: the ``IMDRWAL1 <sha256> <size> <compression>`` header and the compressed segment, and
the checks that make a fetched object trustworthy (checksum, size, the cluster it belongs to).

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

MAGIC = b"IMDRWAL1"
HEADER_RE = re.compile(rb"^IMDRWAL1 ([0-9a-f]{64}) (\d+) (none|lz4|zstd)\n")


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
    if not want or not wal_naming.SEGMENT_RE.match(name.split(".", 1)[0]):
        return
    got = wal_naming.segment_system_identifier(raw)
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


def peek_header(repo, key):
    """The content sha256 in a stored object's header; None when there is no such object."""
    head = repo.read_start(key, 120)
    if head is None:
        return None
    try:
        return parse_header(head)[0]
    except CorruptWal:
        return "unreadable-header"
