# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a base backup's tar stream as it goes by: every member's size and checksum, the backup_label, the
manifest checked against what was walked, and decompression (gzip, lz4, zstd).

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import zlib

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

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


# -- streaming tar verification ---------------------------------------------------------------------------------
def decompressor_for(name):
    """A streaming decompressor for an archive name, exposing decompress(bytes) -> bytes."""
    if name.endswith(".lz4"):
        if _lz4frame is None:
            raise backup_catalog.BackupError("python lz4 is needed to verify lz4 backups on this host (python3-lz4)")
        return _lz4frame.LZ4FrameDecompressor()
    if name.endswith(".gz"):
        return zlib.decompressobj(wbits=31)
    if name.endswith(".zst"):
        if _zstd is None:
            raise backup_catalog.BackupError("python zstandard is needed to verify zstd backups on this host "
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


def check_wal(manifest, wal_names, segment_size=wal_naming.DEFAULT_SEGMENT_SIZE):
    """Every WAL segment the manifest's WAL-Ranges need must be in the backup's pg_wal archive."""
    problems = []
    present = {os.path.basename(n) for n in wal_names}
    for rng in manifest.get("WAL-Ranges", []):
        for name in wal_naming.segment_range(int(rng["Timeline"]), rng["Start-LSN"], rng["End-LSN"], segment_size):
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


def extract_tar_stream(stream, name, dest):
    """Decompress and extract a tar archive read from the repository, refusing members that escape ``dest``."""
    decomp = decompressor_for(name)
    reader = _DecompressingReader(stream, decomp)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            target = os.path.realpath(os.path.join(dest, member.name))
            if not target.startswith(os.path.realpath(dest) + os.sep) and target != os.path.realpath(dest):
                raise backup_catalog.BackupError(
                    "archive member %r would land outside the restore directory" % member.name)
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
