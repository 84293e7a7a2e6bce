# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one of the engine's task functions (``_pg.facts_task(params, check_mode, diff)``) on the target, over the
task's own connection and become, without the module wrapper.

Why: a module call costs about half a second on the lab before it does any work (the AnsiballZ wrapper, and
importing ansible.module_utils.basic on the target), against a tenth of a second for this. The failover reads every
region and promotes on its critical path, so that half second counts several times in the RTO.

How: the engine's module_utils are plain Python (no Ansible). Their sources (the named one and what it imports of
the collection, found by reading the import lines) travel compressed inside a short script, with the validated
parameters, on the interpreter's standard input, as pipelining sends a module: nothing on argv, no file on the
target. A meta-path importer serves them, the script calls the function and prints its result as one JSON line.

It does not replace the module path: ``run`` returns None when it cannot be used the same way (an interpreter still
to be discovered, an async task, a connection without pipelining, a become password to type), and the action
plugin then runs the module, which handles those.

Private to the collection's controller-side plugins.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import base64
import importlib.util
import json
import os
import shlex
import zlib

from ansible.executor import module_common
from ansible.executor.interpreter_discovery import InterpreterDiscoveryRequiredError
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

PACKAGE = "ansible_collections.immersiverse.dr.plugins.module_utils"
# module name -> the compressed sources it needs. Workers fork per task, so a bundle built in a worker is gone with
# it: the preload callback builds them in the main process (warm()), and every worker inherits them.
_BUNDLES = {}
ENGINE_MODULES = ("_pg.facts", "_pg.promote")

# Runs on the target: serve the collection's module_utils from the bundle, call the function, print one JSON line.
BOOTSTRAP = r'''
import sys
# a script read from stdin has the current directory first on sys.path: nothing may be imported from there (a
# json.py in the login user's home would run as the become user), as AnsiballZ also makes sure
sys.path[:] = [_p for _p in sys.path if _p not in ("", ".")]
import base64, importlib, importlib.util, json, os, traceback, zlib
_SRC = json.loads(zlib.decompress(base64.b64decode("%(sources)s")).decode("utf-8"))
_JOB = json.loads(base64.b64decode("%(job)s").decode("utf-8"))
_PKG = "ansible_collections.immersiverse.dr.plugins.module_utils"
_PKGS = ("ansible_collections", "ansible_collections.immersiverse", "ansible_collections.immersiverse.dr",
         "ansible_collections.immersiverse.dr.plugins", _PKG)


class _Bundle(object):  # a meta-path finder and loader (importlib.abc costs 30 ms to import)
    def find_spec(self, name, path=None, target=None):
        short = name[len(_PKG) + 1:] if name.startswith(_PKG + ".") else None
        if name in _PKGS or short in _SRC:
            return importlib.util.spec_from_loader(name, self, is_package=name in _PKGS)
        if short and any(_k.startswith(short + ".") for _k in _SRC):  # an engine sub-package (_pg, _wal, ...)
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        short = module.__name__[len(_PKG) + 1:]
        if module.__name__ not in _PKGS and short in _SRC:
            exec(compile(_SRC[short], "<immersiverse.dr %%s>" %% short, "exec"), module.__dict__)


sys.meta_path.insert(0, _Bundle())
os.environ.update(dict((str(_k), str(_v)) for _k, _v in _JOB["environment"].items()))
_params = _JOB["params"]
for _key in _JOB["paths"]:
    if isinstance(_params.get(_key), str):
        _params[_key] = os.path.expanduser(os.path.expandvars(_params[_key]))
try:
    _mod = importlib.import_module(_PKG + "." + _JOB["module"])
    _out = getattr(_mod, _JOB["function"])(_params, check_mode=_JOB["check_mode"], diff=_JOB["diff"])
except Exception as _exc:
    _out = {"failed": True, "msg": "%%s: %%s" %% (type(_exc).__name__, _exc), "exception": traceback.format_exc()}
sys.stdout.write("\n" + json.dumps(_out, default=str) + "\n")
'''


def _root():
    return importlib.util.find_spec(PACKAGE).submodule_search_locations[0]


def _path(root, name):
    """The file of an engine module ('_pg.facts' -> <module_utils>/_pg/facts.py), or None."""
    path = os.path.join(root, *name.split(".")) + ".py"
    return path if os.path.isfile(path) else None


