"""The restore plan on a repository laid out by hand: which backup serves a target, the timeline path, gaps, the
streamed partial, and the refusals."""

import json
import os

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import timeline as restore_timeline
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import watch as restore_watch
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming

SYSID = "7300000000000000001"
SEG = 16 * 1024 * 1024


def backup(repo, backup_id, start_segno, stop_time, timeline=1, sysid=SYSID):
    record = {"id": backup_id, "kind": "full", "system_identifier": sysid, "timeline": timeline,
              "start_lsn": wal_naming.int_to_lsn(start_segno * SEG + 40),
              "stop_lsn": wal_naming.int_to_lsn(start_segno * SEG + 400),
              "start_time": stop_time, "stop_time": stop_time, "wal_segment_size": SEG, "files": []}
    repo.put_bytes(f"backup/{backup_id}/backup.json", json.dumps(record).encode(), overwrite=True)
    return record


def wal(repo, timeline, segnos, mtime=None, area="wal"):
    for segno in segnos:
        name = wal_naming.segment_name(timeline, segno)
        key = wal_naming.wal_key(name) if area == "wal" else wal_naming.stream_key(name)
        repo.put_bytes(key, b"x", overwrite=True)
        if mtime:
            os.utime(os.path.join(repo.root, key), (mtime, mtime))


@pytest.fixture
def repo(tmp_path):
    return repo_local.LocalRepository(str(tmp_path / "repo"), name="primary")


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
    plan = restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 500)})
    assert plan["backup"]["id"] == "B1"
    assert plan["wal"]["first"] == wal_naming.segment_name(1, 3) and plan["wal"][
        "last"] == wal_naming.segment_name(1, 19)
    plan = restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 1500)})
    assert plan["backup"]["id"] == "B2" and plan["wal"]["segments"] == 9
    assert restore_plan.plan([repo], {"type": "end"})["backup"]["id"] == "B2"
    assert restore_plan.plan([repo], {"type": "lsn", "value": wal_naming.int_to_lsn(5 * SEG)})["backup"]["id"] == "B1"


def test_refusals_say_why(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 8), mtime=t0 + 100)
    with pytest.raises(restore_target.RestoreError, match="before the oldest backup"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 - 10)})
    with pytest.raises(restore_target.RestoreError, match="after the end of the WAL"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 200)})
    with pytest.raises(restore_target.RestoreError, match="after the end of the WAL"):
        restore_plan.plan([repo], {"type": "lsn", "value": wal_naming.int_to_lsn(9 * SEG)})
    wal(repo, 1, [9, 10], mtime=t0 + 300)  # segment 8 missing, later ones present
    with pytest.raises(restore_target.RestoreError, match="000000010000000000000008 is missing"):
        restore_plan.plan([repo], {"type": "end"})
    with pytest.raises(restore_target.RestoreError, match="000000010000000000000008 is missing"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 250)})
    ok = restore_plan.plan([repo], {"type": "lsn", "value": wal_naming.int_to_lsn(7 * SEG + 5)})
    assert ok["wal"]["last"] == wal_naming.segment_name(1, 7)
    with pytest.raises(restore_target.RestoreError, match="backups of 2 clusters"):
        backup(repo, "B9", 2, iso(t0), sysid="42")
        restore_plan.plan([repo], {"type": "end"})
    assert restore_plan.plan([repo], {"type": "immediate"}, system_identifier="42")["backup"]["id"] == "B9"


def test_timeline_history_is_followed(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 6), mtime=t0 + 10)           # timeline 1 up to the switch in segment 5
    repo.put_bytes(wal_naming.wal_key("00000002.history"), b"1\t0/5000100\tno recovery target specified\n")
    wal(repo, 2, range(5, 9), mtime=t0 + 20)           # timeline 2 from segment 5 on
    plan = restore_plan.plan([repo], {"type": "end"})
    assert plan["timeline"] == 2
    assert plan["timeline_path"] == [[1, "0/0", "0/5000100"], [2, "0/5000100", None]]
    assert plan["wal"]["last"] == wal_naming.segment_name(2, 8) and plan["wal"]["segments"] == 6
    current = restore_plan.plan([repo], {"type": "end", "timeline": "current"})
    assert current["timeline"] == 1 and current["wal"]["last"] == wal_naming.segment_name(1, 5)
    with pytest.raises(restore_target.RestoreError, match="timeline 3"):
        restore_plan.plan([repo], {"type": "end", "timeline": "3"})


