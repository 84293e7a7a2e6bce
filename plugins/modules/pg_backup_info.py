#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_backup_info
short_description: List, verify and measure the backups in one or more regions' repositories
version_added: 0.2.0
description:
  - Lists the full and logical backups in each repository from their catalog records, with the interrupted ones
    (no catalog record) shown as incomplete, never as valid.
  - Verifies on demand. C(checksums) reads every stored file back and compares its size and sha256 with the
    catalog, so one flipped byte is found. C(full) does that, then restores the backup into a scratch directory
    with tar and runs PostgreSQL's pg_verifybackup on it (every data file's checksum against the manifest and the
    WAL parsed with pg_waldump).
  - Reports the recoverability window per repository from the backups and the WAL segments under C(wal/),
    from the oldest valid backup's consistency point to the end of the WAL that continues the newest one.
  - Fails when a verification finds a problem, unless O(fail_on_problems=false) (monitoring may prefer the data).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.info_module
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.repository.repositories
  - immersiverse.dr.repository.verification
attributes:
  check_mode:
    details:
      - Lists, verifies and measures; never writes (M(immersiverse.dr.pg_backup_verify) records verdicts).
  platform:
    details: Runs on the controller or any host that reaches the repositories.
options:
  verify:
    description: What to verify.
    type: str
    default: none
    choices: [none, checksums, full]
  verify_scope:
    description: Which backups to verify.
    type: str
    default: newest
    choices: [newest, all]
  backup_id:
    description: Verify only this backup (and report only it in C(verified)).
    type: str
seealso:
  - module: immersiverse.dr.pg_basebackup
"""

EXAMPLES = r"""
- name: Every region's backups, the newest verified byte for byte
  immersiverse.dr.pg_backup_info:
    repositories: "{{ dr_backup_repositories }}"
    verify: checksums
  delegate_to: localhost
  register: backups

- name: Alert when the newest backup is older than eight days
  ansible.builtin.assert:
    that: backups.newest_backup_age_seconds < 8 * 86400
    fail_msg: "the newest valid backup is {{ (backups.newest_backup_age_seconds / 86400) | round(1) }} days old"
"""

RETURN = r"""
repositories:
  description: Per repository its name, description, backups (valid, newest last), logical backups, incomplete
    backups, WAL segment count and recoverability window.
  returned: always
  type: list
  elements: dict
verified:
  description: One entry per verified backup (repository, id, result, problems).
  returned: always
  type: list
  elements: dict
newest_backup:
  description: The newest valid full backup across the repositories (id, repository, stop_time).
  returned: always
  type: dict
newest_backup_age_seconds:
  description: Seconds since the newest valid full backup was committed; null when there is none.
  returned: always
  type: float
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


def run_module(module):
    p = module.params
    return backup_operations.backup_info(
        [repo_spec.open_repository(spec) for spec in p["repositories"]], verify=p["verify"],
        verify_scope=p["verify_scope"], backup_id=p["backup_id"], pg_bin=p["pg_bin_dir"],
        scratch_dir=p["scratch_dir"], record_verdicts=False)


def main():
    spec = repo_spec.repository_argument_spec()
    module = AnsibleModule(
        argument_spec=dict(
            repositories=dict(type="list", elements="dict", required=True, options=spec),
            verify=dict(type="str", default="none", choices=["none", "checksums", "full"]),
            verify_scope=dict(type="str", default="newest", choices=["newest", "all"]),
            backup_id=dict(type="str"),
            scratch_dir=dict(type="path"),
            pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
            fail_on_problems=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if module.params["verify"] != "none":
        module.warn("pg_backup_info verifies and reports but no longer records the verdict (verified.json, "
                    "last_verification) since 0.9.0: use immersiverse.dr.pg_backup_verify to record it")
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    if result["problems"] and module.params["fail_on_problems"]:
        module.fail_json(msg="backup problems: " + "; ".join(result["problems"][:10]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
