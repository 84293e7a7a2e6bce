# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The attributes every module documents (the community.general / amazon.aws convention). A module extends
    # immersiverse.dr.attributes and states each attribute's support (full, partial, none, N/A) with its details;
    # the module's own keys win over the fragment's (ansible.utils.plugin_docs.add_fragments).

    # Standard fragment: every module.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
"""

    # Every module: where it runs. A module may add details (the user it needs, controller or target).
    PLATFORM = r"""
options: {}
attributes:
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
"""

    # With the standard fragment, for the modules that only read.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
"""

    # The modules that have an action plugin of the same name (plugins/action/).
    ACTION = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
    support: full
"""

    # The members of the action group postgres (meta/runtime.yml).
    ACTION_GROUP_POSTGRES = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/immersiverse.dr.postgres) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - immersiverse.dr.postgres
"""
