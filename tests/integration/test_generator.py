"""The workload generator against real servers: the journal is exact, failures and reconnections are journalled,
drlab.compare finds lost writes and computes RPO/RTO, revocations reach Kafka and Redis, and no password leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest

from drlab.compare import compare
from drlab.journal import Journal, parse_ts, read_journal, utc_now

pytestmark = pytest.mark.integration

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
APP = "auth_app"


class GeneratorProcess:
    """``python -m drlab.generator`` in the background, its output in files (never a full pipe)."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.argv = [sys.executable, "-m", "drlab.generator", *args]
        self.stdout_path = tmp_path / f"gen-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        env = {**env, "PYTHONPATH": str(LAB_DIR), "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        self.started = time.monotonic()
        self.elapsed: float | None = None

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"generator still running after {timeout} s: {self.stderr}")
        self.elapsed = time.monotonic() - self.started
        return code

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def generator_args(journal: Path, endpoints: list[tuple[str, object]], dbname: str, *extra: str) -> list[str]:
    args = ["--journal", str(journal), "--user", APP, "--dbname", dbname, "--connect-timeout", "1"]
    for region, server in endpoints:
        args += ["--endpoint", f"{region}={server.host}:{server.port}"]
    return [*args, *extra]


def run_generator(tmp_path, env, args, timeout=60) -> GeneratorProcess:
    gen = GeneratorProcess(tmp_path, args, env)
    code = gen.wait(timeout)
    assert code == 0, f"generator exited {code}:\n{gen.stderr}\n{gen.stdout}"
    return gen


def wait_for_acks(journal: Path, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count('"type":"ack"') >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} acked writes journalled after {timeout} s")


def run_rows(server, dbname: str, run_id: str) -> dict[str, str]:
    rows = server.psql(
        "SELECT request_id::text, event_type FROM audit_logs WHERE details->>'run_id' = %s", (run_id,), dbname=dbname
    )
    return dict(rows)


def test_journal_is_exact(pg_server, service_db, tmp_path):
    journal = tmp_path / "journal.jsonl"
    gen = run_generator(
        tmp_path,
        pg_server.env(),
        generator_args(journal, [("primary", pg_server)], service_db, "--max-ops", "300", "--rate", "500",
                       "--duration", "60", "--seed", "7", "--fsync-every", "50"),
    )
    loaded = Journal.load(journal)
    acks = loaded.acks
    assert len(acks) == 300, gen.stderr
    assert not loaded.unknowns and not loaded.events("failure")
    assert [e["event"] for e in loaded.events()] == ["start", "connect", "stop"]
    (run_id,) = loaded.run_ids

    # every acknowledged write is in the database, and the database holds nothing else from this run
    in_db = run_rows(pg_server, service_db, run_id)
    assert set(in_db) == {a["request_id"] for a in acks}
    event_type = {"signup": "signup", "login": "login", "revoke": "token_revoked"}
    assert all(in_db[a["request_id"]] == event_type[a["op"]] for a in acks)
    ops = Counter(a["op"] for a in acks)
    assert set(ops) == {"signup", "login", "revoke"}
    counts = pg_server.psql(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM platform_accounts), "
        "(SELECT count(*) FROM token_blacklist), (SELECT count(*) FROM users WHERE last_login_at IS NOT NULL)",
        dbname=service_db,
    )[0]
    assert counts[:3] == (ops["signup"], ops["signup"], ops["revoke"])
    assert 0 < counts[3] <= ops["login"]
    emails = pg_server.psql("SELECT email FROM users", dbname=service_db)
    signups = {a["request_id"] for a in acks if a["op"] == "signup"}
    assert {e for (e,) in emails} == {f"user-{r}@drlab.example" for r in signups}

    # the LSN is read inside each write's transaction: never decreasing, never beyond the server's WAL
    lsns = [a["lsn"] for a in sorted(acks, key=lambda a: a["seq"])]
    assert all(isinstance(a["xid"], int) for a in acks)
    ordered = pg_server.psql("SELECT bool_and(l1 <= l2) FROM unnest(%s::pg_lsn[], %s::pg_lsn[]) AS t(l1, l2)",
                             (lsns[:-1], lsns[1:]))
    assert ordered == [(True,)]
    assert pg_server.psql("SELECT %s::pg_lsn <= pg_current_wal_insert_lsn()", (lsns[-1],)) == [(True,)]

    # acked_at: UTC with microseconds, in commit order
    times = [parse_ts(a["acked_at"]) for a in acks]
    assert times == sorted(times) and acks[0]["acked_at"].endswith("+00:00")
    stop = loaded.events("stop")[0]
    assert stop["reason"] == "max_ops" and stop["summary"]["acked"]["total"] == 300
    assert "acked 300 writes" in gen.stdout and "regions: primary 300" in gen.stdout


