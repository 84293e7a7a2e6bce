"""pg_recovery against real PostgreSQL 15 servers: what it writes is read by PostgreSQL exactly as meant (quoting,
time zones), a base backup configured as a standby streams from its primary through a slot, base backups configured
for point-in-time recovery stop at a restore point (promote) and at a time (pause) with the rows of that moment, and
the module itself runs through ansible (check mode, diff, argument errors, no secret in the output).

Recovery outcomes are checked with SQL on the recovered servers and their logs, never with the engine's own code.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import PG_BIN, PgServer  # noqa: E402
from test_pg_facts import wait_for  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery as pg_recovery  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery_conf as pg_recovery_conf  # noqa: E402

pytestmark = pytest.mark.integration
ANSIBLE = Path(sys.executable).with_name("ansible")
AS_ROOT = os.geteuid() == 0


def give_to_postgres(path: Path) -> Path:
    if AS_ROOT:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def recover(data_dir: Path, check_mode: bool = False, **kw) -> dict:
    """The engine with the module's defaults, as the module calls it."""
    params = {"data_dir": str(data_dir), "restore_command": None, "target": None, "target_time": None,
              "target_lsn": None, "target_xid": None, "target_name": None, "target_inclusive": True,
              "target_timeline": None, "target_action": None, "primary_conninfo": None, "primary_slot_name": None,
              "allow_running": False, **kw}
    return pg_recovery.run(params, check_mode=check_mode)


def files(data_dir: Path) -> dict:
    """The files the module may touch: name -> bytes (None when absent)."""
    names = ("postgresql.auto.conf", "recovery.signal", "standby.signal")
    return {name: (data_dir / name).read_bytes() if (data_dir / name).exists() else None for name in names}


