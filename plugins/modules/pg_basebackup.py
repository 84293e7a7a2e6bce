#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_basebackup
short_description: Take a verified full backup with pg_basebackup, streamed into a backup repository
version_added: 0.2.0
description:
  - Runs pg_basebackup (tar format, WAL streamed into the backup, a backup manifest) and, while it writes, reads
    its archives, decompresses them, checks every file's checksum and size against the manifest and that the WAL
    the backup needs is present (the checks C(pg_verifybackup) makes), and streams them into the repository with
    their sha256. The backup counts only once its catalog record C(backup.json) is written, last.
  - A backup interrupted at any point is never listed as valid; the next run removes what it left.
  - Idempotent by label. When O(label) is given and the repository already holds a valid backup with that label
    of the same cluster, nothing runs and that backup is returned (C(changed=false)). A label used by another
    cluster is refused. Without O(label), every run takes a new backup.
  - The password reaches pg_basebackup through a temporary pgpass file, never its command line.
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
      - Checks the repository and the server, then returns the command it would run and the incomplete backups it
        would remove; writes nothing.
      - When O(label) names an existing valid backup, every O(offsite) copy is reported as would copy (C(changed))
        even where that repository already holds it.
  diff_mode:
    support: none
    details: Nothing to compare; the result lists what was stored.
