"""The runbook lock over region repositories: a majority holds it, a second run is told who holds it, a killed run
on this controller is taken over, a stale one only when the operator says so, a region down does not block it."""

import datetime
import subprocess
import threading

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod
from ansible_collections.immersiverse.dr.plugins.module_utils import _runlock

KEY = "locks/runbook.json"


@pytest.fixture
def regions(tmp_path):
    return [repo_mod.LocalRepository(str(tmp_path / name), name=name) for name in ("primary", "secondary", "tertiary")]


class Down(repo_mod.LocalRepository):
    """A region whose repository does not answer."""

    def create(self, key, data):
        raise repo_mod.RepositoryError(f"{self.describe()}: cannot reach it")

    def read_start(self, key, size):
        raise repo_mod.RepositoryError(f"{self.describe()}: cannot reach it")


def dead_process():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return {"host": _runlock.me()["host"], "pid": proc.pid, "pid_start": 12345}


def test_a_majority_holds_it_and_a_second_run_is_told_who_since_when(regions):
    first = _runlock.acquire(regions, "runbook", "run-1", "failover by alice")
    assert first["acquired"] and sorted(first["repositories"]) == ["primary", "secondary", "tertiary"]
    with pytest.raises(_runlock.LockHeld, match=r"held by failover by alice \(run run-1, pid \d+ on .*since"):
        _runlock.acquire(regions, "runbook", "run-2", "restore by bob")
    assert _runlock.acquire(regions, "runbook", "run-1", "failover by alice")["acquired"]  # its own, again
    assert sorted(_runlock.release(regions, "runbook", "run-2")) == []  # never another run's
    assert sorted(_runlock.release(regions, "runbook", "run-1")) == ["primary", "secondary", "tertiary"]
    assert _runlock.acquire(regions, "runbook", "run-2", "restore by bob")["acquired"]


def test_a_region_down_does_not_block_it_but_two_down_do_and_leave_nothing(regions, tmp_path):
    one_down = [Down(str(tmp_path / "gone"), name="primary")] + regions[1:]
    assert _runlock.acquire(one_down, "runbook", "run-1", "failover")["repositories"] == ["secondary", "tertiary"]
    _runlock.release(one_down, "runbook", "run-1")
    two_down = [Down(str(tmp_path / "g1"), name="primary"), Down(str(tmp_path / "g2"), name="secondary"), regions[2]]
    with pytest.raises(_runlock.LockHeld, match="only 1 of 3 repositories.*cannot reach it"):
        _runlock.acquire(two_down, "runbook", "run-1", "failover")
    assert regions[2].head(KEY) is None, "a run without a majority took back its copy"


def test_a_killed_run_on_this_controller_is_taken_over_one_elsewhere_only_past_its_ttl_when_told(regions):
    _runlock.acquire(regions, "runbook", "run-dead", "failover (killed)", process=dead_process())
    again = _runlock.acquire(regions, "runbook", "run-new", "failover (re-run)")
    assert again["acquired"] and len(again["took_over"]) == 3 and "run-dead" in again["took_over"][0]
    _runlock.release(regions, "runbook", "run-new")

    elsewhere = {"host": "awx-node-2", "pid": 4242, "pid_start": 1}
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    _runlock.acquire(regions, "runbook", "run-awx", "AWX job 17", process=elsewhere, ttl_seconds=3600, now=past)
    with pytest.raises(_runlock.LockHeld, match="past its TTL.*dr_lock_break_stale=true"):
        _runlock.acquire(regions, "runbook", "run-laptop", "laptop")
    assert _runlock.acquire(regions, "runbook", "run-laptop", "laptop", break_stale=True)["acquired"]
    _runlock.release(regions, "runbook", "run-laptop")
    _runlock.acquire(regions, "runbook", "run-awx", "AWX job 18", process=elsewhere)  # alive, not stale
    with pytest.raises(_runlock.LockHeld, match="wait for it to finish"):
        _runlock.acquire(regions, "runbook", "run-laptop", "laptop", break_stale=True)


def test_two_controllers_racing_never_both_hold_it(regions):
    results = {}
    barrier = threading.Barrier(8)

    def run(n):
        barrier.wait()
        try:
            results[n] = _runlock.acquire(regions, "runbook", f"run-{n}", f"controller {n}")["acquired"]
        except _runlock.LockHeld:
            results[n] = False

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results.values()) == 1 and len(results) == 8


def test_bad_names_are_refused():
    for name in ("../etc", "Runbook", "", "x" * 65):
        with pytest.raises(_runlock.LockHeld, match="lock name"):
            _runlock.key_for(name)
