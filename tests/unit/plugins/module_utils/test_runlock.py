"""The runbook lock over region repositories: a majority holds it, a second run is told who holds it, a killed run
on this controller is taken over, a stale one only when the operator says so, a region down does not block it."""

import datetime
import subprocess
import threading

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook import lock as runbook_lock


@pytest.fixture
def regions(tmp_path):
    return [repo_local.LocalRepository(str(tmp_path / name), name=name) for name in ("primary", "secondary",
                                                                                     "tertiary")]


class Down(repo_local.LocalRepository):
    """A region whose repository does not answer."""

    def create(self, key, data):
        raise repo_base.RepositoryError(f"{self.describe()}: cannot reach it")

    def read_start(self, key, size):
        raise repo_base.RepositoryError(f"{self.describe()}: cannot reach it")

    def list(self, prefix=""):
        raise repo_base.RepositoryError(f"{self.describe()}: cannot reach it")


def dead_process():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return dict(runbook_lock.me(), pid=proc.pid, pid_start=12345)


def race(regions, runs):
    """``runs`` runs start acquiring at the same instant: {n: whether run n got the lock}."""
    results = {}
    barrier = threading.Barrier(runs)

    def run(n):
        barrier.wait()
        try:
            results[n] = runbook_lock.acquire(regions, "runbook", f"run-{n}", f"controller {n}")["acquired"]
        except runbook_lock.LockHeld:
            results[n] = False

    threads = [threading.Thread(target=run, args=(n,)) for n in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_a_majority_holds_it_and_a_second_run_is_told_who_since_when(regions):
    first = runbook_lock.acquire(regions, "runbook", "run-1", "failover by alice")
    assert first["acquired"] and sorted(first["repositories"]) == ["primary", "secondary", "tertiary"]
    with pytest.raises(runbook_lock.LockHeld, match=r"held by failover by alice \(run run-1, pid \d+ on .*since"):
        runbook_lock.acquire(regions, "runbook", "run-2", "restore by bob")
    assert runbook_lock.acquire(regions, "runbook", "run-1", "failover by alice")["acquired"]  # its own, again
    assert sorted(runbook_lock.release(regions, "runbook", "run-2")) == []  # never another run's
    assert sorted(runbook_lock.release(regions, "runbook", "run-1")) == ["primary", "secondary", "tertiary"]
    assert runbook_lock.acquire(regions, "runbook", "run-2", "restore by bob")["acquired"]


def test_a_region_down_does_not_block_it_but_two_down_do_and_leave_nothing(regions, tmp_path):
    one_down = [Down(str(tmp_path / "gone"), name="primary")] + regions[1:]
    assert runbook_lock.acquire(one_down, "runbook", "run-1", "failover")["repositories"] == ["secondary", "tertiary"]
    runbook_lock.release(one_down, "runbook", "run-1")
    two_down = [Down(str(tmp_path / "g1"), name="primary"), Down(str(tmp_path / "g2"), name="secondary"), regions[2]]
    with pytest.raises(runbook_lock.LockHeld, match="only 1 of 3 repositories.*cannot reach it"):
        runbook_lock.acquire(two_down, "runbook", "run-1", "failover")
    assert lock_keys(regions[2]) == [], "a run without a majority took back its copy"
    # the release of run-1's earlier lock is recorded; the taken-back copy of the refused attempt is not
    assert [k.rsplit("/", 1)[-1].split("-", 1)[1] for k in release_keys(regions[2])] == ["run-1.json"]


def test_a_killed_run_on_this_controller_is_taken_over_one_elsewhere_only_past_its_ttl_when_told(regions):
    runbook_lock.acquire(regions, "runbook", "run-dead", "failover (killed)", process=dead_process())
    again = runbook_lock.acquire(regions, "runbook", "run-new", "failover (re-run)")
    assert again["acquired"] and len(again["took_over"]) == 3 and "run-dead" in again["took_over"][0]
    runbook_lock.release(regions, "runbook", "run-new")

    elsewhere = {"host": "awx-node-2", "boot_id": "b", "pid_ns": 1, "pid": 4242, "pid_start": 1}
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    runbook_lock.acquire(regions, "runbook", "run-awx", "AWX job 17", process=elsewhere, ttl_seconds=3600, now=past)
    with pytest.raises(runbook_lock.LockHeld, match="past its TTL.*dr_lock_break_stale=true"):
        runbook_lock.acquire(regions, "runbook", "run-laptop", "laptop")
    assert runbook_lock.acquire(regions, "runbook", "run-laptop", "laptop", break_stale=True)["acquired"]
    runbook_lock.release(regions, "runbook", "run-laptop")
    runbook_lock.acquire(regions, "runbook", "run-awx", "AWX job 18", process=elsewhere)  # alive, not stale
    with pytest.raises(runbook_lock.LockHeld, match="wait for it to finish.*dr_lock_break=run-awx"):
        runbook_lock.acquire(regions, "runbook", "run-laptop", "laptop", break_stale=True)
    # the operator knows that run is dead (its AWX pod is gone) and names it
    taken = runbook_lock.acquire(regions, "runbook", "run-laptop", "laptop", break_run_id="run-awx")
    assert taken["acquired"] and len(taken["took_over"]) == 3


def test_a_same_named_host_elsewhere_is_never_taken_for_this_one(regions):
    """Another container with this host name (its own pid namespace or boot): its pid means nothing here."""
    twin = dict(runbook_lock.me(), pid=1, pid_start=0, pid_ns=-1)
    runbook_lock.acquire(regions, "runbook", "run-twin", "twin", process=twin)
    with pytest.raises(runbook_lock.LockHeld, match="held by twin"):
        runbook_lock.acquire(regions, "runbook", "run-me", "me")


def test_two_runs_taking_over_the_same_dead_holder_never_both_win(regions):
    runbook_lock.acquire(regions, "runbook", "run-dead", "killed", process=dead_process())
    results = race(regions, 6)
    assert sum(results.values()) == 1 and len(results) == 6
    holders = [(doc or {}).get("run_id") for doc in runbook_lock.status(regions, "runbook").values()]
    winner = next(n for n, ok in results.items() if ok)
    assert holders.count(f"run-{winner}") >= 2 and "run-dead" not in holders, holders


def test_check_mode_says_what_a_run_would_meet_and_writes_nothing(regions, tmp_path):
    runbook_lock.acquire(regions, "runbook", "run-1", "failover by alice")
    seen = runbook_lock.would_acquire(regions, "runbook", "run-2")
    assert not seen["acquired"] and "failover by alice" in seen["would_wait_for"][0]
    gone = [Down(str(tmp_path / "g1"), name="aa"), Down(str(tmp_path / "g2"), name="ab"), regions[2]]
    seen = runbook_lock.would_acquire(gone, "runbook", "run-2")
    assert not seen["acquired"] and len(seen["unreachable"]) == 2
    assert len(lock_keys(regions[0])) == 1


def test_a_quorum_can_be_said_for_regions_that_are_gone_for_good(regions, tmp_path):
    two = [Down(str(tmp_path / "g1"), name="primary"), regions[1]]
    with pytest.raises(runbook_lock.LockHeld, match="only 1 of 2 repositories \\(2 needed\\).*dr_lock_quorum"):
        runbook_lock.acquire(two, "runbook", "run-1", "failover")
    assert runbook_lock.acquire(two, "runbook", "run-1", "failover", quorum=1)["acquired"]


def test_two_controllers_racing_never_both_hold_it(regions):
    results = race(regions, 8)
    assert sum(results.values()) == 1 and len(results) == 8


def test_bad_names_are_refused():
    for name in ("../etc", "Runbook", "", "x" * 65):
        with pytest.raises(runbook_lock.LockHeld, match="lock name"):
            runbook_lock.prefix_for(name)


def lock_keys(repo):
    return [o["key"] for o in repo.list("locks/") if "/released/" not in o["key"]]


def release_keys(repo):
    return [o["key"] for o in repo.list("locks/") if "/released/" in o["key"]]


def test_a_release_leaves_its_time_and_the_next_holder_is_told_the_newest(regions):
    before = runbook_lock.acquire(regions, "runbook", "run-1", "switchover")
    assert before["last_released"] is None  # nothing was ever released
    at = datetime.datetime(2026, 12, 2, 10, 0, 0, 250000, tzinfo=datetime.UTC)
    assert sorted(runbook_lock.release(regions, "runbook", "run-1", now=at)) == ["primary", "secondary", "tertiary"]
    got = runbook_lock.acquire(regions, "runbook", "run-2", "failover")
    # microseconds kept: the failover compares it with when its detect phase began reading
    assert got["last_released"] == "2026-12-02T10:00:00.250000+00:00"
    assert all(len(release_keys(r)) == 1 for r in regions)


def test_release_records_are_bounded_and_a_path_trick_in_a_run_id_stays_one_key(regions):
    start = datetime.datetime(2026, 12, 2, 10, 0, 0, tzinfo=datetime.UTC)
    for i in range(runbook_lock.KEEP_RELEASED + 5):
        runbook_lock.acquire(regions, "runbook", f"../../wal/{i}", "failover")
        runbook_lock.release(regions, "runbook", f"../../wal/{i}", now=start + datetime.timedelta(seconds=i))
    keys = release_keys(regions[0])
    assert len(keys) == runbook_lock.KEEP_RELEASED
    assert all(k.startswith("locks/runbook/released/") and "/" not in k[len("locks/runbook/released/"):]
               for k in keys)
    newest = runbook_lock.acquire(regions, "runbook", "run-x", "failover")["last_released"]
    last = start + datetime.timedelta(seconds=runbook_lock.KEEP_RELEASED + 4)
    assert newest == last.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def test_a_repository_that_cannot_list_its_release_records_counts_as_just_released(regions, tmp_path):
    class NoList(type(regions[0])):
        def list(self, prefix=""):
            if "/released/" in prefix:
                raise repo_base.RepositoryError("listing refused")
            return super().list(prefix)

    odd = NoList(str(tmp_path / "odd"), name="odd")
    at = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
    assert runbook_lock.last_released([regions[0], odd], "runbook", now=at) == "2026-12-02T12:00:00.000000+00:00"
    assert runbook_lock.last_released([regions[0]], "runbook", now=at) is None
