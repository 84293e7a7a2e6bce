"""Restores against real PostgreSQL: PITR exactness under the workload generator (time inclusive and exclusive,
LSN, named restore point), targets that cannot be reached (refused by the plan, and by PostgreSQL when the plan is
bypassed), a missing and a corrupted segment, interruption and re-run, check mode.

The source archives with the collection's own archive_command (the wal_archive role's wrapper, run by PostgreSQL
as the postgres user) into a local repository; restores use the same wrapper as restore_command. Restored servers
pause at their target (recovery_target_action = pause) and are read as hot standbys, so no test opens a new
timeline that a later test would follow.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
from conftest import PG_BIN, PgServer, create_service_database
from test_backups import run_module
from test_wal_push_fetch import Archive

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import watch as restore_watch  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs the archive command as postgres")]
POSTGRES = pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def chown_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), POSTGRES.pw_uid, POSTGRES.pw_gid)
    os.chown(path, POSTGRES.pw_uid, POSTGRES.pw_gid)


class Source:
    """A primary archiving into a local repository, with one backup and a journalled generator run after it."""

    def __init__(self, factory, work: Path):
        self.work = work
        self.repo_dir = work / "repo"
        self.repo_dir.mkdir(mode=0o700)
        os.chown(self.repo_dir, POSTGRES.pw_uid, POSTGRES.pw_gid)
        self.spec = {"type": "local", "name": "primary", "path": str(self.repo_dir)}
        self.archive = Archive(work / "wal", [self.spec], prefetch=4)
        self.server = factory("pitr-src", settings={
            "wal_level": "replica", "archive_mode": "on", "max_wal_senders": "5", "track_commit_timestamp": "on",
            "archive_command": f"'{self.archive.wrapper} push %p'"})
        self.db = create_service_database(self.server)
        self.repo = repo_local.LocalRepository(str(self.repo_dir), name="primary")

    def backup(self) -> dict:
        conn = pg_connection.connect({"login_host": self.server.host, "login_port": self.server.port,
                                      "login_user": "postgres", "login_password": self.server.password,
                                      "login_db": "postgres", "login_unix_socket": "", "connect_timeout": 5,
                                      "ssl_mode": "disable"})
        try:
            ident = backup_catalog.cluster_identity(conn)
        finally:
            conn.close()
        params = {"login_host": self.server.host, "login_port": self.server.port, "login_user": "postgres",
                  "login_password": self.server.password, "login_db": "postgres", "login_unix_socket": "",
                  "connect_timeout": 5, "ssl_mode": "disable"}
        record = backup_full.take_backup(self.repo, params, ident)
        chown_tree(self.repo_dir)
        return record

    def switch_and_wait(self) -> str:
        last = self.server.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        self.server.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = self.server.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0]
            if done >= last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{last} was not archived in 60 s: {self.server.psql('SELECT * FROM pg_stat_archiver')}")

    def run_generator(self, seconds: float, during=None) -> list[dict]:
        journal = self.work / f"journal-{time.monotonic_ns()}.jsonl"
        env = {**self.server.env(), "PYTHONPATH": str(REPO / "lab"), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app",
                "--dbname", self.db, "--connect-timeout", "2", "--endpoint",
                f"primary={self.server.host}:{self.server.port}", "--rate", "100", "--duration", str(seconds)]
        gen = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.journal, self.generator = journal, gen
        extra = during() if during else None
        assert gen.wait(seconds + 60) == 0, gen.stderr.read()
        acks = [json.loads(line) for line in journal.read_text().splitlines()]
        return [a for a in acks if a.get("type") == "ack"], extra

    def acked(self) -> int:
        """Acknowledged writes in the running generator's journal so far (complete lines only)."""
        if not self.journal.exists():
            return 0
        text = self.journal.read_text()
        complete = text[:text.rfind("\n") + 1].splitlines()
        return sum(1 for line in complete if json.loads(line).get("type") == "ack")

    def wait_for_acks(self, count: int, timeout: float = 20.0) -> None:
        """Until the running generator has acknowledged ``count`` writes in all."""
        deadline = time.monotonic() + timeout
        while (n := self.acked()) < count:
            if self.generator.poll() is not None:
                raise AssertionError(f"the generator ended ({self.generator.returncode}) after {n} of {count} "
                                     f"acknowledged writes: {self.generator.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the generator acknowledged {n} of {count} writes in {timeout:.0f} s")
            time.sleep(0.05)

    def commit_times(self, request_ids) -> dict:
        rows = self.server.psql(
            "SELECT request_id::text, pg_xact_commit_timestamp(xmin)::text, "
            "extract(epoch FROM pg_xact_commit_timestamp(xmin))::numeric FROM audit_logs "
            "WHERE request_id::text = ANY(%s)", (list(request_ids),), dbname=self.db)
        return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def source(pg_server_factory):
    work = Path(tempfile.mkdtemp(prefix="drtest-restore-"))
    work.chmod(0o711)
    src = Source(pg_server_factory, work)
    src.record = src.backup()
    moments = {}

    def during():
        # the targets lie between writes: the LSN and restore-point tests need more than 50 on each side
        src.wait_for_acks(150)
        moments["lsn_read_at"] = time.time()
        moments["lsn"] = src.server.psql("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        moments["lsn_done_at"] = time.time()
        src.server.psql("SELECT pg_switch_wal()")
        src.wait_for_acks(300)
        moments["rp_at"] = time.time()
        moments["rp_lsn"] = src.server.psql("SELECT pg_create_restore_point('before-cleanup')::text")[0][0]
        moments["rp_done_at"] = time.time()
        src.wait_for_acks(380)
        src.server.psql("SELECT pg_switch_wal()")
        return moments

    src.acks, _moments = src.run_generator(7, during)
    src.moments = moments
    src.last_wal = src.switch_and_wait()
    src.commits = src.commit_times(a["request_id"] for a in src.acks)
    assert len(src.commits) == len(src.acks) > 300
    yield src
    shutil.rmtree(work, ignore_errors=True)


def restored_server(src: Source, name: str) -> PgServer:
    server = PgServer(src.work / name, name)
    server.run_dir.mkdir(parents=True)
    os.chown(server.run_dir, POSTGRES.pw_uid, POSTGRES.pw_gid)
    server.base_dir.chmod(0o711)
    server.password = src.server.password
    server._add_pgpass(server.user, server.password)
    return server


def recover(src: Source, server: PgServer, settings: dict, plan: dict | None = None, timeout: int = 120) -> dict:
    """Restore settings as PostgreSQL reads them, start, wait until paused at the target (or fail)."""
    auto = server.data_dir / "postgresql.auto.conf"
    lines = [f"port = {server.port}", f"unix_socket_directories = '{server.run_dir}'", "archive_mode = off",
             f"restore_command = '{src.archive.wrapper} fetch %f %p --unreachable abort'",
             "recovery_target_action = 'pause'"]
    lines += [f"{k} = '{v}'" for k, v in settings.items()]
    with open(auto, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    (server.data_dir / "recovery.signal").touch()
    chown_tree(server.data_dir)
    server._run(str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_file), "-w", "-t", "5",
                "start", check=False)

    def connect():
        return psycopg2.connect(server.dsn("postgres"), connect_timeout=2)

    return restore_watch.wait_for_recovery(connect, str(server.data_dir), str(server.log_file), timeout=timeout,
                                           poll=0.3)


def restore_to(src: Source, name: str, target: dict) -> tuple[PgServer, dict, dict]:
    plan = restore_plan.plan([src.repo], target)
    server = restored_server(src, name)
    restore_datadir.prepare_data_dir([src.repo], plan, str(server.data_dir))
    settings = {"recovery_target_inclusive": "on" if target.get("inclusive", True) else "off"}
    key = {"time": "recovery_target_time", "lsn": "recovery_target_lsn", "name": "recovery_target_name",
           "xid": "recovery_target_xid"}.get(target["type"])
    if key:
        settings[key] = target["value"]
    reached = recover(src, server, settings, plan)
    return server, plan, reached


def quiet_prefetch_spool(src: Source) -> None:
    """Wait for an earlier restore's prefetcher to finish, then empty its spool (its verified copies would be served
    instead of the object a test damages)."""
    import fcntl

    lock = src.archive.spool / "prefetch.lock"
    if lock.exists():
        with open(lock) as fh:
            deadline = time.monotonic() + 30
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"an earlier restore's prefetcher still holds {lock} after 30 s") from None
                    time.sleep(0.2)
    shutil.rmtree(src.archive.spool / "fetch", ignore_errors=True)


