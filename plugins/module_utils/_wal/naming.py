# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL arithmetic: segment names and LSNs, timelines, history files, where WAL lives in a repository, gaps.

Private to the collection; plain Python, no Ansible. PostgreSQL's default segment size is 16 MiB; every function
takes ``segment_size`` for clusters initialised with another one.
"""

from __future__ import annotations

import re
import struct

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
# A segment name plus what PostgreSQL or pg_receivewal append: .partial, or .<start offset>.backup
WAL_FILE_RE = re.compile(r"^([0-9A-F]{24})(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")


class WalError(_errors.DrError, ValueError):
    """A WAL name or LSN that does not parse."""


# The first page of every segment carries a long page header (XLogLongPageHeaderData): magic (uint16), info
# (uint16, XLP_LONG_HEADER = 0x0002), timeline (uint32), page address (uint64), remaining length (uint32, padded to
# 24), then the cluster's system identifier (uint64) at offset 24. Magic 0xD1xx: PostgreSQL 12 to 17.
_XLP_LONG_HEADER = 0x0002


def segment_system_identifier(raw):
    """The system identifier (a decimal string, as pg_control_system() shows it) in a WAL segment's first page
    header; None when the bytes do not start with a PostgreSQL WAL long page header."""
    if len(raw) < 40:
        return None
    for order in ("<", ">"):
        magic, info = struct.unpack_from(order + "HH", raw, 0)
        if magic & 0xFF00 == 0xD100 and info & _XLP_LONG_HEADER:
            return str(struct.unpack_from(order + "Q", raw, 24)[0])
    return None


def lsn_to_int(lsn):
    match = re.match(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$", str(lsn or ""))
    if not match:
        raise WalError("not an LSN: %r (expected like 0/3000060)" % (lsn,))
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def int_to_lsn(value):
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)


def segments_per_xlogid(segment_size=DEFAULT_SEGMENT_SIZE):
    return 0x100000000 // segment_size


def segment_number(lsn, segment_size=DEFAULT_SEGMENT_SIZE):
    """The segment number that holds ``lsn`` (an int or 'X/Y')."""
    value = lsn if isinstance(lsn, int) else lsn_to_int(lsn)
    return value // segment_size


def segment_name(timeline, segno, segment_size=DEFAULT_SEGMENT_SIZE):
    per = segments_per_xlogid(segment_size)
    return "%08X%08X%08X" % (timeline, segno // per, segno % per)


def segment_of_lsn(timeline, lsn, segment_size=DEFAULT_SEGMENT_SIZE):
    return segment_name(timeline, segment_number(lsn, segment_size), segment_size)


def parse_segment(name, segment_size=DEFAULT_SEGMENT_SIZE):
    """``(timeline, segno)`` of a 24-hex segment name; WalError otherwise."""
    match = SEGMENT_RE.match(name or "")
    if not match:
        raise WalError("not a WAL segment name: %r" % (name,))
    timeline, log, seg = (int(g, 16) for g in match.groups())
    if timeline == 0:
        raise WalError("timeline 0 does not exist: %r" % (name,))
    return timeline, log * segments_per_xlogid(segment_size) + seg


def is_wal_file_name(name):
    """True for the names archive_command is called with (segments, .partial, .backup, .history)."""
    return bool(WAL_FILE_RE.match(name or ""))


def segment_range(timeline, start_lsn, stop_lsn, segment_size=DEFAULT_SEGMENT_SIZE):
    """Names of every segment that holds WAL from start_lsn to stop_lsn (inclusive) on one timeline."""
    first = segment_number(start_lsn, segment_size)
    last = segment_number(stop_lsn, segment_size)
    if last < first:
        raise WalError("stop LSN %s is before start LSN %s" % (stop_lsn, start_lsn))
    return [segment_name(timeline, n, segment_size) for n in range(first, last + 1)]


def wal_key(name):
    """Where a WAL file lives under a repository's ``wal/``: grouped by timeline and log id, like PostgreSQL's
    own naming, so listing one range does not list the whole archive. History files sit at the top."""
    if HISTORY_RE.match(name):
        return "wal/" + name
    return "wal/%s/%s" % (name[:16], name)


def stream_key(name):
    """Where a file pg_receivewal streamed lives: the same layout as wal_key under ``stream/``, a separate area so
    the primary's archive_command and the streamer never write the same key."""
    return "stream/" + wal_key(name)[len("wal/"):]


# A growing segment pg_receivewal streams (its ``.partial`` file) is stored as immutable pieces, each the bytes
# [start, end) of the segment: S3 has no append, and re-uploading a growing 16 MiB file every fraction of a second
# would cost a segment per upload (and a version of it in a versioned bucket).
PIECE_RE = re.compile(r"^([0-9A-F]{8})-([0-9A-F]{8})$")


def partial_prefix(name):
    """The key prefix under which the pieces of segment ``name``'s partial live (``name`` without .partial)."""
    return stream_key(name) + ".partial/"


def piece_key(name, start, end):
    return "%s%08X-%08X" % (partial_prefix(name), start, end)


def parse_piece_key(key):
    """``(start, end)`` of a piece key (or of its last part); None for anything else."""
    match = PIECE_RE.match(key.rsplit("/", 1)[-1])
    if not match:
        return None
    start, end = int(match.group(1), 16), int(match.group(2), 16)
    return (start, end) if end > start else None


def cover(pieces):
    """The pieces (``(start, end)``, in any order, overlapping or not) that make the longest contiguous run from
    byte 0, in order, fewest first choice: at each point the piece reaching furthest. Returns ``(chosen, end)``."""
    chosen, pos = [], 0
    remaining = sorted(set(pieces))
    for _step in range(len(remaining)):
        best = max((p for p in remaining if p[0] <= pos < p[1]), key=lambda p: p[1], default=None)
        if best is None:
            break
        chosen.append(best)
        pos = best[1]
    return chosen, pos


def follows(last, name):
    try:
        tli_a, seg_a = parse_segment(last)
        tli_b, seg_b = parse_segment(name)
    except (WalError, TypeError):
        return False
    return tli_a == tli_b and seg_b == seg_a + 1
