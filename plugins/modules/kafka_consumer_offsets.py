#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kafka_consumer_offsets
short_description: Move a consumer group's offsets to a recovery point by timestamp
version_added: 0.12.0
description:
  - After a point-in-time recovery or a failover that lost writes, the database is back at a point; the consumers
    of the auth service's events must process again every event after it. This sets the group's committed offset
    on each partition of O(topics) to the first event at or after O(timestamp) (the end of the partition when
    there is none).
  - Kafka refuses it while the group has active members; the message says to stop them first (the isolate phase
    scales the app to 0).
  - Idempotent. Partitions already at the wanted offset are left alone.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.service.kafka
attributes:
  check_mode:
    support: full
    details: Computes the offsets and returns them before and after, committing nothing.
  diff_mode:
    support: none
  platform:
    details: Runs on the controller (C(delegate_to localhost)), where kafka-python is.
options:
  group:
    description: The consumer group.
    type: str
    required: true
  topics:
    description: The topics whose offsets move.
    type: list
    elements: str
    required: true
  timestamp:
    description: The recovery point, ISO 8601 with a zone (C(2026-12-04T05:10:00.123+00:00)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The auth service's consumers process every event after the recovery point again
  immersiverse.dr.kafka_consumer_offsets:
    bootstrap: kafka-1.secondary.internal:9092
    group: auth-service
    topics: [auth.token-revocations]
    timestamp: "{{ recovered_to_time }}"
  delegate_to: localhost
"""

RETURN = r"""
group:
  description: The group.
  returned: always
  type: str
partitions:
  description: Per partition, C(topic), C(partition), the committed offset C(before) (null when none) and C(after).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import kafka_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import revocations
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = service_spec.kafka_spec()
    argument_spec.update(group=dict(type="str", required=True),
                         topics=dict(type="list", elements="str", required=True),
                         timestamp=dict(type="str", required=True))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        point = revocations.parse_time(p["timestamp"], "timestamp")
        result = kafka_ops.reset_group(p["bootstrap"], p["group"], p["topics"], int(point.timestamp() * 1000),
                                       timeout=p["timeout"], security=service_spec.security(p),
                                       check_mode=module.check_mode)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