def present_ids(server: PgServer, db: str) -> set[str]:
    return {r[0] for r in server.psql("SELECT request_id::text FROM audit_logs", dbname=db)}


def stop(server: PgServer) -> None:
    server._run(str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "stop", "-m", "immediate", check=False)


# -- exactness -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inclusive", [True, False])
def test_pitr_to_a_commit_time_keeps_exactly_the_writes_up_to_it(source, inclusive):
    ordered = sorted(source.commits.items(), key=lambda kv: kv[1][1])
    k = len(ordered) // 2
    pivot_id, (pivot_text, pivot_epoch) = ordered[k]
    assert ordered[k - 1][1][1] < pivot_epoch < ordered[k + 1][1][1], "two commits share a timestamp"
    target = {"type": "time", "value": pivot_text, "inclusive": inclusive}
    server, plan, reached = restore_to(source, f"pitr-time-{inclusive}", target)
    try:
        assert reached["outcome"] == "paused", reached
        assert plan["backup"]["id"] == source.record["id"]
        assert plan["wal"]["segments"] >= 2
        got = present_ids(server, source.db)
        want = {rid for rid, (_t, ep) in source.commits.items()
                if ep < pivot_epoch or (inclusive and ep == pivot_epoch)}
        run_ids = set(source.commits)
        assert got & run_ids == want, (len(got & run_ids), len(want))
        assert (pivot_id in got) is inclusive
        assert "recovery stopping" in (reached.get("stopped") or "")
    finally:
        stop(server)


