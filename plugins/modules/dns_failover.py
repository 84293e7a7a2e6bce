#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: dns_failover
short_description: Point the service's DNS name at the serving region with Route 53 failover records
version_added: 0.12.0
description:
  - Keeps one Route 53 failover record set per region for the service's name (O(record_name), O(record_type)),
    C(SetIdentifier) the region's name and its value the region's app endpoint from O(targets). The O(serving)
    region gets the C(Failover=PRIMARY) record; O(standby), when given, the C(Failover=SECONDARY) one. Every other
    region's record of the name is deleted, among them the regions in O(remove) (the failed region, at isolate
    time).
  - Only record sets whose C(SetIdentifier) is one of the regions given (O(targets), O(serving), O(standby),
    O(remove)) are touched. A record set of the name that would make Route 53 refuse the change (one without
    C(SetIdentifier), another routing policy, a record of another set identifier already in the role wanted here)
    is refused before anything is written, naming it.
  - Reads the current record sets, computes the changes (C(UPSERT), and C(DELETE) with the record's exact current
    values) and applies them in one change batch, which Route 53 applies all or nothing. Nothing to change means no
    write and C(changed=false).
  - With O(wait), waits until Route 53 reports the change C(INSYNC) (every authoritative server has it), at most
    O(wait_timeout) seconds; the module fails when it is not by then (the change stays submitted).
  - Refuses inconsistent input before any call (O(serving) in O(remove), O(serving) or O(standby) without a target,
    O(serving) equal to O(standby), a target that is not an address or host name of the record type), saying what
    to fix. Errors of Route 53 (access denied, no such zone, a refused change batch, throttling, an endpoint that
    cannot be reached) are one message naming the zone, the record and what to check; credentials never appear.
  - Runs on the controller (C(delegate_to) set to C(localhost)) with boto3. O(endpoint_url) makes AWS or a
    stand-in such as moto's server work alike.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
attributes:
  check_mode:
    support: full
    details: Reads the zone and the record sets and returns the changes it would make (C(changes)); writes nothing.
  diff_mode:
    support: full
    details: The managed records before and after, per region.
  platform:
    details: Runs on the controller (C(delegate_to) set to C(localhost)), or any host with boto3 that reaches Route 53.
