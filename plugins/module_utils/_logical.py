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

from ansible_collections.immersiverse.dr.plugins.module_utils import _backup
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod

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
    argv += _backup.conn_argv(conn)
    argv += ["-d", dbname]
    return argv


def _run(argv, env, what, timeout=24 * 3600):
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise _backup.BackupError("%s failed (exit %d): %s" % (what, result.returncode,
                                                               (result.stderr or result.stdout).strip()[-1500:]))
    return result


def take_logical_backup(repository, conn_params, identity, databases, pg_bin="/usr/lib/postgresql/15/bin",
                        schemas=(), tables=(), exclude_tables=(), jobs=2, include_globals=True, label=None,
                        staging_dir=None, region="", now=None):
    """Dump each database with pg_dump -Fd -j into staging, upload every file with its sha256, then commit."""
    if not databases:
        raise _backup.BackupError("name at least one database to dump")
    for db in databases:
        repo_mod.validate_name(db, "database name")
    backup_id = _backup.new_backup_id("L", now)
    label = label or "immersiverse-dr-" + backup_id
    repo_mod.validate_name(label, "label")
    prefix = "%s/%s/" % (AREA, backup_id)
    root = staging_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-staging")
    work = os.path.join(root, backup_id)
    started = _backup.utcnow()
    t0 = time.monotonic()
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work, mode=0o700)
    except OSError as exc:
        raise _backup.BackupError(repo_mod.disk_error_message(exc, root)) from None
    marker = {"id": backup_id, "label": label, "host": socket.gethostname(), "pid": os.getpid(),
              "started": _backup.iso(started), "region": region}
    repository.put_bytes(prefix + _backup.IN_PROGRESS, json.dumps(marker).encode(), overwrite=True)
    env, pgpass = _backup.pgpass_env(conn_params, work)
    try:
        local_files = []
        if include_globals:
            path = os.path.join(work, "globals.sql")
            argv = [os.path.join(pg_bin, "pg_dumpall"), "--globals-only", "--no-password", "-f", path]
            argv += _backup.conn_argv(conn_params)
            _run(argv, env, "pg_dumpall --globals-only")
            local_files.append(("globals.sql", path))
        dumped = []
        for db in databases:
            target = os.path.join(work, db)
            _run(dump_argv(os.path.join(pg_bin, "pg_dump"), conn_params, db, target, jobs, schemas, tables,
                           exclude_tables), env, "pg_dump of %s" % db)
            for name in sorted(os.listdir(target)):
                local_files.append(("%s/%s" % (db, name), os.path.join(target, name)))
            dumped.append(db)
        files = _upload_all(repository, prefix, local_files, getattr(repository, "concurrency", 4))
        stopped = _backup.utcnow()
        duration = time.monotonic() - t0
        record = {
            "format": _backup.CATALOG_FORMAT, "kind": "logical", "id": backup_id, "label": label,
            "region": region, "host": socket.gethostname(),
            "system_identifier": identity["system_identifier"], "pg_version": identity["pg_version"],
            "timeline": identity.get("timeline"), "databases": dumped, "schemas": list(schemas or ()),
            "tables": list(tables or ()), "exclude_tables": list(exclude_tables or ()),
            "globals": bool(include_globals), "start_time": _backup.iso(started), "stop_time": _backup.iso(stopped),
            "stored_bytes": sum(f["size"] for f in files),
            "files": sorted(files, key=lambda f: f["name"]),
            "duration_seconds": round(duration, 3),
        }
        repository.put_bytes(prefix + _backup.RECORD, json.dumps(record, indent=1, sort_keys=True).encode())
        repository.delete([prefix + _backup.IN_PROGRESS])
        record["status"] = "valid"
        return record
    except BaseException:
        try:
            _backup.remove_backup(repository, backup_id, AREA)
        except repo_mod.RepositoryError:
            pass
        raise
    finally:
        _backup.cleanup_work(pgpass, work)


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
    valid = [b for b in _backup.list_backups(repository, AREA) if b.get("status") == "valid"]
    if backup_id:
        valid = [b for b in valid if b["id"] == backup_id]
        if not valid:
            raise _backup.BackupError("logical backup %s is not a valid backup in %s"
                                      % (backup_id, repository.describe()))
    holding = [b for b in valid if database in b.get("databases", [])]
    if not holding:
        raise _backup.BackupError("no valid logical backup of database %s in %s: take one (playbooks/backup.yml "
                                  "with backup_actions [logical])" % (database, repository.describe()))
    return holding[-1]