def test_pitr_to_an_lsn_under_load(source):
    m = source.moments
    before = {a["request_id"] for a in source.acks if backup_catalog.parse_iso(a["acked_at"]).timestamp() < m[
        "lsn_read_at"]}
    after = {a["request_id"] for a in source.acks if wal_naming.lsn_to_int(a["lsn"]) > wal_naming.lsn_to_int(m["lsn"])}
    assert len(before) > 50 and len(after) > 50
    server, plan, reached = restore_to(source, "pitr-lsn", {"type": "lsn", "value": m["lsn"], "inclusive": False})
    try:
        assert reached["outcome"] == "paused"
        got = present_ids(server, source.db)
        assert before <= got, f"{len(before - got)} writes acknowledged before the target are missing"
        assert not (after & got), f"{len(after & got)} writes after the target were replayed"
    finally:
        stop(server)


def test_pitr_to_a_named_restore_point_under_load(source):
    m = source.moments
    before = {a["request_id"] for a in source.acks if backup_catalog.parse_iso(a["acked_at"]).timestamp() < m["rp_at"]}
    after = {a["request_id"] for a in source.acks if wal_naming.lsn_to_int(a["lsn"]) > wal_naming.lsn_to_int(m[
        "rp_lsn"])}
    assert len(before) > 50 and len(after) > 20
    server, _plan, reached = restore_to(source, "pitr-name", {"type": "name", "value": "before-cleanup"})
    try:
        assert reached["outcome"] == "paused"
        assert "before-cleanup" in (reached.get("stopped") or "")
        got = present_ids(server, source.db)
        assert before <= got and not (after & got)
    finally:
        stop(server)


