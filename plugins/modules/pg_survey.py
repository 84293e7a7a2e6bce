#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_survey
short_description: M(immersiverse.dr.pg_info) on several hosts at once
version_added: 0.8.0
description:
  - Reads PostgreSQL on each host of O(hosts) as a task of M(immersiverse.dr.pg_info) delegated to that host would
    (the same connection, become, interpreter and variables), with the reads running at the same time.
  - A loop of delegated tasks reads one host after the other. The failover's detect phase reads every region on
    its critical path, outside the play's limit too.
  - A host that cannot be reached (the connection fails) is reported in its result (C(unreachable)); the task
    itself is not unreachable. A host whose read fails, or that does not answer within O(host_timeout), fails the
    task.
  - This is an action plugin; it runs on the controller and starts one task per host.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.info_module
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action
  - immersiverse.dr.postgres
attributes:
  platform:
    details: Runs on the controller; the reads run on each host of O(hosts).
options:
  hosts:
    description: Inventory names of the hosts to read (each once, in this order in RV(results)).
    type: list
    elements: str
    required: true
  host_timeout:
    description:
      - Seconds to wait for all the hosts. A host that has not answered by then fails the task (it is not known to
        be down, since it may be a live primary on a slow link).
    type: int
    default: 30
  fail_on_unreachable:
    description: As for M(immersiverse.dr.pg_info), for each host's PostgreSQL.
    type: bool
    default: true
  fence_dir:
    description: As for M(immersiverse.dr.pg_info).
    type: path
notes:
  - A become password cannot be typed for the delegated reads; use passwordless become, or pg_info in a loop.
seealso:
  - module: immersiverse.dr.pg_info
"""

EXAMPLES = r"""
- name: Read every region's database host, outside the play's limit too
  immersiverse.dr.pg_survey:
    hosts: "{{ groups['databases'] }}"
    login_unix_socket: /var/run/postgresql
    fail_on_unreachable: false
  become: true
  become_user: postgres
  register: survey
"""

RETURN = r"""
results:
  description: One result per host, in the order of O(hosts), each what pg_info returned, with C(host).
  returned: always
  type: list
  elements: dict
reachable_hosts:
  description: The hosts whose PostgreSQL answered.
  returned: always
  type: list
  elements: str
unreachable_hosts:
  description: The hosts that could not be reached, or whose PostgreSQL did not answer.
  returned: always
  type: list
  elements: str
"""