def fetch_logical(repository, record, database, dest):
    """Download one database's pg_dump directory, checking every file's sha256 against the catalog."""
    import hashlib

    os.makedirs(dest, mode=0o700, exist_ok=True)
    wanted = [f for f in record["files"] if f["name"].startswith(database + "/")]
    if not wanted:
        raise _backup.BackupError("logical backup %s has no files for %s" % (record["id"], database))
    for entry in wanted:
        name = entry["name"].split("/", 1)[1]
        if "/" in name or name.startswith("."):
            raise _backup.BackupError("unexpected file %r in logical backup %s" % (entry["name"], record["id"]))
        digest = hashlib.sha256()
        stream = repository.open("%s/%s/%s" % (AREA, record["id"], entry["name"]))
        with open(os.path.join(dest, name), "wb") as fh:
            for _chunk in range(1 << 40):
                data = stream.read(1024 * 1024)
                if not data:
                    break
                digest.update(data)
                fh.write(data)
        if digest.hexdigest() != entry["sha256"]:
            raise _backup.BackupError("%s of logical backup %s does not match its stored sha256: the copy in %s is "
                                      "damaged; use another region's copy or another backup"
                                      % (entry["name"], record["id"], repository.describe()))
    return dest


def split_table(name):
    schema, _dot, table = name.rpartition(".")
    schema = schema or "public"
    for part in (schema, table):
        if not part or not all(c.isalnum() or c == "_" for c in part):
            raise _backup.BackupError("table %r: use schema.table with letters, digits and _ only" % name)
    return schema, table


def _quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def rewrite_copy_target(line, schema, table, scratch):
    """A pg_restore COPY header for schema.table pointed at scratch.table; other lines unchanged."""
    prefixes = ["COPY %s.%s " % (s, t) for s in (schema, _quote_ident(schema)) for t in (table, _quote_ident(table))]
    for prefix in prefixes:
        if line.startswith(prefix):
            return "COPY %s.%s %s" % (_quote_ident(scratch), _quote_ident(table), line[len(prefix):])
    return line


