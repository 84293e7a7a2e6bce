"""The join of a runbook lock taken in the background: it returns the answer the background process wrote, and
never keeps an operator waiting on a process that is gone or a job that is not one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

from ansible_collections.immersiverse.dr.plugins.action import runbook_lock as action


def make_job(pid=None):
    job = tempfile.mkdtemp(prefix=action.JOB_PREFIX)
    if pid is not None:
        with open(os.path.join(job, "pid"), "w") as fh:
            fh.write(str(pid))
    return job


def join(job, timeout=30):
    return action.ActionModule._join(None, job, timeout)


def test_the_answer_is_returned_as_written_and_the_job_removed():
    job = make_job(os.getpid())
    action._write_answer(job, {"acquired": True, "repositories": ["primary", "secondary"]})
    assert join(job) == {"acquired": True, "repositories": ["primary", "secondary"]}
    assert not os.path.exists(job)


def test_a_process_that_ended_without_an_answer_fails_at_once():
    proc = subprocess.Popen(["true"])
    proc.wait()
    job = make_job(proc.pid)
    started = time.monotonic()
    out = join(job, timeout=60)
    assert time.monotonic() - started < 5
    assert out["failed"] and "ended without an answer" in out["msg"] and "Nothing was changed" in out["msg"]
    assert not os.path.exists(job)


def test_a_zombie_counts_as_ended():
    proc = subprocess.Popen(["true"])  # not waited for: a zombie until reaped
    deadline = time.monotonic() + 10
    while action._pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not action._pid_alive(proc.pid)
    proc.wait()


def test_a_job_that_is_not_one_is_refused(tmp_path):
    for path in (str(tmp_path / (action.JOB_PREFIX + "x")), tempfile.gettempdir(), "", "/etc"):
        out = join(path)
        assert out["failed"] and "is not a runbook lock job" in out["msg"], path
    real = make_job(os.getpid())
    link = os.path.join(tempfile.gettempdir(), f"{action.JOB_PREFIX}link{os.getpid()}")
    os.symlink(real, link)
    try:
        assert "is not a runbook lock job" in join(link)["msg"]
    finally:
        os.unlink(link)
        shutil.rmtree(real)


def test_the_answer_file_is_complete_json():
    job = make_job(os.getpid())
    action._write_answer(job, {"failed": True, "msg": "held"})
    with open(os.path.join(job, "answer.json")) as fh:
        assert json.load(fh) == {"failed": True, "msg": "held"}
    assert not os.path.exists(os.path.join(job, "answer.json.tmp"))
    join(job)


def test_a_process_that_does_not_answer_in_time_is_killed_so_it_cannot_take_the_lock_later():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        job = make_job(proc.pid)
        started = time.monotonic()
        out = join(job, timeout=1)
        assert 0.9 < time.monotonic() - started < 12
        assert out["failed"] and "no answer after 1 s" in out["msg"]
        assert proc.wait(timeout=10) == -9, "the background process was left running"
        assert not os.path.exists(job)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