def test_crash_and_restart_mid_run(pg_server, service_db, tmp_path):
    journal = tmp_path / "journal.jsonl"
    duration = 8
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal, [("primary", pg_server)], service_db, "--rate", "100", "--duration", str(duration),
                       "--retry-interval", "0.1"),
        pg_server.env(),
    )
    try:
        wait_for_acks(journal, 50)
        pg_server.kill()  # pg_ctl stop -m immediate: sessions die, no checkpoint
        crashed_at = utc_now()  # after the server is gone: every write acked before this was acked by it
        time.sleep(1.5)  # the outage under test: its length is what the RTO below must measure
        restarted_at = utc_now()
        pg_server.start()
    finally:
        if not pg_server.running:
            pg_server.start()
    code = gen.wait(timeout=duration + 15)
    assert code == 0, gen.stderr
    assert gen.elapsed < duration + 5, "the generator overran its duration"

    loaded = Journal.load(journal)
    failures = loaded.events("failure")
    assert failures and failures[0]["rediscover"] and failures[0]["region"] == "primary"
    assert abs((parse_ts(failures[0]["at"]) - crashed_at).total_seconds()) < 1
    reconnects = loaded.events("reconnect")
    assert len(reconnects) == 1 and reconnects[0]["region"] == "primary"
    assert parse_ts(reconnects[0]["at"]) >= restarted_at
    after = [a for a in loaded.acks if parse_ts(a["acked_at"]) > restarted_at]
    assert len(after) > 50, "the generator did not resume writing"
    assert loaded.events("stop")[0]["reason"] == "duration"

    # acked ⊆ database; nothing in the database from this run that was neither acked nor of unknown outcome
    report = compare(journal, pg_server.dsn(service_db), failure_time=crashed_at)
    assert report.missing == []
    assert report.extra == []
    assert len(report.present) == len(loaded.acks)
    assert len(report.unknown_found) + len(report.unknown_missing) == len(loaded.unknowns)
    assert report.rpo_seconds == 0.0
    # RTO: from the crash to the first acknowledged write after it, about the 1.5 s the server was down
    assert 1.4 <= report.rto_seconds < 5
    (outage,) = report.outages
    assert outage.recovered_region == "primary" and 1.0 < outage.seconds < 5
    assert "outage at" in gen.stdout


def test_compare_finds_exactly_the_deleted_rows(pg_server, service_db, tmp_path):
    journal = tmp_path / "journal.jsonl"
    run_generator(
        tmp_path,
        pg_server.env(),
        generator_args(journal, [("primary", pg_server)], service_db, "--max-ops", "200", "--rate", "400"),
    )
    acks = sorted(Journal.load(journal).acks, key=lambda a: a["acked_at"])
    assert len(acks) == 200
    # simulated loss: the newest 7 acknowledged writes (an async standby promoted too early) and one old one
    lost = acks[-7:] + [acks[50]]
    pg_server.psql("DELETE FROM audit_logs WHERE request_id = ANY(%s::uuid[])",
                   ([a["request_id"] for a in lost],), dbname=service_db)
    failure_time = parse_ts(acks[-1]["acked_at"]) + timedelta(milliseconds=1)

    report = compare(journal, pg_server.dsn(service_db), failure_time=failure_time)
    assert {r["request_id"] for r in report.missing} == {a["request_id"] for a in lost}
    assert len(report.present) == 192
    assert report.newest_lost_acked_at == parse_ts(acks[-1]["acked_at"])
    expected_rpo = (parse_ts(acks[-1]["acked_at"]) - parse_ts(acks[-8]["acked_at"])).total_seconds()
    assert report.rpo_seconds == pytest.approx(expected_rpo, abs=1e-6)
    assert report.last_surviving_before_failure == parse_ts(acks[-8]["acked_at"])
    assert report.extra == [] and report.mismatched == []

    # the same through a connection and through the command line
    conn = psycopg2.connect(pg_server.dsn(service_db))
    try:
        assert len(compare(journal, conn, failure_time=failure_time).missing) == 8
    finally:
        conn.close()
    cli = subprocess.run(
        [sys.executable, "-m", "drlab.compare", "--journal", str(journal), "--dsn", pg_server.dsn(service_db),
         "--failure-time", failure_time.isoformat(), "--json", "--fail-on-loss"],
        check=False, capture_output=True, text=True, timeout=60,
        env={**pg_server.env(), "PYTHONPATH": str(LAB_DIR)},
    )
    assert cli.returncode == 3, cli.stderr
    out = json.loads(cli.stdout)
    assert out["missing"] == 8 and out["present"] == 192
    assert out["rpo_seconds"] == pytest.approx(expected_rpo, abs=1e-6)
    assert {m["request_id"] for m in out["missing_writes"]} == {a["request_id"] for a in lost}
    refused = subprocess.run(
        [sys.executable, "-m", "drlab.compare", "--journal", str(journal), "--dsn",
         pg_server.dsn(service_db) + " password=hunter2"],
        check=False, capture_output=True, text=True, timeout=60,
        env={**pg_server.env(), "PYTHONPATH": str(LAB_DIR)},
    )
    assert refused.returncode == 2 and "carries a password" in refused.stderr


