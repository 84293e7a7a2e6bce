# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup operations, one function each, called by the modules (pg_basebackup, pg_backup_info,
pg_backup_retention) and by the scheduled command on the database host (immersiverse-dr-backup) alike: the same
rules whichever way a backup runs.

Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import full as backup_full
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import logical as backup_logical
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import offsite as backup_offsite
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import retention as backup_retention
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import verify as backup_verify
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base

FULL_RESULT_KEYS = ("timeline", "start_lsn", "stop_lsn", "start_time", "stop_time", "duration_seconds",
                    "database_bytes", "stored_bytes", "throughput_mb_s", "files", "verification")
SUMMARY_KEYS = ("id", "label", "kind", "status", "timeline", "start_lsn", "stop_lsn", "start_time", "stop_time",
                "system_identifier", "pg_version", "database_bytes", "stored_bytes", "region", "databases",
                "verification", "last_verification", "duration_seconds")
ON_STANDBY = ("run", "skip", "fail")


def cluster_identity(conn_params):
    """The cluster's identity (system identifier, timeline, in recovery, ...) read over one short connection."""
    conn = pg_connection.connect(conn_params)
    try:
        return backup_catalog.cluster_identity(conn)
    finally:
        conn.close()


def _check_on_standby(on_standby):
    if on_standby not in ON_STANDBY:
        raise ValueError("on_standby must be one of %s, not %r" % (", ".join(ON_STANDBY), on_standby))


def _standby_skip(identity, conn_params, on_standby):
    """On a standby: "run" goes on (None), "skip" gives the reason to skip, "fail" refuses (BackupError)."""
    if not identity["in_recovery"] or on_standby == "run":
        return None
    why = "%s is a standby" % pg_connection.describe_target(conn_params)
    if on_standby == "skip":
        return why + "; backups run on the primary"
    raise backup_catalog.BackupError(why + " and allow_standby is false")


def _summary(record):
    out = {"backup_id": record["id"], "label": record.get("label")}
    for key in FULL_RESULT_KEYS:
        if key in record:
            out[key] = record[key]
    return out


def _copy_offsite(repository, offsite, record, check_mode, area="backup"):
    if check_mode:
        return [{"name": target.name, "repository": target.describe(), "changed": True, "method": "would copy"}
                for target in offsite]
    return [backup_offsite.copy_backup(repository, target, record, area) for target in offsite]


def full_backup(repository, conn_params, pg_bin, offsite=(), label=None, on_standby="run", check_mode=False,
                staging_dir=None, checkpoint="fast", compression="lz4", compression_location="server",
                compression_level=None, compression_workers=None, max_rate=None, extra_args=(), region="",
                progress_file=None):
    """Take a full backup into ``repository`` and copy it to every ``offsite`` repository.

    - A label is a name (no path tricks); a valid backup of this cluster with the same label means nothing to do
      (its offsite copies are still completed); the same label on another cluster's backup is refused.
    - On a standby: ``on_standby`` "run" backs it up, "skip" returns {"skipped": why} (the scheduled command runs on
      every host of a region), "fail" refuses.
    - Abandoned incomplete backups are removed first; check mode says what would run and changes nothing.

    Returns {"changed", "backup_id", "label", ..., "offsite": [copy reports], "incomplete_removed": [ids]}.
    """
    _check_on_standby(on_standby)
    if label:
        repo_base.validate_name(label, "label")
    backup_full.check_extra_args(extra_args)
    identity = cluster_identity(conn_params)
    result = {"changed": False, "offsite": [], "incomplete_removed": []}
    skipped = _standby_skip(identity, conn_params, on_standby)
    if skipped:
        result["skipped"] = skipped
        return result
    if label:
        same = backup_catalog.find_by_label(backup_catalog.list_backups(repository), label)
        foreign = [b for b in same if b.get("system_identifier") != identity["system_identifier"]]
        if foreign:
            raise backup_catalog.BackupError(
                "label %s is already used in %s by backup %s of another cluster (system identifier %s, this one is "
                "%s): choose another label" % (label, repository.describe(), foreign[0]["id"],
                                               foreign[0].get("system_identifier"), identity["system_identifier"]))
        if same:
            record = same[-1]
            result.update(_summary(record))
            result["msg"] = "a valid backup labelled %s exists (%s): nothing to do" % (label, record["id"])
            result["offsite"] = _copy_offsite(repository, offsite, record, check_mode)
            result["changed"] = any(o["changed"] for o in result["offsite"])
            return result
    result["incomplete_removed"] = backup_catalog.clean_incomplete(repository, check_mode=check_mode)
    if check_mode:
        repository.check()
        result.update(changed=True, backup_id=None, label=label)
        result["would_run"] = backup_full.basebackup_argv(
            os.path.join(pg_bin, "pg_basebackup"), "<staging>/data", conn_params, label or "immersiverse-dr-<id>",
            checkpoint=checkpoint, compression=compression, compression_location=compression_location,
            compression_level=compression_level, compression_workers=compression_workers, max_rate=max_rate,
            extra_args=extra_args)
        return result
    record = backup_full.take_backup(
        repository, conn_params, identity, pg_bin=pg_bin, label=label, staging_dir=staging_dir,
        checkpoint=checkpoint, compression=compression, compression_location=compression_location,
        compression_level=compression_level, compression_workers=compression_workers, max_rate=max_rate,
        extra_args=extra_args, region=region, progress_file=progress_file)
    result["changed"] = True
    result.update(_summary(record))
    result["offsite"] = _copy_offsite(repository, offsite, record, check_mode)
    return result


