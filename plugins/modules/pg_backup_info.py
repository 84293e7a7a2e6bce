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
  - immersiverse.dr.repository.repositories
attributes:
  check_mode:
    support: full
    description: Lists and verifies (reads only); does not write the verification record. Outside check mode a
      verification writes C(verified.json) next to the backup's catalog record and reports C(changed).
  diff_mode:
    support: none
    description: A report, nothing to compare.
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
  scratch_dir:
    description: Where O(verify=full) restores a backup (needs room for the whole database).
    type: path
  pg_bin_dir:
    description: Where pg_verifybackup lives.
    type: path
    default: /usr/lib/postgresql/15/bin
  fail_on_problems:
    description: Fail when a verification finds a problem.
    type: bool
    default: true
requirements:
  - boto3 for S3 repositories, on the host the module runs on
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

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils import _backup
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod

SUMMARY_KEYS = ("id", "label", "kind", "status", "timeline", "start_lsn", "stop_lsn", "start_time", "stop_time",
                "system_identifier", "pg_version", "database_bytes", "stored_bytes", "region", "databases",
                "verification", "last_verification", "duration_seconds")


def summarise(record):
    return {k: record[k] for k in SUMMARY_KEYS if k in record}


def run_module(module):
    p = module.params
    if p["backup_id"]:
        repo_mod.validate_name(p["backup_id"], "backup_id")
    report = {"changed": False, "repositories": [], "verified": [], "problems": [], "newest_backup": {},
              "newest_backup_age_seconds": None}
    newest = None
    for spec in p["repositories"]:
        repository = repo_mod.open_repository(spec)
        full = _backup.list_backups(repository)
        logical = _backup.list_backups(repository, "logical")
        segments, histories = _backup.wal_inventory(repository)
        valid = [b for b in full if b.get("status") == "valid"]
        entry = {
            "name": repository.name, "repository": repository.describe(),
            "backups": [summarise(b) for b in valid],
            "logical_backups": [summarise(b) for b in logical if b.get("status") == "valid"],
            "incomplete": [b for b in full + logical if b.get("status") != "valid"],
            "wal_segments": sum(len(v) for v in segments.values()), "history_files": sorted(histories),
            "window": _backup.recoverability(valid, segments),
        }
        report["repositories"].append(entry)
        for b in entry["incomplete"]:
            if b.get("status") == "damaged":
                report["problems"].append("%s: backup %s: %s" % (repository.name, b["id"], b.get("problem")))
        if valid and (newest is None or valid[-1]["stop_time"] > newest["stop_time"]):
            newest = dict(valid[-1], repository=repository.name)
        if p["verify"] != "none":
            targets = valid + [b for b in logical if b.get("status") == "valid"]
            if p["backup_id"]:
                targets = [b for b in targets if b["id"] == p["backup_id"]]
            elif p["verify_scope"] == "newest":
                targets = valid[-1:]
            for record in targets:
                report["verified"].append(verify_one(module, repository, record))
    report["changed"] = bool(report["verified"]) and not module.check_mode  # verification records written
    for v in report["verified"]:
        report["problems"] += ["%s: backup %s: %s" % (v["repository"], v["id"], x) for x in v["problems"]]
    if p["backup_id"] and not report["verified"] and p["verify"] != "none":
        report["problems"].append("backup %s is in none of the repositories" % p["backup_id"])
    if newest:
        report["newest_backup"] = {"id": newest["id"], "repository": newest["repository"],
                                   "stop_time": newest["stop_time"]}
        age = _backup.utcnow() - _backup.parse_iso(newest["stop_time"])
        report["newest_backup_age_seconds"] = round(age.total_seconds(), 1)
    return report


def verify_one(module, repository, record):
    p = module.params
    area = "logical" if record.get("kind") == "logical" else "backup"
    if p["verify"] == "full" and area == "backup":
        scratch = p["scratch_dir"] or os.path.join(tempfile.gettempdir(), "immersiverse-dr-verify")
        problems = _backup.verify_full(repository, record, p["pg_bin_dir"], scratch)
        method = "checksums+pg_verifybackup"
    else:
        problems = _backup.verify_checksums(repository, record, area)
        method = "checksums"
    result = "ok" if not problems else "failed"
    if not module.check_mode:
        _backup.record_verification(repository, record, result, method, problems, area)
    return {"repository": repository.name, "id": record["id"], "kind": record.get("kind"), "result": result,
            "method": method, "problems": problems}


def main():
    spec = repo_mod.repository_argument_spec()
    module = AnsibleModule(
        argument_spec=dict(
            repositories=dict(type="list", elements="dict", required=True, options=spec),
            verify=dict(type="str", default="none", choices=["none", "checksums", "full"]),
            verify_scope=dict(type="str", default="newest", choices=["newest", "all"]),
            backup_id=dict(type="str"),
            scratch_dir=dict(type="path"),
            pg_bin_dir=dict(type="path", default="/usr/lib/postgresql/15/bin"),
            fail_on_problems=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    if result["problems"] and module.params["fail_on_problems"]:
        module.fail_json(msg="backup problems: " + "; ".join(result["problems"][:10]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
