"""The detect engine against real PostgreSQL 15 servers: a primary, its streaming standby, a promotion."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts  # noqa: E402

pytestmark = pytest.mark.integration


def params(server):
    return {"login_host": server.host, "login_port": server.port, "login_user": server.user,
            "login_password": server.password, "login_db": "postgres", "connect_timeout": 5, "ssl_mode": "disable"}


def facts(server):
    conn = pg_connection.connect(params(server))
    try:
        return pg_facts.gather_facts(conn)
    finally:
        conn.close()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout:.0f} s")


@pytest.fixture(scope="module")
def pair(pg_server_factory):
    primary = pg_server_factory("facts-primary")
    standby = pg_server_factory.standby(primary, "facts-standby", slot="facts_standby")
    wait_for(lambda: facts(standby)["wal_receiver"] and facts(standby)["wal_receiver"]["status"] == "streaming")
    return primary, standby


def test_primary_and_standby_are_told_apart(pair):
    primary, standby = pair
    p, s = facts(primary), facts(standby)
    assert (p["role"], p["in_recovery"]) == ("primary", False)
    assert (s["role"], s["in_recovery"]) == ("standby", True)
    assert str(p["system_identifier"]).isdigit() and p["system_identifier"] == s["system_identifier"]
    assert p["timeline"] == s["timeline"] == 1
    assert s["wal_receiver"]["slot_name"] == "facts_standby"
    assert [r["state"] for r in p["replication"]] == ["streaming"]
    # where the standby is told to stream from: host and port of primary_conninfo, never the string itself
    assert s["upstream"] == {"host": primary.host, "port": primary.port} and p["upstream"] is None
    assert "passfile" not in repr(s) and "primary_conninfo" not in repr(s)


def test_a_quorum_standby_is_reported_with_the_setting_that_made_it_one(pair):
    primary, standby = pair
    name = facts(primary)["replication"][0]["application_name"]
    primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (\"{name}\", \"standby_elsewhere\")'")
    primary.psql("SELECT pg_reload_conf()")
    try:
        def quorum():
            now = facts(primary)
            return now if now["replication"][0]["sync_state"] == "quorum" else None

        p = wait_for(quorum)
        assert p["settings"]["synchronous_standby_names"] == f'ANY 1 ("{name}", "standby_elsewhere")'
        primary.psql("CREATE TABLE IF NOT EXISTS sync_t (x int); INSERT INTO sync_t VALUES (1)")  # not blocked
    finally:
        primary.psql("ALTER SYSTEM RESET synchronous_standby_names")
        primary.psql("SELECT pg_reload_conf()")
    assert wait_for(lambda: facts(primary)["replication"][0]["sync_state"] == "async")


def test_standby_lsn_follows_the_primary(pair):
    primary, standby = pair
    primary.psql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
    target = pg_connection.lsn_to_int(facts(primary)["current_lsn"])
    wait_for(lambda: pg_connection.lsn_to_int(facts(standby)["replay_lsn"]) >= target)
    lag = wait_for(lambda: [r for r in facts(primary)["replication"] if r["replay_lag_bytes"] == 0])
    assert lag[0]["state"] == "streaming"


def test_unreachable_server_gives_an_error_that_says_what_to_do(pg_server_factory):
    bad = {"login_host": "127.0.0.1", "login_port": 1, "login_user": "postgres",
           "login_password": "pw-never-shown-7f3a", "login_db": "postgres", "connect_timeout": 2, "ssl_mode": "disable"}
    with pytest.raises(pg_connection.PgError) as err:
        pg_connection.connect(bad)
    assert "the server is down or unreachable from this host" in str(err.value), str(err.value)
    assert "postgres@127.0.0.1:1/postgres" in str(err.value)  # which server it tried, so the operator can check it
    assert "pw-never-shown-7f3a" not in str(err.value)


def test_wrong_password_is_named(pg_server):
    with pytest.raises(pg_connection.PgError) as err:
        pg_connection.connect({**params(pg_server), "login_password": "definitely-wrong"})
    assert "password" in str(err.value)
    assert "definitely-wrong" not in str(err.value)


def test_promotion_moves_the_standby_to_a_new_timeline(pair):
    primary, standby = pair
    primary.stop("immediate")
    try:
        standby.psql("SELECT pg_promote(true, 60)")
        wait_for(lambda: facts(standby)["role"] == "primary")
        after = facts(standby)
        assert after["timeline"] == 2
        assert after["wal_receiver"] is None
    finally:
        primary.start()
