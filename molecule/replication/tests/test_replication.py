"""What the replication scenario proves, checked inside both containers with testinfra's podman backend.

verify.yml runs this file and passes the inventory's values in the environment; the defaults below are the ones
molecule.yml sets, so `pytest molecule/replication/tests/test_replication.py` also works against a converged
scenario (`molecule converge -s replication`).
"""

import os
import time
import uuid

import pytest
import testinfra

PRIMARY = os.environ.get("MOLECULE_PRIMARY", "mol-primary")
SECONDARY = os.environ.get("MOLECULE_SECONDARY", "mol-secondary")
DATABASE = os.environ.get("MOLECULE_SERVICE_DATABASE", "authdb")
SEED_USERS = int(os.environ.get("MOLECULE_SEED_USERS", "50"))
REPLICATION_USER = os.environ.get("MOLECULE_REPLICATION_USER", "replicator")
REPLICATION_PASSWORD = os.environ.get("MOLECULE_REPLICATION_PASSWORD", "molecule-test-replication-password")
APP_USER = os.environ.get("MOLECULE_APP_USER", "auth_app")
APP_PASSWORD = os.environ.get("MOLECULE_APP_PASSWORD", "molecule-test-app-password")

# The standby role's default slot (and application_name): standby_ + the host name with [^a-z0-9_] replaced.
SLOT = "standby_" + "".join(c if c.isalnum() or c == "_" else "_" for c in SECONDARY.lower())
DATADIR = "/var/lib/postgresql/15/main"
CONFDIR = "/etc/postgresql/15/main"
PGPASS = "/var/lib/postgresql/.pgpass"
REPLICATION_WAIT_SECONDS = 30

# Unique keys the service relies on (the drills find acknowledged writes by request_id).
UNIQUE_KEYS = {
    "users_user_uuid_key",
    "users_email_lower_key",
    "platform_accounts_platform_external_id_key",
    "audit_logs_request_id_key",
    "users_pkey",
    "platform_accounts_pkey",
    "token_blacklist_pkey",
    "audit_logs_pkey",
}
TABLES = {"users", "platform_accounts", "token_blacklist", "audit_logs"}


@pytest.fixture(scope="module")
def primary():
    return testinfra.get_host(f"podman://{PRIMARY}")


@pytest.fixture(scope="module")
def secondary():
    return testinfra.get_host(f"podman://{SECONDARY}")


@pytest.fixture(scope="module", params=[PRIMARY, SECONDARY])
def db_host(request):
    return testinfra.get_host(f"podman://{request.param}")


def psql(host, sql, db="postgres"):
    """Run SQL as the postgres superuser over the local socket; return the command result (unaligned, tuples)."""
    return host.run("runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 -d %s -c %s", db, sql)


def query(host, sql, db="postgres"):
    result = psql(host, sql, db)
    assert result.rc == 0, f"{sql!r} failed on {host.backend.get_hostname()}: {result.stderr}"
    return result.stdout.strip()


def rows(host, sql, db="postgres"):
    out = query(host, sql, db)
    return [line.split("|") for line in out.splitlines() if line]


def test_roles_primary_writes_secondary_in_recovery(primary, secondary):
    assert query(primary, "SELECT pg_is_in_recovery()") == "f"
    assert query(secondary, "SELECT pg_is_in_recovery()") == "t"


def test_secondary_streams_from_the_primary_through_its_slot(secondary):
    [[status, sender_host, sender_port, slot]] = rows(
        secondary, "SELECT status, sender_host, sender_port, slot_name FROM pg_stat_wal_receiver"
    )
    assert (status, sender_host, sender_port, slot) == ("streaming", PRIMARY, "5432", SLOT)


def test_primary_sees_the_standby_streaming(primary):
    [[state, sync_state]] = rows(
        primary, f"SELECT state, sync_state FROM pg_stat_replication WHERE application_name = '{SLOT}'"
    )
    assert (state, sync_state) == ("streaming", "async")


def test_replication_slot_exists_and_is_active_on_the_primary(primary):
    [[slot_type, active, restart_lsn_set]] = rows(
        primary,
        f"SELECT slot_type, active, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{SLOT}'",
    )
    assert (slot_type, active, restart_lsn_set) == ("physical", "t", "t")


