# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The out-of-band fence runs on the controller, in the process that runs the task: no module is shipped to a
local Python first (that costs about half a second, and the promotion waits for the fence)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import subprocess
import tempfile

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

ARGUMENT_SPEC = dict(
    argv=dict(type="list", elements="str", required=True, no_log=False),
    timeout=dict(type="int", default=120),
)
OUTPUT_LIMIT = 65536


def _tail(fh):
    """The last OUTPUT_LIMIT bytes written to fh, as text (bytes that are not UTF-8 replaced)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - OUTPUT_LIMIT))
    return to_text(fh.read(), errors="replace")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        argv, timeout = params["argv"], int(params["timeout"])
        timeout = None if timeout <= 0 else timeout  # 0: no limit, as the task keyword
        if not argv or not argv[0]:
            return dict(result, failed=True, msg="argv: name the fence command and its arguments")
        if self._task.check_mode:
            return dict(result, changed=True, would_run=argv[0], msg="check mode: the fence command was not run")
        # Output goes to files, not pipes: a fence that exits but leaves a daemon holding its stdout (a cloud CLI's
        # helper, an ssh master) must count as finished when it exits, not when the daemon closes the pipe.
        with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
            try:
                # its own process group, so that a timeout stops the command and whatever it started
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f,
                                        start_new_session=True)
            except _errors.ENGINE_ERRORS as exc:
                return dict(result, failed=True, rc=None, msg="the fence command %s could not be started: %s. Check "
                            "isolate_fence_command; nothing was fenced." % (argv[0], _errors.message(exc)))
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass  # it does not die (uninterruptible sleep): the task fails all the same, it never waits
            out, err = _tail(out_f), _tail(err_f)
        if timed_out:
            return dict(result, failed=True, rc=None, stdout=out, stderr=err,
                        msg="the fence command %s did not finish in %d s and was killed: the host is NOT known to "
                            "be fenced. Fence it by hand, or raise isolate_fence_timeout." % (argv[0], timeout))
        result.update(rc=proc.returncode, stdout=out, stderr=err, changed=True)
        if proc.returncode != 0:
            how = ("exit %d" % proc.returncode if proc.returncode > 0 else "killed by signal %d" % -proc.returncode)
            result.update(failed=True, msg="the fence command %s failed (%s): %s. The host is NOT known to be "
                                           "fenced." % (argv[0], how, err[-2000:].strip() or "no message"))
        return result
