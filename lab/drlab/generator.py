"""A workload generator that behaves like the authentication service.

It writes signups, logins and token revocations to whichever region serves, at a bounded rate, for a bounded
time, and journals every acknowledged write (see ``drlab.journal``) so that a drill can prove afterwards what was
lost (RPO) and how long writes were impossible (RTO). Run ``python -m drlab.generator --help``; docs/generator.md
describes the journal and the measurements.

Passwords: PostgreSQL's comes only from a pgpass file (``--pgpassfile``, ``PGPASSFILE``, ``~/.pgpass``) or the
``PGPASSWORD`` environment variable, read by libpq itself; this program never sees, logs or journals it. A Redis
password comes from ``REDISCLI_AUTH``. Command lines carrying a password are refused.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extras

from drlab import __version__
from drlab.journal import JournalError, JournalWriter, format_ts, utc_now

OPS = ("signup", "login", "revoke")
DEFAULT_WEIGHTS = {"signup": 2, "login": 6, "revoke": 2}
AUDIT_EVENT = {"signup": "signup", "login": "login", "revoke": "token_revoked"}
PLATFORMS = ("steam", "psn", "xbox", "epic", "oculus", "apple", "google")
DEFAULT_TOPIC = "auth.token-revocations"

MAX_RATE = 5000.0  # writes/s
MAX_DURATION = 86400.0  # s
MAX_OPS = 100_000_000
USER_CACHE_SIZE = 10_000
BACKOFF_S = 5.0  # how long a failed Kafka/Redis side is skipped before being tried again

EXIT_OK = 0
EXIT_FAILED = 1  # configuration or journal error
EXIT_USAGE = 2  # argparse's own
EXIT_SPLIT_BRAIN = 3  # --on-split-brain=stop and two writable primaries were seen
EXIT_ERRORS = 4  # too many consecutive non-connection errors (schema missing, permissions, ...)
EXIT_NO_PRIMARY = 5  # never found a writable primary during the whole run

# The lab's layout (docs/generator.md); --lab fills in whatever was not given explicitly.
LAB_REGIONS = ("primary", "secondary", "tertiary")
LAB_PG_PORTS = (15432, 25432, 35432)
LAB_KAFKA_PORTS = (19092, 29092, 39092)
LAB_REDIS_PORTS = (16379, 26379, 36379)
LAB_PGPASS = ".lab/pgpass"

# SQLSTATEs after which the session cannot be trusted to write: drop it and find the primary again.
REDISCOVER_SQLSTATES = {
    "25006",  # read_only_sql_transaction: this server became (or was fenced as) read-only
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "57014",  # query_canceled: statement_timeout hit, the server is not serving in time
    "53300",  # too_many_connections
}


class ConfigError(ValueError):
    """The generator was configured in a way it refuses to run with."""


# -- configuration -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """One candidate PostgreSQL server: the region it serves and where it listens."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _split_name(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ConfigError(f"{what} must look like REGION=VALUE, got {text!r}")
    return name.strip(), value.strip()


def parse_endpoint(text: str) -> Endpoint:
    """``primary=127.0.0.1:15432`` (or ``primary=/run/postgresql:5432`` for a unix socket directory)."""
    name, hostport = _split_name(text, "--endpoint")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--endpoint {text!r}: expected REGION=HOST:PORT")
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"--endpoint {text!r}: port {port!r} is not a number") from None
    if not 0 < port_number < 65536:
        raise ConfigError(f"--endpoint {text!r}: port out of range")
    return Endpoint(name=name, host=host.strip("[]"), port=port_number)


def parse_kafka(text: str) -> tuple[str, list[str]]:
    """``primary=127.0.0.1:19092[,host:port...]``"""
    name, servers = _split_name(text, "--kafka")
    found = [s.strip() for s in servers.split(",") if s.strip()]
    if not found:
        raise ConfigError(f"--kafka {text!r}: no bootstrap server")
    return name, found


def parse_redis(text: str) -> tuple[str, str]:
    """``primary=redis://127.0.0.1:16379/0``; a password in the URL is refused (use REDISCLI_AUTH)."""
    name, url = _split_name(text, "--redis")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"--redis {name}: URL scheme must be redis://, rediss:// or unix://")
    if parts.password:
        raise ConfigError(
            f"--redis {name}: the URL carries a password, which would be visible in the process list; "
            "put it in the REDISCLI_AUTH environment variable instead"
        )
    return name, url


def parse_weights(text: str) -> dict[str, float]:
    """``signup=2,login=6,revoke=2``; omitted operations get weight 0."""
    weights = dict.fromkeys(OPS, 0.0)
    for item in text.split(","):
        if not item.strip():
            continue
        op, value = _split_name(item, "--weights")
        if op not in OPS:
            raise ConfigError(f"--weights: unknown operation {op!r} (known: {', '.join(OPS)})")
        try:
            weights[op] = float(value)
        except ValueError:
            raise ConfigError(f"--weights: {op}={value!r} is not a number") from None
        if weights[op] < 0:
            raise ConfigError(f"--weights: {op} must not be negative")
    if sum(weights.values()) <= 0:
        raise ConfigError("--weights: at least one operation needs a positive weight")
    return weights


