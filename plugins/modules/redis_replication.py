#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: redis_replication
short_description: Make a region's Redis the master, or a replica of the serving region's
version_added: 0.12.0
description:
  - The serving region's Redis is the master and the other regions' replicate it. A failover makes the target
    region's Redis the master (C(REPLICAOF NO ONE)) and repoints the others at it (C(REPLICAOF host port)).
  - A replica is read-only, so repointing the failed region's Redis at the new master also stops writes to it.
  - Idempotent. Nothing is sent when the server already has the wanted role (and, for a replica, master).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.service.redis
attributes:
  check_mode:
    support: full
    details: Reads the replication state and says whether it would change it.
  diff_mode:
    support: none
  platform:
    details: Runs on the controller (C(delegate_to localhost)), where the redis library is.
options:
  role:
    description: The role the server must have.
    type: str
    required: true
    choices: [master, replica]
  master_host:
    description:
      - For O(role=replica), the master's address as THIS Redis server reaches it (not as the controller does).
    type: str
  master_port:
    description: For O(role=replica), the master's port as this server reaches it.
    type: int
    default: 6379
  wait_link_seconds:
    description:
      - For O(role=replica), fail unless the replica's link to its master is up within this many seconds;
        C(0) does not wait.
    type: float
    default: 0
"""

EXAMPLES = r"""
- name: The secondary region's Redis serves
  immersiverse.dr.redis_replication:
    url: redis://10.1.0.5:6379/0
    password: "{{ vault_redis_password }}"
    role: master
  delegate_to: localhost

- name: The tertiary region's Redis follows it
  immersiverse.dr.redis_replication:
    url: redis://10.2.0.5:6379/0
    role: replica
    master_host: 10.1.0.5
    wait_link_seconds: 10
  delegate_to: localhost
"""

RETURN = r"""
server:
  description: host:port/db of the server (never a password).
  returned: always
  type: str
before:
  description: Replication state before (role, master_host, master_port, master_link_status, connected_replicas).
  returned: always
  type: dict
after:
  description: Replication state after (in check mode, the state before).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import redis_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = service_spec.redis_spec()
    argument_spec.update(
        role=dict(type="str", required=True, choices=["master", "replica"]),
        master_host=dict(type="str"),
        master_port=dict(type="int", default=6379),
        wait_link_seconds=dict(type="float", default=0),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("role", "replica", ["master_host"])])
    p = module.params
    try:
        result = redis_ops.ensure_role(p["url"], p["role"], password=p["password"], master_host=p["master_host"],
                                       master_port=p["master_port"], timeout=p["timeout"],
                                       check_mode=module.check_mode, wait_link_seconds=p["wait_link_seconds"])
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
