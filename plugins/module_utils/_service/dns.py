# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service's DNS name in Route 53: one failover record set per region, the serving region's PRIMARY and, when
there is one, the standby region's SECONDARY (``SetIdentifier`` = the region's name, its value the region's app
endpoint). isolate takes the failed region's record out first; reopen points the name at the serving region.

The record sets of the name and type are read, the change batch computed (``plan_changes``: a pure function) and
applied as ONE ``ChangeBatch``, which Route 53 applies all or nothing; then, when asked, ``get_change`` is polled
until the change is INSYNC (bounded). Only record sets whose ``SetIdentifier`` is one of the regions given (targets,
serving, standby, remove) are managed; any other record set of the name is left as it is, or, where Route 53 would
refuse the batch because of it, the run is refused before anything is written.

boto3 with ``endpoint_url``: AWS, or moto's server in the tests and the lab. Credentials come as parameters (or the
usual AWS chain) and never appear in a result or a message. Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import ipaddress
import re
import time

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import s3 as repo_s3

RECORD_TYPES = ("A", "AAAA", "CNAME")
MAX_TTL = 2147483647
PAGE_SIZE = 300  # Route 53's largest page of ListResourceRecordSets
MAX_PAGES = 10  # of one name and type: 3000 record sets, far beyond three regions
MAX_ZONE_PAGES = 10
# Route 53 calls: short connect timeout (an unreachable endpoint is said within seconds), botocore's standard retries
# (throttling, PriorRequestNotComplete, connection errors) a few times, never minutes.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
MAX_ATTEMPTS = 3
# Keys of a record set that make it something else than a failover record (another routing policy, an alias)
OTHER_ROUTING = (
    "Weight",
    "Region",
    "GeoLocation",
    "MultiValueAnswer",
    "CidrRoutingConfig",
    "GeoProximityLocation",
    "TrafficPolicyInstanceId",
)
IAM_ACTIONS = (
    "route53:ListHostedZonesByName, route53:GetHostedZone, route53:ListResourceRecordSets, "
    "route53:ChangeResourceRecordSets and route53:GetChange"
)


class DnsError(_errors.DrError):
    """A DNS step that cannot be done; the message names the zone and record and says what to check."""


# -- names and values ---------------------------------------------------------------------------------------------
def normalise_name(name):
    """A DNS name as Route 53 compares it: lower case, one trailing dot, ``\\ooo`` escapes (Route 53 returns ``*`` as
    ``\\052``) decoded."""
    text = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), str(name or "").strip())
    text = text.lower().rstrip(".")
    return text + "." if text else ""


def zone_id_of(value):
    """``Z123`` from ``/hostedzone/Z123`` or ``Z123``."""
    return str(value or "").strip().rsplit("/", 1)[-1]


def _name_problem(what, name):
    """Why ``name`` (normalised) is not a DNS name Route 53 takes, or None."""
    if not name:
        return "%s is empty" % what
    labels = name[:-1].split(".")
    if len(name) > 255 or any(not label or len(label) > 63 for label in labels):
        return "%s %r is not a DNS name (labels of 1 to 63 characters, 255 in all)" % (what, name)
    if any(ch.isspace() for ch in name):
        return "%s %r contains white space" % (what, name)
    return None


_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}"
    r"[a-z0-9_])?)*\.?$",
    re.I,
)


def _value_problem(region, value, record_type):
    """Why ``value`` cannot be region's record value of this type, or None."""
    text = str(value or "").strip()
    if not text:
        return "targets.%s is empty: give the region's app endpoint" % region
    if record_type in ("A", "AAAA"):
        kind = ipaddress.IPv4Address if record_type == "A" else ipaddress.IPv6Address
        try:
            kind(text)
        except ValueError:
            return (
                "targets.%s %r is not an IPv%s address, which an %s record needs (a host name needs record_type "
                "CNAME)" % (region, text, "4" if record_type == "A" else "6", record_type)
            )
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return "targets.%s %r is an IP address: a CNAME record needs a host name (use record_type A or AAAA)" % (
            region,
            text,
        )
    if not _HOSTNAME.match(text):
        return "targets.%s %r is not a host name" % (region, text)
    return None


def _value_key(value, record_type):
    """A record value as compared: the IP address in its canonical form, a host name without case or final dot."""
    text = str(value).strip()
    if record_type in ("A", "AAAA"):
        try:
            return ipaddress.ip_address(text).compressed
        except ValueError:
            return text
    return text.lower().rstrip(".")


