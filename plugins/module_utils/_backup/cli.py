# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""immersiverse-dr-backup: the scheduled side of the backup role, on the database host.

The role installs this package (the same engine files the modules use, not a second copy) under
/usr/local/lib/immersiverse-dr and a wrapper /usr/local/bin/immersiverse-dr-backup; systemd timers (or cron where
there is no systemd) run it. Configuration comes from a JSON file readable only by its owner (it holds the
repository credentials), never from the command line:

    immersiverse-dr-backup full|logical|retention|info --config /etc/immersiverse-dr/backup.json

Each command is one function of _backup.operations, the same the modules call (full_backup, logical_backup,
retention, backup_info): the same rules whichever way a backup runs. A standby is skipped (the timers run on every
database host) unless ``only_on_primary`` is false. Prints one JSON line with the result; exits 1 with
"error: ..." on stderr when something fails.
"""

from __future__ import annotations

import argparse
import json
import sys

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import operations as backup_operations
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def _int_or_none(value):
    return int(value) if value not in (None, "") else None


def run(command, cfg):
    """One operation of backup_operations with the configuration's settings; a standby is skipped unless
    ``only_on_primary`` is false (the timers run on every database host of a region)."""
    repository = repo_spec.open_repository(cfg["repository"])
    offsite = [repo_spec.open_repository(spec) for spec in cfg.get("offsite", [])]
    conn = cfg.get("connection", {})
    region = cfg.get("region", "")
    pg_bin = cfg.get("pg_bin_dir") or pg_version.DEFAULT_PG_BIN
    on_standby = "skip" if cfg.get("only_on_primary", True) else "run"
    if command == "full":
        full = cfg.get("full", {})
        result = backup_operations.full_backup(
            repository, conn, pg_bin, offsite=offsite, on_standby=on_standby, staging_dir=cfg.get("staging_dir"),
            checkpoint=full.get("checkpoint", "fast"), compression=full.get("compression", "lz4"),
            compression_location=full.get("compression_location", "server"),
            compression_level=full.get("compression_level"), max_rate=full.get("max_rate") or None, region=region,
            progress_file=cfg.get("progress_file"))
    elif command == "logical":
        logical = cfg.get("logical", {})
        result = backup_operations.logical_backup(
            repository, conn, pg_bin, logical.get("databases", []), offsite=offsite, on_standby=on_standby,
            schemas=logical.get("schemas", ()), tables=logical.get("tables", ()), jobs=logical.get("jobs", 2),
            staging_dir=cfg.get("staging_dir"), region=region)
    elif command == "retention":
        keep = {k: _int_or_none(v) for k, v in cfg.get("retention", {}).items()}
        reports = []
        for repo in [repository] + offsite:
            reports.append(backup_operations.retention(repo, keep_full=keep.get("keep_full"),
                                                       keep_days=keep.get("keep_days")))
            if keep.get("logical_keep_days") is not None or keep.get("logical_keep") is not None:
                reports.append(backup_operations.retention(repo, keep_full=keep.get("logical_keep"),
                                                           keep_days=keep.get("logical_keep_days"), area="logical"))
        result = {"changed": any(r["changed"] for r in reports),
                  "deleted": sum(len(r["deleted"]) for r in reports),
                  "skipped": sum(len(r["skipped"]) for r in reports),
                  "wal_deleted": sum(r["wal_deleted"] for r in reports)}
    elif command == "info":  # this region's repository only: the others may be down (that is when it is run)
        result = backup_operations.backup_info([repository])
        home = result["repositories"][0]
        result["backups"] = [b["id"] for b in home["backups"]]
        result["newest"] = home["backups"][-1]["stop_time"] if home["backups"] else None
    else:
        raise ValueError("unknown command %r" % command)
    if command in ("full", "logical"):  # the names, as the command always printed them (the reports are in the log)
        result["offsite"] = [copy["name"] for copy in result["offsite"]]
    result["command"] = command
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="immersiverse-dr-backup", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["full", "logical", "retention", "info"])
    parser.add_argument("--config", required=True, help="JSON configuration written by the backup role")
    args = parser.parse_args(argv)
    try:
        with open(args.config) as fh:
            cfg = json.load(fh)
        result = run(args.command, cfg)
    except _errors.ENGINE_ERRORS + (KeyError,) as exc:
        sys.stderr.write("immersiverse-dr-backup %s: error: %s\n" % (args.command, _errors.message(exc)))
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
