"""Benchmark: a full base backup of the same pgbench database, by the collection's engine and by pgBackRest.

Five configurations, interleaved in each round (the order rotates by one every round), after one untimed warm-up
of each so every run reads a hot cache:

    ours_s3            _backup.take_backup into an S3 repository (moto's server over HTTPS, or with --s3 rgw the
                       running lab's Ceph RGW over HTTPS), verified while streaming
    pgbackrest_local   pgbackrest backup --type=full to repo1, a posix repository (process-max=2, compress-type=lz4,
                       start-fast=y)
    pgbackrest_s3      the same to repo2, the same S3 endpoint as ours
    ours_local         _backup.take_backup into a local repository
    pg_basebackup_local  reference, the floor under ours: bare `pg_basebackup -Ft -X stream --compress=client-lz4
                       -c fast` into a local directory (no repository, no verification, no catalog)

Each run is timed from the command's start to its end (pgBackRest: the whole `pgbackrest backup` process, archive
check and its end-of-backup expire pass included; ours: the take_backup call, manifest and WAL verification
included). Between runs, untimed, the backup just taken is removed (ours: remove_backup; pgBackRest: expire --set
of the older full backup), so repositories and the S3 store do not grow. Writes bench/results/backup.json
(backup-rgw.json with --s3 rgw, so the moto figures stay comparable run to run): date, machine, versions (Ceph's
with --s3 rgw), which S3 it was, every run, medians, throughput, sizes and the time ratios ours/pgBackRest.

    sudo .venv/bin/python bench/backup.py [--rounds 5] [--scale 120] [--s3 moto|rgw]

The cluster and everything else live under /var/tmp/immersiverse-dr-bench (see harness.py); the pgbench database
is built on the first run (~1 min at scale 120) and reused. With --s3 rgw the lab must be up (make lab-up): the
S3 repositories go to a fresh bucket on its bench gateway, deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

sys.path.insert(0, str(h.REPO / ".collections"))

CONFIGS = ("ours_s3", "pgbackrest_local", "pgbackrest_s3", "ours_local", "pg_basebackup_local")
TARGET_RATIO = 0.5  # issue 3: our backup time at most half of pgBackRest's, verification included
MIB = 1024 * 1024


class Bench:
    def __init__(self, scale: int, s3: str = "moto"):
        self.cluster = h.Cluster(scale)
        self.s3 = h.make_s3(s3, h.ROOT)
        self.pgbr = h.PgBackRest(self.cluster, self.s3)
        self.ours_dir = h.ROOT / "ours"
        self.identity: dict | None = None
        self.repos: dict = {}

    # -- set-up and tear-down --------------------------------------------------------------------------------------
    def setup(self) -> dict:
        self.cluster.stop_leftover()
        h.reap_leftovers()
        info = self.cluster.ensure_built()
        self.s3.start()
        log_ = h.log
        log_(f"S3 endpoint ({self.s3.kind}, HTTPS) at {self.s3.endpoint_url}, bucket {self.s3.bucket}")
        self.cluster.port = h.free_port()
        self.pgbr.prepare()
        # stanza-create before PostgreSQL starts archiving into the fresh repositories (offline: reads pg_control)
        self.pgbr.cmd("stanza-create", "--no-online", timeout=300)
        self.cluster.start({"wal_level": "replica", "max_wal_senders": 10, "archive_mode": "on",
                            "archive_command": self.pgbr.archive_command, "archive_timeout": 0})
        self.pgbr.cmd("check", timeout=300)  # archiving works: a WAL switch reaches both repositories
        shutil.rmtree(self.ours_dir, ignore_errors=True)
        (self.ours_dir / "staging").mkdir(parents=True)
        from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
        from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
        from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec

        conn = pg_connection.connect(self.cluster.conn)
        try:
            self.identity = backup_catalog.cluster_identity(conn)
        finally:
            conn.close()
        self.repos = {
            "ours_s3": repo_spec.open_repository(self.s3.repository_spec("ours")),
            "ours_local": repo_spec.open_repository({"type": "local", "path": str(self.ours_dir / "repo")}),
        }
        return info

    def teardown(self) -> None:
        for step in (self.cluster.stop, self.s3.stop):
            try:
                step()
            except Exception as exc:  # keep going: the other processes must stop too
                h.log(f"cleanup: {exc}")

    # -- one run ---------------------------------------------------------------------------------------------------
    def run(self, config: str) -> dict:
        if config.startswith("ours_"):
            return self._ours(config)
        if config == "pg_basebackup_local":
            return self._pg_basebackup()
        return self._pgbackrest(config, 1 if config == "pgbackrest_local" else 2)

    def _ours(self, config: str) -> dict:
        from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
        from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full

        repo = self.repos[config]
        t0 = time.monotonic()
        rec = backup_full.take_backup(repo, self.cluster.conn, self.identity, pg_bin=str(h.PG_BIN),
                                  staging_dir=str(self.ours_dir / "staging"), checkpoint="fast",
                                  compression="lz4", compression_location="server")
        seconds = time.monotonic() - t0
        backup_catalog.remove_backup(repo, rec["id"])  # untimed
        return {"seconds": round(seconds, 3), "engine_duration_seconds": rec["duration_seconds"],
                "database_bytes": rec["database_bytes"], "stored_bytes": rec["stored_bytes"],
                "verification": rec["verification"]["result"], "backup_id": rec["id"]}

    def _pg_basebackup(self) -> dict:
        target = h.ROOT / "floor" / "data"
        shutil.rmtree(target.parent, ignore_errors=True)
        target.parent.mkdir(parents=True)
        argv = [str(h.PG_BIN / "pg_basebackup"), "-D", str(target), "-F", "t", "-X", "stream", "-c", "fast",
                "--compress=client-lz4", "-h", str(self.cluster.sock), "-p", str(self.cluster.port), "-U",
                "postgres", "--no-password"]
        t0 = time.monotonic()
        h.run(argv, timeout=900)
        seconds = time.monotonic() - t0
        stored = sum(f.stat().st_size for f in target.iterdir())
        manifest = json.loads((target / "backup_manifest").read_text())
        shutil.rmtree(target.parent, ignore_errors=True)  # untimed
        return {"seconds": round(seconds, 3), "database_bytes": sum(f.get("Size", 0) for f in manifest["Files"]),
                "stored_bytes": stored}

    def _pgbackrest(self, config: str, repo: int) -> dict:
        t0 = time.monotonic()
        self.pgbr.cmd(f"--repo={repo}", "backup", "--type=full", timeout=900)
        seconds = time.monotonic() - t0
        backups = self.pgbr.info(repo).get("backup", [])
        latest = backups[-1]
        for old in backups[:-1]:  # untimed; pgBackRest refuses to expire the only full backup, so keep the latest
            self.pgbr.cmd(f"--repo={repo}", "expire", f"--set={old['label']}", timeout=600)
        return {"seconds": round(seconds, 3), "database_bytes": latest["info"]["size"],
                "stored_bytes": latest["info"]["repository"]["delta"], "backup_id": latest["label"]}


# -- reporting -------------------------------------------------------------------------------------------------------
def versions(bench: Bench) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=h.REPO, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    return {
        "postgresql": h.pg_version(),
        "pgbackrest": bench.pgbr.version(),
        "python": platform.python_version(),
        "boto3": h.package_version("boto3"),
        "botocore": h.package_version("botocore"),
        **h.s3_versions(bench.s3.kind),
        "lz4": h.package_version("lz4"),
        "crc32c": h.package_version("crc32c"),
        "psycopg2": h.package_version("psycopg2-binary"),
        "collection_commit": git("rev-parse", "--short", "HEAD"),
        "engine_uncommitted": bool(git("status", "--porcelain", "--", "plugins/module_utils/_backup",
                                       "plugins/module_utils/_repo")),
    }


def summarize(runs: list[dict]) -> dict:
    by = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    med = {}
    for c, rs in by.items():
        secs = statistics.median(r["seconds"] for r in rs)
        db = statistics.median(r["database_bytes"] for r in rs)
        stored = statistics.median(r["stored_bytes"] for r in rs)
        med[c] = {"seconds": round(secs, 3), "min_seconds": min(r["seconds"] for r in rs),
                  "max_seconds": max(r["seconds"] for r in rs), "runs": len(rs),
                  "database_bytes": int(db), "stored_bytes": int(stored),
                  "throughput_mib_s": round(db / MIB / secs, 1),
                  "compression_ratio": round(db / stored, 2) if stored else None}
    ratios = {
        "ours_s3_over_pgbackrest_s3": round(med["ours_s3"]["seconds"] / med["pgbackrest_s3"]["seconds"], 3),
        "ours_local_over_pgbackrest_local": round(med["ours_local"]["seconds"]
                                                  / med["pgbackrest_local"]["seconds"], 3),
        "ours_s3_over_pgbackrest_local": round(med["ours_s3"]["seconds"] / med["pgbackrest_local"]["seconds"], 3),
    }
    reference = {
        "pg_basebackup_local_over_pgbackrest_local": round(med["pg_basebackup_local"]["seconds"]
                                                           / med["pgbackrest_local"]["seconds"], 3),
        "ours_local_over_pg_basebackup_local": round(med["ours_local"]["seconds"]
                                                     / med["pg_basebackup_local"]["seconds"], 3),
    }
    # the same ratios within each round (paired): their spread says how much the noise moves the medians above
    rounds = sorted({r["round"] for r in runs})
    paired = {k: [] for k in ratios}
    for rnd in rounds:
        t = {r["config"]: r["seconds"] for r in runs if r["round"] == rnd}
        if all(c in t for c in ("ours_s3", "ours_local", "pgbackrest_s3", "pgbackrest_local")):
            paired["ours_s3_over_pgbackrest_s3"].append(t["ours_s3"] / t["pgbackrest_s3"])
            paired["ours_local_over_pgbackrest_local"].append(t["ours_local"] / t["pgbackrest_local"])
            paired["ours_s3_over_pgbackrest_local"].append(t["ours_s3"] / t["pgbackrest_local"])
    per_round = {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
                 for k, v in paired.items() if v}
    return {"median": med, "ratio": ratios, "ratio_per_round": per_round, "reference_ratio": reference}


def print_summary(result: dict) -> None:
    med, ratio = result["median"], result["ratio"]
    print()
    print(f"full backup of a {med['ours_local']['database_bytes'] / 1e9:.2f} GB pgbench database "
          f"(scale {result['pgbench_scale']}), medians of {result['rounds']} rounds:")
    print(f"  {'configuration':<20} {'seconds':>8} {'(min-max)':>15} {'MiB/s':>7} {'stored MB':>10}")
    for c in CONFIGS:
        m = med[c]
        print(f"  {c:<20} {m['seconds']:>8.2f} {m['min_seconds']:>7.2f}-{m['max_seconds']:<7.2f}"
              f" {m['throughput_mib_s']:>7.1f} {m['stored_bytes'] / 1e6:>10.1f}")
    print(f"ratios (ours / pgBackRest; target <= {TARGET_RATIO}):")
    for k, v in ratio.items():
        print(f"  {k:<36} {v:.3f}  {'meets' if v <= TARGET_RATIO else 'misses'} the target")
    for k, v in result["reference_ratio"].items():
        print(f"  {k:<42} {v:.3f}  (reference)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs the five configurations)")
    ap.add_argument("--scale", type=int, default=120, help="pgbench scale of the database (built once)")
    h.add_s3_argument(ap)
    ap.add_argument("--out", default=None, help="result file (default bench/results/backup.json; backup-rgw.json "
                                                  "with --s3 rgw)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be 1..20")
    if not 10 <= args.scale <= 2000:
        ap.error("--scale must be 10..2000")
    h.require_root_or_postgres()
    h.install_signal_handlers()
    bench = Bench(args.scale, args.s3)
    started = time.monotonic()
    runs: list[dict] = []
    try:
        info = bench.setup()
        h.log("warm-up: one untimed run of each configuration")
        for c in CONFIGS:
            bench.run(c)
        for rnd in range(args.rounds):
            order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
            for c in order:
                r = bench.run(c)
                runs.append({"round": rnd + 1, "config": c, **r})
                h.log(f"round {rnd + 1}/{args.rounds} {c:<19} {r['seconds']:7.2f} s")
        vers = versions(bench)
    finally:
        bench.teardown()
    result = {
        "benchmark": "backup",
        "what": "full base backup of one pgbench database (hot cache) by the collection's engine "
                "(pg_basebackup -Ft -X stream, client-lz4, fast checkpoint, streamed into the repository and "
                "verified against the manifest while streaming) and by pgBackRest (process-max=2, "
                "compress-type=lz4, start-fast=y, archive check on), to a local directory and to one S3 endpoint "
                f"({h.S3_WHAT[args.s3]}); configurations interleaved per round, medians",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": h.machine(),
        "s3": args.s3,
        "versions": vers,
        "pgbench_scale": args.scale,
        "cluster": {k: info[k] for k in ("built", "build_seconds", "database_bytes")},
        "rounds": args.rounds,
        "target_ratio": TARGET_RATIO,
        "runs": runs,
        **summarize(runs),
        "wall_seconds": round(time.monotonic() - started, 1),
        "notes": [
            ("S3 is moto's server (the lab's S3 software) over HTTPS with a self-signed certificate that both "
             "tools verify; it is a slow, pure-Python S3: per-request cost (~15 ms) and body decoding dominate "
             "S3 times, so the S3 figures compare the tools against this endpoint, not against AWS S3")
            if args.s3 == "moto" else h.RGW_NOTE,
            "pgBackRest writes one object per database file (~1000 here); ours writes a few tar archives",
            "times are wall clock on a shared 2-core machine; compare ratios and medians, not single runs",
        ],
    }
    out = Path(args.out) if args.out else h.write_result(h.result_name("backup", args.s3), result)
    if args.out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    h.log(f"wrote {out} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; every process it started was stopped")
    except h.BenchError as exc:
        sys.exit(f"bench: {exc}")