def test_streamed_segments_and_the_partial_extend_the_archive(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    wal(repo, 1, range(3, 6), mtime=t0 + 10)
    wal(repo, 1, [6, 7], mtime=t0 + 20, area="stream")
    repo.put_bytes(wal_naming.piece_key(wal_naming.segment_name(1, 8), 0, 8192), b"x")
    plan = restore_plan.plan([repo], {"type": "lsn", "value": wal_naming.int_to_lsn(8 * SEG + 100)})
    assert plan["wal"]["last"] == wal_naming.segment_name(1, 7)
    assert plan["wal"]["partial"] == wal_naming.segment_name(1, 8) + ".partial"
    with pytest.raises(restore_target.RestoreError, match="after the end"):
        restore_plan.plan([repo], {"type": "lsn", "value": wal_naming.int_to_lsn(8 * SEG + 100)}, use_partial=False)


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
    with pytest.raises(restore_target.RestoreError, match=message):
        restore_target.normalise_target(target)


def test_time_zones_are_normalised():
    import datetime

    instant = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.UTC)
    for spelling in ("2026-11-27 10:00:00+00", "2026-11-27T11:00:00+01:00", "2026-11-27T10:00:00Z",
                     "2026-11-27 11:00:00 Europe/Paris"):
        moment = restore_target.parse_target_time(spelling)
        assert moment.utcoffset() is not None and moment == instant, spelling
    with pytest.raises(restore_target.RestoreError):
        restore_target.parse_target_time("2026-11-27 10:00:00")  # no zone: refused, never taken as local time


def test_history_parsing():
    text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000100\tbefore 2026-11-27 10:00:00+00\n"
    assert restore_timeline.parse_history(text) == [(1, 0x3000000), (2, 0x5000100)]
    with pytest.raises(restore_target.RestoreError):
        restore_timeline.parse_history("garbage\n")


def test_moved_aside_directories_are_pruned_by_age_never_the_protected_one(tmp_path):
    import datetime

    data = tmp_path / "main"
    for stamp in ("20261101T000000Z", "20261120T000000Z", "20261126T000000Z"):
        (tmp_path / ("main.replaced-" + stamp)).mkdir()
    now = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    protect = {str(tmp_path / "main.replaced-20261101T000000Z")}
    assert restore_datadir.prune_moved_aside(str(data), 3, now=now, protect=protect, check_mode=True) == [
        str(tmp_path / "main.replaced-20261120T000000Z")]
    removed = restore_datadir.prune_moved_aside(str(data), 3, now=now, protect=protect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.replaced-20261101T000000Z",
                                                          "main.replaced-20261126T000000Z"]
    assert len(removed) == 1


# -- refused in the plan, before anything stops ------------------------------------------------------------------
def packed_wal(repo, timeline, segno, content, mtime):
    from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects

    key = wal_naming.wal_key(wal_naming.segment_name(timeline, segno))
    repo.put_bytes(key, wal_objects.pack(content, "none")[0], overwrite=True)
    os.utime(os.path.join(repo.root, key), (mtime, mtime))


def commits_in(raw, name):
    """A stand-in for pg_waldump: the test's segments say their commit times as text."""
    import datetime

    text = raw.decode()
    return [datetime.datetime.fromtimestamp(int(t), datetime.UTC) for t in text.split()[1:]] \
        if text.startswith("commits") else []


