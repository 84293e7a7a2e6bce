"""Benchmark: WAL archiving and WAL fetch during recovery, the collection's commands vs pgBackRest vs `cp`.

Issue 5: with 32 or more segments queued, the segments/s of our push (immersiverse-dr-wal, the installed shell
wrapper rendered from roles/wal_archive/templates/immersiverse-dr-wal.j2) to the lab's S3 (moto over HTTPS, or
with --s3 rgw the running lab's Ceph RGW over HTTPS), against pgBackRest archive-push (synchronous, and
asynchronous with process-max 2) and a bare `cp`, all driven by PostgreSQL's own archiver loop. Target: at least
0.9 of the `cp` rate, to S3, with checksums. Also the fetch rate during recovery against pgBackRest archive-get.

Push, one run: the same >= --segments segments of real WAL (generated once per run with archiving paused:
inserts of md5 text rows, then pg_switch_wal) are queued again (.done renamed back to .ready, archiving still
paused; each tool's repository emptied before, so every push is a real upload); then the archive_command under
test is set and pg_reload_conf() called, and the clock runs until no .ready file is left (the archiver has
renamed every one to .done); segments/s = queued / seconds. Configurations, interleaved per round (the order
rotates by one every round):

    cp_local                 cp %p <dir>/%f
    pgbackrest_sync_local    pgbackrest archive-push, posix repository (compress-type=lz4)
    pgbackrest_sync_s3       pgbackrest archive-push, S3 repository on the same S3 endpoint
    pgbackrest_async_s3      the same with archive-async=y, process-max=2, spool-path
    ours_async_s3            immersiverse-dr-wal push %p (async, concurrency 4, lz4): the background pusher starts
                             on the first push and reads ahead of the archiver
    ours_sync_s3             reference, first round only: the same with async false (one Python process per
                             segment)

Fetch: a base backup (pg_basebackup -X none) taken before those segments were generated, and the segments
archived by all three (cp to a directory, ours and pgBackRest each to an S3 repository of its own); one run
restores a copy of the base backup, writes recovery.signal and the restore_command under test (hot_standby off)
and times from `pg_ctl start` until postmaster.pid says "ready" (archive recovery ended, the server promoted):

    cp_local                 reference, first round only: cp <dir>/%f %p (the floor: start-up and replay)
    pgbackrest_get_s3        reference, first round only: pgbackrest archive-get %f %p
    pgbackrest_get_async_s3  the same with archive-async=y, process-max=2 (prefetches archive-get-queue-max)
    ours_fetch_s3            immersiverse-dr-wal fetch %f %p (verified, prefetch 8, concurrency 4)

Reference, once: the S3 endpoint's own ceiling for objects of the size ours stored (PUTs of random bytes from
4 threads of one process, the system boto3 our commands use).

Writes bench/results/wal.json (wal-rgw.json with --s3 rgw, so the moto figures stay comparable run to run):
date, machine, versions (Ceph's with --s3 rgw), which S3 it was, every run, medians, rates and ratios.

    sudo .venv/bin/python bench/wal.py [--rounds 3] [--segments 32] [--reference-rounds 1] [--s3 moto|rgw]

Everything lives under /var/tmp/immersiverse-dr-bench/wal (a small cluster of its own, built fresh each run; its
own moto server, or with --s3 rgw a fresh bucket on the lab's gateway, deleted at the end: the lab must be up);
every process it starts is stopped, and a run killed with SIGKILL is cleaned up by the next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

W = h.ROOT / "wal"
SEG = 16 * 1024 * 1024
PUSH = ("cp_local", "pgbackrest_sync_local", "pgbackrest_sync_s3", "pgbackrest_async_s3", "ours_async_s3",
        "ours_sync_s3")
FETCH = ("cp_local", "pgbackrest_get_s3", "pgbackrest_get_async_s3", "ours_fetch_s3")
# references, run in the first --reference-rounds rounds only (the whole run must stay within ~6 minutes):
# one Python process per segment (push), and the replay floor (fetch)
REFERENCE_PUSH = {"ours_sync_s3"}
REFERENCE_FETCH = {"cp_local", "pgbackrest_get_s3"}
TARGET_OF_CP = 0.9  # issue 5: our push to S3 at >= 0.9 of the cp rate
TEMPLATE = h.REPO / "roles" / "wal_archive" / "templates" / "immersiverse-dr-wal.j2"
SYSTEM_PYTHON = "/usr/bin/python3"
OURS_OPTIONS = {"concurrency": 4, "prefetch": 8, "compression": "lz4", "idle_exit_seconds": 5,
                "async_wait_seconds": 30}
# the WAL: heap inserts of rows (int, bigint, 64 hex characters: two md5s) copied from a 100000-row pool table
# built once per run with random content (10 MB, so lz4's 64 KB window finds no repeats across batches): real
# heap-insert WAL whose payload lz4 compresses poorly, like most real data (each run records the ratio it got)
POOL_SQL = ("CREATE TABLE w (k int, v bigint, payload text); "
            "CREATE TABLE pool AS SELECT g AS k, (random() * 1e12)::bigint AS v, "
            "md5(g::text || random()::text) || md5(random()::text) AS payload FROM generate_series(1, 100000) g")
FILL_SQL = """DO $$
DECLARE start pg_lsn := pg_current_wal_insert_lsn();
BEGIN
  FOR i IN 1..100000 LOOP
    EXIT WHEN pg_current_wal_insert_lsn() - start >= {bytes};
    INSERT INTO w SELECT * FROM pool;
  END LOOP;
