"""The pusher's batch listing: a segment a fresh listing does not show is pushed without reading the repository
first; one it shows is still checked (same content: present; different: refused)."""

import json
import os
import time

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import backfill as wal_backfill
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import config as wal_config
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import push as wal_push
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import pusher as wal_pusher
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import status as wal_status


@pytest.fixture
def setup(tmp_path):
    specs = [{"type": "local", "name": "here", "path": str(tmp_path / "r1")},
             {"type": "local", "name": "there", "path": str(tmp_path / "r2")}]
    config = wal_config.Config({"repository": specs[0], "offsite": specs[1:], "spool_dir": str(tmp_path / "spool")})
    seg = tmp_path / "000000010000000000000005"
    seg.write_bytes(b"wal" * 1000)
    return config, seg


def test_listing_names_the_repositories_without_the_segment(setup):
    config, seg = setup
    listings = wal_pusher._Listings(config)
    assert listings.absent_from(seg.name) == ("here", "there")
    assert listings.absent_from("00000001.history") == ()  # not a segment: always read first
    config.repositories()[1].put_bytes(wal_naming.wal_key(seg.name), wal_objects.pack(seg.read_bytes(), "lz4")[0])
    assert listings.absent_from(seg.name) == ("here", "there")  # cached for a few seconds
    listings.cache.clear()
    assert listings.absent_from(seg.name) == ("here",)


def test_listed_segments_are_still_checked_and_different_content_refused(setup):
    config, seg = setup
    other = wal_objects.pack(b"other" * 1000, "lz4")[0]
    config.repositories()[1].put_bytes(wal_naming.wal_key(seg.name), other)
    listings = wal_pusher._Listings(config)
    absent = listings.absent_from(seg.name)
    assert absent == ("here",)
    with pytest.raises(wal_objects.WalArchiveError, match="different content"):
        wal_push.push_file(config, str(seg), absent_from=absent)
    assert config.repositories()[0].head(wal_naming.wal_key(seg.name)) is None  # the conflict stored nothing anywhere


def test_a_listing_that_fails_means_read_first(setup, monkeypatch):
    config, seg = setup

    def broken(self, prefix=""):
        raise repo_base.RepositoryError("down")

    monkeypatch.setattr(repo_local.LocalRepository, "list", broken)
    assert wal_pusher._Listings(config).absent_from(seg.name) == ()


def test_a_segment_stored_by_another_writer_inside_the_listing_window_is_never_replaced(setup):
    config, seg = setup
    listings = wal_pusher._Listings(config)
    absent = listings.absent_from(seg.name)
    assert absent == ("here", "there")
    theirs = wal_objects.pack(b"theirs" * 1000, "lz4")[0]
    config.repositories()[0].put_bytes(wal_naming.wal_key(seg.name), theirs)  # after the listing, before our write
    with pytest.raises(wal_objects.WalArchiveError, match="another writer stored"):
        wal_push.push_file(config, str(seg), absent_from=absent)
    assert config.repositories()[0].get_bytes(wal_naming.wal_key(seg.name)) == theirs


def test_the_same_content_stored_inside_the_listing_window_is_a_success(setup):
    config, seg = setup
    absent = wal_pusher._Listings(config).absent_from(seg.name)
    config.repositories()[1].put_bytes(wal_naming.wal_key(seg.name), wal_objects.pack(seg.read_bytes(), "zstd")[0])
    assert wal_push.push_file(config, str(seg), absent_from=absent) == [("here", "stored"), ("there", "present")]


def test_local_create_is_create_only(tmp_path):
    repo = repo_local.LocalRepository(str(tmp_path / "r"))
    assert repo.create("wal/x/000000010000000000000001", b"one") is True
    assert repo.create("wal/x/000000010000000000000001", b"two") is False
    assert repo.get_bytes("wal/x/000000010000000000000001") == b"one"
    assert repo.head("wal/x/000000010000000000000001")["sha256"] == __import__("hashlib").sha256(b"one").hexdigest()
    assert [o["key"] for o in repo.list("wal/")] == ["wal/x/000000010000000000000001"]  # no temporary left


# -- a region down: owed, backfilled; every region down: failed, then bounded -----------------------------------
def regions(tmp_path, **options):
    """Home "here" and offsite "there", both local; ``break_(name)`` makes one unusable (its directory a file: every
    read and write fails, as root too), ``mend(name)`` brings it back."""
    doc = {"repository": {"type": "local", "name": "here", "path": str(tmp_path / "here" / "r")},
           "offsite": [{"type": "local", "name": "there", "path": str(tmp_path / "there" / "r")}],
           "spool_dir": str(tmp_path / "spool"), "async": False, **options}
    config = wal_config.Config(doc)
    wal_pusher.marker_dirs(config)
    return config