@dataclass
class Config:
    endpoints: list[Endpoint]
    journal: str
    user: str = "auth_app"
    dbname: str = "authdb"
    passfile: str | None = None
    rate: float = 50.0
    duration: float = 60.0
    max_ops: int | None = None
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    kafka: dict[str, list[str]] = field(default_factory=dict)
    redis: dict[str, str] = field(default_factory=dict)
    kafka_topic: str = DEFAULT_TOPIC
    kafka_timeout: float = 2.0
    redis_ttl: int = 3600
    connect_timeout: int = 2
    op_timeout: float = 5.0
    retry_interval: float = 0.2
    probe_interval: float = 1.0
    on_split_brain: str = "keep"
    fsync_every: int = 100
    max_consecutive_errors: int = 20
    seed: int | None = None
    summary_json: str | None = None

    def validate(self) -> None:
        if not self.endpoints:
            raise ConfigError("give at least one --endpoint REGION=HOST:PORT (or --lab)")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ConfigError(f"endpoint region names must be unique: {names}")
        for what, regions in (("--kafka", self.kafka), ("--redis", self.redis)):
            unknown = sorted(set(regions) - set(names))
            if unknown:
                raise ConfigError(f"{what} names regions without an --endpoint: {', '.join(unknown)}")
        if not 0 < self.rate <= MAX_RATE:
            raise ConfigError(f"--rate must be in (0, {MAX_RATE:g}] writes/s")
        if not 0 < self.duration <= MAX_DURATION:
            raise ConfigError(f"--duration must be in (0, {MAX_DURATION:g}] s")
        if self.max_ops is not None and not 0 < self.max_ops <= MAX_OPS:
            raise ConfigError(f"--max-ops must be in [1, {MAX_OPS}]")
        if not 1 <= self.connect_timeout <= 60:
            raise ConfigError("--connect-timeout must be 1..60 s")
        if not 0.1 <= self.op_timeout <= 300:
            raise ConfigError("--op-timeout must be 0.1..300 s")
        if not 0.01 <= self.retry_interval <= 10:
            raise ConfigError("--retry-interval must be 0.01..10 s")
        if self.probe_interval < 0 or 0 < self.probe_interval < 0.1:
            raise ConfigError("--probe-interval must be 0 (off) or at least 0.1 s")
        if self.on_split_brain not in ("keep", "stop"):
            raise ConfigError("--on-split-brain must be keep or stop")
        if not 0.1 <= self.kafka_timeout <= 60:
            raise ConfigError("--kafka-timeout must be 0.1..60 s")
        if not 1 <= self.redis_ttl <= 30 * 86400:
            raise ConfigError("--redis-ttl must be 1 s .. 30 days")
        if not 1 <= self.fsync_every <= 100_000:
            raise ConfigError("--fsync-every must be 1..100000")
        if self.max_consecutive_errors < 1:
            raise ConfigError("--max-consecutive-errors must be at least 1")

    def public(self) -> dict:
        """The configuration as journalled in the start event: everything but secrets (there are none here)."""
        return {
            "endpoints": [{"region": e.name, "endpoint": e.address} for e in self.endpoints],
            "user": self.user,
            "dbname": self.dbname,
            "rate": self.rate,
            "duration": self.duration,
            "max_ops": self.max_ops,
            "weights": self.weights,
            "kafka": self.kafka,
            "kafka_topic": self.kafka_topic,
            "redis": self.redis,
            "connect_timeout": self.connect_timeout,
            "op_timeout": self.op_timeout,
            "retry_interval": self.retry_interval,
            "probe_interval": self.probe_interval,
            "on_split_brain": self.on_split_brain,
            "fsync_every": self.fsync_every,
            "seed": self.seed,
        }


def password_source(passfile: str | None) -> str:
    """Where libpq will find the password: the *name* of the source, never the value."""
    if os.environ.get("PGPASSWORD"):
        return "PGPASSWORD"
    if passfile:
        return "passfile"
    if os.environ.get("PGPASSFILE"):
        return "PGPASSFILE"
    if os.path.exists(os.path.expanduser("~/.pgpass")):
        return "~/.pgpass"
    return "none"


# -- talking to PostgreSQL ---------------------------------------------------------------------------------------
def connect_kwargs(cfg: Config, endpoint: Endpoint, application_name: str) -> dict:
    """libpq parameters: bounded connect, bounded statements, dead peers noticed within seconds. No password:
    libpq reads PGPASSWORD / the pgpass file itself."""
    timeout_ms = int(cfg.op_timeout * 1000)
    kwargs = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": cfg.user,
        "dbname": cfg.dbname,
        "connect_timeout": cfg.connect_timeout,
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": timeout_ms,
        "options": f"-c statement_timeout={timeout_ms}",
    }
    if cfg.passfile:
        kwargs["passfile"] = cfg.passfile
    return kwargs


def error_class(exc: BaseException) -> str:
    return type(exc).__name__


