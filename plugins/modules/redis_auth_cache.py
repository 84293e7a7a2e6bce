#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: redis_auth_cache
short_description: Delete the cached auth state a recovered database no longer backs
version_added: 0.12.0
description:
  - After a point-in-time recovery the cache may hold auth state newer than the database (sessions and token
    caches of users or logins the database no longer has). This deletes the keys matching the patterns given,
    with C(SCAN) and C(UNLINK) (never C(KEYS) or C(FLUSHALL)), so the service rebuilds them from the database.
  - Delete on the master only; the replicas follow.
  - A pattern that matches every key (C(*)) is refused.
  - Revocations cached as C(revoked:<jti>) are NOT auth state to flush, they are evidence. The
    M(immersiverse.dr.token_revocations) module reads them back into the database instead.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.service.redis
attributes:
  check_mode:
    support: full
    details: Counts the keys it would delete.
  diff_mode:
    support: none
  platform:
    details: Runs on the controller (C(delegate_to localhost)), where the redis library is.
options:
  patterns:
    description: Glob patterns of the keys to delete, for example C(session:*).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Forget the sessions and user caches newer than the recovered database
  immersiverse.dr.redis_auth_cache:
    url: redis://10.1.0.5:6379/0
    patterns: ["session:*", "user:*"]
  delegate_to: localhost
"""

RETURN = r"""
server:
  description: host:port/db of the server (never a password).
  returned: always
  type: str
deleted:
  description: Keys deleted per pattern (in check mode, that would be deleted).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._service import redis_ops
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = service_spec.redis_spec()
    argument_spec.update(patterns=dict(type="list", elements="str", required=True))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        result = redis_ops.flush(p["url"], p["patterns"], password=p["password"], timeout=p["timeout"],
                                 check_mode=module.check_mode)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
