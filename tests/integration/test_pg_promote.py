"""_pg.promote against real servers: check mode runs nothing, promotion moves to a new timeline, re-runs are no-ops."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from test_pg_facts import facts, params, wait_for  # noqa: E402

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection  # noqa: E402
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import promote as pg_promote  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def standby(pg_server_factory):
    primary = pg_server_factory("promote-primary")
    standby = pg_server_factory.standby(primary, "promote-standby")
    wait_for(lambda: (facts(standby)["wal_receiver"] or {}).get("status") == "streaming")
    yield primary, standby
    primary.destroy()
    standby.destroy()


def test_check_mode_reports_and_changes_nothing(standby):
    s = standby[1]
    conn = pg_connection.connect(params(s))
    try:
        res = pg_promote.promote(conn, check_mode=True)
    finally:
        conn.close()
    assert res["changed"] and not res["promoted"]
    assert res["would_run"] == "SELECT pg_promote(false), then pg_is_in_recovery() until false (60 s at most)"
    assert facts(s)["in_recovery"], "check mode must not promote"


def test_promote_then_rerun_is_a_no_op(standby):
    p, s = standby
    p.stop("immediate")
    conn = pg_connection.connect(params(s))
    try:
        first = pg_promote.promote(conn)
        second = pg_promote.promote(conn)
    finally:
        conn.close()
    assert first["changed"] and first["promoted"]
    assert (first["before"]["timeline"], first["after"]["timeline"]) == (1, 2)
    assert not first["after"]["in_recovery"]
    assert not second["changed"] and not second["promoted"]
    s.psql("CREATE TABLE written_after_promotion (x int)")