END $$"""


T0 = time.monotonic()


def log(msg: str) -> None:
    h.log(f"{time.monotonic() - T0:6.1f}s {msg}")


def kill_matching(needle: str) -> list[int]:
    """Stop every process (not this one nor its ancestors) whose command line contains ``needle``."""
    keep, pid = {os.getpid()}, os.getpid()
    for _ in range(64):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid <= 1:
            break
        keep.add(pid)
    found = [int(e.name) for e in Path("/proc").iterdir()
             if e.name.isdigit() and int(e.name) not in keep and needle in h._cmdline(int(e.name))]
    for p in found:
        h.stop_pid(p, grace=5.0)
    return found


class WalCluster(h.Cluster):
    """A small cluster of its own (initdb, no pgbench data), built fresh every run. postgresql.conf includes
    bench.conf (port, written by start) and archive.conf (archive_command, rewritten + pg_reload_conf)."""

    def __init__(self, directory: Path):
        super().__init__(0)
        self.dir = directory
        self.data = directory / "data"
        self.sock = directory / "sock"
        self.marker = directory / "READY"
        self.logfile = directory / "postgresql.log"

    def build(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        h.pg_dir(self.sock, 0o755)
        h.pg_dir(self.data)
        h.run(h.as_pg_user([h.PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                            "--auth-host=reject", "--data-checksums", "-E", "UTF8", "--locale=C"]), timeout=180)
        with open(self.data / "postgresql.conf", "a", encoding="ascii") as f:
            f.write(f"\n# immersiverse.dr WAL bench\nlisten_addresses = ''\nunix_socket_directories = '{self.sock}'\n"
                    "shared_buffers = 128MB\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\nwal_level = replica\n"
                    "max_wal_senders = 4\narchive_mode = on\narchive_timeout = 0\n"
                    "autovacuum = off\nwal_keep_size = 4GB\n"
                    "include_if_exists = 'bench.conf'\ninclude_if_exists = 'archive.conf'\n")
        self.set_archive_command("", reload=False)

    def set_archive_command(self, command: str, reload: bool = True) -> None:
        conf = self.data / "archive.conf"
        conf.write_text("archive_command = '{}'\n".format(command.replace("'", "''")))
        h.chown_pg(conf)
        if reload:
            self.sql("SELECT pg_reload_conf()")

    def start_nowait(self, settings: dict) -> None:
        lines = [f"port = {self.port}"]
        lines += ["{} = '{}'".format(k, str(v).replace("'", "''")) for k, v in settings.items()]
        conf = self.data / "bench.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.logfile.touch()
        h.chown_pg(conf, self.logfile)
        self._pg_ctl("start", "-W", "-l", str(self.logfile))

    def wait_ready(self, t0: float, timeout: float) -> float:
        """Seconds from t0 until postmaster.pid's status line says "ready"; the postmaster exiting is an error."""
        pidfile = self.data / "postmaster.pid"
        deadline = t0 + timeout
        seen = False
        while time.monotonic() < deadline:
            try:
                lines = pidfile.read_text().splitlines()
                seen = True
            except OSError:
                lines = []
                if seen:
                    raise h.BenchError(f"the server in {self.data} exited during recovery: "
                                       f"{self.logfile.read_text(errors='replace')[-2000:]}") from None
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return time.monotonic() - t0
            time.sleep(0.01)
        raise h.BenchError(f"recovery in {self.data} did not end within {timeout:.0f} s")

    @property
    def status_dir(self) -> Path:
        return self.data / "pg_wal" / "archive_status"

    def queued(self) -> list[str]:
        return sorted(n[:-6] for n in os.listdir(self.status_dir) if n.endswith(".ready"))

    def archiver(self) -> dict:
        row = self.sql("SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
                       "coalesce(last_failed_wal, '') FROM pg_stat_archiver").split("|")
        return {"archived": int(row[0]), "failed": int(row[1]), "last": row[2], "last_failed": row[3]}


