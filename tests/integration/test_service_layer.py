"""The service layer's engine against real servers: redis-server, the Tansu Kafka stand-in (kafka-python, the
client real clusters speak to) and PostgreSQL with the service schema.

- Redis: master/replica roles with REPLICAOF between two real servers; the auth-cache flush.
- Kafka: the preflight, consumer-group offsets moved to a point by timestamp, the DR event published once.
- Auth-safe recovery: revocations after a recovery point put back into token_blacklist from the stream and the
  Redis cache; a stream that cannot prove coverage records a cut-off (or fails); re-runs change nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))
from conftest import free_port, stop_process, wait_for_port  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._service import (  # noqa: E402
    kafka_ops,
    redis_ops,
    revocations,
)

pytestmark = pytest.mark.integration
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
UTC = datetime.UTC


@pytest.fixture
def redis_pair(tmp_path):
    """Two real redis-servers (master, replica-to-be) on free loopback ports."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    servers = []
    for name in ("a", "b"):
        port = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        wait_for_port(port, 10, proc)
        servers.append((port, proc))
    try:
        yield [f"redis://127.0.0.1:{server[0]}/0" for server in servers], [server[0] for server in servers]
    finally:
        for server in servers:
            stop_process(server[1])


def _redis(url):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


def test_redis_roles_replicaof_and_back(redis_pair):
    (a, b), (port_a, _port_b) = redis_pair
    # check mode says it would repoint, and sends nothing
    plan = redis_ops.ensure_role(b, "replica", master_host="127.0.0.1", master_port=port_a, check_mode=True)
    assert plan["changed"] and plan["after"]["role"] == "master"
    assert redis_ops.replication(_redis(b))["role"] == "master"

    done = redis_ops.ensure_role(b, "replica", master_host="127.0.0.1", master_port=port_a, wait_link_seconds=10)
    assert done["changed"] and done["after"]["role"] == "replica"
    assert done["after"]["master_link_status"] == "up"
    _redis(a).set("session:1", "x")
    deadline = time.monotonic() + 10
    while _redis(b).get("session:1") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _redis(b).get("session:1") == b"x"
    # a replica refuses writes: repointing the failed region's Redis stops writes to it
    with pytest.raises(Exception, match="read only replica"):
        _redis(b).set("session:2", "y")
    again = redis_ops.ensure_role(b, "replica", master_host="127.0.0.1", master_port=port_a)
    assert not again["changed"]

    promoted = redis_ops.ensure_role(b, "master")
    assert promoted["changed"] and promoted["after"]["role"] == "master"
    _redis(b).set("session:2", "y")
    assert not redis_ops.ensure_role(b, "master")["changed"]


def test_redis_replica_link_that_never_comes_up_fails_with_what_to_check(redis_pair):
    (_a, b), _ports = redis_pair
    dead = free_port()
    with pytest.raises(redis_ops.RedisOpsError, match="link is down after 1 s: can it reach the master"):
        redis_ops.ensure_role(b, "replica", master_host="127.0.0.1", master_port=dead, wait_link_seconds=1,
                              poll_seconds=0.2)
    redis_ops.ensure_role(b, "master")


def test_redis_unreachable_is_one_sentence_naming_the_server():
    with pytest.raises(redis_ops.RedisOpsError, match=r"Redis 127\.0\.0\.1:\d+/0: INFO replication failed"):
        redis_ops.ensure_role(f"redis://:s3cret@127.0.0.1:{free_port()}/0", "master", timeout=1)
    try:
        redis_ops.ensure_role(f"redis://:s3cret@127.0.0.1:{free_port()}/0", "master", timeout=1)
    except redis_ops.RedisOpsError as exc:
        assert "s3cret" not in str(exc)


def test_redis_flush_deletes_only_the_patterns_and_refuses_everything(redis_server):
    client = _redis(redis_server.url)
    tag = uuid.uuid4().hex[:8]
    for i in range(1203):
        client.set(f"session:{tag}:{i}", "s")
    client.set(f"revoked:{tag}", json.dumps({"jti": str(uuid.uuid4())}))
    client.set(f"other:{tag}", "keep")
    counted = redis_ops.flush(redis_server.url, [f"session:{tag}:*"], check_mode=True)
    assert counted["deleted"] == {f"session:{tag}:*": 1203} and client.exists(f"session:{tag}:0")
    done = redis_ops.flush(redis_server.url, [f"session:{tag}:*"])
    assert done["changed"] and done["deleted"][f"session:{tag}:*"] == 1203
    assert not list(client.scan_iter(match=f"session:{tag}:*"))
    assert client.exists(f"revoked:{tag}") and client.exists(f"other:{tag}")
    assert not redis_ops.flush(redis_server.url, [f"session:{tag}:*"])["changed"]
    with pytest.raises(redis_ops.RedisOpsError, match="matches every key"):
        redis_ops.flush(redis_server.url, ["*"])


