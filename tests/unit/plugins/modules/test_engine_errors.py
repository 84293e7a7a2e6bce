"""One exception family: every module turns the engine's errors (and the OS errors of the files it touches) into
fail_json with a sentence, never a traceback."""

import ast
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._backup import catalog as backup_catalog
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import recovery_conf as pg_recovery_conf
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import base as repo_base
from ansible_collections.immersiverse.dr.plugins.module_utils._restore import target as restore_target
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import naming as wal_naming
from ansible_collections.immersiverse.dr.plugins.module_utils._wal import objects as wal_objects

MODULES = sorted((Path(__file__).resolve().parents[4] / "plugins" / "modules").glob("*.py"))


def test_every_engine_error_class_is_a_dr_error():
    for cls in (backup_catalog.BackupError, pg_connection.PgError, pg_recovery_conf.RecoveryError,
                repo_base.RepositoryError, repo_base.ChecksumMismatch, restore_target.RestoreError,
                wal_naming.WalError, wal_objects.WalArchiveError):
        assert issubclass(cls, _errors.DrError), cls


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_every_module_main_catches_the_engine_errors(path):
    tree = ast.parse(path.read_text())
    action = path.parents[1] / "action" / path.name
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    # a module whose work is an engine task function (_pg.facts.facts_task), shared with its action plugin: the function
    # catches them, for the module and for the short path alike
    tasks = [ast.unparse(n.func) for n in ast.walk(main) if isinstance(n, ast.Call)
             and ast.unparse(n.func).endswith("_task")] if main else []
    if tasks:
        util, name = tasks[0].split(".")  # pg_facts.facts_task: module_utils/_pg/facts.py
        package, leaf = util.split("_", 1)
        utree = ast.parse((path.parents[1] / "module_utils" / f"_{package}" / f"{leaf}.py").read_text())
        main = next(n for n in utree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    elif action.exists():  # a module run by its action plugin on the controller: the plugin catches them
        tree = ast.parse(action.read_text())
        caught = [ast.unparse(h.type) for n in ast.walk(tree) if isinstance(n, ast.Try) for h in n.handlers if h.type]
        assert "_errors.ENGINE_ERRORS" in caught, f"action/{path.name} catches only {caught}"
        return
    caught = [ast.unparse(h.type) for n in ast.walk(main) if isinstance(n, ast.Try) for h in n.handlers if h.type]
    assert "_errors.ENGINE_ERRORS" in caught, f"{path.name}: main() catches only {caught}"


def run(module_name, args):
    """Run a module's main() in this process; its JSON result (exit_json or fail_json)."""
    mod = __import__("ansible_collections.immersiverse.dr.plugins.modules." + module_name, fromlist=["main"])
    out = io.StringIO()
    with patch_module_args(args), redirect_stdout(out), pytest.raises(SystemExit):
        mod.main()
    return json.loads(out.getvalue())


def test_an_os_error_deep_in_the_engine_is_a_sentence_not_a_traceback(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    result = run("pg_recovery", {"data_dir": str(blocker / "data"), "mode": "recovery", "target": "immediate",
                                 "restore_command": "true"})
    assert result.get("failed"), result
    assert "Traceback (most recent call last)" not in json.dumps(result)
    assert "not-a-directory" in result["msg"], result["msg"]


def test_a_permission_error_says_which_user_and_what_to_do():
    msg = _errors.message(PermissionError(13, "Permission denied", "/var/lib/postgresql/15/main"))
    assert "/var/lib/postgresql/15/main" in msg and "the module runs as" in msg and "become" in msg