def break_(tmp_path, which):
    (tmp_path / which).write_text("not a directory")


def mend(tmp_path, which):
    (tmp_path / which).unlink()
    (tmp_path / which).mkdir()


def segment(directory, segno, content=None):
    path = directory / wal_naming.segment_name(1, segno)
    path.write_bytes(content or (b"%d" % segno) * 4000)
    return path


def stored(repo, name):
    found = repo.read(wal_naming.wal_key(name))
    return None if found is None else wal_objects.unpack(found[0], name)


def test_an_offsite_region_down_is_owed_the_segment_and_the_push_succeeds(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "there")
    seg = segment(tmp_path, 0x10)
    assert wal_push.push_file(config, str(seg)) == [("here", "stored"), ("there", "owed")]
    here = config.repositories()[0]
    assert stored(here, seg.name) == seg.read_bytes()
    marker = json.loads((tmp_path / "spool" / "owed" / "there" / seg.name).read_text())
    assert marker["key"] == wal_naming.wal_key(seg.name) and marker["sha256"] == wal_objects.pack(seg.read_bytes(),
                                                                                                  "none")[1]
    status = wal_status.read_status(config)["repositories"]
    assert status["there"]["owed"] == 1 and status["there"]["oldest_owed"] == seg.name
    assert status["there"]["failures"] == 1 and f"local repository {tmp_path / 'there' / 'r'}" in \
        status["there"]["last_error"]
    assert status["there"]["retry_after_time"] > time.time()
    assert status["here"]["owed"] == 0 and status["here"]["last_success_time"] >= int(time.time()) - 5
    # in back-off: the next segment is owed without waiting on that region again
    calls = []
    real = repo_local.LocalRepository.create
    monkey = pytest.MonkeyPatch()
    monkey.setattr(repo_local.LocalRepository, "create", lambda self, k, d: calls.append(self.name) or real(self, k, d))
    try:
        seg2 = segment(tmp_path, 0x11)
        assert wal_push.push_file(config, str(seg2)) == [("here", "stored"), ("there", "owed")]
    finally:
        monkey.undo()
    assert calls == ["here"]
    assert wal_status.owed_names(config, "there") == [seg.name, seg2.name]


def test_the_backfill_copies_the_stored_object_once_the_region_is_back_and_clears_the_marker(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "there")
    segs = [segment(tmp_path, n) for n in (0x20, 0x21, 0x22)]
    for seg in segs:
        wal_push.push_file(config, str(seg))
    contents = {seg.name: seg.read_bytes() for seg in segs}
    for seg in segs:
        seg.unlink()  # PostgreSQL recycled them: the backfill copies the stored objects
    still_down = wal_backfill.backfill(config)
    assert still_down["copied"] == [] and still_down["owed"] == {"there": 3}
    assert f"local repository {tmp_path / 'there' / 'r'}" in still_down["errors"]["there"]
    mend(tmp_path, "there")
    assert wal_backfill.backfill(config, honor_backoff=True)["copied"] == [], \
        "the pusher's rounds wait out the back-off"
    report = wal_backfill.backfill(config)  # the CLI's: tries now
    assert report == {"copied": [("there", n, "copied") for n in sorted(contents)], "owed": {}, "errors": {}}
    there = config.repositories()[1]
    for name, raw in contents.items():
        assert stored(there, name) == raw
    assert wal_status.owed_names(config, "there") == []
    status = wal_status.read_status(config)["repositories"]["there"]
    assert status["owed"] == 0 and status["oldest_owed"] is None and status["failures"] == 0
    assert wal_backfill.backfill(config) == {"copied": [], "owed": {}, "errors": {}}


def test_a_push_that_reaches_an_owed_region_again_repays_the_debt(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "there")
    seg = segment(tmp_path, 0x28)
    wal_push.push_file(config, str(seg))
    mend(tmp_path, "there")
    with wal_status.status_update(config) as doc:  # the back-off ran out
        doc["repositories"]["there"]["retry_after_time"] = 0
    assert wal_push.push_file(config, str(seg)) == [("here", "present"), ("there", "stored")]
    assert wal_status.owed_names(config, "there") == []
    assert wal_status.read_status(config)["repositories"]["there"]["failures"] == 0


