# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring from a logical backup: a whole database, or one table into a scratch name beside the live one.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import logical as backup_logical
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def fetch_logical(repository, record, database, dest):
    """Download one database's pg_dump directory, checking every file's sha256 against the catalog."""
    import hashlib

    os.makedirs(dest, mode=0o700, exist_ok=True)
    wanted = [f for f in record["files"] if f["name"].startswith(database + "/")]
    if not wanted:
        raise backup_catalog.BackupError("logical backup %s has no files for %s" % (record["id"], database))
    for entry in wanted:
        name = entry["name"].split("/", 1)[1]
        if "/" in name or name.startswith("."):
            raise backup_catalog.BackupError("unexpected file %r in logical backup %s" % (entry["name"], record["id"]))
        digest = hashlib.sha256()
        stream = repository.open("%s/%s/%s" % (backup_logical.AREA, record["id"], entry["name"]))
        with open(os.path.join(dest, name), "wb") as fh:
            for _chunk in range(1 << 40):
                data = stream.read(1024 * 1024)
                if not data:
                    break
                digest.update(data)
                fh.write(data)
        if digest.hexdigest() != entry["sha256"]:
            raise backup_catalog.BackupError(
                "%s of logical backup %s does not match its stored sha256: the copy in %s is "
                "damaged; use another region's copy or another backup"
                % (entry["name"], record["id"], repository.describe()))
    return dest


def split_table(name):
    schema, _dot, table = name.rpartition(".")
    schema = schema or "public"
    for part in (schema, table):
        if not part or not all(c.isalnum() or c == "_" for c in part):
            raise backup_catalog.BackupError("table %r: use schema.table with letters, digits and _ only" % name)
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


def restore_logical(repository, conn_params, database, pg_bin=pg_version.DEFAULT_PG_BIN, backup_id=None,
                    target_database=None, schemas=(), tables=(), scratch_schema=None, jobs=2, staging_dir=None,
                    clean=False):
    """pg_restore a logical backup. With ``scratch_schema``: each of ``tables`` is created in that schema (its
    column definitions from the dump) and filled with the backed-up rows, beside the live table, which is not
    touched. Otherwise pg_restore -j into ``target_database`` (created when missing), whole or by schema/table;
    ``clean`` drops the restored objects first (pg_restore --clean --if-exists)."""
    record = backup_logical.choose_logical_backup(repository, database, backup_id)
    target_database = target_database or database
    repo_base.validate_name(target_database, "database name")
    root = staging_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-staging")
    work = os.path.join(root, "restore-" + record["id"])
    t0 = time.monotonic()
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    env, pgpass = pg_connection.pgpass_env(conn_params, work)
    try:
        dump = fetch_logical(repository, record, database, os.path.join(work, "dump"))
        pg_restore = os.path.join(pg_bin, "pg_restore")
        psql = [os.path.join(pg_bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]
        psql += pg_connection.conn_argv(conn_params) + ["-d", target_database]
        restored = []
        if scratch_schema:
            repo_base.validate_name(scratch_schema, "scratch schema")
            if not tables:
                raise backup_catalog.BackupError("a scratch-schema restore needs the tables to restore (schema.table)")
            backup_logical.run_client(psql + ["-c", "CREATE SCHEMA IF NOT EXISTS %s" % _quote_ident(scratch_schema)],
                                      env,
                                      "CREATE SCHEMA %s" % scratch_schema)
            for name in tables:
                schema, table = split_table(name)
                ddl = backup_logical.run_client([pg_restore, "--schema-only", "-n", schema, "-t", table, "-f", "-",
                                                 dump], env,
                                                "pg_restore --schema-only of %s" % name).stdout
                create = _create_table_statement(ddl, schema, table, scratch_schema)
                backup_logical.run_client(psql + ["-c", create], env, "CREATE TABLE %s.%s" % (scratch_schema, table))
                _copy_rows(pg_restore, psql, dump, env, schema, table, scratch_schema)
                restored.append("%s.%s -> %s.%s" % (schema, table, scratch_schema, table))
        else:
            lookup = "SELECT count(*) FROM pg_database WHERE datname = '%s'" % target_database
            exists = backup_logical.run_client(psql[:-2] + ["-d", "postgres", "-Atc", lookup], env,
                                               "look up database %s" % target_database).stdout.strip()
            if exists == "0":
                backup_logical.run_client(psql[:-2] + ["-d", "postgres", "-c",
                                                       "CREATE DATABASE %s" % _quote_ident(target_database)],
                                          env, "CREATE DATABASE %s" % target_database)
            argv = [pg_restore, "-j", str(max(1, int(jobs))), "--no-password", "--exit-on-error"]
            argv += pg_connection.conn_argv(conn_params) + ["-d", target_database]
            if clean:
                argv += ["--clean", "--if-exists"]
            for schema in schemas or ():
                argv += ["-n", schema]
            for name in tables or ():
                schema, table = split_table(name)
                argv += ["-n", schema, "-t", table]
            backup_logical.run_client(argv + [dump], env, "pg_restore into %s" % target_database)
            restored.append(target_database)
        return {"backup_id": record["id"], "database": database, "target_database": target_database,
                "restored": restored, "seconds": round(time.monotonic() - t0, 3)}
    finally:
        backup_full.cleanup_work(pgpass, work)


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
    raise backup_catalog.BackupError("the logical backup has no table %s.%s" % (schema, table))


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
        raise backup_catalog.BackupError("copying the rows of %s.%s into %s failed: %s" % (schema, table, scratch,
                                                                                           (perr + cerr).strip()[
                                                                                               -1500:]))