def test_full_restore_after_the_data_directory_was_deleted_keeps_every_archived_write(source):
    server = restored_server(source, "full-after-rm")
    assert not server.data_dir.exists()  # the disaster: nothing left of the data directory
    plan = restore_plan.plan([source.repo], {"type": "end"})
    done = restore_datadir.prepare_data_dir([source.repo], plan, str(server.data_dir))
    assert done["moved_aside"] is None and done["restored"]
    auto = server.data_dir / "postgresql.auto.conf"
    with open(auto, "a", encoding="utf-8") as fh:  # the end of the archive: no target; PostgreSQL opens there
        fh.write(f"port = {server.port}\nunix_socket_directories = '{server.run_dir}'\narchive_mode = off\n"
                 f"restore_command = '{source.archive.wrapper} fetch %f %p --unreachable abort'\n")
    (server.data_dir / "recovery.signal").touch()
    chown_tree(server.data_dir)
    server._run(str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_file), "-w", "-t", "5",
                "start", check=False)
    reached = restore_watch.wait_for_recovery(lambda: psycopg2.connect(server.dsn("postgres"), connect_timeout=2),
                                              str(server.data_dir), str(server.log_file), timeout=120, poll=0.3)
    try:
        assert reached["outcome"] == "promoted" and reached["timeline"] == 2, reached
        got = present_ids(server, source.db)
        acked = {a["request_id"] for a in source.acks}
        assert acked <= got, f"{len(acked - got)} acknowledged writes lost"
    finally:
        stop(server)


# -- targets that cannot be reached ----------------------------------------------------------------------------------
def test_target_before_the_oldest_backup_is_refused(source):
    with pytest.raises(restore_target.RestoreError, match="before the oldest backup"):
        restore_plan.plan([source.repo], {"type": "time", "value": "2001-01-01 00:00:00+00"})
    with pytest.raises(restore_target.RestoreError, match="before the oldest backup"):
        restore_plan.plan([source.repo], {"type": "lsn", "value": "0/10"})
    with pytest.raises(restore_target.RestoreError, match="no time zone"):
        restore_plan.plan([source.repo], {"type": "time", "value": "2026-11-27 10:00:00"})


def test_target_after_the_archive_is_refused_and_postgres_never_opens_early(source):
    late = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() + 3600))
    with pytest.raises(restore_target.RestoreError, match="after the end of the WAL"):
        restore_plan.plan([source.repo], {"type": "time", "value": late})
    # bypass the plan: PostgreSQL's own check stops recovery, it does not open at the end of the archive
    plan = restore_plan.plan([source.repo], {"type": "end"})
    server = restored_server(source, "pitr-late")
    restore_datadir.prepare_data_dir([source.repo], plan, str(server.data_dir))
    with pytest.raises(restore_target.RestoreError, match="recovery ended before configured recovery target"):
        recover(source, server, {"recovery_target_time": late})
    assert restore_datadir.postmaster_running(str(server.data_dir)) is None


def test_a_time_target_is_bounded_by_the_last_commit_in_the_wal_even_when_archiving_ran_late(source):
    """pg_waldump reads the real last segments: the bound is the last transaction's own time. The segments are
    then dated an hour later (archiving that ran late): a target inside that hour still passes an upload-time
    bound, but the plan refuses it, as PostgreSQL would only after the data directory was replaced."""
    reader = restore_plan.pg_waldump_commit_times(str(PG_BIN))
    plan = restore_plan.plan([source.repo], {"type": "time", "value": source.commits[source.acks[10]["request_id"]][0]},
                             commit_times=reader)
    assert plan["wal"]["archive_ends_from"] == "the last commit in the WAL", plan["warnings"]
    bound = backup_catalog.parse_iso(plan["wal"]["archive_ends"])
    newest_ack = max(float(epoch) for _text, epoch in source.commits.values())
    assert newest_ack - 0.001 <= bound.timestamp() < time.time()
    inside = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(bound.timestamp() + 60))
    wal_files = [p for p in (source.repo_dir / "wal").rglob("*") if p.is_file()]
    stamps = {p: p.stat().st_mtime for p in wal_files}
    try:
        for p in wal_files:
            os.utime(p, (stamps[p] + 3600, stamps[p] + 3600))
        assert restore_plan.plan([source.repo], {"type": "time", "value": inside})  # upload times: passes
        with pytest.raises(restore_target.RestoreError, match="after the last transaction in the WAL"):
            restore_plan.plan([source.repo], {"type": "time", "value": inside}, commit_times=reader)
    finally:
        for p, stamp in stamps.items():
            os.utime(p, (stamp, stamp))


