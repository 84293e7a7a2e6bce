"""WAL streaming on the running lab (issue 5): site.yml turns it on; under the workload generator the serving
region's database host is killed; a recovery on this machine from the newest backup plus only what the
streaming region's repository holds (archive, stream, and the streamed partial) is compared with the generator's
journal: at most 1 s of acknowledged commits may be missing. Then site.yml turns streaming off: streamer stopped,
slot dropped. The killed host is started again as it was (nothing was promoted), so the lab stays usable."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import psycopg2
from conftest import REPO, playbook
from test_wal_lab import INVENTORY, REGIONS, newest_backup, serving_region, superuser_sql

from drlab import s3 as lab_s3

sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import tar as backup_tar  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SITE = str(REPO / "playbooks" / "site.yml")
SLOT = "immersiverse_dr_stream"
TEMPLATE = REPO / "roles" / "wal_archive" / "templates" / "immersiverse-dr-wal.j2"


def next_region(region: str) -> str:
    names = list(REGIONS)
    return names[(names.index(region) + 1) % len(names)]


def on_host(region: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "exec", "-u", "postgres", f"dr-lab-{region}-db", *argv], capture_output=True,
                          text=True, check=check, timeout=60)


def streamer_status(region: str) -> dict:
    return json.loads(on_host(region, "/usr/local/bin/immersiverse-dr-wal", "stream", "--status").stdout)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (subprocess.CalledProcessError, psycopg2.Error, ValueError, AssertionError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


def acked(journal: Path) -> int:
    """Acknowledged writes in a running generator's journal so far (complete lines only)."""
    if not journal.exists():
        return 0
    text = journal.read_text()
    return sum(1 for line in text[:text.rfind("\n") + 1].splitlines() if json.loads(line).get("type") == "ack")


def streamer_settled(region: str, since: float) -> dict:
    """The streamer's status once it has stored what it received before ``since`` (epoch seconds): two status
    documents written after it (the uploader writes one a second and uploads every 0.2 s) show the same stored end."""
    seen = []

    def settled():
        status = streamer_status(region)
        if status.get("at", 0) <= since + 0.5:
            return None
        if not seen or seen[-1]["at"] != status["at"]:
            seen.append(status)
        same = len(seen) >= 2 and all(seen[-2].get(k) == seen[-1].get(k) for k in ("partial", "stored_end"))
        return seen[-1] if same else None

    return wait_for(settled, 30, "the streamer storing what it received before the kill")


def as_postgres(path: Path) -> Path:
    entry = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)
    return path


def lab_repository(region: str) -> dict:
    return lab_s3.repository(region)


