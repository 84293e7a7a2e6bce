from ansible_collections.immersiverse.dr.plugins.module_utils._runbook.topology import promotion_blockers, summarise

REGIONS = ["primary", "secondary", "tertiary"]


def host(name, region, role=None, sysid="7000", timeline=1, lsn="0/3000000", sender=None):
    if role is None:
        return {"host": name, "region": region, "facts": {"reachable": False, "error": "cannot connect"}}
    return {
        "host": name,
        "region": region,
        "facts": {
            "reachable": True,
            "role": role,
            "system_identifier": sysid,
            "timeline": timeline,
            "current_lsn": lsn,
            "replay_lag_bytes": 0,
            "wal_receiver": {"sender_host": sender, "status": "streaming"} if sender else None,
        },
    }


def test_one_primary_two_standbys():
    s = summarise([host("b", "secondary", "standby", sender="a"), host("a", "primary", "primary"),
                   host("c", "tertiary", "standby", sender="a")], regions=REGIONS)
    assert s["current_primary"] == "a"
    assert s["current_primary_region"] == "primary"
    assert not s["split_brain"]
    assert s["foreign_primaries"] == []
    assert [r["host"] for r in s["hosts"]] == ["a", "b", "c"], "rows follow the region order"


def test_two_primaries_of_one_cluster_is_split_brain_and_no_current_primary():
    s = summarise([host("a", "primary", "primary", timeline=1), host("b", "secondary", "primary", timeline=2),
                   host("c", "tertiary", "standby")], regions=REGIONS)
    assert s["split_brain"]
    assert sorted(s["primaries"]) == ["a", "b"]
    assert s["current_primary"] == "", "never pick a side of a split brain"


def test_fresh_unrelated_cluster_is_foreign_not_split_brain():
    s = summarise([host("a", "primary", "primary", sysid="1"), host("b", "secondary", "standby", sysid="1"),
                   host("c", "tertiary", "primary", sysid="99")], regions=REGIONS)
    assert not s["split_brain"]
    assert s["current_primary"] == "a"
    assert s["foreign_primaries"] == ["c"]


def test_three_fresh_clusters_prefer_the_preferred_region():
    s = summarise([host("a", "primary", "primary", sysid="1"), host("b", "secondary", "primary", sysid="2"),
                   host("c", "tertiary", "primary", sysid="3")], regions=REGIONS, preferred_region="secondary")
    assert s["current_primary"] == "b"
    assert sorted(s["foreign_primaries"]) == ["a", "c"]


def test_dead_primary_leaves_no_current_primary_and_is_listed_unreachable():
    s = summarise([host("a", "primary"), host("b", "secondary", "standby"), host("c", "tertiary", "standby")],
                  regions=REGIONS)
    assert s["current_primary"] == ""
    assert s["unreachable"] == ["a"]
    assert s["hosts"][0]["role"] == "down"
    assert "cannot connect" in s["hosts"][0]["error"]


def test_table_names_down_services():
    services = {"primary": {"services": {"s3": {"ok": True}, "redis": {"ok": False}}, "unhealthy": ["redis"]}}
    s = summarise([host("a", "primary", "primary")], services=services, regions=REGIONS)
    assert "DOWN: redis" in s["table"][1]
    assert s["unhealthy_services"] == {"primary": ["redis"]}


def _summary(*hosts):
    return summarise(list(hosts), regions=REGIONS)


def test_promotion_refused_while_another_host_serves_even_when_nobody_listed_it():
    s = _summary(host("a", "primary", "primary"), host("b", "secondary", "standby", sender="a"),
                 host("c", "tertiary", "standby", sender="a"))
    refusals = promotion_blockers(s, "b")
    assert len(refusals) == 1 and refusals[0].startswith("a still accepts writes")
    assert promotion_blockers(s, "b", isolated=["a"]) == []


def test_promotion_refused_for_an_unreachable_or_stopped_host_until_isolated():
    s = _summary(host("a", "primary"), host("b", "secondary", "standby"), host("c", "tertiary", "down"))
    refusals = promotion_blockers(s, "b")
    assert any(r.startswith("a could not be reached") for r in refusals)
    assert any(r.startswith("c has PostgreSQL down") for r in refusals)
    assert promotion_blockers(s, "b", isolated=["a", "c"]) == []


def test_promotion_refused_for_a_candidate_that_is_no_standby_of_the_cluster():
    s = _summary(host("a", "primary"), host("b", "secondary", "standby", sysid="9999"),
                 host("c", "tertiary", "standby"), host("d", "tertiary", "standby"))
    assert "another cluster" in promotion_blockers(s, "b", isolated=["a"])[0]
    s = _summary(host("a", "primary"), host("b", "secondary", "primary"), host("c", "tertiary", "standby"))
    assert any("not a reachable standby" in r for r in promotion_blockers(s, "b", isolated=["a"]))
    assert any("not among the hosts" in r for r in promotion_blockers(s, "zz", isolated=["a"]))


def test_promotion_refused_without_a_detect_summary():
    assert "no detect summary" in promotion_blockers({}, "b")[0]
    assert "no detect summary" in promotion_blockers(None, "b")[0]


def test_a_restore_may_open_only_when_no_other_host_could_serve():
    serving = _summary(host("a", "primary", "primary"), host("b", "secondary", "standby"),
                       host("c", "tertiary", "standby"))
    assert promotion_blockers(serving, "a", restoring=True) == [], "restoring the serving primary itself"
    refusals = promotion_blockers(serving, "b", restoring=True)
    assert len(refusals) == 1 and refusals[0].startswith("a still accepts writes")
    down = _summary(host("a", "primary"), host("b", "secondary", "down"), host("c", "tertiary", "standby"))
    assert promotion_blockers(down, "b", restoring=True)[0].startswith("a could not be reached")