def _values(record, record_type):
    return sorted(_value_key(rr.get("Value", ""), record_type) for rr in record.get("ResourceRecords") or [])


# -- the wanted state ---------------------------------------------------------------------------------------------
def validate_spec(spec):
    """The spec checked and normalised; DnsError naming every problem (and what to fix) otherwise.

    ``spec``: record_name, record_type (A, AAAA, CNAME), ttl, targets ({region: value}), serving, standby (or None),
    remove ([region, ...]), health_checks ({region: health check id}).
    """
    problems = []
    record_type = str(spec.get("record_type") or "A").upper()
    if record_type not in RECORD_TYPES:
        problems.append("record_type must be one of %s, not %r" % (", ".join(RECORD_TYPES), spec.get("record_type")))
    name = normalise_name(spec.get("record_name"))
    problem = _name_problem("record_name", name)
    if problem:
        problems.append(problem)
    ttl = spec.get("ttl", 30)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        problems.append("ttl must be a whole number of seconds from 0 to %d, not %r" % (MAX_TTL, ttl))
    targets = spec.get("targets") or {}
    if not isinstance(targets, dict) or not targets:
        problems.append("targets is empty: give each region's app endpoint (region: IP address or host name)")
        targets = {}
    targets = {str(region): str(value).strip() for region, value in targets.items() if value is not None}
    serving = str(spec.get("serving") or "")
    standby = str(spec.get("standby") or "") or None
    remove = [str(region) for region in spec.get("remove") or []]
    health_checks = {str(region): str(hc).strip() for region, hc in (spec.get("health_checks") or {}).items() if hc}
    for region in list(targets) + remove + [serving] + ([standby] if standby else []):
        if region and not 1 <= len(region) <= 128:
            problems.append("region name %r cannot be a SetIdentifier (1 to 128 characters)" % region)
    if not serving:
        problems.append("serving is empty: name the region that serves (it gets the PRIMARY record)")
    elif serving not in targets:
        problems.append(
            "serving region %s has no target: add targets.%s (its app endpoint) or serve from one of %s"
            % (serving, serving, ", ".join(sorted(targets)) or "the regions in targets")
        )
    if standby and standby not in targets:
        problems.append(
            "standby region %s has no target: add targets.%s (its app endpoint), or name another standby "
            "or none" % (standby, standby)
        )
    if serving and standby == serving:
        problems.append(
            "serving and standby are both %s: name another region as standby, or none (no SECONDARY record)" % serving
        )
    if serving and serving in remove:
        problems.append(
            "serving region %s is also in remove: a region cannot serve and be taken out of DNS; take it "
            "out of remove, or serve from another region" % serving
        )
    if standby and standby in remove:
        problems.append(
            "standby region %s is also in remove: take it out of remove, or name another standby or none" % standby
        )
    stray = sorted(set(health_checks) - set(targets))
    if stray:
        problems.append(
            "health_checks has regions without a target: %s (regions in targets: %s)"
            % (", ".join(stray), ", ".join(sorted(targets)))
        )
    if record_type in RECORD_TYPES:
        for region in [serving, standby]:
            if region and region in targets:
                problem = _value_problem(region, targets[region], record_type)
                if problem:
                    problems.append(problem)
    if problems:
        raise DnsError("refused, nothing was changed: " + "; ".join(problems))
    managed = sorted(set(targets) | set(remove) | {serving} | ({standby} if standby else set()))
    return {
        "record_name": name,
        "record_type": record_type,
        "ttl": ttl,
        "targets": targets,
        "serving": serving,
        "standby": standby,
        "remove": remove,
        "health_checks": health_checks,
        "managed": managed,
    }


def desired_records(spec):
    """The failover record sets the name must have: PRIMARY for serving, SECONDARY for standby (if any)."""
    records = []
    for region, role in ((spec["serving"], "PRIMARY"), (spec["standby"], "SECONDARY")):
        if not region:
            continue
        record = {
            "Name": spec["record_name"],
            "Type": spec["record_type"],
            "SetIdentifier": region,
            "Failover": role,
            "TTL": spec["ttl"],
            "ResourceRecords": [{"Value": spec["targets"][region]}],
        }
        if spec["health_checks"].get(region):
            record["HealthCheckId"] = spec["health_checks"][region]
        records.append(record)
    return records