@pytest.fixture(scope="module")
def archive() -> Path:
    path = give_to_postgres(Path(tempfile.mkdtemp(prefix="drlab-recovery-archive-")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def primary(pg_server_factory, archive):
    server = pg_server_factory("rec-primary", settings={
        "archive_mode": "on", "archive_command": f"'test ! -f {archive}/%f && cp %p {archive}/%f'"})
    # A line ALTER SYSTEM wrote: every copy of this server must keep it through pg_recovery's rewrites.
    server.psql("ALTER SYSTEM SET work_mem = '8MB'")
    return server


@pytest.fixture(scope="module")
def copies(primary):
    """``make(name) -> PgServer``: a stopped copy of the primary (pg_basebackup, no -R: no recovery configuration),
    on its own port, archiving off; all destroyed at the end."""
    made = []

    def make(name: str) -> PgServer:
        base = Path(tempfile.mkdtemp(prefix=f"drlab-{name}-"))
        server = PgServer(base, name=name, settings={"archive_mode": "off", "timezone": "'America/Los_Angeles'"})
        made.append(server)
        server.run_dir.mkdir(parents=True)
        server.data_dir.mkdir(mode=0o700)
        if AS_ROOT:
            base.chmod(0o711)
        give_to_postgres(server.run_dir)
        give_to_postgres(server.data_dir)
        argv = [str(PG_BIN / "pg_basebackup"), "-D", str(server.data_dir), "-h", primary.host, "-p",
                str(primary.port), "-U", primary.user, "-X", "stream", "-c", "fast", "--no-sync"]
        # The password reaches pg_basebackup through its environment, never argv.
        subprocess.run(server._argv(*argv), check=True, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LC_ALL": "C", "PGPASSWORD": primary.password})
        with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/integration/test_pg_recovery.py (copy)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in server.settings.items())
        server.password = primary.password
        server._add_pgpass(server.user, server.password)
        return server

    yield make
    for server in made:
        server.destroy()


def passfile_for(server: PgServer, primary: PgServer) -> Path:
    """A pgpass file the server's OS user can read, for its walreceiver's connection to the primary."""
    path = server.run_dir / "primary.pgpass"
    path.write_text(f"{primary.host}:{primary.port}:*:{primary.user}:{primary.password}\n")
    path.chmod(0o600)
    return give_to_postgres(path)


def postgres_reads(server: PgServer, name: str) -> subprocess.CompletedProcess:
    """What PostgreSQL itself reads for a setting from the (stopped) data directory's configuration files."""
    return subprocess.run(server._argv(str(PG_BIN / "postgres"), "-D", str(server.data_dir), "-C", name),
                          capture_output=True, text=True, timeout=30, check=False, cwd=server.run_dir)


def test_postgresql_reads_what_the_module_writes(primary, copies):
    copy = copies("rec-quoting")
    for command in ("cp '/mnt/wal archive'/%f \"%p\"", "C:\\wal\\%f %p", "echo it''s \\\\ done %f %p # not a comment"):
        recover(copy.data_dir, mode="standby", restore_command=command)
        read = postgres_reads(copy, "restore_command")
        assert read.returncode == 0, read.stderr
        assert read.stdout.rstrip("\n") == command
    for name in ("before migration 42", "back\\slash", "ünïcode"):
        recover(copy.data_dir, mode="recovery", restore_command="cp %f %p", target="name", target_name=name)
        assert postgres_reads(copy, "recovery_target_name").stdout.rstrip("\n") == name
    conn = primary.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = 'Pacific/Auckland'")  # not the zone of any value below
            for spelling in ("2026-03-01 12:00:00+00:00", "2026-03-01T12:00:00Z", "2026-03-01 17:30:00.123456+0530",
                             "2026-03-01 13:00:00 Europe/Paris", "2026-07-01 08:00:00 America/New_York",
                             "2026-03-01 07:00 -05"):
                res = recover(copy.data_dir, mode="recovery", restore_command="cp %f %p", target="time",
                              target_time=spelling)
                written = res["settings"]["recovery_target_time"]
                read = postgres_reads(copy, "recovery_target_time")
                assert read.returncode == 0, (spelling, read.stderr)  # PostgreSQL's check_hook accepts it
                assert read.stdout.rstrip("\n") == written
                cur.execute("SELECT %s::timestamptz", (written,))
                assert cur.fetchone()[0] == pg_recovery_conf.parse_time(spelling), spelling
    finally:
        conn.close()
    lsn = recover(copy.data_dir, mode="recovery", restore_command="cp %f %p", target="lsn", target_lsn="0/5a0001c8")
    assert lsn["removed"] == ["recovery_target_time"]
    assert postgres_reads(copy, "recovery_target_lsn").stdout.rstrip("\n") == "0/5A0001C8"
    assert postgres_reads(copy, "recovery_target_time").stdout.rstrip("\n") == ""
    assert postgres_reads(copy, "work_mem").stdout.rstrip("\n") == "8192"  # kB: ALTER SYSTEM's line is kept


def test_a_base_backup_becomes_a_streaming_standby(primary, copies):
    primary.psql("SELECT pg_create_physical_replication_slot('rec_standby')")
    standby = copies("rec-standby")
    conninfo = (f"host={primary.host} port={primary.port} user={primary.user} "
                f"passfile={passfile_for(standby, primary)} application_name=rec_standby")
    request = {"mode": "standby", "primary_conninfo": conninfo, "primary_slot_name": "rec_standby"}
    untouched = files(standby.data_dir)

    check = recover(standby.data_dir, check_mode=True, **request)
    assert check["changed"] and check["signal_file"] == str(standby.data_dir / "standby.signal")
    assert files(standby.data_dir) == untouched

    res = recover(standby.data_dir, **request)
    assert res["changed"] and res["restart_required"]
    assert res["settings"] == {"recovery_target_timeline": "latest", "primary_conninfo": "********",
                               "primary_slot_name": "rec_standby"}
    assert untouched["postgresql.auto.conf"] in files(standby.data_dir)["postgresql.auto.conf"], \
        "the lines pg_basebackup copied (header, ALTER SYSTEM's work_mem) are kept as they were"
    owner = pwd.getpwnam("postgres").pw_uid if AS_ROOT else os.geteuid()
    for name in ("postgresql.auto.conf", "standby.signal"):
        st = os.stat(standby.data_dir / name)
        assert (st.st_uid, st.st_mode & 0o777) == (owner, 0o600), name
    assert not recover(standby.data_dir, **request)["changed"]

    standby.start()
    wait_for(lambda: standby.psql("SELECT status = 'streaming' AND slot_name = 'rec_standby' "
                                  "FROM pg_stat_wal_receiver")[0:1] == [(True,)])
    assert standby.psql("SELECT pg_is_in_recovery()") == [(True,)]
    assert standby.psql("SHOW work_mem") == [("8MB",)]
    assert primary.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'rec_standby'") == [(True,)]
    primary.psql("CREATE TABLE streamed (x int); INSERT INTO streamed VALUES (42)")
    wait_for(lambda: standby.psql("SELECT to_regclass('streamed') IS NOT NULL")[0][0]
             and standby.psql("SELECT x FROM streamed") == [(42,)])

    with pytest.raises(pg_recovery_conf.RecoveryError, match="PostgreSQL is running"):
        recover(standby.data_dir, **request)
    running = recover(standby.data_dir, allow_running=True, **request)
    assert running["server_running"] and not running["changed"]
    with pytest.raises(pg_recovery_conf.RecoveryError, match="will not remove standby.signal under a running server"):
        recover(standby.data_dir, mode="none", allow_running=True)
    standby.stop()
    primary.psql("SELECT pg_drop_replication_slot('rec_standby')")


@pytest.fixture(scope="module")
def pitr(primary, archive, copies):
    """Two stopped base backups of the primary, then (only in the archive) row 1, a restore point, the time just after
    row 1's commit, row 2. Returns (copy for the name target, copy for the time target, that time)."""
    by_name, by_time = copies("rec-pitr-name"), copies("rec-pitr-time")
    primary.psql("CREATE TABLE pitr (id int PRIMARY KEY)")
    primary.psql("INSERT INTO pitr VALUES (1)")
    primary.psql("SELECT pg_create_restore_point('rec_before_row2')")
    (between,) = primary.psql("SELECT clock_timestamp()")[0]
    primary.psql("SELECT pg_sleep(0.2)")
    primary.psql("INSERT INTO pitr VALUES (2)")
    (segment,) = primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0]
    primary.psql("SELECT pg_switch_wal()")
    wait_for((archive / segment).exists)
    return by_name, by_time, between


def rows(server: PgServer) -> list:
    return server.psql("SELECT id FROM pitr ORDER BY id")


def test_recovery_to_a_restore_point_promotes_with_the_rows_of_that_point(pitr, archive):
    server = pitr[0]
    request = {"mode": "recovery", "restore_command": f"cp {archive}/%f %p", "target": "name",
               "target_name": "rec_before_row2", "target_action": "promote"}
    res = recover(server.data_dir, **request)
    assert res["changed"] and res["signal_file"] == str(server.data_dir / "recovery.signal")
    assert not recover(server.data_dir, **request)["changed"]

    server.start(timeout=120)
    wait_for(lambda: server.psql("SELECT NOT pg_is_in_recovery()")[0][0], 120)
    assert rows(server) == [(1,)], "recovery did not stop at the restore point"
    log = server.log_file.read_text()
    assert 'recovery stopping at restore point "rec_before_row2"' in log
    assert "restored log file" in log, "the rows came from the archive through restore_command"
    assert server.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") == [("00000002",)]
    assert not (server.data_dir / "recovery.signal").exists(), "PostgreSQL removes it when it promotes"

    # Clean up on the promoted, running server: the target goes, restore_command (omitted) and work_mem stay.
    with pytest.raises(pg_recovery_conf.RecoveryError, match="allow_running"):
        recover(server.data_dir, mode="none")
    cleanup = recover(server.data_dir, mode="none", allow_running=True)
    assert cleanup["changed"] and cleanup["signal_file"] is None
    assert cleanup["removed"] == ["recovery_target_name", "recovery_target_timeline", "recovery_target_action"]
    assert cleanup["settings"] == {"restore_command": f"cp {archive}/%f %p"}
    assert not recover(server.data_dir, mode="none", allow_running=True)["changed"]
    server.restart()
    assert server.psql("SELECT setting FROM pg_settings WHERE name = 'recovery_target_name'") == [("",)]
    assert server.psql("SHOW work_mem") == [("8MB",)]
    assert rows(server) == [(1,)]


def test_recovery_to_a_time_pauses_with_the_rows_of_that_time(pitr, archive):
    server, between = pitr[1], pitr[2]
    # Given in another zone than the server's (America/Los_Angeles): the explicit offset must be what counts.
    target = between.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30))).isoformat(sep=" ")
    res = recover(server.data_dir, mode="recovery", restore_command=f"cp {archive}/%f %p", target="time",
                  target_time=target)
    assert res["settings"]["recovery_target_action"] == "pause"
    assert res["settings"]["recovery_target_inclusive"] == "on"
    server.start(timeout=120)
    wait_for(lambda: server.psql("SELECT pg_get_wal_replay_pause_state()") == [("paused",)], 120)
    assert server.psql("SELECT pg_is_in_recovery()") == [(True,)]
    assert rows(server) == [(1,)], "recovery did not stop at the target time"
    assert "recovery stopping before commit of transaction" in server.log_file.read_text()


