"""The Route 53 failover records of the service's name (plugins/module_utils/_service/dns.py): the change computation
as a pure function, and the calls around it against a fake client that applies a change batch step by step as Route
53 validates it. moto's server runs it for real in tests/integration/test_dns_failover.py."""

import copy
import itertools

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import dns

NAME = "auth.dr.example.com."
TARGETS = {"primary": "192.0.2.10", "secondary": "192.0.2.20", "tertiary": "192.0.2.30"}


def spec(**over):
    base = {
        "record_name": "auth.dr.example.com",
        "record_type": "A",
        "ttl": 30,
        "targets": dict(TARGETS),
        "serving": "primary",
        "standby": "secondary",
        "remove": [],
        "health_checks": {},
    }
    base.update(over)
    return base


def rec(region, role, value=None, ttl=30, name=NAME, rtype="A", **more):
    record = {
        "Name": name,
        "Type": rtype,
        "SetIdentifier": region,
        "Failover": role,
        "TTL": ttl,
        "ResourceRecords": [{"Value": value or TARGETS[region]}],
    }
    record.update(more)
    return record


def plan(current, **over):
    return dns.plan_changes(current, dns.validate_spec(spec(**over)))


def actions(result):
    return [
        (c["Action"], c["ResourceRecordSet"]["SetIdentifier"], c["ResourceRecordSet"].get("Failover"))
        for c in result["changes"]
    ]


def apply_stepwise(current, changes):
    """The record sets after each change, in order, refusing what Route 53 refuses: a DELETE that does not match the
    current record exactly, two records of one failover role for one name and type."""
    state = {(r["Name"], r["Type"], r.get("SetIdentifier")): r for r in copy.deepcopy(current)}
    for change in changes:
        record = change["ResourceRecordSet"]
        key = (dns.normalise_name(record["Name"]), record["Type"], record.get("SetIdentifier"))
        if change["Action"] == "DELETE":
            assert state.get(key) == record, "DELETE must carry the exact current record"
            del state[key]
        else:
            state[key] = copy.deepcopy(dict(record, Name=key[0]))
        for (name, rtype), group in itertools.groupby(
            sorted(state.values(), key=lambda r: (r["Name"], r["Type"])), key=lambda r: (r["Name"], r["Type"])
        ):
            roles = [r.get("Failover") for r in group if r.get("Failover")]
            assert len(roles) == len(set(roles)), f"a step of the batch has two {roles} records of {name} {rtype}"
    return list(state.values())


def failover_roles(records, name=NAME, rtype="A"):
    return {
        r["SetIdentifier"]: r["Failover"]
        for r in records
        if r["Name"] == name and r["Type"] == rtype and r.get("SetIdentifier")
    }


# -- the change computation (pure) --------------------------------------------------------------------------------
def test_an_empty_name_gets_primary_then_secondary():
    result = plan([])
    assert actions(result) == [("UPSERT", "primary", "PRIMARY"), ("UPSERT", "secondary", "SECONDARY")]
    assert result["before"] == {}
    assert result["after"] == {
        "primary": {"failover": "PRIMARY", "ttl": 30, "values": ["192.0.2.10"], "health_check_id": None},
        "secondary": {"failover": "SECONDARY", "ttl": 30, "values": ["192.0.2.20"], "health_check_id": None},
    }
    assert result["changes"][0]["ResourceRecordSet"]["Name"] == NAME