def describe(record, record_type):
    """A record set as results show it."""
    view = {
        "failover": record.get("Failover"),
        "ttl": record.get("TTL"),
        "values": _values(record, record_type),
        "health_check_id": record.get("HealthCheckId"),
    }
    if record.get("AliasTarget"):
        view["alias"] = record["AliasTarget"].get("DNSName")
    other = [key for key in OTHER_ROUTING if key in record]
    if other:
        view["routing"] = other
    return view


def _same(current, wanted, record_type):
    return (
        current.get("Failover") == wanted["Failover"]
        and current.get("TTL") == wanted["TTL"]
        and not current.get("AliasTarget")
        and not any(key in current for key in OTHER_ROUTING)
        and (current.get("HealthCheckId") or None) == (wanted.get("HealthCheckId") or None)
        and _values(current, record_type) == _values(wanted, record_type)
    )


def _label(record):
    return "%s %s %s" % (
        record.get("Name"),
        record.get("Type"),
        "SetIdentifier %s" % record["SetIdentifier"] if "SetIdentifier" in record else "(no SetIdentifier)",
    )


def plan_changes(current, spec):
    """The change batch that leaves the name with exactly the wanted failover records of the managed regions.

    ``current``: the record sets read (any name and type: only the spec's name and type are looked at); ``spec``:
    validate_spec's result. Returns {"changes": [Route 53 Change, ...], "before": {region: view},
    "after": {region: view}, "unmanaged": [SetIdentifier, ...]}. Pure: no AWS.

    A managed record that must go (a removed region, another region that is neither serving nor standby) is DELETE
    with its exact current values, as Route 53 requires; a wanted record that is missing or differs (value, TTL,
    health check, failover role) is UPSERT. Route 53 validates the batch's changes in order, so the batch is built
    such that no step of it has two records in one failover role: the deletes come first, then the upserts in an
    order where each takes a role that is free by then (a failover: the failed PRIMARY deleted, SECONDARY promoted,
    a new SECONDARY). Only where no such order exists (a switchover swapping PRIMARY and SECONDARY), one of the two
    is deleted first and written anew; a managed record of another kind (alias, another routing policy) is too.
    Record sets of the name that would make Route 53 refuse the batch (one without SetIdentifier, another policy, a
    foreign record in a role wanted here) are refused before anything is written.
    """
    name, rtype = spec["record_name"], spec["record_type"]
    mine = [r for r in current if normalise_name(r.get("Name")) == name and r.get("Type") == rtype]
    managed = set(spec["managed"])
    wanted = desired_records(spec)
    roles = {r["Failover"] for r in wanted}
    problems = []
    unmanaged = []
    for record in mine:
        sid = record.get("SetIdentifier")
        if sid is None:
            problems.append(
                "%s is a simple record (values %s): failover records cannot sit beside it; it is not one "
                "of this module's, so delete it or move it to another name first"
                % (_label(record), ", ".join(_values(record, rtype)) or "alias")
            )
        elif sid not in managed:
            unmanaged.append(sid)
            other = [key for key in OTHER_ROUTING if key in record]
            if other or not record.get("Failover"):
                problems.append(
                    "%s uses another routing policy (%s): Route 53 takes failover records of a name only "
                    "beside failover records; delete it, or add region %s to targets or remove so that it "
                    "is managed here" % (_label(record), ", ".join(other) or "alias", sid)
                )
            elif record["Failover"] in roles:
                problems.append(
                    "%s is already the %s record and is not one of the regions given: add %s to targets "
                    "or remove so that it is managed here, or delete it" % (_label(record), record["Failover"], sid)
                )
    if problems:
        raise DnsError("refused, nothing was changed: " + "; ".join(problems))
    by_sid = {r["SetIdentifier"]: r for r in mine if r.get("SetIdentifier") in managed}
    want_by_sid = {r["SetIdentifier"]: r for r in wanted}
    # the failover role each record set of the name holds while the batch is applied, step by step
    holders = {r["SetIdentifier"]: r.get("Failover") for r in mine if r.get("SetIdentifier") is not None}
    deletes, upserts = [], []
    for sid, record in sorted(by_sid.items()):
        if sid not in want_by_sid:
            deletes.append({"Action": "DELETE", "ResourceRecordSet": record})
            del holders[sid]
        elif record.get("AliasTarget") or any(key in record for key in OTHER_ROUTING):
            # another kind of record set under the same identity: deleted, then written anew
            deletes.append({"Action": "DELETE", "ResourceRecordSet": record})
            del holders[sid]
    pending = [
        w for w in wanted if w["SetIdentifier"] not in holders or not _same(by_sid[w["SetIdentifier"]], w, rtype)
    ]
    while pending:
        free = [
            w for w in pending if all(s == w["SetIdentifier"] or role != w["Failover"] for s, role in holders.items())
        ]
        if free:
            upserts.append({"Action": "UPSERT", "ResourceRecordSet": free[0]})
            holders[free[0]["SetIdentifier"]] = free[0]["Failover"]
            pending.remove(free[0])
            continue
        # a cycle (a switchover: PRIMARY and SECONDARY swap): the first record that holds the role another one
        # needs is deleted (its exact values) and written anew after the role it takes is free
        cut = next((w for w in pending if w["SetIdentifier"] in holders), None)
        if cut is None:  # pragma: no cover - every blocked record is blocked by a pending one, which holds a role
            raise DnsError(
                "%s %s: no order of the changes keeps one record per failover role: nothing was changed, "
                "look at the record sets of the name" % (name, rtype)
            )
        deletes.append({"Action": "DELETE", "ResourceRecordSet": by_sid[cut["SetIdentifier"]]})
        del holders[cut["SetIdentifier"]]
    return {
        "changes": deletes + upserts,
        "before": {sid: describe(r, rtype) for sid, r in sorted(by_sid.items())},
        "after": {sid: describe(r, rtype) for sid, r in sorted(want_by_sid.items())},
        "unmanaged": sorted(unmanaged),
    }


