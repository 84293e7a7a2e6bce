# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_info on several hosts at once: each host is read by a task of its own (pg_info delegated to it), run by
ansible-core's TaskExecutor in a thread, so delegation, connection, become and interpreter are exactly those of
``delegate_to: <host>``, but the reads overlap. A loop of delegated tasks reads one host after the other; the
failover's detect phase reads every region on its critical path."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible.errors import AnsibleError
from ansible.executor.task_executor import TaskExecutor
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts

ARGUMENT_SPEC = dict(
    hosts=dict(type="list", elements="str", required=True),
    host_timeout=dict(type="int", default=30),
    **pg_facts.facts_argument_spec()
)
FACTS_ARGS = tuple(pg_facts.facts_argument_spec())


class _NoQueue:
    """The worker's result queue, as a TaskExecutor of a task without loop, retries or async uses it: not at all."""

    def send_callback(self, *args, **kwargs):
        pass

    def send_prompt(self, *args, **kwargs):
        raise AnsibleError("pg_survey cannot ask for a password; use a pgpass file, or pg_info in a loop")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def _one(self, host, task_vars, args):
        """The result of pg_info delegated to host (its TaskExecutor's, unreachable included), with the host."""
        task = self._task.copy(exclude_parent=False, exclude_tasks=True)
        task.action = "immersiverse.dr.pg_info"
        task.args = dict(args)
        task.delegate_to = host
        task.loop = None
        task.loop_with = None
        task.register = None
        task.until = None
        # the outer task's own conditions are about its registered result, not this read's
        task.when = []
        task.changed_when = []
        task.failed_when = []
        task.notify = []
        task.async_val = 0
        task.timeout = 0  # a task timeout is an alarm signal, main thread only: host_timeout bounds it here
        executor = TaskExecutor(
            host=self._task._variable_manager._inventory.get_host(task_vars["inventory_hostname"]),
            task=task, job_vars=dict(task_vars), play_context=self._play_context, loader=self._loader,
            shared_loader_obj=self._shared_loader_obj, final_q=_NoQueue(),
            variable_manager=self._task._variable_manager)
        try:
            res = executor.run()
        except AnsibleError as exc:
            res = {"failed": True, "msg": to_text(exc)}
        res = dict(res)
        res["host"] = host
        return res

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        # only what the task said (module_defaults included), as a delegated pg_info task would be given
        args = {k: v for k, v in self._task.args.items() if k in FACTS_ARGS}
        hosts = list(dict.fromkeys(params["hosts"]))
        unknown = [h for h in hosts if h not in task_vars.get("hostvars", {})]
        if unknown:
            return dict(result, failed=True, msg="not in the inventory: %s" % ", ".join(unknown))
        out = {}

        def read(host):
            try:
                out[host] = self._one(host, task_vars, args)
            except _errors.ENGINE_ERRORS as exc:  # an OS error starting the host's connection, and the like
                out[host] = {"host": host, "failed": True, "msg": _errors.message(exc)}

        # daemon threads: a host that hangs past host_timeout is reported, and does not keep the worker alive
        threads = [threading.Thread(target=read, args=(h,), name="pg_survey " + h, daemon=True) for h in hosts]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + max(1, params["host_timeout"])
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A host that has not answered is not known to be down: it may be a live primary on a slow link. It fails
        # the task (as the delegated loop's task timeout did), so no plan takes it for dead and fences it out of
        # band, or promotes past it on the operator's word that the unreachable are dead.
        for host in hosts:
            out.setdefault(host, {"host": host, "failed": True, "reachable": False,
                                  "msg": "no answer within %d s (host_timeout): it may be up and serving; find out "
                                         "why it is slow, then run again" % params["host_timeout"]})
        results = [out[h] for h in hosts]
        broken = [r for r in results if r.get("failed") and not r.get("unreachable")]
        # failed and unreachable set at the top: ansible-core would otherwise read them from the results, as for a
        # loop, and one unreachable host would make the whole read unreachable
        return dict(result, changed=False, results=results, unreachable=False, failed=bool(broken),
                    reachable_hosts=[r["host"] for r in results if r.get("reachable")],
                    unreachable_hosts=[r["host"] for r in results if not r.get("reachable")],
                    **({"msg": "; ".join("pg_info failed on %s: %s" % (r["host"], r.get("msg", "?")) for r in broken)}
                       if broken else {}))
