# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: preload
type: aggregate
short_description: Loads the plugins every task needs once, before the workers fork, so that no task loads them
version_added: 0.8.0
description:
  - ansible-playbook runs each task of each host in a worker process forked from the main one. The main process
    never opens a connection itself, so every worker imports the ssh connection plugin, the become and shell
    plugins, the action plugin and the filters on its own, for every task, even a C(set_fact).
  - On the lab that is about 40 ms of a task's 80 ms. The failover's critical path runs some forty tasks, so this
    is more than a second of the RTO.
  - This callback imports them in the main process when the playbook starts. The workers inherit them. It prints
    nothing and changes no result.
  - Enable it in ansible.cfg (C(callbacks_enabled = immersiverse.dr.preload)); the repository's ansible.cfg does.
author:
  - immersiverse.dr maintainers (@immersiverse)
requirements:
  - enabled in callbacks_enabled
"""

import os

from ansible.playbook.play_context import PlayContext
from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import action_loader, become_loader, connection_loader, filter_loader, lookup_loader
from ansible.plugins.loader import shell_loader, test_loader
from ansible.template import Templar
from ansible.utils.display import Display

display = Display()

CONNECTIONS = ("ansible.builtin.ssh", "ansible.builtin.local")
BECOME = ("ansible.builtin.sudo", "ansible.builtin.su")
SHELLS = ("ansible.builtin.sh",)
# The actions of the collection's roles; 'normal' runs every module that has no action plugin of its own.
ACTIONS = ("ansible.builtin.normal", "ansible.builtin.set_fact", "ansible.builtin.debug", "ansible.builtin.assert",
           "ansible.builtin.fail", "ansible.builtin.validate_argument_spec", "ansible.builtin.include_vars")
# One name per plugin file: loading one loads the file (core, mathstuff, ...).
FILTERS = ("ansible.builtin.to_json", "ansible.builtin.unique", "ansible.builtin.urlsplit",
           "immersiverse.dr.topology", "immersiverse.dr.region_repository")
TESTS = ("ansible.builtin.failed", "ansible.builtin.version", "ansible.builtin.match")
LOOKUPS = ("ansible.builtin.password", "ansible.builtin.env")


def _own_actions():
    """The collection's action plugins (plugins/action/*.py beside this file's directory)."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "action")
    try:
        names = sorted(n[:-3] for n in os.listdir(here) if n.endswith(".py") and not n.startswith("_"))
    except OSError:
        return ()
    return tuple("immersiverse.dr." + n for n in names)


def preload():
    """Import the plugins; what cannot be loaded is left to the worker (which reports it as it always would)."""
    done = 0
    for name in CONNECTIONS:
        done += connection_loader.get(name, PlayContext(), class_only=True) is not None
    for loader, names in ((become_loader, BECOME), (shell_loader, SHELLS), (filter_loader, FILTERS),
                          (test_loader, TESTS), (lookup_loader, LOOKUPS), (action_loader, ACTIONS + _own_actions())):
        for name in names:
            try:
                done += loader.get(name, class_only=True) is not None
            except Exception as exc:  # noqa: BLE001 - a plugin that fails to load fails in its task, as before
                display.vvvv("immersiverse.dr.preload: %s not preloaded: %s" % (name, exc))
    # the engine sources the short path sends (plugins/plugin_utils/_remote.py), read and compressed once
    try:
        from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote

        done += _remote.warm()
    except Exception as exc:  # noqa: BLE001 - an optimisation only; a worker builds its own bundle
        display.vvvv("immersiverse.dr.preload: the engine bundle not preloaded: %s" % exc)
    # Jinja's lexer is built on the first template a process compiles, and cached: build it here, before the fork
    # (ansible-core's own note in _jinja_bits says the same), not in every worker.
    try:
        from ansible.template import trust_as_template  # ansible-core 2.19

        Templar(loader=None).template(trust_as_template("{{ 1 }}"))
        done += 1
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        display.vvvv("immersiverse.dr.preload: the template lexer not preloaded: %s" % exc)
    return done


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "immersiverse.dr.preload"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        display.vvvv("immersiverse.dr.preload: %d plugins loaded before the workers fork" % preload())
