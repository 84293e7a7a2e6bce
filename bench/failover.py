"""Benchmark: the RTO of failover.yml and the write unavailability of switchover.yml, on the running lab.

failover: N times, the serving region's database host is killed under write traffic and, at once, an operator's
`ansible-playbook playbooks/failover.yml -l <next region>` starts (the process start-up counts). RTO = the fault ->
the generator's first acknowledged write in the new region (its journal). The per-phase split comes from the run
report (start-up, lock, detect, isolate, promote, then the first write). Each failed region is rejoined with
rejoin.yml, so the regions take turns and the lab ends where it began.

switchover: N times, `switchover.yml -l <next region>` under write traffic. Write unavailability = the longest gap
in the journal's acknowledged writes during the run (a write that waited counts as unavailability), and the writes
lost (must be 0).

synchronous mode: the write latency the generator's clients see (each acknowledged write's latency_ms, from the
journal), with every region synchronous (ANY 1 of the other two, set by playbooks/synchronous.yml) against
asynchronous, in alternating rounds of the same length side by side, as a ratio (median and p95).

Writes bench/results/failover.json. Absolute times on shared machines are noisy; the medians and the targets
(failover RTO <= 5 s, switchover <= 3 s with 0 lost) are what to compare.

    python bench/failover.py [--runs 3] [--rate 100] [--baseline REV]

--baseline REV: the failovers alternate between this checkout and REV (a git worktree beside it, sharing the venv
and the lab), one run each in turn, so the two are compared side by side on the same machine at the same time:
failover.baseline holds REV's runs and ratio_to_baseline the median RTO of this checkout over REV's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drill import machine, versions  # noqa: E402  (same machine and version facts as the drill benchmark)

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
REGIONS = ["primary", "secondary", "tertiary"]
PORTS = {"primary": 15432, "secondary": 25432, "tertiary": 35432}
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PYTHONPATH": str(REPO / "lab"),
       "ANSIBLE_NOCOLOR": "1"}
TARGETS = {"failover_rto_seconds": 5.0, "switchover_unavailable_seconds": 3.0}


THIS_TREE = REPO


def use_tree(tree: Path) -> None:
    """Run the runbooks of this checkout or of the baseline's worktree (same venv, same lab)."""
    global REPO  # noqa: PLW0603 - every helper reads REPO for the playbooks and inventory it runs
    REPO = tree
    ENV.update(ANSIBLE_CONFIG=str(tree / "ansible.cfg"), PYTHONPATH=str(tree / "lab"))


@contextlib.contextmanager
def baseline_tree(rev: str):
    """A worktree of rev that runs with this checkout's venv and lab (its collection path points at itself)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "add", "--detach", "-q", str(tree), rev], check=True,
                   timeout=120)
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True, timeout=30,
                                capture_output=True, text=True).stdout.strip()
        (tree / ".venv").symlink_to(THIS_TREE / ".venv")
        (tree / ".lab").symlink_to(THIS_TREE / ".lab")
        coll = tree / ".collections" / "ansible_collections" / "immersiverse"
        coll.mkdir(parents=True)
        (coll / "dr").symlink_to(tree)
        yield tree, commit
    finally:
        use_tree(THIS_TREE)
        subprocess.run(["git", "-C", str(THIS_TREE), "worktree", "remove", "--force", str(tree)], check=False,
                       timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts)


def playbook(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout, check=False)


def runbook(name: str, region: str) -> subprocess.CompletedProcess:
    proc = playbook("-i", str(REPO / "inventories" / "lab"), str(REPO / "playbooks" / name), "-l", region)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"{name} -l {region} failed; see the output above")
    return proc


def report_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(Path(re.findall(r"run report: (\S+\.json)", proc.stdout)[-1]).read_text())


def layout() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**ENV, "MOLECULE_PROJECT_DIRECTORY": str(REPO), "MOLECULE_EPHEMERAL_DIRECTORY": tmp}
        proc = subprocess.run([str(BIN / "ansible-playbook"), str(REPO / "molecule" / "resources" / "layout.yml")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit("could not put the lab in its layout (region primary serves); see the output above")


class Traffic:
    """The workload generator with its journal, started and stopped around one measurement."""

    def __init__(self, rate: int, directory: Path):
        self.dir = directory
        self.journal = directory / "journal.jsonl"
        self.proc = subprocess.Popen([str(BIN / "python"), "-m", "drlab.generator", "--lab",
                                      f"--pgpassfile={REPO / '.lab' / 'pgpass'}", f"--journal={self.journal}",
                                      f"--summary-json={directory / 'generator.json'}", "--duration=600",
                                      f"--rate={rate}"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(3)

    def stop(self, region: str, failure: dt.datetime) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        out = subprocess.run([str(BIN / "python"), "-m", "drlab.compare", f"--journal={self.journal}",
                              f"--dsn=host=127.0.0.1 port={PORTS[region]} user=auth_app dbname=authdb",
                              f"--failure-time={failure.isoformat()}", "--json"],
                             cwd=REPO, env={**ENV, "PGPASSFILE": str(REPO / ".lab" / "pgpass")}, capture_output=True,
                             text=True, timeout=300, check=True).stdout
        return json.loads(out)

    def latencies(self) -> list[float]:
        """Stop the generator; the latency of every write it had acknowledged (ms)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return [r["latency_ms"] for r in map(json.loads, self.journal.read_text().splitlines())
                if r.get("type") == "ack" and "latency_ms" in r]

    def longest_gap(self, start: dt.datetime, end: dt.datetime) -> float:
        """The longest time without an acknowledged write between start and end (both included as bounds)."""
        acks = sorted(parse(r["acked_at"]) for r in map(json.loads, self.journal.read_text().splitlines())
                      if r.get("type") == "ack")
        inside = [start] + [a for a in acks if start <= a <= end] + [end]
        return round(max((b - a).total_seconds() for a, b in zip(inside, inside[1:], strict=False)), 3)


