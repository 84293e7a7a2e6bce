import os

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import fetch as wal_fetch
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import stream as wal_stream

SEG = "000000010000000A000000FF"


def test_stream_keys_mirror_the_archive_layout_under_their_own_area():
    assert wal_naming.stream_key(SEG) == "stream/000000010000000A/" + SEG
    assert wal_naming.stream_key("00000002.history") == "stream/00000002.history"
    assert wal_naming.piece_key(SEG, 0, 0x2000) == f"stream/000000010000000A/{SEG}.partial/00000000-00002000"
    assert wal_naming.parse_piece_key(wal_naming.piece_key(SEG, 0x10, 0x2000)) == (0x10, 0x2000)


@pytest.mark.parametrize("key", ["x/00000010-00000010", "x/0000001-00000020", "x/foo", "x/00000020-00000010"])
def test_parse_piece_key_refuses(key):
    assert wal_naming.parse_piece_key(key) is None


@pytest.mark.parametrize("pieces, chosen, end", [
    ([], [], 0),
    ([(0, 10), (10, 20), (20, 25)], [(0, 10), (10, 20), (20, 25)], 25),
    ([(10, 20), (0, 10)], [(0, 10), (10, 20)], 20),
    ([(0, 10), (20, 30)], [(0, 10)], 10),  # a gap: only what is contiguous from 0
    ([(5, 10)], [], 0),
    ([(0, 10), (0, 30), (10, 20), (25, 40)], [(0, 30), (25, 40)], 40),  # overlaps: furthest reach first
])
def test_cover(pieces, chosen, end):
    assert wal_naming.cover(pieces) == (chosen, end)


def test_data_end_finds_the_last_written_byte_before_the_zero_padding(tmp_path):
    path = tmp_path / (SEG + ".partial")
    data = bytearray(16 * 8192 * 4)
    data[0:8192 + 100] = b"\x01" * (8192 + 100)  # one page and a bit of the next
    data[8192 + 50] = 0  # a zero inside the data is data
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert wal_stream.data_end(fd, 0, len(data)) == 8192 + 100
        assert wal_stream.data_end(fd, 8192 + 100, len(data)) == 8192 + 100
        assert wal_stream.data_end(fd, 8192 + 40, len(data)) == 8192 + 100
    finally:
        os.close(fd)


def test_classify_sorts_the_receive_directory():
    names = [SEG, SEG + ".partial", "00000002.history", "stream.lock", "000000010000000A000000FE", "x.partial"]
    assert wal_stream.classify(names) == (["000000010000000A000000FE", SEG], [SEG], ["00000002.history"])


def test_contiguous_end_of_stored_pieces():
    keys = [wal_naming.piece_key(SEG, 0, 100), wal_naming.piece_key(SEG, 100, 300), wal_naming.piece_key(SEG, 400,
                                                                                                         500), "junk"]
    assert wal_stream.contiguous_end(keys) == 300


def test_pg_receivewal_argv_never_holds_a_password():
    settings = wal_stream.StreamSettings({"stream": {
        "conninfo": "host=a,b user=r passfile=/p target_session_attrs=read-write",
        "dir": "/s", "slot": "dr_stream", "pg_bin_dir": "/bin15"}})
    assert wal_stream.create_slot_argv(settings) == ["/bin15/pg_receivewal", "--create-slot", "--if-not-exists",
                                                     "--slot",
                                                     "dr_stream", "--no-password", "--dbname", settings.conninfo]
    assert wal_stream.receive_argv(settings) == ["/bin15/pg_receivewal", "--directory", "/s/wal", "--slot", "dr_stream",
                                                 "--synchronous", "--no-loop", "--no-password", "--status-interval",
                                                 "1",
                                                 "--dbname", settings.conninfo]


@pytest.mark.parametrize("stream, message", [
    ({}, "no stream.conninfo"),
    ({"conninfo": "host=a password=x"}, "must not hold a password"),
    ({"conninfo": "host=a", "slot": "Bad-Slot"}, "lower-case"),
])
def test_stream_settings_refuse(stream, message):
    with pytest.raises(wal_stream.StreamError, match=message):
        wal_stream.StreamSettings({"stream": stream})