def test_revocations_reach_kafka_and_redis(pg_server, service_db, kafka_broker, redis_server, tmp_path):
    kafka = pytest.importorskip("kafka")
    redis = pytest.importorskip("redis")
    journal = tmp_path / "journal.jsonl"
    topic = "auth.token-revocations"
    run_generator(
        tmp_path,
        pg_server.env(),
        generator_args(journal, [("primary", pg_server)], service_db, "--max-ops", "40", "--rate", "100",
                       "--weights", "signup=1,revoke=3", "--kafka", f"primary={kafka_broker.bootstrap}",
                       "--redis", f"primary={redis_server.url}", "--redis-ttl", "600", "--kafka-timeout", "5"),
    )
    revokes = [a for a in Journal.load(journal).acks if a["op"] == "revoke"]
    assert len(revokes) >= 10
    assert all(a["kafka_acked"] is True and a["redis_set"] is True for a in revokes), revokes[0]

    consumer = kafka.KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=None, enable_auto_commit=False,
        consumer_timeout_ms=3000, auto_offset_reset="earliest",
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, "the topic does not exist on the broker"
        consumer.assign([kafka.TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        published = {}
        for message in consumer:
            event = json.loads(message.value)
            published[event["request_id"]] = (message.key.decode(), event)
    finally:
        consumer.close()
    cache = redis.Redis.from_url(redis_server.url)
    try:
        for ack in revokes:
            key, event = published[ack["request_id"]]
            assert key == ack["jti"]
            assert event == {"jti": ack["jti"], "user_id": ack["user_id"], "request_id": ack["request_id"],
                             "revoked_at": ack["revoked_at"], "expires_at": ack["expires_at"], "reason": "logout",
                             "region": "primary"}
            assert 0 < cache.ttl(f"revoked:{ack['jti']}") <= 600
            assert json.loads(cache.get(f"revoked:{ack['jti']}"))["request_id"] == ack["request_id"]
    finally:
        cache.close()
    blacklisted = pg_server.psql("SELECT jti::text FROM token_blacklist", dbname=service_db)
    assert {j for (j,) in blacklisted} == {a["jti"] for a in revokes}


def test_password_never_in_argv_or_journal(pg_server, service_db, tmp_path):
    password = pg_server.password_for(APP)
    journal = tmp_path / "journal.jsonl"
    args = generator_args(journal, [("primary", pg_server)], service_db, "--rate", "50", "--duration", "3")
    gen = GeneratorProcess(tmp_path, args, pg_server.env())
    wait_for_acks(journal, 5)
    cmdline = Path(f"/proc/{gen.process.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "drlab.generator" in cmdline and password not in cmdline
    assert gen.wait(timeout=20) == 0, gen.stderr
    for text in (journal.read_text(), gen.stdout, gen.stderr):
        assert password not in text
    assert Journal.load(journal).events("start")[0]["password_source"] == "PGPASSFILE"

    # PGPASSWORD works too, and is not journalled either
    env = {k: v for k, v in pg_server.env().items() if k != "PGPASSFILE"}
    env["PGPASSWORD"] = password
    other = tmp_path / "journal-env.jsonl"
    gen = run_generator(tmp_path, env, generator_args(other, [("primary", pg_server)], service_db, "--max-ops", "5"))
    assert password not in other.read_text() + gen.stdout + gen.stderr
    assert len(read_journal(other)) == 5 + 3

    # a wrong password fails cleanly and within its bound, without echoing any password
    env["PGPASSWORD"] = "not-the-password"
    gen = GeneratorProcess(tmp_path, generator_args(tmp_path / "j3.jsonl", [("primary", pg_server)], service_db,
                                                    "--duration", "2"), env)
    assert gen.wait(timeout=15) == 5  # never found a writable primary
    assert "not-the-password" not in (tmp_path / "j3.jsonl").read_text() + gen.stderr


@pytest.fixture(scope="module")
def second_server(pg_server_factory):
    return pg_server_factory("pg-b")


def _two_region_setup(pg_server, second_server, make_db, tmp_path):
    """The same service database on two independent servers: both writable primaries, i.e. a split brain."""
    name = f"authdb_{os.urandom(4).hex()}"
    make_db(pg_server, name)
    make_db(second_server, name)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(pg_server.pgpass.read_text() + second_server.pgpass.read_text())
    pgpass.chmod(0o600)
    env = {**pg_server.env(), "PGPASSFILE": str(pgpass)}
    return name, env


def test_split_brain_is_journalled_and_failover_follows(pg_server, second_server, service_db_factory, tmp_path):
    dbname, env = _two_region_setup(pg_server, second_server, service_db_factory, tmp_path)
    journal = tmp_path / "journal.jsonl"
    duration = 7
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal, [("primary", pg_server), ("secondary", second_server)], dbname, "--rate", "100",
                       "--duration", str(duration), "--probe-interval", "0.3", "--retry-interval", "0.1"),
        env,
    )
    try:
        wait_for_acks(journal, 50)
        crashing_at = utc_now()
        pg_server.kill()
        crashed_at = utc_now()
        code = gen.wait(timeout=duration + 15)
    finally:
        if not pg_server.running:
            pg_server.start()
    assert code == 0, gen.stderr

    loaded = Journal.load(journal)
    (split,) = loaded.events("split_brain")
    assert {p["region"] for p in split["primaries"]} == {"primary", "secondary"} and split["policy"] == "keep"
    before = [a for a in loaded.acks if parse_ts(a["acked_at"]) < crashing_at]
    after = [a for a in loaded.acks if parse_ts(a["acked_at"]) > crashed_at]
    assert before and {a["region"] for a in before} == {"primary"}, "kept writing to the first primary"
    reconnect = loaded.events("reconnect")[0]
    assert reconnect["region"] == "secondary" and reconnect["from_region"] == "primary"
    assert after and all(a["region"] == "secondary" for a in after)
    assert loaded.events("split_brain_resolved"), "the old primary going away ends the split brain"
    first_after = min(parse_ts(a["acked_at"]) for a in after)
    assert (first_after - crashed_at).total_seconds() < 2, "the failover was not followed within ~1 s"

    # each region holds exactly what was acknowledged there
    for region, server in (("primary", pg_server), ("secondary", second_server)):
        acked_here = {a["request_id"] for a in loaded.acks if a["region"] == region}
        in_db = set(run_rows(server, dbname, loaded.run_ids[0]))
        unknown = {u["request_id"] for u in loaded.unknowns if u["region"] == region}
        assert acked_here <= in_db <= acked_here | unknown

    # --on-split-brain=stop refuses to write at all
    journal2 = tmp_path / "journal-stop.jsonl"
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal2, [("primary", pg_server), ("secondary", second_server)], dbname, "--duration", "5",
                       "--on-split-brain", "stop"),
        env,
    )
    assert gen.wait(timeout=15) == 3
    stopped = Journal.load(journal2)
    assert stopped.events("split_brain") and not stopped.acks
    assert stopped.events("stop")[0]["reason"] == "split_brain"


