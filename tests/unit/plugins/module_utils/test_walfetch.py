"""Fetch across regions: a damaged copy in one region is passed over for the next region's good copy; only when no
region has a good copy does recovery stop. A name that is not a WAL file is an error whatever --unreachable says."""

import json

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils import _wal, _walcli
from ansible_collections.immersiverse.dr.plugins.module_utils import _walarchive as wa

SEG = _wal.segment_name(1, 7)


@pytest.fixture
def two_regions(tmp_path):
    doc = {"repository": {"type": "local", "name": "a", "path": str(tmp_path / "a")},
           "offsite": [{"type": "local", "name": "b", "path": str(tmp_path / "b")}],
           "spool_dir": str(tmp_path / "spool"), "prefetch": 0}
    (tmp_path / "wal.json").write_text(json.dumps(doc))
    config = wa.Config(dict(doc))
    raw = b"\x10\xd1" + b"w" * 16382
    for repo in config.repositories():
        repo.put_bytes(_wal.wal_key(SEG), wa.pack(raw, "lz4")[0])
    return config, raw, tmp_path


def damage(repo):
    path = repo._path(_wal.wal_key(SEG))
    blob = bytearray(open(path, "rb").read())
    blob[-3] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(bytes(blob))


def test_a_damaged_copy_in_one_region_is_passed_over_for_the_next_regions(two_regions, capsys):
    config, raw = two_regions[:2]
    damage(config.repositories()[0])
    assert wa.fetch_raw(config, SEG) == raw
    assert "used b's copy; passed over" in capsys.readouterr().err


def test_no_good_copy_anywhere_stops_recovery(two_regions):
    config = two_regions[0]
    for repo in config.repositories():
        damage(repo)
    with pytest.raises(wa.CorruptWal, match="no repository holds a good copy"):
        wa.fetch_raw(config, SEG)


@pytest.mark.parametrize("unreachable", ["missing", "abort"])
def test_a_name_that_is_no_wal_file_stops_recovery_whatever_unreachable_says(two_regions, unreachable, capsys):
    tmp = two_regions[2]
    rc = _walcli.main(["fetch", "../../etc/passwd", str(tmp / "dest"), "--unreachable", unreachable,
                       "--config", str(tmp / "wal.json")])
    assert rc == wa.EXIT_ABORT
    assert "is not a WAL file name" in capsys.readouterr().err
    assert not (tmp / "dest").exists()
