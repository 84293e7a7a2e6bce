# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_facts runs _pg.facts_task on the target without the module wrapper (plugins/plugin_utils/_remote.py): the
failover's critical path calls it, and the wrapper costs more than the work. The module runs instead where the
short path cannot be taken the same way."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.immersiverse.dr.plugins.module_utils import _pg
from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        out = _remote.run(self, task_vars, "_pg", "facts_task", _pg.facts_argument_spec())
        if out is None:
            out = self._execute_module(task_vars=task_vars, wrap_async=self._task.async_val)
        result.update(out)
        return result