def test_sigterm_stops_cleanly(pg_server, service_db, tmp_path):
    journal = tmp_path / "journal.jsonl"
    gen = GeneratorProcess(
        tmp_path, generator_args(journal, [("primary", pg_server)], service_db, "--rate", "50", "--duration", "60"),
        pg_server.env(),
    )
    wait_for_acks(journal, 10)
    gen.process.terminate()
    assert gen.wait(timeout=10) == 0
    records = read_journal(journal)  # complete lines only: nothing torn
    assert records[-1]["event"] == "stop" and records[-1]["reason"] == "signal SIGTERM"
    acks = [r for r in records if r["type"] == "ack"]
    assert set(run_rows(pg_server, service_db, records[0]["run_id"])) == {a["request_id"] for a in acks}


SLOW_COMMIT_SQL = """
CREATE FUNCTION drlab_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER drlab_slow_commit AFTER INSERT ON audit_logs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION drlab_slow_commit();
"""


def test_commit_without_an_answer_is_unknown_not_acked(pg_server, service_db, tmp_path):
    # A deferred trigger makes every COMMIT take 0.5 s, so the crash lands inside a COMMIT: the client sent it and
    # never hears back. (The trigger runs before the commit record is written, so that write is in fact lost.)
    pg_server.psql(SLOW_COMMIT_SQL, dbname=service_db)
    journal = tmp_path / "journal.jsonl"
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal, [("primary", pg_server)], service_db, "--rate", "50", "--duration", "6",
                       "--weights", "signup=1", "--retry-interval", "0.1"),
        pg_server.env(),
    )
    try:
        wait_for_acks(journal, 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            in_commit = pg_server.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'drlab-generator' "
                "AND query = 'COMMIT' AND wait_event = 'PgSleep'",
                dbname=service_db,
            )
            if in_commit == [(1,)]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the generator's session was never seen inside COMMIT")
        pg_server.kill()
        time.sleep(0.5)  # an outage of its own length, the behaviour under test (no event to wait for)
        pg_server.start()
    finally:
        if not pg_server.running:
            pg_server.start()
    assert gen.wait(timeout=20) == 0, gen.stderr

    loaded = Journal.load(journal)
    (unknown,) = loaded.unknowns
    failure = loaded.events("failure")[0]
    assert failure["phase"] == "commit" and failure["outcome"] == "unknown"
    assert failure["request_id"] == unknown["request_id"]
    assert unknown["request_id"] not in {a["request_id"] for a in loaded.acks}
    assert loaded.events("reconnect"), gen.stderr
    report = compare(journal, pg_server.dsn(service_db))
    assert report.missing == [] and report.extra == []
    assert [u["request_id"] for u in report.unknown_missing] == [unknown["request_id"]]
    assert "unknown 1" in gen.stdout


