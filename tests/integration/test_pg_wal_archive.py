"""_archiving against real PostgreSQL 15 servers: ALTER SYSTEM with normalised comparison, restart/reload reporting,
check mode, and the archiver's status with a working and a failing archive_command."""

import os
import pwd
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from test_pg_facts import params, wait_for  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import settings as pg_settings  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import server as wal_server  # noqa: E402

pytestmark = pytest.mark.integration


# The module's defaults (plugins/modules/pg_wal_archive.py)
DEFAULTS = {"state": "present", "status_only": False, "archive_command": None, "archive_mode": "on",
            "rpo_seconds": 300, "archive_timeout": None, "wal_level": "replica", "max_wal_senders": 10,
            "restore_command": None, "reload": True}


def run(server, check_mode=False, **kw):
    conn = pg_connection.connect(params(server))
    try:
        return wal_server.run(conn, {**params(server), **DEFAULTS, **kw}, check_mode=check_mode)
    finally:
        conn.close()


def status(server):
    return run(server, status_only=True)["status"]


def status_when(server, predicate):
    """The status when it meets ``predicate``, else None (for wait_for)."""
    current = status(server)
    return current if predicate(current) else None


def show(server, name):
    return server.psql(f"SHOW {name}")[0][0]


def auto_conf(server):
    return (server.data_dir / "postgresql.auto.conf").read_text()


