"""The restore plan on a repository laid out by hand: which backup serves a target, the timeline path, gaps, the
streamed partial, and the refusals."""

import json
import os

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _restore, _wal

SYSID = "7300000000000000001"
SEG = 16 * 1024 * 1024


def backup(repo, backup_id, start_segno, stop_time, timeline=1, sysid=SYSID):
    record = {"id": backup_id, "kind": "full", "system_identifier": sysid, "timeline": timeline,
              "start_lsn": _wal.int_to_lsn(start_segno * SEG + 40),
              "stop_lsn": _wal.int_to_lsn(start_segno * SEG + 400),
              "start_time": stop_time, "stop_time": stop_time, "wal_segment_size": SEG, "files": []}
    repo.put_bytes(f"backup/{backup_id}/backup.json", json.dumps(record).encode(), overwrite=True)
    return record


def wal(repo, timeline, segnos, mtime=None, area="wal"):
    for segno in segnos:
        name = _wal.segment_name(timeline, segno)
        key = _wal.wal_key(name) if area == "wal" else _wal.stream_key(name)
        repo.put_bytes(key, b"x", overwrite=True)
        if mtime:
            os.utime(os.path.join(repo.root, key), (mtime, mtime))


@pytest.fixture
def repo(tmp_path):
    return repo_mod.LocalRepository(str(tmp_path / "repo"), name="primary")


def ts(epoch):
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def iso(epoch):
    return ts(epoch).replace(" ", "T").replace("+00", "Z")


def test_newest_backup_before_the_target_and_the_wal_after_it(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    backup(repo, "B2", 10, iso(t0 + 1000))
    wal(repo, 1, range(2, 20), mtime=t0 + 2000)
    plan = _restore.plan([repo], {"type": "time", "value": ts(t0 + 500)})
    assert plan["backup"]["id"] == "B1"
    assert plan["wal"]["first"] == _wal.segment_name(1, 3) and plan["wal"]["last"] == _wal.segment_name(1, 19)
    plan = _restore.plan([repo], {"type": "time", "value": ts(t0 + 1500)})
    assert plan["backup"]["id"] == "B2" and plan["wal"]["segments"] == 9
    assert _restore.plan([repo], {"type": "end"})["backup"]["id"] == "B2"
    assert _restore.plan([repo], {"type": "lsn", "value": _wal.int_to_lsn(5 * SEG)})["backup"]["id"] == "B1"


def test_refusals_say_why(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 8), mtime=t0 + 100)
    with pytest.raises(_restore.RestoreError, match="before the oldest backup"):
        _restore.plan([repo], {"type": "time", "value": ts(t0 - 10)})
    with pytest.raises(_restore.RestoreError, match="after the end of the WAL"):
        _restore.plan([repo], {"type": "time", "value": ts(t0 + 200)})
    with pytest.raises(_restore.RestoreError, match="after the end of the WAL"):
        _restore.plan([repo], {"type": "lsn", "value": _wal.int_to_lsn(9 * SEG)})
    wal(repo, 1, [9, 10], mtime=t0 + 300)  # segment 8 missing, later ones present
    with pytest.raises(_restore.RestoreError, match="000000010000000000000008 is missing"):
        _restore.plan([repo], {"type": "end"})
    with pytest.raises(_restore.RestoreError, match="000000010000000000000008 is missing"):
        _restore.plan([repo], {"type": "time", "value": ts(t0 + 250)})
    ok = _restore.plan([repo], {"type": "lsn", "value": _wal.int_to_lsn(7 * SEG + 5)})
    assert ok["wal"]["last"] == _wal.segment_name(1, 7)
    with pytest.raises(_restore.RestoreError, match="backups of 2 clusters"):
        backup(repo, "B9", 2, iso(t0), sysid="42")
        _restore.plan([repo], {"type": "end"})
    assert _restore.plan([repo], {"type": "immediate"}, system_identifier="42")["backup"]["id"] == "B9"


