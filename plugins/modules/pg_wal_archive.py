#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_wal_archive
short_description: Turn PostgreSQL WAL archiving on or off and report the archiver's status, lag and RPO
version_added: 0.3.0
description:
  - Ensures C(wal_level), C(max_wal_senders), C(archive_mode), C(archive_command), C(archive_timeout) and
    optionally C(restore_command) with C(ALTER SYSTEM), and keeps C(archive_library) empty (PostgreSQL 15 ignores
    C(archive_command) while a library is set).
  - Values are compared after normalisation with the unit and type PostgreSQL gives each setting in
    C(pg_settings), so C(60), C(60s) and C(1min) are the same C(archive_timeout), C(16MB) and C(16384kB) the same
    size, C(on), C(true), C(yes) and C(1) the same boolean, and enum values are compared without case. Only a real
    difference is a change.
  - The comparison is against the configured value (C(pg_file_settings), which includes C(postgresql.auto.conf)),
    not only the running one, so a re-run before the restart changes nothing and still reports
    RV(restart_required).
  - C(wal_level) and C(max_wal_senders) are minimums. A server at C(logical), or with more WAL senders, is left
    alone.
  - When only reloadable settings differ from what the server runs, the module calls C(pg_reload_conf()) (unless
    O(reload=false)) and waits until the server runs them. When a restart is needed too, it does not reload; the
    restart applies everything, so a handler restarts only when RV(restart_required) is true.
  - O(state=absent) sets C(archive_mode=off) (needs a restart), C(archive_command='') and C(archive_timeout=0)
    (the checkpointer forces segment switches on C(archive_timeout) even when nothing archives them).
  - The status (RV(status)) is always returned, also with O(status_only=true), which changes nothing.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
attributes:
  check_mode:
    support: full
    details: Returns the SQL it would run (RV(would_run)) and what a real run would leave to restart or
      reload; runs no ALTER SYSTEM and no reload.
  diff_mode:
    support: full
    details: The configured values of the managed settings before and after.
options:
  state:
    description:
      - C(present) turns archiving on with the settings below; C(absent) turns it off.
    type: str
    default: present
    choices: [present, absent]
  status_only:
    description:
      - Only report RV(status); change nothing. Needs a superuser or a member of C(pg_monitor), where changing the
        settings needs a superuser.
    type: bool
    default: false
  archive_command:
    description:
      - The command PostgreSQL runs for each completed WAL file (C(%p) its path, C(%f) its name). Required with
        O(state=present) unless O(status_only=true). The C(immersiverse.dr.wal_archive) role passes
        C(/usr/local/bin/immersiverse-dr-wal push %p).
    type: str
  archive_mode:
    description:
      - C(on) archives on a primary; C(always) also archives on a standby (WAL it receives). A standby set to C(on)
        archives nothing until it is promoted, then archives at once; the module configures it (with a warning)
        so that every region is ready to take over.
      - YAML reads a bare C(on) as a boolean; C(true) is taken as C(on).
    type: raw
    default: 'on'
  rpo_seconds:
    description:
      - The recovery point objective the archive must keep, in seconds. Without O(archive_timeout), the module sets
        C(archive_timeout) to half of it, at least 30 s, so an idle database switches out and ships its last WAL
        within the RPO with the other half left for the copy and a retry. Values under 60 are refused; WAL
        archiving cannot meet them without a forced 16 MiB segment every few seconds.
    type: int
    default: 300
  archive_timeout:
    description:
      - An explicit C(archive_timeout) (C(60), C(60s), C(1min); a bare number is seconds), instead of the one
        derived from O(rpo_seconds). A warning is given when it is not below O(rpo_seconds).
    type: raw
  wal_level:
    description: The minimum C(wal_level).
    type: str
    default: replica
    choices: [replica, logical]
  max_wal_senders:
    description: The minimum C(max_wal_senders) (standbys, pg_basebackup and pg_receivewal each use one).
    type: int
    default: 10
  restore_command:
    description:
      - C(restore_command) for when this server replays from the archive (a standby, a restore). Left alone when
        omitted. The role passes C(/usr/local/bin/immersiverse-dr-wal fetch %f %p).
    type: str
  reload:
    description: Call C(pg_reload_conf()) when only reloadable settings differ from what the server runs.
    type: bool
    default: true
