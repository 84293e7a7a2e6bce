"""pg_facts and pg_promote through ansible-playbook against real PostgreSQL 15 servers: the short path (the engine
run on the target without the module wrapper) answers what the module answers, promotes, honours check mode, and
never shows the password, even at the highest verbosity. (ANSIBLE_DEBUG=1, a developer's switch, makes ansible-core
itself print a module's arguments when it runs the module.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pg_facts import facts, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = pytest.mark.integration

PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/immersiverse.dr.postgres: "{{ conn }}"
  tasks:
    - name: short path
      immersiverse.dr.pg_info: {}
      register: short
    - name: the module (async runs the module)
      immersiverse.dr.pg_info: {}
      async: 60
      poll: 1
      register: module
    - name: promote in check mode
      immersiverse.dr.pg_promote: {wait_seconds: 30}
      check_mode: true
      register: would
    - name: promote
      immersiverse.dr.pg_promote: {wait_seconds: 30}
      register: promoted
    - name: promote again
      immersiverse.dr.pg_promote: {wait_seconds: 30}
      register: again
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ {'short': short, 'module': module, 'would': would, 'promoted': promoted, 'again': again}
                     | to_json }}"
        mode: "0600"
"""


def playbook(tmp: Path, server, *flags: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    conn = {"login_host": server.host, "login_port": server.port, "login_user": server.user,
            "login_password": server.password, "ssl_mode": "disable"}
    extra = tmp / "vars.json"
    extra.write_text(json.dumps({"conn": conn, "out": str(tmp / "out.json")}))
    extra.chmod(0o600)
    (tmp / "play.yml").write_text(PLAY)
    proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", f"@{extra}", *flags,
                           "-e", f"ansible_python_interpreter={sys.executable}", str(tmp / "play.yml")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                               **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads((tmp / "out.json").read_text())


def test_the_short_path_answers_as_the_module_promotes_and_never_shows_the_password(pg_server_factory, tmp_path):
    primary = pg_server_factory("short-primary")
    standby = pg_server_factory.standby(primary, "short-standby", slot="short_standby")
    wait_for(lambda: facts(standby)["wal_receiver"] and facts(standby)["wal_receiver"]["status"] == "streaming")
    proc, out = playbook(tmp_path, standby, "-vvvvvv")
    short, module = out["short"], out["module"]
    assert short["reachable"] and short["role"] == "standby" and short["timeline"] == 1
    for key in ("role", "in_recovery", "system_identifier", "timeline", "upstream", "settings", "server_version_num"):
        assert short[key] == module[key], key
    # the first took the short path (a module's result has 'invocation'), the second ran the module
    assert "invocation" not in short and "ansible_job_id" in module
    assert out["would"]["changed"] and not out["would"]["promoted"] and "pg_promote" in out["would"]["would_run"]
    assert out["promoted"]["promoted"] and out["promoted"]["timeline"] == 2 and out["promoted"]["timeline_before"] == 1
    assert not out["again"]["changed"] and not out["again"]["promoted"]
    assert facts(standby)["role"] == "primary"
    leaks = [line for line in (proc.stdout + proc.stderr).splitlines() if standby.password in line]
    assert standby.password and not leaks, "\n".join(line[:300] for line in leaks[:5])
