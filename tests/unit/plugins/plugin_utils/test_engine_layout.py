"""The engine's layout: one sub-package per concern, imports without cycles, every module saying what it is for."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote

ROOT = Path(_remote._root())
MODULES = sorted(str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
                 for p in ROOT.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts)


def imports(name):
    return set(_remote.imported((ROOT / (name.replace(".", "/") + ".py")).read_text(), str(ROOT)))


# the old entry points of the hosts' commands, kept for one release (wrappers written before 0.9.0 name them)
LEGACY = {"_walcli": "_wal.cli", "_cli": "_backup.cli"}


def test_the_engine_is_sub_packages_by_concern():
    assert {m.split(".")[0] for m in MODULES} - set(LEGACY) == {"_errors", "_pg", "_wal", "_repo", "_backup",
                                                                "_restore", "_s3policy", "_runbook",
                                                                "_service"}
    for init in ROOT.rglob("__init__.py"):
        assert init.read_text() == "", f"{init} must stay empty (ansible-test sanity: empty-init)"


def test_no_engine_module_imports_itself_back():
    graph = {m: imports(m) for m in MODULES}
    assert all(d in graph for deps in graph.values() for d in deps), "an import names no engine module"
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        path.pop()
        done.add(node)

    for module in MODULES:
        visit(module)


def test_every_engine_module_says_what_it_is_for():
    for name in MODULES:
        doc = ast.get_docstring(ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text()))
        assert doc and len(doc) > 60, name


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_a_wrapper_written_before_the_move_still_runs_the_command(old):
    assert imports(old) == {LEGACY[old]}
    env = {**os.environ, "PYTHONPATH": str(ROOT.parents[4])}
    proc = subprocess.run([sys.executable, "-m", f"ansible_collections.immersiverse.dr.plugins.module_utils.{old}",
                           "--help"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0 and "usage: immersiverse-dr-" in proc.stdout, proc.stderr
