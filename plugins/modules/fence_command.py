#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: fence_command
short_description: Run the out-of-band fence command on the controller
version_added: 0.9.0
description:
  - Runs the configured fence (STONITH) command - the lab's C(scripts/lab-fence.sh), a cloud CLI that stops the
    instance, a PDU - on the controller, without a shell, bounded by O(timeout). Used by the isolate role for a host
    that cannot be reached.
  - It runs in the Ansible process that runs the task (an action plugin), because the promotion waits for the fence and
    shipping a module to a local Python first would cost about half a second of the failover.
  - A command that exits non-zero or does not finish in time fails the task, saying the host is not known to be
    fenced; a command that timed out is killed with everything it started. The command counts as finished when it
    exits, even if something it started in the background still holds its output.
  - The task's C(environment) keyword does not reach the command (it runs in the controller's environment).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action
attributes:
  check_mode:
    support: full
    details: Runs nothing; says it would run the command (C(changed), RV(would_run)).
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    details: Runs on the controller.
options:
  argv:
    description: The command and its arguments (no shell).
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds the command may take before it is killed and the task fails; V(0) for no limit.
    type: int
    default: 120
notes:
  - Put credentials the command needs in its environment or its own configuration, not in O(argv); the isolate
    role runs this task with C(no_log) when C(isolate_fence_no_log) is set.
seealso:
  - module: immersiverse.dr.pg_promote
"""

EXAMPLES = r"""
- name: Fence a host that cannot be reached (stop its instance)
  immersiverse.dr.fence_command:
    argv: [/usr/local/bin/dr-fence-instance, pg-primary-1]
    timeout: 60
"""

RETURN = r"""
rc:
  description: The command's exit status (null when it could not start or was killed).
  returned: when it ran
  type: int
stdout:
  description: What it printed (the last 64 KiB).
  returned: when it ran
  type: str
stderr:
  description: Its error output (the last 64 KiB).
  returned: when it ran
  type: str
would_run:
  description: In check mode, the command that would run.
  returned: check mode
  type: str
"""