def test_a_time_target_is_bounded_by_the_wals_own_commits_not_by_late_uploads(repo):
    """Archiving ran late: the last segment was uploaded an hour after its last commit. A target between the two
    passes an upload-time bound and then fails in PostgreSQL after the data directory moved; it is refused here."""
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    packed_wal(repo, 1, 3, f"commits {t0 + 10} {t0 + 20}".encode(), mtime=t0 + 3600)
    packed_wal(repo, 1, 4, b"idle", mtime=t0 + 3600)  # no transaction: the bound comes from the segment before
    with pytest.raises(restore_target.RestoreError, match="after the last transaction in the WAL"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 600)}, commit_times=commits_in)
    ok = restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 15)}, commit_times=commits_in)
    assert ok["wal"]["archive_ends"].startswith(iso(t0 + 20)[:19]) and ok["wal"]["archive_ends_from"] != "upload time"
    # inclusive needs a commit after the target; exclusive one at or after it
    with pytest.raises(restore_target.RestoreError, match="after the last transaction"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 20)}, commit_times=commits_in)
    assert restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 20), "inclusive": False},
                             commit_times=commits_in)["backup"]["id"] == "B1"
    # without a reader (or with WAL it cannot read) the old bound stays, and the plan says so
    assert restore_plan.plan([repo], {"type": "time",
                                      "value": ts(t0 + 600)})["wal"]["archive_ends_from"] == "upload time"


def test_a_backup_with_tablespaces_is_refused_in_the_plan(repo):
    t0 = 1_800_000_000
    record = backup(repo, "B1", 2, iso(t0))
    record["files"] = [{"name": "base.tar.zst"}, {"name": "16385.tar.zst"}, {"name": "backup_manifest"}]
    repo.put_bytes("backup/B1/backup.json", json.dumps(record).encode(), overwrite=True)
    wal(repo, 1, range(3, 5), mtime=t0 + 10)
    with pytest.raises(restore_target.RestoreError,
                       match=r"tablespace archives \(16385.tar.zst\).*Nothing was changed"):
        restore_plan.plan([repo], {"type": "end"})


class ArchiveTierRepository(repo_local.LocalRepository):
    """A local repository that reports some keys in GLACIER, as S3 lists and heads them after a lifecycle rule
    moved them (``restored``: keys whose temporary restored copy is ready)."""

    def __init__(self, root, name, glacier=(), restored=()):
        super().__init__(root, name=name)
        self.glacier, self.restored = set(glacier), set(restored)

    def _mark(self, info):
        if info is not None and info["key"] in self.glacier:
            info["storage_class"] = "GLACIER"
            if info["key"] in self.restored:
                info["restore"] = 'ongoing-request="false", expiry-date="Fri, 01 Jan 2027 00:00:00 GMT"'
        return info

    def head(self, key):
        return self._mark(super().head(key))

    def list(self, prefix=""):
        return [self._mark(o) for o in super().list(prefix)]


def test_objects_in_an_archive_tier_are_refused_in_the_plan_saying_which(tmp_path):
    t0 = 1_800_000_000
    plain = repo_local.LocalRepository(str(tmp_path / "r"), name="primary")
    record = backup(plain, "B1", 2, iso(t0))
    record["files"] = [{"name": "base.tar.zst"}, {"name": "backup_manifest"}]
    plain.put_bytes("backup/B1/backup.json", json.dumps(record).encode(), overwrite=True)
    plain.put_bytes("backup/B1/base.tar.zst", b"x")
    plain.put_bytes("backup/B1/backup_manifest", b"{}")
    wal(plain, 1, range(3, 6), mtime=t0 + 10)
    seg4 = wal_naming.wal_key(wal_naming.segment_name(1, 4))
    base = "backup/B1/base.tar.zst"
    cold = ArchiveTierRepository(str(tmp_path / "r"), "primary", glacier={base, seg4})
    with pytest.raises(restore_target.RestoreError) as refused:
        restore_plan.plan([cold], {"type": "end"})
    assert "2 object(s)" in str(refused.value) and base in str(refused.value) and seg4 in str(refused.value)
    assert "restore-object" in str(refused.value) and "Nothing was changed" in str(refused.value)
    # restored copies are readable; a segment with a readable copy in another region is no obstacle either
    warm = ArchiveTierRepository(str(tmp_path / "r"), "primary", glacier={base, seg4}, restored={base})
    other = repo_local.LocalRepository(str(tmp_path / "other"), name="secondary")
    wal(other, 1, [4], mtime=t0 + 10)
    assert restore_plan.plan([warm, other], {"type": "end"})["backup"]["id"] == "B1"