def logical_backup(repository, conn_params, pg_bin, databases, offsite=(), label=None, on_standby="run",
                   check_mode=False, schemas=(), tables=(), exclude_tables=(), jobs=2, include_globals=True,
                   staging_dir=None, region=""):
    """A logical backup (pg_dump, directory format, one per database) into ``repository``, copied to ``offsite``;
    labels and standbys as for :func:`full_backup`."""
    _check_on_standby(on_standby)
    for db in databases:
        repo_base.validate_name(db, "database name")
    if label:
        repo_base.validate_name(label, "label")
    identity = cluster_identity(conn_params)
    result = {"changed": False, "offsite": []}
    skipped = _standby_skip(identity, conn_params, on_standby)
    if skipped:
        result["skipped"] = skipped
        return result
    area = backup_logical.AREA
    if label:
        same = backup_catalog.find_by_label(backup_catalog.list_backups(repository, area), label)
        if same:
            record = same[-1]
            result.update(backup_id=record["id"], label=record["label"], databases=record.get("databases"),
                          msg="a valid logical backup labelled %s exists: nothing to do" % label)
            result["offsite"] = _copy_offsite(repository, offsite, record, check_mode, area)
            result["changed"] = any(o["changed"] for o in result["offsite"])
            return result
    if check_mode:
        repository.check()
        result.update(changed=True, backup_id=None, label=label, would_run=[
            backup_logical.dump_argv(os.path.join(pg_bin, "pg_dump"), conn_params, db, "<staging>/" + db, jobs,
                                     schemas, tables, exclude_tables) for db in databases])
        return result
    record = backup_logical.take_logical_backup(
        repository, conn_params, identity, databases, pg_bin=pg_bin, schemas=schemas, tables=tables,
        exclude_tables=exclude_tables, jobs=jobs, include_globals=include_globals, label=label,
        staging_dir=staging_dir, region=region)
    result.update(changed=True, backup_id=record["id"], label=record["label"], databases=record["databases"],
                  stored_bytes=record["stored_bytes"], files=record["files"],
                  duration_seconds=record["duration_seconds"])
    result["offsite"] = _copy_offsite(repository, offsite, record, check_mode, area)
    return result


def summarise(record):
    return {k: record[k] for k in SUMMARY_KEYS if k in record}