def test_missing_segment_is_refused_before_anything_moves(source, tmp_path):
    tl, lo = wal_naming.parse_segment(source.record["stop_wal"])
    victim = wal_naming.segment_name(tl, lo + 1)
    key_path = source.repo_dir / wal_naming.wal_key(victim)
    assert key_path.exists()
    hidden = tmp_path / victim
    shutil.move(key_path, hidden)
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    try:
        for target in ({"type": "end"}, {"type": "time", "value": source.commits[max(source.commits,
                       key=lambda r: source.commits[r][1])][0]}):
            with pytest.raises(restore_target.RestoreError, match=f"{victim} is missing"):
                restore_plan.plan([source.repo], target)
        result = run_module("pg_restore", {"state": "restored", "repositories": [source.spec],
                                           "data_dir": str(data), "target": "end"})
        assert result.get("failed") and victim in result["msg"], result
        assert (data / "PG_VERSION").read_text() == "15\n"  # not moved, not touched
        assert not list(tmp_path.glob("data.replaced-*"))
    finally:
        shutil.move(hidden, key_path)


def test_corrupted_segment_stops_recovery_and_the_old_directory_is_intact(source):
    tl, lo = wal_naming.parse_segment(source.record["stop_wal"])
    victim = source.repo_dir / wal_naming.wal_key(wal_naming.segment_name(tl, lo + 1))
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    quiet_prefetch_spool(source)
    server = restored_server(source, "pitr-corrupt")
    server.data_dir.mkdir(mode=0o700)
    (server.data_dir / "PG_VERSION").write_text("15\n")
    (server.data_dir / "damaged-but-precious").write_text("keep me")
    chown_tree(server.base_dir)
    try:
        victim.write_bytes(bytes(damaged))
        plan = restore_plan.plan([source.repo], {"type": "end"})
        done = restore_datadir.prepare_data_dir([source.repo], plan, str(server.data_dir))
        aside = Path(done["moved_aside"])
        with pytest.raises(restore_target.RestoreError, match="stopped during recovery"):
            recover(source, server, {})
        assert (aside / "damaged-but-precious").read_text() == "keep me"
        log = server.log_file.read_text()
        assert "damaged" in log or "checksum" in log, log[-2000:]
    finally:
        victim.write_bytes(original)
        stop(server)


def test_a_damaged_copy_in_one_region_is_passed_over_and_recovery_completes_from_the_next(source):
    """Region A's copy of a segment recovery needs is damaged, region B's is good: the restore_command serves B's
    copy and recovery reaches the end of the archive with every acknowledged write."""
    region_b = source.work / "repo-b"
    if not region_b.exists():
        shutil.copytree(source.repo_dir, region_b)  # the other region holds the same WAL
        chown_tree(region_b)
    spec_b = {"type": "local", "name": "secondary", "path": str(region_b)}
    both = Archive(source.work / "wal-two-regions", [source.spec, spec_b], prefetch=4)
    tl, lo = wal_naming.parse_segment(source.record["stop_wal"])
    victim = source.repo_dir / wal_naming.wal_key(wal_naming.segment_name(tl, lo + 1))
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    quiet_prefetch_spool(source)
    server = restored_server(source, "two-regions")
    try:
        victim.write_bytes(bytes(damaged))
        plan = restore_plan.plan([source.repo], {"type": "end"})
        restore_datadir.prepare_data_dir([source.repo], plan, str(server.data_dir))
        with open(server.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
            fh.write(f"port = {server.port}\nunix_socket_directories = '{server.run_dir}'\narchive_mode = off\n"
                     f"restore_command = '{both.wrapper} fetch %f %p --unreachable abort'\n")
        (server.data_dir / "recovery.signal").touch()
        chown_tree(server.data_dir)
        server._run(str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-l", str(server.log_file), "-w", "-t",
                    "5", "start", check=False)
        reached = restore_watch.wait_for_recovery(lambda: psycopg2.connect(server.dsn("postgres"), connect_timeout=2),
                                                  str(server.data_dir), str(server.log_file), timeout=120, poll=0.3)
        assert reached["outcome"] == "promoted", reached
        acked = {a["request_id"] for a in source.acks}
        got = present_ids(server, source.db)
        assert acked <= got, f"{len(acked - got)} acknowledged writes lost"
        # the restore_command or its prefetcher (whichever fetched it) says which copy it passed over
        prefetch_log = both.spool / "prefetch.log"
        said = server.log_file.read_text() + (prefetch_log.read_text() if prefetch_log.exists() else "")
        assert "used secondary's copy; passed over" in said, said[-2000:]
    finally:
        victim.write_bytes(original)
        stop(server)


# -- a file restore that fails leaves the old data directory serving-ready ----------------------------------------
def old_cluster(src: Source, name: str) -> PgServer:
    """A real, stopped cluster with a row of its own: the data directory a failed restore must leave alone."""
    server = PgServer(src.work / name, name, settings={"archive_mode": "off"})
    server.init()
    server.start()
    server.psql("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me')")
    server.stop()
    return server


def assert_untouched_and_startable(server: PgServer) -> None:
    data = server.data_dir
    assert not Path(str(data) + ".restoring").exists(), "a half-restored copy was left behind"
    assert not list(data.parent.glob(data.name + ".replaced-*")), "the old data directory was moved aside"
    server.start()
    try:
        assert server.psql("SELECT v FROM precious") == [("keep me",)]
    finally:
        server.stop()


def test_a_damaged_backup_object_fails_the_restore_and_the_old_data_directory_stays_startable(source):
    server = old_cluster(source, "damaged-base")
    base = next(f["name"] for f in source.record["files"] if f["name"].startswith("base.tar"))
    victim = source.repo_dir / "backup" / source.record["id"] / base
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 3] ^= 0xFF
    try:
        victim.write_bytes(bytes(damaged))
        plan = restore_plan.plan([source.repo], {"type": "end"})
        with pytest.raises(restore_target.RestoreError, match=r"(sha256|damaged|checksum).*was not touched"):
            restore_datadir.prepare_data_dir([source.repo], plan, str(server.data_dir))
        assert restore_datadir.read_state(str(server.data_dir))["phase"] == "failed"
        assert_untouched_and_startable(server)
    finally:
        victim.write_bytes(original)