def test_the_host_side_checks_refuse_a_mount_point_and_too_little_space(tmp_path):
    plan_doc = {"backup": {"database_bytes": 1024}}
    assert restore_datadir.check_data_dir(plan_doc, str(tmp_path / "data"))["needed_bytes"] > 1024
    with pytest.raises(restore_target.RestoreError, match="is a mount point"):
        restore_datadir.check_data_dir(plan_doc, "/proc")
    with pytest.raises(restore_target.RestoreError, match="GiB free; the restore needs about"):
        restore_datadir.check_data_dir({"backup": {"database_bytes": 1 << 60}}, str(tmp_path / "data"))


# -- watching recovery: the on-call never waits an hour on an error shown at once -------------------------------
def test_a_connection_the_running_server_refuses_is_reported_at_once_not_after_the_timeout(monkeypatch, tmp_path):
    import time

    monkeypatch.setattr(restore_datadir, "postmaster_running", lambda data_dir: 4242)
    monkeypatch.setattr(restore_watch, "CONNECT_GRACE", 0.3)

    def wrong_socket():
        raise Exception('connection to server on socket "/wrong/.s.PGSQL.5432" failed: No such file or directory')

    started = time.monotonic()
    with pytest.raises(restore_target.RestoreError, match="cannot connect to it to watch.*restore_socket_dir"):
        restore_watch.wait_for_recovery(wrong_socket, str(tmp_path), "", timeout=60, poll=0.05)
    assert time.monotonic() - started < 5

    def missing_library():
        raise Exception("psycopg2 is required on the host the module runs on")

    with pytest.raises(restore_target.RestoreError, match="psycopg2 is required"):
        restore_watch.wait_for_recovery(missing_library, str(tmp_path), "", timeout=60, poll=0.05)

    def starting_up():
        raise Exception("FATAL:  the database system is not yet accepting connections")

    with pytest.raises(restore_target.RestoreError, match="did not reach its target within 1 s"):
        restore_watch.wait_for_recovery(starting_up, str(tmp_path), "", timeout=1, poll=0.05)


def test_a_foreign_language_refusal_is_told_from_a_server_still_starting_by_its_ping(monkeypatch, tmp_path):
    import time

    monkeypatch.setattr(restore_datadir, "postmaster_running", lambda data_dir: 4242)
    monkeypatch.setattr(restore_watch, "CONNECT_GRACE", 0.3)

    def refused():
        raise Exception("FATAL:  das Datenbanksystem startet")  # lc_messages=de_DE: no English word to match

    with pytest.raises(restore_target.RestoreError, match="did not reach its target within 1 s"):
        restore_watch.wait_for_recovery(refused, str(tmp_path), "", timeout=1, poll=0.05, ping=lambda: "rejecting")
    started = time.monotonic()
    with pytest.raises(restore_target.RestoreError, match="cannot connect to it to watch"):
        restore_watch.wait_for_recovery(refused, str(tmp_path), "", timeout=60, poll=0.05, ping=lambda: "no-response")
    assert time.monotonic() - started < 5


# -- the data directory: one restore at a time, interruptions that cannot be resumed blindly ---------------------
PLAN_DOC = {"backup": {"id": "B1", "database_bytes": 1024, "start_lsn": "0/2000028", "stop_lsn": "0/2000100"},
            "target": {"type": "end"}, "timeline": 1}


def test_a_second_restore_of_the_same_data_directory_is_refused_while_one_runs(tmp_path):
    data = tmp_path / "main"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    with restore_datadir._Lock(str(data)):
        with pytest.raises(restore_target.RestoreError, match="another restore is working on this data directory.*pid"):
            restore_datadir.prepare_data_dir([], PLAN_DOC, str(data))
    assert (data / "PG_VERSION").exists() and not (tmp_path / "main.restoring").exists()