def one_failover(rate: int, source: str, target: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        traffic = Traffic(rate, Path(tmp))
        subprocess.run(["podman", "kill", "--signal", "KILL", f"dr-lab-{source}-db"], check=True,
                       capture_output=True, timeout=60)
        fault = dt.datetime.now(dt.UTC)
        proc = runbook("failover.yml", target)
        time.sleep(2)
        m = traffic.stop(target, fault)
    rep = report_of(proc)
    ph = {p["name"]: p for p in rep["phases"]}
    started = parse(rep["started"])
    promoted = parse(ph["promote"]["end"])
    phases = {"ansible_start": round((started - fault).total_seconds(), 3),
              "lock": round((parse(ph["detect"]["start"]) - started).total_seconds(), 3)}
    for name in ("detect", "isolate", "promote"):
        phases[name] = round((parse(ph[name]["end"]) - parse(ph[name]["start"])).total_seconds(), 3)
    phases["first_write"] = round(m["rto_seconds"] - (promoted - fault).total_seconds(), 3)
    # the failed region comes back as a standby, so the regions take turns
    subprocess.run(["podman", "start", f"dr-lab-{source}-db"], check=True, capture_output=True, timeout=120)
    time.sleep(2)
    runbook("rejoin.yml", source)
    return {"failed_region": source, "new_primary_region": target, "rto_seconds": m["rto_seconds"],
            "rpo_seconds": m["rpo_seconds"], "acked_writes": m["acked"], "lost_writes": m["missing"],
            "fault_to_promoted_seconds": round((promoted - fault).total_seconds(), 3), "phase_seconds": phases,
            "runbook_seconds": round((parse(rep["ended"]) - started).total_seconds(), 3)}


def one_switchover(rate: int, target: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        traffic = Traffic(rate, Path(tmp))
        start = dt.datetime.now(dt.UTC)
        proc = runbook("switchover.yml", target)
        end = dt.datetime.now(dt.UTC)
        time.sleep(2)
        m = traffic.stop(target, start)
        gap = traffic.longest_gap(start, end)
    rep = report_of(proc)
    return {"new_primary_region": target, "write_unavailable_seconds": gap,
            "write_unavailable_seconds_as_ansible_saw_it": rep["write_unavailable_seconds"],
            "lost_writes": m["missing"], "acked_writes": m["acked"],
            "runbook_seconds": round((end - start).total_seconds(), 3)}


def synchronous(regions: list[str]) -> None:
    proc = playbook("-i", str(REPO / "inventories" / "lab"), str(REPO / "playbooks" / "synchronous.yml"),
                    "-e", json.dumps({"dr_synchronous_regions": regions}))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"synchronous.yml {regions} failed; see the output above")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sync_latency(rate: int, rounds: int, seconds: int) -> dict:
    """Alternating asynchronous and synchronous rounds of the same traffic; the lab ends asynchronous."""
    lat = {"async": [], "sync": []}
    try:
        for i in range(rounds * 2):
            mode = "async" if i % 2 == 0 else "sync"
            synchronous(REGIONS if mode == "sync" else [])
            with tempfile.TemporaryDirectory() as tmp:
                traffic = Traffic(rate, Path(tmp))
                time.sleep(seconds)
                lat[mode].extend(traffic.latencies())
            print(f"[bench] synchronous mode round {i + 1}/{rounds * 2} ({mode}): {len(lat[mode])} writes so far",
                  flush=True)
    finally:
        synchronous([])
    out = {m: {"writes": len(v), "median_ms": round(statistics.median(v), 3), "p95_ms": round(percentile(v, 0.95), 3)}
           for m, v in lat.items()}
    out["ratio_sync_to_async"] = {k: round(out["sync"][k] / out["async"][k], 3) for k in ("median_ms", "p95_ms")}
    out["setting"] = 'every region synchronous: ANY 1 of the other two regions\' standbys'
    out["rounds_each"], out["round_seconds"] = rounds, seconds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--sync-round-seconds", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "failover.json"))
    ap.add_argument("--baseline", help="a git revision whose failovers alternate with this checkout's")
    args = ap.parse_args()
    if not 1 <= args.runs <= 10:
        ap.error("--runs must be 1..10")
    layout()
    failovers, switchovers, baseline = [], [], {}
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(baseline_tree(args.baseline)) if args.baseline else None
        order = [(THIS_TREE, failovers)] + ([(base[0], baseline.setdefault("runs", []))] if base else [])
        for i in range(args.runs * len(order)):
            tree, runs = order[i % len(order)]
            use_tree(tree)
            source, target = REGIONS[i % 3], REGIONS[(i + 1) % 3]
            which = f"baseline {base[1]}" if base and tree == base[0] else "this checkout"
            print(f"[bench] failover {i + 1}/{args.runs * len(order)} ({which}): {source} killed -> failover.yml -l "
                  f"{target}", flush=True)
            runs.append(one_failover(args.rate, source, target))
            print(f"[bench]   RTO {runs[-1]['rto_seconds']} s, lost {runs[-1]['lost_writes']}", flush=True)
        if base:
            baseline["commit"] = base[1]
            baseline["median_rto_seconds"] = statistics.median(r["rto_seconds"] for r in baseline["runs"])
            baseline["median_phase_seconds"] = {k: statistics.median(r["phase_seconds"][k] for r in baseline["runs"])
                                                for k in baseline["runs"][0]["phase_seconds"]}
        use_tree(THIS_TREE)
    layout()
    for i in range(args.runs):
        target = REGIONS[(i + 1) % 3]
        print(f"[bench] switchover {i + 1}/{args.runs}: switchover.yml -l {target}", flush=True)
        switchovers.append(one_switchover(args.rate, target))
        print(f"[bench]   writes unavailable {switchovers[-1]['write_unavailable_seconds']} s, lost "
              f"{switchovers[-1]['lost_writes']}", flush=True)
    layout()
    sync = sync_latency(args.rate, args.runs, args.sync_round_seconds)
    print(f"[bench]   synchronous/asynchronous write latency: {sync['ratio_sync_to_async']}", flush=True)
    med_f = {k: statistics.median(r[k] for r in failovers) for k in ("rto_seconds", "rpo_seconds",
                                                                   "fault_to_promoted_seconds")}
    med_f["phase_seconds"] = {k: statistics.median(r["phase_seconds"][k] for r in failovers)
                              for k in failovers[0]["phase_seconds"]}
    med_s = {k: statistics.median(r[k] for r in switchovers) for k in ("write_unavailable_seconds",
                                                                      "write_unavailable_seconds_as_ansible_saw_it")}
    result = {
        "benchmark": "failover",
        "what": "failover.yml RTO from fault injection (database host killed) to the first acknowledged write in the "
                "new region, and switchover.yml write unavailability, under write traffic on the local lab "
                "(journal of acknowledged writes)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "rate_writes_per_second": args.rate,
        "failover": {"runs": failovers, "median": med_f, **({"baseline": baseline,
                                                              "ratio_to_baseline": round(
                                                                  med_f["rto_seconds"]
                                                                  / baseline["median_rto_seconds"], 3)}
                                                           if baseline else {})},
        "switchover": {"runs": switchovers, "median": med_s,
                       "lost_writes_total": sum(r["lost_writes"] for r in switchovers)},
        "targets": TARGETS,
        "ratio_to_target": {"failover_rto": round(med_f["rto_seconds"] / TARGETS["failover_rto_seconds"], 3),
                            "switchover_unavailable": round(med_s["write_unavailable_seconds"]
                                                            / TARGETS["switchover_unavailable_seconds"], 3)},
        "synchronous_mode_write_latency": sync,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"failover_median": med_f, "switchover_median": med_s,
                      "ratio_to_target": result["ratio_to_target"],
                      "sync_to_async_latency": sync["ratio_sync_to_async"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
