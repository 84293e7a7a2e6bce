#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_logical_restore
short_description: Restore a logical backup with pg_restore -j, whole or by schema and table, in place or beside
version_added: 0.3.0
description:
  - Picks the newest valid logical backup of O(database) in the repository (or O(backup_id)), downloads its
    pg_dump directory checking every file's sha256 against the catalog, and restores it.
  - With O(scratch_schema), each of O(tables) is created in that schema with the backed-up column definitions and
    filled with the backed-up rows, beside the live table, which is not touched; the service keeps serving.
  - Otherwise runs C(pg_restore -j N) into O(target_database) (created when missing), whole or limited to
    O(schemas) and O(tables); O(clean) drops the objects it restores first (C(--clean --if-exists)).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
  - immersiverse.dr.repository
attributes:
  check_mode:
    support: full
    details: Names the backup it would restore and what; changes nothing.
  diff_mode:
    support: none
    details: Nothing to compare.
options:
  database:
    description: The database whose logical backup is restored.
    type: str
    required: true
  backup_id:
    description: This logical backup instead of the newest one.
    type: str
  target_database:
    description: Restore into this database (default O(database)); created when it does not exist.
    type: str
  schemas:
    description: Only these schemas.
    type: list
    elements: str
    default: []
  tables:
    description: Only these tables (C(schema.table); C(public) when no schema is given).
    type: list
    elements: str
    default: []
  scratch_schema:
    description: Put copies of O(tables) in this schema instead of restoring over anything.
    type: str
  clean:
    description: Drop the restored objects before recreating them (a restore over live objects).
    type: bool
    default: false
  jobs:
    description: pg_restore's parallel jobs.
    type: int
    default: 2
  staging_dir:
    description: Where the dump is downloaded (room for it); removed afterwards.
    type: path
  pg_bin_dir:
    description: Where pg_restore and psql live.
    type: path
    default: /usr/lib/postgresql/15/bin
requirements:
  - boto3 for S3 repositories
seealso:
  - module: immersiverse.dr.pg_logical_backup
"""

EXAMPLES = r"""
- name: Yesterday's users beside today's, in schema rescue
  immersiverse.dr.pg_logical_restore:
    login_unix_socket: /var/run/postgresql
    repository: "{{ restore_repository }}"
    database: authdb
    tables: [public.users]
    scratch_schema: rescue
  become: true
  become_user: postgres
"""

RETURN = r"""
backup_id:
  description: The logical backup restored.
  returned: always
  type: str
restored:
  description: What was restored (tables into the scratch schema, or the target database).
  returned: success
  type: list
  elements: str
seconds:
  description: How long it took.
  returned: success
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import logical as backup_logical
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import logical as restore_logical
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def run_module(module):
    p = module.params
    repository = repo_spec.open_repository(p["repository"])
    if module.check_mode:
        record = backup_logical.choose_logical_backup(repository, p["database"], p["backup_id"])
        for name in p["tables"]:
            restore_logical.split_table(name)
        return {"changed": True, "backup_id": record["id"],
                "would_restore": p["tables"] or p["schemas"] or [p["target_database"] or p["database"]]}
    result = restore_logical.restore_logical(
        repository, p, p["database"], pg_bin=p["pg_bin_dir"], backup_id=p["backup_id"],
        target_database=p["target_database"], schemas=p["schemas"], tables=p["tables"],
        scratch_schema=p["scratch_schema"], jobs=p["jobs"], staging_dir=p["staging_dir"], clean=p["clean"])
    result["changed"] = True
    return result


def main():
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        repository=dict(type="dict", required=True, options=repo_spec.repository_argument_spec()),
        database=dict(type="str", required=True),
        backup_id=dict(type="str"),
        target_database=dict(type="str"),
        schemas=dict(type="list", elements="str", default=[]),
        tables=dict(type="list", elements="str", default=[]),
        scratch_schema=dict(type="str"),
        clean=dict(type="bool", default=False),
        jobs=dict(type="int", default=2),
        staging_dir=dict(type="path"),
        pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("scratch_schema", "clean")])
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
