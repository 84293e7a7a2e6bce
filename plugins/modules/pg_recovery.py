#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_recovery
short_description: Write the recovery settings and signal file of a stopped PostgreSQL 12+ data directory
version_added: 0.3.0
description:
  - Configures how PostgreSQL recovers at its next start, by writing files in the data directory while the server
    is stopped. It needs no connection to the server.
  - Writes the recovery settings into C(postgresql.auto.conf), which PostgreSQL reads last (after C(postgresql.conf)),
    so they win over any other file. Every other line of that file (its header, settings written by ALTER SYSTEM,
    comments) is kept byte for byte.
  - Creates C(recovery.signal) for O(mode=recovery) (archive recovery up to a target, then pause, promote or shut
    down) or C(standby.signal) for O(mode=standby) (a standby that streams from a primary and/or replays from the
    archive, and never ends on its own), and removes the other one. O(mode=none) removes both signal files and the
    recovery settings, after a restore has finished or to clean up.
  - The managed settings are C(restore_command), C(recovery_target), C(recovery_target_time), C(recovery_target_lsn),
    C(recovery_target_xid), C(recovery_target_name), C(recovery_target_inclusive), C(recovery_target_timeline),
    C(recovery_target_action), C(primary_conninfo) and C(primary_slot_name). Each call states the whole recovery
    configuration. A managed setting the call does not ask for is removed (a C(recovery_target_time) left from an
    earlier attempt when the target is now an LSN, a C(primary_conninfo) when the server now restores from the
    archive). C(restore_command) is the exception, see O(restore_command).
  - C(recovery_end_command) and C(archive_cleanup_command) are not managed and never changed; the module warns when
    C(postgresql.auto.conf) sets one, since it runs during the recovery.
  - Values are written as ALTER SYSTEM writes them (single quotes, embedded quotes and backslashes doubled) and
    compared in the form PostgreSQL reads them (an LSN, a time instant, a number), so a re-run with the same request
    changes and rewrites nothing.
  - Files are replaced atomically (temporary file in the data directory, fsync, rename, fsync of the directory) and
    end up owned by the data directory's owner, mode 0600 (0640 in a cluster with group access). The signal file is
    the commit point, removed first and created last.
  - Refuses while the server runs (C(postmaster.pid) names a live process) unless O(allow_running=true), and never
    removes a signal file under a running server.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
attributes:
  check_mode:
    support: full
    details: Reads the files and returns what a real run would change (RV(actions), RV(updated), RV(removed),
      RV(settings)); writes and removes nothing.
  diff_mode:
    support: full
    details: The managed settings in C(postgresql.auto.conf) and the signal files, before and after;
      C(primary_conninfo) is shown masked.
  platform:
    details: Runs on the database host, as root (C(become=true)) or as the data directory's owner.