def test_timeline_history_is_followed(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 6), mtime=t0 + 10)           # timeline 1 up to the switch in segment 5
    repo.put_bytes(_wal.wal_key("00000002.history"), b"1\t0/5000100\tno recovery target specified\n")
    wal(repo, 2, range(5, 9), mtime=t0 + 20)           # timeline 2 from segment 5 on
    plan = _restore.plan([repo], {"type": "end"})
    assert plan["timeline"] == 2
    assert plan["timeline_path"] == [[1, "0/0", "0/5000100"], [2, "0/5000100", None]]
    assert plan["wal"]["last"] == _wal.segment_name(2, 8) and plan["wal"]["segments"] == 6
    current = _restore.plan([repo], {"type": "end", "timeline": "current"})
    assert current["timeline"] == 1 and current["wal"]["last"] == _wal.segment_name(1, 5)
    with pytest.raises(_restore.RestoreError, match="timeline 3"):
        _restore.plan([repo], {"type": "end", "timeline": "3"})


def test_streamed_segments_and_the_partial_extend_the_archive(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 6), mtime=t0 + 10)
    wal(repo, 1, [6, 7], mtime=t0 + 20, area="stream")
    repo.put_bytes(_wal.piece_key(_wal.segment_name(1, 8), 0, 8192), b"x")
    plan = _restore.plan([repo], {"type": "lsn", "value": _wal.int_to_lsn(8 * SEG + 100)})
    assert plan["wal"]["last"] == _wal.segment_name(1, 7)
    assert plan["wal"]["partial"] == _wal.segment_name(1, 8) + ".partial"
    with pytest.raises(_restore.RestoreError, match="after the end"):
        _restore.plan([repo], {"type": "lsn", "value": _wal.int_to_lsn(8 * SEG + 100)}, use_partial=False)


@pytest.mark.parametrize("target, message", [
    ({"type": "time", "value": "2026-11-27 10:00:00"}, "no time zone"),
    ({"type": "time", "value": "yesterday"}, "not a timestamp"),
    ({"type": "lsn", "value": "0/XYZ"}, "not an LSN"),
    ({"type": "xid", "value": "-3"}, "not a transaction id"),
    ({"type": "name", "value": "a'b"}, "no quotes"),
    ({"type": "end", "value": "x"}, "takes no value"),
    ({"type": "nope"}, "unknown target type"),
    ({"type": "end", "timeline": "soon"}, "latest, current or a timeline number"),
])
def test_bad_targets(target, message):
    with pytest.raises(_restore.RestoreError, match=message):
        _restore.normalise_target(target)


def test_time_zones_are_normalised():
    a = _restore.parse_target_time("2026-11-27 10:00:00+00")
    b = _restore.parse_target_time("2026-11-27T11:00:00+01:00")
    c = _restore.parse_target_time("2026-11-27T10:00:00Z")
    assert a == b == c


def test_history_parsing():
    text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000100\tbefore 2026-11-27 10:00:00+00\n"
    assert _restore.parse_history(text) == [(1, 0x3000000), (2, 0x5000100)]
    with pytest.raises(_restore.RestoreError):
        _restore.parse_history("garbage\n")


def test_moved_aside_directories_are_pruned_by_age_never_the_protected_one(tmp_path):
    import datetime

    data = tmp_path / "main"
    for stamp in ("20261101T000000Z", "20261120T000000Z", "20261126T000000Z"):
        (tmp_path / ("main.replaced-" + stamp)).mkdir()
    now = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    protect = {str(tmp_path / "main.replaced-20261101T000000Z")}
    assert _restore.prune_moved_aside(str(data), 3, now=now, protect=protect, check_mode=True) == [
        str(tmp_path / "main.replaced-20261120T000000Z")]
    removed = _restore.prune_moved_aside(str(data), 3, now=now, protect=protect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.replaced-20261101T000000Z",
                                                          "main.replaced-20261126T000000Z"]
    assert len(removed) == 1