@pytest.fixture
def archive_dir():
    """A directory the server (postgres OS user when the tests run as root) can write."""
    path = Path(tempfile.mkdtemp(prefix="drlab-walarchive-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(pg_server_factory):
    made = []

    def make(name, settings=None):
        made.append(pg_server_factory(name, settings=settings))
        return made[-1]

    yield make
    for srv in made:
        srv.destroy()


def copy_command(directory):
    return f"test ! -f {directory}/%f && cp %p {directory}/%f"


def switch_wal(srv, times):
    for i in range(times):
        srv.psql("CREATE TABLE IF NOT EXISTS churn (x int); INSERT INTO churn VALUES (%s)", (i,))
        srv.psql("SELECT pg_switch_wal()")


def test_fresh_server_needs_a_restart_then_a_rerun_changes_nothing(server, archive_dir):
    srv = server("arch-fresh", settings={"wal_level": "minimal", "max_wal_senders": "0"})
    first = run(srv, archive_command=copy_command(archive_dir), rpo_seconds=300)
    assert first["changed"] and first["restart_required"]
    assert first["restart_settings"] == ["wal_level", "max_wal_senders", "archive_mode"]
    assert [c["name"] for c in first["changes"]] == ["wal_level", "max_wal_senders", "archive_mode",
                                                     "archive_command", "archive_timeout"]
    assert first["reload_required"] and not first["reloaded"], "the restart applies the reloadable settings too"
    assert "archive_timeout = '150s'" in auto_conf(srv)
    again = run(srv, archive_command=copy_command(archive_dir), rpo_seconds=300)
    assert not again["changed"] and again["restart_required"], "still waiting for the restart, nothing to write"
    assert again["executed"] == []
    srv.restart()
    assert (show(srv, "wal_level"), show(srv, "archive_mode"), show(srv, "archive_timeout")) == \
        ("replica", "on", "150s")
    after = run(srv, archive_command=copy_command(archive_dir), rpo_seconds=300)
    assert not after["changed"] and not after["restart_required"] and not after["reload_required"]
    assert after["changes"] == [] and after["executed"] == []
    assert after["diff"]["before"] == after["diff"]["after"]


def test_check_mode_returns_the_sql_and_changes_nothing(server):
    srv = server("arch-check")
    before = auto_conf(srv)
    res = run(srv, check_mode=True, archive_command="/bin/true", archive_timeout="1min")
    assert res["changed"] and res["restart_required"]
    assert res["would_run"] == ["ALTER SYSTEM SET archive_mode = 'on'",
                                "ALTER SYSTEM SET archive_command = '/bin/true'",
                                "ALTER SYSTEM SET archive_timeout = '60s'"]
    assert res["executed"] == []
    assert res["diff"]["before"]["archive_mode"] == "off" and res["diff"]["after"]["archive_mode"] == "on"
    assert auto_conf(srv) == before
    assert (show(srv, "archive_mode"), show(srv, "archive_timeout")) == ("off", "0")


def test_reload_only_change_is_applied_without_a_restart_and_spellings_compare_equal(server, archive_dir):
    srv = server("arch-reload")
    run(srv, archive_command="/bin/true", archive_timeout="60s")
    srv.restart()
    check = run(srv, check_mode=True, archive_command=copy_command(archive_dir), archive_timeout="60s")
    quoted = pg_settings.quote_literal(copy_command(archive_dir))
    assert check["would_run"] == [f"ALTER SYSTEM SET archive_command = {quoted}", "SELECT pg_reload_conf()"]
    assert show(srv, "archive_command") == "/bin/true"
    res = run(srv, archive_command=copy_command(archive_dir), archive_timeout="60s")
    assert res["changed"] and res["reloaded"]
    assert not res["restart_required"] and not res["reload_required"]
    assert res["executed"][-1] == "SELECT pg_reload_conf()"
    assert show(srv, "archive_command") == copy_command(archive_dir)
    for spelling in (60, "60", "1min", "60000ms", " 1 min"):
        same = run(srv, archive_command=copy_command(archive_dir), archive_timeout=spelling)
        assert not same["changed"], spelling
        assert same["executed"] == []
    # archive_mode as YAML reads a bare `on`, and enum case
    for mode in (True, "ON", "true"):
        assert not run(srv, archive_command=copy_command(archive_dir), archive_timeout=60,
                       archive_mode=mode)["changed"]


def test_reload_false_reports_reload_required(server):
    srv = server("arch-noreload", settings={"archive_mode": "on"})
    res = run(srv, archive_command="/bin/true", archive_timeout=90, reload=False)
    assert res["changed"] and not res["restart_required"] and res["reload_required"]
    assert res["reload_settings"] == ["archive_command", "archive_timeout"] and not res["reloaded"]
    assert show(srv, "archive_timeout") == "0"
    res = run(srv, archive_command="/bin/true", archive_timeout=90)
    assert res["changed"] and res["reloaded"] and res["executed"] == ["SELECT pg_reload_conf()"]
    assert show(srv, "archive_timeout") == "90s"


def test_working_archive_command_status(server, archive_dir):
    srv = server("arch-ok")
    run(srv, archive_command=copy_command(archive_dir), rpo_seconds=300)
    srv.restart()
    start = status(srv)["archived_count"]
    switch_wal(srv, 3)
    st = wait_for(lambda: status_when(srv, lambda s: s["archived_count"] >= start + 3 and s["ready_count"] == 0))
    assert st["failed_count"] == 0
    assert (st["lag_segments"], st["lag_seconds"]) == (0, 0.0)
    assert st["lag_segments_basis"] == "insert_segment"
    assert (archive_dir / st["last_archived_wal"]).is_file()
    assert st["rpo_seconds"] is not None and st["rpo_seconds"] <= 150
    assert st["archiving_active"] and st["archive_timeout"] == 150


def test_failing_archive_command_shows_lag_and_rpo(server):
    srv = server("arch-fail")
    run(srv, archive_command="/bin/false", rpo_seconds=300)
    srv.restart()
    switch_wal(srv, 1)
    wait_for(lambda: status_when(srv, lambda s: s["failed_count"] > 0 and s["ready_count"] >= 1))
    time.sleep(1.1)  # the behaviour under test is an age: the oldest .ready file must be a second old
    st = status(srv)
    assert st["failed_count"] > 0 and st["ready_count"] >= 1
    assert st["last_failed_wal"] == st["oldest_ready_wal"]
    assert st["lag_seconds"] > 0 and st["rpo_seconds"] > 0
    assert st["rpo_basis"] == "oldest_ready" and st["rpo_seconds"] == st["lag_seconds"]
    assert st["lag_segments"] >= 1


def test_absent_turns_archiving_off(server):
    srv = server("arch-absent")
    run(srv, archive_command="/bin/true", rpo_seconds=300)
    srv.restart()
    res = run(srv, state="absent")
    assert res["changed"] and res["restart_required"] and res["restart_settings"] == ["archive_mode"]
    assert res["settings"] == {"archive_mode": "off", "archive_command": "", "archive_timeout": "0s"}
    srv.restart()
    assert (show(srv, "archive_mode"), show(srv, "archive_timeout")) == ("off", "0")
    again = run(srv, state="absent")
    assert not again["changed"] and not again["restart_required"] and not again["reload_required"]
    st = again["status"]
    assert not st["archiving_active"] and st["rpo_seconds"] is None


def test_a_standby_is_configured_to_archive_once_promoted_and_its_status_is_reported(pg_server_factory):
    primary = pg_server_factory("arch-primary")
    standby = pg_server_factory.standby(primary, "arch-standby")
    try:
        configured = run(standby, archive_command="/bin/true")
        assert configured["changed"] and configured["restart_required"]
        assert any("until it is promoted" in w for w in configured["warnings"])
        res = run(standby, status_only=True)
        assert res["role"] == "standby" and not res["changed"]
        assert not res["status"]["archiving_active"] and res["status"]["in_recovery"]
        assert any("archives nothing" in w for w in res["warnings"])
        always = run(standby, archive_command="/bin/true", archive_mode="always", check_mode=True)
        assert "ALTER SYSTEM SET archive_mode = 'always'" in always["would_run"]
    finally:
        standby.destroy()
        primary.destroy()


def test_privileges_are_checked_with_a_clear_message(server):
    srv = server("arch-priv")
    srv.ensure_role("watcher")
    conn_params = {**params(srv), "login_user": "watcher", "login_password": srv.password_for("watcher")}

    def as_watcher(**kw):
        conn = pg_connection.connect(conn_params)
        try:
            return wal_server.run(conn, {**conn_params, **DEFAULTS, **kw})
        finally:
            conn.close()

    with pytest.raises(pg_connection.PgError) as err:
        as_watcher(status_only=True)
    assert "GRANT pg_monitor TO watcher" in str(err.value)
    srv.psql("GRANT pg_monitor TO watcher")
    st = as_watcher(status_only=True)["status"]
    assert st["archive_mode"] == "off" and st["ready_count"] == 0
    with pytest.raises(pg_connection.PgError) as err:
        as_watcher(archive_command="/bin/true")
    assert "not a superuser" in str(err.value)
