"""A re-run of a restore that opened: planning on ``latest`` may fail (the timeline the restore created has WAL not
archived yet), and the module then plans the finished request again on its own timeline, so the role says "nothing
to do" instead of failing. Only for that very request."""

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.modules import pg_restore

TARGET = {"type": "time", "value": "2026-12-04T19:28:11.123459+00", "inclusive": True, "timeline": "latest"}


def _state(phase="recovered", **target):
    return {"phase": phase, "request": {"backup_id": "B1", "target": dict(TARGET, **target), "timeline": 9}}


@pytest.fixture
def planner(monkeypatch):
    calls = []

    def plan(repositories, target, system_identifier=None, backup_id=None, use_partial=False, commit_times=None):
        calls.append((dict(target), backup_id))
        if target["timeline"] == "latest":
            raise restore_target.RestoreError("WAL segment 0000000A000000000000000A is missing from every repository")
        return {"backup": {"id": backup_id}, "timeline": int(target["timeline"]),
                "target": {k: v for k, v in target.items() if k not in ("moment", "lsn_int")}}

    monkeypatch.setattr(pg_restore.restore_plan, "plan", plan)
    monkeypatch.setattr(pg_restore.restore_plan, "pg_waldump_commit_times", lambda _bin: None)
    return calls


PARAMS = {"data_dir": "/var/lib/postgresql/15/main", "use_partial": False, "pg_bin_dir": "/usr/lib/postgresql/15/bin"}


def test_the_finished_request_is_planned_again_on_its_own_timeline(monkeypatch, planner):
    monkeypatch.setattr(pg_restore.restore_datadir, "read_state", lambda _d: _state())
    plan = pg_restore._finished_request_plan([], dict(TARGET), None, PARAMS)
    assert planner == [(dict(TARGET, timeline="9"), "B1")]
    # the plan is that request: the same backup and target (on latest), the timeline it resolved to
    assert plan["backup"]["id"] == "B1" and plan["timeline"] == 9 and plan["target"] == TARGET
    assert pg_restore.restore_datadir.same_request(_state(), plan)


@pytest.mark.parametrize("state", [
    None,                                   # no restore here
    _state(phase="restored"),               # it did not open: the restore continues, it is planned as asked
    _state(value="2026-12-04T19:00:00+00"),  # another target
    _state(inclusive=False),
    _state(timeline="9"),                   # it asked for another timeline
], ids=["none", "not-opened", "other-target", "other-inclusive", "other-timeline"])
def test_anything_else_keeps_the_planning_error(monkeypatch, planner, state):
    monkeypatch.setattr(pg_restore.restore_datadir, "read_state", lambda _d: state)
    assert pg_restore._finished_request_plan([], dict(TARGET), None, PARAMS) is None
    assert planner == []
