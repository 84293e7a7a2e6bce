"""Benchmark: RPO and RTO of the lab drill, over several drills in one run.

Runs playbooks/drill.yml N times on the running lab (each fails over to the next region) and writes
bench/results/drill.json: per drill the RPO, the RTO and its split (failure -> promoted -> first acknowledged
write), the writes acknowledged and lost; medians; and the ratios to the seed plan's objectives (RPO 300 s,
RTO 900 s). Absolute times on shared machines are noisy: compare runs by their ratios and medians.

    python bench/drill.py [--drills 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = {"rpo_seconds": 300.0, "rto_seconds": 900.0}


def sh(*argv: str) -> str:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def versions() -> dict:
    return {
        "postgresql": sh("podman", "exec", "dr-lab-primary-db", "/usr/lib/postgresql/15/bin/postgres", "--version"),
        "ansible_core": sh(str(REPO / ".venv/bin/ansible"), "--version").splitlines()[0:1],
        "podman": sh("podman", "--version"),
    }


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts)


def run_drill(rate: int) -> dict:
    before = {p.name for p in (REPO / ".lab" / "drills").glob("*")} if (REPO / ".lab" / "drills").exists() else set()
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PYTHONPATH": str(REPO / "lab")}
    proc = subprocess.run([str(REPO / ".venv/bin/ansible-playbook"), "playbooks/drill.yml", "-e", f"drill_rate={rate}"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit("drill failed; see the output above")
    new = sorted({p.name for p in (REPO / ".lab" / "drills").glob("*")} - before)
    report = json.loads((REPO / ".lab" / "drills" / new[-1] / "report.json").read_text())
    m = report["measurement"]
    ph = {k: parse(v) for k, v in report["phases"].items()}
    failure, promoted = ph["failure"], ph["promoted"]
    span = {"detect": ("failure", "detected"), "isolate": ("detected", "isolated"), "promote": ("isolated", "promoted")}
    phases = {name: round((ph[b] - ph[a]).total_seconds(), 3) for name, (a, b) in span.items()}
    # From the promotion's end to the generator's first acknowledged write in the new region.
    phases["first_write"] = round(report["rto_seconds"] - (promoted - failure).total_seconds(), 3)
    return {
        "drill_id": report["drill_id"],
        "failed_region": report["failed_region"],
        "new_primary_region": report["new_primary_region"],
        "rpo_seconds": report["rpo_seconds"],
        "rto_seconds": report["rto_seconds"],
        "failure_to_restore_phase_done_seconds": round((promoted - failure).total_seconds(), 3),
        "phase_seconds": phases,
        "acked_writes": m["acked"],
        "lost_writes": m["missing"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drills", type=int, default=3)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "drill.json"))
    args = ap.parse_args()
    if not 1 <= args.drills <= 20:
        ap.error("--drills must be 1..20")
    runs = []
    for i in range(args.drills):
        print(f"[bench] drill {i + 1}/{args.drills} ...", flush=True)
        runs.append(run_drill(args.rate))
        print(f"[bench]   RPO {runs[-1]['rpo_seconds']} s, RTO {runs[-1]['rto_seconds']} s", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in ("rpo_seconds", "rto_seconds",
                                                            "failure_to_restore_phase_done_seconds")}
    med["phase_seconds"] = {k: statistics.median(r["phase_seconds"][k] for r in runs) for k in runs[0]["phase_seconds"]}
    result = {
        "benchmark": "drill",
        "what": "region failure (database host killed) under write traffic on the local lab; RPO/RTO from the "
                "generator's journal of acknowledged writes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "rate_writes_per_second": args.rate,
        "runs": runs,
        "median": med,
        "objectives": OBJECTIVES,
        "ratio_to_objective": {k: round(med[k] / OBJECTIVES[k], 5) for k in OBJECTIVES},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": med, "ratio_to_objective": result["ratio_to_objective"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
