"""Benchmark: restore of the same base backup, and a point-in-time recovery, by the collection and by pgBackRest.

Issue 6: restore of the same >= 1 GB backup (the harness's pgbench scale-120 cluster, 1.9 GB) by our engine
(what the restore role runs: _restore.plan, then _restore.prepare_data_dir, which fetches the backup from the
repository and checks every object's stored sha256 and every file's manifest checksum while extracting) against
`pgbackrest restore` (process-max 2), and a PITR replaying >= 32 WAL segments with our fetch path
(immersiverse-dr-wal fetch, the installed wrapper) against pgBackRest's archive-get, from the same S3 endpoint.
Target: at most 0.8 of pgBackRest's time.

Part 1, restore (the data directory only: PostgreSQL is not started). Configurations, interleaved per round (the
order rotates by one every round):

    ours_s3              plan + prepare_data_dir from an S3 repository (moto's server over HTTPS, or with --s3 rgw
                         the running lab's Ceph RGW over HTTPS)
    pgbackrest_s3        pgbackrest restore --repo=2 (S3, the same endpoint), process-max=2, into an empty directory
    ours_local           the same as ours_s3 from a local repository
    pgbackrest_local     pgbackrest restore --repo=1 (posix)
    naive_lz4_tar_local  reference: `lz4 -dc base.tar.lz4 | tar -x` (and pg_wal.tar.lz4 into pg_wal) of the very
                         pg_basebackup tar files our local repository holds: no checksum of any kind

Each run is timed from the command's start until it returns with the data directory complete (``seconds``); then
the dirty pages are flushed (`sync`, timed apart: ``sync_seconds``). pgBackRest fsyncs every file it restores, ours
and tar do not (PostgreSQL fsyncs the whole data directory when it starts from a backup), so ``durable_seconds``
= seconds + sync_seconds is the like-for-like clock and the headline ratio; both are reported. Before each run,
untimed: the target removed and everything flushed (`sync`), so no run pays for the previous one's writeback.

Part 2, PITR (bench/wal.py's fetch set-up, reused: a small cluster of its own, a base backup taken with
pg_basebackup -X none, then >= --segments segments of real WAL archived by cp, ours and pgBackRest to their own
repositories on one S3 endpoint). One run restores a copy of the base backup, writes recovery.signal, the
restore_command under test and recovery_target_lsn (the middle of the second-to-last generated segment,
recovery_target_action promote, hot_standby off), and times from `pg_ctl start` until postmaster.pid says "ready"
(the target reached, the server promoted); the log must show "recovery stopping" and every segment up to the
target restored:

    ours_fetch_s3            immersiverse-dr-wal fetch %f %p (verified, concurrency 4), the spool warmed from the
                             first segment 16 deep before PostgreSQL starts, as the restore role does
    pgbackrest_get_s3        pgbackrest archive-get %f %p (what a restore writes by default)
    pgbackrest_get_async_s3  the same with archive-async=y, process-max=2 (prefetch)
    cp_local                 reference, first round only: cp from a directory (start-up and replay floor)

Writes bench/results/restore.json (restore-rgw.json with --s3 rgw, so the moto figures stay comparable run to
run): date, machine, versions (Ceph's with --s3 rgw), which S3 it was, every run, medians, ratios ours/pgBackRest
(paired within each round too).

    sudo .venv/bin/python bench/restore.py [--rounds 3] [--pitr-rounds 2] [--segments 34] [--skip-pitr]
                                           [--s3 moto|rgw]

Everything lives under /var/tmp/immersiverse-dr-bench/restore (its own moto server, pgBackRest stanza and
repositories, restore targets) and /var/tmp/immersiverse-dr-bench/wal (the PITR part), both removed at the end; with
--s3 rgw (the lab up) the S3 repositories are a fresh bucket on the lab's bench gateway per part instead of the moto
server, deleted at the end. The pgbench cluster under /var/tmp/immersiverse-dr-bench/pg is shared with backup.py
(built once, ~1 min, kept). Every process the run starts is stopped at the end, on failure and on
Ctrl-C/SIGTERM/SIGHUP; a run killed with SIGKILL is cleaned up by the next.
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
import wal  # noqa: E402

sys.path.insert(0, str(h.REPO / ".collections"))

RR = h.ROOT / "restore"
RESTORE = ("ours_s3", "pgbackrest_s3", "ours_local", "pgbackrest_local", "naive_lz4_tar_local")
PITR = ("ours_fetch_s3", "pgbackrest_get_s3", "pgbackrest_get_async_s3", "cp_local")
REFERENCE_PITR = {"cp_local"}
TARGET_RATIO = 0.8  # issue 6: at most 0.8 of pgBackRest's time
MIB = 1024 * 1024
T0 = time.monotonic()


def log(msg: str) -> None:
    h.log(f"{time.monotonic() - T0:6.1f}s {msg}")


def tree_size(path: Path) -> tuple[int, int]:
    """(regular files, bytes) under path."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            size += st.st_size
    return files, size


