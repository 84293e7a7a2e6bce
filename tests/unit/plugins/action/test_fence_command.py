"""The out-of-band fence runs on the controller: its exit status, its output and a hung command (killed with what
it started, the task failing) reach the operator; check mode runs nothing."""

from __future__ import annotations

import time
from unittest import mock

from ansible.playbook.task import Task

from ansible_collections.immersiverse.dr.plugins.action import fence_command


def run(args, check_mode=False):
    task = Task()
    task.args = args
    task.check_mode = check_mode
    act = fence_command.ActionModule(task, mock.MagicMock(), mock.MagicMock(), loader=None, templar=None,
                                     shared_loader_obj=None)
    return act.run(task_vars={})


def test_its_output_and_exit_status_are_returned():
    out = run({"argv": ["/bin/sh", "-c", "echo fenced dr-lab-x-db; echo note >&2", "ignored"]})
    assert not out.get("failed") and out["rc"] == 0 and out["changed"]
    assert out["stdout"].strip() == "fenced dr-lab-x-db" and out["stderr"].strip() == "note"


def test_a_failing_fence_fails_the_task_saying_the_host_is_not_fenced():
    out = run({"argv": ["/bin/sh", "-c", "echo 'no container dr-lab-x-db' >&2; exit 3"]})
    assert out["failed"] and out["rc"] == 3
    assert "NOT known to be fenced" in out["msg"] and "no container dr-lab-x-db" in out["msg"]


def ended(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped yet (it runs nothing more either way)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_hung_fence_is_killed_with_what_it_started(tmp_path):
    marker = tmp_path / "child-still-running"
    child_pid = tmp_path / "child.pid"
    started = time.monotonic()
    # the command starts a child that would outlive it (and touch the marker after 3 s); both are killed at the timeout
    out = run({"argv": ["/bin/sh", "-c", f"sh -c 'echo $$ > {child_pid}; sleep 3; touch {marker}' & sleep 30"],
               "timeout": 1})
    assert time.monotonic() - started < 10
    assert out["failed"] and out["rc"] is None and "did not finish in 1 s" in out["msg"]
    assert child_pid.exists(), "the child never started: the test proves nothing"
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while not ended(pid):
        assert time.monotonic() < deadline, f"the fence's child {pid} still runs 5 s after the fence was killed"
        time.sleep(0.05)
    assert not marker.exists()  # and, its process gone, it never will


def test_a_command_that_does_not_exist_fails_clearly():
    out = run({"argv": ["/nonexistent/dr-fence"]})
    assert out["failed"] and "could not be started" in out["msg"] and "nothing was fenced" in out["msg"]


def test_check_mode_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    out = run({"argv": ["/bin/sh", "-c", f"touch {marker}"]}, check_mode=True)
    assert out["changed"] and out["would_run"] == "/bin/sh" and not marker.exists()


def test_a_fence_that_exits_is_done_even_if_its_daemon_keeps_the_output_open(tmp_path):
    started = time.monotonic()
    out = run({"argv": ["/bin/sh", "-c", "echo stopped; sleep 20 & exit 0"], "timeout": 10})
    assert time.monotonic() - started < 5, "it waited for the daemon, not for the command"
    assert not out.get("failed") and out["rc"] == 0 and out["stdout"].strip() == "stopped"


def test_output_that_is_not_utf8_is_kept_readable():
    out = run({"argv": ["/bin/sh", "-c", "printf 'caf\\351\\n'; exit 4"]})
    assert out["failed"] and out["rc"] == 4 and out["stdout"].startswith("caf")
    assert "exit 4" in out["msg"]
