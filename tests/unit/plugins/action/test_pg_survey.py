"""pg_survey reads the hosts at once and reports each: an unreachable host is a result of its own (the task is not
unreachable), a host whose read fails fails the task naming it, and a host that hangs fails it after host_timeout
(slow is not dead) instead of holding the run."""

from __future__ import annotations

import threading
import time
from unittest import mock

from ansible.playbook.task import Task

from ansible_collections.immersiverse.dr.plugins.action import pg_survey

HOSTS = ["pg-primary-1", "pg-secondary-1", "pg-tertiary-1"]


def run(answers, hosts=None, **args):
    task = Task()
    task.args = {"hosts": hosts or HOSTS, "login_unix_socket": "/var/run/postgresql", "fail_on_unreachable": False,
                 **args}
    act = pg_survey.ActionModule(task, mock.MagicMock(), mock.MagicMock(), loader=None, templar=None,
                                 shared_loader_obj=None)
    seen = []

    def one(host, task_vars, fact_args):
        seen.append((host, threading.current_thread().name, dict(fact_args)))
        answer = answers[host]
        return dict(answer() if callable(answer) else answer, host=host)

    with mock.patch.object(act, "_one", side_effect=one):
        out = act.run(task_vars={"hostvars": {h: {} for h in HOSTS}, "inventory_hostname": HOSTS[1]})
    return out, seen


def test_an_unreachable_host_is_a_result_and_the_task_is_not_unreachable():
    out, seen = run({"pg-primary-1": {"unreachable": True, "msg": "Connection refused"},
                     "pg-secondary-1": {"reachable": True, "role": "standby"},
                     "pg-tertiary-1": {"reachable": True, "role": "standby"}})
    assert out["unreachable"] is False and out["failed"] is False and not out["changed"]
    assert [r["host"] for r in out["results"]] == HOSTS  # the order asked for
    assert out["unreachable_hosts"] == ["pg-primary-1"] and out["reachable_hosts"] == HOSTS[1:]
    # each host read in a thread of its own, with only pg_info's own arguments
    assert len({name for _h, name, _a in seen}) == 3
    assert all("hosts" not in a and a["login_unix_socket"] == "/var/run/postgresql" for _h, _n, a in seen)


def test_the_reads_overlap():
    def slow():
        time.sleep(0.5)  # the behaviour under test: a read that takes 0.5 s (no wait for an event)
        return {"reachable": True}

    start = time.monotonic()
    out, _seen = run({h: slow for h in HOSTS})
    assert time.monotonic() - start < 1.2, "three reads of 0.5 s took as long as one after the other"
    assert out["reachable_hosts"] == HOSTS


def test_a_failed_read_fails_the_task_naming_the_host():
    out, _seen = run({"pg-primary-1": {"reachable": True},
                      "pg-secondary-1": {"failed": True, "msg": "psycopg2 is required"},
                      "pg-tertiary-1": {"unreachable": True, "msg": "refused"}})
    assert out["failed"] is True and "pg-secondary-1" in out["msg"] and "psycopg2" in out["msg"]
    assert "pg-tertiary-1" not in out["msg"]  # unreachable is reported, not a failure


def test_a_hanging_host_fails_the_task_after_host_timeout_and_is_never_taken_for_down():
    release = threading.Event()

    def hang():
        release.wait(30)
        return {"reachable": True}

    start = time.monotonic()
    out, _seen = run({"pg-primary-1": hang, "pg-secondary-1": {"reachable": True},
                      "pg-tertiary-1": {"reachable": True}}, host_timeout=1)
    release.set()
    assert time.monotonic() - start < 5
    first = out["results"][0]
    # slow is not dead: a plan must not fence it out of band or promote past it on "the unreachable are dead"
    assert first["host"] == "pg-primary-1" and first["failed"] and not first.get("unreachable")
    assert out["failed"] and "pg-primary-1" in out["msg"] and "host_timeout" in out["msg"]


def test_a_host_outside_the_inventory_is_refused_before_anything_runs():
    out, seen = run({}, hosts=["pg-primary-1", "../etc"])
    assert out["failed"] and "../etc" in out["msg"] and not seen