def _topic(kafka_broker, partitions=3):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"t.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=5000)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def _produce(kafka_broker, topic, events, pause=0.0):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=0)
    try:
        for key, value, *when in events:
            body = value if isinstance(value, bytes) else json.dumps(value).encode()
            stamp = int(when[0].timestamp() * 1000) if when else None
            producer.send(topic, key=key.encode(), value=body, timestamp_ms=stamp).get(10)
            if pause:
                time.sleep(pause)
    finally:
        producer.close(timeout=2)


def test_kafka_preflight_names_missing_and_short_topics(kafka_broker):
    topic = _topic(kafka_broker, partitions=2)
    ok = kafka_ops.preflight(kafka_broker.bootstrap, {topic: 2})
    assert ok["problems"] == [] and ok["topics"][topic]["partitions"] == 2 and ok["brokers"] >= 1
    bad = kafka_ops.preflight(kafka_broker.bootstrap, {topic: 3, "no.such.topic": 1})
    assert bad["problems"] == ["topic no.such.topic is missing", f"topic {topic} has 2 partitions, 3 expected"]
    with pytest.raises(kafka_ops.KafkaOpsError, match=r"Kafka 127\.0\.0\.1:\d+"):
        kafka_ops.preflight(f"127.0.0.1:{free_port()}", {topic: 1}, timeout=2)