def flush() -> float:
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


# -- part 1: restore ---------------------------------------------------------------------------------------------------
class RestoreBench:
    def __init__(self, scale: int, s3: str = "moto"):
        self.cluster = h.Cluster(scale)
        self.s3 = h.make_s3(s3, RR)
        self.pgbr = h.PgBackRest(self.cluster, self.s3, root=RR)
        self.ours_dir = RR / "ours"
        self.target = RR / "target"
        self.repos: dict = {}
        self.backups: dict = {}
        self.naive_files: dict = {}

    def setup(self) -> dict:
        self.cluster.stop_leftover()
        h.reap_leftovers(RR)
        info = self.cluster.ensure_built()
        shutil.rmtree(RR, ignore_errors=True)
        RR.mkdir(parents=True)
        RR.chmod(0o755)
        self.s3.start()
        log(f"S3 endpoint ({self.s3.kind}, HTTPS) at {self.s3.endpoint_url}, bucket {self.s3.bucket}")
        self.cluster.port = h.free_port()
        self.pgbr.prepare()
        self.pgbr.cmd("stanza-create", "--no-online", timeout=300)
        self.cluster.start({"wal_level": "replica", "max_wal_senders": 10, "archive_mode": "on",
                            "archive_command": self.pgbr.archive_command, "archive_timeout": 0})
        try:
            self.pgbr.cmd("check", timeout=300)
            self._take_backups()
        finally:
            self.cluster.stop()  # the restores need no running server
        return info

    def _take_backups(self) -> None:
        from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
        from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
        from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
        from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec

        (self.ours_dir / "staging").mkdir(parents=True)
        conn = pg_connection.connect(self.cluster.conn)
        try:
            identity = backup_catalog.cluster_identity(conn)
        finally:
            conn.close()
        self.repos = {
            "ours_s3": repo_spec.open_repository(self.s3.repository_spec("ours")),
            "ours_local": repo_spec.open_repository({"type": "local", "path": str(self.ours_dir / "repo")}),
        }
        for config, repo in self.repos.items():
            t0 = time.monotonic()
            rec = backup_full.take_backup(repo, self.cluster.conn, identity, pg_bin=str(h.PG_BIN),
                                      staging_dir=str(self.ours_dir / "staging"), checkpoint="fast",
                                      compression="lz4", compression_location="server")
            self.backups[config] = {"id": rec["id"], "database_bytes": rec["database_bytes"],
                                    "stored_bytes": rec["stored_bytes"], "files": [f["name"] for f in rec["files"]]}
            log(f"our backup {rec['id']} into {config[5:]} in {time.monotonic() - t0:.1f} s "
                f"({rec['stored_bytes'] / 1e6:.0f} MB stored)")
        for repo_no, config in ((1, "pgbackrest_local"), (2, "pgbackrest_s3")):
            t0 = time.monotonic()
            self.pgbr.cmd(f"--repo={repo_no}", "backup", "--type=full", timeout=900)
            latest = self.pgbr.info(repo_no)["backup"][-1]
            self.backups[config] = {"id": latest["label"], "database_bytes": latest["info"]["size"],
                                    "stored_bytes": latest["info"]["repository"]["delta"]}
            log(f"pgBackRest backup {latest['label']} into repo{repo_no} in {time.monotonic() - t0:.1f} s")
        backup_dir = self.ours_dir / "repo" / "backup" / self.backups["ours_local"]["id"]
        for name in self.backups["ours_local"]["files"]:
            if name.startswith("base.tar"):
                self.naive_files["base"] = backup_dir / name
            elif name.startswith("pg_wal.tar"):
                self.naive_files["pg_wal"] = backup_dir / name
        if not str(self.naive_files.get("base", "")).endswith(".lz4"):
            raise h.BenchError(f"our local backup holds no base.tar.lz4: {self.backups['ours_local']['files']}")

    def teardown(self) -> None:
        # every process first, then the repositories, stanza, S3 store and targets (~0.7 GB): nothing is reused
        for step in (self.cluster.stop, self.s3.stop, lambda: h.reap_leftovers(RR),
                     lambda: shutil.rmtree(RR, ignore_errors=True)):
            try:
                step()
            except Exception as exc:  # keep going: the other processes must stop too
                log(f"cleanup: {exc}")

    # -- one run ---------------------------------------------------------------------------------------------------
    def run(self, config: str) -> dict:
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir(parents=True)
        self.target.chmod(0o755)
        data = self.target / "data"
        if config.startswith("pgbackrest"):
            h.pg_dir(data, 0o700)  # pgBackRest restores into an existing, empty directory it owns
        flush()  # untimed: nothing of the previous run left to write back
        t0 = time.monotonic()
        extra = {}
        if config.startswith("ours"):
            extra = self._ours(config, data)
        elif config.startswith("pgbackrest"):
            self.pgbr.cmd(f"--repo={1 if config == 'pgbackrest_local' else 2}", f"--pg1-path={data}", "restore",
                          timeout=900)
        else:
            self._naive(data)
        seconds = time.monotonic() - t0
        sync_seconds = flush()
        files, size = tree_size(data)
        for must in ("PG_VERSION", "global/pg_control", "backup_label"):
            if not (data / must).exists():
                raise h.BenchError(f"{config}: the restored directory has no {must}")
        shutil.rmtree(self.target, ignore_errors=True)  # untimed
        return {"seconds": round(seconds, 3), "sync_seconds": round(sync_seconds, 3),
                "durable_seconds": round(seconds + sync_seconds, 3), "files": files, "restored_bytes": size,
                **extra}

    def _ours(self, config: str, data: Path) -> dict:
        from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir
        from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan

        repos = [self.repos[config]]
        t0 = time.monotonic()
        plan = restore_plan.plan(repos, {"type": "end"})
        plan_seconds = time.monotonic() - t0
        if plan["backup"]["id"] != self.backups[config]["id"]:
            raise h.BenchError(f"{config}: the plan chose {plan['backup']['id']}, not {self.backups[config]['id']}")
        done = restore_datadir.prepare_data_dir(repos, plan, str(data))
        if not done.get("restored"):
            raise h.BenchError(f"{config}: prepare_data_dir restored nothing: {done}")
        Path(restore_datadir.state_path(str(data))).unlink(missing_ok=True)  # untimed: the next run starts afresh
        return {"plan_seconds": round(plan_seconds, 3), "engine_seconds": done["summary"]["seconds"]}

    def _naive(self, data: Path) -> None:
        def extract(src: Path, dest: Path) -> str:
            reader = f"lz4 -dc '{src}' | tar -x -C '{dest}'" if src.name.endswith(".lz4") else \
                f"tar -x -C '{dest}' -f '{src}'"
            return f"mkdir -p '{dest}'; {reader}"

        script = "set -e; " + extract(self.naive_files["base"], data)
        if "pg_wal" in self.naive_files:  # pg_basebackup -X stream: pg_wal.tar (not compressed by the server)
            script += "; " + extract(self.naive_files["pg_wal"], data / "pg_wal")
        h.run(["sh", "-c", script], timeout=900)


