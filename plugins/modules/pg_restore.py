#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_restore
short_description: Plan and carry out a PostgreSQL restore from the backups and WAL in the repositories
version_added: 0.3.0
description:
  - O(state=planned) chooses the backup that serves the target (the newest valid one that ends before it, of the
    same cluster), follows the timeline history from it to the target and checks that every WAL segment in between
    is in a repository (archived under C(wal/) or streamed under C(stream/)). It returns that plan, or fails with the
    reason when the target is before the oldest backup, after the end of the archive or behind a missing segment.
    It changes nothing.
  - The plan also refuses, before anything stops, what would fail later - a backup with tablespace archives, an
    object the restore needs in an archive storage class (GLACIER, DEEP_ARCHIVE) without a completed restore, a
    data directory that is a mount point, too little free space beside the data directory for the new copy, and a
    data directory of another cluster than the repositories' (unless O(system_identifier) names the cluster to
    restore). A time target is bounded by the last transaction in the WAL itself (read with pg_waldump), not by
    when the last segment was uploaded.
  - O(state=restored) makes the plan, restores the backup into C(<data_dir>.restoring) beside the current data
    directory, checking every stored object's sha256 and every file's checksum from the backup manifest, and only
    then moves the current data directory aside (renamed to C(<data_dir>.replaced-<UTC time>), never deleted) and
    renames the new one into place. A failure while the files are restored leaves the data directory untouched.
    A state file beside the data directory records each step, so a re-run of the same request continues it and
    a re-run after the restore changes nothing.
  - O(state=recovered) waits while the server (started by the caller with the recovery settings of
    M(immersiverse.dr.pg_recovery)) replays WAL, until it pauses at its target or finishes recovery. When
    PostgreSQL stops instead (for example "recovery ended before configured recovery target was reached") it
    fails with PostgreSQL's reason; PostgreSQL never opens at an earlier point than asked.
  - O(state=pruned) deletes data directories earlier restores moved aside, once they are older than
    O(keep_replaced_days); the caller runs it after the restored cluster passed verification.
  - Runs on the database host as the data directory's owner (become_user postgres).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.repository.repositories
  - immersiverse.dr.postgres
attributes:
  check_mode:
    support: full
    details: O(state=planned) and O(state=restored) return the plan and what would be moved; nothing is
      written. O(state=recovered) does not wait and returns RV(recovery) null. O(state=pruned) lists what it
      would delete.
  diff_mode:
    support: none
    details: A data directory is not a diff.
  platform:
    details: Runs on the database host as the data directory's owner.
options:
  state:
    description: Which step.
    type: str
    default: planned
    choices: [planned, restored, recovered, pruned]
  data_dir:
    description: The data directory to restore into (its parent must be writable by the user the module runs as).
    type: path
  target:
    description: What to recover to.
    type: str
    default: end
    choices: [end, immediate, time, lsn, xid, name]
  target_value:
    description:
      - The target for O(target=time) (a timestamp with a time zone), O(target=lsn), O(target=xid) or
        O(target=name) (a restore point made with pg_create_restore_point).
    type: str
  target_inclusive:
    description: Stop just after the target (true) or just before it (false).
    type: bool
    default: true
  target_timeline:
    description: The timeline to follow, C(latest), C(current) or a number.
    type: str
    default: latest
  use_partial:
    description:
      - The restore_command serves the streaming receiver's partial segment at the end of the archive
        (C(immersiverse-dr-wal fetch --partial)), so the plan counts it as reachable WAL.
    type: bool
    default: true
  keep_replaced_days:
    description:
      - O(state=pruned) deletes C(<data_dir>.replaced-<time>) directories older than this many days (by the time in
        their name), never the one the last restore moved aside.
    type: int
    default: 7
  backup_id:
    description: Restore this backup instead of the one the plan would choose (it must still end before the target).
    type: str
  system_identifier:
    description:
      - Only backups of this cluster. Default, the system identifier of the cluster in O(data_dir) when there is
        one (a restore never silently swaps in another cluster), otherwise the only one in the repositories.
      - Set it to replace a data directory of another cluster (a fresh host whose package created its own).
    type: str
  pg_bin_dir:
    description: Where pg_controldata and pg_waldump live.
    type: path
    default: /usr/lib/postgresql/15/bin
  progress_file:
    description:
      - A JSON file rewritten about once a second for a poller - O(state=restored) the bytes restored so far,
        O(state=recovered) the replayed LSN and the time of the last replayed transaction, then C(reached) or
        C(failed).
    type: path
  log_file:
    description: The server's log, read by O(state=recovered) to report where recovery stopped and why it failed.
    type: path
  log_offset:
    description: Where in O(log_file) this start's messages begin (its size before the server was started).
    type: int
    default: 0
  timeout:
    description: How long O(state=recovered) waits, in seconds.
    type: int
    default: 3600
