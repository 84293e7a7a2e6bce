#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_info
short_description: What the detect phase knows about one PostgreSQL instance
version_added: 0.1.0
description:
  - Reports whether the instance is a primary or a standby, its timeline and LSNs, replication peers and lag,
    the WAL receiver, and the WAL archiver's counters.
  - Reads only; never changes the server.
  - Called C(immersiverse.dr.pg_facts) before 0.9.0; that name still works (a redirect, deprecated, removed in
    2.0.0).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.info_module
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
attributes:
  platform:
    details: Runs on the database host; the action plugin runs the read there over the task's connection.
options:
  fail_on_unreachable:
    description:
      - When false, an unreachable server is reported as RV(reachable=false) with the reason instead of failing,
        so a detect play can describe a dead region without stopping.
    type: bool
    default: true
  fence_dir:
    description:
      - The cluster's configuration directory (on Debian C(/etc/postgresql/15/main)). When given, RV(fence) tells
        whether the isolate phase fenced this host (its marker C(immersiverse-dr-fence.json)) and what
        C(start.conf) says, also when the server is down.
    type: path
seealso:
  - name: PostgreSQL recovery information functions
    description: pg_is_in_recovery, pg_last_wal_replay_lsn and friends.
    link: https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-RECOVERY-CONTROL
"""

EXAMPLES = r"""
- name: Who is primary here?
  immersiverse.dr.pg_info:
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: pg

- name: Describe a region that may be down
  immersiverse.dr.pg_info:
    login_host: db.secondary.example.net
    login_user: dr_monitor
    fail_on_unreachable: false
"""

RETURN = r"""
reachable:
  description: Whether a connection could be made.
  returned: always
  type: bool
error:
  description: Why the server could not be reached.
  returned: when RV(reachable) is false
  type: str
role:
  description: C(primary) or C(standby).
  returned: when reachable
  type: str
  sample: standby
in_recovery:
  description: pg_is_in_recovery().
  returned: when reachable
  type: bool
timeline:
  description: Current timeline (of the WAL being written on a primary, being received on a standby).
  returned: when reachable
  type: int
current_lsn:
  description: pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a standby.
  returned: when reachable
  type: str
  sample: 0/3000148
receive_lsn:
  description: Last WAL location received by a standby (null on a primary).
  returned: when reachable
  type: str
replay_lag_bytes:
  description: Bytes received but not yet replayed (standby), 0 on a primary.
  returned: when reachable
  type: int
last_replay_at:
  description: Commit time of the last transaction replayed (standby).
  returned: when reachable
  type: str
system_identifier:
  description: The cluster's system identifier; all members of one replication set share it.
  returned: when reachable
  type: str
server_version:
  description: PostgreSQL version string.
  returned: when reachable
  type: str
replication:
  description: Rows of pg_stat_replication (primary) with lag in bytes and seconds.
  returned: when reachable
  type: list
  elements: dict
wal_receiver:
  description: pg_stat_wal_receiver of a standby (status, sender, slot), null on a primary.
  returned: when reachable
  type: dict
archiver:
  description: pg_stat_archiver counters and last archived / failed WAL.
  returned: when reachable
  type: dict
fence:
  description:
    - C(fenced) (the isolate phase's marker is present), C(marker) (its content, or null) and C(start_conf)
      (auto, manual, disabled or null).
  returned: when O(fence_dir) is given
  type: dict
  sample: {"fenced": true, "start_conf": "manual", "marker": {"fenced_at": "2026-12-02T03:00:00Z"}}
settings:
  description: wal_level, archive_mode, max_wal_senders, default_transaction_read_only.
  returned: when reachable
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts


# The work is _pg.facts.facts_task, shared with this module's action plugin (plugins/action/pg_info.py),
# which runs it on the target without this wrapper. This main() runs when the action plugin cannot
# (interpreter discovery, async, a become password).
def main():
    module = AnsibleModule(argument_spec=pg_facts.facts_argument_spec(), supports_check_mode=True)
    result = pg_facts.facts_task(module.params, check_mode=module.check_mode, diff=module._diff)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
