#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_logical_backup
short_description: Dump databases, schemas or tables with pg_dump -Fd -j into a backup repository
version_added: 0.2.0
description:
  - Runs C(pg_dump -Fd -j N) for each database (all of it, or the schemas and tables named), and
    C(pg_dumpall --globals-only) for roles and tablespaces, then stores every file with its sha256 under
    C(logical/<id>/) and commits the catalog record C(backup.json) last, exactly like a full backup.
  - pg_restore reads the stored directory as it is (C(pg_restore -d DB -j N <dir>)).
  - Idempotent by label like M(immersiverse.dr.pg_basebackup).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
  - immersiverse.dr.repository
  - immersiverse.dr.repository.offsite
attributes:
  check_mode:
    support: partial
    details:
      - Returns the commands it would run; takes no dump.
      - When O(label) names an existing valid logical backup, every O(offsite) copy is reported as would copy
        (C(changed)) even where that repository already holds it.
  diff_mode:
    support: none
    details: Nothing to compare; the result lists what was stored.
options:
  databases:
    description: The databases to dump.
    type: list
    elements: str
    required: true
  schemas:
    description: Only these schemas (pg_dump C(-n)).
    type: list
    elements: str
    default: []
  tables:
    description: Only these tables (pg_dump C(-t)).
    type: list
    elements: str
    default: []
  exclude_tables:
    description: Leave these tables out (pg_dump C(-T)).
    type: list
    elements: str
    default: []
  jobs:
    description: pg_dump parallel jobs.
    type: int
    default: 2
  include_globals:
    description: Also store roles and tablespaces (C(globals.sql)).
    type: bool
    default: true
  label:
    description: The backup label.
    type: str
  staging_dir:
    description: Local directory pg_dump writes to before the files are stored.
      Default C($TMPDIR/immersiverse-dr-staging).
    type: path
  pg_bin_dir:
    description: Where pg_dump lives.
    type: path
    default: /usr/lib/postgresql/15/bin
  region:
    description: The region recorded in the catalog.
    type: str
    default: ''
seealso:
  - module: immersiverse.dr.pg_basebackup
  - name: pg_dump
    description: PostgreSQL's logical backup tool.
    link: https://www.postgresql.org/docs/15/app-pgdump.html
"""

EXAMPLES = r"""
- name: Nightly logical backup of the service database
  immersiverse.dr.pg_logical_backup:
    login_unix_socket: /var/run/postgresql
    databases: [authdb]
    jobs: 2
    repository: "{{ dr_backup_repository }}"
  become: true
  become_user: postgres
"""

RETURN = r"""
backup_id:
  description: The logical backup's id (start time, UTC, and C(L)).
  returned: always
  type: str
label:
  description: The label.
  returned: always
  type: str
databases:
  description: The databases dumped.
  returned: success
  type: list
  elements: str
stored_bytes:
  description: Bytes stored.
  returned: success
  type: int
files:
  description: Stored files with size and sha256.
  returned: success
  type: list
  elements: dict
duration_seconds:
  description: Wall time.
  returned: success
  type: float
offsite:
  description: One entry per offsite repository.
  returned: always
  type: list
  elements: dict
would_run:
  description: The pg_dump commands check mode would run.
  returned: in check mode
  type: list
  elements: list
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def run_module(module):
    p = module.params
    pg_dump = module.get_bin_path("pg_dump", required=True, opt_dirs=[p["pg_bin_dir"] or ""])
    return backup_operations.logical_backup(
        repo_spec.open_repository(p["repository"]), p, os.path.dirname(pg_dump), p["databases"],
        offsite=[repo_spec.open_repository(spec) for spec in p["offsite"]], label=p["label"],
        check_mode=module.check_mode, schemas=p["schemas"], tables=p["tables"], exclude_tables=p["exclude_tables"],
        jobs=p["jobs"], include_globals=p["include_globals"], staging_dir=p["staging_dir"], region=p["region"])


def main():
    spec = repo_spec.repository_argument_spec()
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        repository=dict(type="dict", required=True, options=spec),
        offsite=dict(type="list", elements="dict", default=[], options=spec),
        databases=dict(type="list", elements="str", required=True),
        schemas=dict(type="list", elements="str", default=[]),
        tables=dict(type="list", elements="str", default=[]),
        exclude_tables=dict(type="list", elements="str", default=[]),
        jobs=dict(type="int", default=2),
        include_globals=dict(type="bool", default=True),
        label=dict(type="str"),
        staging_dir=dict(type="path"),
        pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
        region=dict(type="str", default=""),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not pg_connection.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=str(pg_connection.PSYCOPG2_IMPORT_ERROR))
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
