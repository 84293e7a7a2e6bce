"""Reusable pieces for the backup, WAL-archiving and restore benchmarks.

Everything lives under one directory (``/var/tmp/immersiverse-dr-bench``, or ``$IMMERSIVERSE_DR_BENCH_DIR``):

    pg/data, pg/sock, pg/READY   a PostgreSQL 15 cluster run as the ``postgres`` OS user, with pgbench data built
                                 once (READY is the marker: scale, PostgreSQL version) and reused by later runs
    tls/                         a self-signed certificate for 127.0.0.1 (the S3 endpoint speaks HTTPS only:
                                 pgBackRest 2.45 has no plain-HTTP S3 client)
    s3/                          moto's S3 server, a fresh, empty store per run (the default); with --s3 rgw the
                                 running lab's Ceph RADOS Gateway instead (RgwServer: a fresh bucket per run, the
                                 tls/ certificate copied to the repository's .lab/ceph/bench-tls/ for it)
    pgbackrest/                  pgBackRest's configuration, posix repository, logs, locks and spool
    ours/                        the collection's local repository and its S3 staging directory

Every process a run starts is stopped by pid when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM,
SIGHUP); a run killed with SIGKILL leaves pid files and processes behind, which the next run finds (their command
lines name this directory) and stops before it starts its own. Only 127.0.0.1 and free ports are used.

Plain standard library plus the virtualenv's cryptography (for the certificate); the callers import boto3 and the
collection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("IMMERSIVERSE_DR_BENCH_DIR", "/var/tmp/immersiverse-dr-bench"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBACKREST = "/usr/bin/pgbackrest"
PG_OS_USER = "postgres"
STANZA = "bench"
S3 = {"bucket": "bench", "region": "us-east-1", "access_key": "bench-access-key", "secret_key": "bench-secret-key"}
# --s3 rgw: the lab's Ceph container (scripts/lab.sh), its /export directory on the controller, and the benchmarks'
# gateway there (lab-ceph bench-gateway: realm, zonegroup "bench", zone "bench-a", HTTPS on 9443 published here)
LAB_CEPH = "dr-lab-ceph"
LAB_CEPH_DIR = REPO / ".lab" / "ceph"
RGW_PORT = 49443
RGW_REALM = "bench"
LAB_NOT_UP = "the lab is not up: run scripts/lab.sh up (make lab-up) first"
S3_KINDS = ("moto", "rgw")
# how the result files describe the endpoint: "what" and the note on reading the S3 figures
S3_WHAT = {"moto": "moto's server over HTTPS on 127.0.0.1",
           "rgw": "the running lab's Ceph RADOS Gateway over HTTPS on 127.0.0.1:49443"}
RGW_NOTE = ("S3 is the running lab's Ceph RADOS Gateway (lab-ceph bench-gateway on dr-lab-ceph: one radosgw, one "
            "BlueStore OSD on a sparse file, in a container on this same machine) over HTTPS with the bench's "
            "self-signed certificate that both tools verify, a fresh unversioned bucket per run; a real S3 server, "
            "but its cluster shares the machine's cores with the benchmark, so the S3 figures compare the tools "
            "against this endpoint, not against AWS S3")


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


class BenchError(Exception):
    pass


# -- processes ---------------------------------------------------------------------------------------------------------
def _term_as_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `with`/`finally` cleanup runs."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _term_as_interrupt)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1].startswith("Z")


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM one process, SIGKILL it if it is still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
                if done:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.05)


def reap_leftovers(root: Path = ROOT) -> list[int]:
    """Processes left by a killed earlier run: any process whose command line names ``root`` (moto's certificate,
    pgBackRest's --config, pg_basebackup's target), except this process and its ancestors. PostgreSQL is stopped
    through its data directory first (Cluster.stop_leftover)."""
    keep = {os.getpid()}
    pid = os.getpid()
    for _ in range(64):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid <= 1:
            break
        keep.add(pid)
    needle = str(root) + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in keep and needle in _cmdline(int(entry.name)):
            found.append(int(entry.name))
    for pid in found:
        log(f"stopping a leftover process of an earlier run: {pid} {_cmdline(pid)[:120]}")
        stop_pid(pid, grace=5.0)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg_user(argv: list[str]) -> list[str]:
    """argv run as the postgres OS user (runuser when root; as is when already postgres)."""
    if pwd.getpwuid(os.getuid()).pw_name == PG_OS_USER:
        return [str(a) for a in argv]
    if os.getuid() != 0:
        raise BenchError("the benchmark runs PostgreSQL and pgBackRest as the postgres user: run it as root "
                         "(or as postgres)")
    return ["runuser", "-u", PG_OS_USER, "--", *[str(a) for a in argv]]


def run(argv: list[str], timeout: float, check: bool = True, env: dict | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a command in its own process group, bounded by ``timeout``; on timeout or interruption the whole
    group is stopped (runuser does not pass SIGKILL on to pgBackRest)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])} ... failed (exit {proc.returncode}):\n{(out or '')[-2000:]}"
                         f"{(err or '')[-2000:]}")
    if not quiet and proc.returncode != 0:
        log(f"{argv[0]} exit {proc.returncode}: {(err or out or '')[-500:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def chown_pg(*paths: Path) -> None:
    pw = pwd.getpwnam(PG_OS_USER)
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def pg_dir(path: Path, mode: int = 0o700) -> Path:
    """A directory owned by the postgres user (parents root-owned and traversable)."""
    path.mkdir(parents=True, exist_ok=True)
    chown_pg(path)
    path.chmod(mode)
    return path


# -- PostgreSQL --------------------------------------------------------------------------------------------------------
class Cluster:
    """A throwaway PostgreSQL 15 cluster under ROOT/pg with pgbench data of a given scale, built once.

    postgresql.conf includes ``bench.conf`` (port, WAL and archiving settings), which each start rewrites, so one
    data directory serves the build (wal_level minimal: the load writes little WAL) and the runs (replica,
    archive_mode on, the archive_command the caller passes)."""

    def __init__(self, scale: int, root: Path = ROOT):
        self.scale = scale
        self.dir = root / "pg"
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.marker = self.dir / "READY"
        self.logfile = self.dir / "postgresql.log"
        self.port: int | None = None

    # connection parameters for the collection's engine
    @property
    def conn(self) -> dict:
        return {"login_unix_socket": str(self.sock), "login_port": self.port, "login_user": "postgres"}

    def _pg_ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run(as_pg_user([PG_BIN / "pg_ctl", "-D", self.data, *args]), timeout=timeout, check=check,
                   quiet=True)

    def stop_leftover(self) -> None:
        """A cluster left running by a killed run: stop it (fast, then immediate, then its postmaster's pid)."""
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and _alive(pid) and str(self.data) in _cmdline(pid):
            log(f"stopping a PostgreSQL left running by an earlier run (pid {pid})")
            if self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30", check=False).returncode != 0:
                if self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", check=False).returncode != 0:
                    stop_pid(pid)

    def ready(self) -> dict | None:
        try:
            info = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        if info.get("scale") != self.scale or not (self.data / "PG_VERSION").exists():
            return None
        return info

    def ensure_built(self, timeout: float = 1800) -> dict:
        """Build the cluster if the marker is missing or for another scale; leaves it stopped. Returns the
        marker's content."""
        self.stop_leftover()
        info = self.ready()
        if info is None:
            self._build(timeout)
            info = self.ready()
        else:
            log(f"reusing the pgbench cluster built {info['built']} (scale {info['scale']}, "
                f"{info['database_bytes'] / 1e9:.2f} GB)")
        return info

    def ensure(self, settings: dict, timeout: float = 1800) -> dict:
        """ensure_built(), then start with ``settings``."""
        info = self.ensure_built(timeout)
        self.start(settings)
        return info

    def _build(self, timeout: float) -> None:
        log(f"building the pgbench cluster (scale {self.scale}) in {self.dir}: once, reused by later runs")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        pg_dir(self.sock, 0o755)
        pg_dir(self.data)
        run(as_pg_user([PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                        "--auth-host=reject", "--data-checksums", "-E", "UTF8", "--locale=C"]), timeout=180)
        with open(self.data / "postgresql.conf", "a", encoding="ascii") as f:
            f.write(f"\n# immersiverse.dr bench\nlisten_addresses = ''\nunix_socket_directories = '{self.sock}'\n"
                    "shared_buffers = 256MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n"
                    "include_if_exists = 'bench.conf'\n")
        self.start({"wal_level": "minimal", "max_wal_senders": 0, "archive_mode": "off"})
        t0 = time.monotonic()
        run(as_pg_user([PG_BIN / "pgbench", "-h", self.sock, "-p", self.port, "-U", "postgres", "-i", "-q",
                        "-s", self.scale, "-I", "dtGvp", "postgres"]), timeout=timeout)
        run(as_pg_user([PG_BIN / "psql", "-h", self.sock, "-p", self.port, "-U", "postgres", "-X", "-q", "-c",
                        "VACUUM (FREEZE, ANALYZE)", "-c", "CHECKPOINT", "postgres"]), timeout=timeout)
        size = int(self.sql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        self.stop()
        self.port = None
        info = {"scale": self.scale, "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "build_seconds": round(time.monotonic() - t0, 1), "database_bytes": size,
                "postgresql": pg_version()}
        self.marker.write_text(json.dumps(info) + "\n")
        log(f"built in {info['build_seconds']} s: {size / 1e9:.2f} GB")

    def start(self, settings: dict, port: int | None = None) -> None:
        """Start with ``settings`` (bench.conf) on ``port``, or the port set beforehand, or a free one."""
        self.port = port or self.port or free_port()
        lines = [f"port = {self.port}"]
        for k, v in settings.items():
            quoted = str(v).replace("'", "''")
            lines.append(f"{k} = '{quoted}'")
        conf = self.data / "bench.conf"
        conf.write_text("\n".join(lines) + "\n")
        chown_pg(conf)
        if not self.logfile.exists():
            self.logfile.touch()
        chown_pg(self.logfile)
        self._pg_ctl("start", "-w", "-t", "120", "-l", str(self.logfile))

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            if self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", check=False).returncode != 0:
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", check=False)

    def sql(self, query: str, timeout: float = 120) -> str:
        return run(as_pg_user([PG_BIN / "psql", "-h", self.sock, "-p", self.port, "-U", "postgres", "-X", "-A",
                               "-t", "-c", query, "postgres"]), timeout=timeout).stdout.strip()


def pg_version() -> str:
    return run([str(PG_BIN / "postgres"), "--version"], timeout=30).stdout.strip()


# -- TLS and the S3 endpoint -----------------------------------------------------------------------------------------
def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made once; it is its own CA bundle. The address is in the subject alternative
    names twice: as an IP address (what Python's ssl checks) and as a DNS name (pgBackRest 2.45 compares the
    endpoint's name with DNS names and the common name only)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
           .not_valid_after(now + dt.timedelta(days=3650))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                       x509.DNSName("127.0.0.1")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pkey, hashes.SHA256()))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    cert.chmod(0o644)
    directory.chmod(0o755)
    return cert, key


class S3Endpoint:
    """What the benchmarks use of an S3 endpoint, whichever it is (moto's server or the lab's RGW): a boto3 client,
    the collection's repository option, the bytes stored under a prefix. Subclasses set ``kind``, ``port``,
    ``cert`` (the bench certificate, the CA bundle every client verifies against), ``bucket``, ``region``,
    ``access_key`` and ``secret_key``, and start and stop the server."""

    kind = ""

    def __init__(self) -> None:
        self.port: int | None = None
        self.cert: Path | None = None
        self.bucket = self.region = self.access_key = self.secret_key = ""

    @property
    def endpoint_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            verify=str(self.cert), config=botocore.config.Config(s3={"addressing_style": "path"}))

    def repository_spec(self, prefix: str) -> dict:
        """The collection's repository option for this endpoint (TLS verified against the bench certificate)."""
        return {"type": "s3", "bucket": self.bucket, "prefix": prefix, "endpoint_url": self.endpoint_url,
                "region": self.region, "access_key": self.access_key, "secret_key": self.secret_key,
                "ca_bundle": str(self.cert)}

    def stored_bytes(self, prefix: str) -> int:
        total = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class S3Server(S3Endpoint):
    """moto's S3 server over HTTPS on a free 127.0.0.1 port, an empty store each start."""

    kind = "moto"

    def __init__(self, root: Path = ROOT):
        super().__init__()
        self.dir = root / "s3"
        self.tls = root / "tls"
        self.pidfile = self.dir / "moto.pid"
        self.proc: subprocess.Popen | None = None
        self.bucket, self.region = S3["bucket"], S3["region"]
        self.access_key, self.secret_key = S3["access_key"], S3["secret_key"]

    def start(self) -> None:
        self._stop_stale()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed_cert(self.tls)
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise BenchError("moto is not importable: run the benchmark with .venv/bin/python after "
                             "scripts/setup.sh") from None
        self.port = free_port()
        logf = open(self.dir / "moto.log", "wb")  # noqa: SIM115 - closed with the process
        # TMPDIR: moto spools object bodies above a few MB to temporary files; keep them in the bench directory
        env = {**os.environ, "TMPDIR": str(self.dir)}
        # moto's own server (moto_server), through serve_moto_tls() below: see there why
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "moto-tls", "-H", "127.0.0.1",
                                      "-p", str(self.port), "-c", str(self.cert), "-k", str(key)],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                     start_new_session=True)
        logf.close()
        self.pidfile.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 30
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.cert))
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"moto_server exited ({self.proc.returncode}): "
                                 f"{(self.dir / 'moto.log').read_text()[-1500:]}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=2, context=ctx).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("moto_server did not answer over HTTPS within 30 s") from None
                time.sleep(0.2)
        self.client().create_bucket(Bucket=self.bucket)

    def _stop_stale(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _alive(pid) and "moto-tls" in _cmdline(pid) and str(self.tls) in _cmdline(pid):
            log(f"stopping a moto_server left running by an earlier run (pid {pid})")
            stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid)
        self.proc = None
        self.pidfile.unlink(missing_ok=True)


