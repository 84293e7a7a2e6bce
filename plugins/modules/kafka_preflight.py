#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kafka_preflight
short_description: Check that a region's Kafka answers and has the auth service's topics and partitions
version_added: 0.12.0
description:
  - Reads the brokers and the topics named in O(topics), and fails, naming each problem, when a topic is missing
    or has fewer partitions than asked. The runbooks run it before anything is fenced.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.info_module
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.service.kafka
attributes:
  platform:
    details: Runs on the controller (C(delegate_to localhost)), where kafka-python is.
options:
  topics:
    description: The topics that must exist, each with the least number of partitions it must have.
    type: dict
    required: true
  fail_on_problems:
    description: Fail when a topic is missing or short of partitions (the problems are listed either way).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: The secondary region's Kafka is ready for the auth service
  immersiverse.dr.kafka_preflight:
    bootstrap: kafka-1.secondary.internal:9092
    topics:
      auth.token-revocations: 3
      dr.events: 1
  delegate_to: localhost
"""

RETURN = r"""
brokers:
  description: Number of brokers the cluster reports.
  returned: always
  type: int
topics:
  description: Per topic asked, C(partitions) or C(missing).
  returned: always
  type: dict
problems:
  description: What is missing or short, one sentence each (empty when ready).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import kafka_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = service_spec.kafka_spec()
    argument_spec.update(topics=dict(type="dict", required=True), fail_on_problems=dict(type="bool", default=True))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        wanted = dict((str(k), int(v or 1)) for k, v in p["topics"].items())
        result = kafka_ops.preflight(p["bootstrap"], wanted, timeout=p["timeout"],
                                     security=service_spec.security(p))
    except (TypeError, ValueError) as exc:
        module.fail_json(msg="topics must map each topic to its least number of partitions: %s" % exc)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    if result["problems"] and p["fail_on_problems"]:
        module.fail_json(msg="Kafka %s is not ready for the auth service: %s. Create the topics (or fix the "
                             "inventory's topic list) before the runbook moves anything."
                             % (p["bootstrap"], "; ".join(result["problems"])), changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