requirements:
  - boto3 for S3 repositories, psycopg2 for O(state=recovered), on the host the module runs on
seealso:
  - module: immersiverse.dr.pg_recovery
  - module: immersiverse.dr.pg_backup_info
"""

EXAMPLES = r"""
- name: What would a restore to 14:03:07 UTC use?
  immersiverse.dr.pg_restore:
    state: planned
    repositories: "{{ [restore_repository] + restore_offsite_repositories }}"
    data_dir: /var/lib/postgresql/15/main
    target: time
    target_value: "2026-11-27 14:03:07+00"
  become: true
  become_user: postgres
  register: plan

- name: Move the damaged data directory aside and restore the planned backup
  immersiverse.dr.pg_restore:
    state: restored
    repositories: "{{ [restore_repository] }}"
    data_dir: /var/lib/postgresql/15/main
    target: time
    target_value: "2026-11-27 14:03:07+00"
  become: true
  become_user: postgres
"""

RETURN = r"""
plan:
  description: The backup, timeline path and WAL range the restore uses.
  returned: always
  type: dict
  sample:
    backup: {id: 20261127T140000F, stop_lsn: 0/5000100, stop_time: "2026-11-27T14:00:02.1Z", timeline: 1}
    timeline: 2
    wal: {first: 000000010000000000000006, last: 00000002000000000000000B, segments: 6,
          bytes_to_replay: 100663296, partial: null, archive_ends: "2026-11-27T14:05:00.0Z"}
previous:
  description:
    - O(state=planned) with O(data_dir) - the last restore's phase in this data directory (C(restoring),
      C(restored), C(paused), C(recovered), C(failed)), whether it was this same request (backup, target, timeline)
      and where it moved the old data directory. A caller skips a request already C(recovered).
    - Its C(recovery) is where that restore's recovery stopped (as RV(recovery)), or null.
  returned: O(state=planned)
  type: dict
moved_aside:
  description: Where the previous data directory went (null when there was none).
  returned: O(state=restored)
  type: str
restored:
  description: Files and bytes restored and the seconds it took (absent when nothing was restored this run).
  returned: O(state=restored)
  type: dict
removed:
  description: The moved-aside data directories O(state=pruned) deleted.
  returned: O(state=pruned)
  type: list
  elements: str