def test_failover_to_secondary_removes_the_failed_region_and_makes_tertiary_secondary():
    current = [rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")]
    result = plan(current, serving="secondary", standby="tertiary", remove=["primary"])
    assert actions(result) == [
        ("DELETE", "primary", "PRIMARY"),
        ("UPSERT", "secondary", "PRIMARY"),
        ("UPSERT", "tertiary", "SECONDARY"),
    ]
    assert result["changes"][0]["ResourceRecordSet"] == current[0], "DELETE carries the exact current record"
    assert failover_roles(apply_stepwise(current, result["changes"])) == {
        "secondary": "PRIMARY",
        "tertiary": "SECONDARY",
    }
    assert set(result["after"]) == {"secondary", "tertiary"}


def test_failover_without_standby_leaves_only_the_primary():
    current = [rec("primary", "PRIMARY"), rec("tertiary", "SECONDARY", HealthCheckId="hc-3")]
    result = plan(current, serving="secondary", standby=None, remove=["primary"])
    after = apply_stepwise(current, result["changes"])
    assert failover_roles(after) == {"secondary": "PRIMARY"}
    assert ("DELETE", "tertiary", "SECONDARY") in actions(result)


def test_only_serving_keeps_another_region_only_if_it_is_the_standby():
    current = [rec("primary", "PRIMARY"), rec("tertiary", "SECONDARY")]
    assert failover_roles(
        apply_stepwise(current, plan(current, serving="primary", standby="secondary")["changes"])
    ) == {"primary": "PRIMARY", "secondary": "SECONDARY"}
    assert failover_roles(apply_stepwise(current, plan(current, serving="primary", standby="tertiary")["changes"])) == {
        "primary": "PRIMARY",
        "tertiary": "SECONDARY",
    }
    assert plan(current, serving="primary", standby="tertiary")["changes"] == []
    assert failover_roles(apply_stepwise(current, plan(current, serving="primary", standby=None)["changes"])) == {
        "primary": "PRIMARY"
    }


def test_nothing_to_change_is_no_change():
    current = [rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")]
    result = plan(current)
    assert result["changes"] == []
    assert result["before"] == result["after"]


def test_switchover_swaps_the_roles_without_two_primaries_at_any_step():
    current = [rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")]
    result = plan(current, serving="secondary", standby="primary")
    # one of the two is deleted and written anew: no order of two upserts avoids a step with two of one role
    assert actions(result) == [
        ("DELETE", "secondary", "SECONDARY"),
        ("UPSERT", "primary", "SECONDARY"),
        ("UPSERT", "secondary", "PRIMARY"),
    ]
    assert failover_roles(apply_stepwise(current, result["changes"])) == {
        "secondary": "PRIMARY",
        "primary": "SECONDARY",
    }


def test_a_failover_deletes_only_the_failed_region_and_promotes_in_place():
    """No record of a failover's batch is deleted and written anew: the roles free up in order."""
    current = [rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")]
    to_secondary = plan(current, serving="secondary", standby="tertiary", remove=["primary"])
    assert [a for a, _sid, _role in actions(to_secondary)].count("DELETE") == 1
    to_tertiary = plan(current, serving="tertiary", standby="secondary", remove=["primary"])
    assert actions(to_tertiary) == [("DELETE", "primary", "PRIMARY"), ("UPSERT", "tertiary", "PRIMARY")]
    assert failover_roles(apply_stepwise(current, to_tertiary["changes"])) == {
        "tertiary": "PRIMARY",
        "secondary": "SECONDARY",
    }


def test_a_new_value_ttl_or_health_check_is_one_upsert_in_place():
    current = [rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")]
    moved = plan(current, targets=dict(TARGETS, primary="192.0.2.11"))
    assert actions(moved) == [("UPSERT", "primary", "PRIMARY")]
    assert moved["changes"][0]["ResourceRecordSet"]["ResourceRecords"] == [{"Value": "192.0.2.11"}]
    assert actions(plan(current, ttl=60)) == [("UPSERT", "primary", "PRIMARY"), ("UPSERT", "secondary", "SECONDARY")]
    checked = plan(current, health_checks={"primary": "hc-1"})
    assert actions(checked) == [("UPSERT", "primary", "PRIMARY")]
    assert checked["changes"][0]["ResourceRecordSet"]["HealthCheckId"] == "hc-1"
    with_check = [rec("primary", "PRIMARY", HealthCheckId="hc-1"), rec("secondary", "SECONDARY")]
    assert plan(with_check, health_checks={"primary": "hc-1"})["changes"] == []
    assert actions(plan(with_check)) == [("UPSERT", "primary", "PRIMARY")], "a health check no longer asked for"


def test_equal_values_written_differently_are_no_change():
    cname = [
        rec("primary", "PRIMARY", "App.Primary.Example.NET.", rtype="CNAME", name="AUTH.dr.example.com"),
        rec("secondary", "SECONDARY", "app.secondary.example.net", rtype="CNAME"),
    ]
    assert (
        plan(
            cname,
            record_type="CNAME",
            targets={"primary": "app.primary.example.net", "secondary": "app.secondary.example.net."},
        )["changes"]
        == []
    )
    six = [
        rec("primary", "PRIMARY", "2001:0db8:0000:0000:0000:0000:0000:0010", rtype="AAAA"),
        rec("secondary", "SECONDARY", "2001:db8::20", rtype="AAAA"),
    ]
    assert (
        plan(six, record_type="AAAA", targets={"primary": "2001:db8::10", "secondary": "2001:db8::20"})["changes"] == []
    )


def test_a_removed_region_without_a_target_is_deleted_too():
    current = [rec("primary", "PRIMARY"), rec("old-dc", "SECONDARY", "198.51.100.1")]
    result = plan(
        current,
        targets={"secondary": "192.0.2.20", "tertiary": "192.0.2.30"},
        serving="secondary",
        standby="tertiary",
        remove=["primary", "old-dc"],
    )
    assert failover_roles(apply_stepwise(current, result["changes"])) == {
        "secondary": "PRIMARY",
        "tertiary": "SECONDARY",
    }


def test_records_of_other_names_types_and_set_identifiers_are_left_alone():
    other = [
        rec("primary", "PRIMARY", name="api.dr.example.com."),
        rec("primary", "PRIMARY", "2001:db8::10", rtype="AAAA"),
        rec("canary", "SECONDARY", "203.0.113.9"),
        {"Name": "dr.example.com.", "Type": "NS", "TTL": 172800, "ResourceRecords": [{"Value": "ns-1."}]},
    ]
    current = [rec("primary", "PRIMARY")] + other
    result = plan(current, serving="secondary", standby=None, remove=["primary"])
    assert actions(result) == [("DELETE", "primary", "PRIMARY"), ("UPSERT", "secondary", "PRIMARY")]
    assert result["unmanaged"] == ["canary"]
    after = apply_stepwise(current, result["changes"])
    assert all(o in after for o in other)


@pytest.mark.parametrize(
    "current,expected",
    [
        (
            [{"Name": NAME, "Type": "A", "TTL": 300, "ResourceRecords": [{"Value": "192.0.2.99"}]}],
            "auth.dr.example.com. A (no SetIdentifier) is a simple record (values 192.0.2.99)",
        ),
        (
            [rec("canary", "PRIMARY", "203.0.113.9")],
            "SetIdentifier canary is already the PRIMARY record and is not one of the regions given: add canary",
        ),
        (
            [
                {
                    "Name": NAME,
                    "Type": "A",
                    "SetIdentifier": "blue",
                    "Weight": 10,
                    "TTL": 30,
                    "ResourceRecords": [{"Value": "203.0.113.9"}],
                }
            ],
            "SetIdentifier blue uses another routing policy (Weight)",
        ),
    ],
)
def test_record_sets_route_53_would_refuse_beside_ours_are_refused(current, expected):
    with pytest.raises(dns.DnsError) as err:
        plan(current)
    assert expected in str(err.value)
    assert str(err.value).startswith("refused, nothing was changed: ")


def test_a_managed_record_of_another_kind_is_deleted_then_written():
    current = [
        {
            "Name": NAME,
            "Type": "A",
            "SetIdentifier": "primary",
            "Weight": 100,
            "TTL": 30,
            "ResourceRecords": [{"Value": "192.0.2.10"}],
        }
    ]
    result = plan(current, standby=None)
    assert actions(result) == [("DELETE", "primary", None), ("UPSERT", "primary", "PRIMARY")]


@pytest.mark.parametrize(
    "over,expected",
    [
        ({"remove": ["primary"]}, "serving region primary is also in remove: a region cannot serve and be taken out"),
        ({"remove": ["secondary"]}, "standby region secondary is also in remove"),
        ({"serving": "quaternary"}, "serving region quaternary has no target: add targets.quaternary"),
        ({"standby": "quaternary"}, "standby region quaternary has no target: add targets.quaternary"),
        ({"standby": "primary"}, "serving and standby are both primary: name another region as standby, or none"),
        ({"serving": ""}, "serving is empty"),
        ({"targets": {}}, "targets is empty"),
        ({"targets": dict(TARGETS, primary="app.example.net")}, "targets.primary 'app.example.net' is not an IPv4"),
        ({"record_type": "CNAME"}, "targets.primary '192.0.2.10' is an IP address: a CNAME record needs a host name"),
        ({"record_type": "AAAA"}, "is not an IPv6 address"),
        ({"record_type": "MX"}, "record_type must be one of A, AAAA, CNAME"),
        ({"ttl": -1}, "ttl must be a whole number of seconds"),
        ({"record_name": ""}, "record_name is empty"),
        ({"record_name": "a.." + "b" * 64 + ".example.com"}, "is not a DNS name"),
        ({"health_checks": {"quaternary": "hc-4"}}, "health_checks has regions without a target: quaternary"),
    ],
)
def test_inconsistent_input_is_refused_saying_what_to_fix(over, expected):
    with pytest.raises(dns.DnsError) as err:
        dns.validate_spec(spec(**over))
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith("refused, nothing was changed: ")
    assert isinstance(err.value, _errors.DrError), "modules catch it with _errors.ENGINE_ERRORS"


def test_every_problem_is_named_at_once():
    with pytest.raises(dns.DnsError) as err:
        dns.validate_spec(spec(serving="primary", standby="primary", remove=["primary"], ttl=-5))
    text = str(err.value)
    assert "is also in remove" in text and "both primary" in text and "ttl must be" in text


def test_only_the_written_targets_must_be_valid():
    """A bad endpoint of a region that is neither serving nor standby does not block the runbook."""
    want = dns.validate_spec(spec(targets=dict(TARGETS, tertiary="not an address")))
    assert want["managed"] == ["primary", "secondary", "tertiary"]


def test_names_are_compared_as_route_53_does():
    assert dns.normalise_name("Auth.DR.example.com") == NAME
    assert dns.normalise_name("auth.dr.example.com.") == NAME
    assert dns.normalise_name("\\052.dr.example.com.") == "*.dr.example.com."
    assert dns.zone_id_of("/hostedzone/Z0123") == "Z0123" and dns.zone_id_of("Z0123") == "Z0123"


# -- the calls around it (fake client) ----------------------------------------------------------------------------
def client_error(code, message, operation):
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


class FakeRoute53:
    """A hosted zone or two, answering the calls the engine makes; change batches applied with apply_stepwise."""

    def __init__(
        self, zones=(("Z1", "dr.example.com.", False),), records=(), statuses=("INSYNC",), page_size=None, fail=None
    ):
        self.zones = [
            {"Id": f"/hostedzone/{zid}", "Name": name, "Config": {"PrivateZone": private}}
            for zid, name, private in zones
        ]
        self.records = list(records)
        self.statuses = list(statuses)
        self.page_size = page_size
        self.fail = fail or {}
        self.identifiers = True  # NextRecordIdentifier on truncated pages, as Route 53 gives it (moto does not)
        self.calls = []

    def _maybe_fail(self, operation):
        self.calls.append(operation)
        if operation in self.fail:
            raise self.fail[operation]

    def get_hosted_zone(self, Id):
        self._maybe_fail("get_hosted_zone")
        for zone in self.zones:
            if dns.zone_id_of(zone["Id"]) == Id:
                return {"HostedZone": zone}
        raise client_error("NoSuchHostedZone", f"No hosted zone found with ID: {Id}", "GetHostedZone")

    def list_hosted_zones_by_name(self, DNSName, MaxItems, HostedZoneId=None):
        self._maybe_fail("list_hosted_zones_by_name")
        zones = sorted(self.zones, key=lambda z: z["Name"])
        return {"HostedZones": [z for z in zones if z["Name"] >= DNSName], "IsTruncated": False}

    def list_resource_record_sets(
        self, HostedZoneId, StartRecordName, StartRecordType, MaxItems, StartRecordIdentifier=None
    ):
        self._maybe_fail("list_resource_record_sets")
        ordered = sorted(self.records, key=lambda r: (r["Name"], r["Type"], r.get("SetIdentifier") or ""))
        start = (StartRecordName, StartRecordType, StartRecordIdentifier or "")
        rest = [r for r in ordered if (r["Name"], r["Type"], r.get("SetIdentifier") or "") >= start]
        size = self.page_size or int(MaxItems)
        page, more = rest[:size], rest[size:]
        resp = {"ResourceRecordSets": copy.deepcopy(page), "IsTruncated": bool(more)}
        if more:
            resp.update(NextRecordName=more[0]["Name"], NextRecordType=more[0]["Type"])
            if more[0].get("SetIdentifier") and self.identifiers:
                resp["NextRecordIdentifier"] = more[0]["SetIdentifier"]
        return resp

    def change_resource_record_sets(self, HostedZoneId, ChangeBatch):
        self._maybe_fail("change_resource_record_sets")
        self.records = apply_stepwise(self.records, ChangeBatch["Changes"])
        return {"ChangeInfo": {"Id": "/change/C1", "Status": self.statuses.pop(0) if self.statuses else "PENDING"}}

    def get_change(self, Id):
        self._maybe_fail("get_change")
        return {"ChangeInfo": {"Id": "/change/" + Id, "Status": self.statuses.pop(0) if self.statuses else "PENDING"}}


def zone_spec(**over):
    return dict(spec(**over), zone_name="dr.example.com")


def test_reconcile_writes_one_batch_then_nothing():
    client = FakeRoute53(records=[rec("primary", "PRIMARY"), rec("secondary", "SECONDARY")])
    result = dns.reconcile(client, zone_spec(serving="secondary", standby="tertiary", remove=["primary"]))
    assert result["changed"] and client.calls.count("change_resource_record_sets") == 1
    assert result["zone_id"] == "Z1" and result["zone_name"] == "dr.example.com." and result["record_name"] == NAME
    assert result["change_id"] == "C1" and result["change_status"] == "INSYNC"
    assert result["summary"] == [
        "DELETE primary PRIMARY 192.0.2.10",
        "UPSERT secondary PRIMARY 192.0.2.20",
        "UPSERT tertiary SECONDARY 192.0.2.30",
    ]
    client.calls.clear()
    again = dns.reconcile(client, zone_spec(serving="secondary", standby="tertiary", remove=["primary"]))
    assert not again["changed"] and again["changes"] == [] and again["change_id"] is None
    assert "change_resource_record_sets" not in client.calls and "get_change" not in client.calls


def test_check_mode_reads_and_writes_nothing():
    client = FakeRoute53(records=[rec("primary", "PRIMARY")])
    before = copy.deepcopy(client.records)
    result = dns.reconcile(client, zone_spec(serving="secondary", standby=None), check_mode=True)
    assert result["changed"] and actions(result) == [
        ("DELETE", "primary", "PRIMARY"),
        ("UPSERT", "secondary", "PRIMARY"),
    ]
    assert client.records == before and "change_resource_record_sets" not in client.calls
    assert result["change_id"] is None


def test_wait_polls_until_insync_and_is_bounded():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    client = FakeRoute53(statuses=["PENDING", "PENDING", "INSYNC"])
    result = dns.reconcile(client, zone_spec(), poll_seconds=5, sleep=sleep, clock=lambda: now[0])
    assert result["change_status"] == "INSYNC" and slept == [5]
    assert client.calls.count("get_change") == 2
    slow = FakeRoute53(statuses=[])
    now[0] = 0.0
    slept.clear()
    result = dns.reconcile(slow, zone_spec(), wait_timeout=12, poll_seconds=5, sleep=sleep, clock=lambda: now[0])
    assert result["change_status"] == "PENDING" and sum(slept) == 12, slept
    no_wait = FakeRoute53(statuses=[])
    assert dns.reconcile(no_wait, zone_spec(), wait=False)["change_status"] == "PENDING"
    assert "get_change" not in no_wait.calls


def test_an_error_while_waiting_says_the_change_was_made():
    client = FakeRoute53(statuses=[], fail={"get_change": client_error("Throttling", "Rate exceeded", "GetChange")})
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(client, zone_spec())
    assert "get_change failed: Throttling" in str(err.value) and "the change C1 was submitted" in str(err.value)
    assert err.value.result["changed"] and err.value.result["change_id"] == "C1"
    assert client.calls.count("change_resource_record_sets") == 1


def test_record_sets_are_read_across_pages_and_the_paging_is_bounded():
    many = [rec(f"r{i:02d}", "SECONDARY" if i else "PRIMARY", f"198.51.100.{i}") for i in range(7)]
    client = FakeRoute53(records=many + [rec("primary", "PRIMARY", name="zz.dr.example.com.")], page_size=2)
    found = dns.read_record_sets(dns.Route53(client), "Z1", NAME, "A")
    assert sorted(r["SetIdentifier"] for r in found) == [f"r{i:02d}" for i in range(7)]
    with pytest.raises(dns.DnsError) as err:
        dns.read_record_sets(dns.Route53(client), "Z1", NAME, "A", page_size=1, max_pages=3)
    assert "more than 3 pages of record sets named auth.dr.example.com. type A" in str(err.value)
    client.identifiers = False
    with pytest.raises(dns.DnsError) as err:
        dns.read_record_sets(dns.Route53(client), "Z1", NAME, "A")
    assert "does not advance past 2 of them" in str(err.value)


def test_a_zone_is_found_by_id_or_by_one_name():
    client = FakeRoute53(zones=[("Z1", "dr.example.com.", False), ("Z2", "other.example.com.", False)])
    assert dns.find_zone(dns.Route53(client), zone_id="/hostedzone/Z1")["name"] == "dr.example.com."
    assert dns.find_zone(dns.Route53(client), zone_name="DR.example.com")["id"] == "Z1"


def test_a_missing_or_ambiguous_zone_is_an_error_that_says_what_to_give():
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(FakeRoute53(), dict(spec(), zone_name="nope.example.com"), endpoint_url="http://r53.test")
    assert (
        "zone nope.example.com., record auth.dr.example.com. A: no hosted zone of that name at http://r53.test"
        in str(err.value)
        and "give zone_id" in str(err.value)
    )
    two = FakeRoute53(zones=[("Z1", "dr.example.com.", False), ("Z9", "dr.example.com.", True)])
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(two, zone_spec())
    assert "2 hosted zones have that name (Z1 public, Z9 private): give zone_id" in str(err.value)
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(FakeRoute53(), dict(spec(), zone_id="ZNOPE"))
    assert "Route 53 zone ZNOPE, record auth.dr.example.com. A: get_hosted_zone failed: NoSuchHostedZone" in str(
        err.value
    ) and "check zone_id" in str(err.value)


def test_a_record_outside_the_zone_is_refused():
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(FakeRoute53(), zone_spec(record_name="auth.example.org"))
    assert "record_name auth.example.org. is not in zone dr.example.com. (Z1)" in str(err.value)


@pytest.mark.parametrize(
    "operation,exc,expected",
    [
        (
            "list_resource_record_sets",
            client_error("AccessDenied", "User: arn:aws:iam::1:user/dr is not authorized", "ListResourceRecordSets"),
            ["AccessDenied", "route53:ChangeResourceRecordSets", "nothing was changed"],
        ),
        (
            "change_resource_record_sets",
            client_error(
                "InvalidChangeBatch", "[RRSet of type A with DNS name x is not permitted]", "ChangeResourceRecordSets"
            ),
            ["InvalidChangeBatch", "refused the change batch as a whole", "nothing was changed"],
        ),
        (
            "change_resource_record_sets",
            client_error("Throttling", "Rate exceeded", "ChangeResourceRecordSets"),
            ["Throttling", "run again in a moment"],
        ),
        (
            "list_hosted_zones_by_name",
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1/2013-04-01/x"),
            ["EndpointConnectionError", "http://127.0.0.1:1 cannot be reached: check endpoint_url"],
        ),
        (
            "change_resource_record_sets",
            ReadTimeoutError(endpoint_url="http://127.0.0.1:1/2013-04-01/x"),
            ["ReadTimeoutError", "may or may not have been applied"],
        ),
    ],
)
def test_aws_errors_are_one_sentence_naming_zone_and_record(operation, exc, expected):
    client = FakeRoute53(fail={operation: exc})
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(client, zone_spec(), endpoint_url="http://127.0.0.1:1")
    text = str(err.value)
    assert "Route 53 zone " in text and "auth.dr.example.com. A" in text and operation in text, text
    for part in expected:
        assert part in text, text
    assert err.value.__cause__ is None and err.value.__suppress_context__, "no botocore traceback chained"


def test_credentials_never_appear_in_a_message():
    leaky = client_error(
        "SignatureDoesNotMatch", "signature of AKIDSECRETLOOKING with s3cr3t-key-value is wrong", "GetHostedZone"
    )
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(
            FakeRoute53(fail={"get_hosted_zone": leaky}),
            dict(spec(), zone_id="Z1"),
            secrets=("AKIDSECRETLOOKING", "s3cr3t-key-value"),
        )
    assert "AKIDSECRETLOOKING" not in str(err.value) and "s3cr3t-key-value" not in str(err.value)
    assert "check secret_key" in str(err.value)


def test_poll_seconds_must_be_positive_when_waiting():
    with pytest.raises(dns.DnsError) as err:
        dns.reconcile(FakeRoute53(), zone_spec(), poll_seconds=0)
    assert "poll_seconds must be more than 0" in str(err.value)