def summarise_changes(changes, record_type):
    """One line a change, for messages and the result: ``UPSERT secondary PRIMARY 192.0.2.20``."""
    return [
        "%s %s %s %s"
        % (
            c["Action"],
            c["ResourceRecordSet"].get("SetIdentifier"),
            c["ResourceRecordSet"].get("Failover") or "-",
            ",".join(_values(c["ResourceRecordSet"], record_type)) or "alias",
        )
        for c in changes
    ]


# -- Route 53 -----------------------------------------------------------------------------------------------------
ERROR_HINTS = {
    "AccessDenied": "access denied: the credentials need %s on this zone" % IAM_ACTIONS,
    "AccessDeniedException": "access denied: the credentials need %s on this zone" % IAM_ACTIONS,
    "NoSuchHostedZone": "no hosted zone with this id in this account: check zone_id (or give zone_name)",
    "NoSuchChange": "Route 53 does not know the change id: read the record sets to see what is there",
    "NoSuchHealthCheck": "a health check id in health_checks does not exist: check health_checks",
    "InvalidChangeBatch": "Route 53 refused the change batch as a whole: check the record sets of this name "
    "(another type at a CNAME's name, a record this module does not manage)",
    "InvalidInput": "Route 53 refused the input: check record_name, the targets and the health check ids",
    "Throttling": "Route 53 throttled the requests (retried already): run again in a moment",
    "ThrottlingException": "Route 53 throttled the requests (retried already): run again in a moment",
    "PriorRequestNotComplete": "an earlier change to this zone is still being applied: run again in a moment",
    "InvalidClientTokenId": "the access key is not known to the endpoint: check access_key / AWS_ACCESS_KEY_ID",
    "UnrecognizedClientException": "the access key is not known to the endpoint: check access_key",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check secret_key",
    "ExpiredToken": "the session token has expired: renew the credentials",
}
UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "SSLError",
    "ReadTimeoutError",
)