def run_module(args: dict, check: bool = False, diff: bool = False) -> tuple[dict, str]:
    """The module through ``ansible localhost`` as an operator would run it; its result and ansible's whole stdout."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_NOCOLOR": "1"}
    argv = [str(ANSIBLE), "localhost", "-m", "immersiverse.dr.pg_recovery", "-a", json.dumps(args),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    argv += ["--check"] if check else []
    argv += ["--diff"] if diff else []
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=REPO)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ansible printed no JSON: {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from None
    return doc["plays"][0]["tasks"][0]["hosts"]["localhost"], proc.stdout + proc.stderr


def test_the_module_through_ansible(copies):
    copy = copies("rec-module")
    secret = "s3cret-Pw-never-shown"
    args = {"data_dir": str(copy.data_dir), "mode": "standby", "primary_slot_name": "dr_standby",
            "primary_conninfo": f"host=10.0.0.1 user=replicator password={secret}", "target_timeline": 1}
    untouched = files(copy.data_dir)

    check, out = run_module(args, check=True, diff=True)
    assert check["changed"] and not check.get("failed"), check
    assert files(copy.data_dir) == untouched, "check mode changed files"
    assert "primary_slot_name = 'dr_standby'" in check["diff"]["after"]
    assert "primary_conninfo = '********'" in check["diff"]["after"]
    assert any("password" in w for w in check["warnings"])
    assert secret not in out

    applied, out = run_module(args, diff=True)
    assert applied["changed"] and applied["restart_required"], applied
    assert applied["settings"]["recovery_target_timeline"] == "1"
    assert applied["signal_file"] == str(copy.data_dir / "standby.signal")
    assert secret not in out
    assert f"password={secret}'" in (copy.data_dir / "postgresql.auto.conf").read_text()
    again, out = run_module(args)
    assert not again["changed"] and again["actions"] == [], again

    configured = files(copy.data_dir)
    naive, out = run_module({"data_dir": str(copy.data_dir), "mode": "recovery", "restore_command": "cp %f %p",
                             "target": "time", "target_time": "2026-03-01 12:00:00"})
    assert naive["failed"] and "has no time zone" in naive["msg"]
    bad, out = run_module({"data_dir": str(copy.data_dir), "mode": "recovery", "target": "yesterday"})
    assert bad["failed"] and "target" in bad["msg"]
    assert files(copy.data_dir) == configured, "a refused call changed files"
