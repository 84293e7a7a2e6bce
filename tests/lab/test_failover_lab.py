"""failover.yml on the lab, the cases the Molecule scenarios (molecule/failover, partition, switchover) do not cover:
refusals of a wrong limit, --check, a lagging candidate refused then forced, a run killed half-way and resumed while
a second controller process races it for the runbook lock.

The tests work from whichever region serves. Each one that fails the lab over brings the failed host back with
rejoin.yml afterwards, so the next test, and the next file, find one serving primary and two streaming standbys.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import REPO, VENV_BIN, Run, detect, playbook, podman

INVENTORY = str(REPO / "inventories" / "lab")
FAILOVER = str(REPO / "playbooks" / "failover.yml")
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
       "PYTHONPATH": str(REPO / "lab"), "PYTHONUNBUFFERED": "1"}


def psql(container: str, sql: str, db: str = "authdb") -> str:
    return podman("exec", container, "su", "postgres", "-c", f"psql -XAtq -d {db} -c \"{sql}\"").strip()


def layout(tmp_path) -> None:
    """Back to the lab's layout with the runbooks (molecule/resources/layout.yml), asserting it got there."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**ENV, "MOLECULE_PROJECT_DIRECTORY": str(REPO), "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path)}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), str(REPO / "molecule" / "resources" / "layout.yml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def report(run: Run) -> dict:
    paths = re.findall(r"run report: (\S+\.json)", run.out)
    assert paths, run.out[-2000:]
    return json.loads(open(paths[-1]).read())


REGIONS = ["primary", "secondary", "tertiary"]


def lab_ok(summary: dict) -> bool:
    return bool(summary["current_primary"]) and sum(
        1 for r in summary["hosts"] if r["role"] == "standby" and r["receiver_status"] == "streaming") == 2


def heal(tmp_path, summary: dict) -> None:
    """Start every stopped lab database host and rejoin each host that does not stream (rejoin.yml -l <region>)."""
    for r in summary["hosts"]:
        name = f"dr-lab-{r['region']}-db"
        if podman("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
            podman("start", name)
    for r in summary["hosts"]:
        if r["role"] != "primary" and r["receiver_status"] != "streaming":
            deadline = time.monotonic() + 60
            run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "rejoin.yml"), "-l", r["region"])
            while run.rc != 0 and "cannot be reached" in run.out and time.monotonic() < deadline:  # still booting
                time.sleep(2)
                run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "rejoin.yml"), "-l", r["region"])
            assert run.rc == 0, run.out[-3000:]


def unreachable_service(tmp_path, region: str) -> str:
    """An inventory source that points the region's Redis and Kubernetes API at a closed port (added after the
    lab's inventory with a second -i: its host variables win over the region's group_vars)."""
    path = tmp_path / f"unreachable-{region}.yml"
    path.write_text(json.dumps({"all": {"hosts": {f"pg-{region}-1": {
        "dr_redis_url": "redis://127.0.0.1:9/0", "dr_k8s_host": "http://127.0.0.1:9"}}}}))
    return str(path)


