#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kafka_dr_event
short_description: Publish what a runbook did (and the recovery point) for downstream consumers
version_added: 0.12.0
description:
  - Publishes O(event) as JSON under O(key) with C(acks=all), so that downstream consumers (search indexes,
    fraud systems, other services' caches) learn that the auth database moved or went back to a point.
  - A re-run publishes nothing twice; an event with the same key among the last O(dedupe_last) events of the
    topic's partitions counts as published.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.service.kafka
attributes:
  check_mode:
    support: full
    details: Looks for an earlier event with the key and publishes nothing.
  diff_mode:
    support: none
  platform:
    details: Runs on the controller (C(delegate_to localhost)), where kafka-python is.
options:
  topic:
    description: The topic of DR events.
    type: str
    default: dr.events
  key:
    description: The event's key, the same for every run of the same recovery (runbook, region, recovery point).
    type: str
    required: true
  event:
    description: The event; no secret belongs in it.
    type: dict
    required: true
  dedupe_last:
    description: How many of the newest events of each partition are searched for the key; C(0) searches none.
    type: int
    default: 200
"""

EXAMPLES = r"""
- name: Tell downstream consumers the auth database went back to a point
  immersiverse.dr.kafka_dr_event:
    bootstrap: kafka-1.secondary.internal:9092
    key: "pitr:secondary:{{ recovered_to_time }}"
    event:
      type: pitr
      region: secondary
      recovery_point: "{{ recovered_to_time }}"
  delegate_to: localhost
"""

RETURN = r"""
published:
  description: Where the event went (topic, partition, offset); null when it was already there or in check mode.
  returned: always
  type: dict
already:
  description: Where the earlier event with the same key is, when there is one.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import kafka_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = service_spec.kafka_spec()
    argument_spec.update(topic=dict(type="str", default="dr.events"), key=dict(type="str", required=True, no_log=False),
                         event=dict(type="dict", required=True), dedupe_last=dict(type="int", default=200))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        result = kafka_ops.publish(p["bootstrap"], p["topic"], p["key"], p["event"], timeout=p["timeout"],
                                   security=service_spec.security(p), check_mode=module.check_mode,
                                   dedupe_last=p["dedupe_last"])
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
