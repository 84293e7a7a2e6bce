"""The lab and its runbook roles, end to end on real PostgreSQL hosts in three regions."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, assert_no_secret, detect, playbook, podman

INVENTORY = str(REPO / "inventories" / "lab")


def test_lab_has_one_primary_and_two_streaming_standbys(tmp_path):
    d = detect(tmp_path, services=True)
    assert d["current_primary"], d["table"]
    assert not d["split_brain"] and not d["foreign_primaries"] and not d["unreachable"]
    standbys = [h for h in d["hosts"] if h["role"] == "standby"]
    assert len(standbys) == 2
    primary_address = "dr-lab-{}-db".format(d["current_primary_region"])
    assert {h["sender_host"] for h in standbys} == {primary_address}
    assert len({h["system_identifier"] for h in d["hosts"]}) == 1
    for region, result in d["services"].items():
        assert result["healthy"], (region, result)


def test_lab_playbook_check_mode_then_rerun_changes_nothing():
    check = playbook("-i", INVENTORY, str(REPO / "playbooks" / "lab.yml"), "--check")
    assert check.rc == 0, check.out[-3000:]
    assert check.changed() == {}, check.changed()
    again = playbook("-i", INVENTORY, str(REPO / "playbooks" / "lab.yml"), "-vvv")
    assert again.rc == 0, again.out[-3000:]
    assert again.changed() == {}, again.changed()
    assert_no_secret(again)


def test_service_schema_and_seed_are_on_every_region(tmp_path):
    d = detect(tmp_path)
    for h in d["hosts"]:
        out = podman("exec", "-u", "postgres", f"dr-lab-{h['region']}-db", "psql", "-XAtq", "-d", "authdb", "-c",
                     "SELECT (SELECT count(*) FROM users) > 0, (SELECT count(*) FROM pg_constraint "
                     "WHERE conname IN ('users_user_uuid_key', 'audit_logs_request_id_key', "
                     "'platform_accounts_platform_external_id_key'))")
        assert out.strip() == "t|3", (h["host"], out)


def test_no_secret_in_pg_hba_or_auto_conf_and_no_trust_for_hosts():
    for region in ("primary", "secondary", "tertiary"):
        hba = podman("exec", f"dr-lab-{region}-db", "cat", "/etc/postgresql/15/main/pg_hba.conf")
        host_lines = [line.split() for line in hba.splitlines() if line.startswith("host")]
        assert host_lines and all(parts[-1] != "trust" for parts in host_lines), hba
        secret = (REPO / ".lab" / "secrets" / "replicator").read_text().split()[0]
        auto = podman("exec", f"dr-lab-{region}-db", "cat", "/var/lib/postgresql/15/main/postgresql.auto.conf")
        assert secret not in auto


def test_promote_refuses_while_the_primary_serves_with_or_without_a_caller_list(tmp_path):
    """With the caller's list naming the primary, and with no list at all: the role decides from the detect phase of
    its own run, not from a list the caller may forget. Both refuse; nothing changes."""
    d = detect(tmp_path)
    primary = d["current_primary"]
    standby = next(h["host"] for h in d["hosts"] if h["role"] == "standby")
    listed = tmp_path / "promote-listed.yml"
    listed.write_text(f"""
- hosts: {standby}
  gather_facts: false
  roles:
    - role: immersiverse.dr.promote
      vars:
        promote_fenced_hosts: [{primary}]
""")
    run = playbook("-i", INVENTORY, str(listed))
    assert run.rc != 0
    assert "still accepts writes" in run.out
    unlisted = tmp_path / "promote-unlisted.yml"
    unlisted.write_text(f"""
- hosts: databases
  gather_facts: false
  roles:
    - role: immersiverse.dr.detect
      vars:
        detect_check_services: false
  tasks:
    - ansible.builtin.include_role:
        name: immersiverse.dr.promote
      when: inventory_hostname == '{standby}'
""")
    run = playbook("-i", INVENTORY, str(unlisted))
    assert run.rc != 0
    assert f"Not promoting {standby}: {primary} still accepts writes" in run.out, run.out[-3000:]
    after = detect(tmp_path)
    assert after["current_primary"] == primary and not after["split_brain"]
    assert next(h for h in after["hosts"] if h["host"] == standby)["role"] == "standby"


def test_isolate_refuses_an_unreachable_host_without_a_fence(tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text("""
all:
  hosts:
    ghost:
      ansible_connection: ansible.builtin.ssh
      ansible_host: 127.0.0.1
      ansible_port: 1
      ansible_ssh_timeout: 2
      ansible_python_interpreter: /usr/bin/python3
""")
    play = tmp_path / "isolate.yml"
    play.write_text("""
- hosts: ghost
  gather_facts: false
  roles:
    - role: immersiverse.dr.isolate
      vars:
        isolate_fence_command: []
