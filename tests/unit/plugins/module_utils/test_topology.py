from ansible_collections.immersiverse.dr.plugins.module_utils._topology import summarise

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
