"""Tests against the running three-region lab (scripts/lab.sh up). They drive the real playbooks."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from drlab import s3 as lab_s3

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


# The order the lab stage runs its files in (the alphabetical order pytest used to pick, made explicit so that
# renaming or adding a file cannot reorder it silently). Each file leaves the lab serving: one primary and two
# streaming standbys, in whichever region serves (tests that fail over, or need a layout, repair it themselves).
# What a file leaves that a later one reuses, to keep the stage's runtime:
#   test_wal_lab.py      WAL archiving on in every region (site.yml) and, after it, two backups with their WAL
#                        archived in every region: test_wal_restore_lab.py and test_wal_restore_verify_lab.py restore
#                        from them (test_wal_lab.archived_backup checks this and sets it up when a file runs alone).
#   test_stream_lab.py   turns streaming on and off again; archiving stays on (site.yml), as test_wal_lab.py
#                        leaves it too.
#   test_lab.py          its drill fails the lab over: the files after it find the primary in another region.
#   test_service_lab.py  a PITR of the serving region (from test_wal_lab.py's backups), then the other regions
#                        rejoined on the new timeline.
# A new file goes into this list where what it needs is there; one not listed stops the collection.
LAB_ORDER = [
    "test_backup_lab.py",
    "test_failover_lab.py",
    "test_lab.py",
    "test_stream_lab.py",
    "test_transport_lab.py",
    "test_wal_lab.py",
    "test_wal_restore_lab.py",
    "test_wal_restore_verify_lab.py",
    "test_service_lab.py",
    "test_s3_server_lab.py",
    "test_lifecycle_lab.py",
]
LAB_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    lab = [i for i, item in enumerate(items) if item.path.parent == LAB_DIR]
    unlisted = sorted({items[i].path.name for i in lab} - set(LAB_ORDER))
    if unlisted:
        raise pytest.UsageError(f"lab test files not in LAB_ORDER (tests/lab/conftest.py): {', '.join(unlisted)}")
    ordered = sorted((items[i] for i in lab), key=lambda item: LAB_ORDER.index(item.path.name))  # stable in a file
    for i, item in zip(lab, ordered, strict=True):
        item.add_marker(pytest.mark.lab)
        items[i] = item


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.out = proc.stdout + proc.stderr
        self.recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                                   "unreachable": int(m.group(4)), "failed": int(m.group(5))}
                      for m in RECAP.finditer(proc.stdout)}

    def changed(self) -> dict[str, int]:
        return {h: r["changed"] for h, r in self.recap.items() if r["changed"]}


def playbook(*args: str, timeout: int = 900) -> Run:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "PYTHONPATH": str(REPO / "lab")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), *args], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    return Run(proc)


def detect(tmp_path: Path, services: bool = False) -> dict:
    """detect_summary as the detect role computes it, read back through a file (``services``: also each region's
    S3, Redis, Kafka and Kubernetes, from the controller; most tests need only PostgreSQL's view)."""
    out = tmp_path / "detect.json"
    play = tmp_path / "detect.yml"
    play.write_text(f"""
- hosts: databases
  gather_facts: false
  roles:
    - role: immersiverse.dr.detect
      vars:
        detect_require_primary: false
        detect_fail_on_split_brain: false
        detect_check_services: {str(services).lower()}
  post_tasks:
    - ansible.builtin.copy:
        content: "{{{{ detect_summary | to_json }}}}"
        dest: {out}
        mode: "0600"
      delegate_to: localhost
      run_once: true
""")
    run = playbook("-i", str(REPO / "inventories" / "lab"), str(play))
    assert run.rc == 0, run.out[-3000:]
    return json.loads(out.read_text())


def lab_secrets() -> dict[str, str]:
    """Every secret of the lab, by name: the generated passwords, the S3 and Kubernetes credentials of the
    inventory, and the SSH client key's body."""
    secrets = {name: (REPO / ".lab" / "secrets" / name).read_text().split()[0] for name in ("replicator", "auth_app")}
    inv = (REPO / "inventories" / "lab" / "group_vars" / "all" / "main.yml").read_text()
    secrets["dr_k8s_api_key"] = re.search(r"^dr_k8s_api_key: (\S+)$", inv, re.M).group(1)
    for region in lab_s3.REGIONS:
        secrets[f"s3_secret_key_{region}"] = lab_s3.credentials(region)["secret_key"]
    key = (REPO / ".lab" / "secrets" / "lab_ssh_ed25519").read_text().splitlines()
    secrets["ssh_key"] = max(key[1:-1], key=len)
    return secrets


def assert_no_secret(run: Run) -> None:
    """Nothing secret in a playbook's output (run it with -vvv to make this mean something)."""
    leaked = [name for name, value in lab_secrets().items() if value in run.out]
    assert not leaked, f"secrets in the output: {leaked}"


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture(scope="session", autouse=True)
def lab_is_up():
    names = podman("ps", "--filter", "label=io.immersiverse.dr.lab=1", "--format", "{{.Names}}").split()
    if len(names) < 7:
        pytest.fail("the lab is not running: run scripts/lab.sh up first (make lab-tests does)")