# -- part 2: PITR ------------------------------------------------------------------------------------------------------
class PitrBench(wal.Bench):
    """bench/wal.py's fetch set-up; each run a point-in-time recovery to an LSN instead of the end of the archive."""

    target_lsn = ""
    expected: list[str] = []

    def choose_target(self) -> dict:
        name = self.names[-2]  # the last generated segment ends with the switch: aim inside a full one
        lsn = int(name[8:16], 16) * (1 << 32) + int(name[16:24], 16) * wal.SEG + wal.SEG // 2
        self.target_lsn = f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
        self.expected = [n for n in self.fetch_segments if n[8:] <= name[8:]]
        return {"recovery_target_lsn": self.target_lsn, "target_segment": name,
                "segments_to_restore": len(self.expected)}

    def fetch(self, config: str) -> dict:
        r = self.restore
        r.stop()
        shutil.rmtree(r.dir, ignore_errors=True)
        r.dir.mkdir(parents=True)
        r.dir.chmod(0o755)
        h.pg_dir(r.sock, 0o755)
        h.run(["cp", "-a", str(self.base), str(r.data)], timeout=120)
        command = self.fetch_command(config).replace("'", "''")
        (r.data / "archive.conf").write_text(
            f"archive_mode = off\nhot_standby = off\nrestore_command = '{command}'\n"
            f"recovery_target_lsn = '{self.target_lsn}'\nrecovery_target_action = 'promote'\n")
        (r.data / "recovery.signal").touch()
        for f in ("archive.conf", "recovery.signal"):
            h.chown_pg(r.data / f)
        r.port = h.free_port()
        t0 = time.monotonic()
        warm = 0.0
        if config.startswith("ours"):  # as the restore role does: the plan knows the first segment
            h.run(["runuser", "-u", "postgres", "--", str(self.ours["fetch"].wrapper), "prefetch",
                   min(self.expected), "--depth", "16", "--absent-history", "00000002.history"], timeout=60)
            warm = time.monotonic() - t0
        r.start_nowait({"unix_socket_directories": str(r.sock)})
        seconds = r.wait_ready(t0, timeout=600)
        text = r.logfile.read_text(errors="replace")
        r._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", check=False)
        (h.ROOT / f"pitr-{config}.log").write_text(text)  # the last round's, for a closer look
        restored = sorted({line.split('restored log file "', 1)[1][:24] for line in text.splitlines()
                           if 'restored log file "' in line and len(line.split('restored log file "', 1)[1]) > 24})
        stopping = [line.split("LOG:", 1)[-1].strip() for line in text.splitlines() if "recovery stopping" in line]
        killed = (self.pgbr["fetch"].reset() if config.startswith("pgbackrest")
                  else self.ours["fetch"].reset() if config.startswith("ours") else [])
        missing = sorted(set(self.expected) - set(restored))
        if missing or not stopping:
            raise h.BenchError(f"{config}: {len(missing)} segments not restored ({missing[:3]}), "
                               f"stopped at the target: {bool(stopping)}; log: {text[-1500:]}")
        return {"segments": len(restored), "seconds": round(seconds, 3),
                "segments_per_second": round(len(restored) / seconds, 2), "stopped": stopping[-1],
                "processes_left_running": len(killed), "prefetch_call_seconds": round(warm, 3),
                **restore_gaps(text)}