""")
    run = playbook("-i", str(inv), str(play))
    assert run.rc != 0
    assert "cannot be reached, so it cannot be stopped" in run.out


def test_drill_fails_over_measures_rpo_rto_and_rejoins(tmp_path):
    before = detect(tmp_path)
    run = playbook("-i", INVENTORY, str(REPO / "playbooks" / "drill.yml"),
                   "-e", "drill_warmup=5", "-e", "drill_cooldown=3", timeout=1200)
    assert run.rc == 0, run.out[-5000:]
    assert "RPO achieved:" in run.out and "RTO achieved:" in run.out
    reports = sorted((REPO / ".lab" / "drills").glob("*/report.json"))
    report = json.loads(reports[-1].read_text())
    assert report["failed_region"] == before["current_primary_region"]
    assert report["new_primary_region"] != report["failed_region"]
    m = report["measurement"]
    assert m["acked"] > 100, "the generator wrote under the drill"
    assert m["lost_before_failure"] == m["missing"], "nothing acknowledged after the failure may be lost"
    assert 0 < report["rto_seconds"] < 120
    v = report["verify"]
    assert v["role"] == "primary" and int(v["timeline"]) >= 2
    assert int(v["invariants"]["orphan_platform_accounts"]) == 0 and int(v["invariants"]["users"]) > 0
    assert "audit_logs_request_id_key" in v["amcheck_passed"], "bt_index_check did not run on the unique index"
    # streaming replication at 100 writes/s: what is lost is at most the last second or so, and the report's RPO is
    # the journal's (no write lost means an RPO of 0, and the reverse)
    assert report["rpo_seconds"] == m["rpo_seconds"] and report["rpo_seconds"] <= 5.0
    assert m["lost_before_failure"] > 0 or report["rpo_seconds"] == 0
    after = detect(tmp_path)
    assert after["current_primary_region"] == report["new_primary_region"]
    assert not after["unreachable"] and not after["split_brain"]
    failed = next(h for h in after["hosts"] if h["region"] == report["failed_region"])
    assert failed["role"] == "standby" and failed["sender_host"] == "dr-lab-{}-db".format(report["new_primary_region"])
    journal = Path(reports[-1]).with_name("journal.jsonl").read_text()
    secret = (REPO / ".lab" / "secrets" / "auth_app").read_text().split()[0]
    assert secret not in journal and secret not in run.out
    service_followed_the_failover(report, journal)


def service_followed_the_failover(report: dict, journal: str) -> None:
    """The service layer moved with the database (roles/service, docs/service.md): Redis and the app serve in the
    new region, the old region's app runs 0 replicas behind a deny-all policy, DNS points at the new region, the
    revocations the killed primary may have lost were checked against its region's stream, and the generator's
    revocations kept flowing end to end (published and cached in the new region)."""
    import boto3
    import redis
    from kubernetes import client

    new, old = report["new_primary_region"], report["failed_region"]
    port = {"primary": 1, "secondary": 2, "tertiary": 3}

    def api(region):
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{port[region]}6443"
        cfg.api_key = {"authorization": "Bearer lab-dummy-token"}
        return client.ApiClient(cfg)

    roles = {r: redis.Redis(port=port[r] * 10000 + 6379).info("replication") for r in port}
    assert roles[new]["role"] == "master"
    for r in port:
        if r != new:
            assert roles[r]["role"] == "slave" and roles[r]["master_host"] == f"dr-lab-{new}-svc", (r, roles[r])
            assert roles[r]["master_link_status"] == "up", (r, roles[r])
    serving = client.AppsV1Api(api(new)).read_namespaced_deployment("auth-service", "auth")
    assert serving.spec.replicas == 3 and serving.status.ready_replicas == 3
    config = client.CoreV1Api(api(new)).read_namespaced_config_map("auth-service-db", "auth").data
    assert config["DB_PORT"] == f"{port[new]}5432" and config["REGION"] == new and config["REDIS_URL"]
    assert client.AppsV1Api(api(old)).read_namespaced_deployment("auth-service", "auth").spec.replicas == 0
    policy = client.NetworkingV1Api(api(old)).read_namespaced_network_policy("immersiverse-dr-deny-all", "auth")
    assert policy.spec.pod_selector.match_labels is None and sorted(policy.spec.policy_types) == ["Egress", "Ingress"]
    r53 = boto3.client("route53", endpoint_url="http://127.0.0.1:40053", region_name="us-east-1",
                       aws_access_key_id="lab-route53-standin", aws_secret_access_key="lab-route53-standin")
    zone = r53.list_hosted_zones_by_name(DNSName="lab.immersiverse.internal")["HostedZones"][0]["Id"]
    records = {r["SetIdentifier"]: r for r in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
               if r.get("SetIdentifier") and r["Name"].startswith("auth.")}
    assert records[new]["Failover"] == "PRIMARY" and records[new]["ResourceRecords"][0]["Value"].endswith(
        f".{port[new]}")
    assert old not in records, "the failed region is still in DNS"
    failover = json.loads(Path(report["failover_report"]).read_text())
    steps = {(s["step"], s.get("what")) for s in failover["service"]}
    assert ("recovered", None) in steps, "the killed primary may have lost revocations: they were not checked"
    recovered = next(s for s in failover["service"] if s["step"] == "recovered")
    assert recovered["revocations"]["verified"] is True and recovered["revocations"]["cutoff"] is None
    # the new primary takes writes before the service has followed (the fence keeps one writer; the app, Redis and
    # DNS follow off the write path): from the end of the failover on, every revocation is published and cached
    settled = failover["phases"][-1]["end"]
    later = [json.loads(line) for line in journal.splitlines()]
    later = [a for a in later if a.get("type") == "ack" and a.get("op") == "revoke" and a["acked_at"] > settled]
    assert later, "no revocation after the failover"
    assert all(a["region"] == new and a.get("kafka_acked") and a.get("redis_set") for a in later), later[:3]