recovery:
  description:
    - What recovery reached. C(outcome) is C(paused) (at the target, waiting to be promoted) or C(promoted);
      C(recovered_to_lsn), C(recovered_to_time), C(timeline), C(stopped) (PostgreSQL's "recovery stopping" line).
  returned: O(state=recovered)
  type: dict
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import datadir as restore_datadir
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import plan as restore_plan
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import watch as restore_watch
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import version as pg_version


def _progress_writer(path):
    if not path:
        return None
    state = {"bytes": 0, "last": 0.0, "t0": time.monotonic()}

    def add(nbytes):
        state["bytes"] += nbytes
        now = time.monotonic()
        if now - state["last"] >= 1.0:
            state["last"] = now
            _write_progress(path, "restoring", state)

    return add, state


def _write_progress(path, phase, state):
    _write_json(path, {"phase": phase, "bytes": state["bytes"], "seconds": round(time.monotonic() - state["t0"], 1)})


def _write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def run_module(module):
    p = module.params
    state = p["state"]
    if state == "pruned":
        if not p["data_dir"]:
            module.fail_json(msg="state=pruned needs data_dir")
        last = (restore_datadir.read_state(p["data_dir"]) or {}).get("moved_aside")
        removed = restore_datadir.prune_moved_aside(p["data_dir"], p["keep_replaced_days"],
                                                    protect={last} if last else (),
                                                    check_mode=module.check_mode)
        return {"changed": bool(removed), "removed": removed}
    if state == "recovered":
        if not p["data_dir"]:
            module.fail_json(msg="state=recovered needs data_dir")
        if module.check_mode:
            return {"changed": False, "recovery": None}
        if not pg_connection.HAS_PSYCOPG2:
            raise restore_target.RestoreError("psycopg2 is required on %s to watch recovery (Debian: apt install "
                                              "python3-psycopg2); PostgreSQL was left recovering" % os.uname()[1])
        t0 = time.monotonic()

        def report(last):
            if p["progress_file"]:
                _write_json(p["progress_file"], dict(last, phase="recovering",
                                                     seconds=round(time.monotonic() - t0, 1)))

        try:
            reached = restore_watch.wait_for_recovery(
                lambda: pg_connection.connect(p), p["data_dir"], p["log_file"] or "", p["log_offset"], p["timeout"],
                progress=report, ping=restore_watch.pg_isready(p["pg_bin_dir"],
                                                               p["login_unix_socket"] or p["login_host"],
                                                               p["login_port"]))
        except restore_target.RestoreError:
            raise  # main() records it in the progress file
        if p["progress_file"]:
            _write_json(p["progress_file"], dict(reached, phase="reached"))
        try:
            restore_datadir.set_phase(p["data_dir"], "recovered" if reached["outcome"] == "promoted" else "paused",
                                      recovery=reached)
        except OSError:
            pass
        return {"changed": False, "recovery": reached}
    repositories = [repo_spec.open_repository(spec) for spec in p["repositories"]]
    system_identifier = p["system_identifier"]
    found_in = None
    if not system_identifier and p["data_dir"]:
        control = restore_watch.pg_controldata(p["pg_bin_dir"], p["data_dir"])
        system_identifier = control.get("Database system identifier")
        found_in = p["data_dir"] if system_identifier else None
        state_doc = restore_datadir.read_state(p["data_dir"])
        if not system_identifier and state_doc and state_doc.get("moved_aside"):
            control = restore_watch.pg_controldata(p["pg_bin_dir"], state_doc["moved_aside"])
            system_identifier = control.get("Database system identifier")
            found_in = state_doc["moved_aside"] if system_identifier else None
    target = {"type": p["target"], "value": p["target_value"], "inclusive": p["target_inclusive"],
              "timeline": p["target_timeline"]}
    try:
        try:
            plan = restore_plan.plan(repositories, target, system_identifier=system_identifier,
                                     backup_id=p["backup_id"], use_partial=p["use_partial"],
                                     commit_times=restore_plan.pg_waldump_commit_times(p["pg_bin_dir"]))
        except restore_target.RestoreError:
            plan = _finished_request_plan(repositories, target, system_identifier, p)
            if plan is None:
                raise
    except restore_target.RestoreError as exc:
        if found_in and str(exc).startswith("no backup of cluster"):
            raise restore_target.RestoreError(
                "%s holds cluster %s, and %s. Nothing was changed. If this host's data directory is to be replaced "
                "by another cluster (a fresh host whose package created a cluster of its own), name the cluster to "
                "restore: system_identifier (the restore role's restore_system_identifier)"
                % (found_in, system_identifier, exc)) from None
        raise
    previous = restore_datadir.read_state(p["data_dir"]) if p["data_dir"] else None
    same = restore_datadir.same_request(previous, plan)
    if p["data_dir"] and not (same and previous.get(
            "phase") in restore_datadir.STAGED_PHASES + restore_datadir.DONE_PHASES):
        restore_datadir.check_data_dir(plan, p["data_dir"])
    if state == "planned":
        return {"changed": False, "plan": plan,
                "previous": {"phase": (previous or {}).get("phase"), "same_request": same,
                             "moved_aside": (previous or {}).get("moved_aside"),
                             "recovery": (previous or {}).get("recovery")}}
    if not p["data_dir"]:
        module.fail_json(msg="state=restored needs data_dir")
    progress = _progress_writer(p["progress_file"])
    done = restore_datadir.prepare_data_dir(repositories, plan, p["data_dir"], check_mode=module.check_mode,
                                            progress=progress[0] if progress else None)
    if progress and not module.check_mode:
        _write_progress(p["progress_file"], "restored", progress[1])
    result = {"changed": done["changed"], "plan": plan, "moved_aside": done["moved_aside"]}
    if done.get("summary"):
        result["restored"] = done["summary"]
    return result


def _finished_request_plan(repositories, target, system_identifier, p):
    """A re-run of a restore that opened: ``latest`` now resolves to the timeline that restore created, whose newest
    WAL may not be archived yet, so the plan can fail where nothing is to be done. Planned again on the timeline the
    finished request resolved to, it is that request (the role then says "nothing to do"); None when the data
    directory holds no finished restore of this very target."""
    previous = restore_datadir.read_state(p["data_dir"]) if p["data_dir"] else None
    request = (previous or {}).get("request") or {}
    before = request.get("target") or {}
    if (previous or {}).get("phase") != "recovered" or request.get("timeline") is None or any(
            before.get(k) != target.get(k) for k in ("type", "value", "inclusive", "timeline")):
        return None
    plan = restore_plan.plan(repositories, dict(target, timeline=str(request["timeline"])),
                             system_identifier=system_identifier, backup_id=request.get("backup_id"),
                             use_partial=p["use_partial"],
                             commit_times=restore_plan.pg_waldump_commit_times(p["pg_bin_dir"]))
    plan["target"] = dict(plan["target"], timeline=target["timeline"])
    return plan if restore_datadir.same_request(previous, plan) else None


def main():
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="planned", choices=["planned", "restored", "recovered", "pruned"]),
        repositories=dict(type="list", elements="dict", required=True, options=repo_spec.repository_argument_spec()),
        data_dir=dict(type="path"),
        target=dict(type="str", default="end", choices=list(restore_target.TARGET_TYPES)),
        target_value=dict(type="str"),
        target_inclusive=dict(type="bool", default=True),
        target_timeline=dict(type="str", default="latest"),
        backup_id=dict(type="str"),
        use_partial=dict(type="bool", default=True),
        keep_replaced_days=dict(type="int", default=7),
        system_identifier=dict(type="str"),
        pg_bin_dir=dict(type="path", default=pg_version.DEFAULT_PG_BIN),
        progress_file=dict(type="path"),
        log_file=dict(type="path"),
        log_offset=dict(type="int", default=0),
        timeout=dict(type="int", default=3600),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "restored", ["data_dir"]),
                                        ("state", "recovered", ["data_dir"]),
                                        ("state", "pruned", ["data_dir"])])
    done = False
    try:
        result = run_module(module)
        done = True
    except _errors.ENGINE_ERRORS as exc:
        _progress_failed(module.params, _errors.message(exc))
        module.fail_json(msg=_errors.message(exc))
    finally:
        if not done:  # whatever stopped it, a poller of the progress file must not wait for the timeout
            _progress_failed(module.params, "the module failed")
    module.exit_json(**result)


def _progress_failed(params, reason):
    path = params.get("progress_file")
    if not path:
        return
    try:
        with open(path) as fh:
            if '"phase": "failed"' in fh.read():
                return  # the first, precise reason stays
    except (OSError, ValueError):
        pass
    try:
        _write_json(path, {"phase": "failed", "reason": reason})
    except OSError:
        pass


if __name__ == "__main__":
    main()