def restore_logical(repository, conn_params, database, pg_bin="/usr/lib/postgresql/15/bin", backup_id=None,
                    target_database=None, schemas=(), tables=(), scratch_schema=None, jobs=2, staging_dir=None,
                    clean=False):
    """pg_restore a logical backup. With ``scratch_schema``: each of ``tables`` is created in that schema (its
    column definitions from the dump) and filled with the backed-up rows, beside the live table, which is not
    touched. Otherwise pg_restore -j into ``target_database`` (created when missing), whole or by schema/table;
    ``clean`` drops the restored objects first (pg_restore --clean --if-exists)."""
    record = choose_logical_backup(repository, database, backup_id)
    target_database = target_database or database
    repo_mod.validate_name(target_database, "database name")
    root = staging_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-staging")
    work = os.path.join(root, "restore-" + record["id"])
    t0 = time.monotonic()
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    env, pgpass = _backup.pgpass_env(conn_params, work)
    try:
        dump = fetch_logical(repository, record, database, os.path.join(work, "dump"))
        pg_restore = os.path.join(pg_bin, "pg_restore")
        psql = [os.path.join(pg_bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]
        psql += _backup.conn_argv(conn_params) + ["-d", target_database]
        restored = []
        if scratch_schema:
            repo_mod.validate_name(scratch_schema, "scratch schema")
            if not tables:
                raise _backup.BackupError("a scratch-schema restore needs the tables to restore (schema.table)")
            _run(psql + ["-c", "CREATE SCHEMA IF NOT EXISTS %s" % _quote_ident(scratch_schema)], env,
                 "CREATE SCHEMA %s" % scratch_schema)
            for name in tables:
                schema, table = split_table(name)
                ddl = _run([pg_restore, "--schema-only", "-n", schema, "-t", table, "-f", "-", dump], env,
                           "pg_restore --schema-only of %s" % name).stdout
                create = _create_table_statement(ddl, schema, table, scratch_schema)
                _run(psql + ["-c", create], env, "CREATE TABLE %s.%s" % (scratch_schema, table))
                _copy_rows(pg_restore, psql, dump, env, schema, table, scratch_schema)
                restored.append("%s.%s -> %s.%s" % (schema, table, scratch_schema, table))
        else:
            lookup = "SELECT count(*) FROM pg_database WHERE datname = '%s'" % target_database
            exists = _run(psql[:-2] + ["-d", "postgres", "-Atc", lookup], env,
                          "look up database %s" % target_database).stdout.strip()
            if exists == "0":
                _run(psql[:-2] + ["-d", "postgres", "-c", "CREATE DATABASE %s" % _quote_ident(target_database)],
                     env, "CREATE DATABASE %s" % target_database)
            argv = [pg_restore, "-j", str(max(1, int(jobs))), "--no-password", "--exit-on-error"]
            argv += _backup.conn_argv(conn_params) + ["-d", target_database]
            if clean:
                argv += ["--clean", "--if-exists"]
            for schema in schemas or ():
                argv += ["-n", schema]
            for name in tables or ():
                schema, table = split_table(name)
                argv += ["-n", schema, "-t", table]
            _run(argv + [dump], env, "pg_restore into %s" % target_database)
            restored.append(target_database)
        return {"backup_id": record["id"], "database": database, "target_database": target_database,
                "restored": restored, "seconds": round(time.monotonic() - t0, 3)}
    finally:
        _backup.cleanup_work(pgpass, work)


def _create_table_statement(ddl, schema, table, scratch):
    """The CREATE TABLE statement for schema.table in pg_restore's script, pointed at scratch.table."""
    lines = ddl.splitlines()
    heads = {"CREATE TABLE %s.%s (" % (s, t) for s in (schema, _quote_ident(schema))
             for t in (table, _quote_ident(table))}
    for i, line in enumerate(lines):
        if line in heads:
            body = []
            for follow in lines[i + 1:]:
                body.append(follow)
                if follow.startswith(");") or follow == ")":
                    break
            return "CREATE TABLE %s.%s (\n%s" % (_quote_ident(scratch), _quote_ident(table), "\n".join(body))
    raise _backup.BackupError("the logical backup has no table %s.%s" % (schema, table))


def _copy_rows(pg_restore, psql, dump, env, schema, table, scratch):
    """pg_restore --data-only for one table, its COPY header pointed at the scratch table, streamed into psql."""
    producer = subprocess.Popen([pg_restore, "--data-only", "-n", schema, "-t", table, "-f", "-", dump], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    consumer = subprocess.Popen(psql, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    in_copy = False
    try:
        for raw in producer.stdout:
            line = raw.decode("utf-8")
            if not in_copy and line.startswith("COPY "):
                line = rewrite_copy_target(line, schema, table, scratch)
                in_copy = True
            elif in_copy and line == "\\.\n":
                in_copy = False
            consumer.stdin.write(line.encode("utf-8"))
    finally:
        consumer.stdin.close()
        producer.stdout.close()
        perr = producer.stderr.read().decode("utf-8", "replace")
        cerr = consumer.stderr.read().decode("utf-8", "replace")
        prc = producer.wait(timeout=3600)
        crc = consumer.wait(timeout=3600)
    if prc != 0 or crc != 0:
        raise _backup.BackupError("copying the rows of %s.%s into %s failed: %s" % (schema, table, scratch,
                                                                                    (perr + cerr).strip()[-1500:]))