def lab_ceph(argv: list[str], timeout: float, what: str, hint: str = "") -> subprocess.CompletedProcess:
    """``argv`` in the lab's Ceph container (podman exec). A failure says what failed with its stderr, never its
    stdout, which may hold keys (radosgw-admin user info)."""
    shown = f"podman exec {LAB_CEPH} {' '.join(argv)}"
    try:
        proc = run(["podman", "exec", LAB_CEPH, *argv], timeout=timeout, check=False, quiet=True)
    except OSError as exc:
        raise BenchError(f"could not run podman ({exc}): {LAB_NOT_UP}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"could not {what}: `{shown}` did not return within {timeout:.0f} s{hint}") from None
    if proc.returncode != 0:
        raise BenchError(f"could not {what}: `{shown}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or '').strip()[-1500:]}{hint}")
    return proc


class RgwServer(S3Endpoint):
    """The running lab's Ceph RADOS Gateway as the bench endpoint (--s3 rgw): a real S3 server, the software the
    lab's regions run, where moto is a pure-Python one whose per-request cost dominates the S3 figures.

    The gateway is lab-ceph's "bench" one on dr-lab-ceph: a realm of its own (no region's buckets or keys are
    touched), HTTPS on 127.0.0.1:49443 with the bench's self-signed certificate, which this writes into the
    controller's .lab/ceph/bench-tls/ (the container's /export/bench-tls/) before starting it: pgBackRest has no
    plain-HTTP S3 client, and it matches 127.0.0.1 against the certificate's DNS names. Each start creates a fresh,
    unversioned bucket (RGW ignores If-None-Match on versioned buckets, and the collection's writes rely on it);
    stop() empties and deletes it, then stops the gateway. The user's keys are read from radosgw-admin and kept in
    memory: never logged, never on a command line (pgBackRest reads them from its 0640 configuration file, our
    WAL commands from their 0600 one).

    One run at a time: starting the gateway restarts it, so .lab/ceph/bench-tls/owner.json names the run using
    it (pid, command line) and the buckets it still has to delete. A live owner is refused; a dead one's buckets
    (a run killed before its stop()) are deleted by the next start."""

    kind = "rgw"

    def __init__(self, root: Path = ROOT):
        super().__init__()
        self.tls = root / "tls"
        self.export = LAB_CEPH_DIR / "bench-tls"
        self.owner = self.export / "owner.json"
        self.port = RGW_PORT
        self.region = "us-east-1"  # the bench zonegroup's API name (lab-ceph's realm())
        self.pending: list[str] = []  # buckets to delete: a dead owner's, then this run's
        self._claimed = False  # owner.json is this object's: stop() may clean up
        self._gateway = False  # this object started the gateway: stop() stops it

    def start(self) -> None:
        t0 = time.monotonic()
        self._check_lab()
        self._claim()
        self.cert, key = self_signed_cert(self.tls)
        self._export_tls(key)
        self._gateway = True  # from here on stop() stops it, even if starting it fails halfway
        # the first start also creates the realm and its user (radosgw-admin: a few seconds)
        lab_ceph(["lab-ceph", "bench-gateway", "start"], timeout=300, what="start the lab's bench gateway",
                 hint=self._log_hint)
        self.access_key, self.secret_key = self._keys()
        self._wait_tls(timeout=60)
        client = self.client()
        for bucket in list(self.pending):
            log(f"deleting the bucket {bucket} an earlier --s3 rgw run left on the lab's bench gateway")
            self._delete_bucket(client, bucket)
            self.pending.remove(bucket)
        # a name no earlier run used: nothing of a previous run can be read back as this run's
        self.bucket = f"bench-{time.time_ns()}"
        self.pending.append(self.bucket)
        self._write_owner()
        client.create_bucket(Bucket=self.bucket)
        log(f"the lab's bench gateway answers at {self.endpoint_url} (bucket {self.bucket}) after "
            f"{time.monotonic() - t0:.1f} s")

    @property
    def _log_hint(self) -> str:
        return f"; see podman exec {LAB_CEPH} cat /var/log/lab/rgw-{RGW_REALM}.log"

    @staticmethod
    def _check_lab() -> None:
        try:
            exists = run(["podman", "container", "exists", LAB_CEPH], timeout=60, check=False, quiet=True)
            running = run(["podman", "container", "inspect", "--format", "{{.State.Running}}", LAB_CEPH],
                          timeout=60, check=False, quiet=True) if exists.returncode == 0 else None
        except OSError as exc:
            raise BenchError(f"{LAB_NOT_UP} (podman: {exc})") from None
        if running is None or running.returncode != 0 or running.stdout.strip() != "true":
            raise BenchError(LAB_NOT_UP)
        try:
            ready = (LAB_CEPH_DIR / "ready").exists()
        except PermissionError:
            raise BenchError(f"cannot read {LAB_CEPH_DIR}: run the benchmark as root, as the lab runs") from None
        if not ready:
            raise BenchError(f"the lab's Ceph cluster is not ready (no {LAB_CEPH_DIR / 'ready'}): run scripts/lab.sh "
                             "up (make lab-up) and let it finish")

    def _claim(self) -> None:
        """Take the gateway for this run (owner.json), after checking that no other live run holds it."""
        try:
            self.export.mkdir(mode=0o755, exist_ok=True)
            self.export.chmod(0o755)
        except PermissionError:
            raise BenchError(f"cannot write {self.export}: run the benchmark as root, as the lab runs") from None
        try:
            old = json.loads(self.owner.read_text())
        except (OSError, ValueError):
            old = {}
        pid = old.get("pid") if isinstance(old, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid) and _cmdline(pid) == old.get("cmdline"):
            raise BenchError(f"another benchmark run (pid {pid}: {old.get('cmdline', '')[:120]}) is using the lab's "
                             "bench gateway: wait for it to end (starting the gateway again would restart it "
                             "under that run)")
        if isinstance(old, dict):
            self.pending = [b for b in old.get("buckets", []) if isinstance(b, str) and b.startswith("bench-")]
        self._write_owner()
        self._claimed = True

    def _write_owner(self) -> None:
        tmp = self.owner.with_name(self.owner.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "cmdline": _cmdline(os.getpid()),
                                   "buckets": self.pending}) + "\n")
        os.replace(tmp, self.owner)

    def _export_tls(self, key: Path) -> None:
        """The bench certificate and key where the gateway reads them; written to a temporary name and renamed, the
        key created 0600 (the gateway runs as root in the container)."""
        for src, mode in ((self.cert, 0o644), (key, 0o600)):
            dst = self.export / src.name
            tmp = dst.with_name(dst.name + ".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(src.read_bytes())
            os.replace(tmp, dst)

    def _keys(self) -> tuple[str, str]:
        proc = lab_ceph(["radosgw-admin", "user", "info", "--uid=dr-lab", f"--rgw-realm={RGW_REALM}",
                         f"--rgw-zonegroup={RGW_REALM}", f"--rgw-zone={RGW_REALM}-a"], timeout=60,
                        what="read the bench gateway user's keys")
        try:
            key = json.loads(proc.stdout)["keys"][0]
            return key["access_key"], key["secret_key"]
        except (ValueError, KeyError, IndexError, TypeError):
            # nothing of the output in the message: it may hold a key
            raise BenchError(f"radosgw-admin user info --uid=dr-lab (realm {RGW_REALM}) printed no keys: the lab's "
                             "bench realm is incomplete; recreate the lab (scripts/lab.sh down, then up)") from None

    def _wait_tls(self, timeout: float) -> None:
        """Until the gateway answers over TLS verified against the bench certificate (radosgw daemonizes: the exec
        returns before it listens). Any HTTP answer counts, an S3 error to this anonymous request included."""
        import http.client
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.cert))
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=2, context=ctx).read()
                return
            except urllib.error.HTTPError:
                return
            except (OSError, http.client.HTTPException) as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"the lab's bench gateway did not answer over HTTPS at {self.endpoint_url} "
                                     f"within {timeout:.0f} s ({exc}){self._log_hint}") from None
                time.sleep(0.5)

    @staticmethod
    def _delete_bucket(client, bucket: str, timeout: float = 300) -> None:
        """Every object and unfinished multipart upload of ``bucket``, then the bucket (it must be empty to go);
        retried until ``timeout``. A bucket already gone is fine."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout
        while True:
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
                    for upload in page.get("Uploads", []):
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                client.delete_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "NoSuchBucket":
                    return
                if time.monotonic() > deadline:
                    raise BenchError(f"could not delete the bucket {bucket} on the lab's bench gateway within "
                                     f"{timeout:.0f} s ({code}); the next --s3 rgw run tries again") from None
                time.sleep(1)

    def stop(self) -> None:
        """Delete this run's bucket, then stop the gateway; nothing if this object never took the gateway (another
        run's stays untouched). A bucket that could not be deleted stays in owner.json for the next run."""
        if not self._claimed:
            return
        errors = []
        if self.pending and self.access_key:
            try:
                client = self.client()
                for bucket in list(self.pending):
                    self._delete_bucket(client, bucket)
                    self.pending.remove(bucket)
            except Exception as exc:  # keep going: the gateway must stop too
                errors.append(f"deleting the bucket: {exc}")
        self.bucket = ""
        if self._gateway:
            self._gateway = False
            try:
                lab_ceph(["lab-ceph", "bench-gateway", "stop"], timeout=60, what="stop the lab's bench gateway")
            except BenchError as exc:
                errors.append(str(exc))
        if self.pending:
            self._write_owner()
        else:
            self.owner.unlink(missing_ok=True)
        self._claimed = False
        if errors:
            raise BenchError("; ".join(errors))