def restore_gaps(text: str) -> dict:
    """From the server log's timestamps (log_line_prefix '%m ...'): seconds from the start of archive recovery to
    the first restored segment, and between consecutive restored segments (fetch wait + replay of one segment)."""
    def stamp(line: str) -> float | None:
        try:
            return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        except ValueError:
            return None

    start = next((stamp(x) for x in text.splitlines() if "starting point-in-time recovery" in x
                  or "starting archive recovery" in x), None)
    times = [t for t in (stamp(x) for x in text.splitlines() if 'restored log file "' in x) if t is not None]
    if not times:
        return {}
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    first = next((stamp(x) for x in text.splitlines() if stamp(x) is not None), None)
    ready = next((stamp(x) for x in text.splitlines() if "ready to accept connections" in x), None)
    out = {"first_segment_after_recovery_start": round(times[0] - start, 3) if start else None,
           "log_start_to_recovery_start": round(start - first, 3) if start and first else None,
           "last_segment_to_ready": round(ready - times[-1], 3) if ready else None}
    if gaps:
        out |= {"gap_median": round(statistics.median(gaps), 3), "gap_max": round(max(gaps), 3)}
    return out


# -- reporting ---------------------------------------------------------------------------------------------------------
def versions(s3: str) -> dict:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, cwd=h.REPO, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    sys_py = out([wal.SYSTEM_PYTHON, "-c", "import sys, boto3, lz4; "
                  "print(sys.version.split()[0], boto3.__version__, lz4.__version__)"]).split()
    return {
        "postgresql": h.pg_version(),
        "pgbackrest": out([h.PGBACKREST, "version"]),
        "python": platform.python_version(),
        "boto3": h.package_version("boto3"),
        "botocore": h.package_version("botocore"),
        **h.s3_versions(s3),
        "lz4": h.package_version("lz4"),
        "crc32c": h.package_version("crc32c"),
        "lz4_cli": out(["lz4", "--version"]).split(",")[0],
        "tar": out(["tar", "--version"]).splitlines()[0] if out(["tar", "--version"]) else "unknown",
        "wal_commands_python": dict(zip(("python", "boto3", "lz4"), sys_py, strict=False)),
        "collection_commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "engine_uncommitted": bool(out(["git", "status", "--porcelain", "--", "plugins/module_utils/_restore",
                                        "plugins/module_utils/_repo", "plugins/module_utils/_backup",
                                        "plugins/module_utils/_wal"])),
    }