def test_unusable_database_stops_within_bounds(pg_server, tmp_path):
    # the application role can log in, but the schema was never applied: every attempt fails the same way
    pg_server.ensure_role(APP)
    dbname = pg_server.create_database(f"noschema_{os.urandom(4).hex()}", owner=APP)
    journal = tmp_path / "journal.jsonl"
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal, [("primary", pg_server)], dbname, "--duration", "30", "--retry-interval", "0.05",
                       "--max-consecutive-errors", "3"),
        pg_server.env(),
    )
    assert gen.wait(timeout=20) == 4
    assert gen.elapsed < 10
    loaded = Journal.load(journal)
    failures = loaded.events("failure")
    assert len(failures) == 3 and {f["error_class"] for f in failures} == {"UndefinedTable"}
    assert loaded.events("stop")[0]["reason"] == "consecutive_errors"


def test_incomplete_fencing_is_a_split_brain(pg_server, second_server, service_db_factory, tmp_path):
    """The old primary is fenced for new sessions only (pg_hba reject + reload) while the generator's session
    lives on, and the other region is opened for writes: the generator notices it is writing to a stale primary."""
    dbname, env = _two_region_setup(pg_server, second_server, service_db_factory, tmp_path)
    second_server.psql("ALTER SYSTEM SET default_transaction_read_only = on")
    second_server.psql("SELECT pg_reload_conf()")
    hba = pg_server.data_dir / "pg_hba.conf"
    original_hba = hba.read_text()
    journal = tmp_path / "journal.jsonl"
    gen = GeneratorProcess(
        tmp_path,
        generator_args(journal, [("primary", pg_server), ("secondary", second_server)], dbname, "--rate", "50",
                       "--duration", "4", "--probe-interval", "0.2"),
        env,
    )
    try:
        wait_for_acks(journal, 20)
        hba.write_text(f"host all {APP} 127.0.0.1/32 reject\n{original_hba}")
        pg_server.psql("SELECT pg_reload_conf()")
        second_server.psql("ALTER SYSTEM RESET default_transaction_read_only")
        second_server.psql("SELECT pg_reload_conf()")
        assert gen.wait(timeout=20) == 0, gen.stderr
    finally:
        hba.write_text(original_hba)
        pg_server.psql("SELECT pg_reload_conf()")
        second_server.psql("ALTER SYSTEM RESET default_transaction_read_only")
        second_server.psql("SELECT pg_reload_conf()")

    loaded = Journal.load(journal)
    (stale,) = loaded.events("split_brain")
    assert stale["kind"] == "stale_session" and stale["current"] == "primary"
    assert stale["current_state"] == "down" and [p["region"] for p in stale["primaries"]] == ["secondary"]
    # policy keep: it went on writing where its session was (a real pool would too): all acks on primary
    assert {a["region"] for a in loaded.acks} == {"primary"}
    assert loaded.events("start")[0]["config"]["on_split_brain"] == "keep"
