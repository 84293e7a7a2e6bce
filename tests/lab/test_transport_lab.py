"""The lab reaches its hosts as production does: SSH with pinned host keys, a non-root user, privileges through sudo.

Each test leaves the lab as it found it: one primary, two streaming standbys.
"""

from __future__ import annotations

import subprocess

from conftest import REPO, detect, playbook, podman

INVENTORY = str(REPO / "inventories" / "lab")
SSH_CONFIG = REPO / ".lab" / "ssh" / "config"


def standby_role(play, host: str, primary: str, **overrides: str):
    """The standby role on host, following primary (overrides: more role variables), through the lab's SSH."""
    extra = "".join(f"\n        {k}: {v}" for k, v in overrides.items())
    play.write_text(f"""
- hosts: {host}
  gather_facts: false
  roles:
    - role: immersiverse.dr.standby
      vars:
        standby_primary_host: {primary}{extra}
""")
    return playbook("-i", INVENTORY, str(play))


def test_hosts_are_reached_over_ssh_as_a_non_root_user_and_escalate_with_sudo(tmp_path):
    play = tmp_path / "who.yml"
    play.write_text("""
- hosts: databases
  gather_facts: false
  tasks:
    - name: who am I
      ansible.builtin.command: id -un
      register: plain
      changed_when: false
    - name: who am I with become
      ansible.builtin.command: id -un
      become: true
      register: root
      changed_when: false
    - name: the answers
      ansible.builtin.debug:
        msg: "WHO {{ inventory_hostname }} {{ plain.stdout }} {{ root.stdout }}"
""")
    run = playbook("-i", INVENTORY, str(play), "-vvv")
    assert run.rc == 0, run.out[-3000:]
    for host in ("pg-primary-1", "pg-secondary-1", "pg-tertiary-1"):
        assert f"WHO {host} dr-automation root" in run.out
    assert "SSH: EXEC ssh" in run.out, "the ssh connection plugin ran the tasks"
    assert "StrictHostKeyChecking=no" not in run.out
    assert "Pipelining is enabled." in run.out and "ControlPersist=" in run.out
    assert " PUT " not in run.out, "modules are piped into python over the connection, no file is copied"
    # The same shell a person gets with the documented command, with no prompt (BatchMode) and a pinned key.
    out = subprocess.run(["ssh", "-F", str(SSH_CONFIG), "dr-lab-primary-db", "id", "-un"], capture_output=True,
                         text=True, timeout=30, check=True, stdin=subprocess.DEVNULL).stdout.strip()
    assert out == "dr-automation"


def test_a_host_whose_key_is_not_the_pinned_one_is_refused(tmp_path):
    wrong = tmp_path / "known_hosts"
    # Another host's real key under this host's name: the connection must not go on.
    keys = (REPO / ".lab" / "ssh" / "known_hosts").read_text().splitlines()
    other = next(line for line in keys if line.startswith("dr-lab-secondary-db ")).split(" ", 1)[1]
    wrong.write_text(f"dr-lab-primary-db {other}\n")
    run = subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-o", f"UserKnownHostsFile={wrong}", "-o",
                          f"ControlPath={tmp_path}/%C", "dr-lab-primary-db", "true"],
                         capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert run.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in run.stderr or "Host key verification failed" in run.stderr


def test_isolate_fences_a_reachable_standby_as_the_non_root_user_and_the_standby_role_brings_it_back(tmp_path):
    before = detect(tmp_path)
    primary = before["current_primary"]
    standby = sorted(h["host"] for h in before["hosts"] if h["role"] == "standby")[0]
    region = next(h["region"] for h in before["hosts"] if h["host"] == standby)
    play = tmp_path / "isolate.yml"
    play.write_text(f"""
- hosts: {standby}
  gather_facts: false
  roles:
    - role: immersiverse.dr.isolate
""")
    run = playbook("-i", INVENTORY, str(play))
    assert run.rc == 0, run.out[-3000:]
    assert run.recap[standby]["changed"] >= 2, run.out[-3000:]
    name = f"dr-lab-{region}-db"
    # down, and disabled: pg_ctlcluster refuses to start it (and so would systemd), the marker says why
    assert podman("exec", name, "pg_lsclusters", "--no-header", "15", "main").split()[3].startswith("down")
    assert "disabled" in podman("exec", name, "grep", "-v", "^#", "/etc/postgresql/15/main/start.conf")
    start = subprocess.run(["podman", "exec", name, "pg_ctlcluster", "15", "main", "start"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert start.returncode != 0 and "disabled" in start.stderr, start.stdout + start.stderr
    marker = podman("exec", name, "cat", "/etc/postgresql/15/main/immersiverse-dr-fence.json")
    assert "fenced by the isolate phase" in marker
    mid = detect(tmp_path)
    assert standby in mid["unreachable"] or next(h for h in mid["hosts"] if h["host"] == standby)["role"] == "down"
    assert mid["current_primary"] == primary

    # A rebuild whose copy fails (here: the primary's address is the standby's own loopback, where nothing listens,
    # so pg_basebackup cannot connect) must not leave the host without its data directory: the same directory (same
    # inode) is back, still fenced and stopped.
    inode = podman("exec", name, "stat", "-c", "%i", "/var/lib/postgresql/15/main").strip()
    aside = ["sh", "-c", "ls -d /var/lib/postgresql/15/main.* 2>/dev/null || true"]
    aside_before = set(podman("exec", name, *aside).split())
    run = standby_role(tmp_path / "broken.yml", standby, primary, standby_primary_address="127.0.0.1",
                       standby_rewind="false")
    assert run.rc != 0, run.out[-3000:]
    out = " ".join(run.out.split())
    assert "pg_basebackup from" in out and "Its previous data directory is back in /var/lib/postgresql/15/main" \
        in out, run.out[-3000:]
    assert podman("exec", name, "stat", "-c", "%i", "/var/lib/postgresql/15/main").strip() == inode
    assert podman("exec", name, "test", "-f", "/var/lib/postgresql/15/main/PG_VERSION") == ""
    new_aside = set(podman("exec", name, *aside).split()) - aside_before
    assert not [d for d in new_aside if ".replaced-" in d], new_aside
    assert "disabled" in podman("exec", name, "grep", "-v", "^#", "/etc/postgresql/15/main/start.conf")
    assert podman("exec", name, "pg_lsclusters", "--no-header", "15", "main").split()[3].startswith("down")

    run = standby_role(tmp_path / "back.yml", standby, primary)
    assert run.rc == 0, run.out[-3000:]
    assert "auto" in podman("exec", name, "grep", "-v", "^#", "/etc/postgresql/15/main/start.conf")
    gone = subprocess.run(["podman", "exec", name, "test", "-e", "/etc/postgresql/15/main/immersiverse-dr-fence.json"],
                          capture_output=True, timeout=60, check=False)
    assert gone.returncode == 1, "the fence marker is removed once the host streams again"
    after = detect(tmp_path)
    assert after["current_primary"] == primary
    row = next(h for h in after["hosts"] if h["host"] == standby)
    assert row["role"] == "standby" and row["sender_host"] == f"dr-lab-{before['current_primary_region']}-db"