options:
  zone_id:
    description:
      - Id of the hosted zone (C(Z0123456789ABC) or C(/hostedzone/Z0123456789ABC)).
      - One of O(zone_id) and O(zone_name) is required, not both.
    type: str
  zone_name:
    description:
      - Name of the hosted zone, resolved with C(ListHostedZonesByName). No zone of that name, or more than one (a
        public and a private zone), is an error that asks for O(zone_id).
    type: str
  record_name:
    description: The service's DNS name, in the zone (C(auth.dr.example.com)).
    type: str
    required: true
  record_type:
    description: Type of the records; a host name as target needs C(CNAME).
    type: str
    choices: [A, AAAA, CNAME]
    default: A
  ttl:
    description: TTL of the records, in seconds. Short, so that resolvers follow a failover soon.
    type: int
    default: 30
  targets:
    description:
      - Region name to the region's app endpoint (an IPv4 address for C(A), IPv6 for C(AAAA), a host name for
        C(CNAME)). Only the targets of O(serving) and O(standby) are written; every region named here is managed.
    type: dict
    required: true
  serving:
    description: The region that serves; it gets the C(Failover=PRIMARY) record.
    type: str
    required: true
  standby:
    description:
      - The region that gets the C(Failover=SECONDARY) record, which Route 53 answers when the primary's health
        check fails. Not given means no secondary record (any other region's record is deleted).
    type: str
  remove:
    description:
      - Regions whose records must not exist, also when they have no target (the failed region at isolate time).
        O(serving) and O(standby) cannot be among them.
    type: list
    elements: str
    default: []
  health_checks:
    description:
      - Region name to the id of the Route 53 health check of its record. A primary without one is always
        considered healthy by Route 53.
    type: dict
    default: {}
  endpoint_url:
    description: Route 53 endpoint; empty means AWS's.
    type: str
  region_name:
    description: AWS region of the client (Route 53 is global; its API is signed for C(us-east-1)).
    type: str
    default: us-east-1
  access_key:
    description: Access key id; empty uses the usual AWS credential chain (env, profile, instance role).
    type: str
  secret_key:
    description: Secret key; never logged.
    type: str
  wait:
    description: Wait until Route 53 reports the change C(INSYNC).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for C(INSYNC) at most.
    type: int
    default: 60
  poll_seconds:
    description: Seconds between two reads of the change's status while waiting.
    type: int
    default: 2
notes:
  - Route 53 applies a change batch atomically and validates its changes in order; the batch is built such that no
    step of it has two records in one failover role. The deletes come first, then the upserts in an order where
    each takes a failover role that is free by then (a failover - the failed PRIMARY deleted, the SECONDARY
    promoted, a new SECONDARY). Only a swap of PRIMARY and SECONDARY (a switchover that keeps the old
    primary region as standby) has no such order; one of the two records is then deleted with its current values
    and written anew in the same batch.
  - moto's server (the tests and the lab) answers C(INSYNC) at once and checks no health; see docs/traffic.md.
  - The IAM permissions used are route53:ListHostedZonesByName (with O(zone_name)), route53:GetHostedZone (with
    O(zone_id)), route53:ListResourceRecordSets, route53:ChangeResourceRecordSets and route53:GetChange.
seealso:
  - module: immersiverse.dr.region_health
requirements:
  - boto3 on the controller
"""

EXAMPLES = r"""
- name: Isolate - take the failed primary region out of DNS, secondary serves, tertiary stands by
  immersiverse.dr.dns_failover:
    zone_name: dr.example.com
    record_name: auth.dr.example.com
    targets: "{{ dr_app_endpoints }}"   # {primary: 192.0.2.10, secondary: 192.0.2.20, tertiary: 192.0.2.30}
    serving: secondary
    standby: tertiary
    remove: [primary]
    health_checks: "{{ dr_app_health_checks | default({}) }}"
  delegate_to: localhost
  run_once: true

- name: Reopen - the name points at the serving region only (no secondary record)
  immersiverse.dr.dns_failover:
    zone_id: Z0123456789ABCDEFGHIJ
    record_name: auth.dr.example.com
    record_type: CNAME
    ttl: 60
    targets:
      primary: auth.primary.dr.example.com
      secondary: auth.secondary.dr.example.com
    serving: primary
    endpoint_url: "{{ dr_route53_endpoint_url | default(omit) }}"
    access_key: "{{ dr_route53_access_key | default(omit) }}"
    secret_key: "{{ dr_route53_secret_key | default(omit) }}"
  delegate_to: localhost
  run_once: true
  register: dns
"""

RETURN = r"""
zone_id:
  description: Id of the hosted zone.
  returned: always
  type: str
  sample: Z0123456789ABCDEFGHIJ
zone_name:
  description: Name of the hosted zone.
  returned: always
  type: str
  sample: dr.example.com.
record_name:
  description: The record's name, fully qualified.
  returned: always
  type: str
  sample: auth.dr.example.com.
record_type:
  description: The record's type.
  returned: always
  type: str
  sample: A
serving:
  description: The region with the PRIMARY record.
  returned: always
  type: str
standby:
  description: The region with the SECONDARY record, or null.
  returned: always
  type: str
before:
  description: The managed records before the run, per region (C(failover), C(ttl), C(values), C(health_check_id)).
  returned: always
  type: dict
  sample: {"primary": {"failover": "PRIMARY", "ttl": 30, "values": ["192.0.2.10"], "health_check_id": null},
           "secondary": {"failover": "SECONDARY", "ttl": 30, "values": ["192.0.2.20"], "health_check_id": null}}
after:
  description: The managed records after the run (in check mode, after the changes would be made), per region.
  returned: always
  type: dict
  sample: {"secondary": {"failover": "PRIMARY", "ttl": 30, "values": ["192.0.2.20"], "health_check_id": null},
           "tertiary": {"failover": "SECONDARY", "ttl": 30, "values": ["192.0.2.30"], "health_check_id": null}}
changes:
  description: The change batch's changes, as sent to Route 53 (empty when nothing was to change).
  returned: always
  type: list
  elements: dict
  sample: [{"Action": "DELETE", "ResourceRecordSet": {"Name": "auth.dr.example.com.", "Type": "A",
            "SetIdentifier": "primary", "Failover": "PRIMARY", "TTL": 30,
            "ResourceRecords": [{"Value": "192.0.2.10"}]}}]
summary:
  description: One line per change.
  returned: always
  type: list
  elements: str
  sample: ["DELETE primary PRIMARY 192.0.2.10", "UPSERT secondary PRIMARY 192.0.2.20",
           "UPSERT tertiary SECONDARY 192.0.2.30"]
unmanaged:
  description: Set identifiers of record sets of the name that are not regions given, left as they are.
  returned: always
  type: list
  elements: str
change_id:
  description: Id of the submitted change; null when nothing was written (nothing to change, or check mode).
  returned: always
  type: str
  sample: C2682N5HXP0BZ4
change_status:
  description: C(PENDING) or C(INSYNC), the last status read; null when nothing was written.
  returned: always
  type: str
  sample: INSYNC
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import dns as service_dns

SPEC_KEYS = (
    "zone_id",
    "zone_name",
    "record_name",
    "record_type",
    "ttl",
    "targets",
    "serving",
    "standby",
    "remove",
    "health_checks",
)


def run_module(module):
    p = module.params
    secrets = (p["access_key"], p["secret_key"])
    client = service_dns.route53_client(p["endpoint_url"], p["region_name"], p["access_key"], p["secret_key"])
    return service_dns.reconcile(
        client,
        {key: p[key] for key in SPEC_KEYS},
        check_mode=module.check_mode,
        wait=p["wait"],
        wait_timeout=p["wait_timeout"],
        poll_seconds=p["poll_seconds"],
        endpoint_url=p["endpoint_url"],
        secrets=secrets,
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            zone_id=dict(type="str"),
            zone_name=dict(type="str"),
            record_name=dict(type="str", required=True),
            record_type=dict(type="str", default="A", choices=["A", "AAAA", "CNAME"]),
            ttl=dict(type="int", default=30),
            targets=dict(type="dict", required=True),
            serving=dict(type="str", required=True),
            standby=dict(type="str"),
            remove=dict(type="list", elements="str", default=[]),
            health_checks=dict(type="dict", default={}),
            endpoint_url=dict(type="str"),
            region_name=dict(type="str", default="us-east-1"),
            access_key=dict(type="str", no_log=True),
            secret_key=dict(type="str", no_log=True),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=60),
            poll_seconds=dict(type="int", default=2),
        ),
        required_one_of=[("zone_id", "zone_name")],
        mutually_exclusive=[("zone_id", "zone_name")],
        supports_check_mode=True,
    )
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        # a change made before the error (the wait for INSYNC failed) comes back with the error
        module.fail_json(msg=_errors.message(exc), **(getattr(exc, "result", None) or {"changed": False}))
    if module._diff:
        result["diff"] = {"before": result["before"], "after": result["after"]}
    if module.params["wait"] and result["change_id"] and result["change_status"] != "INSYNC":
        module.fail_json(
            msg="Route 53 zone %s, record %s %s: the change %s was submitted but is %s after %d s: it "
            "will be applied; look again with get-change, or raise wait_timeout"
            % (
                result["zone_id"],
                result["record_name"],
                result["record_type"],
                result["change_id"],
                result["change_status"],
                module.params["wait_timeout"],
            ),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