def make_s3(kind: str, root: Path = ROOT) -> S3Endpoint:
    """The benchmark's S3 endpoint: moto's server (the default, as the committed figures were measured) or the
    running lab's Ceph RGW."""
    if kind == "moto":
        return S3Server(root)
    if kind == "rgw":
        return RgwServer(root)
    raise BenchError(f"unknown S3 endpoint {kind!r}: moto or rgw")


def add_s3_argument(parser) -> None:
    parser.add_argument("--s3", choices=S3_KINDS, default="moto",
                        help="the S3 endpoint: moto (default; a moto server of its own over HTTPS, as for the "
                             "committed figures) or rgw (the running lab's Ceph RADOS Gateway over HTTPS, a fresh "
                             "bucket; the lab must be up: make lab-up); rgw results go to "
                             "bench/results/<name>-rgw.json")


def result_name(base: str, kind: str) -> str:
    """The result file's name: moto's figures stay in <name>.json (continuity), RGW's go beside them."""
    return base if kind == "moto" else f"{base}-{kind}"


def s3_versions(kind: str) -> dict:
    """The S3 server's version for the result: moto's package, or the lab's Ceph (`ceph --version` in its
    container)."""
    if kind == "moto":
        return {"moto": package_version("moto")}
    try:
        out = run(["podman", "exec", LAB_CEPH, "ceph", "--version"], timeout=60, check=False, quiet=True)
        return {"ceph": out.stdout.strip() or "unknown"}
    except (OSError, subprocess.SubprocessError):
        return {"ceph": "unknown"}