def test_kafka_group_offsets_move_to_the_point_by_timestamp(kafka_broker):
    from kafka import KafkaConsumer, TopicPartition

    topic = _topic(kafka_broker, partitions=2)
    _produce(kafka_broker, topic, [(f"k{i}", {"i": i}) for i in range(20)], pause=0.01)
    point = datetime.datetime.now(UTC)
    time.sleep(0.05)
    _produce(kafka_broker, topic, [(f"k{i}", {"i": i, "after": True}) for i in range(20, 30)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    # the consumers had read everything
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    from kafka.structs import OffsetAndMetadata

    consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
    consumer.close()

    ms = int(point.timestamp() * 1000)
    plan = kafka_ops.reset_group(kafka_broker.bootstrap, group, [topic], ms, check_mode=True)
    assert plan["changed"]
    done = kafka_ops.reset_group(kafka_broker.bootstrap, group, [topic], ms)
    assert done["changed"]
    # after the reset, consuming from the committed offsets yields exactly the events after the point
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    consumer.assign(tps)
    got = []
    for tp in tps:
        committed = consumer.committed(tp)
        assert committed == next(r["after"] for r in done["partitions"] if r["partition"] == tp.partition)
        consumer.seek(tp, committed)
    deadline = time.monotonic() + 15
    while len(got) < 10 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            got.extend(json.loads(r.value) for r in records)
    consumer.close()
    assert sorted(e["i"] for e in got) == list(range(20, 30)) and all(e.get("after") for e in got)
    assert not kafka_ops.reset_group(kafka_broker.bootstrap, group, [topic], ms)["changed"]


def test_kafka_dr_event_is_published_once(kafka_broker):
    topic = _topic(kafka_broker, partitions=1)
    key = f"pitr:primary:{uuid.uuid4()}"
    event = {"type": "pitr", "region": "primary", "recovery_point": "2026-12-04T05:00:00+00:00"}
    assert kafka_ops.publish(kafka_broker.bootstrap, topic, key, event, check_mode=True)["published"] is None
    first = kafka_ops.publish(kafka_broker.bootstrap, topic, key, event)
    assert first["changed"] and first["published"]["offset"] == 0
    again = kafka_ops.publish(kafka_broker.bootstrap, topic, key, event)
    assert not again["changed"] and again["already"] == f"{topic}[0]@0"
    _produce(kafka_broker, topic, [("other", {"x": 1})])
    assert kafka_ops.publish(kafka_broker.bootstrap, topic, f"{key}-2", event)["published"]["offset"] == 2


# -- auth-safe recovery ---------------------------------------------------------------------------------------------
def _users(pg_server, db, n=5):
    return [r[0] for r in pg_server.psql(
        "INSERT INTO users (email, password_hash) SELECT 'u' || g || '-' || md5(random()::text) || '@x', 'h' "
        "FROM generate_series(1, %s) g RETURNING id", (n,), dbname=db, user="auth_app")]


def _event(user_id, revoked_at, ttl=3600, **extra):
    return {"jti": str(uuid.uuid4()), "user_id": user_id, "revoked_at": revoked_at.isoformat(),
            "expires_at": (revoked_at + datetime.timedelta(seconds=ttl)).isoformat(), "reason": "logout", **extra}


def _blacklisted(pg_server, db):
    return {r[0] for r in pg_server.psql("SELECT jti::text FROM token_blacklist", dbname=db)}


def _conn(pg_server, db):
    return pg_server.connect(db, user="auth_app")


def _own_db(redis_server, number):
    """A Redis database of this test's own: the server is shared, and other tests leave revoked:* keys in db 0."""
    return redis_server.url.rsplit("/", 1)[0] + f"/{number}"


def test_revocations_after_the_point_are_put_back_idempotently(pg_server, service_db, kafka_broker, redis_server):
    users = _users(pg_server, service_db)
    topic = _topic(kafka_broker)
    point = datetime.datetime.now(UTC)
    before = _event(users[0], point - datetime.timedelta(seconds=600))  # long before: not read
    after = [_event(users[i % len(users)], point + datetime.timedelta(seconds=i)) for i in range(30)]
    lost_user = _event(999999999, point + datetime.timedelta(seconds=40))  # the user signed up after T: gone
    expired = _event(users[1], point + datetime.timedelta(seconds=1), ttl=1)
    expired["expires_at"] = (datetime.datetime.now(UTC) - datetime.timedelta(seconds=5)).isoformat()
    expired["revoked_at"] = (datetime.datetime.now(UTC) - datetime.timedelta(seconds=10)).isoformat()
    # the event long before the point carries its own time (as it would have when it was published)
    _produce(kafka_broker, topic, [(before["jti"], before, point - datetime.timedelta(seconds=600))]
             + [(e["jti"], e) for e in [*after, lost_user, expired]])
    # one revocation only the cache has (its event never reached Kafka)
    cached = _event(users[2], point + datetime.timedelta(seconds=50))
    cache_url = _own_db(redis_server, 3)
    _redis(cache_url).set(f"revoked:{cached['jti']}", json.dumps(cached), ex=600)
    src = [{"name": "primary", "bootstrap": kafka_broker.bootstrap, "topic": topic}]
    rsrc = [{"name": "primary", "url": cache_url}]

    plan = revocations.reapply(_conn(pg_server, service_db), point.isoformat(), src, rsrc, margin_seconds=60,
                               check_mode=True)
    assert plan["reapplied"] == 32 and plan["verified"] is None and _blacklisted(pg_server, service_db) == set()

    done = revocations.reapply(_conn(pg_server, service_db), point.isoformat(), src, rsrc, margin_seconds=60)
    wanted = {e["jti"] for e in [*after, lost_user, cached]}
    assert _blacklisted(pg_server, service_db) == wanted
    assert done["reapplied"] == 32 and done["expired"] == 1 and done["verified"] is True
    assert done["cutoff"] is None and done["gaps"] == []
    # the revocation of a user the recovered database no longer has is kept, without the user
    assert pg_server.psql("SELECT user_id FROM token_blacklist WHERE jti = %s", (lost_user["jti"],),
                          dbname=service_db) == [(None,)]
    again = revocations.reapply(_conn(pg_server, service_db), point.isoformat(), src, rsrc, margin_seconds=60)
    assert not again["changed"] and again["reapplied"] == 0 and again["already_present"] == 32


def test_a_stream_that_cannot_answer_records_a_cutoff_once_or_fails(pg_server, service_db, kafka_broker):
    point = datetime.datetime.now(UTC)
    dead = [{"name": "primary", "bootstrap": f"127.0.0.1:{free_port()}", "topic": "auth.token-revocations"}]
    with pytest.raises(revocations.RevocationError, match="does not cover the gap"):
        revocations.reapply(_conn(pg_server, service_db), point.isoformat(), dead, on_gap="fail", timeout=2)
    assert pg_server.psql("SELECT count(*) FROM token_revocation_cutoff", dbname=service_db) == [(0,)]

    first = revocations.reapply(_conn(pg_server, service_db), point.isoformat(), dead, timeout=2)
    assert first["cutoff"]["changed"] and "could not be read" in first["cutoff"]["reason"]
    rows = pg_server.psql("SELECT not_before, run_key FROM token_revocation_cutoff", dbname=service_db)
    assert len(rows) == 1 and rows[0][1] == f"recovery:{point.isoformat()}"
    again = revocations.reapply(_conn(pg_server, service_db), point.isoformat(), dead, timeout=2)
    assert not again["cutoff"]["changed"] and not again["changed"]
    assert pg_server.psql("SELECT count(*) FROM token_revocation_cutoff", dbname=service_db) == [(1,)]

    # a source that may be lost (required: false) does not force a cut-off when another covers the gap
    topic = _topic(kafka_broker, partitions=1)
    ev = _event(None, point + datetime.timedelta(seconds=1))
    _produce(kafka_broker, topic, [(ev["jti"], ev)])
    mixed = [{"name": "secondary", "bootstrap": kafka_broker.bootstrap, "topic": topic},
             dict(dead[0], required=False)]
    other_point = point + datetime.timedelta(microseconds=1)
    ok = revocations.reapply(_conn(pg_server, service_db), other_point.isoformat(), mixed, timeout=2)
    assert ok["cutoff"] is None and ok["reapplied"] == 1
    assert [s["ok"] for s in ok["sources"]] == [True, False]


def test_an_unreadable_event_is_a_gap_not_a_silent_skip(pg_server, service_db, kafka_broker):
    topic = _topic(kafka_broker, partitions=1)
    point = datetime.datetime.now(UTC)
    _produce(kafka_broker, topic, [("x", b"not json"), ("y", {"jti": "not-a-uuid"})])
    got = revocations.reapply(_conn(pg_server, service_db), point.isoformat(),
                              [{"name": "p", "bootstrap": kafka_broker.bootstrap, "topic": topic}])
    assert got["cutoff"] is not None and "2 events" in got["gaps"][0]


def _play_vvv(tmp_path, extra_vars, play_text):
    """Runs play_text on localhost at -vvv, its variables (secrets among them) from a 0600 file, never argv."""
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(extra_vars))
    extra.chmod(0o600)
    play = tmp_path / "play.yml"
    play.write_text(play_text)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", f"@{extra}", str(play), "-vvv",
                           "-e", f"ansible_python_interpreter={sys.executable}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)


def test_token_revocations_module_through_ansible_keeps_secrets_out(tmp_path, pg_server, service_db, kafka_broker,
                                                                    redis_server):
    users = _users(pg_server, service_db, 2)
    topic = _topic(kafka_broker, partitions=1)
    point = datetime.datetime.now(UTC)
    ev = _event(users[0], point + datetime.timedelta(seconds=2))
    _produce(kafka_broker, topic, [(ev["jti"], ev)])
    password = pg_server.password_for("auth_app")
    out = _play_vvv(tmp_path, {"pw": password, "db": service_db, "pgport": pg_server.port,
                               "bootstrap": kafka_broker.bootstrap, "topic": topic, "point": point.isoformat(),
                               "redis": _own_db(redis_server, 4)}, """
- hosts: localhost
  gather_facts: false
  tasks:
    - immersiverse.dr.token_revocations:
        recovery_point: "{{ point }}"
        kafka_sources: [{name: primary, bootstrap: "{{ bootstrap }}", topic: "{{ topic }}"}]
        redis_sources: [{name: primary, url: "{{ redis }}", password: "{{ pw }}"}]
        login_host: 127.0.0.1
        login_port: "{{ pgport }}"
        login_user: auth_app
        login_password: "{{ pw }}"
        login_db: "{{ db }}"
      register: r
    - ansible.builtin.assert:
        that: [r.reapplied == 1, r.verified, r.cutoff is none]
""")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert password not in out.stdout and password not in out.stderr
    assert ev["jti"] in _blacklisted(pg_server, service_db)


def test_region_health_authenticates_to_redis_and_never_shows_the_password(tmp_path):
    """A Redis with requirepass: the health read (preflight, isolate, detect) answers with the password given apart
    or in the URL, refuses without it, and the password shows nowhere at -vvv."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    password = "s3cret-" + uuid.uuid4().hex
    port = free_port()
    conf = tmp_path / "redis.conf"  # not in argv: a password in argv is visible to every user of the host
    conf.write_text(f"bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\ndir {tmp_path}\nrequirepass {password}\n")
    conf.chmod(0o600)
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, 10, proc)
        out = _play_vvv(tmp_path, {"pw": password, "port": port}, """
- hosts: localhost
  gather_facts: false
  tasks:
    - immersiverse.dr.region_health:
        region: primary
        redis_url: "redis://127.0.0.1:{{ port }}/0"
        redis_password: "{{ pw }}"
        timeout: 3
      register: apart
    - immersiverse.dr.region_health:
        region: primary
        redis_url: "redis://:{{ pw }}@127.0.0.1:{{ port }}/0"
        timeout: 3
      register: in_url
    - immersiverse.dr.region_health:
        region: primary
        redis_url: "redis://127.0.0.1:{{ port }}/0"
        timeout: 3
      register: without
    - ansible.builtin.assert:
        that:
          - apart.services.redis.ok and apart.services.redis.role == 'master'
          - in_url.services.redis.ok
          - not without.services.redis.ok
""")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert password not in out.stdout and password not in out.stderr
        assert "NOAUTH" in out.stdout or "uthentication" in out.stdout, out.stdout[-3000:]
    finally:
        stop_process(proc)
