# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""immersiverse-dr-backup: the scheduled side of the backup role, on the database host.

The role installs this package (the same engine files the modules use, not a second copy) under
/usr/local/lib/immersiverse-dr and a wrapper /usr/local/bin/immersiverse-dr-backup; systemd timers (or cron where
there is no systemd) run it. Configuration comes from a JSON file readable only by its owner (it holds the
repository credentials), never from the command line:

    immersiverse-dr-backup full|logical|retention|info --config /etc/immersiverse-dr/backup.json

Prints one JSON line with the result; exits 1 with "error: ..." on stderr when something fails.
"""

from __future__ import annotations

import argparse
import json
import sys

from ansible_collections.immersiverse.dr.plugins.module_utils import _backup, _logical, _pg
from ansible_collections.immersiverse.dr.plugins.module_utils import _repository as repo_mod


def _identity(conn_params):
    conn = _pg.connect(conn_params)
    try:
        return _backup.cluster_identity(conn)
    finally:
        conn.close()


def run(command, cfg):
    repository = repo_mod.open_repository(cfg["repository"])
    offsite = [repo_mod.open_repository(spec) for spec in cfg.get("offsite", [])]
    conn = cfg.get("connection", {})
    region = cfg.get("region", "")
    pg_bin = cfg.get("pg_bin_dir", "/usr/lib/postgresql/15/bin")
    if command in ("full", "logical"):
        identity = _identity(conn)
        if identity["in_recovery"] and cfg.get("only_on_primary", True):
            return {"command": command, "skipped": "this server is a standby; backups run on the primary"}
    if command == "full":
        full = cfg.get("full", {})
        _backup.clean_incomplete(repository)
        record = _backup.take_backup(
            repository, conn, identity, pg_bin=pg_bin, staging_dir=cfg.get("staging_dir"),
            checkpoint=full.get("checkpoint", "fast"), compression=full.get("compression", "lz4"),
            compression_location=full.get("compression_location", "server"),
            compression_level=full.get("compression_level"), max_rate=full.get("max_rate") or None, region=region,
            progress_file=cfg.get("progress_file"))
        copies = [_backup.copy_backup(repository, target, record) for target in offsite]
        return {"command": "full", "backup_id": record["id"], "stop_lsn": record["stop_lsn"],
                "duration_seconds": record["duration_seconds"], "stored_bytes": record["stored_bytes"],
                "offsite": [c["name"] for c in copies]}
    if command == "logical":
        logical = cfg.get("logical", {})
        record = _logical.take_logical_backup(
            repository, conn, identity, logical.get("databases", []), pg_bin=pg_bin,
            schemas=logical.get("schemas", ()), tables=logical.get("tables", ()), jobs=logical.get("jobs", 2),
            staging_dir=cfg.get("staging_dir"), region=region)
        copies = [_backup.copy_backup(repository, target, record, _logical.AREA) for target in offsite]
        return {"command": "logical", "backup_id": record["id"], "databases": record["databases"],
                "stored_bytes": record["stored_bytes"], "offsite": [c["name"] for c in copies]}
    if command == "retention":
        keep = {k: (int(v) if v not in (None, "") else None) for k, v in cfg.get("retention", {}).items()}
        reports = []
        for repo in [repository] + offsite:
            reports.append(_backup.apply_retention(repo, keep_full=keep.get("keep_full"),
                                                   keep_days=keep.get("keep_days")))
            if keep.get("logical_keep_days") is not None or keep.get("logical_keep") is not None:
                reports.append(_backup.apply_retention(repo, keep_full=keep.get("logical_keep"),
                                                       keep_days=keep.get("logical_keep_days"), area="logical"))
        return {"command": "retention", "deleted": sum(len(r["deleted"]) for r in reports),
                "skipped": sum(len(r["skipped"]) for r in reports),
                "wal_deleted": sum(r["wal_deleted"] for r in reports)}
    if command == "info":
        backups = [b for b in _backup.list_backups(repository) if b.get("status") == "valid"]
        return {"command": "info", "backups": [b["id"] for b in backups],
                "newest": backups[-1]["stop_time"] if backups else None}
    raise ValueError("unknown command %r" % command)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="immersiverse-dr-backup", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["full", "logical", "retention", "info"])
    parser.add_argument("--config", required=True, help="JSON configuration written by the backup role")
    args = parser.parse_args(argv)
    try:
        with open(args.config) as fh:
            cfg = json.load(fh)
        result = run(args.command, cfg)
    except (OSError, ValueError, KeyError, _pg.PgError, _backup.BackupError, repo_mod.RepositoryError) as exc:
        sys.stderr.write("immersiverse-dr-backup %s: error: %s\n" % (args.command, exc))
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