def test_s3_going_away_mid_restore_leaves_the_old_data_directory_startable(source):
    from conftest import S3Endpoint, _start_moto, free_port, stop_process

    port = free_port()
    log = source.work / "moto-mid-restore.log"
    endpoint = S3Endpoint("s3-mid-restore", port, _start_moto(port, log), log)
    try:
        bucket = endpoint.create_bucket()
        spec = {"type": "s3", "name": "primary", "bucket": bucket, "prefix": "auth-db", "region": "us-east-1",
                "endpoint_url": endpoint.endpoint_url, "access_key": endpoint.access_key,
                "secret_key": endpoint.secret_key, "part_size_mb": 5, "max_attempts": 2}
        s3 = repo_spec.open_repository(spec)
        for obj in source.repo.list(f"backup/{source.record['id']}/"):
            s3.put_bytes(obj["key"], source.repo.get_bytes(obj["key"]))
        plan = restore_plan.plan([s3], {"type": "immediate"})
        server = old_cluster(source, "s3-gone")
        seen = [0]

        def pull_the_plug(nbytes):
            seen[0] += nbytes
            if seen[0] > 256 * 1024 and endpoint.process.poll() is None:
                stop_process(endpoint.process)

        started = time.monotonic()
        with pytest.raises(restore_target.RestoreError, match="was not touched"):
            restore_datadir.prepare_data_dir([s3], plan, str(server.data_dir), progress=pull_the_plug)
        assert endpoint.process.poll() is not None, "the endpoint was never stopped: the test proved nothing"
        assert time.monotonic() - started < 120
        assert_untouched_and_startable(server)
    finally:
        stop_process(endpoint.process)