def verify_backup(repository, record, method="checksums", pg_bin=None, scratch_dir=None, record_result=True):
    """Verify one backup: its stored checksums, or (``method`` "full", base backups only) a restore into scratch
    checked by pg_verifybackup. The verdict is written into the catalog unless ``record_result`` is false."""
    area = "logical" if record.get("kind") == "logical" else "backup"
    if method == "full" and area == "backup":
        scratch = scratch_dir or os.path.join(tempfile.gettempdir(), "immersiverse-dr-verify")
        problems = backup_verify.verify_full(repository, record, pg_bin, scratch)
        method = "checksums+pg_verifybackup"
    else:
        problems = backup_verify.verify_checksums(repository, record, area)
        method = "checksums"
    result = "ok" if not problems else "failed"
    if record_result:
        backup_verify.record_verification(repository, record, result, method, problems, area)
    return {"repository": repository.name, "id": record["id"], "kind": record.get("kind"), "result": result,
            "method": method, "problems": problems}


def backup_info(repositories, verify="none", verify_scope="newest", backup_id=None, pg_bin=None, scratch_dir=None,
                record_verdicts=False):
    """The catalog of every repository: valid, logical and incomplete backups, WAL segments, the recoverable window,
    the newest backup and its age, problems; with ``verify`` "checksums" or "full", the backups verified (the newest,
    ``verify_scope`` "all", or ``backup_id``), and with ``record_verdicts`` their verdicts written into the catalog
    (the one change this makes: ``changed``)."""
    if backup_id:
        repo_base.validate_name(backup_id, "backup_id")
    report = {"changed": False, "repositories": [], "verified": [], "problems": [], "newest_backup": {},
              "newest_backup_age_seconds": None}
    newest = None
    for repository in repositories:
        full = backup_catalog.list_backups(repository)
        logical = backup_catalog.list_backups(repository, "logical")
        segments, histories = backup_retention.wal_inventory(repository)
        valid = [b for b in full if b.get("status") == "valid"]
        entry = {
            "name": repository.name, "repository": repository.describe(),
            "backups": [summarise(b) for b in valid],
            "logical_backups": [summarise(b) for b in logical if b.get("status") == "valid"],
            "incomplete": [b for b in full + logical if b.get("status") != "valid"],
            "wal_segments": sum(len(v) for v in segments.values()), "history_files": sorted(histories),
            "window": backup_retention.recoverability(valid, segments),
        }
        report["repositories"].append(entry)
        for b in entry["incomplete"]:
            if b.get("status") == "damaged":
                report["problems"].append("%s: backup %s: %s" % (repository.name, b["id"], b.get("problem")))
        if valid and (newest is None or valid[-1]["stop_time"] > newest["stop_time"]):
            newest = dict(valid[-1], repository=repository.name)
        if verify != "none":
            targets = valid + [b for b in logical if b.get("status") == "valid"]
            if backup_id:
                targets = [b for b in targets if b["id"] == backup_id]
            elif verify_scope == "newest":
                targets = valid[-1:]
            for record in targets:
                report["verified"].append(verify_backup(repository, record, verify, pg_bin=pg_bin,
                                                        scratch_dir=scratch_dir, record_result=record_verdicts))
    report["changed"] = bool(report["verified"]) and record_verdicts  # verification records written
    for v in report["verified"]:
        report["problems"] += ["%s: backup %s: %s" % (v["repository"], v["id"], x) for x in v["problems"]]
    if backup_id and not report["verified"] and verify != "none":
        report["problems"].append("backup %s is in none of the repositories" % backup_id)
    if newest:
        report["newest_backup"] = {"id": newest["id"], "repository": newest["repository"],
                                   "stop_time": newest["stop_time"]}
        age = backup_catalog.utcnow() - backup_catalog.parse_iso(newest["stop_time"])
        report["newest_backup_age_seconds"] = round(age.total_seconds(), 1)
    return report


def retention(repository, keep_full=None, keep_days=None, area="backup", check_mode=False):
    """Apply a retention policy to one repository's backups (``area`` "backup" or "logical") and the WAL no kept
    backup needs; the report says what went, what was skipped (locked) and whether anything changed."""
    report = backup_retention.apply_retention(repository, keep_full=keep_full, keep_days=keep_days,
                                              check_mode=check_mode, area=area)
    removed = set(report["would_delete"]) - set(report["skipped"])
    report["changed"] = bool(removed or report["would_delete_wal"] or report["incomplete_removed"])
    return report
