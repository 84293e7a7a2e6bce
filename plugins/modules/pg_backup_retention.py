#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_backup_retention
short_description: Delete the backups and WAL a retention policy no longer needs, and nothing else
version_added: 0.2.0
description:
  - Keeps the newest O(keep_full) valid full backups and every backup needed to restore any point in the last
    O(keep_days) days (those committed inside the window and the newest one before it). With both, a backup
    either rule keeps is kept. The newest valid backup is never deleted.
  - Deletes WAL segments under C(wal/) only when they are older than the start of the oldest kept backup, so
    every kept backup can still replay forward. History files are never deleted.
  - A backup is deleted catalog record first, so an interruption leaves it incomplete, never valid with parts
    missing. Interrupted backups nobody is still writing are removed too.
  - Objects under S3 Object Lock or legal hold are not deleted; the backup is reported in C(skipped) with the
    reason and stays valid and listed.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.repository
attributes:
  check_mode:
    support: partial
    details:
      - Reports what would be deleted and deletes nothing. Objects under S3 Object Lock or legal hold are found only
        when a real run tries to delete them, so check mode reports such a backup as deleted (not in C(skipped)).
  diff_mode:
    support: full
    details: The backup ids before and after.
options:
  keep_full:
    description: How many of the newest valid full backups to keep (at least 1).
    type: int
  keep_days:
    description: Keep what restoring any point in this many days needs.
    type: int
  area:
    description: Full backups (and their WAL) or logical backups.
    type: str
    default: backup
    choices: [backup, logical]
seealso:
  - module: immersiverse.dr.pg_basebackup
  - module: immersiverse.dr.s3_backup_lifecycle
"""

EXAMPLES = r"""
- name: Keep four weekly full backups and 35 days of point-in-time recovery
  immersiverse.dr.pg_backup_retention:
    repository: "{{ dr_backup_repository }}"
    keep_full: 4
    keep_days: 35
  delegate_to: localhost
"""

RETURN = r"""
kept:
  description: Kept backups with the reason each is kept.
  returned: always
  type: list
  elements: dict
deleted:
  description: Ids of the backups deleted.
  returned: always
  type: list
  elements: str
would_delete:
  description: Ids of the backups the policy removes (what check mode would delete).
  returned: always
  type: list
  elements: str
skipped:
  description: Backups the policy would remove but that are locked, with the reason.
  returned: always
  type: dict
wal_deleted:
  description: Number of WAL segments deleted.
  returned: always
  type: int
would_delete_wal:
  description: Number of WAL segments the policy removes.
  returned: always
  type: int
incomplete_removed:
  description: Interrupted backups removed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repository=dict(type="dict", required=True, options=repo_spec.repository_argument_spec()),
            keep_full=dict(type="int"),
            keep_days=dict(type="int"),
            area=dict(type="str", default="backup", choices=["backup", "logical"]),
        ),
        required_one_of=[("keep_full", "keep_days")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        repository = repo_spec.open_repository(p["repository"])
        report = backup_operations.retention(repository, keep_full=p["keep_full"], keep_days=p["keep_days"],
                                             area=p["area"], check_mode=module.check_mode)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    removed = set(report["would_delete"]) - set(report["skipped"])
    if module._diff:
        before = sorted([k["id"] for k in report["kept"]] + report["would_delete"])
        report["diff"] = {"before": "\n".join(before) + "\n",
                          "after": "\n".join(b for b in before if b not in removed) + "\n"}
    module.exit_json(**report)


if __name__ == "__main__":
    main()
