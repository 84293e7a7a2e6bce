"""What a lab scenario's converge left in its directory (MOLECULE_EPHEMERAL_DIRECTORY), for its verifier."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
DIR = Path(os.environ["SCENARIO_DIR"])
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def outcome() -> dict:
    return json.loads((DIR / "outcome.json").read_text())


def run(name: str) -> dict:
    """One runbook run of the converge: rc, start, end, log (its output) and recap {host: {changed, failed}}."""
    r = outcome()["runs"][name]
    text = Path(r["log"]).read_text()
    r["out"] = text
    r["recap"] = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                               "failed": int(m.group(5))} for m in RECAP.finditer(text)}
    return r


def report_of(name: str, runbook: str) -> dict:
    """The run report the runbook wrote during run ``name`` (its path is printed by the report role)."""
    m = re.findall(r"run report: (\S+\.json)", run(name)["out"])
    assert m, f"{name} printed no run report"
    assert f"/{runbook}-" in m[-1], m[-1]
    return json.loads(Path(m[-1]).read_text())


def compare() -> dict:
    return json.loads((DIR / "compare.json").read_text())


def detect(name: str = "detect.json") -> dict:
    return json.loads((DIR / name).read_text())


def row(summary: dict, host: str) -> dict:
    return next(r for r in summary["hosts"] if r["host"] == host)


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def acks_after(region: str, when: str) -> list[dict]:
    """Acknowledged writes the journal saw from ``region`` at or after ``when`` (ISO time)."""
    from datetime import datetime
    t = datetime.fromisoformat(when)
    out = []
    for line in (DIR / "journal.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "ack" and rec.get("region") == region and datetime.fromisoformat(rec["acked_at"]) >= t:
            out.append(rec)
    return out