class OursArchive:
    """The wrapper, its JSON config and spool as the wal_archive role installs them (as in
    tests/integration/test_wal_push_fetch.py), in a scratch directory."""

    def __init__(self, root: Path, repository: dict, **options):
        import jinja2

        shutil.rmtree(root, ignore_errors=True)
        self.root = h.pg_dir(root, 0o711)
        self.spool = h.pg_dir(root / "spool")
        self.config = root / "wal.json"
        self.doc = {"repository": repository, "offsite": [], "spool_dir": str(self.spool), "async": True,
                    **OURS_OPTIONS, **options}
        self.config.write_text(json.dumps(self.doc))
        h.chown_pg(self.config)
        self.config.chmod(0o600)
        self.wrapper = root / "immersiverse-dr-wal"
        self.wrapper.write_text(jinja2.Template(TEMPLATE.read_text()).render(
            wal_archive_spool_dir=str(self.spool), wal_archive_install_dir=str(h.REPO / ".collections"),
            wal_archive_python=SYSTEM_PYTHON, wal_archive_config_file=str(self.config)))
        self.wrapper.chmod(0o755)

    def reset(self) -> list[int]:
        """Stop a pusher or prefetcher still idling, empty the spool (markers, prefetched files, logs)."""
        killed = kill_matching(str(self.config))
        for child in self.spool.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif child.name.endswith(".log"):
                child.rename(self.root / (child.name + ".old"))  # kept for reading, out of the way
            else:
                child.unlink(missing_ok=True)
        return killed

    def errors(self) -> str:
        logf = self.spool / "pusher.log"
        return logf.read_text()[-1500:] if logf.exists() else ""