def test_the_home_region_down_the_offsite_region_takes_it_and_home_is_owed(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "here")
    seg = segment(tmp_path, 0x30)
    assert wal_push.push_file(config, str(seg)) == [("here", "owed"), ("there", "stored")]
    assert stored(config.repositories()[1], seg.name) == seg.read_bytes()
    marker = json.loads((tmp_path / "spool" / "owed" / "here" / seg.name).read_text())
    assert marker["key"] == wal_naming.wal_key(seg.name) and marker["sha256"] == wal_objects.pack(seg.read_bytes(),
                                                                                                  "none")[1]
    status = wal_status.read_status(config)["repositories"]
    assert status["here"]["owed"] == 1 and status["here"]["oldest_owed"] == seg.name
    assert status["here"]["failures"] == 1 and status["here"]["role"] == "home"
    assert status["there"]["owed"] == 0 and status["there"]["last_success_time"] >= int(time.time()) - 5


def test_the_backfill_repays_the_home_region_from_the_offsite_copy(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "here")
    segs = [segment(tmp_path, n) for n in (0x31, 0x32)]
    for seg in segs:
        assert wal_push.push_file(config, str(seg))[0] == ("here", "owed")
    contents = {seg.name: seg.read_bytes() for seg in segs}
    for seg in segs:
        seg.unlink()  # recycled by PostgreSQL: the offsite copy is what is copied
    assert wal_backfill.backfill(config)["owed"] == {"here": 2}
    mend(tmp_path, "here")
    report = wal_backfill.backfill(config)
    assert report == {"copied": [("here", n, "copied") for n in sorted(contents)], "owed": {}, "errors": {}}
    for name, raw in contents.items():
        assert stored(config.repositories()[0], name) == raw
    assert wal_status.owed_names(config, "here") == []


