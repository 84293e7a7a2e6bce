# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook lock runs on the controller, in the process that runs the task: it knows the ansible-playbook
process it belongs to (its parent), so a re-run after that process was killed takes the lock over at once."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.plugins.action import ActionBase

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors, _runlock
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod

ARGUMENT_SPEC = dict(
    state=dict(type="str", default="acquired", choices=["acquired", "released", "info"]),
    repositories=dict(type="list", elements="dict", required=True, options=repo_mod.repository_argument_spec()),
    name=dict(type="str", default="runbook"),
    run_id=dict(type="str"),
    holder=dict(type="str", default=""),
    ttl_seconds=dict(type="int", default=7200),
    break_stale=dict(type="bool", default=False),
    break_run_id=dict(type="str"),
    quorum=dict(type="int"),
)


LOCK_CONNECT_TIMEOUT = 3
LOCK_READ_TIMEOUT = 3
LOCK_MAX_ATTEMPTS = 2


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        result["changed"] = False
        process = _runlock.me(os.getppid())  # the ansible-playbook process this task belongs to
        # by default one run is one ansible-playbook process: every task of it, every play, every batch of a
        # serial play holds the same lock
        params["run_id"] = params["run_id"] or "%s-%d-%s" % (process["host"], process["pid"], process["pid_start"])
        try:
            # A lock object is a few hundred bytes: a region whose object store does not answer (a partition
            # accepts the connection and then says nothing) must cost seconds, not botocore's 60 s x 5 attempts.
            repos = [repo_mod.open_repository(dict(spec, connect_timeout=LOCK_CONNECT_TIMEOUT,
                                                   read_timeout=LOCK_READ_TIMEOUT, max_attempts=LOCK_MAX_ATTEMPTS))
                     for spec in params["repositories"]]
            if params["state"] == "info":
                result["lock"] = _runlock.status(repos, params["name"])
                return result
            if params["state"] == "released":
                if self._task.check_mode:
                    mine = [name for name, doc in _runlock.status(repos, params["name"]).items()
                            if doc and doc.get("run_id") == params["run_id"]]
                    result.update(changed=bool(mine), released=mine)
                    return result
                released = _runlock.release(repos, params["name"], params["run_id"])
                result.update(changed=bool(released), released=released)
                return result
            if self._task.check_mode:
                seen = _runlock.would_acquire(repos, params["name"], params["run_id"],
                                              ttl_seconds=params["ttl_seconds"], break_stale=params["break_stale"],
                                              break_run_id=params["break_run_id"], quorum=params["quorum"],
                                              process=process)
                result.update(changed=seen["acquired"], **seen)
                result["acquired"] = False  # nothing is taken in check mode
                result["would_acquire"] = seen["acquired"]
                return result
            got = _runlock.acquire(repos, params["name"], params["run_id"], params["holder"],
                                   ttl_seconds=params["ttl_seconds"], break_stale=params["break_stale"],
                                   break_run_id=params["break_run_id"], quorum=params["quorum"], process=process)
            result.update(changed=True, acquired=True, lock=got["lock"], repositories=got["repositories"],
                          took_over=got["took_over"])
        except _errors.ENGINE_ERRORS as exc:
            result.update(failed=True, msg=_errors.message(exc))
        return result