class PgbrConf:
    """One pgBackRest configuration with one repository (archive-push pushes to every configured repository, so
    each destination gets a config file of its own), its own log, lock and spool directories."""

    def __init__(self, name: str, cluster: WalCluster, s3: h.S3Endpoint | None, repo_path: str):
        self.dir = W / "pgbackrest" / name
        self.conf = self.dir / "pgbackrest.conf"
        self.cluster, self.s3, self.repo_path = cluster, s3, repo_path

    def write(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        h.pg_dir(self.dir, 0o750)
        for sub in ("log", "lock", "spool"):
            h.pg_dir(self.dir / sub, 0o750)
        if self.s3 is None:
            h.pg_dir(Path(self.repo_path), 0o750)
            repo = f"repo1-type=posix\nrepo1-path={self.repo_path}\n"
        else:
            repo = (f"repo1-type=s3\nrepo1-path={self.repo_path}\nrepo1-s3-bucket={self.s3.bucket}\n"
                    f"repo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={self.s3.port}\n"
                    f"repo1-s3-region={self.s3.region}\nrepo1-s3-key={self.s3.access_key}\n"
                    f"repo1-s3-key-secret={self.s3.secret_key}\nrepo1-s3-uri-style=path\n"
                    f"repo1-storage-ca-file={self.s3.cert}\n")
        self.conf.write_text(f"""# written by bench/wal.py
[global]
{repo}compress-type=lz4
process-max=2
log-path={self.dir / 'log'}
lock-path={self.dir / 'lock'}
spool-path={self.dir / 'spool'}
log-level-console=warn
log-level-file=info

[{h.STANZA}]
pg1-path={self.cluster.data}
pg1-socket-path={self.cluster.sock}
pg1-port={self.cluster.port}
pg1-user=postgres
""")
        h.chown_pg(self.conf)
        self.conf.chmod(0o640)

    def command(self, *args: str) -> str:
        return " ".join([h.PGBACKREST, f"--config={self.conf}", f"--stanza={h.STANZA}", *args])

    def cmd(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return h.run(h.as_pg_user([h.PGBACKREST, f"--config={self.conf}", f"--stanza={h.STANZA}", *args]),
                     timeout=timeout)

    def reset(self) -> list[int]:
        """Stop asynchronous archive-push/get processes still running, empty the spool."""
        killed = kill_matching(str(self.conf))
        spool = self.dir / "spool"
        shutil.rmtree(spool, ignore_errors=True)
        h.pg_dir(spool, 0o750)
        return killed


class Bench:
    def __init__(self, segments: int, s3: str = "moto"):
        self.segments = segments
        self.cluster = WalCluster(W / "pg")
        self.s3 = h.make_s3(s3, W)
        self.cp_dir = W / "cp"
        self.raw_dir = W / "fetch" / "raw"
        self.base = W / "fetch" / "base"
        self.restore = WalCluster(W / "fetch" / "restore")
        self.pgbr: dict[str, PgbrConf] = {}
        self.ours: dict[str, OursArchive] = {}
        self.fetch_segments: list[str] = []
        self.names: list[str] = []
        self.leftovers: dict[str, int] = {}

    # -- set-up and tear-down --------------------------------------------------------------------------------------
    def setup(self) -> None:
        for c in (self.restore, self.cluster):
            c.stop_leftover()
        h.reap_leftovers(W)
        self.s3.start()
        log(f"S3 endpoint ({self.s3.kind}, HTTPS) at {self.s3.endpoint_url}, bucket {self.s3.bucket}")
        log("building a small cluster (initdb) and the pgBackRest stanzas")
        self.cluster.build()
        self.cluster.port = h.free_port()
        self.cluster.start({})
        self.cluster.sql(POOL_SQL, timeout=300)
        shutil.rmtree(self.cp_dir, ignore_errors=True)
        h.pg_dir(self.cp_dir)
        self.pgbr = {
            "local": PgbrConf("local", self.cluster, None, str(W / "pgbackrest" / "repo-local")),
            "s3": PgbrConf("s3", self.cluster, self.s3, "/pgbackrest-push"),
            "async": PgbrConf("async", self.cluster, self.s3, "/pgbackrest-push"),
            "fetch": PgbrConf("fetch", self.cluster, self.s3, "/pgbackrest-fetch"),
        }
        shutil.rmtree(W / "pgbackrest", ignore_errors=True)
        h.pg_dir(W / "pgbackrest", 0o755)
        for p in self.pgbr.values():
            p.write()
        # "async" uses the repository of "s3"; the three stanza-creates side by side (each is mostly waiting)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda p: p.cmd("stanza-create"), [self.pgbr[n] for n in ("local", "s3", "fetch")]))
        self.ours = {
            "async": OursArchive(W / "ours" / "async", self.s3.repository_spec("ours-push"), **{"async": True}),
            "sync": OursArchive(W / "ours" / "sync", self.s3.repository_spec("ours-push"), **{"async": False}),
            "fetch": OursArchive(W / "ours" / "fetch", self.s3.repository_spec("ours-fetch"), **{"async": True}),
        }

    def teardown(self) -> None:
        steps = [self.restore.stop, self.cluster.stop]
        steps += [o.reset for o in self.ours.values()] + [p.reset for p in self.pgbr.values()]
        steps += [self.s3.stop, lambda: h.reap_leftovers(W)]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the other processes must stop too
                log(f"cleanup: {exc}")

    # -- WAL -------------------------------------------------------------------------------------------------------
    def queue_segments(self, n: int) -> list[str]:
        """With archiving paused, generate real WAL until >= n .ready files wait; returns their names."""
        if self.cluster.queued():
            raise h.BenchError(f"segments still queued before generating: {self.cluster.queued()[:3]}")
        self.cluster.sql(FILL_SQL.format(bytes=n * SEG), timeout=600)
        self.cluster.sql("SELECT pg_switch_wal()")
        names: list[str] = []
        deadline = time.monotonic() + 60
        stable_since = time.monotonic()
        while time.monotonic() < deadline:  # the last .ready files appear as the WAL writer finishes segments
            now = self.cluster.queued()
            if now != names:
                names, stable_since = now, time.monotonic()
            elif len(names) >= n and time.monotonic() - stable_since > 0.5:
                return names
            time.sleep(0.05)
        raise h.BenchError(f"only {len(names)} segments queued after generating {n} segments of WAL")

    def requeue(self) -> list[str]:
        """The generated segments queued again: their .done status files renamed back to .ready, as the
        archiver left them when each was completed (archiving is paused; nothing else writes WAL: autovacuum off,
        wal_keep_size keeps the files). The archiver then archives them as new."""
        if self.cluster.queued():
            raise h.BenchError(f"segments still queued: {self.cluster.queued()[:3]}")
        status = self.cluster.status_dir
        for n in self.names:
            if not (self.cluster.data / "pg_wal" / n).exists():
                raise h.BenchError(f"{n} is no longer in pg_wal")
            os.rename(status / f"{n}.done", status / f"{n}.ready")
        return self.cluster.queued()

    def archive_until_done(self, command: str, timeout: float = 300) -> tuple[float, dict]:
        """Set the archive_command, reload, time until no .ready is left. Returns (seconds, archiver delta)."""
        before = self.cluster.archiver()
        t0 = time.monotonic()
        self.cluster.set_archive_command(command)
        deadline = t0 + timeout
        while self.cluster.queued():
            if time.monotonic() > deadline:
                raise h.BenchError(f"archiving did not finish within {timeout:.0f} s "
                                   f"({len(self.cluster.queued())} left; {self.cluster.archiver()})")
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        self.cluster.set_archive_command("")  # pause again (untimed)
        after = self.cluster.archiver()
        return seconds, {"archived": after["archived"] - before["archived"],
                         "failed": after["failed"] - before["failed"], "last_failed": after["last_failed"]}

    # -- one push run ----------------------------------------------------------------------------------------------
    def push_command(self, config: str) -> str:
        return {
            "cp_local": f"cp %p {self.cp_dir}/%f",
            "pgbackrest_sync_local": self.pgbr["local"].command("archive-push", "%p"),
            "pgbackrest_sync_s3": self.pgbr["s3"].command("archive-push", "%p"),
            "pgbackrest_async_s3": self.pgbr["async"].command("--archive-async", "archive-push", "%p"),
            "ours_async_s3": f"{self.ours['async'].wrapper} push %p",
            "ours_sync_s3": f"{self.ours['sync'].wrapper} push %p",
        }[config]

    def push(self, config: str) -> dict:
        names = self.requeue()
        seconds, delta = self.archive_until_done(self.push_command(config))
        if delta["archived"] < len(names):
            raise h.BenchError(f"{config}: {len(names)} queued but pg_stat_archiver counted {delta['archived']}")
        stored = self.stored_bytes(config, names)
        left = self.reset_push(config, names)
        if left:
            self.leftovers[config] = self.leftovers.get(config, 0) + left
        return {"segments": len(names), "seconds": round(seconds, 3),
                "segments_per_second": round(len(names) / seconds, 2), "failed_attempts": delta["failed"],
                "stored_bytes": stored, "compression_ratio": round(len(names) * SEG / stored, 3) if stored else None,
                "first": names[0], "last": names[-1], "processes_left_running": left}

    def stored_bytes(self, config: str, names: list[str]) -> int:
        wanted = set(names)
        if config == "cp_local":
            return sum((self.cp_dir / n).stat().st_size for n in names)
        if config == "pgbackrest_sync_local":
            root = Path(self.pgbr["local"].repo_path) / "archive" / h.STANZA
            return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name[:24] in wanted)
        prefix = "ours-push/wal/" if config.startswith("ours") else "pgbackrest-push/archive/"
        total = 0
        client = self.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", [])
                         if o["Key"].rsplit("/", 1)[-1][:24] in wanted)
        return total

    def reset_push(self, config: str, names: list[str]) -> int:
        """Untimed: stop what is still running, remove what was archived (nothing grows), recycle pg_wal."""
        killed: list[int] = []
        if config.startswith("ours"):
            killed = self.ours["async" if config == "ours_async_s3" else "sync"].reset()
            self.delete_s3("ours-push/wal/")
        elif config.startswith("pgbackrest"):
            key = {"pgbackrest_sync_local": "local", "pgbackrest_sync_s3": "s3", "pgbackrest_async_s3": "async"}
            killed = self.pgbr[key[config]].reset()
            if config == "pgbackrest_sync_local":
                shutil.rmtree(Path(self.pgbr["local"].repo_path) / "archive" / h.STANZA / "15-1",
                              ignore_errors=True)
            else:
                self.delete_s3(f"pgbackrest-push/archive/{h.STANZA}/15-1/")
        else:
            for n in names:
                (self.cp_dir / n).unlink(missing_ok=True)
        return len(killed)

    def delete_s3(self, prefix: str) -> None:
        client = self.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.s3.bucket, Delete={"Objects": keys, "Quiet": True})

    # -- fetch -----------------------------------------------------------------------------------------------------
    def prepare_fetch(self) -> dict:
        """A base backup, then >= segments archived by cp, ours and pgBackRest alike: one archive_command
        running the three in turn, ours and pgBackRest asynchronous (their background pushers work side by side)."""
        shutil.rmtree(W / "fetch", ignore_errors=True)
        h.pg_dir(W / "fetch", 0o755)
        h.pg_dir(self.raw_dir)
        command = " && ".join([f"cp %p {self.raw_dir}/%f", f"{self.ours['fetch'].wrapper} push %p",
                               self.pgbr["fetch"].command("--archive-async", "archive-push", "%p")])
        self.cluster.set_archive_command(command)
        t0 = time.monotonic()
        h.run(h.as_pg_user([h.PG_BIN / "pg_basebackup", "-D", self.base, "-X", "none", "-c", "fast", "-h",
                            self.cluster.sock, "-p", self.cluster.port, "-U", "postgres", "--no-password"]),
              timeout=300)
        self.cluster.set_archive_command("")
        names = self.queue_segments(self.segments)
        self.names = names
        log(f"generated {len(names)} segments; archiving them with cp + ours + pgBackRest (fetch source)")
        seconds, delta = self.archive_until_done(command, timeout=600)
        if delta["failed"]:
            raise h.BenchError(f"archiving the fetch segments failed {delta['failed']} times")
        label = (self.base / "backup_label").read_text()
        start = label.split("(file ", 1)[1].split(")", 1)[0]
        self.fetch_segments = sorted(n for n in os.listdir(self.raw_dir) if len(n) == 24 and n >= start)
        self.ours["fetch"].reset()
        self.pgbr["fetch"].reset()
        log(f"{len(names)} segments generated ({names[0]} .. {names[-1]}), archived by cp, ours and pgBackRest "
            f"after a base backup (from {start}) in {time.monotonic() - t0:.1f} s")
        return {"base_backup_start": start, "segments_after_backup": len(self.fetch_segments),
                "generated": len(names), "archive_seconds_all_three": round(seconds, 1)}

    def s3_put_ceiling(self, object_bytes: int, threads: int = 4) -> dict:
        """Reference: the endpoint's own ceiling for these objects. The system python3 and boto3 (what our
        commands run with) PUT as many objects of random bytes (incompressible), each the size ours stored per
        segment, from ``threads`` threads in one process: no checksums, no compression, no process start-up. The
        keys go through its environment, not its command line (with --s3 rgw they are the lab's)."""
        code = """
import sys, os, time, boto3, botocore.config
from concurrent.futures import ThreadPoolExecutor
url, cert, bucket, region, n, size, threads = sys.argv[1:8]
n, size, threads = int(n), int(size), int(threads)
c = boto3.client("s3", endpoint_url=url, verify=cert, region_name=region,
                 aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                 config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=threads + 4))
bodies = [os.urandom(size) for _ in range(n)]
c.put_object(Bucket=bucket, Key="ceiling/warm", Body=b"x")
t0 = time.monotonic()
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda i: c.put_object(Bucket=bucket, Key="ceiling/%03d" % i, Body=bodies[i]), range(n)))
print(time.monotonic() - t0)
"""
        n = len(self.names)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}
        out = h.run([SYSTEM_PYTHON, "-c", code, self.s3.endpoint_url, str(self.s3.cert), self.s3.bucket,
                     self.s3.region, str(n), str(object_bytes), str(threads)], timeout=300, env=env)
        seconds = float(out.stdout.strip().splitlines()[-1])
        self.delete_s3("ceiling/")
        return {"objects": n, "object_bytes": object_bytes, "threads": threads, "seconds": round(seconds, 3),
                "objects_per_second": round(n / seconds, 2)}

    def fetch_command(self, config: str) -> str:
        return {
            "cp_local": f"cp {self.raw_dir}/%f %p",
            # pg1-path: the restored cluster (pgBackRest resolves %p, relative to it, against pg1-path)
            "pgbackrest_get_s3": self.pgbr["fetch"].command(f"--pg1-path={self.restore.data}", "archive-get",
                                                            "%f", "%p"),
            "pgbackrest_get_async_s3": self.pgbr["fetch"].command(f"--pg1-path={self.restore.data}",
                                                                  "--archive-async", "archive-get", "%f", "%p"),
            "ours_fetch_s3": f"{self.ours['fetch'].wrapper} fetch %f %p",
        }[config]

    def fetch(self, config: str) -> dict:
        r = self.restore
        r.stop()
        shutil.rmtree(r.dir, ignore_errors=True)
        r.dir.mkdir(parents=True)
        r.dir.chmod(0o755)
        h.pg_dir(r.sock, 0o755)
        h.run(["cp", "-a", str(self.base), str(r.data)], timeout=120)  # postgres-owned, as pg_basebackup wrote it
        (r.data / "archive.conf").write_text(
            "archive_mode = off\nhot_standby = off\nrestore_command = '{}'\n".format(
                self.fetch_command(config).replace("'", "''")))
        (r.data / "recovery.signal").touch()
        for f in ("archive.conf", "recovery.signal"):
            h.chown_pg(r.data / f)
        r.port = h.free_port()
        # pg_ctl start -w would return as soon as recovery starts (with hot_standby off the postmaster reports
        # "standby" then); the end of archive recovery is when postmaster.pid says "ready" (promoted, accepting
        # connections)
        t0 = time.monotonic()
        r.start_nowait({"unix_socket_directories": str(r.sock)})
        seconds = r.wait_ready(t0, timeout=300)
        text = r.logfile.read_text(errors="replace")
        restored = sorted({line.split('restored log file "', 1)[1][:24] for line in text.splitlines()
                           if 'restored log file "' in line and len(line.split('restored log file "', 1)[1]) > 24})
        r._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", check=False)
        missing = sorted(set(self.fetch_segments) - set(restored))
        if missing:
            raise h.BenchError(f"{config}: recovery did not restore {missing[:3]} ({len(missing)} missing); "
                               f"log: {text[-1500:]}")
        key = {"pgbackrest_get_s3": "fetch", "pgbackrest_get_async_s3": "fetch"}
        killed = self.pgbr[key[config]].reset() if config in key else \
            self.ours["fetch"].reset() if config == "ours_fetch_s3" else []
        if killed:
            self.leftovers["fetch_" + config] = self.leftovers.get("fetch_" + config, 0) + len(killed)
        return {"segments": len(restored), "seconds": round(seconds, 3),
                "segments_per_second": round(len(restored) / seconds, 2), "processes_left_running": len(killed)}


