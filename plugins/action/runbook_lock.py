# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook lock runs on the controller, in the process that runs the task: it knows the ansible-playbook
process it belongs to (its parent), so a re-run after that process was killed takes the lock over at once.

With background=true it is taken by a detached process while the runbook goes on reading (a failover's detect
phase), and a later task with join=<job> waits for the answer: the same answer a task in the foreground gives,
before anything is planned or changed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import signal
import tempfile
import time

from ansible.plugins.action import ActionBase

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook import lock as runbook_lock
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec

ARGUMENT_SPEC = dict(
    state=dict(type="str", default="acquired", choices=["acquired", "released", "info"]),
    repositories=dict(type="list", elements="dict", required=True, options=repo_spec.repository_argument_spec()),
    name=dict(type="str", default="runbook"),
    run_id=dict(type="str"),
    holder=dict(type="str", default=""),
    ttl_seconds=dict(type="int", default=7200),
    break_stale=dict(type="bool", default=False),
    break_run_id=dict(type="str"),
    quorum=dict(type="int"),
    background=dict(type="bool", default=False),
    join=dict(type="str"),
    join_timeout=dict(type="int", default=120),
)


LOCK_CONNECT_TIMEOUT = 3
LOCK_READ_TIMEOUT = 3
LOCK_MAX_ATTEMPTS = 2
JOB_PREFIX = "immersiverse-dr-lock-"
# the detached process that takes the lock gives up after this long (each S3 call is bounded far below it)
JOB_MAX_SECONDS = 600