def _k8s(region: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{REGIONS.index(region) + 1}6443"
    cfg.api_key = {"authorization": "Bearer lab-dummy-token"}
    return client.ApiClient(cfg)


def apps(region: str):
    from kubernetes import client

    return client.AppsV1Api(_k8s(region))


def networking(region: str):
    from kubernetes import client

    return client.NetworkingV1Api(_k8s(region))


def redis_role(region: str) -> tuple[str, str | None]:
    import redis

    info = redis.Redis(port=(REGIONS.index(region) + 1) * 10000 + 6379).info("replication")
    return info["role"], info.get("master_host")


@pytest.fixture
def serving(tmp_path):
    """The lab with one serving primary and two streaming standbys, in whichever region serves; afterwards the
    hosts the test failed are started and rejoined (the new primary keeps serving, as the next tests expect)."""
    summary = detect(tmp_path)
    if not lab_ok(summary):
        layout(tmp_path / "repair")
        summary = detect(tmp_path)
    assert lab_ok(summary), summary["table"]
    now = REGIONS.index(summary["current_primary_region"])
    yield {"summary": summary, "primary": REGIONS[now], "candidate": REGIONS[(now + 1) % 3],
           "third": REGIONS[(now + 2) % 3]}
    heal(tmp_path, detect(tmp_path))
    assert lab_ok(detect(tmp_path))


def test_a_limit_that_names_no_region_or_two_is_refused_and_changes_nothing(tmp_path):
    before = detect(tmp_path)
    none = playbook("-i", INVENTORY, FAILOVER)
    assert none.rc != 0 and "No limit was given" in none.out and "Nothing was changed" in none.out
    two = playbook("-i", INVENTORY, FAILOVER, "-l", "secondary,tertiary")
    assert two.rc != 0 and "covers secondary, tertiary" in two.out
    assert not none.changed() and not two.changed()
    assert detect(tmp_path)["current_primary"] == before["current_primary"]


def test_check_mode_prints_the_exact_plan_and_changes_nothing(tmp_path):
    before = detect(tmp_path)
    primary = before["current_primary"]
    target = "tertiary" if before["current_primary_region"] != "tertiary" else "secondary"
    run = playbook("-i", INVENTORY, FAILOVER, "-l", target, "--check")
    assert run.rc == 0, run.out[-3000:]
    assert "CHECK MODE - nothing will be changed" in run.out
    assert f"promote: pg-{target}-1" in run.out
    assert f"fence: {primary} / stop / accepts writes" in run.out
    assert "switchover.yml" in run.out  # a serving primary: the plan says a switchover loses nothing
    # the regions' table is part of the plan (detect's own table task is not on the failover's critical path)
    assert re.search(r"REGION\s+HOST\s+ROLE", run.out) and f"pg-{target}-1" in run.out
    assert not run.changed()
    after = detect(tmp_path)
    assert after["current_primary"] == primary
    assert all(r["role"] != "down" for r in after["hosts"])
    assert report(run)["outcome"] == "check" and report(run)["check_mode"] is True


def test_synchronous_playbook_refuses_what_would_block_writes_and_check_changes_nothing(tmp_path):
    sync = str(REPO / "playbooks" / "synchronous.yml")
    every = json.dumps({"dr_synchronous_regions": REGIONS})
    # a quorum of 3 out of the 2 standbys that stream: every commit would wait
    blocked = playbook("-i", INVENTORY, sync, "-e", every, "-e", "synchronous_count=3")
    msg = " ".join(blocked.out.split())
    assert blocked.rc != 0 and "only 2 of those standbys" in msg and "the quorum is 3" in msg, msg[-2000:]
    assert "Nothing was changed" in msg and not blocked.changed()
    # a region the inventory does not have
    unknown = playbook("-i", INVENTORY, sync, "-e", json.dumps({"dr_synchronous_regions": ["primary", "mars"]}))
    assert unknown.rc != 0 and "every entry must be one of dr_regions" in " ".join(unknown.out.split())
    assert not unknown.changed()
    # a quorum of 0, or regions as a string
    for bad in ({"dr_synchronous_regions": REGIONS, "dr_synchronous_count": 0},
                {"dr_synchronous_regions": "primary,secondary"}):
        refused = playbook("-i", INVENTORY, sync, "-e", json.dumps(bad))
        assert refused.rc != 0 and "must be a list" in refused.out and not refused.changed(), refused.out[-2000:]
    # --check says what it would write, and writes nothing
    check = playbook("-i", INVENTORY, sync, "-e", every, "--check")
    assert check.rc == 0, check.out[-3000:]
    assert "CHECK MODE - nothing was changed" in check.out and check.changed()
    after = detect(tmp_path)
    assert all(r["synchronous_standby_names"] is None for r in after["hosts"]), after["hosts"]


def test_a_lagging_candidate_is_refused_then_accepted_with_force(tmp_path, serving):
    primary, cand, third = serving["primary"], serving["candidate"], serving["third"]
    # the candidate stops streaming; the primary writes ~4 MB more, which the third region receives and it does not
    psql(f"dr-lab-{cand}-db", "ALTER SYSTEM SET primary_conninfo = ''", db="postgres")
    psql(f"dr-lab-{cand}-db", "SELECT pg_reload_conf()", db="postgres")
    psql(f"dr-lab-{primary}-db", "DROP TABLE IF EXISTS failover_lag_probe; CREATE TABLE failover_lag_probe AS "
                                 "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 4000) g")
    written = psql(f"dr-lab-{primary}-db", "SELECT pg_current_wal_lsn()", db="postgres")
    deadline = time.monotonic() + 30
    while psql(f"dr-lab-{third}-db", f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn", db="postgres") != "t":
        assert time.monotonic() < deadline, f"{third} did not replay up to {written} within 30 s"
        time.sleep(0.5)
    assert psql(f"dr-lab-{third}-db", "SELECT count(*) FROM failover_lag_probe") == "4000"  # the third has it all
    podman("kill", "--signal", "KILL", f"dr-lab-{primary}-db")
    limit = json.dumps({"dr_max_failover_lag": {"bytes": 1048576, "seconds": 3600}})

    refused = playbook("-i", INVENTORY, FAILOVER, "-l", cand, "-e", limit)
    assert refused.rc != 0
    msg = " ".join(refused.out.split())
    assert "refused, nothing was changed" in msg
    lags = rf"pg-{cand}-1 lags [0-9.]+ MiB of WAL \(\d+ bytes; limit 1048576\) behind pg-{third}-1"
    assert re.search(lags, msg), msg[-3000:]
    assert f"The most advanced standby is pg-{third}-1 in region '{third}'" in msg and "-e force=true" in msg
    assert report(refused)["outcome"] == "refused"
    seen = {r["region"]: r["role"] for r in detect(tmp_path)["hosts"]}
    assert seen == {primary: "down", cand: "standby", third: "standby"}  # nothing promoted or fenced

    # Forced past the lag, the service's preflight is what stops a run, before anything is fenced, when the target
    # region cannot serve the auth service: a topic its broker lacks; its Redis and Kubernetes API not answering.
    # One run has all three, and the refusal names each.
    forced_args = ["-l", cand, "-e", limit, "-e", "force=true"]
    topics = json.dumps({"service_kafka_topics": {"auth.token-revocations": 1, "auth.no-such-topic": 1}})
    run = playbook("-i", INVENTORY, "-i", unreachable_service(tmp_path, cand), FAILOVER, *forced_args, "-e", topics)
    msg = " ".join(run.out.split())
    assert run.rc != 0 and f"The target region {cand} cannot serve the auth service" in msg, msg[-3000:]
    for problem in ("topic auth.no-such-topic is missing", "its kubernetes does not answer",
                    "its redis does not answer"):
        assert problem in msg, msg[-3000:]
    assert "Nothing was fenced or changed" in msg and "TASK [immersiverse.dr.fence" not in run.out, msg[-3000:]
    assert {r["region"]: r["role"] for r in detect(tmp_path)["hosts"]} == seen

    # The failed region's Redis and Kubernetes API not answering do not stop it (that region is the failed one):
    # the run report says they were not reached, and the rejoin isolates them once the region is back
    forced = playbook("-i", INVENTORY, "-i", unreachable_service(tmp_path, primary), FAILOVER, *forced_args)
    assert forced.rc == 0, forced.out[-3000:]
    rep = report(forced)
    assert rep["outcome"] == "succeeded" and rep["plan"]["forced"] and rep["lag_at_decision"]["bytes"] > 1048576
    unreached = [s for s in rep["service"] if s["step"] == "isolate" and s["region"] == primary]
    assert [(s["what"], s["redis"], s["kubernetes"]) for s in unreached] == [("not reached", False, False)], unreached
    old_app = apps(primary).read_namespaced_deployment("auth-service", "auth")
    assert old_app.spec.replicas > 0  # left alone: the failover could not reach it
    heal(tmp_path, detect(tmp_path))
    assert apps(primary).read_namespaced_deployment("auth-service", "auth").spec.replicas == 0
    assert "immersiverse-dr-deny-all" in [p.metadata.name for p in networking(primary).list_namespaced_network_policy(
        "auth").items]
    assert redis_role(primary) == ("slave", f"dr-lab-{cand}-svc")
    after = detect(tmp_path)
    assert after["current_primary"] == f"pg-{cand}-1"
    row = next(r for r in after["hosts"] if r["region"] == third)
    # the third region was ahead of the new timeline's fork: it follows again (rewound), it is not left behind
    assert row["receiver_status"] == "streaming" and row["sender_host"] == f"dr-lab-{cand}-db"
    psql(f"dr-lab-{cand}-db", "DROP TABLE IF EXISTS failover_lag_probe")


def test_a_run_killed_half_way_resumes_and_a_racing_controller_is_refused_by_the_lock(tmp_path, serving):
    primary, cand, third = serving["primary"], serving["candidate"], serving["third"]
    podman("kill", "--signal", "KILL", f"dr-lab-{primary}-db")
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", INVENTORY, FAILOVER, "-l", cand]
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in first.stdout:  # killed right after the isolate phase, before it promotes
        seen.append(line)
        if "TASK [immersiverse.dr.promote : " in line or time.monotonic() > deadline:  # promote's first task
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert any("isolate" in line for line in seen), "".join(seen)[-3000:]
    assert detect(tmp_path)["current_primary"] == ""  # killed before the promotion: nobody serves

    # Two controller processes run it again at once: one takes over the dead run's lock, the other is refused.
    procs = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _racer in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    rcs = [p.returncode for p in procs]
    assert sorted(rcs) == [0, 2], [o[-2000:] for o in outs]
    loser = " ".join(outs[rcs.index(2)].split())
    assert "runbook lock" in loser and ("is held by" in loser or "keep changing" in loser), loser[-2000:]
    winner = outs[rcs.index(0)]
    assert "took over" in winner  # the killed run's lock, its process being gone
    after = detect(tmp_path)
    assert after["current_primary"] == f"pg-{cand}-1" and not after["split_brain"]
    assert next(r for r in after["hosts"] if r["region"] == third)["sender_host"] == f"dr-lab-{cand}-db"


def test_a_lock_released_after_detect_began_makes_the_failover_read_the_regions_again(tmp_path, serving):
    region = serving["primary"]  # the serving region: nothing to fail over, each run only checks and leaves it be

    def reads(run: Run) -> int:
        assert run.rc == 0, run.out[-3000:]
        return run.out.count("TASK [immersiverse.dr.detect : Read PostgreSQL on every database host (delegated")

    # a release would have to come an hour after detect began: none does, so the regions are read once
    once = playbook("-i", INVENTORY, FAILOVER, "-l", region, "-e", "failover_lock_clock_skew_seconds=-3600")
    assert reads(once) == 1 and not once.changed()
    # any release up to an hour before detect began counts: the one the run above left makes this run read again
    twice = playbook("-i", INVENTORY, FAILOVER, "-l", region, "-e", "failover_lock_clock_skew_seconds=3600")
    assert reads(twice) == 2 and not twice.changed()
    assert detect(tmp_path)["current_primary"] == f"pg-{region}-1"


SWITCHOVER = str(REPO / "playbooks" / "switchover.yml")


def test_a_switchover_that_fails_before_anything_is_promoted_starts_the_old_primary_again(tmp_path, serving):
    """Both ways a switchover rolls back: a failure before pg_promote is called (the promote role refuses its
    arguments: promote_result is not defined), and pg_promote giving up on the catch-up before it signals (the
    candidate's replay paused: "nothing was promoted"). Each time the old primary serves again, unfenced, and the
    candidate is still a standby."""
    primary = serving["summary"]["current_primary"]
    primary_db, candidate_db = f"dr-lab-{serving['primary']}-db", f"dr-lab-{serving['candidate']}-db"

    def old_primary_serves_again(run):
        assert run.rc != 0 and "Not switched" in run.out, run.out[-3000:]
        assert "serves again" in run.out, run.out[-3000:]
        assert psql(primary_db, "SELECT pg_is_in_recovery()", "postgres") == "f"
        assert psql(candidate_db, "SELECT pg_is_in_recovery()", "postgres") == "t"
        start_conf = [line.strip() for line in podman("exec", primary_db, "cat", "/etc/postgresql/15/main/start.conf")
                      .splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert start_conf == ["auto"], start_conf  # unfenced: it starts at boot again

    bad = playbook("-i", INVENTORY, SWITCHOVER, "-l", serving["candidate"], "-e", "promote_wait_seconds=soon")
    assert "promote_wait_seconds" in bad.out, bad.out[-3000:]
    old_primary_serves_again(bad)

    psql(candidate_db, "SELECT pg_wal_replay_pause()", "postgres")
    try:
        # WAL the paused candidate cannot replay: the old primary's shutdown checkpoint lies beyond it
        psql(primary_db, "SELECT pg_logical_emit_message(false, 'dr-test', 'after the pause')", "postgres")
        paused = playbook("-i", INVENTORY, SWITCHOVER, "-l", serving["candidate"], "-e", "switchover_catchup_seconds=3")
    finally:
        psql(candidate_db, "SELECT pg_wal_replay_resume()", "postgres")
    assert "nothing was promoted" in paused.out, paused.out[-3000:]
    old_primary_serves_again(paused)
    assert detect(tmp_path)["current_primary"] == primary
