"""Benchmark: what one Ansible task costs on the lab, over the podman connection and over SSH, in one run.

The lab reaches its hosts over SSH as production does (pipelining, ControlPersist, a non-root user with sudo). Before,
it used the podman connection, which cannot pipeline. With the workload generator writing at --rate writes/s (the
load a drill runs under), this runs the same playbook over both transports, interleaved round by round:

    become_module   immersiverse.dr.pg_info with become_user postgres (the detect phase's call)
    module          ansible.builtin.ping, no become (the cheapest module call)
    controller      ansible.builtin.debug (no connection at all: Ansible's own per-task cost)

and takes each task's wall time on the host from a callback (bench/callback_plugins/bench_timing.py). Then, over SSH
with a warm ControlPersist connection, it kills a standby's container (podman kill, out of band) and times the
detect phase's pg_facts call on it until Ansible reports it unreachable; the container is started again and the
benchmark waits until it streams again before the next try. Only standbys are killed, never the primary.

Writes bench/results/lab.json.

    python bench/lab.py [--rounds 2] [--calls 25] [--kills 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = harness.REPO
VENV = REPO / ".venv" / "bin"
INVENTORY = REPO / "inventories" / "lab"
TASKS = {
    "become_module": """
    - name: become_module
      immersiverse.dr.pg_info:
        login_unix_socket: /var/run/postgresql
        connect_timeout: 3
      become: true
      become_user: postgres
""",
    "module": """
    - name: module
      ansible.builtin.ping:
""",
    "controller": """
    - name: controller
      ansible.builtin.debug:
        msg: nothing
""",
}
# The lab's transport before: containers.podman.podman as root, become to postgres inside the container.
PODMAN = ["-e", "ansible_connection=containers.podman.podman", "-e", "ansible_user=root",
          "-e", "ansible_remote_tmp=/root/.ansible/tmp"]


def env(timing_file: Path) -> dict:
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "PYTHONPATH": str(REPO / "lab"), "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "bench" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "bench_timing", "BENCH_TIMING_FILE": str(timing_file)}


def playbook(path: Path, limit: str, extra: list[str], timing_file: Path,
             timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "ansible-playbook"), "-i", str(INVENTORY), "-l", limit, *extra, str(path)],
                          cwd=REPO, env=env(timing_file), capture_output=True, text=True, timeout=timeout,
                          check=False)


def timings(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stats(values: list[float]) -> dict:
    s = sorted(values)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"n": len(s), "median": round(statistics.median(s), 4), "p95": round(p95, 4),
            "min": round(s[0], 4), "max": round(s[-1], 4)}


def roles(work: Path) -> dict[str, dict]:
    """Each database host's pg_facts (role, streaming) over SSH, as a dict keyed by inventory name."""
    out = work / "facts.json"
    play = work / "facts.yml"
    play.write_text(f"""
- hosts: databases
  gather_facts: false
  tasks:
    - immersiverse.dr.pg_info:
        login_unix_socket: /var/run/postgresql
        connect_timeout: 3
        fail_on_unreachable: false
      become: true
      become_user: postgres
      register: f
      ignore_unreachable: true
    - ansible.builtin.copy:
        content: >-
          {{{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'f'))) | to_json }}}}
        dest: {out}
        mode: "0600"
      delegate_to: localhost
      run_once: true
""")
    proc = playbook(play, "databases", [], work / "ignored.jsonl", timeout=300)
    if proc.returncode != 0:
        raise SystemExit("bench: cannot read the lab's hosts:\n" + proc.stdout[-3000:])
    return json.loads(out.read_text())


def container(host: str) -> str:
    inv = json.loads(subprocess.run([str(VENV / "ansible-inventory"), "-i", str(INVENTORY), "--host", host],
                                    capture_output=True, text=True, check=True, timeout=120).stdout)
    return inv["ansible_host"]


def wait_streaming(work: Path, host: str, deadline_s: float = 180) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        f = roles(work).get(host, {})
        if f.get("role") == "standby" and (f.get("wal_receiver") or {}).get("status") == "streaming":
            return time.monotonic() - t0
        time.sleep(1)
    raise SystemExit(f"bench: {host} did not stream again within {deadline_s} s after its restart")