def _write_answer(job, answer):
    tmp = os.path.join(job, "answer.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(answer, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, os.path.join(job, "answer.json"))


def _pid_alive(pid):
    """The process runs (a zombie, ended but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _job_dir(path):
    """The job directory a background task made: in the controller's temp directory, ours, not a link."""
    real = os.path.realpath(path or "")
    if (os.path.dirname(real) != os.path.realpath(tempfile.gettempdir())
            or not os.path.basename(real).startswith(JOB_PREFIX) or os.path.islink(path)
            or not os.path.isdir(real) or os.stat(real).st_uid != os.getuid()):
        raise _errors.DrError("join=%r is not a runbook lock job of this controller (a directory %s* in %s)"
                              % (path, JOB_PREFIX, tempfile.gettempdir()))
    return real


def _stop(pid):
    """Kill the background process (it leads its own session) and wait, bounded, until it is gone."""
    for sig_target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            sig_target()
            break
        except OSError:
            continue
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _take_back(params, check_mode):
    """Delete this run's lock objects wherever they may be (never another run's); errors are not fatal here."""
    if params.get("state") != "acquired" or check_mode:
        return
    try:
        runbook_lock.release([repo_spec.open_repository(dict(spec, connect_timeout=LOCK_CONNECT_TIMEOUT,
                                                        read_timeout=LOCK_READ_TIMEOUT,
                                                        max_attempts=LOCK_MAX_ATTEMPTS))
                              for spec in params["repositories"]], params["name"], params["run_id"], record=False)
    except _errors.ENGINE_ERRORS:
        pass


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        result["changed"] = False
        process = runbook_lock.me(os.getppid())  # the ansible-playbook process this task belongs to
        # by default one run is one ansible-playbook process: every task of it, every play, every batch of a
        # serial play holds the same lock
        params["run_id"] = params["run_id"] or "%s-%d-%s" % (process["host"], process["pid"], process["pid_start"])
        if params["join"]:
            result.update(self._join(params["join"], params["join_timeout"], params))
            return result
        if params["background"] and params["state"] == "acquired":
            result.update(self._start(params, process, self._task.check_mode))
            return result
        result.update(self._do(params, process, self._task.check_mode))
        return result

    def _start(self, params, process, check_mode):
        """Fork a detached process that takes the lock and writes its answer into a private job directory."""
        job = tempfile.mkdtemp(prefix=JOB_PREFIX)  # 0700, this controller user's
        child = os.fork()
        if child == 0:  # pragma: no cover - the forked side, exercised by the integration test
            code = 0
            try:
                grandchild = os.fork()
                if grandchild != 0:  # the middle process names the grandchild and goes: nobody waits for it
                    with open(os.path.join(job, "pid"), "w") as fh:
                        fh.write(str(grandchild))
                    os._exit(0)
                os.setsid()  # not in the operator's process group: a Ctrl-C of the run does not cut a write short
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)  # not the worker's handlers
                os.chdir("/")
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                try:
                    max_fd = os.sysconf("SC_OPEN_MAX")
                except (ValueError, OSError):
                    max_fd = 65536
                os.closerange(3, max_fd)  # nothing of the worker (its result queue, its display) is held open
                signal.alarm(JOB_MAX_SECONDS)
                try:
                    answer = self._do(params, process, check_mode)
                except BaseException as exc:  # whatever happens, the join gets an answer
                    answer = {"failed": True, "msg": "the runbook lock was not taken: %s: %s"
                              % (type(exc).__name__, exc)}
                _write_answer(job, answer)
            except BaseException:  # never back into Ansible's code from the forked side
                code = 1
            os._exit(code)
        os.waitpid(child, 0)
        return {"started": True, "job": job}

    def _join(self, job, timeout, params=None):
        """Wait, bounded, for the answer of the background task; the job directory is removed. A process that has
        not answered in time is killed, and whatever lock objects of this run it may have written are deleted, so
        that "not taken" is true."""
        try:
            job = _job_dir(job)
        except _errors.ENGINE_ERRORS as exc:
            return {"failed": True, "msg": _errors.message(exc)}
        answer_path, pid_path = os.path.join(job, "answer.json"), os.path.join(job, "pid")
        deadline = time.monotonic() + max(1, int(timeout))
        try:
            with open(pid_path) as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        while not os.path.exists(answer_path):
            gone = not pid or not _pid_alive(pid)
            if (gone and not os.path.exists(answer_path)) or time.monotonic() > deadline:
                if not gone:
                    _stop(pid)
                if os.path.exists(answer_path):  # it answered as it was stopped: that answer holds
                    break
                if params is not None:
                    _take_back(params, self._task.check_mode)
                shutil.rmtree(job, ignore_errors=True)
                why = ("the process taking it ended without an answer" if gone
                       else "no answer after %d s" % int(timeout))
                return {"failed": True, "msg": "the runbook lock was not taken: %s. Nothing was changed (and lock "
                                               "objects of this run, if any, were deleted); run again." % why}
            time.sleep(0.02)
        with open(answer_path) as fh:
            answer = json.load(fh)
        shutil.rmtree(job, ignore_errors=True)
        return answer

    def _do(self, params, process, check_mode):
        result = {}
        try:
            # A lock object is a few hundred bytes: a region whose object store does not answer (a partition
            # accepts the connection and then says nothing) must cost seconds, not botocore's 60 s x 5 attempts.
            repos = [repo_spec.open_repository(dict(spec, connect_timeout=LOCK_CONNECT_TIMEOUT,
                                                    read_timeout=LOCK_READ_TIMEOUT, max_attempts=LOCK_MAX_ATTEMPTS))
                     for spec in params["repositories"]]
            if params["state"] == "info":
                result["lock"] = runbook_lock.status(repos, params["name"])
                return result
            if params["state"] == "released":
                if check_mode:
                    mine = [name for name, doc in runbook_lock.status(repos, params["name"]).items()
                            if doc and doc.get("run_id") == params["run_id"]]
                    result.update(changed=bool(mine), released=mine)
                    return result
                released = runbook_lock.release(repos, params["name"], params["run_id"])
                result.update(changed=bool(released), released=released)
                return result
            if check_mode:
                seen = runbook_lock.would_acquire(repos, params["name"], params["run_id"],
                                                  ttl_seconds=params["ttl_seconds"], break_stale=params["break_stale"],
                                                  break_run_id=params["break_run_id"], quorum=params["quorum"],
                                                  process=process)
                result.update(changed=seen["acquired"], **seen)
                result["acquired"] = False  # nothing is taken in check mode
                result["would_acquire"] = seen["acquired"]
                return result
            got = runbook_lock.acquire(repos, params["name"], params["run_id"], params["holder"],
                                       ttl_seconds=params["ttl_seconds"], break_stale=params["break_stale"],
                                       break_run_id=params["break_run_id"], quorum=params["quorum"], process=process)
            result.update(changed=True, acquired=True, lock=got["lock"], repositories=got["repositories"],
                          took_over=got["took_over"], last_released=got["last_released"])
        except _errors.ENGINE_ERRORS as exc:
            result.update(failed=True, msg=_errors.message(exc))
        return result