class ScratchRecovery:
    """The newest backup restored into a directory on this machine, recovering with `immersiverse-dr-wal fetch
    --partial` from one region's repository only, run by the local PostgreSQL 15 as the postgres user."""

    def __init__(self, region: str):
        self.root = Path(tempfile.mkdtemp(prefix="drlab-stream-restore-"))
        self.root.chmod(0o711)
        self.data = self.root / "data"
        self.run_dir = self.root / "run"
        self.port = 45432
        self.region = region

    def prepare(self, record: dict) -> None:
        repo = repo_spec.open_repository(lab_repository(self.region))
        (self.data / "pg_wal").mkdir(parents=True)
        self.data.chmod(0o700)
        self.run_dir.mkdir()
        for entry in record["files"]:
            name = entry["name"]
            if name.startswith(("base.tar", "pg_wal.tar")):
                dest = self.data / "pg_wal" if name.startswith("pg_wal.tar") else self.data
                backup_tar.extract_tar_stream(repo.open(f"backup/{record['id']}/{name}"), name, str(dest))
        spool = self.root / "spool"
        spool.mkdir()
        config = self.root / "wal.json"
        config.write_text(json.dumps({"repository": lab_repository(self.region), "spool_dir": str(spool),
                                      "async": False, "fetch_unreachable": "abort"}))
        wrapper = self.root / "immersiverse-dr-wal"
        wrapper.write_text(jinja2.Template(TEMPLATE.read_text()).render(
            wal_archive_spool_dir=str(spool), wal_archive_install_dir=str(REPO / ".collections"),
            wal_archive_python="/usr/bin/python3", wal_archive_config_file=str(config)))
        wrapper.chmod(0o755)
        # Debian keeps postgresql.conf and pg_hba.conf in /etc; the lab's ALTER SYSTEM settings (its own
        # archive_command and restore_command) must not apply here.
        (self.data / "postgresql.auto.conf").write_text("")
        (self.data / "postgresql.conf").write_text(
            f"port = {self.port}\nlisten_addresses = ''\nunix_socket_directories = '{self.run_dir}'\n"
            f"restore_command = '{wrapper} fetch --partial %f %p'\nrecovery_target_timeline = 'latest'\n"
            "archive_mode = off\nhot_standby = off\nfsync = off\nmax_connections = 100\n")
        (self.data / "pg_hba.conf").write_text("local all all trust\n")
        (self.data / "recovery.signal").touch()
        for stale in ("postmaster.pid", "standby.signal"):
            (self.data / stale).unlink(missing_ok=True)
        as_postgres(self.root)

    def start(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.root / "server.log"), "-w", "-t", "600", "start"], check=True, timeout=660,
                       capture_output=True)

    def dsn(self) -> str:
        return f"host={self.run_dir} port={self.port} user=auth_app dbname=authdb"

    def promoted(self) -> bool:
        conn = psycopg2.connect(self.dsn())
        try:
            cur = conn.cursor()
            cur.execute("SELECT NOT pg_is_in_recovery()")
            return cur.fetchone()[0]
        finally:
            conn.close()

    def destroy(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def test_streaming_keeps_the_rpo_of_a_killed_primary_under_one_second_then_turns_off(tmp_path):
    on = playbook("-i", INVENTORY, SITE, "-e", "wal_archive_stream=true")
    assert on.rc == 0, on.out[-4000:]
    secret = (REPO / ".lab" / "secrets" / "replicator").read_text().split()[0]
    assert secret not in on.out
    region = serving_region()
    streaming = next_region(region)
    wait_for(lambda: streamer_status(streaming).get("receivewal") == "streaming", 60, "the streamer streaming")
    assert superuser_sql(region, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'") == "t"

    backup = playbook("-i", INVENTORY, str(REPO / "playbooks" / "backup.yml"))
    assert backup.rc == 0, backup.out[-3000:]
    record = newest_backup(streaming)

    journal = tmp_path / "journal.jsonl"
    env = {**os.environ, "PGPASSFILE": str(REPO / ".lab" / "pgpass"), "PYTHONPATH": str(REPO / "lab")}
    gen = subprocess.Popen([sys.executable, "-m", "drlab.generator", "--journal", str(journal), "--user", "auth_app",
                            "--dbname", "authdb", "--endpoint", f"{region}=127.0.0.1:{REGIONS[region] * 10000 + 5432}",
                            "--rate", "150", "--duration", "25", "--max-consecutive-errors", "1000"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    scratch = ScratchRecovery(streaming)
    killed = False
    try:
        # the kill comes under load, once the generator has acknowledged enough to prove something (10 s at 150/s)
        wait_for(lambda: acked(journal) >= 1500 or gen.poll() is not None, 20, "1500 acknowledged writes")
        assert gen.poll() is None, gen.stderr.read()
        subprocess.run(["podman", "kill", "--signal", "KILL", f"dr-lab-{region}-db"], check=True, timeout=60)
        failure_time = datetime.now(UTC)
        killed = True
        status = streamer_settled(streaming, failure_time.timestamp())  # what came last is stored
        gen.wait(60)
        print(f"\nstreamer after the kill: {status}")

        scratch.prepare(record)
        scratch.start()
        wait_for(scratch.promoted, 600, "the scratch recovery reaching the end of the repository's WAL")
        compare = subprocess.run([sys.executable, "-m", "drlab.compare", "--journal", str(journal), "--dsn",
                                  scratch.dsn(), "--failure-time", failure_time.isoformat(), "--json"],
                                 env=env, capture_output=True, text=True, timeout=300, check=False)
        assert compare.returncode == 0, compare.stderr
        report = json.loads(compare.stdout)
        figures = {k: report.get(k) for k in ("acked", "missing", "lost_before_failure", "rpo_seconds",
                                              "last_acked_before_failure", "last_surviving_before_failure")}
        print(f"streamed from {region} to {streaming}, upload interval 0.2 s: {figures}")
        assert (report.get("acked") or 0) > 1000, "the generator wrote too little to prove anything"
        assert report["rpo_seconds"] is not None and report["rpo_seconds"] <= 1.0, figures
    finally:
        if gen.poll() is None:
            gen.terminate()
            gen.wait(30)
        scratch.destroy()
        if killed:  # the same host comes back as the primary it was (nothing was promoted)
            subprocess.run(["podman", "start", f"dr-lab-{region}-db"], check=True, timeout=120)
            wait_for(lambda: serving_region() == region, 300, f"{region} serving again")

    wait_for(lambda: streamer_status(streaming).get("receivewal") == "streaming", 120,
             "the streamer following the restarted primary")
    off = playbook("-i", INVENTORY, SITE)
    assert off.rc == 0, off.out[-4000:]
    assert superuser_sql(region, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'") == "0"
    assert not streamer_status(streaming)["running"]
    assert on_host(streaming, "test", "-e", "/etc/cron.d/immersiverse-dr-wal-stream", check=False).returncode == 1
    assert "pg_receivewal" not in on_host(streaming, "ps", "-eo", "args").stdout