options:
  data_dir:
    description:
      - The data directory (the one with C(PG_VERSION); on Debian C(/var/lib/postgresql/15/main)).
    type: path
    required: true
  mode:
    description:
      - C(recovery) creates C(recovery.signal) (archive recovery up to O(target)).
      - C(standby) creates C(standby.signal) (a standby; no target).
      - C(none) removes both signal files and the recovery settings.
    type: str
    required: true
    choices: [recovery, standby, none]
  restore_command:
    description:
      - The shell command that fetches an archived WAL file (C(%f) its name, C(%p) where to put it), for example
        C(cp /archive/%f %p) or C(/usr/local/bin/immersiverse-dr-wal fetch %f %p).
      - When omitted, an existing C(restore_command) line is left as it is, in every mode. It is shared with
        M(immersiverse.dr.pg_wal_archive), which keeps one on every server so that any of them can restore.
      - An empty string removes it (refused with O(mode=recovery), which needs one).
      - O(mode=recovery) fails when none is given or already configured.
    type: str
  target:
    description:
      - Where archive recovery stops. Required with O(mode=recovery), refused with the other modes.
      - C(end) replays all WAL in the archive (no C(recovery_target*) setting at all), then promotes.
      - C(immediate) stops as soon as the base backup is consistent.
      - C(time), C(lsn), C(xid) and C(name) stop at O(target_time), O(target_lsn), O(target_xid) or
        O(target_name), exactly one of which must be given (and no other).
    type: str
    choices: [immediate, time, lsn, xid, name, end]
  target_time:
    description:
      - With O(target=time), a timestamp with an explicit time zone - a UTC offset (C(2026-03-01 12:00:00+00:00),
        C(+01), C(+0100)), C(Z)/C(UTC), or an IANA zone name after a space (C(2026-03-01 13:00:00 Europe/Paris)).
      - A time without a zone is refused (PostgreSQL would read it in the server's C(TimeZone), ambiguous in an
        incident), as are zone abbreviations and wall times a daylight saving change skips or repeats.
      - Written as the wall time with its UTC offset, for example C(2026-03-01 13:00:00+01:00).
      - Quote it in YAML, or YAML may read it as a date.
    type: str
  target_lsn:
    description: With O(target=lsn), a WAL location like C(0/3000060), as C(pg_current_wal_lsn()) prints it.
    type: str
  target_xid:
    description: With O(target=xid), a transaction id (3 or more), as C(txid_current()) prints it.
    type: int
  target_name:
    description:
      - With O(target=name), a restore point made with C(pg_create_restore_point()). Not empty, at most 63
        characters, no quotes or line breaks.
    type: str
  target_inclusive:
    description:
      - Whether recovery stops just after (true) or just before (false) the target time, LSN or xid. False is
        refused with the targets it has no meaning for (C(immediate), C(end), C(name)).
    type: bool
    default: true
  target_timeline:
    description:
      - C(recovery_target_timeline), written with O(mode=recovery) and O(mode=standby). C(latest) follows the newest
        timeline found in the archive, C(current) stays on the backup's timeline, a number picks that timeline.
      - Defaults to C(latest) (PostgreSQL's default) in those modes; refused with O(mode=none).
    type: raw
  target_action:
    description:
      - What the server does once the target is reached. C(pause) (the default when a target is set) waits for
        C(pg_wal_replay_resume()) so the data can be checked first; with C(hot_standby=off), PostgreSQL treats
        pause as C(shutdown). C(promote) ends recovery and opens a new timeline; C(shutdown) stops the server.
      - Only with O(mode=recovery) and a target other than C(end) (at the end of the archive PostgreSQL promotes).
    type: str
    choices: [pause, promote, shutdown]
  primary_conninfo:
    description:
      - With O(mode=standby), the libpq connection string of the primary to stream from, for example
        C(host=10.0.1.5 port=5432 user=replicator passfile=/var/lib/postgresql/.pgpass application_name=dr2).
      - Use C(passfile=) rather than C(password=). A password in it is written to C(postgresql.auto.conf) (mode
        0600) and copied into every base backup of the server; the module warns. The value is never returned or
        shown in a diff.
      - Allowed with O(mode=recovery), where PostgreSQL ignores it (written, with a warning, for a later standby).
        Omitted, an existing one is removed.
    type: str
  primary_slot_name:
    description:
      - The replication slot on the primary the standby streams from (1 to 63 lower-case letters, digits or
        underscores). The slot must exist on the primary. Omitted, an existing one is removed.
    type: str
  allow_running:
    description:
      - Write even though the server is running; the settings take effect at its next start. A signal file is never
        removed under a running server (a standby that crashes would come back as a primary); promote it with
        M(immersiverse.dr.pg_promote) instead.
      - Typical use - O(mode=none) on the promoted server after a point-in-time recovery, to remove the recovery
        target before anything could reuse it.
    type: bool
    default: false
notes:
  - PostgreSQL 12 and later only (older versions read C(recovery.conf)).
  - Only C(postgresql.auto.conf) is written. Recovery settings in C(postgresql.conf) are overridden by what the
    module writes, but a setting the module removes falls back to them; the module warns when the data directory's
    C(postgresql.conf), or a Debian C(/etc/postgresql/*/*/postgresql.conf) whose C(data_directory) is this one, sets
    a recovery setting that is not overridden. Files included from them are not read.
  - A comment on the same line as a managed setting is lost when that setting is rewritten.
  - Do not run C(ALTER SYSTEM) on the same server while the module runs with O(allow_running=true); the last writer
    of C(postgresql.auto.conf) wins.
seealso:
  - name: Recovery configuration
    description: PostgreSQL's recovery settings.
    link: https://www.postgresql.org/docs/15/runtime-config-wal.html#RUNTIME-CONFIG-WAL-ARCHIVE-RECOVERY
  - name: Recovery targets
    description: recovery_target, recovery_target_time and the others.
    link: https://www.postgresql.org/docs/15/runtime-config-wal.html#RUNTIME-CONFIG-WAL-RECOVERY-TARGET
  - name: Point-in-time recovery
    description: Recovering using a continuous archive backup.
    link: https://www.postgresql.org/docs/15/continuous-archiving.html#BACKUP-PITR-RECOVERY
  - module: immersiverse.dr.pg_wal_archive
  - module: immersiverse.dr.pg_promote
"""

EXAMPLES = r"""
- name: Recover a restored base backup to just before the bad deploy, then wait for checks
  immersiverse.dr.pg_recovery:
    data_dir: /var/lib/postgresql/15/main
    mode: recovery
    restore_command: /usr/local/bin/immersiverse-dr-wal fetch %f %p
    target: time
    target_time: "2026-03-01 11:59:00+00:00"
    target_action: pause
  become: true

- name: Recover to a restore point and open for writes at once
  immersiverse.dr.pg_recovery:
    data_dir: /var/lib/postgresql/15/main
    mode: recovery
    restore_command: cp /mnt/archive/%f %p
    target: name
    target_name: before_migration_42
    target_action: promote
  become: true

- name: Recover to an LSN, stopping just before it
  immersiverse.dr.pg_recovery:
    data_dir: /var/lib/postgresql/15/main
    mode: recovery
    target: lsn
    target_lsn: 0/5A0001C8
    target_inclusive: false
  become: true

- name: Make the server a streaming standby of the new primary
  immersiverse.dr.pg_recovery:
    data_dir: /var/lib/postgresql/15/main
    mode: standby
    primary_conninfo: host=10.0.2.10 port=5432 user=replicator passfile=/var/lib/postgresql/.pgpass
    primary_slot_name: region_secondary
  become: true
  register: standby_config
  notify: Restart PostgreSQL

- name: After the restore, remove the recovery target (the promoted server is running)
  immersiverse.dr.pg_recovery:
    data_dir: /var/lib/postgresql/15/main
    mode: none
    allow_running: true
  become: true
"""

RETURN = r"""
settings:
  description: The managed settings C(postgresql.auto.conf) sets after the run (what a real run would leave, in
    check mode), as PostgreSQL reads them. C(primary_conninfo) is masked as C(********).
  returned: always
  type: dict
  sample: {"restore_command": "cp /mnt/archive/%f %p", "recovery_target_name": "before_migration_42",
           "recovery_target_action": "promote", "recovery_target_timeline": "latest"}
signal_file:
  description: The signal file in the data directory after the run, null with O(mode=none).
  returned: always
  type: str
  sample: /var/lib/postgresql/15/main/recovery.signal
updated:
  description: The managed settings written with a new value (added or changed).
  returned: always
  type: list
  elements: str
removed:
  description: The managed settings removed from C(postgresql.auto.conf).
  returned: always
  type: list
  elements: str
  sample: ["recovery_target_time", "primary_conninfo"]
restart_required:
  description: True when anything changed; PostgreSQL reads the recovery settings and signal files only at start.
  returned: always
  type: bool
server_running:
  description: Whether the server was running (only possible with O(allow_running=true)).
  returned: always
  type: bool
actions:
  description: The file operations done (in check mode, that a real run would do), in order.
  returned: always
  type: list
  elements: str
  sample: ["remove /var/lib/postgresql/15/main/standby.signal",
           "write /var/lib/postgresql/15/main/postgresql.auto.conf (set recovery_target_name; remove primary_conninfo)",
           "create /var/lib/postgresql/15/main/recovery.signal"]
data_dir:
  description: The data directory, absolute.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery as pg_recovery


def run_module(module):
    result = pg_recovery.run(module.params, check_mode=module.check_mode)
    for warning in result.pop("warnings"):
        module.warn(warning)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    return result


def main():
    argument_spec = dict(
        data_dir=dict(type="path", required=True),
        mode=dict(type="str", required=True, choices=list(pg_recovery.MODES)),
        restore_command=dict(type="str"),
        target=dict(type="str", choices=list(pg_recovery.TARGETS)),
        target_time=dict(type="str"),
        target_lsn=dict(type="str"),
        target_xid=dict(type="int"),
        target_name=dict(type="str"),
        target_inclusive=dict(type="bool", default=True),
        target_timeline=dict(type="raw"),
        target_action=dict(type="str", choices=list(pg_recovery.ACTIONS)),
        primary_conninfo=dict(type="str", no_log=True),
        primary_slot_name=dict(type="str"),
        allow_running=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = run_module(module)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