# -- reporting -------------------------------------------------------------------------------------------------------
def versions(s3: str) -> dict:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, cwd=h.REPO, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    sys_py = out([SYSTEM_PYTHON, "-c", "import sys, boto3, botocore, lz4; "
                  "print(sys.version.split()[0], boto3.__version__, botocore.__version__, lz4.__version__)"]).split()
    return {
        "postgresql": h.pg_version(),
        "pgbackrest": out([h.PGBACKREST, "version"]),
        **h.s3_versions(s3),
        "bench_python": platform.python_version(),
        "wal_commands_python": dict(zip(("python", "boto3", "botocore", "lz4"), sys_py, strict=False)),
        "collection_commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "wal_commands_uncommitted": bool(out(["git", "status", "--porcelain", "--",
                                              "plugins/module_utils/_wal",
                                              str(TEMPLATE)])),
    }


def medians(runs: list[dict], configs: tuple) -> dict:
    med = {}
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        if not rs:
            continue
        m = {"seconds": round(statistics.median(r["seconds"] for r in rs), 3),
             "segments_per_second": round(statistics.median(r["segments_per_second"] for r in rs), 2),
             "min_segments_per_second": min(r["segments_per_second"] for r in rs),
             "max_segments_per_second": max(r["segments_per_second"] for r in rs),
             "segments": int(statistics.median(r["segments"] for r in rs)), "runs": len(rs)}
        if "compression_ratio" in rs[0]:
            m["compression_ratio"] = statistics.median(r["compression_ratio"] or 0 for r in rs)
            m["failed_attempts"] = sum(r["failed_attempts"] for r in rs)
        med[c] = m
    return med