def dead_host(work: Path, kills: int) -> list[dict]:
    facts = roles(work)
    standbys = sorted(h for h, f in facts.items() if f.get("role") == "standby")
    if not standbys:
        raise SystemExit("bench: no standby to kill; repair the lab (make lab-up)")
    host = standbys[-1]
    name = container(host)
    play = work / "dead.yml"
    play.write_text("""
- hosts: all
  gather_facts: false
  tasks:
    - name: dead_host_pg_facts
      immersiverse.dr.pg_info:
        login_unix_socket: /var/run/postgresql
        connect_timeout: 3
        fail_on_unreachable: false
      become: true
      become_user: postgres
      ignore_unreachable: true
""")
    out = []
    for i in range(kills):
        warm = work / f"warm-{i}.jsonl"
        playbook(play, host, [], warm)           # the ControlPersist connection is up: the worst case
        subprocess.run(["podman", "kill", "--signal", "KILL", name], check=True, capture_output=True, timeout=60)
        tf = work / f"dead-{i}.jsonl"
        t0 = time.monotonic()
        proc = playbook(play, host, [], tf, timeout=120)
        whole = time.monotonic() - t0
        rows = [r for r in timings(tf) if r["task"] == "dead_host_pg_facts"]
        subprocess.run(["podman", "start", name], check=True, capture_output=True, timeout=120)
        back = wait_streaming(work, host)
        if not rows or rows[0]["outcome"] != "unreachable":
            raise SystemExit(f"bench: a killed host was not reported unreachable: {rows}\n{proc.stdout[-2000:]}")
        out.append({"host": host, "task_seconds": rows[0]["seconds"], "playbook_seconds": round(whole, 3),
                    "streaming_again_after_start_seconds": round(back, 1)})
        harness.log(f"killed {name}: unreachable after {rows[0]['seconds']} s (playbook {whole:.1f} s)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each running both transports (default 2)")
    ap.add_argument("--calls", type=int, default=25, help="calls of each kind per transport and round (default 25)")
    ap.add_argument("--kills", type=int, default=3, help="killed-host detections (default 3; 0 skips them)")
    ap.add_argument("--rate", type=int, default=100, help="the generator's writes/s during the run (default 100)")
    args = ap.parse_args()
    if not (1 <= args.rounds <= 10 and 1 <= args.calls <= 200 and 0 <= args.kills <= 10 and 1 <= args.rate <= 1000):
        ap.error("--rounds 1..10, --calls 1..200, --kills 0..10, --rate 1..1000")
    harness.install_signal_handlers()
    names = subprocess.run(["podman", "ps", "--filter", "label=io.immersiverse.dr.lab=1", "--format", "{{.Names}}"],
                           capture_output=True, text=True, check=True, timeout=60).stdout.split()
    if len(names) < 6:
        raise SystemExit("bench: the lab is not running (scripts/bench.sh lab brings it up)")
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        work = Path(tmp)
        facts = roles(work)
        host = sorted(h for h, f in facts.items() if f.get("role") == "standby")[0]
        play = work / "calls.yml"
        body = "".join(TASKS[k] for k in TASKS for _ in range(args.calls))
        play.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n" + body)
        duration = 3600
        gen = subprocess.Popen([str(VENV / "python"), "-m", "drlab.generator", "--lab", f"--rate={args.rate}",
                                f"--duration={duration}", f"--journal={work / 'journal.jsonl'}",
                                f"--summary-json={work / 'generator.json'}"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "lab")},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: dict[str, dict[str, list[float]]] = {"podman": {k: [] for k in TASKS}, "ssh": {k: [] for k in TASKS}}
        try:
            time.sleep(3)
            for rnd in range(args.rounds):
                for transport, extra in (("podman", PODMAN), ("ssh", [])):
                    tf = work / f"{transport}-{rnd}.jsonl"
                    proc = playbook(play, host, extra, tf)
                    if proc.returncode != 0:
                        raise SystemExit(f"bench: the {transport} run failed:\n{proc.stdout[-3000:]}")
                    for r in timings(tf):
                        if r["task"] in TASKS and r["outcome"] == "ok":
                            samples[transport][r["task"]].append(r["seconds"])
                    harness.log(f"round {rnd + 1} {transport}: become_module median "
                                f"{statistics.median(samples[transport]['become_module']):.3f} s")
            kills = dead_host(work, args.kills) if args.kills else []
        finally:
            gen.send_signal(signal.SIGTERM)
            try:
                gen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gen.kill()
        summary = json.loads((work / "generator.json").read_text()) if (work / "generator.json").exists() else {}
    res = {t: {k: stats(v) for k, v in per.items()} for t, per in samples.items()}
    result = {
        "benchmark": "lab",
        "what": "wall time of one task on one lab host, over the podman connection (as root, no pipelining) and over "
                "SSH (dr-automation with sudo, pipelining, ControlPersist), interleaved in one run while the "
                "generator writes; then the time for a killed host's detect call to come back unreachable",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "versions": {"ansible_core": harness.package_version("ansible-core"),
                     "containers.podman": "bundled with ansible " + harness.package_version("ansible"),
                     "podman": subprocess.run(["podman", "--version"], capture_output=True, text=True,
                                              timeout=30, check=False).stdout.strip(),
                     "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                                               timeout=30, check=False).stderr.strip()},
        "host": host,
        "rounds": args.rounds,
        "calls_per_kind_per_transport": args.rounds * args.calls,
        "generator": {"rate_target": args.rate, "acked_per_s": summary.get("acked_per_s"),
                      "acked": (summary.get("acked") or {}).get("total"), "attempted": summary.get("attempted")},
        "seconds": res,
        "ratio_ssh_to_podman_median": {k: round(res["ssh"][k]["median"] / res["podman"][k]["median"], 3)
                                       for k in TASKS if res["podman"][k]["median"]},
        "target": {"become_module_ssh_median_seconds": 0.6, "killed_host_unreachable_seconds": 3.0},
        "killed_host": {"runs": kills,
                        "median_task_seconds": round(statistics.median(k["task_seconds"] for k in kills), 3)
                        if kills else None},
    }
    path = harness.write_result("lab", result)
    print(json.dumps({"seconds": res, "ratio_ssh_to_podman_median": result["ratio_ssh_to_podman_median"],
                      "killed_host": result["killed_host"]["median_task_seconds"]}, indent=2))
    harness.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
