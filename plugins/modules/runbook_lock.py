#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: runbook_lock
short_description: One failover, switchover, restore or PITR at a time, whichever controller runs it
version_added: 0.5.0
description:
  - Takes, releases or shows the runbook lock - numbered objects C(locks/<name>/<generation>.json) written
    create-only (S3 C(If-None-Match), a local C(link)) in the regions' repositories. The lock is held when a
    majority of the repositories took it, so a region that is down does not block the runbook and two controllers
    never both hold it; a run that gets no majority takes back what it wrote and fails, saying who holds the lock,
    since when, and from which controller process.
  - A run takes its own lock again (the same O(run_id)). A holder on this controller whose ansible-playbook process
    is gone (killed, crashed) is taken over at once, so a killed run can simply be run again. A holder elsewhere is
    refused until the operator names it (O(break_run_id)) or its lock is past O(ttl_seconds) and O(break_stale) is
    set. A take-over writes the next generation create-only, so of two runs taking over one dead holder one wins.
  - Runs on the controller (an action plugin); the repositories are reached from there.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action
  - immersiverse.dr.repository.repositories
attributes:
  check_mode:
    support: full
    details: Says whether the lock would be taken, who would refuse it and what is unreachable; writes nothing.
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    details: Runs on the controller.
options:
  state:
    description: Take the lock (V(acquired)), give it back (V(released)), or show it (V(info)).
    type: str
    default: acquired
    choices: [acquired, released, info]
  name:
    description: The lock's name (lower-case letters, digits, C(-) and C(_)).
    type: str
    default: runbook
  run_id:
    description:
      - This run's identity, the same for every task of one playbook run. Default, the ansible-playbook process
        (controller host, pid and the pid's start time), so every play and batch of one run shares it.
    type: str
  holder:
    description: Who is running what, for the refusal another run sees (for example C(failover by alice)).
    type: str
    default: ''
  ttl_seconds:
    description: After this long the lock counts as stale and may be broken with O(break_stale).
    type: int
    default: 7200
  break_stale:
    description: Break a lock past its TTL held by a run elsewhere (the operator knows that run is dead).
    type: bool
    default: false
  break_run_id:
    description:
      - Take over the lock of exactly this run, whatever its TTL - the operator knows it is dead (its AWX pod or
        its controller is gone). The refusal names the run id to pass.
    type: str
  quorum:
    description:
      - How many repositories must take the lock. Default, a majority. Lower it only for regions gone for good
        (two regions, one of them lost, need C(1)).
    type: int
  background:
    description:
      - With O(state=acquired), take the lock in a detached process and return at once with RV(job); a later task
        with O(join) waits for the answer. A runbook overlaps the lock with what it only reads (the failover's
        detect phase) and joins before it plans or changes anything.
      - The answer is the one a task in the foreground would give (check mode included). A run killed in between
        may leave the lock taken by its dead process; the re-run on this controller takes it over.
    type: bool
    default: false
    version_added: 0.9.0
  join:
    description:
      - The RV(job) of an earlier O(background) task of this run. Waits up to O(join_timeout) for its answer and
        returns it (the other options are not used). Fails, saying so, when the process taking the lock ended
        without an answer.
    type: str
    version_added: 0.9.0
  join_timeout:
    description: How long O(join) waits, in seconds.
    type: int
    default: 120
    version_added: 0.9.0
notes:
  - The repositories' credentials are used on the controller only and are never returned.
seealso:
  - module: immersiverse.dr.pg_restore
"""

EXAMPLES = r"""
- name: Start taking the lock, and read the regions meanwhile
  immersiverse.dr.runbook_lock:
    repositories: "{{ dr_lock_repositories }}"
    background: true
  register: lock_job
  no_log: true

- name: Before anything changes, the lock is held
  immersiverse.dr.runbook_lock:
    repositories: "{{ dr_lock_repositories }}"
    join: "{{ lock_job.job }}"
  no_log: true

- name: One runbook at a time
  immersiverse.dr.runbook_lock:
    repositories: "{{ dr_lock_repositories }}"
    holder: "restore of {{ restore_region }} by {{ lookup('env', 'USER') }}"
  no_log: true

- name: Done
  immersiverse.dr.runbook_lock:
    state: released
    repositories: "{{ dr_lock_repositories }}"
  no_log: true
"""

RETURN = r"""
started:
  description: The lock is being taken in the background (O(background)).
  returned: O(background=true)
  type: bool
job:
  description: The job directory to pass to O(join) (on the controller, private to its user).
  returned: O(background=true)
  type: str
acquired:
  description: Whether this run holds the lock now (false in check mode).
  returned: O(state=acquired)
  type: bool
lock:
  description: The lock taken (name, run_id, holder, process, since, expires), or with O(state=info) each
    repository's lock document (null when it holds none).
  returned: O(state=acquired) or O(state=info)
  type: dict
repositories:
  description: The repositories the lock was taken in.
  returned: O(state=acquired)
  type: list
  elements: str
took_over:
  description: Locks of dead runs on this controller (or stale ones broken) that were taken over.
  returned: O(state=acquired)
  type: list
  elements: str
last_released:
  description:
    - When the lock was last released, by any run (ISO 8601, UTC, microseconds), or null. A release leaves a record
      of its time under C(locks/<name>/released/) in each repository (the newest 20 are kept).
    - A run that read the regions while it waited for the lock reads them again when a release came after the read
      began; another runbook may have changed them in between.
  returned: O(state=acquired), when the lock was taken
  type: str
  version_added: 0.8.0
would_acquire:
  description: In check mode, whether a real run would take the lock now.
  returned: check mode
  type: bool
would_wait_for:
  description: In check mode, the holder that would refuse this run.
  returned: check mode
  type: list
  elements: str
would_take_over:
  description: In check mode, dead or named holders a real run would take over.
  returned: check mode
  type: list
  elements: str
unreachable:
  description: In check mode, the repositories that did not answer.
  returned: check mode
  type: list
  elements: str
released:
  description: The repositories this run's lock was deleted from.
  returned: O(state=released)
  type: list
  elements: str
"""
