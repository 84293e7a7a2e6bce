import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming


@pytest.mark.parametrize("timeline, lsn, name", [
    (1, "0/2000028", "000000010000000000000002"),
    (1, "0/FFFFFFFF", "0000000100000000000000FF"),
    (3, "1/0", "000000030000000100000000"),
    (2, "16/B374D848", "0000000200000016000000B3"),
])
def test_segment_of_lsn(timeline, lsn, name):
    assert wal_naming.segment_of_lsn(timeline, lsn) == name
    tl, segno = wal_naming.parse_segment(name)
    assert (tl, wal_naming.segment_name(tl, segno)) == (timeline, name)


def test_segment_range_spans_log_ids():
    names = wal_naming.segment_range(1, "0/FE000000", "1/1000000")
    assert names == ["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000",
                     "000000010000000100000001"]


def test_other_segment_sizes():
    size = 64 * 1024 * 1024
    assert wal_naming.segment_of_lsn(1, "0/FC000000", size) == "00000001000000000000003F"
    assert wal_naming.segment_of_lsn(1, "1/0", size) == "000000010000000100000000"


@pytest.mark.parametrize("bad", ["", "00000001000000000000000", "000000000000000000000001", "zz" * 12])
def test_parse_segment_refuses(bad):
    with pytest.raises(wal_naming.WalError):
        wal_naming.parse_segment(bad)


@pytest.mark.parametrize("name, ok", [
    ("000000010000000000000002", True), ("000000010000000000000002.partial", True),
    ("000000010000000000000002.00000028.backup", True), ("00000002.history", True),
    ("../../etc/passwd", False), ("000000010000000000000002.tmp", False),
])
def test_wal_file_names(name, ok):
    assert wal_naming.is_wal_file_name(name) is ok


def test_wal_keys_group_by_timeline_and_log():
    assert wal_naming.wal_key("000000020000000A000000FF") == "wal/000000020000000A/000000020000000A000000FF"
    assert wal_naming.wal_key("00000002.history") == "wal/00000002.history"