PUSH_PAIRS = {
    "ours_async_s3_over_cp_local": ("ours_async_s3", "cp_local"),
    "ours_async_s3_over_pgbackrest_async_s3": ("ours_async_s3", "pgbackrest_async_s3"),
    "ours_async_s3_over_pgbackrest_sync_s3": ("ours_async_s3", "pgbackrest_sync_s3"),
    "ours_sync_s3_over_pgbackrest_sync_s3": ("ours_sync_s3", "pgbackrest_sync_s3"),
    "pgbackrest_async_s3_over_cp_local": ("pgbackrest_async_s3", "cp_local"),
    "pgbackrest_sync_local_over_cp_local": ("pgbackrest_sync_local", "cp_local"),
}
FETCH_PAIRS = {
    "ours_fetch_s3_over_pgbackrest_get_async_s3": ("ours_fetch_s3", "pgbackrest_get_async_s3"),
    "ours_fetch_s3_over_pgbackrest_get_s3": ("ours_fetch_s3", "pgbackrest_get_s3"),
    "ours_fetch_s3_over_cp_local": ("ours_fetch_s3", "cp_local"),
}


def print_summary(result: dict) -> None:
    print()
    for title, key, configs in (("WAL push (PostgreSQL's archiver, queued segments)", "push", PUSH),
                                ("WAL fetch (archive recovery of a base backup)", "fetch", FETCH)):
        part = result[key]
        print(f"{title}, medians of {result['rounds']} rounds:")
        print(f"  {'configuration':<24} {'segments':>8} {'seconds':>8} {'seg/s':>7} {'(min-max)':>13}")
        for c in configs:
            m = part["median"].get(c)
            if m:
                print(f"  {c:<24} {m['segments']:>8} {m['seconds']:>8.2f} {m['segments_per_second']:>7.2f}"
                      f" {m['min_segments_per_second']:>6.2f}-{m['max_segments_per_second']:<6.2f}")
        for k, v in part["ratio"].items():
            extra = ""
            if k == "ours_async_s3_over_cp_local":
                extra = f"  {'meets' if v >= TARGET_OF_CP else 'misses'} the target (>= {TARGET_OF_CP})"
            print(f"  rate {k:<44} {v:.3f}{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (each runs every configuration)")
    ap.add_argument("--segments", type=int, default=32, help="segments queued per push run (>= 32 for issue 5)")
    ap.add_argument("--skip-fetch", action="store_true", help="push only")
    ap.add_argument("--reference-rounds", type=int, default=1,
                    help="rounds that also run the reference configurations (push ours_sync_s3; fetch cp_local, "
                         "pgbackrest_get_s3)")
    ap.add_argument("--only", default="", help="comma-separated push/fetch configurations (development)")
    h.add_s3_argument(ap)
    ap.add_argument("--out", default=None, help="result file (default bench/results/wal.json; wal-rgw.json with "
                                                  "--s3 rgw)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be 1..20")
    if not 2 <= args.segments <= 256:
        ap.error("--segments must be 2..256")
    only = {c for c in args.only.split(",") if c}
    push_configs = tuple(c for c in PUSH if not only or c in only)
    fetch_configs = () if args.skip_fetch else tuple(c for c in FETCH if not only or c in only)
    h.require_root_or_postgres()
    h.install_signal_handlers()
    bench = Bench(args.segments, args.s3)
    started = time.monotonic()
    push_runs: list[dict] = []
    fetch_runs: list[dict] = []
    fetch_source: dict = {}
    ceiling: dict = {}
    try:
        bench.setup()
        # the segments every run archives, and the fetch source; also warms every command (page cache, Python
        # imports, pgBackRest) before timing
        fetch_source = bench.prepare_fetch()
        for rnd in range(args.rounds):
            k = rnd % len(push_configs)
            for c in push_configs[k:] + push_configs[:k]:
                if c in REFERENCE_PUSH and rnd >= args.reference_rounds:
                    continue
                r = bench.push(c)
                push_runs.append({"round": rnd + 1, "config": c, **r})
                log(f"push  round {rnd + 1}/{args.rounds} {c:<24} {r['segments']} seg {r['seconds']:6.2f} s "
                    f"{r['segments_per_second']:6.2f} seg/s (lz4 ratio {r['compression_ratio']})")
        for rnd in range(args.rounds if fetch_configs else 0):
            k = rnd % len(fetch_configs)
            for c in fetch_configs[k:] + fetch_configs[:k]:
                if c in REFERENCE_FETCH and rnd >= args.reference_rounds:
                    continue
                r = bench.fetch(c)
                fetch_runs.append({"round": rnd + 1, "config": c, **r})
                log(f"fetch round {rnd + 1}/{args.rounds} {c:<24} {r['segments']} seg {r['seconds']:6.2f} s "
                    f"{r['segments_per_second']:6.2f} seg/s")
        ours_stored = [r["stored_bytes"] / r["segments"] for r in push_runs if r["config"] == "ours_async_s3"]
        if ours_stored:
            ceiling = bench.s3_put_ceiling(int(statistics.median(ours_stored)))
            log(f"S3 endpoint ceiling: {ceiling['objects']} PUTs of {ceiling['object_bytes'] / 1e6:.1f} MB, "
                f"{ceiling['threads']} threads: {ceiling['objects_per_second']} objects/s")
        vers = versions(args.s3)
    finally:
        bench.teardown()
    push_med = medians(push_runs, PUSH)
    fetch_med = medians(fetch_runs, FETCH)
    push_ratio, push_per_round = h.paired_ratios(push_runs, push_med, PUSH_PAIRS, "segments_per_second")
    if ceiling and "ours_async_s3" in push_med:
        push_ratio["ours_async_s3_over_s3_put_ceiling"] = round(
            push_med["ours_async_s3"]["segments_per_second"] / ceiling["objects_per_second"], 3)
    fetch_ratio, fetch_per_round = h.paired_ratios(fetch_runs, fetch_med, FETCH_PAIRS, "segments_per_second")
    result = {
        "benchmark": "wal",
        "what": "WAL archiving as PostgreSQL's archiver drives it (>= 32 segments queued while archiving was "
                "paused, then the archive_command set and reloaded; timed until no .ready file is left) and WAL "
                "fetch during archive recovery of a base backup (timed from pg_ctl start until postmaster.pid "
                "says ready: recovery ended, promoted), immersiverse-dr-wal vs pgBackRest vs cp, to "
                f"{h.S3_WHAT[args.s3]}; configurations interleaved per round (order rotating), medians",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": h.machine(),
        "s3": args.s3,
        "versions": vers,
        "rounds": args.rounds,
        "reference_rounds": args.reference_rounds,
        "segment_bytes": SEG,
        "segments_queued_per_push_run": args.segments,
        "wal_content": "generated once per run: heap inserts into an unindexed table of rows (int, bigint, text of "
                       "two md5 hex digests) copied from a 100000-row random pool (10 MB, beyond lz4's 64 KB "
                       "window), ended by pg_switch_wal; every push run archives these same segments again (their "
                       ".done status renamed back to .ready while archiving is paused; each tool's repository "
                       "emptied between runs, so every push is a real upload); lz4 compresses them by the "
                       "compression_ratio shown (stored bytes / 16 MiB per segment)",
        "ours_options": {**OURS_OPTIONS, "push_async": "ours_async_s3 true, ours_sync_s3 false"},
        "pgbackrest_options": "compress-type=lz4; async: archive-async=y process-max=2 spool-path (push and get)",
        "target_push_rate_of_cp": TARGET_OF_CP,
        "push": {"runs": push_runs, "median": push_med, "ratio": push_ratio, "ratio_per_round": push_per_round},
        "s3_put_ceiling": ceiling,
        "fetch": {"source": fetch_source, "runs": fetch_runs, "median": fetch_med, "ratio": fetch_ratio,
                  "ratio_per_round": fetch_per_round},
        "processes_left_running_after_runs": bench.leftovers,
        "wall_seconds": round(time.monotonic() - started, 1),
        "notes": [
            "ratios are of segments/s (higher is better for the first named)",
            ("S3 is moto's server (the lab's S3 software) over HTTPS with a self-signed certificate that both tools "
             "verify; it is a slow, pure-Python S3 (per-request cost and body handling dominate), so the S3 figures "
             "compare the tools against this endpoint, not against AWS S3") if args.s3 == "moto" else h.RGW_NOTE,
            "fetch seconds include PostgreSQL's start-up and the replay itself (the cp_local row is that floor)",
            "times are wall clock on a shared 2-core machine; compare ratios and medians, not single runs",
        ],
    }
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=2) + "\n")
    else:
        out = h.write_result(h.result_name("wal", args.s3), result)
    print_summary(result)
    log(f"wrote {out} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; every process it started was stopped")
    except h.BenchError as exc:
        sys.exit(f"bench: {exc}")
