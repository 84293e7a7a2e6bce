#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: region_health
short_description: Health of one region's S3 bucket, Redis, Kafka broker and Kubernetes app
version_added: 0.1.0
description:
  - Checks each service of a region that is given and reports, per service, whether it answers, how fast,
    and a few facts (bucket versioning, Redis role, Kafka brokers and topics, Deployment replicas).
  - Runs on the controller (or any host with the client libraries). Reads only.
  - One dead service never hides the others; the module fails only when O(fail_on_unhealthy=true).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.info_module
  - immersiverse.dr.attributes.platform
attributes:
  platform:
    details: Runs on the controller or any host with the client libraries.
options:
  region:
    description: Name of the region, echoed in the result.
    type: str
    required: true
  s3:
    description: The region's backup bucket. C(endpoint_url) makes AWS, MinIO, Ceph or a test endpoint work alike.
    type: dict
    suboptions:
      endpoint_url:
        description: S3 endpoint; empty means AWS's.
        type: str
      bucket:
        description: Bucket name.
        type: str
        required: true
      region_name:
        description: S3 region.
        type: str
        default: us-east-1
      access_key:
        description: Access key id; empty uses the usual AWS credential chain (env, profile, instance role).
        type: str
      secret_key:
        description: Secret key; never logged.
        type: str
  redis_url:
    description: C(redis://host:port/db) of the region's cache. The URL may carry a password; it is never returned
      (nor logged).
    type: str
  redis_password:
    description: The Redis password (C(AUTH)), when it is not in O(redis_url); never logged.
    type: str
  kafka_bootstrap:
    description: C(host:port) of the region's Kafka brokers.
    type: str
  kubernetes:
    description: The region's Kubernetes API and the app's Deployment.
    type: dict
    suboptions:
      host:
        description: API server URL.
        type: str
        required: true
      api_key:
        description: Bearer token; never logged.
        type: str
      validate_certs:
        description: Verify the API server's certificate.
        type: bool
        default: true
      namespace:
        description: Namespace of the app.
        type: str
        default: auth
      deployment:
        description: Name of the app's Deployment.
        type: str
        default: auth-service
  timeout:
    description: Seconds each check may take.
    type: int
    default: 5
  fail_on_unhealthy:
    description: Fail when any checked service is unhealthy (the failing services are named in the message).
    type: bool
    default: false
requirements:
  - boto3, redis, kafka-python and kubernetes on the controller, for the checks that are used
"""

EXAMPLES = r"""
- name: Health of the secondary region's services
  immersiverse.dr.region_health:
    region: secondary
    s3:
      endpoint_url: "{{ dr_s3_endpoint_url }}"
      bucket: "{{ dr_s3_bucket }}"
    redis_url: "{{ dr_redis_url }}"
    kafka_bootstrap: "{{ dr_kafka_bootstrap }}"
    kubernetes:
      host: "{{ dr_k8s_host }}"
      api_key: "{{ dr_k8s_api_key }}"
  delegate_to: localhost
  register: health
"""

RETURN = r"""
region:
  description: The region checked.
  returned: always
  type: str
healthy:
  description: True when every checked service answered.
  returned: always
  type: bool
services:
  description: Per service (s3, redis, kafka, kubernetes) the result of its check, with C(ok) and C(latency_ms).
  returned: always
  type: dict
  sample: {"s3": {"ok": true, "latency_ms": 4.2, "bucket": "dr-secondary", "versioning": "Enabled"}}
unhealthy:
  description: Names of the services that did not answer.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook import services as runbook_services


def run_module(module):
    p = module.params
    t = p["timeout"]
    services = {}
    if p["s3"]:
        s3 = p["s3"]
        services["s3"] = runbook_services.check_s3(s3["endpoint_url"], s3["bucket"], s3["region_name"],
                                                   s3["access_key"], s3["secret_key"], timeout=t)
    if p["redis_url"]:
        services["redis"] = runbook_services.check_redis(p["redis_url"], timeout=t, password=p["redis_password"])
    if p["kafka_bootstrap"]:
        services["kafka"] = runbook_services.check_kafka(p["kafka_bootstrap"], timeout=t)
    if p["kubernetes"]:
        k = p["kubernetes"]
        services["kubernetes"] = runbook_services.check_kubernetes(k["host"], k["namespace"], k["deployment"],
                                                                   k["api_key"] or "", k["validate_certs"], timeout=t)
    unhealthy = sorted(name for name, r in services.items() if not r["ok"])
    return {"region": p["region"], "healthy": not unhealthy, "services": services, "unhealthy": unhealthy}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            region=dict(type="str", required=True),
            s3=dict(type="dict", options=dict(
                endpoint_url=dict(type="str"),
                bucket=dict(type="str", required=True),
                region_name=dict(type="str", default="us-east-1"),
                access_key=dict(type="str", no_log=True),
                secret_key=dict(type="str", no_log=True),
            )),
            redis_url=dict(type="str", no_log=True),
            redis_password=dict(type="str", no_log=True),
            kafka_bootstrap=dict(type="str"),
            kubernetes=dict(type="dict", options=dict(
                host=dict(type="str", required=True),
                api_key=dict(type="str", no_log=True),
                validate_certs=dict(type="bool", default=True),
                namespace=dict(type="str", default="auth"),
                deployment=dict(type="str", default="auth-service"),
            )),
            timeout=dict(type="int", default=5),
            fail_on_unhealthy=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    if module.params["fail_on_unhealthy"] and result["unhealthy"]:
        module.fail_json(msg="region %s: unhealthy services: %s" % (result["region"], ", ".join(
            "%s (%s)" % (n, result["services"][n].get("error", "?")) for n in result["unhealthy"])), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
