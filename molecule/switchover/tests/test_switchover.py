"""Planned switchover to secondary and back to primary under traffic."""

import scenario as sc


def test_both_switchovers_succeeded():
    for name, region in (("to-secondary", "secondary"), ("to-primary", "primary")):
        run = sc.run(name)
        assert run["rc"] == 0, run["out"][-3000:]
        report = sc.report_of(name, "switchover")
        assert report["outcome"] == "succeeded" and report["region"] == region
        assert report["plan"]["state"] == "switch"
        print(f"{name}: writes unavailable {report['write_unavailable_seconds']} s "
              "(stop -> promoted, as Ansible saw it)")


def test_no_acknowledged_write_was_lost():
    m = sc.compare()
    print(f"acked {m['acked']}, lost {m['lost_before_failure'] + m['lost_after_failure']}, "
          f"outages {[round(o['seconds'], 3) for o in m['outages']]}")
    assert m["acked"] > 100
    assert m["lost_before_failure"] == 0 and m["lost_after_failure"] == 0 and m["missing"] == 0


def test_no_data_directory_was_recloned():
    out = sc.outcome()
    assert out["inode_before"] == out["inode_after"]
    for name in ("to-secondary", "to-primary"):
        text = sc.run(name)["out"]
        # the old primary became a standby by pg_rewind, never by pg_basebackup
        assert "changed: [" in text.split("Rewind onto the primary's timeline", 1)[1].split("TASK", 1)[0]
        assert "Take the base backup from the primary" not in text


def test_primary_serves_again_and_both_others_stream_from_it():
    after = sc.detect()
    assert after["current_primary"] == "pg-primary-1"
    for host in ("pg-secondary-1", "pg-tertiary-1"):
        r = sc.row(after, host)
        assert r["role"] == "standby" and r["receiver_status"] == "streaming"
        assert r["sender_host"] == "dr-lab-primary-db"


def test_the_service_followed_both_switchovers():
    """roles/service moved with the database each time: the target's app ready, the old region's app at 0 behind
    the deny-all policy and its Redis a replica; afterwards (back in primary) that is what the lab's Redis,
    Kubernetes stand-ins and Route 53 stand-in hold."""
    import boto3
    import redis
    from kubernetes import client

    port = {"primary": 1, "secondary": 2, "tertiary": 3}
    for name, region, old in (("to-secondary", "secondary", "primary"), ("to-primary", "primary", "secondary")):
        steps = sc.report_of(name, "switchover")["service"]
        done = {(s["step"], s["region"], s.get("what")): s["outcome"] for s in steps}
        assert done.get(("reopen", region, "app")) == "ready", steps
        for what in ("app scaled to 0", "deny-all NetworkPolicy", f"Redis read-only replica of {region}"):
            assert done.get(("isolate", old, what)) in ("changed", "already"), (what, steps)
        assert not [s for s in steps if s.get("what") == "not reached"], steps

    def api(region):
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{port[region]}6443"
        cfg.api_key = {"authorization": "Bearer lab-dummy-token"}
        return client.ApiClient(cfg)

    roles = {r: redis.Redis(port=port[r] * 10000 + 6379).info("replication") for r in port}
    assert roles["primary"]["role"] == "master"
    for r in ("secondary", "tertiary"):
        assert (roles[r]["role"], roles[r]["master_host"]) == ("slave", "dr-lab-primary-svc"), roles[r]
    serving = client.AppsV1Api(api("primary")).read_namespaced_deployment("auth-service", "auth")
    assert serving.spec.replicas == 3 and serving.status.ready_replicas == 3
    assert client.AppsV1Api(api("secondary")).read_namespaced_deployment("auth-service", "auth").spec.replicas == 0
    policies = client.NetworkingV1Api(api("secondary")).list_namespaced_network_policy("auth").items
    assert "immersiverse-dr-deny-all" in [p.metadata.name for p in policies]
    assert "immersiverse-dr-deny-all" not in [
        p.metadata.name for p in client.NetworkingV1Api(api("primary")).list_namespaced_network_policy("auth").items]
    r53 = boto3.client("route53", endpoint_url="http://127.0.0.1:40053", region_name="us-east-1",
                       aws_access_key_id="lab-route53-standin", aws_secret_access_key="lab-route53-standin")
    zone = r53.list_hosted_zones_by_name(DNSName="lab.immersiverse.internal")["HostedZones"][0]["Id"]
    records = {r["SetIdentifier"]: r["Failover"] for r in r53.list_resource_record_sets(HostedZoneId=zone)[
        "ResourceRecordSets"] if r.get("SetIdentifier") and r["Name"].startswith("auth.")}
    assert records.get("primary") == "PRIMARY" and "secondary" not in records, records
