#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_promote
short_description: Promote a PostgreSQL standby and wait until it accepts writes
version_added: 0.1.0
description:
  - Reads the server, promotes it with C(pg_promote(wait => false)) when it is in recovery, waits until it accepts
    writes (C(pg_is_in_recovery()) every 10 ms, where C(wait => true) looks every 100 ms), and returns the
    timeline and LSN before and after. One connection, so a failover spends no time on separate read, promote and
    verify steps.
  - A server that is already a primary is left alone and nothing is changed, so the module is safe to re-run.
  - Fencing the former primary is not this module's job; the M(immersiverse.dr.promote) role refuses to call it
    while the failed side may still accept writes.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
attributes:
  check_mode:
    support: full
    details: Reports whether it would promote and the SQL it would run; runs nothing (pg_promote is not
      transactional).
  diff_mode:
    support: full
    details: The role (standby, primary) before and after.
  platform:
    details: Runs on the database host; the action plugin runs the promotion there over the task's connection.
options:
  wait_seconds:
    description: How long pg_promote may wait for the promotion to finish.
    type: int
    default: 60
  replay_lsn:
    description:
      - Promote only once the standby has replayed WAL up to this LSN (for example the old primary's shutdown
        checkpoint in a switchover, so that nothing it acknowledged is lost). Checked every 50 ms, each check its own
        short transaction.
      - When it is not reached within O(catchup_seconds) the module fails and nothing is promoted.
    type: str
    version_added: 0.6.0
  catchup_seconds:
    description: How long to wait for O(replay_lsn).
    type: float
    default: 30
    version_added: 0.6.0
seealso:
  - name: pg_promote
    description: PostgreSQL's promotion function.
    link: https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-RECOVERY-CONTROL
"""

EXAMPLES = r"""
- name: Promote this region's standby
  immersiverse.dr.pg_promote:
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: promoted
"""

RETURN = r"""
promoted:
  description: True when this run promoted the server.
  returned: always
  type: bool
timeline_before:
  description: Timeline before.
  returned: always
  type: int
timeline:
  description: Timeline after (the new one when promoted). Null in check mode when it would promote.
  returned: always
  type: int
current_lsn:
  description: Current WAL write position after the promotion.
  returned: always
  type: str
would_run:
  description: The SQL check mode would have run.
  returned: in check mode, when it would promote
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import promote as pg_promote


# The work is _pg.promote_task, shared with this module's action plugin (plugins/action/pg_promote.py),
# which runs it on the target without this wrapper. This main() runs when the action plugin cannot
# (interpreter discovery, async, a become password).
def main():
    module = AnsibleModule(argument_spec=pg_promote.promote_argument_spec(), supports_check_mode=True)
    result = pg_promote.promote_task(module.params, check_mode=module.check_mode, diff=module._diff)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