options:
  label:
    description:
      - The backup label (letters, digits, C(.), C(_), C(-)). See the description for idempotence.
    type: str
  checkpoint:
    description: Start with a fast (immediate) or a spread checkpoint.
    type: str
    default: fast
    choices: [fast, spread]
  compression:
    description: Compression of the archives.
    type: str
    default: lz4
    choices: [none, gzip, lz4, zstd]
  compression_location:
    description:
      - Compress in the walsender on the database server, or in pg_basebackup.
      - C(server) is the default because the role runs pg_basebackup on the database host itself, so both cost that
        host's CPU; on the server, compression overlaps with the module's verification instead of competing with
        it (measured 0.8 of the client-side time on a 2-core host, bench/README.md). Use C(client) when
        pg_basebackup runs on another machine and the database server's CPU is scarce.
    type: str
    default: server
    choices: [client, server]
  compression_level:
    description: Compression level; the method's default when omitted.
    type: int
  compression_workers:
    description: zstd worker threads.
    type: int
  max_rate:
    description: pg_basebackup's transfer rate limit (C(100M), C(32k)).
    type: str
  staging_dir:
    description:
      - Local directory for pg_basebackup's output while it streams to an S3 repository (a local repository
        stages on its own filesystem). Needs room for the compressed backup. Default C($TMPDIR/immersiverse-dr-staging).
    type: path
  pg_bin_dir:
    description: Where pg_basebackup lives; searched with the PATH when empty.
    type: path
    default: /usr/lib/postgresql/15/bin
  extra_args:
    description:
      - More pg_basebackup arguments (C(--no-verify-checksums), C(-S slot)). Options the module owns (target,
        format, WAL method, label, compression, checkpoint, rate, connection, manifest) are refused.
    type: list
    elements: str
    default: []
  progress_file:
    description: A JSON file rewritten about once a second with the progress, for a poller to show.
    type: path
  region:
    description: The region recorded in the catalog.
    type: str
    default: ''
  allow_standby:
    description: Allow a backup taken from a standby (pg_basebackup supports it; the backup then ends at the
      standby's replay position).
    type: bool
    default: true
notes:
  - PostgreSQL 15's pg_verifybackup cannot read tar-format backups; M(immersiverse.dr.pg_backup_info) with
    O(immersiverse.dr.pg_backup_info#module:verify=full) restores one into a scratch directory and runs it.
seealso:
  - module: immersiverse.dr.pg_backup_info
  - module: immersiverse.dr.pg_backup_retention
  - name: pg_basebackup
    description: PostgreSQL's base backup tool.
    link: https://www.postgresql.org/docs/15/app-pgbasebackup.html
"""

EXAMPLES = r"""
- name: Weekly full backup of this region's primary into its bucket, copied to the other regions
  immersiverse.dr.pg_basebackup:
    login_unix_socket: /var/run/postgresql
    label: "weekly-{{ '%G-W%V' | strftime }}"
    repository:
      name: primary
      bucket: immersiverse-auth-dr-primary
      prefix: auth-db
      region: us-east-1
      sse: "aws:kms"
      sse_kms_key_id: alias/dr-backups
    offsite:
      - name: secondary
        bucket: immersiverse-auth-dr-secondary
        prefix: auth-db
        endpoint_url: https://s3-weu.minio.auth.internal
        access_key: "{{ vault_minio_access_key }}"
        secret_key: "{{ vault_minio_secret_key }}"
  become: true
  become_user: postgres
  register: backup

- name: A backup to a local directory, zstd on the server
  immersiverse.dr.pg_basebackup:
    login_unix_socket: /var/run/postgresql
    compression: zstd
    compression_location: server
    repository:
      type: local
      path: /srv/pg-backups
"""

RETURN = r"""
backup_id:
  description: The backup's id (start time, UTC, and C(F)).
  returned: always
  type: str
  sample: 20261127T105548F
label:
  description: The backup label.
  returned: always
  type: str
timeline:
  description: Timeline the backup was taken on.
  returned: success
  type: int
start_lsn:
  description: WAL position where the backup starts (replay begins here).
  returned: success
  type: str
stop_lsn:
  description: WAL position where the backup is consistent.
  returned: success
  type: str
start_time:
  description: When the backup started (UTC, ISO 8601).
  returned: success
  type: str
stop_time:
  description: When the backup was committed (UTC, ISO 8601).
  returned: success
  type: str
duration_seconds:
  description: Wall time of pg_basebackup, streaming, verification and commit.
  returned: success
  type: float
database_bytes:
  description: Size of the files backed up.
  returned: success
  type: int
stored_bytes:
  description: Bytes stored in the repository.
  returned: success
  type: int
throughput_mb_s:
  description: Database MiB backed up per second.
  returned: when a backup was taken
  type: float
files:
  description: Stored files with size and sha256.
  returned: success
  type: list
  elements: dict
verification:
  description: How the backup was verified before it counted.
  returned: success
  type: dict
offsite:
  description: One entry per offsite repository (name, method, changed, seconds).
  returned: always
  type: list
  elements: dict
incomplete_removed:
  description: Ids of interrupted backups removed (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
would_run:
  description: The pg_basebackup command check mode would run (no password in it).
  returned: in check mode
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def run_module(module):
    p = module.params
    pg_basebackup = module.get_bin_path("pg_basebackup", required=True, opt_dirs=[p["pg_bin_dir"] or ""])
    return backup_operations.full_backup(
        repo_spec.open_repository(p["repository"]), p, os.path.dirname(pg_basebackup),
        offsite=[repo_spec.open_repository(spec) for spec in p["offsite"]], label=p["label"],
        on_standby="run" if p["allow_standby"] else "fail", check_mode=module.check_mode,
        staging_dir=p["staging_dir"], checkpoint=p["checkpoint"], compression=p["compression"],
        compression_location=p["compression_location"], compression_level=p["compression_level"],
        compression_workers=p["compression_workers"], max_rate=p["max_rate"], extra_args=p["extra_args"],
        region=p["region"], progress_file=p["progress_file"])


def main():
    spec = repo_spec.repository_argument_spec()
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        repository=dict(type="dict", required=True, options=spec),
        offsite=dict(type="list", elements="dict", default=[], options=spec),
        label=dict(type="str"),
        checkpoint=dict(type="str", default="fast", choices=["fast", "spread"]),
        compression=dict(type="str", default="lz4", choices=["none", "gzip", "lz4", "zstd"]),
        compression_location=dict(type="str", default="server", choices=["client", "server"]),
        compression_level=dict(type="int"),
        compression_workers=dict(type="int"),
        max_rate=dict(type="str"),
        staging_dir=dict(type="path"),
        pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
        extra_args=dict(type="list", elements="str", default=[]),
        progress_file=dict(type="path"),
        region=dict(type="str", default=""),
        allow_standby=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not pg_connection.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=str(pg_connection.PSYCOPG2_IMPORT_ERROR))
    progress = module.params["progress_file"]
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        backup_full.write_progress(progress, "failed", error=_errors.message(exc))
        module.fail_json(msg=_errors.message(exc))
    except BaseException:
        backup_full.write_progress(progress, "failed", error="unexpected error, see the task result")
        raise
    backup_full.write_progress(progress, "done", backup_id=result.get("backup_id"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