class _Repo:
    """An in-memory repository: enough of the interface for fetch."""

    def __init__(self, objects):
        self.objects = objects

    def read(self, key):
        blob = self.objects.get(key)
        return None if blob is None else (blob, {})

    def list(self, prefix=""):
        return [{"key": k} for k in sorted(self.objects) if k.startswith(prefix)]

    def describe(self):
        return "memory"


def _config(objects, **doc):
    config = wal_config.Config(dict({"repository": {"type": "local", "path": "/nonexistent"}}, **doc))
    config._repos = [_Repo(objects)]
    return config


def test_fetch_falls_back_to_the_stream_then_to_the_partial_padded_to_a_segment():
    whole = b"w" * 1000
    objects = {wal_naming.stream_key(SEG): wal_objects.pack(whole, "lz4")[0]}
    assert wal_fetch.fetch_raw(_config(objects), SEG) == whole
    nxt = "000000010000000B00000000"
    objects = {wal_naming.piece_key(nxt, 0, 4): wal_objects.pack(b"abcd", "lz4")[0],
               wal_naming.piece_key(nxt, 2, 6): wal_objects.pack(b"cdef", "none")[0]}
    assert wal_fetch.fetch_raw(_config(objects), nxt) is None, "a partial only when asked for"
    got = wal_fetch.fetch_raw(_config(objects, wal_segment_size=16), nxt, partial=True)
    assert got == b"abcdef" + b"\0" * 10
    objects[wal_naming.piece_key(nxt, 2, 6)] = objects[wal_naming.piece_key(nxt, 2, 6)][:-1] + b"X"
    with pytest.raises(wal_objects.CorruptWal):
        wal_fetch.fetch_raw(_config(objects, wal_segment_size=16), nxt, partial=True)


def test_the_archive_wins_over_the_stream():
    objects = {wal_naming.wal_key(SEG): wal_objects.pack(b"archived", "lz4")[0],
               wal_naming.stream_key(SEG): wal_objects.pack(b"streamed", "lz4")[0]}
    assert wal_fetch.fetch_raw(_config(objects), SEG) == b"archived"


def test_a_piece_stored_meanwhile_with_other_wal_is_an_error_and_not_counted_as_ours(tmp_path):
    """Between the streamer's listing and its create-only PUT another writer (a second streamer, another cluster on
    this prefix) stores the same range with other WAL: the piece is not overwritten, not counted as stored, and the
    error says so; the same WAL stored meanwhile (a restarted streamer) is fine."""
    (tmp_path / "repo").mkdir()
    config = wal_config.Config({"repository": {"type": "local", "path": str(tmp_path / "repo")},
                                "compression": "none"})
    settings = wal_stream.StreamSettings({"stream": {"dir": str(tmp_path / "stream"), "upload_interval": 0}},
                                         require_conninfo=False)
    os.makedirs(settings.path("wal"))
    partial = settings.path("wal", SEG + ".partial")
    page = 8192
    with open(partial, "wb") as f:
        f.write(b"\0" * 2 * page)
    repo = config.repositories()[0]
    for foreign, errors in ((b"\x02" * page, 1), (b"\x01" * page, 0)):
        uploader = wal_stream.Uploader(config, settings, lambda _msg: None)
        try:
            uploader.tick(final=True)  # lists the pieces (none of this range yet): nothing written to send
            piece = wal_naming.piece_key(SEG, 0, page)
            repo.delete([piece])
            assert repo.create(piece, wal_objects.pack(foreign, "none")[0])
            with open(partial, "r+b") as f:
                f.write(b"\x01" * page)
            uploader.tick(final=True)
        finally:
            uploader.close()
        assert uploader.status["errors"] == errors, uploader.status
        if errors:
            assert "other WAL" in uploader.status["last_error"] and uploader.sent[(0, SEG)] == 0
            assert wal_objects.unpack(repo.read(piece)[0]) == foreign  # untouched
        else:
            assert uploader.sent[(0, SEG)] == page
        with open(partial, "wb") as f:
            f.write(b"\0" * 2 * page)