def test_a_backup_object_in_glacier_is_refused_by_the_plan_saying_which_and_how(source, s3_endpoint):
    """Real S3 semantics (moto): a lifecycle rule moved the base archive to GLACIER; the listing and HEAD say so,
    and the plan refuses before anything stops instead of failing half-way through the download."""
    bucket = s3_endpoint.create_bucket()
    spec = {"type": "s3", "name": "primary", "bucket": bucket, "prefix": "auth-db", "region": "us-east-1",
            "endpoint_url": s3_endpoint.endpoint_url, "access_key": s3_endpoint.access_key,
            "secret_key": s3_endpoint.secret_key, "part_size_mb": 5}
    s3 = repo_spec.open_repository(spec)
    for obj in source.repo.list(f"backup/{source.record['id']}/"):
        s3.put_bytes(obj["key"], source.repo.get_bytes(obj["key"]))
    assert restore_plan.plan([s3], {"type": "immediate"})["backup"]["id"] == source.record["id"]
    base = next(f["name"] for f in source.record["files"] if f["name"].startswith("base.tar"))
    key = f"auth-db/backup/{source.record['id']}/{base}"
    client = s3_endpoint.client()
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key}, StorageClass="GLACIER",
                       MetadataDirective="COPY")
    with pytest.raises(restore_target.RestoreError) as refused:
        restore_plan.plan([s3], {"type": "immediate"})
    assert base in str(refused.value) and "GLACIER" in str(refused.value) and "restore-object" in str(refused.value)


# -- interruption, re-run, check mode, the module --------------------------------------------------------------------
def test_interrupted_restore_starts_over_and_a_rerun_changes_nothing(source):
    plan = restore_plan.plan([source.repo], {"type": "end"})
    data = source.work / "rerun" / "data"
    data.parent.mkdir()
    data.mkdir()
    (data / "old-file").write_text("old")

    seen = [0]

    def boom(nbytes):
        seen[0] += nbytes
        if seen[0] > 4 * 1024 * 1024:
            raise KeyboardInterrupt("operator pressed ctrl-c")

    with pytest.raises(KeyboardInterrupt):
        restore_datadir.prepare_data_dir([source.repo], plan, str(data), progress=boom)
    state = restore_datadir.read_state(str(data))
    assert state["phase"] == "failed" and state["moved_aside"] is None
    # the new copy is built beside the old one: interrupted, the old one is where it was, nothing half-made left
    assert (data / "old-file").read_text() == "old"
    assert not Path(str(data) + ".restoring").exists() and not list(data.parent.glob("data.replaced-*"))
    again = restore_datadir.prepare_data_dir([source.repo], plan, str(data))
    assert again["changed"] and again["moved_aside"]
    assert (Path(again["moved_aside"]) / "old-file").read_text() == "old"
    assert (data / "PG_VERSION").exists() and (data / "backup_label").exists()
    assert len(list(data.parent.glob("data.replaced-*"))) == 1
    third = restore_datadir.prepare_data_dir([source.repo], plan, str(data))
    assert not third["changed"]


