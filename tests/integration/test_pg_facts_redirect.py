"""pg_facts is called pg_info now: the old name still runs the same module, action plugin included (the short path),
says that it is deprecated, and the module_defaults group reaches it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = pytest.mark.integration

PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/immersiverse.dr.postgres: {login_host: 127.0.0.1, login_port: 9, connect_timeout: 2, ssl_mode: disable}
  tasks:
    - name: old name
      immersiverse.dr.pg_facts: {fail_on_unreachable: false}
      register: old
    - name: new name
      immersiverse.dr.pg_info: {fail_on_unreachable: false}
      register: new
    - name: results
      ansible.builtin.copy:
        content: "{{ {'old': old, 'new': new} | to_json }}"
        dest: "{{ results_file }}"
        mode: "0600"
"""


def test_the_old_name_redirects_to_pg_info_with_a_deprecation(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_DEPRECATION_WARNINGS": "1"}
    proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(play),
                           "-e", f"ansible_python_interpreter={sys.executable}", "-e",
                           f"results_file={tmp_path / 'results.json'}"],
                          capture_output=True, text=True, env=env, timeout=300, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("old", "new"):
        out = results[name]
        assert out["reachable"] is False and "127.0.0.1" in out["error"] and not out["changed"], out
    assert "pg_facts is called immersiverse.dr.pg_info now" in proc.stdout + proc.stderr
