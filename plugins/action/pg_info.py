# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_info runs _pg.facts.facts_task on the target without the module wrapper
(plugins/plugin_utils/_remote.py): the failover's critical path calls it, and the wrapper costs more than the work.
The module runs instead where the short path cannot be taken the same way."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts
from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote


class ActionModule(_remote.EngineAction):
    ENGINE = ("_pg.facts", "facts_task", pg_facts.facts_argument_spec)