def test_a_write_on_the_primary_reaches_the_secondary(primary, secondary):
    request_id = str(uuid.uuid4())
    query(
        primary,
        "INSERT INTO audit_logs (event_type, request_id, region, details) "
        f"VALUES ('login', '{request_id}', 'molecule', '{{\"source\": \"molecule verify\"}}')",
        DATABASE,
    )
    lookup = f"SELECT count(*) FROM audit_logs WHERE request_id = '{request_id}'"
    assert query(primary, lookup, DATABASE) == "1"
    deadline = time.monotonic() + REPLICATION_WAIT_SECONDS
    while query(secondary, lookup, DATABASE) != "1":
        assert time.monotonic() < deadline, f"row {request_id} not on {SECONDARY} after {REPLICATION_WAIT_SECONDS} s"
        time.sleep(0.2)


def test_the_secondary_refuses_writes(secondary):
    result = psql(
        secondary,
        "INSERT INTO audit_logs (event_type, request_id, region) "
        f"VALUES ('login', '{uuid.uuid4()}', 'molecule-standby-write')",
        DATABASE,
    )
    assert result.rc != 0
    assert "cannot execute INSERT in a read-only transaction" in result.stderr


def test_schema_tables_and_unique_keys(db_host):
    tables = {r[0] for r in rows(db_host, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", DATABASE)}
    assert TABLES <= tables
    unique = {
        r[0]
        for r in rows(
            db_host,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.indisunique AND n.nspname = 'public'",
            DATABASE,
        )
    }
    assert UNIQUE_KEYS <= unique, f"missing unique keys: {sorted(UNIQUE_KEYS - unique)}"
    constraints = {
        r[0]
        for r in rows(
            db_host,
            "SELECT conname FROM pg_constraint WHERE contype = 'u' AND connamespace = 'public'::regnamespace",
            DATABASE,
        )
    }
    assert {"users_user_uuid_key", "platform_accounts_platform_external_id_key", "audit_logs_request_id_key"} <= (
        constraints
    )


def test_seed_data_is_there_and_replicated(db_host):
    assert query(db_host, "SELECT count(*) FROM users", DATABASE) == str(SEED_USERS)
    assert (
        query(db_host, f"SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DATABASE}'")
        == APP_USER
    )


def test_pg_hba_has_no_trust_for_host_connections(db_host):
    # What the server loaded (pg_hba_file_rules) and what is in the file, so a bad line that failed to load
    # is caught too.
    loaded = rows(db_host, "SELECT type, auth_method, coalesce(error, '') FROM pg_hba_file_rules")
    assert loaded, "pg_hba_file_rules is empty"
    assert not [r for r in loaded if r[2]], f"pg_hba.conf has lines PostgreSQL rejected: {loaded}"
    assert not [r for r in loaded if r[0].startswith("host") and r[1] == "trust"]
    hba = db_host.file(f"{CONFDIR}/pg_hba.conf").content_string
    for line in hba.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0].startswith("host"):
            assert "trust" not in fields, f"trust in a host line of pg_hba.conf: {line!r}"


def test_host_connections_need_the_password(primary, secondary):
    # From the secondary to the primary over the network, as the application.
    conninfo = f"host={PRIMARY} dbname={DATABASE} user={APP_USER} connect_timeout=5"
    ok = secondary.run("env PGPASSWORD=%s psql -X -A -t -c 'SELECT 1' %s", APP_PASSWORD, conninfo)
    assert ok.rc == 0 and ok.stdout.strip() == "1", ok.stderr
    wrong = secondary.run("env PGPASSWORD=%s psql -X -A -t -c 'SELECT 1' %s", "not-the-password", conninfo)
    assert wrong.rc != 0
    assert "password authentication failed" in wrong.stderr


def test_the_replication_password_is_in_a_passfile_not_in_postgresql_auto_conf(secondary):
    auto_conf = secondary.file(f"{DATADIR}/postgresql.auto.conf")
    assert auto_conf.exists
    assert REPLICATION_PASSWORD not in auto_conf.content_string
    assert "password=" not in auto_conf.content_string
    live = query(secondary, "SHOW primary_conninfo")
    assert REPLICATION_PASSWORD not in live
    assert f"passfile={PGPASS}" in live
    assert query(secondary, "SHOW primary_slot_name") == SLOT

    pgpass = secondary.file(PGPASS)
    assert pgpass.exists
    assert (pgpass.user, pgpass.group, pgpass.mode) == ("postgres", "postgres", 0o600)
    assert f"{PRIMARY}:5432:*:{REPLICATION_USER}:{REPLICATION_PASSWORD}" in pgpass.content_string.splitlines()