notes:
  - The C(rpo_seconds) in RV(status) is an estimate of how many seconds of WAL exist only on this host, see
    RV(status). It cannot know what the archive command does with a file after it returns 0.
  - PostgreSQL 15 only. Connect as a superuser to change settings, as a superuser or C(pg_monitor) member for
    the status.
seealso:
  - name: Continuous archiving
    description: PostgreSQL's chapter on WAL archiving.
    link: https://www.postgresql.org/docs/15/continuous-archiving.html
  - name: Archiving settings
    description: archive_mode, archive_command, archive_timeout.
    link: https://www.postgresql.org/docs/15/runtime-config-wal.html#RUNTIME-CONFIG-WAL-ARCHIVING
  - name: pg_stat_archiver
    description: The archiver's statistics.
    link: https://www.postgresql.org/docs/15/monitoring-stats.html#MONITORING-PG-STAT-ARCHIVER-VIEW
"""

EXAMPLES = r"""
- name: Archive WAL with the collection's push command, RPO 5 minutes
  immersiverse.dr.pg_wal_archive:
    login_unix_socket: /var/run/postgresql
    archive_command: /usr/local/bin/immersiverse-dr-wal push %p
    restore_command: /usr/local/bin/immersiverse-dr-wal fetch %f %p --unreachable missing
    rpo_seconds: 300
  become: true
  become_user: postgres
  register: archiving
  notify: Restart PostgreSQL

- name: Fail when the archive lags behind the RPO target
  immersiverse.dr.pg_wal_archive:
    login_unix_socket: /var/run/postgresql
    status_only: true
  become: true
  become_user: postgres
  register: archive_status
  failed_when: (archive_status.status.rpo_seconds or 0) > 300 or archive_status.status.lag_segments > 2

- name: Turn archiving off
  immersiverse.dr.pg_wal_archive:
    login_unix_socket: /var/run/postgresql
    state: absent
  become: true
  become_user: postgres
"""

RETURN = r"""
role:
  description: C(primary) or C(standby).
  returned: always
  type: str
system_identifier:
  description:
    - The cluster's system identifier (pg_control_system()), as a string. The wal_archive role writes the serving
      primary's into every host's WAL configuration, so segments of another cluster are neither stored nor served.
  returned: always
  type: str
  version_added: 0.4.0
changes:
  description: The settings changed (or, in check mode, that would be), each with name, before, after, context.
  returned: unless status_only
  type: list
  elements: dict
settings:
  description: The configured value of each managed setting after the run, rendered as written by ALTER SYSTEM.
  returned: unless status_only
  type: dict
  sample: {"archive_mode": "on", "archive_timeout": "150s", "wal_level": "replica"}
restart_required:
  description: True when a managed C(postmaster) setting (C(wal_level), C(archive_mode), C(max_wal_senders)) runs
    another value than configured, or is marked C(pending_restart). Stays true on re-runs until the restart.
  returned: unless status_only
  type: bool
restart_settings:
  description: The settings that need the restart.
  returned: unless status_only
  type: list
  elements: str
reload_required:
  description: True when a reloadable setting runs another value than configured and this run did not reload
    (O(reload=false), or a restart is needed anyway and applies it).
  returned: unless status_only
  type: bool
reload_settings:
  description: The settings that need a reload.
  returned: unless status_only
  type: list
  elements: str
reloaded:
  description: True when this run called C(pg_reload_conf()) and the server then ran the new values.
  returned: unless status_only
  type: bool
executed:
  description: The SQL statements run (empty in check mode).
  returned: unless status_only
  type: list
  elements: str
would_run:
  description: The SQL statements a real run would run.
  returned: in check mode, unless status_only
  type: list
  elements: str
  sample: ["ALTER SYSTEM SET archive_mode = 'on'", "ALTER SYSTEM SET archive_command = '/bin/true'"]