def test_an_interruption_between_the_renames_is_finished_by_the_same_request_only(tmp_path):
    data = tmp_path / "main"
    aside = tmp_path / "main.replaced-20261201T000000Z"
    aside.mkdir()
    (aside / "PG_VERSION").write_text("15\n")
    staging = tmp_path / "main.restoring"
    staging.mkdir()
    (staging / "PG_VERSION").write_text("15\n")
    earlier = {"backup_id": "B0", "target": {"type": "end"}, "timeline": 1}
    (staging / restore_datadir.MARKER).write_text(json.dumps({"request": earlier}))
    restore_datadir.write_state(str(data), {"request": earlier, "phase": "moving-aside", "moved_aside": str(aside)})
    with pytest.raises(restore_target.RestoreError, match="interrupted between its two renames.*restore_backup_id=B0"):
        restore_datadir.prepare_data_dir([], PLAN_DOC, str(data))
    assert (staging / "PG_VERSION").exists() and (aside / "PG_VERSION").exists() and not data.exists()
    # the same request puts its complete copy in place without fetching anything
    done = restore_datadir.prepare_data_dir([], dict(PLAN_DOC, backup=dict(PLAN_DOC["backup"], id="B0")), str(data))
    assert done["changed"] and done["moved_aside"] == str(aside)
    assert restore_datadir.read_state(str(data))["phase"] == "restored" and (data / restore_datadir.MARKER).exists()


def test_a_data_directory_put_back_by_hand_is_not_taken_for_the_restored_one(tmp_path):
    """Interrupted while placing; the operator moved the old directory back by hand. A re-run must not mark the
    old cluster restored (the role would then start it in targeted recovery): it restores again."""
    data = tmp_path / "main"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")  # the old cluster, no marker
    request = restore_datadir.restore_request(PLAN_DOC)
    restore_datadir.write_state(str(data), {"request": request, "phase": "placing", "moved_aside": None})
    checked = restore_datadir.prepare_data_dir([], PLAN_DOC, str(data), check_mode=True)
    assert checked["restored"] and checked["moved_aside"], "check mode must say it restores and moves aside"


def test_a_symlinked_data_directory_is_refused_with_the_real_path(tmp_path):
    real = tmp_path / "srv-pg"
    real.mkdir()
    link = tmp_path / "main"
    link.symlink_to(real)
    with pytest.raises(restore_target.RestoreError, match="symbolic link.*restore_data_dir to " + str(real)):
        restore_datadir.check_data_dir(PLAN_DOC, str(link))


def test_a_wal_reader_that_fails_falls_back_with_a_warning_and_no_transaction_at_all_is_refused(repo):
    t0 = 1_800_000_000
    backup(repo, "B1", 2, iso(t0))
    packed_wal(repo, 1, 3, b"idle", mtime=t0 + 100)

    def broken(raw, name):
        raise restore_target.RestoreError(f"pg_waldump could not read {name}: bad magic")

    plan = restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 50)}, commit_times=broken)
    assert plan["wal"]["archive_ends_from"] == "upload time"
    assert any("could not read" in w and "upload times" in w for w in plan["warnings"])
    with pytest.raises(restore_target.RestoreError, match="holds no transaction.*full restore"):
        restore_plan.plan([repo], {"type": "time", "value": ts(t0 + 50)}, commit_times=commits_in)


def test_a_restore_that_opened_is_the_same_request_on_the_timeline_it_created():
    """After a PITR opened (promoted: a new timeline), target_timeline=latest resolves to that new timeline. A re-run
    with the same backup and target is that finished restore, never a second one that would throw away every write
    made since it opened."""
    pitr = dict(PLAN_DOC, target={"type": "time", "value": "2026-12-04T05:00:00+00:00", "timeline": "latest"})
    opened = {"request": restore_datadir.restore_request(pitr), "phase": "recovered"}
    assert restore_datadir.same_request(opened, dict(pitr, timeline=2))
    # not finished yet (paused, restoring): the timeline still decides
    assert not restore_datadir.same_request(dict(opened, phase="paused"), dict(pitr, timeline=2))
    # another target or another backup is another restore
    other = dict(pitr, target=dict(pitr["target"], value="2026-12-04T05:00:01+00:00"))
    assert not restore_datadir.same_request(opened, dict(other, timeline=2))
    assert not restore_datadir.same_request(opened, dict(pitr, backup=dict(PLAN_DOC["backup"], id="B2"), timeline=2))
    assert not restore_datadir.same_request(None, pitr)