def medians(runs: list[dict], configs: tuple, keys: tuple) -> dict:
    med = {}
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        if not rs:
            continue
        m = {"runs": len(rs)}
        for k in keys:
            vals = [r[k] for r in rs if k in r]
            if vals:
                m[k] = round(statistics.median(vals), 3)
                m["min_" + k] = min(vals)
                m["max_" + k] = max(vals)
        med[c] = m
    return med


RESTORE_PAIRS = {
    "ours_s3_over_pgbackrest_s3": ("ours_s3", "pgbackrest_s3"),
    "ours_local_over_pgbackrest_local": ("ours_local", "pgbackrest_local"),
    "naive_lz4_tar_local_over_pgbackrest_local": ("naive_lz4_tar_local", "pgbackrest_local"),
    "ours_local_over_naive_lz4_tar_local": ("ours_local", "naive_lz4_tar_local"),
}
PITR_PAIRS = {
    "ours_fetch_s3_over_pgbackrest_get_s3": ("ours_fetch_s3", "pgbackrest_get_s3"),
    "ours_fetch_s3_over_pgbackrest_get_async_s3": ("ours_fetch_s3", "pgbackrest_get_async_s3"),
    "ours_fetch_s3_over_cp_local": ("ours_fetch_s3", "cp_local"),
}