def test_module_check_mode_shows_the_plan_and_changes_nothing(source, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("x")
    args = {"state": "restored", "repositories": [source.spec], "data_dir": str(data), "target": "lsn",
            "target_value": source.moments["lsn"], "system_identifier": source.record["system_identifier"]}
    result = run_module("pg_restore", args, check=True)
    assert result["changed"] and not result.get("failed"), result
    assert result["plan"]["backup"]["id"] == source.record["id"]
    assert result["plan"]["wal"]["segments"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and (data / "keep").read_text() == "x"
    wrong = run_module("pg_restore", {**args, "system_identifier": "42"})
    assert wrong.get("failed") and "no backup of cluster 42" in wrong["msg"]


def test_logical_restore_of_one_table_into_a_scratch_schema_while_serving(source):
    from ansible_collections.immersiverse.dr.plugins.module_utils._backup import logical as backup_logical

    params = {"login_host": source.server.host, "login_port": source.server.port, "login_user": "postgres",
              "login_password": source.server.password, "login_db": "postgres", "login_unix_socket": "",
              "connect_timeout": 5, "ssl_mode": "disable"}
    conn = pg_connection.connect(params)
    try:
        ident = backup_catalog.cluster_identity(conn)
    finally:
        conn.close()
    record = backup_logical.take_logical_backup(source.repo, params, ident, [source.db])
    chown_tree(source.repo_dir)
    before = source.server.psql("SELECT count(*), sum(hashtext(email)) FROM users", dbname=source.db)[0]
    assert before[0] > 100
    # the damage: a bad cleanup job deletes half the users; the service keeps writing meanwhile
    source.server.psql("DELETE FROM platform_accounts WHERE user_id IN (SELECT id FROM users WHERE id % 2 = 0)",
                       dbname=source.db)
    source.server.psql("DELETE FROM users WHERE id % 2 = 0", dbname=source.db)
    after_damage = source.server.psql("SELECT count(*) FROM users", dbname=source.db)[0][0]
    checked = run_module("pg_logical_restore", {**params, "repository": source.spec, "database": source.db,
                                                "tables": ["public.users"], "scratch_schema": "rescue"}, check=True)
    assert checked["backup_id"] == record["id"] and not checked.get("failed"), checked
    assert source.server.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'rescue'", dbname=source.db) == [(0,)]
    acks, restore_result = source.run_generator(3, lambda: run_module(
        "pg_logical_restore", {**params, "repository": source.spec, "database": source.db,
                               "tables": ["public.users"], "scratch_schema": "rescue"}))
    assert restore_result and not restore_result.get("failed"), restore_result
    assert restore_result["restored"] == ["public.users -> rescue.users"]
    assert len(acks) > 100  # the service kept writing during the restore
    rescued = source.server.psql("SELECT count(*), sum(hashtext(email)) FROM rescue.users", dbname=source.db)[0]
    assert rescued == before
    assert source.server.psql("SELECT count(*) FROM users", dbname=source.db)[0][0] >= after_damage
    # the rows are there to be put back by hand, with SQL the operator reads first
    missing = source.server.psql("SELECT count(*) FROM rescue.users r WHERE NOT EXISTS "
                                 "(SELECT 1 FROM public.users u WHERE u.id = r.id)", dbname=source.db)[0][0]
    assert missing == before[0] - after_damage
    again = run_module("pg_logical_restore", {**params, "repository": source.spec, "database": source.db,
                                              "tables": ["public.users"], "scratch_schema": "rescue"})
    assert again.get("failed") and "already exists" in again["msg"], again


def test_prefetch_warms_the_spool_from_the_plans_first_segment(source):
    quiet_prefetch_spool(source)
    plan = restore_plan.plan([source.repo], {"type": "end"})
    first = plan["backup"]["start_wal"]
    tl, segno = wal_naming.parse_segment(first)
    wanted = [wal_naming.segment_name(tl, segno + i) for i in range(2)]  # two ahead until recovery takes one
    assert plan["absent_history"] == "00000002.history"
    run = source.archive.run("prefetch", first, "--depth", "3", "--absent-history", plan["absent_history"])
    assert run.returncode == 0 and run.stdout.strip() == "started", run.stderr
    spool = source.archive.spool / "fetch"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((spool / n).exists() for n in wanted):
        time.sleep(0.1)
    assert all((spool / n).exists() for n in wanted), sorted(p.name for p in spool.iterdir())
    dest = source.archive.root / "fetched-first"
    got = source.archive.run("fetch", first, str(dest))
    assert got.returncode == 0, got.stderr
    raw = dest.read_bytes()
    assert len(raw) == 16 * 1024 * 1024 and not (spool / first).exists()  # served from the spool, moved
    later = [wal_naming.segment_name(tl, segno + i) for i in (2, 3)]  # recovery took one: the window opens to --depth
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((spool / n).exists() for n in later):
        time.sleep(0.1)
    assert all((spool / n).exists() for n in later), sorted(p.name for p in spool.iterdir())
    marker = spool / ".absent-00000002.history"  # the next timeline's history file, probed by PostgreSQL twice
    assert marker.exists() and int(marker.read_text()) > time.time()
    t0 = time.monotonic()
    probe = source.archive.run("fetch", "00000002.history", str(source.archive.root / "h"))
    assert probe.returncode == 1 and time.monotonic() - t0 < 0.2  # answered by the wrapper, no Python
    marker.write_text("0\n")  # expired: the engine looks again (and still finds nothing)
    assert source.archive.run("fetch", "00000002.history", str(source.archive.root / "h")).returncode == 1
    assert source.archive.run("fetch", "00000001.history", str(source.archive.root / "h")).returncode == 1
    bad = source.archive.run("prefetch", "not-a-segment")
    assert bad.returncode != 0 and "not a WAL segment name" in bad.stderr
