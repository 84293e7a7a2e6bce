"""The engine's layout: one sub-package per concern, imports without cycles, every module saying what it is for."""

import ast
from pathlib import Path

from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote

ROOT = Path(_remote._root())
MODULES = sorted(str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
                 for p in ROOT.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts)


def imports(name):
    return set(_remote.imported((ROOT / (name.replace(".", "/") + ".py")).read_text(), str(ROOT)))


def test_the_engine_is_sub_packages_by_concern():
    assert {m.split(".")[0] for m in MODULES} == {"_errors", "_pg", "_wal", "_repo", "_backup", "_restore",
                                                  "_s3policy", "_runbook"}
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
