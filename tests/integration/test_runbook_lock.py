"""The runbook lock between real ansible-playbook processes on one controller, over real S3 (moto) in three
regions: a second run is refused and told who holds the lock; a run that was killed (SIGKILL, its process gone)
is taken over by the next run at once; a region whose S3 is gone does not block the runbook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = pytest.mark.integration

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - immersiverse.dr.runbook_lock:
        repositories: "{{ repos }}"
        holder: "{{ who }}"
      register: taken
      no_log: true
    - ansible.builtin.debug:
        msg: "TAKEN {{ taken.repositories | join(',') }} TOOK_OVER {{ taken.took_over | length }}"
    - ansible.builtin.wait_for:
        path: "{{ go }}"
        timeout: 60
    - immersiverse.dr.runbook_lock:
        state: released
        repositories: "{{ repos }}"
      no_log: true
"""


def run(tmp: Path, repos: list[dict], who: str, go: Path, background: bool = False, play_text: str = PLAY,
        **more):
    """ansible-playbook of play_text on localhost with the repositories in an extra-vars file (0600), in the
    foreground (its CompletedProcess) or in a session of its own (its Popen)."""
    extra = tmp / f"vars-{who}.json"
    extra.write_text(json.dumps({"repos": repos, "who": who, "go": str(go), **more}))
    extra.chmod(0o600)
    play = tmp / f"lock-{abs(hash(play_text))}.yml"
    play.write_text(play_text)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    argv = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", f"@{extra}", str(play),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    if background:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)


def three_repositories(endpoint) -> tuple[list[str], list[dict]]:
    buckets = [endpoint.create_bucket() for _region in range(3)]
    repos = [{"type": "s3", "name": name, "bucket": bucket, "prefix": "auth-db", "region": "us-east-1",
              "endpoint_url": endpoint.endpoint_url, "access_key": endpoint.access_key,
              "secret_key": endpoint.secret_key}
             for name, bucket in zip(("primary", "secondary", "tertiary"), buckets, strict=True)]
    return buckets, repos


def lock_objects(endpoint, buckets):
    client = endpoint.client()
    # the lock objects, not the release records a release leaves under locks/<name>/released/
    return {b: sum("/released/" not in o["Key"]
                   for o in client.list_objects_v2(Bucket=b, Prefix="auth-db/locks/").get("Contents", []))
            for b in buckets}


def wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def test_one_runbook_at_a_time_across_processes_and_a_killed_one_is_taken_over(s3_endpoint, tmp_path):
    buckets, repos = three_repositories(s3_endpoint)
    go = tmp_path / "go"
    first = run(tmp_path, repos, "failover-by-alice", go, background=True)
    try:
        wait_until(lambda: all(lock_objects(s3_endpoint, buckets).values()), 60, "the first run never took the lock")
        second = run(tmp_path, repos, "restore-by-bob", go)
        assert second.returncode != 0, second.stdout[-3000:]
        assert "held by failover-by-alice" in second.stdout and f"pid {first.pid} " in second.stdout, \
            second.stdout[-3000:]
        assert s3_endpoint.secret_key not in second.stdout + second.stderr
        os.killpg(first.pid, signal.SIGKILL)  # the operator's laptop dies half-way
        first.wait(30)
        assert all(lock_objects(s3_endpoint, buckets).values()), "a killed run cannot give its lock back"
        go.touch()  # the next run goes straight through
        third = run(tmp_path, repos, "failover-again", go)
        assert third.returncode == 0, third.stdout[-3000:]
        assert "TOOK_OVER 3" in third.stdout, third.stdout[-3000:]
        assert not any(lock_objects(s3_endpoint, buckets).values()), "the lock was not given back"
        # a region whose S3 is gone: the two others are a majority
        gone = [dict(repos[0], endpoint_url="http://127.0.0.1:9", max_attempts=1)] + repos[1:]
        fourth = run(tmp_path, gone, "failover-region-down", go)
        assert fourth.returncode == 0 and "TAKEN secondary,tertiary" in fourth.stdout, fourth.stdout[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)


BACKGROUND_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - immersiverse.dr.runbook_lock:
        repositories: "{{ repos }}"
        holder: "{{ who }}"
        background: true
      register: job
      no_log: true
    - ansible.builtin.debug:
        msg: "JOB {{ job.job }} STARTED {{ job.started }}"
    - immersiverse.dr.runbook_lock:
        repositories: "{{ repos }}"
        join: "{{ job.job }}"
      register: taken
      no_log: true
      failed_when: false
    - ansible.builtin.debug:
        msg: "ANSWER acquired={{ taken.acquired | default(false) }} msg={{ taken.msg | default('-') }}"
    - ansible.builtin.wait_for:
        path: "{{ go }}"
        timeout: 60
      when: taken.acquired | default(false)
    - immersiverse.dr.runbook_lock:
        state: released
        repositories: "{{ repos }}"
      no_log: true
      when: taken.acquired | default(false)
    - immersiverse.dr.runbook_lock:
        repositories: "{{ repos }}"
        join: "{{ bogus }}"
      register: bogus_join
      no_log: true
      failed_when: false
    - ansible.builtin.debug:
        msg: "BOGUS {{ bogus_join.msg | default('accepted') }}"
"""


def test_a_lock_taken_in_the_background_gives_the_foreground_answer_when_joined(s3_endpoint, tmp_path):
    """The failover takes the lock while it reads the regions: the join must give the same answer as a task in the
    foreground (held by this run; refused naming the holder), leave no job behind, and refuse a job that is not one."""
    buckets, repos = three_repositories(s3_endpoint)
    go = tmp_path / "go"
    bogus = tmp_path / "immersiverse-dr-lock-not-a-job"  # the right prefix, outside the temp directory
    bogus.mkdir()
    first = run(tmp_path, repos, "failover-by-alice", go, background=True, play_text=BACKGROUND_PLAY, bogus=str(bogus))
    lines = []
    try:
        for line in first.stdout:  # bounded: the play waits at most 60 s for go, then ends
            lines.append(line)
            if "ANSWER" in line:
                break
        out = "".join(lines)
        assert "ANSWER acquired=True msg=-" in out, out[-3000:]
        job = out.split("JOB ", 1)[1].split()[0]
        assert not Path(job).exists(), "the join left its job directory behind"
        assert all(lock_objects(s3_endpoint, buckets).values())
        # a second controller process, in the background too: the join refuses it, naming the holder
        second = run(tmp_path, repos, "switchover-by-bob", go, background=True, play_text=BACKGROUND_PLAY,
                     bogus=str(bogus))
        second_out = second.communicate(timeout=180)[0]
        assert "ANSWER acquired=False msg=the runbook lock is held by failover-by-alice" in \
            " ".join(second_out.split()), second_out[-3000:]
        assert s3_endpoint.secret_key not in out + second_out
        assert "BOGUS join=" in second_out and "is not a runbook lock job" in second_out, second_out[-3000:]
        go.touch()
        rest = first.communicate(timeout=180)[0]
        assert first.returncode == 0, rest[-3000:]
        assert not any(lock_objects(s3_endpoint, buckets).values()), "the lock was not given back"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