def print_summary(result: dict) -> None:
    part = result.get("restore")
    if part:
        print(f"\nrestore of a {part['backups']['ours_local']['database_bytes'] / 1e9:.2f} GB backup, medians of "
              f"{result['rounds']} rounds:")
        print(f"  {'configuration':<22} {'seconds':>8} {'+sync':>7} {'durable':>8} {'(min-max)':>15} {'MiB/s':>7}")
        for c in RESTORE:
            m = part["median"].get(c)
            if m:
                mib_s = part["backups"]["ours_local"]["database_bytes"] / MIB / m["durable_seconds"]
                print(f"  {c:<22} {m['seconds']:>8.2f} {m['sync_seconds']:>7.2f} {m['durable_seconds']:>8.2f} "
                      f"{m['min_durable_seconds']:>7.2f}-{m['max_durable_seconds']:<7.2f} {mib_s:>7.1f}")
        for k, v in part["ratio_durable"].items():
            flag = (f"  {'meets' if v <= TARGET_RATIO else 'misses'} the target"
                    if k.startswith("ours") and "pgbackrest" in k else "")
            print(f"  time {k:<44} {v:.3f} (durable) {part['ratio'].get(k, 0):.3f} (files written){flag}")
    part = result.get("pitr")
    if part:
        print(f"\nPITR to {part['source']['recovery_target_lsn']} ({part['source']['segments_to_restore']} segments "
              f"restored and replayed), medians of {result['pitr_rounds']} rounds:")
        for c in PITR:
            m = part["median"].get(c)
            if m:
                print(f"  {c:<26} {m['seconds']:>8.2f} s ({m['min_seconds']:.2f}-{m['max_seconds']:.2f}) "
                      f"{m['segments_per_second']:>6.2f} seg/s")
        for k, v in part["ratio"].items():
            flag = f"  {'meets' if v <= TARGET_RATIO else 'misses'} the target" if "pgbackrest" in k else ""
            print(f"  time {k:<44} {v:.3f}{flag}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed restore rounds (each runs every configuration)")
    ap.add_argument("--pitr-rounds", type=int, default=2, help="timed PITR rounds")
    ap.add_argument("--segments", type=int, default=34, help="WAL segments generated for the PITR (>= 33: the "
                                                               "target is in the second-to-last)")
    ap.add_argument("--scale", type=int, default=120, help="pgbench scale of the database (built once)")
    ap.add_argument("--skip-pitr", action="store_true", help="the restore part only")
    ap.add_argument("--skip-restore", action="store_true", help="the PITR part only")
    ap.add_argument("--only", default="", help="comma-separated configurations (development)")
    h.add_s3_argument(ap)
    ap.add_argument("--out", default=None, help="result file (default bench/results/restore.json; restore-rgw.json "
                                                  "with --s3 rgw)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.pitr_rounds <= 20:
        ap.error("--rounds and --pitr-rounds must be 1..20")
    if not 10 <= args.scale <= 2000:
        ap.error("--scale must be 10..2000")
    if not 3 <= args.segments <= 256:
        ap.error("--segments must be 3..256")
    only = {c for c in args.only.split(",") if c}
    restore_configs = () if args.skip_restore else tuple(c for c in RESTORE if not only or c in only)
    pitr_configs = () if args.skip_pitr else tuple(c for c in PITR if not only or c in only)
    h.require_root_or_postgres()
    h.install_signal_handlers()
    started = time.monotonic()
    result = {
        "benchmark": "restore",
        "what": "restore of one base backup of a pgbench database into an empty data directory (PostgreSQL not "
                "started) by the collection's engine (plan + prepare_data_dir: fetch, stored-sha256 and manifest "
                "checks while extracting) and by pgbackrest restore (process-max=2), from a local repository and "
                f"from one S3 endpoint ({h.S3_WHAT[args.s3]}); and a point-in-time recovery "
                "(recovery_target_lsn, >= 32 segments restored and replayed) with immersiverse-dr-wal fetch vs "
                "pgbackrest archive-get from that endpoint; configurations interleaved per round, medians",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": h.machine(),
        "s3": args.s3,
        "target_ratio": TARGET_RATIO,
        "rounds": args.rounds,
        "pitr_rounds": args.pitr_rounds,
        "pgbench_scale": args.scale,
    }
    if restore_configs:
        bench = RestoreBench(args.scale, args.s3)
        runs: list[dict] = []
        try:
            info = bench.setup()
            for rnd in range(args.rounds):
                k = rnd % len(restore_configs)
                for c in restore_configs[k:] + restore_configs[:k]:
                    r = bench.run(c)
                    runs.append({"round": rnd + 1, "config": c, **r})
                    log(f"restore round {rnd + 1}/{args.rounds} {c:<20} {r['seconds']:7.2f} s "
                        f"+ sync {r['sync_seconds']:5.2f} s ({r['files']} files, {r['restored_bytes'] / 1e9:.2f} GB)")
        finally:
            bench.teardown()
        med = medians(runs, RESTORE, ("seconds", "sync_seconds", "durable_seconds", "plan_seconds",
                                      "engine_seconds", "files", "restored_bytes"))
        ratio, per_round = h.paired_ratios(runs, med, RESTORE_PAIRS, "seconds")
        ratio_durable, per_round_durable = h.paired_ratios(runs, med, RESTORE_PAIRS, "durable_seconds")
        result["restore"] = {
            "cluster": {k: info[k] for k in ("built", "database_bytes")},
            "backups": bench.backups | {"naive_source": {k: str(v) for k, v in bench.naive_files.items()}},
            "runs": runs, "median": med,
            "ratio_durable": ratio_durable, "ratio_durable_per_round": per_round_durable,
            "ratio": ratio, "ratio_per_round": per_round,
        }
    if pitr_configs:
        pitr = PitrBench(args.segments, args.s3)
        runs = []
        try:
            pitr.setup()
            source = pitr.prepare_fetch()
            source |= pitr.choose_target()
            if source["segments_to_restore"] < 32:
                raise h.BenchError(f"only {source['segments_to_restore']} segments before the target: raise "
                                   "--segments")
            for rnd in range(args.pitr_rounds):
                k = rnd % len(pitr_configs)
                for c in pitr_configs[k:] + pitr_configs[:k]:
                    if c in REFERENCE_PITR and rnd:
                        continue
                    r = pitr.fetch(c)
                    runs.append({"round": rnd + 1, "config": c, **r})
                    log(f"pitr round {rnd + 1}/{args.pitr_rounds} {c:<24} {r['segments']} seg {r['seconds']:6.2f} s")
        finally:
            pitr.teardown()
            shutil.rmtree(wal.W, ignore_errors=True)  # its stanzas, repositories and clusters (rebuilt every run)
        med = medians(runs, PITR, ("seconds", "segments_per_second", "segments"))
        ratio, per_round = h.paired_ratios(runs, med, PITR_PAIRS, "seconds")
        result["pitr"] = {"source": source, "ours_options": wal.OURS_OPTIONS,
                          "pgbackrest_options": "compress-type=lz4; async: archive-async=y process-max=2",
                          "runs": runs, "median": med, "ratio": ratio, "ratio_per_round": per_round}
    result["versions"] = versions(args.s3)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["notes"] = [
        "restore: 'seconds' is until the command returned with the data directory complete; 'durable_seconds' adds "
        "the flush of what it left dirty (sync): pgBackRest fsyncs each file it restores, ours and tar do not "
        "(PostgreSQL fsyncs the data directory when it starts from a backup), so the durable ratio is the "
        "like-for-like one",
        "ours runs in the benchmark's process (the venv's Python, boto3, lz4) as root; pgBackRest as the postgres "
        "user; the PITR restore_command runs as PostgreSQL's postgres user with the system python3 (as the "
        "wal_archive role installs it)",
        ("S3 is moto's server (the lab's S3 software) over HTTPS with a self-signed certificate both tools verify: "
         "a slow, pure-Python S3 (~15 ms a request, slow bodies)" if args.s3 == "moto" else h.RGW_NOTE)
        + "; pgBackRest reads one object per database file (~1000), ours one tar archive per tablespace plus "
        "pg_wal; compare the tools on the same endpoint",
        "PITR seconds include PostgreSQL's start-up and the replay itself (cp_local is that floor)",
        "times are wall clock on a shared 2-core machine; compare ratios and medians, not single runs",
    ]
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    else:
        out = h.write_result(h.result_name("restore", args.s3), json.loads(json.dumps(result, default=str)))
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