def error_message(exc: BaseException, limit: int = 200) -> str:
    """First line of an error, bounded. libpq messages carry host, port and user names, never passwords."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


@dataclass(frozen=True)
class Probe:
    """What one endpoint said when asked whether it takes writes."""

    endpoint: Endpoint
    state: str  # writable | read_only | standby | down | no_answer
    error_class: str | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        out = {"region": self.endpoint.name, "endpoint": self.endpoint.address, "state": self.state}
        if self.error_class:
            out["error_class"] = self.error_class
            out["error"] = self.error
        return out


PROBE_SQL = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'"


def probe(cfg: Config, endpoint: Endpoint) -> Probe:
    """Ask one endpoint whether it is a writable primary (not in recovery, not fenced read-only)."""
    try:
        conn = psycopg2.connect(**connect_kwargs(cfg, endpoint, "drlab-generator-probe"))
    except psycopg2.Error as exc:
        return Probe(endpoint, "down", error_class(exc), error_message(exc))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(PROBE_SQL)
            in_recovery, read_only = cur.fetchone()
    except psycopg2.Error as exc:
        return Probe(endpoint, "down", error_class(exc), error_message(exc))
    finally:
        conn.close()
    if in_recovery:
        return Probe(endpoint, "standby")
    return Probe(endpoint, "read_only" if read_only else "writable")


class Prober:
    """Probes every endpoint in parallel, so one blackholed region costs at most one connect timeout.

    A probe still running from an earlier round is waited for rather than started again, so an endpoint that
    hangs never accumulates a backlog of probes.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(cfg.endpoints), thread_name_prefix="drlab-probe"
        )
        self._inflight: dict[Endpoint, concurrent.futures.Future] = {}

    def probe_all(self, grace: float) -> list[Probe]:
        """Probe all endpoints; once one is writable, wait at most ``grace`` seconds more for the others."""
        futures = {}
        for endpoint in self.cfg.endpoints:
            future = self._inflight.get(endpoint)
            if future is None or future.done():
                future = self._pool.submit(probe, self.cfg, endpoint)
                self._inflight[endpoint] = future
            futures[future] = endpoint
        bound = self.cfg.connect_timeout + self.cfg.op_timeout + 1.0
        deadline = time.monotonic() + bound
        results: dict[Endpoint, Probe] = {}
        pending = set(futures)
        writable_since: float | None = None
        while pending:
            now = time.monotonic()
            timeout = deadline - now
            if writable_since is not None:
                timeout = min(timeout, writable_since + grace - now)
            if timeout <= 0:
                break
            done, pending = concurrent.futures.wait(
                pending, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                result = future.result()
                results[futures[future]] = result
                if result.state == "writable" and writable_since is None:
                    writable_since = time.monotonic()
        return [results.get(e, Probe(e, "no_answer")) for e in self.cfg.endpoints]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Monitor(threading.Thread):
    """Background prober that notices a second writable primary (split brain) while the generator writes."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(name="drlab-monitor", daemon=True)
        self.cfg = cfg
        self._prober = Prober(cfg)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._round = 0
        self._latest: list[Probe] = []

    def run(self) -> None:
        while not self._halt.wait(self.cfg.probe_interval):
            results = self._prober.probe_all(grace=self.cfg.connect_timeout)
            with self._lock:
                self._round += 1
                self._latest = results

    def latest(self) -> tuple[int, list[Probe]]:
        with self._lock:
            return self._round, list(self._latest)

    def stop(self) -> None:
        # It only stores results: no need to wait out a probe stuck on a blackholed endpoint (itself bounded).
        self._halt.set()
        self.join(timeout=1.0)
        self._prober.close()


# -- the side effects of a revocation ----------------------------------------------------------------------------
class KafkaSide:
    """Publishes revocation events with acks=all to the serving region's brokers."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._producers: dict[str, object] = {}
        self._skip_until: dict[str, float] = {}
        if cfg.kafka:
            try:
                import kafka  # noqa: F401  (checked now so a missing client fails at start, not mid-drill)
            except ImportError as exc:
                raise ConfigError(f"--kafka given but the kafka-python client is not importable: {exc}") from None

    def _producer(self, region: str):
        producer = self._producers.get(region)
        if producer is None:
            from kafka import KafkaProducer

            timeout_ms = int(self.cfg.kafka_timeout * 1000)
            producer = KafkaProducer(
                bootstrap_servers=self.cfg.kafka[region],
                client_id="drlab-generator",
                acks="all",
                linger_ms=0,
                request_timeout_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms,
                max_block_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
            )
            self._producers[region] = producer
        return producer

    def publish(self, region: str, key: str, event: dict) -> dict:
        """Returns the journal fields: kafka_acked None (not configured for the region) / True / False."""
        if region not in self.cfg.kafka:
            return {"kafka_acked": None}
        if time.monotonic() < self._skip_until.get(region, 0.0):
            return {"kafka_acked": False, "kafka_error": "skipped: broker failed recently"}
        try:
            value = json.dumps(event, separators=(",", ":")).encode()
            future = self._producer(region).send(self.cfg.kafka_topic, key=key.encode(), value=value)
            metadata = future.get(timeout=self.cfg.kafka_timeout)
        except Exception as exc:  # noqa: BLE001 - the write is committed: any publish failure is recorded, not raised
            self._skip_until[region] = time.monotonic() + BACKOFF_S
            self._drop(region)
            return {"kafka_acked": False, "kafka_error": f"{error_class(exc)}: {error_message(exc, 120)}"}
        return {"kafka_acked": True, "kafka_partition": metadata.partition, "kafka_offset": metadata.offset}

    def _drop(self, region: str) -> None:
        producer = self._producers.pop(region, None)
        if producer is not None:
            # Closing a broken producer may fail in many ways; it is discarded either way.
            with contextlib.suppress(Exception):
                producer.close(timeout=1)

    def close(self) -> None:
        for region in list(self._producers):
            self._drop(region)


class RedisSide:
    """Caches revocations as ``revoked:<jti>`` with an expiry in the serving region's Redis."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._clients: dict[str, object] = {}
        self._skip_until: dict[str, float] = {}
        if cfg.redis:
            try:
                import redis  # noqa: F401
            except ImportError as exc:
                raise ConfigError(f"--redis given but the redis client is not importable: {exc}") from None

    def _client(self, region: str):
        client = self._clients.get(region)
        if client is None:
            import redis

            client = redis.Redis.from_url(
                self.cfg.redis[region],
                password=os.environ.get("REDISCLI_AUTH") or None,
                socket_timeout=self.cfg.kafka_timeout,
                socket_connect_timeout=self.cfg.kafka_timeout,
            )
            self._clients[region] = client
        return client

    def set_revoked(self, region: str, jti: str, value: dict) -> dict:
        if region not in self.cfg.redis:
            return {"redis_set": None}
        if time.monotonic() < self._skip_until.get(region, 0.0):
            return {"redis_set": False, "redis_error": "skipped: redis failed recently"}
        try:
            ok = self._client(region).set(
                f"revoked:{jti}", json.dumps(value, separators=(",", ":")), ex=self.cfg.redis_ttl
            )
        except Exception as exc:  # noqa: BLE001 - the write is committed: a cache failure is recorded, not raised
            self._skip_until[region] = time.monotonic() + BACKOFF_S
            return {"redis_set": False, "redis_error": f"{error_class(exc)}: {error_message(exc, 120)}"}
        return {"redis_set": bool(ok)}

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):  # best effort at shutdown
                client.close()
        self._clients.clear()


# -- the generator -----------------------------------------------------------------------------------------------
@dataclass
class Stats:
    attempted: int = 0
    acked: Counter = field(default_factory=Counter)
    regions: Counter = field(default_factory=Counter)
    not_committed: int = 0
    unknown: int = 0
    failures: int = 0
    connects: int = 0
    reconnects: int = 0
    split_brain: int = 0
    kafka: Counter = field(default_factory=Counter)
    redis: Counter = field(default_factory=Counter)
    outages: list = field(default_factory=list)


class Generator:
    """One run: connect, write at the configured rate until a bound is reached, journal everything."""

    def __init__(self, cfg: Config, journal: JournalWriter, stop_event: threading.Event | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.journal = journal
        self.stop_event = stop_event or threading.Event()
        self.stop_signal: str | None = None
        self.rng = random.Random(cfg.seed)
        self.stats = Stats()
        self.kafka = KafkaSide(cfg)
        self.redis = RedisSide(cfg)
        self.prober = Prober(cfg)
        self.monitor: Monitor | None = None
        self.conn = None
        self.current: Endpoint | None = None
        self.last_used: Endpoint | None = None
        self.users: list[int] = []
        self.exit_code = EXIT_OK
        self.stop_reason = ""
        self._consecutive_errors = 0
        self._open_outage: dict | None = None
        self._split_brain_seen: frozenset = frozenset()
        self._stale_seen: tuple | None = None
        self._monitor_round = 0
        self._ops = list(OPS)
        self._weights = [cfg.weights.get(op, 0.0) for op in OPS]
        self._started_at: datetime | None = None
        self._started_mono = 0.0
        self.final_summary: dict | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._started_at = utc_now()
        self._started_mono = time.monotonic()
        self.journal.event(
            "start",
            at=format_ts(self._started_at),
            version=__version__,
            pid=os.getpid(),
            host=socket.gethostname(),
            password_source=password_source(self.cfg.passfile),
            config=self.cfg.public(),
        )
        if self.cfg.probe_interval > 0 and len(self.cfg.endpoints) > 1:
            self.monitor = Monitor(self.cfg)
            self.monitor.start()
        try:
            self._loop(self._started_mono + self.cfg.duration)
        finally:
            self._shutdown()
        return self.exit_code

    def _stop(self, reason: str, code: int = EXIT_OK) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            self.exit_code = code

    def _shutdown(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.prober.close()
        self._close_conn()
        self.kafka.close()
        self.redis.close()
        if not self.stop_reason:
            self._stop("error", EXIT_FAILED)
        if self.stats.connects == 0 and self.exit_code == EXIT_OK:
            self.exit_code = EXIT_NO_PRIMARY
        if self._open_outage is not None:
            self._close_outage(None, None)
        self.final_summary = self.summary()
        self.journal.event("stop", reason=self.stop_reason, exit_code=self.exit_code, summary=self.final_summary)
        self.journal.close()

    # -- main loop -----------------------------------------------------------------------------------------------
    def _loop(self, deadline: float) -> None:
        interval = 1.0 / self.cfg.rate
        next_at = time.monotonic()
        while True:
            if self.stop_event.is_set():
                self._stop(f"signal {self.stop_signal}" if self.stop_signal else "stopped")
                return
            now = time.monotonic()
            if now >= deadline:
                self._stop("duration")
                return
            if self.cfg.max_ops is not None and self.stats.attempted >= self.cfg.max_ops:
                self._stop("max_ops")
                return
            if self.conn is None:
                if not self._connect(deadline) and self.stop_reason:
                    return  # split brain with --on-split-brain=stop; otherwise the checks above end the loop
                next_at = time.monotonic()
                continue
            if self._check_monitor():
                return
            if next_at > now:
                self.stop_event.wait(min(next_at - now, deadline - now))
                continue
            if now - next_at > 1.0:
                next_at = now  # after a stall, carry on at the rate instead of bursting to catch up
            next_at += interval
            self._one_op()
            if self.stop_reason:
                return

    def _connect(self, deadline: float) -> bool:
        """Find the writable primary and connect; retries every retry_interval until the deadline."""
        attempts = 0
        reported_none = False
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            attempts += 1
            probes = self.prober.probe_all(grace=min(0.2, self.cfg.retry_interval))
            writable = [p.endpoint for p in probes if p.state == "writable"]
            if self._on_writable_set(writable):
                return False
            target = None
            if writable:
                target = self.last_used if self.last_used in writable else writable[0]
                try:
                    self._open(target)
                except psycopg2.Error as exc:
                    self._failure(target, exc, op=None, request_id=None, phase="connect", outcome=None)
                    target = None
                    self._consecutive_errors += 1  # writable but unusable (schema missing, no privilege, ...)
                    if self._consecutive_errors >= self.cfg.max_consecutive_errors:
                        self._stop("consecutive_errors", EXIT_ERRORS)
                        return False
            if target is not None:
                self._connected(target, attempts)
                return True
            if not reported_none:
                reported_none = True
                self.journal.event("no_primary", probes=[p.as_dict() for p in probes])
            self.stop_event.wait(max(0.0, min(self.cfg.retry_interval, deadline - time.monotonic())))
        return False

    def _open(self, endpoint: Endpoint) -> None:
        conn = psycopg2.connect(**connect_kwargs(self.cfg, endpoint, "drlab-generator"))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM users WHERE status = 'active' ORDER BY id DESC LIMIT %s", (USER_CACHE_SIZE // 10,)
                )
                self.users = [row[0] for row in cur.fetchall()]
            conn.commit()
        except psycopg2.Error:
            conn.close()
            raise
        self.conn = conn
        self.current = endpoint

    def _connected(self, endpoint: Endpoint, attempts: int) -> None:
        previous = self.last_used
        self.last_used = endpoint
        self.stats.connects += 1
        fields = {"region": endpoint.name, "endpoint": endpoint.address, "attempts": attempts}
        if previous is None:
            self.journal.event("connect", **fields)
        else:
            self.stats.reconnects += 1
            if self._open_outage is not None:
                since = (utc_now() - self._open_outage["failed_at"]).total_seconds()
                fields["since_failure_s"] = round(since, 6)
            self.journal.event("reconnect", from_region=previous.name, **fields)
        self._log(f"writing to {endpoint.name} ({endpoint.address})")

    def _close_conn(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None
        self.current = None

    def _check_monitor(self) -> bool:
        if self.monitor is None:
            return False
        round_number, probes = self.monitor.latest()
        if round_number == self._monitor_round:
            return False
        self._monitor_round = round_number
        writable = [p.endpoint for p in probes if p.state == "writable"]
        if self._on_writable_set(writable):
            return True
        return self._check_stale_session(probes, writable)

    def _check_stale_session(self, probes: list[Probe], writable: list[Endpoint]) -> bool:
        """The other half of a split brain: our session still writes to a server that new sessions no longer
        reach as a primary (fenced by pg_hba, or a partition), while another server is a writable primary.
        Journalled as ``split_brain`` with ``kind: stale_session``; the same policy applies."""
        current = self.current
        mine = next((p for p in probes if p.endpoint == current), None)
        others = [e for e in writable if e != current]
        if current is None or mine is None or mine.state == "writable" or not others:
            self._stale_seen = None
            return False
        key = (current.name, mine.state, frozenset(e.name for e in others))
        if key != self._stale_seen:
            self._stale_seen = key
            self.stats.split_brain += 1
            self.journal.event(
                "split_brain",
                kind="stale_session",
                current=current.name,
                current_state=mine.state,
                primaries=[{"region": e.name, "endpoint": e.address} for e in others],
                policy=self.cfg.on_split_brain,
            )
            self._log(
                f"SPLIT BRAIN: still writing to {current.name} (probes now say {mine.state}) while "
                f"{', '.join(e.name for e in others)} is writable; policy {self.cfg.on_split_brain}"
            )
        if self.cfg.on_split_brain == "stop":
            self._stop("split_brain", EXIT_SPLIT_BRAIN)
            return True
        return False

    def _on_writable_set(self, writable: list[Endpoint]) -> bool:
        """Journal a split brain once per distinct set of writable primaries; True when the run must stop."""
        key = frozenset(e.name for e in writable)
        if len(writable) > 1:
            if key != self._split_brain_seen:
                self._split_brain_seen = key
                self.stats.split_brain += 1
                using = self.current or self.last_used
                self.journal.event(
                    "split_brain",
                    kind="writable_primaries",
                    primaries=[{"region": e.name, "endpoint": e.address} for e in writable],
                    current=using.name if using else None,
                    policy=self.cfg.on_split_brain,
                )
                self._log(f"SPLIT BRAIN: writable primaries {sorted(key)}; policy {self.cfg.on_split_brain}")
            if self.cfg.on_split_brain == "stop":
                self._stop("split_brain", EXIT_SPLIT_BRAIN)
                return True
        elif self._split_brain_seen:
            self._split_brain_seen = frozenset()
            self.journal.event("split_brain_resolved", primaries=[e.name for e in writable])
        return False

    # -- one operation -------------------------------------------------------------------------------------------
    def _one_op(self) -> None:
        op = self.rng.choices(self._ops, weights=self._weights)[0]
        request_id = str(uuid.uuid4())
        endpoint = self.current
        self.stats.attempted += 1
        phase = "statement"
        started = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                op, fields = getattr(self, f"_op_{op}")(cur, request_id)
            phase = "commit"
            self.conn.commit()
        except psycopg2.Error as exc:
            self._op_error(exc, op, request_id, phase, endpoint)
            return
        acked_at = utc_now()
        latency_ms = (time.monotonic() - started) * 1000
        self._consecutive_errors = 0
        if self.conn.notices:
            if any("synchronous replication" in notice for notice in self.conn.notices):
                fields["sync_rep_cancelled"] = True
            del self.conn.notices[:]
        if op == "revoke":
            fields.update(self._revoke_side_effects(endpoint, request_id, fields))
        if op == "signup":
            self._remember_user(fields["user_id"])
        record = self.journal.ack(
            op=op,
            request_id=request_id,
            region=endpoint.name,
            endpoint=endpoint.address,
            acked_at=format_ts(acked_at),
            latency_ms=round(latency_ms, 3),
            **fields,
        )
        self.stats.acked[op] += 1
        self.stats.regions[endpoint.name] += 1
        if self._open_outage is not None:
            self._close_outage(record, endpoint)

    def _details(self, **extra) -> psycopg2.extras.Json:
        return psycopg2.extras.Json({"generator": "drlab", "run_id": self.journal.run_id, **extra})

    def _client_fields(self) -> tuple[str, str]:
        return f"198.51.100.{self.rng.randrange(1, 255)}", f"drlab-generator/{__version__}"

    _AUDIT_SQL = (
        "INSERT INTO audit_logs (user_id, event_type, request_id, region, ip_address, user_agent, details) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "RETURNING pg_current_wal_insert_lsn()::text, pg_current_xact_id()::text"
    )

    def _audit(self, cur, user_id: int | None, op: str, request_id: str, **details) -> dict:
        ip, agent = self._client_fields()
        cur.execute(
            self._AUDIT_SQL,
            (
                user_id,
                AUDIT_EVENT[op],
                request_id,
                self.current.name,
                ip,
                agent,
                self._details(**details),
            ),
        )
        lsn, xid = cur.fetchone()
        return {"lsn": lsn, "xid": int(xid)}

    def _op_signup(self, cur, request_id: str) -> tuple[str, dict]:
        platform = self.rng.choice(PLATFORMS)
        cur.execute(
            "INSERT INTO users (email, password_hash, display_name) VALUES (%s, %s, %s) RETURNING id",
            (
                f"user-{request_id}@drlab.example",
                f"$argon2id$v=19$m=65536,t=3,p=4$drlab${uuid.uuid4().hex}",  # a placeholder, not a real hash
                f"drlab {request_id[:8]}",
            ),
        )
        user_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO platform_accounts (user_id, platform, external_id) VALUES (%s, %s, %s)",
            (user_id, platform, request_id),
        )
        fields = self._audit(cur, user_id, "signup", request_id, platform=platform)
        return "signup", {"user_id": user_id, **fields}

    def _op_login(self, cur, request_id: str) -> tuple[str, dict]:
        for _ in range(3):
            user_id = self._pick_user()
            if user_id is None:
                break
            cur.execute(
                "UPDATE users SET last_login_at = now(), updated_at = now() "
                "WHERE id = %s AND status = 'active' RETURNING id",
                (user_id,),
            )
            if cur.fetchone() is not None:
                fields = self._audit(cur, user_id, "login", request_id)
                return "login", {"user_id": user_id, **fields}
            self._forget_user(user_id)  # gone from this region (lost in a failover, or deleted)
        return self._op_signup(cur, request_id)  # nobody to log in yet: a new user signs up instead

    def _op_revoke(self, cur, request_id: str) -> tuple[str, dict]:
        jti = str(uuid.uuid4())
        cur.execute(
            "INSERT INTO token_blacklist (jti, user_id, reason, expires_at) "
            "VALUES (%s, (SELECT id FROM users WHERE id = %s), 'logout', now() + make_interval(secs => %s)) "
            "RETURNING user_id, revoked_at, expires_at",
            (jti, self._pick_user(), self.cfg.redis_ttl),
        )
        user_id, revoked_at, expires_at = cur.fetchone()
        fields = self._audit(cur, user_id, "revoke", request_id, jti=jti)
        return "revoke", {
            "user_id": user_id,
            "jti": jti,
            "revoked_at": format_ts(revoked_at),
            "expires_at": format_ts(expires_at),
            **fields,
        }

    def _revoke_side_effects(self, endpoint: Endpoint, request_id: str, fields: dict) -> dict:
        event = {
            "jti": fields["jti"],
            "user_id": fields["user_id"],
            "request_id": request_id,
            "revoked_at": fields["revoked_at"],
            "expires_at": fields["expires_at"],
            "reason": "logout",
            "region": endpoint.name,
        }
        out = self.kafka.publish(endpoint.name, fields["jti"], event)
        out.update(self.redis.set_revoked(endpoint.name, fields["jti"], event))
        for side, key in ((self.stats.kafka, "kafka_acked"), (self.stats.redis, "redis_set")):
            if out[key] is not None:
                side["ok" if out[key] else "failed"] += 1
        return out

    def _pick_user(self) -> int | None:
        return self.rng.choice(self.users) if self.users else None

    def _remember_user(self, user_id: int) -> None:
        if len(self.users) < USER_CACHE_SIZE:
            self.users.append(user_id)
        else:
            self.users[self.rng.randrange(USER_CACHE_SIZE)] = user_id

    def _forget_user(self, user_id: int) -> None:
        try:
            self.users.remove(user_id)
        except ValueError:
            pass

    # -- failures ------------------------------------------------------------------------------------------------
    def _op_error(self, exc: psycopg2.Error, op: str, request_id: str, phase: str, endpoint: Endpoint) -> None:
        failed_at = utc_now()
        connection_lost = self.conn.closed != 0 or isinstance(exc, psycopg2.InterfaceError)
        sqlstate = getattr(exc, "pgcode", None)
        rediscover = connection_lost or (sqlstate in REDISCOVER_SQLSTATES) or (sqlstate or "").startswith("08")
        if phase == "commit" and connection_lost:
            # COMMIT was sent and no answer came back: it may or may not have happened. Never claim it.
            outcome = "unknown"
            self.stats.unknown += 1
            self.journal.unknown(
                op=op,
                request_id=request_id,
                region=endpoint.name,
                endpoint=endpoint.address,
                at=format_ts(failed_at),
                error_class=error_class(exc),
            )
        else:
            outcome = "not_committed"
            self.stats.not_committed += 1
        if not connection_lost:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                rediscover = True
        self._failure(
            endpoint, exc, op=op, request_id=request_id, phase=phase, outcome=outcome, rediscover=rediscover,
            failed_at=failed_at,
        )
        if rediscover:
            self._close_conn()
            self._consecutive_errors = 0
        else:
            self._consecutive_errors += 1
            if self._consecutive_errors >= self.cfg.max_consecutive_errors:
                self._log(f"stopping: {self._consecutive_errors} consecutive errors, last {error_class(exc)}")
                self._stop("consecutive_errors", EXIT_ERRORS)

    def _failure(
        self, endpoint, exc, *, op, request_id, phase, outcome, rediscover: bool = True, failed_at=None
    ) -> None:
        self.stats.failures += 1
        failed_at = failed_at or utc_now()
        fields = {
            "at": format_ts(failed_at),
            "region": endpoint.name,
            "endpoint": endpoint.address,
            "phase": phase,
            "error_class": error_class(exc),
            "sqlstate": getattr(exc, "pgcode", None),
            "message": error_message(exc),
            "rediscover": rediscover,
        }
        if op is not None:
            fields.update(op=op, request_id=request_id, outcome=outcome)
        self.journal.event("failure", **fields)
        if rediscover and self._open_outage is None:
            self._open_outage = {"failed_at": failed_at, "region": endpoint.name, "error_class": error_class(exc)}
        self._log(f"failure on {endpoint.name} during {phase}: {error_class(exc)}: {error_message(exc, 120)}")

    def _close_outage(self, ack: dict | None, endpoint: Endpoint | None) -> None:
        outage, self._open_outage = self._open_outage, None
        seconds = None
        if ack is not None:
            seconds = (datetime.fromisoformat(ack["acked_at"]) - outage["failed_at"]).total_seconds()
        if len(self.stats.outages) < 1000:
            self.stats.outages.append(
                {
                    "failed_at": format_ts(outage["failed_at"]),
                    "failed_region": outage["region"],
                    "error_class": outage["error_class"],
                    "recovered_region": endpoint.name if endpoint else None,
                    "seconds": round(seconds, 6) if seconds is not None else None,
                }
            )

    # -- reporting -----------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        elapsed = time.monotonic() - self._started_mono
        acked_total = sum(self.stats.acked.values())
        return {
            "run_id": self.journal.run_id,
            "journal": self.journal.path,
            "reason": self.stop_reason,
            "exit_code": self.exit_code,
            "elapsed_s": round(elapsed, 3),
            "target_rate": self.cfg.rate,
            "acked_per_s": round(acked_total / elapsed, 2) if elapsed > 0 else 0.0,
            "attempted": self.stats.attempted,
            "acked": {"total": acked_total, **{op: self.stats.acked.get(op, 0) for op in OPS}},
            "not_committed": self.stats.not_committed,
            "unknown": self.stats.unknown,
            "failures": self.stats.failures,
            "connects": self.stats.connects,
            "reconnects": self.stats.reconnects,
            "split_brain": self.stats.split_brain,
            "regions": dict(self.stats.regions),
            "kafka": dict(self.stats.kafka),
            "redis": dict(self.stats.redis),
            "outages": list(self.stats.outages),
        }

    @staticmethod
    def _log(message: str) -> None:
        print(f"{format_ts(utc_now())} drlab.generator: {message}", file=sys.stderr, flush=True)


def render_summary(summary: dict) -> str:
    acked = summary["acked"]
    lines = [
        (
            f"drlab generator run {summary['run_id']}: stopped ({summary['reason']}, exit {summary['exit_code']}) "
            f"after {summary['elapsed_s']:.1f} s"
        ),
        (
            f"  acked {acked['total']} writes, {summary['acked_per_s']:.1f}/s (target {summary['target_rate']:g}/s): "
            + ", ".join(f"{op} {acked[op]}" for op in OPS)
        ),
        (
            f"  attempted {summary['attempted']}, not committed {summary['not_committed']}, "
            f"unknown {summary['unknown']}, failures {summary['failures']}, reconnects {summary['reconnects']}, "
            f"split brain {summary['split_brain']}"
        ),
        "  regions: " + (", ".join(f"{k} {v}" for k, v in summary["regions"].items()) or "none"),
    ]
    if summary["kafka"] or summary["redis"]:
        lines.append(
            f"  kafka: {summary['kafka'].get('ok', 0)} acked, {summary['kafka'].get('failed', 0)} failed; "
            f"redis: {summary['redis'].get('ok', 0)} set, {summary['redis'].get('failed', 0)} failed"
        )
    for outage in summary["outages"]:
        took = f"{outage['seconds']:.3f} s" if outage["seconds"] is not None else "not recovered"
        lines.append(
            f"  outage at {outage['failed_at']}: {outage['failed_region']} ({outage['error_class']}) -> "
            f"{outage['recovered_region'] or '-'}: {took}"
        )
    lines.append(f"  journal: {summary['journal']}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m drlab.generator",
        description="Write authentication-service traffic to whichever region serves and journal every "
        "acknowledged write. The PostgreSQL password comes from a pgpass file or PGPASSWORD, never the "
        "command line.",
    )
    parser.add_argument("--endpoint", action="append", default=[], metavar="REGION=HOST:PORT",
                        help="a candidate PostgreSQL server, one per region, in order of preference (repeat)")
    parser.add_argument("--lab", action="store_true",
                        help="fill in the local lab's endpoints, Kafka, Redis and .lab/pgpass where not given")
    parser.add_argument("--user", default="auth_app", help="database user (default: %(default)s)")
    parser.add_argument("--dbname", default="authdb", help="database (default: %(default)s)")
    parser.add_argument("--pgpassfile", metavar="PATH", help="pgpass file (default: PGPASSFILE, then ~/.pgpass)")
    parser.add_argument("--journal", required=True, metavar="PATH", help="journal file (appended to)")
    parser.add_argument("--rate", type=float, default=50.0, help="target writes/s (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="stop after this many seconds (default: %(default)s); always bounded")
    parser.add_argument("--max-ops", type=int, help="stop after this many attempted writes")
    parser.add_argument("--weights", default="signup=2,login=6,revoke=2", metavar="signup=N,login=N,revoke=N",
                        help="operation mix; omitted operations get 0 (default: %(default)s)")
    parser.add_argument("--kafka", action="append", default=[], metavar="REGION=HOST:PORT[,HOST:PORT]",
                        help="Kafka bootstrap servers of a region (repeat)")
    parser.add_argument("--kafka-topic", default=DEFAULT_TOPIC, help="(default: %(default)s)")
    parser.add_argument("--kafka-timeout", type=float, default=2.0,
                        help="seconds to wait for a publish ack, also the Redis timeout (default: %(default)s)")
    parser.add_argument("--redis", action="append", default=[], metavar="REGION=redis://HOST:PORT/DB",
                        help="Redis of a region (repeat); password via REDISCLI_AUTH")
    parser.add_argument("--redis-ttl", type=int, default=3600, help="expiry of revoked:<jti> keys, s (default: 3600)")
    parser.add_argument("--connect-timeout", type=int, default=2, help="seconds (default: %(default)s)")
    parser.add_argument("--op-timeout", type=float, default=5.0,
                        help="statement timeout and TCP user timeout, seconds (default: %(default)s)")
    parser.add_argument("--retry-interval", type=float, default=0.2,
                        help="pause between discovery rounds while no primary is found (default: %(default)s)")
    parser.add_argument("--probe-interval", type=float, default=1.0,
                        help="split-brain probe period, seconds; 0 disables (default: %(default)s)")
    parser.add_argument("--on-split-brain", choices=("keep", "stop"), default="keep",
                        help="keep writing to the primary in use, or stop (exit 3) (default: %(default)s)")
    parser.add_argument("--fsync-every", type=int, default=100, help="fsync the journal every N lines (default: 100)")
    parser.add_argument("--max-consecutive-errors", type=int, default=20,
                        help="stop (exit 4) after this many non-connection errors in a row (default: 20)")
    parser.add_argument("--seed", type=int, help="random seed for the operation mix")
    parser.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON here")
    parser.add_argument("--version", action="version", version=f"drlab {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    endpoints = [parse_endpoint(text) for text in args.endpoint]
    kafka = dict(parse_kafka(text) for text in args.kafka)
    redis_urls = dict(parse_redis(text) for text in args.redis)
    passfile = args.pgpassfile
    if args.lab:
        if not endpoints:
            endpoints = [Endpoint(n, "127.0.0.1", p) for n, p in zip(LAB_REGIONS, LAB_PG_PORTS, strict=True)]
        if not kafka:
            kafka = {n: [f"127.0.0.1:{p}"] for n, p in zip(LAB_REGIONS, LAB_KAFKA_PORTS, strict=True)}
        if not redis_urls:
            redis_urls = {n: f"redis://127.0.0.1:{p}/0" for n, p in zip(LAB_REGIONS, LAB_REDIS_PORTS, strict=True)}
        if not passfile and not os.environ.get("PGPASSFILE") and not os.environ.get("PGPASSWORD"):
            passfile = LAB_PGPASS
    if passfile:
        if not os.path.isfile(passfile):
            raise ConfigError(f"pgpass file {passfile} does not exist")
        passfile = os.path.abspath(passfile)
    cfg = Config(
        endpoints=endpoints,
        journal=args.journal,
        user=args.user,
        dbname=args.dbname,
        passfile=passfile,
        rate=args.rate,
        duration=args.duration,
        max_ops=args.max_ops,
        weights=parse_weights(args.weights),
        kafka=kafka,
        redis=redis_urls,
        kafka_topic=args.kafka_topic,
        kafka_timeout=args.kafka_timeout,
        redis_ttl=args.redis_ttl,
        connect_timeout=args.connect_timeout,
        op_timeout=args.op_timeout,
        retry_interval=args.retry_interval,
        probe_interval=args.probe_interval,
        on_split_brain=args.on_split_brain,
        fsync_every=args.fsync_every,
        max_consecutive_errors=args.max_consecutive_errors,
        seed=args.seed,
        summary_json=args.summary_json,
    )
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        journal = JournalWriter(cfg.journal, fsync_every=cfg.fsync_every)
    except JournalError as exc:
        print(f"drlab.generator: {exc}", file=sys.stderr)
        return EXIT_FAILED

    stop_event = threading.Event()
    try:
        generator = Generator(cfg, journal, stop_event)
    except ConfigError as exc:
        journal.close()
        print(f"drlab.generator: {exc}", file=sys.stderr)
        return EXIT_FAILED

    def on_signal(signum, _frame):
        generator.stop_signal = signal.Signals(signum).name
        stop_event.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = generator.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = generator.final_summary or generator.summary()
    print(render_summary(summary), flush=True)
    if cfg.summary_json:
        with open(cfg.summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