def error_code(exc):
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def scrub(text, secrets):
    """``text`` with every secret (access key, secret key) replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "********")
    return text


class Route53:
    """The Route 53 calls of one run, each turned into a DnsError naming the zone and record."""

    def __init__(self, client, endpoint_url=None, secrets=(), record=""):
        self.client = client
        self.endpoint = endpoint_url or "AWS's Route 53 endpoint"
        self.secrets = [s for s in secrets if s]
        self.zone = ""
        self.record = record

    @property
    def where(self):
        return "Route 53%s%s" % (
            " zone " + self.zone if self.zone else "",
            ", record " + self.record if self.record else "",
        )

    def call(self, operation, after="nothing was changed", **kwargs):
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - botocore's errors are classified by code and class
            raise DnsError(scrub(self.explain(exc, operation, after), self.secrets)) from None

    def explain(self, exc, operation, after):
        code = error_code(exc)
        names = [cls.__name__ for cls in type(exc).__mro__]
        if code:
            text = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message") or str(exc)
            hint = ERROR_HINTS.get(code, "check the zone, the record and the credentials")
            what = "%s (%s)" % (code, text.strip().splitlines()[0] if text.strip() else code)
        elif any(n in UNREACHABLE for n in names):
            what = type(exc).__name__
            hint = "%s cannot be reached: check endpoint_url, the network and any proxy (HTTPS_PROXY)" % self.endpoint
            if "ReadTimeoutError" in names and operation == "change_resource_record_sets":
                after = (
                    "the change may or may not have been applied: run again (nothing is written twice) or read "
                    "the record sets"
                )
        elif "NoCredentialsError" in names or "PartialCredentialsError" in names:
            what = type(exc).__name__
            hint = "no credentials: set access_key and secret_key, or the usual AWS chain (env, profile, role)"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            what = "%s: %s" % (type(exc).__name__, first)
            hint = "check endpoint_url, region_name and the credentials"
        return "%s: %s failed: %s; %s; %s" % (self.where, operation, what, hint, after)


def route53_client(endpoint_url=None, region_name="us-east-1", access_key=None, secret_key=None):
    """A Route 53 client (boto3, loaded on first use as the S3 repositories load it)."""
    if not repo_s3.load_boto3():
        raise DnsError(
            "boto3 is required on the controller for Route 53 (pip install boto3): %s" % repo_s3.BOTO3_IMPORT_ERROR
        )
    config = repo_s3.botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    try:
        return repo_s3.boto3.session.Session().client(
            "route53",
            endpoint_url=endpoint_url or None,
            region_name=region_name or "us-east-1",
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=config,
        )
    except ValueError as exc:  # an endpoint_url botocore cannot use
        raise DnsError("Route 53 client: %s (endpoint_url %r)" % (exc, endpoint_url)) from None


def find_zone(r53, zone_id=None, zone_name=None):
    """{"id", "name", "private"} of the hosted zone given by id, or by name (one zone of that name: else DnsError)."""
    if zone_id:
        zid = zone_id_of(zone_id)
        r53.zone = zid
        zone = r53.call("get_hosted_zone", Id=zid)["HostedZone"]
        return {
            "id": zone_id_of(zone["Id"]),
            "name": normalise_name(zone["Name"]),
            "private": bool((zone.get("Config") or {}).get("PrivateZone")),
        }
    name = normalise_name(zone_name)
    if not name:
        raise DnsError(
            "refused, nothing was changed: give zone_id or zone_name (the hosted zone of record %s)" % r53.record
        )
    r53.zone = name
    found, kwargs = [], {"DNSName": name, "MaxItems": "100"}
    for _page in range(MAX_ZONE_PAGES):
        resp = r53.call("list_hosted_zones_by_name", **kwargs)
        zones = resp.get("HostedZones") or []
        found += [z for z in zones if normalise_name(z.get("Name")) == name]
        # zones come sorted by name from DNSName on: once past the name, there are no more of it
        if not resp.get("IsTruncated") or (zones and normalise_name(zones[-1].get("Name")) != name):
            break
        kwargs = {
            "DNSName": resp.get("NextDNSName") or name,
            "HostedZoneId": resp.get("NextHostedZoneId"),
            "MaxItems": "100",
        }
    unique = {zone_id_of(z["Id"]): z for z in found}
    if not unique:
        raise DnsError(
            "%s: no hosted zone of that name at %s: check zone_name (and that the credentials' account "
            "owns the zone), or give zone_id; nothing was changed" % (r53.where, r53.endpoint)
        )
    if len(unique) > 1:
        raise DnsError(
            "%s: %d hosted zones have that name (%s): give zone_id to say which one; nothing was changed"
            % (
                r53.where,
                len(unique),
                ", ".join(
                    "%s %s" % (zid, "private" if (z.get("Config") or {}).get("PrivateZone") else "public")
                    for zid, z in sorted(unique.items())
                ),
            )
        )
    zid, zone = next(iter(unique.items()))
    return {"id": zid, "name": name, "private": bool((zone.get("Config") or {}).get("PrivateZone"))}


def read_record_sets(r53, zone_id, name, record_type, page_size=PAGE_SIZE, max_pages=MAX_PAGES):
    """The record sets of ``name`` and ``record_type`` in the zone (every SetIdentifier), paging bounded."""
    found, seen = [], set()
    kwargs = {
        "HostedZoneId": zone_id,
        "StartRecordName": name,
        "StartRecordType": record_type,
        "MaxItems": str(page_size),
    }
    for _page in range(max_pages):
        resp = r53.call("list_resource_record_sets", **kwargs)
        new = 0
        past = False
        for record in resp.get("ResourceRecordSets") or []:
            if normalise_name(record.get("Name")) != name or record.get("Type") != record_type:
                past = True  # sorted by name and type: nothing of ours after this one
                break
            key = record.get("SetIdentifier")
            if key not in seen:
                seen.add(key)
                found.append(record)
                new += 1
        if past or not resp.get("IsTruncated"):
            return found
        if not new:  # the next page starts where this one did (a server without NextRecordIdentifier)
            raise DnsError(
                "%s: the listing of the record sets does not advance past %d of them: not reading on; nothing was "
                "changed" % (r53.where, len(found))
            )
        kwargs = {
            "HostedZoneId": zone_id,
            "StartRecordName": resp.get("NextRecordName") or name,
            "StartRecordType": resp.get("NextRecordType") or record_type,
            "MaxItems": str(page_size),
        }
        if resp.get("NextRecordIdentifier"):
            kwargs["StartRecordIdentifier"] = resp["NextRecordIdentifier"]
    raise DnsError(
        "%s: more than %d pages of record sets named %s type %s: not reading on; nothing was changed"
        % (r53.where, max_pages, name, record_type)
    )


def wait_in_sync(r53, change_id, timeout, poll_seconds, sleep=time.sleep, clock=time.monotonic):
    """Poll get_change until INSYNC or ``timeout`` seconds: the last status seen."""
    deadline = clock() + max(0.0, float(timeout))
    status = "PENDING"
    while True:
        status = r53.call(
            "get_change", Id=change_id, after="the change %s was submitted and will be applied" % change_id
        )["ChangeInfo"].get("Status", "PENDING")
        if status == "INSYNC":
            return status
        left = deadline - clock()
        if left <= 0:
            return status
        sleep(min(float(poll_seconds), left))


def reconcile(
    client,
    spec,
    check_mode=False,
    wait=True,
    wait_timeout=60,
    poll_seconds=2,
    endpoint_url=None,
    secrets=(),
    sleep=time.sleep,
    clock=time.monotonic,
):
    """Bring the record sets of the name to the spec; the result the module returns.

    ``spec``: zone_id or zone_name, and validate_spec's keys. Nothing to change: no write, changed False. Check mode:
    the changes, nothing written. Otherwise one ChangeBatch, then (``wait``) INSYNC within ``wait_timeout``.
    """
    want = validate_spec(spec)
    if wait and (not isinstance(poll_seconds, (int, float)) or poll_seconds <= 0):
        raise DnsError("refused, nothing was changed: poll_seconds must be more than 0, not %r" % (poll_seconds,))
    name, rtype = want["record_name"], want["record_type"]
    r53 = Route53(client, endpoint_url=endpoint_url, secrets=secrets, record="%s %s" % (name, rtype))
    zone = find_zone(r53, spec.get("zone_id"), spec.get("zone_name"))
    if name != zone["name"] and not name.endswith("." + zone["name"]):
        raise DnsError(
            "refused, nothing was changed: record_name %s is not in zone %s (%s): give the full name, "
            "for example %s" % (name, zone["name"], zone["id"], name[:-1] + "." + zone["name"])
        )
    r53.zone = "%s (%s)" % (zone["id"], zone["name"])
    current = read_record_sets(r53, zone["id"], name, rtype)
    plan = plan_changes(current, want)
    result = {
        "changed": bool(plan["changes"]),
        "zone_id": zone["id"],
        "zone_name": zone["name"],
        "record_name": name,
        "record_type": rtype,
        "serving": want["serving"],
        "standby": want["standby"],
        "before": plan["before"],
        "after": plan["after"],
        "changes": plan["changes"],
        "summary": summarise_changes(plan["changes"], rtype),
        "unmanaged": plan["unmanaged"],
        "change_id": None,
        "change_status": None,
    }
    if not plan["changes"] or check_mode:
        return result
    comment = "immersiverse.dr dns_failover: %s serves%s" % (
        want["serving"],
        ", %s stands by" % want["standby"] if want["standby"] else "",
    )
    info = r53.call(
        "change_resource_record_sets",
        HostedZoneId=zone["id"],
        ChangeBatch={"Comment": comment[:256], "Changes": plan["changes"]},
    )["ChangeInfo"]
    result["change_id"] = zone_id_of(info.get("Id"))
    result["change_status"] = info.get("Status")
    if wait and result["change_status"] != "INSYNC":
        try:
            result["change_status"] = wait_in_sync(r53, result["change_id"], wait_timeout, poll_seconds, sleep, clock)
        except DnsError as exc:
            exc.result = result  # the change was made: the module fails with changed true and what it wrote
            raise
    return result
