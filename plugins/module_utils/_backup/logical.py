# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical backups: pg_dump -Fd -j N per database (or selected schemas and tables) into the repository, with the
same catalog and checksums as base backups, under ``logical/<id>/``: ``<db>/`` holds pg_dump's directory,
``globals.sql`` the roles and tablespaces (pg_dumpall --globals-only), ``backup.json`` (written last) the record.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import local as repo_local
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version

AREA = "logical"


def dump_argv(pg_dump, conn, dbname, target, jobs=2, schemas=(), tables=(), exclude_tables=(), compress=None):
    argv = [pg_dump, "-Fd", "-j", str(max(1, int(jobs))), "-f", target, "--no-password"]
    if compress is not None:
        argv += ["-Z", str(compress)]
    for schema in schemas or ():
        argv += ["-n", schema]
    for table in tables or ():
        argv += ["-t", table]
    for table in exclude_tables or ():
        argv += ["-T", table]
    argv += pg_connection.conn_argv(conn)
    argv += ["-d", dbname]
    return argv


def run_client(argv, env, what, timeout=24 * 3600):
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise backup_catalog.BackupError("%s failed (exit %d): %s" % (what, result.returncode,
                                                                      (result.stderr or result.stdout).strip()[-1500:]))
    return result


def take_logical_backup(repository, conn_params, identity, databases, pg_bin=pg_version.DEFAULT_PG_BIN,
                        schemas=(), tables=(), exclude_tables=(), jobs=2, include_globals=True, label=None,
                        staging_dir=None, region="", now=None):
    """Dump each database with pg_dump -Fd -j into staging, upload every file with its sha256, then commit."""
    if not databases:
        raise backup_catalog.BackupError("name at least one database to dump")
    for db in databases:
        repo_base.validate_name(db, "database name")
    backup_id = backup_catalog.new_backup_id("L", now)
    label = label or "immersiverse-dr-" + backup_id
    repo_base.validate_name(label, "label")
    prefix = "%s/%s/" % (AREA, backup_id)
    root = staging_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-staging")
    work = os.path.join(root, backup_id)
    started = backup_catalog.utcnow()
    t0 = time.monotonic()
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work, mode=0o700)
    except OSError as exc:
        raise backup_catalog.BackupError(repo_local.disk_error_message(exc, root)) from None
    marker = {"id": backup_id, "label": label, "host": socket.gethostname(), "pid": os.getpid(),
              "started": backup_catalog.iso(started), "region": region}
    repository.put_bytes(prefix + backup_catalog.IN_PROGRESS, json.dumps(marker).encode(), overwrite=True)
    env, pgpass = pg_connection.pgpass_env(conn_params, work)
    try:
        local_files = []
        if include_globals:
            path = os.path.join(work, "globals.sql")
            argv = [os.path.join(pg_bin, "pg_dumpall"), "--globals-only", "--no-password", "-f", path]
            argv += pg_connection.conn_argv(conn_params)
            run_client(argv, env, "pg_dumpall --globals-only")
            local_files.append(("globals.sql", path))
        dumped = []
        for db in databases:
            target = os.path.join(work, db)
            run_client(dump_argv(os.path.join(pg_bin, "pg_dump"), conn_params, db, target, jobs, schemas, tables,
                                 exclude_tables), env, "pg_dump of %s" % db)
            for name in sorted(os.listdir(target)):
                local_files.append(("%s/%s" % (db, name), os.path.join(target, name)))
            dumped.append(db)
        files = _upload_all(repository, prefix, local_files, getattr(repository, "concurrency", 4))
        stopped = backup_catalog.utcnow()
        duration = time.monotonic() - t0
        record = {
            "format": backup_catalog.CATALOG_FORMAT, "kind": "logical", "id": backup_id, "label": label,
            "region": region, "host": socket.gethostname(),
            "system_identifier": identity["system_identifier"], "pg_version": identity["pg_version"],
            "timeline": identity.get("timeline"), "databases": dumped, "schemas": list(schemas or ()),
            "tables": list(tables or ()), "exclude_tables": list(exclude_tables or ()),
            "globals": bool(include_globals), "start_time": backup_catalog.iso(started),
            "stop_time": backup_catalog.iso(stopped),
            "stored_bytes": sum(f["size"] for f in files),
            "files": sorted(files, key=lambda f: f["name"]),
            "duration_seconds": round(duration, 3),
        }
        repository.put_bytes(prefix + backup_catalog.RECORD, json.dumps(record, indent=1, sort_keys=True).encode())
        repository.delete([prefix + backup_catalog.IN_PROGRESS])
        record["status"] = "valid"
        return record
    except BaseException:
        try:
            backup_catalog.remove_backup(repository, backup_id, AREA)
        except repo_base.RepositoryError:
            pass
        raise
    finally:
        backup_full.cleanup_work(pgpass, work)


def _upload_all(repository, prefix, local_files, concurrency):
    def one(item):
        name, path = item
        info = repository.put_file(prefix + name, path, overwrite=True)
        return {"name": name, "size": info["size"], "sha256": info["sha256"]}

    with ThreadPoolExecutor(max_workers=max(1, min(int(concurrency), 8))) as pool:
        return list(pool.map(one, local_files))


# -- restoring -------------------------------------------------------------------------------------------------------
def choose_logical_backup(repository, database, backup_id=None):
    """The newest valid logical backup holding ``database`` (or the one asked for)."""
    valid = [b for b in backup_catalog.list_backups(repository, AREA) if b.get("status") == "valid"]
    if backup_id:
        valid = [b for b in valid if b["id"] == backup_id]
        if not valid:
            raise backup_catalog.BackupError("logical backup %s is not a valid backup in %s"
                                             % (backup_id, repository.describe()))
    holding = [b for b in valid if database in b.get("databases", [])]
    if not holding:
        raise backup_catalog.BackupError("no valid logical backup of database %s in %s: take one (playbooks/backup.yml "
                                         "with backup_actions [logical])" % (database, repository.describe()))
    return holding[-1]