def serve_moto_tls(argv: list[str]) -> None:
    """moto_server, with one change: TLS connections end with a close_notify alert.

    moto's server (werkzeug) answers ``Connection: close`` and sends some responses (a PUT's empty 200) without a
    Content-Length, so the client reads to the end of the connection; werkzeug then closes the socket without
    closing TLS, which OpenSSL 3 clients see as "unexpected eof while reading". boto3 does not mind; pgBackRest
    2.45 fails ("TLS error [1:167772454] unexpected eof while reading", pgbackrest/pgbackrest#1677). Real S3 and
    the lab's endpoint close TLS properly."""
    import socketserver
    import ssl

    plain_shutdown = socketserver.TCPServer.shutdown_request

    def shutdown_request(self, request):
        if isinstance(request, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                request.settimeout(2)
                request.unwrap()
        plain_shutdown(self, request)

    plain_get_request = socketserver.TCPServer.get_request

    def get_request(self):
        conn, addr = plain_get_request(self)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    socketserver.TCPServer.shutdown_request = shutdown_request
    socketserver.TCPServer.get_request = get_request
    from moto.server import main as moto_main

    moto_main(argv)


# -- pgBackRest --------------------------------------------------------------------------------------------------------
class PgBackRest:
    """One stanza with two repositories, as an operator would configure a cluster shipping to two places:
    repo1 posix (a local directory), repo2 S3 (the bench endpoint, TLS verified against the bench certificate,
    path-style URIs). archive_command is pgBackRest's archive-push, which pushes each WAL segment to both; the
    backups keep the default archive check (the backup waits until the WAL it needs is in the repository)."""

    def __init__(self, cluster: Cluster, s3: S3Endpoint, root: Path = ROOT, process_max: int = 2,
                 compress_type: str = "lz4"):
        self.cluster = cluster
        self.s3 = s3
        self.dir = root / "pgbackrest"
        self.conf = self.dir / "pgbackrest.conf"
        self.process_max = process_max
        self.compress_type = compress_type
        self.s3_path = "/pgbackrest"

    @property
    def archive_command(self) -> str:
        return f"{PGBACKREST} --config={self.conf} --stanza={STANZA} archive-push %p"

    def prepare(self) -> None:
        """Fresh repositories and configuration (the S3 store is fresh each run, so the posix one is too)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        for sub in ("repo", "log", "lock", "spool"):
            pg_dir(self.dir / sub, 0o750)
        self.write_conf()

    def write_conf(self) -> None:
        c, s3 = self.cluster, self.s3
        text = f"""# written by bench/harness.py
[global]
repo1-type=posix
repo1-path={self.dir / 'repo'}
repo1-retention-full=100
repo2-type=s3
repo2-path={self.s3_path}
repo2-s3-bucket={s3.bucket}
repo2-s3-endpoint=127.0.0.1
repo2-storage-port={s3.port}
repo2-s3-region={s3.region}
repo2-s3-key={s3.access_key}
repo2-s3-key-secret={s3.secret_key}
repo2-s3-uri-style=path
repo2-storage-ca-file={s3.cert}
repo2-retention-full=100
process-max={self.process_max}
compress-type={self.compress_type}
start-fast=y
log-path={self.dir / 'log'}
lock-path={self.dir / 'lock'}
spool-path={self.dir / 'spool'}
log-level-console=warn
log-level-file=info

[{STANZA}]
pg1-path={c.data}
pg1-socket-path={c.sock}
pg1-port={c.port}
pg1-user=postgres
"""
        self.conf.write_text(text)
        chown_pg(self.conf)
        self.conf.chmod(0o640)

    def cmd(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run(as_pg_user([PGBACKREST, f"--config={self.conf}", f"--stanza={STANZA}", *args]),
                   timeout=timeout, check=check)

    def info(self, repo: int) -> dict:
        out = self.cmd(f"--repo={repo}", "info", "--output=json", timeout=120).stdout
        return json.loads(out)[0]

    def version(self) -> str:
        return run([PGBACKREST, "version"], timeout=30).stdout.strip()


# -- reporting ---------------------------------------------------------------------------------------------------------
def machine() -> dict:
    mem_kb, model = 0, "unknown"
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu_model": model, "cpus": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release()}


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def write_result(name: str, result: dict) -> Path:
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def require_root_or_postgres() -> None:
    if os.getuid() != 0 and pwd.getpwuid(os.getuid()).pw_name != PG_OS_USER:
        sys.exit("bench: run as root (PostgreSQL and pgBackRest run as the postgres user through runuser)")
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        sys.exit("bench: no postgres OS user: install postgresql-15 (scripts/setup.sh)")


if __name__ == "__main__" and sys.argv[1:2] == ["moto-tls"]:
    serve_moto_tls(sys.argv[2:])


def paired_ratios(runs: list[dict], med: dict, pairs: dict, key: str) -> tuple[dict, dict]:
    """Ratios of ``key`` between the medians of two configurations, and the same ratios paired within each
    round (their spread: the noise)."""
    out, per_round = {}, {}
    for name, (a, b) in pairs.items():
        if a in med and b in med and key in med[a] and key in med[b]:
            out[name] = round(med[a][key] / med[b][key], 3)
        paired = []
        for rnd in sorted({r["round"] for r in runs}):
            t = {r["config"]: r[key] for r in runs if r["round"] == rnd and key in r}
            if a in t and b in t:
                paired.append(t[a] / t[b])
        if paired:
            per_round[name] = {"median": round(statistics.median(paired), 3), "min": round(min(paired), 3),
                               "max": round(max(paired), 3)}
    return out, per_round
