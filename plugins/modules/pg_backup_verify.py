#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_backup_verify
short_description: Verify backups in one or more regions' repositories and record the verdict in their catalog
version_added: 0.9.0
description:
  - C(checksums) reads every stored file of a backup back and compares its size and sha256 with the catalog, so one
    flipped byte is found. C(full) does that, then restores the backup into a scratch directory and runs
    PostgreSQL's pg_verifybackup on it (every data file's checksum against the manifest, the WAL parsed with
    pg_waldump). Logical backups are verified by their checksums.
  - The verdict is written beside the backup (C(verified.json)), where M(immersiverse.dr.pg_backup_info) reports it as
    C(last_verification); that write is the change this module reports.
  - Fails when a verification finds a problem, unless O(fail_on_problems=false).
  - The same verification M(immersiverse.dr.pg_backup_info) runs with O(immersiverse.dr.pg_backup_info#module:verify),
    which only reports.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.repository.repositories
  - immersiverse.dr.repository.verification
attributes:
  check_mode:
    support: partial
    details:
      - Verifies (reads only) and reports the verdicts; writes no C(verified.json), and reports C(changed=false) where
        a real run that verifies reports C(changed=true).
  diff_mode:
    support: none
    details: A report, nothing to compare.
options:
  method:
    description: How to verify.
    type: str
    default: checksums
    choices: [checksums, full]
  scope:
    description: Which backups to verify, in every repository.
    type: str
    default: newest
    choices: [newest, all]
  backup_id:
    description: Verify only this backup (overrides O(scope)).
    type: str
seealso:
  - module: immersiverse.dr.pg_backup_info
  - module: immersiverse.dr.pg_basebackup
"""

EXAMPLES = r"""
- name: The newest backup of every region, restored into scratch and checked by pg_verifybackup
  immersiverse.dr.pg_backup_verify:
    repositories: "{{ dr_backup_repositories }}"
    method: full
    scratch_dir: /var/tmp/dr-verify
  delegate_to: localhost
"""

RETURN = r"""
verified:
  description: One entry per verified backup (repository, id, kind, result C(ok) or C(failed), method, problems).
  returned: always
  type: list
  elements: dict
problems:
  description: Everything that is wrong, in words.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repositories=dict(type="list", elements="dict", required=True,
                              options=repo_spec.repository_argument_spec()),
            method=dict(type="str", default="checksums", choices=["checksums", "full"]),
            scope=dict(type="str", default="newest", choices=["newest", "all"]),
            backup_id=dict(type="str"),
            scratch_dir=dict(type="path"),
            pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
            fail_on_problems=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        report = backup_operations.backup_info(
            [repo_spec.open_repository(spec) for spec in p["repositories"]], verify=p["method"],
            verify_scope=p["scope"], backup_id=p["backup_id"], pg_bin=p["pg_bin_dir"], scratch_dir=p["scratch_dir"],
            record_verdicts=not module.check_mode)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    result = {"changed": report["changed"], "verified": report["verified"], "problems": report["problems"]}
    if result["problems"] and p["fail_on_problems"]:
        module.fail_json(msg="backup problems: " + "; ".join(result["problems"][:10]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