notes:
  description: How values were derived (archive_timeout from rpo_seconds), and why a reload was left to the restart.
  returned: unless status_only
  type: list
  elements: str
status:
  description:
    - The archiver's status after the run (before any restart, so settings waiting for one are not in it yet).
  returned: always
  type: dict
  contains:
    archiving_active:
      description: Whether this server archives (C(archive_mode=on) on a primary, C(always) anywhere).
      type: bool
    archive_mode:
      description: The running C(archive_mode).
      type: str
    archive_timeout:
      description: The running C(archive_timeout), in seconds.
      type: int
    in_recovery:
      description: Whether the server is a standby.
      type: bool
    archived_count:
      description: Files archived since C(stats_reset) (C(pg_stat_archiver)).
      type: int
    last_archived_wal:
      description: The last file archived.
      type: str
    last_archived_time:
      description: When it was archived (ISO 8601).
      type: str
    failed_count:
      description: Failed archive attempts since C(stats_reset).
      type: int
    last_failed_wal:
      description: The last file that failed.
      type: str
    last_failed_time:
      description: When it failed (ISO 8601).
      type: str
    stats_reset:
      description: When the archiver statistics were last reset (ISO 8601).
      type: str
    ready_count:
      description: Files waiting to be archived (C(.ready) files in C(pg_wal/archive_status)).
      type: int
    ready_segments:
      description: How many of them are WAL segments (the rest are history and backup files).
      type: int
    oldest_ready_wal:
      description: The oldest waiting file, null when none waits.
      type: str
    oldest_ready_time:
      description: When it became ready (its C(.ready) file's modification time, ISO 8601).
      type: str
    current_lsn:
      description: Where WAL is inserted (a standby, where it was received or replayed).
      type: str
    current_wal:
      description: The segment that holds C(current_lsn).
      type: str
    lag_segments:
      description:
        - Completed segments not archived yet. The current segment minus the last archived segment minus one, on
          the same timeline (the segment being written cannot be archived yet).
        - When the last archived file is not a segment of this timeline (nothing archived since the statistics
          were reset, a history, backup or partial file, another timeline), the number of ready segments.
      type: int
    lag_segments_basis:
      description: C(insert_segment) or C(ready_segments), which of the two C(lag_segments) used.
      type: str
    lag_seconds:
      description: The age of the oldest ready file; 0 when nothing waits, so an idle database does not look
        lagging.
      type: float
    rpo_seconds:
      description:
        - An estimate of the seconds of WAL that exist only on this host, that a loss of this host now would lose.
        - With a ready file, that file's age. A lower bound, since the segment's first record is older than the
          moment it was completed.
        - With none, 0 when nothing was written since the last archived segment was switched out (the insert
          position is at the start of the next segment), else the time since the last archived segment, at most
          C(archive_timeout) (the checkpointer switches out WAL that old; the copy itself adds its own time).
        - With none and nothing archived yet, C(archive_timeout); null when that is 0 or archiving is not active
          on this server.
      type: float
    rpo_basis:
      description: Which case C(rpo_seconds) came from (C(oldest_ready), C(nothing_unarchived),
        C(since_last_archived), C(archive_timeout), C(archiving_inactive), C(unknown)).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import server as wal_server


def run_module(module):
    conn = pg_connection.connect(module.params)
    try:
        result = wal_server.run(conn, module.params, check_mode=module.check_mode)
    finally:
        conn.close()
    for warning in result.pop("warnings"):
        module.warn(warning)
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    return result


def main():
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="present", choices=["present", "absent"]),
        status_only=dict(type="bool", default=False),
        archive_command=dict(type="str"),
        archive_mode=dict(type="raw", default="on"),
        rpo_seconds=dict(type="int", default=300),
        archive_timeout=dict(type="raw"),
        wal_level=dict(type="str", default="replica", choices=["replica", "logical"]),
        max_wal_senders=dict(type="int", default=10),
        restore_command=dict(type="str"),
        reload=dict(type="bool", default=True),
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