def imported(text, root):
    """The engine modules (short dotted names) a source imports: ``from PKG import _errors``, ``from PKG._pg import
    facts as pg_facts``, ``from PKG._pg.facts import gather_facts``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module != PACKAGE and not node.module.startswith(PACKAGE + "."):
            continue
        base = node.module[len(PACKAGE) + 1:]
        for alias in node.names:
            full = base + "." + alias.name if base else alias.name
            found.append(full if _path(root, full) else base)
    return [name for name in found if name]


def sources(module):
    """{short name: source} of the module_utils module and every collection module_utils it imports."""
    root = _root()
    todo, out = [module], {}
    while todo:
        name = todo.pop()
        if name in out:
            continue
        path = _path(root, name)
        if path is None:
            raise ImportError("module_utils %s of immersiverse.dr not found on the controller" % name)
        with open(path, encoding="utf-8") as fh:
            out[name] = fh.read()
        todo.extend(imported(out[name], root))
    return out


def _bundle(module):
    if module not in _BUNDLES:
        raw = json.dumps(sources(module), sort_keys=True).encode("utf-8")
        _BUNDLES[module] = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
    return _BUNDLES[module]


def warm():
    """Build the bundles of ENGINE_MODULES now (the preload callback calls it before the workers fork)."""
    for module in ENGINE_MODULES:
        _bundle(module)
    return len(ENGINE_MODULES)


def script(module, function, params, check_mode=False, diff=False, environment=None, paths=()):
    """The text the target's interpreter reads on its standard input."""
    job = {"module": module, "function": function, "params": params, "check_mode": bool(check_mode),
           "diff": bool(diff), "environment": dict(environment or {}), "paths": list(paths)}
    encoded = base64.b64encode(json.dumps(job, default=str).encode("utf-8")).decode("ascii")
    return BOOTSTRAP % {"sources": _bundle(module), "job": encoded}


def interpreter(action, task_vars):
    """The Python the module would run with on this task's target, or None when it is still to be discovered."""
    use_vars = task_vars
    if action._task.delegate_to:
        use_vars = (task_vars.get("ansible_delegated_vars") or {}).get(action._task.delegate_to)
        if use_vars is None:
            return None
    try:
        _shebang, path = module_common._get_shebang(
            "/usr/bin/python", use_vars, action._templar,
            remote_is_local=bool(getattr(action._connection, "_remote_is_local", False)))
    except InterpreterDiscoveryRequiredError:
        return None
    return path or None


def usable(action):
    """Whether this task can take the short path the way the module path would run it."""
    conn = action._connection
    if action._task.async_val or not getattr(conn, "has_pipelining", False):
        return False
    try:
        # what the module path itself asks: pipelining on for this connection and become (su, KEEP_REMOTE_FILES
        # and pipelining=false turn it off), so a host whose sudo needs a tty gets the module, as before
        if not action._is_pipelining_enabled("new", wrap_async=False):
            return False
    except (AttributeError, KeyError, TypeError):
        return False
    become = getattr(conn, "become", None)
    if become is not None:
        try:
            if become.get_option("become_pass"):
                return False  # a password prompt: the module path knows how to answer it
        except KeyError:
            pass
    return True


def parse(rc, stdout, stderr):
    """The task result from what the script printed (the last line that is a JSON object)."""
    for raw in reversed((stdout or "").splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            try:
                out = json.loads(line)
            except ValueError:
                break
            if isinstance(out, dict):
                return out
            break
    msg = "the engine did not answer on the target (rc %s)" % rc
    if rc == 127 or "No such file or directory" in (stderr or ""):
        msg += ": is the Python interpreter set for this host (ansible_python_interpreter) installed there?"
    return {"failed": True, "msg": msg, "rc": rc, "module_stdout": (stdout or "")[-4000:],
            "module_stderr": (stderr or "")[-4000:]}


def run(action, task_vars, module, function, argument_spec):
    """The function's result run on the target, or None when the module must run instead (see usable()).

    Arguments are validated on the controller against the module's own spec (the same errors a module gives);
    path options are expanded on the target, as the module would.
    """
    if not usable(action):
        return None
    python = interpreter(action, task_vars)
    if python is None:
        return None
    validation, params = action.validate_argument_spec(argument_spec=argument_spec)
    paths = [k for k, v in argument_spec.items() if v.get("type") == "path"]
    for key in paths:
        if key in action._task.args:
            params[key] = action._task.args[key]
    environment = {}
    action._compute_environment_string(environment)
    text = script(module, function, params, check_mode=action._task.check_mode, diff=action._task.diff,
                  environment=environment, paths=paths)
    # "/usr/bin/env python3" is an interpreter too: each word quoted on its own
    command = " ".join(shlex.quote(word) for word in shlex.split(python))
    res = action._low_level_execute_command(command, sudoable=True, in_data=text.encode("utf-8"))
    # as a module's result: the values of no_log options (a password in an error message) masked
    return remove_values(parse(res.get("rc"), res.get("stdout"), res.get("stderr")),
                         getattr(validation, "_no_log_values", set()))


class EngineAction(ActionBase):
    """The action plugin of a module whose work is an engine task function: ENGINE = (module_utils name, function
    name, argument spec function). The short path when it can be taken, the module otherwise."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True
    ENGINE = None

    def run(self, tmp=None, task_vars=None):
        result = super(EngineAction, self).run(tmp, task_vars)
        del tmp
        module, function, spec = self.ENGINE
        out = run(self, task_vars, module, function, spec())
        if out is None:
            out = self._execute_module(task_vars=task_vars, wrap_async=self._task.async_val)
        result.update(out)
        return result