def test_every_region_down_fails_the_push_and_owes_nothing(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    seg = segment(tmp_path, 0x33)
    with pytest.raises(wal_objects.NoRepositoryTookIt,
                       match="no repository could store.*PostgreSQL keeps the seg") as caught:
        wal_push.push_file(config, str(seg))
    assert caught.value.tried_every
    assert wal_status.owed_names(config, "here") == [] and wal_status.owed_names(config, "there") == []
    status = wal_status.read_status(config)["repositories"]
    assert status["here"]["failures"] == 1 and status["there"]["failures"] == 1
    # both in back-off now: a push still tries both before it fails
    tried = []
    real = repo_local.LocalRepository.read_start
    monkey = pytest.MonkeyPatch()
    monkey.setattr(repo_local.LocalRepository, "read_start",
                   lambda self, k, n: tried.append(self.name) or real(self, k, n))
    try:
        with pytest.raises(wal_objects.NoRepositoryTookIt):
            wal_push.push_file(config, str(seg))
    finally:
        monkey.undo()
    assert sorted(tried) == ["here", "there"]


def test_a_region_in_back_off_is_tried_when_no_other_takes_the_segment(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "here")
    wal_push.push_file(config, str(segment(tmp_path, 0x34)))
    wal_status.note_outcomes(config, {"there": "a moment ago"}, force=True)  # both in back-off now
    assert wal_status.backing_off(config) == {"here", "there"}
    seg = segment(tmp_path, 0x35)
    assert wal_push.push_file(config, str(seg)) == [("here", "owed"), ("there", "stored")]


@pytest.mark.parametrize("conflict_in", ["here", "there"])
def test_a_conflict_in_any_region_refuses_everything_even_with_the_other_region_down(tmp_path, conflict_in):
    config = regions(tmp_path)
    seg = segment(tmp_path, 0x40)
    other = wal_objects.pack(b"other" * 1000, "lz4")[0]
    repos = dict(zip(["here", "there"], config.repositories(), strict=True))
    repos[conflict_in].put_bytes(wal_naming.wal_key(seg.name), other)
    with pytest.raises(wal_objects.WalArchiveError, match="different content"):
        wal_push.push_file(config, str(seg))
    for name, repo in repos.items():
        expect = other if name == conflict_in else None
        found = repo.read(wal_naming.wal_key(seg.name))
        assert (found[0] if found else None) == expect
    assert wal_status.owed_names(config, "there") == []
    if conflict_in == "here":  # the offsite region down changes nothing: the conflict at home still refuses
        break_(tmp_path, "there")
        with pytest.raises(wal_objects.WalArchiveError, match="different content"):
            wal_push.push_file(config, str(seg))
        assert wal_status.owed_names(config, "there") == []


def test_a_conflict_offsite_refuses_the_push_with_the_home_region_down(tmp_path):
    config = regions(tmp_path)
    seg = segment(tmp_path, 0x41)
    other = wal_objects.pack(b"other" * 1000, "lz4")[0]
    config.repositories()[1].put_bytes(wal_naming.wal_key(seg.name), other)
    break_(tmp_path, "here")
    with pytest.raises(wal_objects.WalArchiveError, match="different content") as caught:
        wal_push.push_file(config, str(seg))
    assert not isinstance(caught.value, wal_objects.NoRepositoryTookIt)
    assert config.repositories()[1].get_bytes(wal_naming.wal_key(seg.name)) == other
    assert wal_status.owed_names(config, "here") == []


def test_the_backfill_never_overwrites_different_content_in_the_owed_region(tmp_path):
    config = regions(tmp_path)
    break_(tmp_path, "there")
    seg = segment(tmp_path, 0x48)
    wal_push.push_file(config, str(seg))
    mend(tmp_path, "there")
    theirs = wal_objects.pack(b"theirs" * 1000, "lz4")[0]
    config.repositories()[1].put_bytes(wal_naming.wal_key(seg.name), theirs)
    report = wal_backfill.backfill(config)
    assert report["copied"] == [] and report["owed"] == {"there": 1}
    assert "different content" in report["errors"]["there"]
    assert config.repositories()[1].get_bytes(wal_naming.wal_key(seg.name)) == theirs
    status = wal_status.read_status(config)["repositories"]["there"]
    assert "different content" in status["last_error"] and not status.get("retry_after_time")


def pg_wal_with_ready(tmp_path, count, size=4096):
    """A pg_wal directory with ``count`` segments waiting (.ready), each ``size`` bytes."""
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    segs = []
    for n in range(count):
        seg = segment(pg_wal, 0x50 + n, bytes([n]) * size)
        (pg_wal / "archive_status" / (seg.name + ".ready")).touch()
        segs.append(seg)
    (pg_wal / "archive_status" / (wal_naming.segment_name(1, 0x4F) + ".done")).touch()  # archived: not counted
    return pg_wal, segs


def done(pg_wal, seg):
    """PostgreSQL took the archive_command's success: .ready becomes .done."""
    (pg_wal / "archive_status" / (seg.name + ".ready")).rename(pg_wal / "archive_status" / (seg.name + ".done"))


def test_over_the_bound_with_every_region_down_the_segment_is_dropped_and_the_gap_recorded(tmp_path, capsys):
    config = regions(tmp_path, queue_max_bytes=3 * 4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    assert wal_pusher.ready_bytes(str(pg_wal)) == 5 * 4096
    assert wal_pusher.archive(config, str(segs[0])) == "dropped"
    done(pg_wal, segs[0])
    tried = []
    real = repo_local.LocalRepository.read_start
    monkey = pytest.MonkeyPatch()
    monkey.setattr(repo_local.LocalRepository, "read_start",
                   lambda self, k, n: tried.append(self.name) or real(self, k, n))
    try:
        assert wal_pusher.archive(config, str(segs[1])) == "dropped"
    finally:
        monkey.undo()
    assert sorted(tried) == ["here", "there"], "dropped only after this push tried every repository"
    done(pg_wal, segs[1])
    with pytest.raises(wal_objects.NoRepositoryTookIt):  # 3 segments left: at the bound, not over it
        wal_pusher.archive(config, str(segs[2]))
    err = capsys.readouterr().err
    assert "WAL DROPPED, NOT ARCHIVED" in err and "take a new full backup" in err and segs[0].name in err
    assert f"Recorded in {tmp_path / 'spool' / 'gaps.jsonl'}" in err
    lines = [json.loads(line) for line in (tmp_path / "spool" / "gaps.jsonl").read_text().splitlines()]
    assert [line["segment"] for line in lines] == [segs[0].name, segs[1].name]
    status = wal_status.read_status(config)
    assert status["gap"]["first"] == segs[0].name and status["gap"]["last"] == segs[1].name
    assert status["gap"]["count"] == 2 and status["gap"]["last_time"] >= int(time.time()) - 5
    assert len(status["gaps"]) == 1 and status["queue_max_bytes"] == 3 * 4096
    assert wal_status.read_gaps(config) == (status["gaps"], 0)
    mend(tmp_path, "here")
    mend(tmp_path, "there")
    for repo in config.repositories():
        for seg in segs:
            assert stored(repo, seg.name) is None, "a dropped segment is stored nowhere"
    count, moved = wal_status.clear_gaps(config)
    assert count == 1 and wal_status.read_status(config)["gap"] is None and wal_status.read_gaps(config) == ([], 0)
    assert [json.loads(line)["segment"] for line in open(moved)] == [segs[0].name, segs[1].name], "kept aside"


def test_over_the_bound_with_only_the_home_region_down_nothing_is_dropped(tmp_path):
    config = regions(tmp_path, queue_max_bytes=3 * 4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    break_(tmp_path, "here")
    for seg in segs[:2]:
        assert wal_pusher.archive(config, str(seg)) == "sync"
        assert stored(config.repositories()[1], seg.name) == seg.read_bytes()
        done(pg_wal, seg)
    assert wal_status.owed_names(config, "here") == [segs[0].name, segs[1].name]
    assert wal_status.read_gaps(config) == ([], 0) and not wal_status.read_status(config).get("gaps")


def test_under_the_bound_or_unbounded_every_region_down_is_a_failure(tmp_path):
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    for bound in (5 * 4096, 0):
        config = regions(tmp_path, queue_max_bytes=bound)
        with pytest.raises(wal_objects.NoRepositoryTookIt):
            wal_pusher.archive(config, str(segs[0]))
        assert not wal_status.read_status(config).get("gaps") and wal_status.read_gaps(config) == ([], 0)


def test_a_refusal_is_never_dropped_whatever_the_queue(tmp_path):
    config = regions(tmp_path, queue_max_bytes=4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    config.repositories()[0].put_bytes(wal_naming.wal_key(segs[0].name), wal_objects.pack(b"other" * 900, "lz4")[0])
    with pytest.raises(wal_objects.WalArchiveError, match="different content") as caught:
        wal_pusher.archive(config, str(segs[0]))
    assert not isinstance(caught.value, wal_objects.NoRepositoryTookIt)
    assert not wal_status.read_status(config).get("gaps")


def test_a_recent_failure_is_no_reason_to_drop_without_trying(tmp_path):
    config = regions(tmp_path, queue_max_bytes=3 * 4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    wal_status.note_outcomes(config, {"here": "down a moment ago", "there": "down a moment ago"}, force=True)
    assert wal_pusher.archive(config, str(segs[0])) == "sync"  # both answer again: stored, not dropped
    assert stored(config.repositories()[0], segs[0].name) == segs[0].read_bytes()
    assert wal_status.read_gaps(config) == ([], 0)


def test_over_the_bound_a_failure_the_pusher_reported_is_tried_again_before_any_drop(tmp_path, monkeypatch):
    config = regions(tmp_path, queue_max_bytes=3 * 4096, **{"async": True, "async_wait_seconds": 1})
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    monkeypatch.setattr(wal_pusher, "ensure_pusher", lambda cfg: False)  # as if the pusher had run and failed
    (tmp_path / "spool" / "error" / segs[0].name).write_text(json.dumps(
        {"kind": "unavailable", "reason": "both down", "message": "archive push failed: both down"}))
    assert wal_pusher.archive(config, str(segs[0])) == "sync"
    assert stored(config.repositories()[1], segs[0].name) == segs[0].read_bytes()
    assert wal_status.read_gaps(config) == ([], 0)


def test_an_error_file_older_than_a_success_is_not_taken_for_a_failure(tmp_path, monkeypatch):
    config = regions(tmp_path, **{"async": True, "async_wait_seconds": 0.5})
    seg = segment(tmp_path, 0x66)
    monkeypatch.setattr(wal_pusher, "ensure_pusher", lambda cfg: False)
    err = tmp_path / "spool" / "error" / seg.name
    err.write_text(json.dumps({"kind": "unavailable", "message": "home down, long ago"}))
    os.utime(err, (time.time() - 100, time.time() - 100))
    wal_status.note_outcomes(config, {"there": None}, force=True)  # a repository succeeded since
    assert wal_pusher.archive(config, str(seg)) == "sync"
    assert stored(config.repositories()[0], seg.name) == seg.read_bytes() and not err.exists()


def test_a_segment_of_another_cluster_is_refused_never_dropped_over_the_bound(tmp_path):
    config = regions(tmp_path, queue_max_bytes=3 * 4096, system_identifier="1111")
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    segs[0].write_bytes(segment_of(2222, 4096))
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    wal_status.note_outcomes(config, {"here": "down a moment ago", "there": "down a moment ago"}, force=True)
    with pytest.raises(wal_objects.ForeignWal, match="system identifier 2222"):
        wal_pusher.archive(config, str(segs[0]))
    assert wal_status.read_gaps(config) == ([], 0) and not wal_status.read_status(config).get("gaps")


def test_a_gap_that_cannot_be_recorded_is_no_drop(tmp_path, capsys):
    from ansible_collections.immersiverse.dr.plugins.module_utils._wal import cli as wal_cli

    config = regions(tmp_path, queue_max_bytes=3 * 4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    (tmp_path / "spool" / "gaps.jsonl").mkdir()  # cannot be appended to
    with pytest.raises(wal_objects.WalArchiveError, match="the gap cannot be recorded.*not dropped, not archived"):
        wal_pusher.archive(config, str(segs[0]))
    conf = tmp_path / "wal.json"
    conf.write_text(json.dumps(config.doc))
    assert wal_cli.main(["push", str(segs[0]), "--config", str(conf)]) == 1  # PostgreSQL keeps the segment
    err = capsys.readouterr().err
    assert "DROPPED" not in err and "pg_wal keeps growing" in err
    assert not wal_status.read_status(config).get("gaps")
    # status.json unwritable is no reason to keep the segment: the record is the gaps file
    (tmp_path / "spool" / "gaps.jsonl").rmdir()
    (tmp_path / "spool" / "status.json").unlink()
    (tmp_path / "spool" / "status.json").mkdir()
    assert wal_pusher.archive(config, str(segs[0])) == "dropped"
    err = capsys.readouterr().err
    assert "WAL DROPPED" in err and "cannot update the view of the gaps" in err
    assert wal_status.read_gaps(config)[0][0]["first"] == segs[0].name


def test_an_unparsable_status_file_never_loses_the_gaps(tmp_path, capsys):
    config = regions(tmp_path, queue_max_bytes=3 * 4096)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 5)
    break_(tmp_path, "here")
    break_(tmp_path, "there")
    assert wal_pusher.archive(config, str(segs[0])) == "dropped"
    (tmp_path / "spool" / "status.json").write_text('{"repositories": {"here": ')  # torn
    wal_status.note_outcomes(config, {"here": "still down"}, force=True)
    status = wal_status.read_status(config)
    assert status["gap"]["first"] == segs[0].name and status["gap"]["count"] == 1
    assert (tmp_path / "spool" / "status.json.unreadable").read_text() == '{"repositories": {"here": '
    assert "moved to" in capsys.readouterr().err


def test_the_gaps_file_is_only_appended_to_and_a_torn_line_stays_alone(tmp_path):
    config = regions(tmp_path)
    for segno in (0x01, 0x02, 0x09):
        wal_status.record_gap(config, wal_naming.segment_name(1, segno), 1, "down")
    path = tmp_path / "spool" / "gaps.jsonl"
    with open(path, "a") as fh:
        fh.write('{"segment": "0000000100000000000000')  # a crash in the middle of a line
    wal_status.record_gap(config, wal_naming.segment_name(1, 0x0A), 1, "down")
    gaps, unreadable = wal_status.read_gaps(config)
    assert [(g["first"], g["last"], g["count"]) for g in gaps] == [
        (wal_naming.segment_name(1, 1), wal_naming.segment_name(1, 2), 2), (wal_naming.segment_name(1, 9),
                                                                            wal_naming.segment_name(1, 10), 2)]
    assert unreadable == 1
    for _round in range(3):  # never trimmed, whatever the number
        with wal_status.status_update(config) as doc:
            doc["gaps"] = []
    assert len(path.read_text().splitlines()) == 5


def segment_of(sysid, size=16384):
    """The first bytes of a PostgreSQL 15 segment: a long page header (magic 0xD110, XLP_LONG_HEADER) with sysid."""
    import struct

    page = struct.pack("<HHIQI", 0xD110, 0x0002, 1, 0x7000000, 0) + b"\0" * 4
    header = page + struct.pack("<QII", sysid, 16 << 20, 8192)
    return header + b"\0" * (size - len(header))


def test_the_default_bound_is_4_gib_and_a_pusher_error_keeps_its_kind(tmp_path, monkeypatch):
    assert wal_config.Config({"repository": {"type": "local", "path": str(tmp_path)}}).queue_max_bytes == 4 << 30
    config = regions(tmp_path, **{"async": True, "async_wait_seconds": 2})
    seg = segment(tmp_path, 0x60)
    monkeypatch.setattr(wal_pusher, "ensure_pusher", lambda cfg: False)  # as if the pusher had run and failed
    (tmp_path / "spool" / "error" / seg.name).write_text(json.dumps({"kind": "unavailable", "message": "home down"}))
    with pytest.raises(wal_objects.NoRepositoryTookIt, match="home down") as caught:
        wal_pusher.push_async(config, str(seg))
    assert not caught.value.tried_every, "the pusher's word: archive() tries every repository before any drop"
    (tmp_path / "spool" / "error" / seg.name).write_text("an error file of an older version")
    with pytest.raises(wal_objects.WalArchiveError, match="older version") as caught:
        wal_pusher.push_async(config, str(seg))
    assert not isinstance(caught.value, wal_objects.NoRepositoryTookIt)


def test_the_cli_backfill_and_status(tmp_path, capsys):
    from ansible_collections.immersiverse.dr.plugins.module_utils._wal import cli as wal_cli

    config = regions(tmp_path)
    conf = tmp_path / "wal.json"
    conf.write_text(json.dumps(config.doc))
    break_(tmp_path, "there")
    seg = segment(tmp_path, 0x70)
    assert wal_cli.main(["push", str(seg), "--config", str(conf)]) == 0
    assert wal_cli.main(["backfill", "--config", str(conf)]) == 1
    out = capsys.readouterr().out
    assert f"still owed to there: 1 segment(s), oldest {seg.name}" in out
    assert wal_cli.main(["status", "--config", str(conf)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["repositories"]["there"]["owed"] == 1 and status["repositories"]["here"]["role"] == "home"
    assert set(status) >= {"ok", "error", "fetch", "repositories", "gap", "gaps", "gaps_file", "updated_time"}
    mend(tmp_path, "there")
    assert wal_cli.main(["backfill", "--config", str(conf)]) == 0
    assert capsys.readouterr().out == f"copied {seg.name} to there\nnothing owed\n"
    assert wal_cli.main(["backfill", "--config", str(conf)]) == 0
    assert capsys.readouterr().out == "nothing owed\n"


def test_the_background_pusher_backfills_beside_its_pushes_once_the_back_off_ran_out(tmp_path, capsys):
    config = regions(tmp_path, idle_exit_seconds=1, owed_linger_seconds=0)
    pg_wal, segs = pg_wal_with_ready(tmp_path, 1)
    owed_seg = segment(tmp_path, 0x80)
    break_(tmp_path, "there")
    wal_push.push_file(config, str(owed_seg))
    mend(tmp_path, "there")
    config.pg_wal = str(pg_wal)
    started = time.monotonic()
    wal_pusher.run_pusher(config)  # in the foreground: pushes the ready segment, one backfill round, idle, exits
    assert time.monotonic() - started < 10
    there = config.repositories()[1]
    assert (tmp_path / "spool" / "ok" / segs[0].name).exists(), "archived: the home region has it"
    assert stored(config.repositories()[0], segs[0].name) == segs[0].read_bytes()
    # the region is back, but in back-off: neither the push nor the round touched it
    assert wal_status.owed_names(config, "there") == sorted([owed_seg.name, segs[0].name])
    assert stored(there, segs[0].name) is None
    with wal_status.status_update(config) as doc:  # the back-off ran out
        doc["repositories"]["there"]["retry_after_time"] = 0
    wal_pusher.run_pusher(config)
    assert wal_status.owed_names(config, "there") == []
    assert stored(there, owed_seg.name) == owed_seg.read_bytes()
    assert stored(there, segs[0].name) == segs[0].read_bytes()
    assert f"backfilled {owed_seg.name} to there (copied)" in capsys.readouterr().err


def test_the_pusher_lingers_while_a_region_is_owed_and_exits_once_it_got_everything(tmp_path):
    """A region back from an outage on a database that archives nothing more: the pusher does not exit idle while
    the region is owed segments; it waits out the back-off, backfills, then exits (owed_linger_seconds bounds it)."""
    config = regions(tmp_path, idle_exit_seconds=0.5, owed_linger_seconds=20)
    owed_seg = segment(tmp_path, 0x81)
    break_(tmp_path, "there")
    wal_push.push_file(config, str(owed_seg))
    mend(tmp_path, "there")
    with wal_status.status_update(config) as doc:  # back in 2 s
        doc["repositories"]["there"]["retry_after_time"] = time.time() + 2
    config.pg_wal = str(tmp_path / "empty-pg_wal")
    os.makedirs(config.pg_wal)
    started = time.monotonic()
    wal_pusher.run_pusher(config)
    took = time.monotonic() - started
    assert wal_status.owed_names(config, "there") == []
    assert stored(config.repositories()[1], owed_seg.name) == owed_seg.read_bytes()
    assert 1.5 < took < 15, took


# -- reconcile: what the markers cannot cover (a failover, a rebuild), from the repositories' listings ---------------
def three_regions(tmp_path):
    names = ("here", "there", "third")
    doc = {"repository": {"type": "local", "name": names[0], "path": str(tmp_path / names[0] / "r")},
           "offsite": [{"type": "local", "name": n, "path": str(tmp_path / n / "r")} for n in names[1:]],
           "spool_dir": str(tmp_path / "spool"), "async": False}
    config = wal_config.Config(doc)
    wal_pusher.marker_dirs(config)
    return config, dict(zip(names, config.repositories(), strict=True))


def put(repo, name, raw=None):
    repo.put_bytes(wal_naming.wal_key(name), wal_objects.pack(raw or name.encode() * 100, "lz4")[0])


def test_reconcile_copies_what_one_region_holds_and_another_lacks(tmp_path):
    config, repos = three_regions(tmp_path)
    seg = {n: wal_naming.segment_name(1, n) for n in (0x10, 0x8F, 0x90, 0x91, 0x92, 0x93)}
    for name in (seg[0x10], seg[0x90], seg[0x92]):
        put(repos["here"], name)
    for name in (seg[0x8F], seg[0x91], seg[0x92]):
        put(repos["there"], name)
    for name in (seg[0x90], seg[0x92], "00000002.history"):
        put(repos["third"], name)
    put(repos["here"], seg[0x93], b"mine" * 100)  # two regions, two contents: nobody gets a copy
    put(repos["there"], seg[0x93], b"yours" * 100)
    wal_status.owe(config, "there", seg[0x90], wal_naming.wal_key(seg[0x90]), None, "a marker the reconcile repays")
    report = wal_backfill.reconcile(config)
    assert sorted(report["copied"]) == sorted([
        ("here", "00000002.history", "copied"), ("here", seg[0x8F], "copied"), ("here", seg[0x91], "copied"),
        ("there", "00000002.history", "copied"), ("there", seg[0x90], "copied"),
        ("third", seg[0x91], "copied")])
    # below the oldest segment a region holds: what its lifecycle expired is not brought back
    assert report["older"] == {"there": (1, seg[0x8F]), "third": (2, seg[0x90])}
    assert len(report["conflicts"]) == 1 and "different content" in report["conflicts"][0]
    assert report["missing"] == {"third": 1} and report["errors"] == {}
    assert stored(repos["there"], seg[0x90]) == seg[0x90].encode() * 100
    assert stored(repos["third"], seg[0x93]) is None
    assert stored(repos["here"], seg[0x93]) == b"mine" * 100 and stored(repos["there"], seg[0x93]) == b"yours" * 100
    assert wal_status.owed_names(config, "there") == []
    everything = wal_backfill.reconcile(config, everything=True)
    assert sorted(everything["copied"]) == [("there", seg[0x10], "copied"), ("third", seg[0x10], "copied"),
                                            ("third", seg[0x8F], "copied")]
    assert everything["older"] == {} and everything["missing"] == {"third": 1}


def test_reconcile_never_writes_over_a_copy_stored_meanwhile_and_reports_a_region_it_cannot_list(tmp_path, monkeypatch):
    config, repos = three_regions(tmp_path)
    first, second = wal_naming.segment_name(1, 0x20), wal_naming.segment_name(1, 0x21)
    for repo in repos.values():
        put(repo, first)
    put(repos["here"], second)
    theirs = wal_objects.pack(b"theirs" * 100, "lz4")[0]
    real = repo_local.LocalRepository.list

    def listing(self, prefix=""):
        found = real(self, prefix)
        if self.name == "there":  # another writer stores other content right after the listing
            self.put_bytes(wal_naming.wal_key(second), theirs)
        if self.name == "third":
            raise repo_base.RepositoryError("third: cannot reach it")
        return found

    monkeypatch.setattr(repo_local.LocalRepository, "list", listing)
    report = wal_backfill.reconcile(config)
    assert report["copied"] == [] and report["missing"] == {"there": 1}
    assert "different content" in report["conflicts"][0]
    assert repos["there"].get_bytes(wal_naming.wal_key(second)) == theirs
    assert "cannot list its WAL" in report["errors"]["third"]


def test_the_cli_backfill_reconcile(tmp_path, capsys):
    from ansible_collections.immersiverse.dr.plugins.module_utils._wal import cli as wal_cli

    config, repos = three_regions(tmp_path)
    conf = tmp_path / "wal.json"
    conf.write_text(json.dumps(config.doc))
    names = [wal_naming.segment_name(1, n) for n in (0x30, 0x31)]
    for repo in repos.values():
        put(repo, names[0])
    put(repos["there"], names[1])  # pushed while the primary was elsewhere: no marker on this spool
    assert wal_cli.main(["backfill", "--config", str(conf)]) == 0
    assert capsys.readouterr().out == "nothing owed\n", "the markers alone do not see it"
    assert wal_cli.main(["backfill", "--reconcile", "--config", str(conf)]) == 0
    assert capsys.readouterr().out == (f"copied {names[1]} to here\ncopied {names[1]} to third\n"
                                       "nothing owed, nothing missing\n")
    put(repos["here"], names[1].replace("31", "32"), b"mine" * 100)
    put(repos["third"], names[1].replace("31", "32"), b"yours" * 100)
    assert wal_cli.main(["backfill", "--reconcile", "--config", str(conf)]) == 1
    out = capsys.readouterr().out
    assert "conflict: the repositories hold" in out and "still missing in there: 1 file(s)" in out
