"""The short path of pg_facts and pg_promote: the engine's sources travel in a script on the interpreter's standard
input and run there without Ansible; what it prints becomes the task result; what it cannot do the same way as the
module (async, a become password, a connection without pipelining) goes back to the module."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from unittest import mock

import pytest

from ansible_collections.immersiverse.dr.plugins.module_utils._pg import facts as pg_facts
from ansible_collections.immersiverse.dr.plugins.plugin_utils import _remote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params(**more):
    out = {k: v.get("default") for k, v in pg_facts.facts_argument_spec().items()}
    out.update(login_host="127.0.0.1", login_port=free_port(), connect_timeout=2, ssl_mode="disable", **more)
    return out


def needs_psycopg2():
    """The script runs on this interpreter: the tests that connect need psycopg2 here (tests/unit/requirements.txt
    gives ansible-test's units venv psycopg2-binary, as the project's venv has it)."""
    pytest.importorskip("psycopg2")


def run_script(text: str, *flags: str) -> dict:
    """The script run by a Python of its own: isolated (-I), from /, so nothing of the collection is importable but
    what the script carries."""
    proc = subprocess.run([sys.executable, "-I", *flags], input=text, capture_output=True, text=True, timeout=60,
                          cwd="/", check=False)
    return _remote.parse(proc.returncode, proc.stdout, proc.stderr)


def test_the_bundle_carries_the_module_and_what_it_imports_of_the_collection():
    names = set(_remote.sources("_pg.facts"))
    # facts imports connection and fence, fence the recovery writer, which reads settings; all import _errors
    assert {"_pg.facts", "_pg.connection", "_pg.fence", "_pg.recovery", "_pg.recovery_conf", "_pg.settings",
            "_wal.naming", "_errors"} <= names
    assert not any(name.startswith(("_backup", "_restore", "_repo")) for name in names), names
    assert "_backup" not in names and "_restore" not in names


def test_the_engine_runs_without_ansible_and_says_an_unreachable_server_is_unreachable(tmp_path):
    needs_psycopg2()
    (tmp_path / "start.conf").write_text("disabled\n")
    out = run_script(_remote.script("_pg.facts", "facts_task", params(fail_on_unreachable=False,
                                                                      fence_dir=str(tmp_path))))
    assert out["reachable"] is False and out["changed"] is False, out
    assert "cannot connect to postgres@127.0.0.1" in out["error"], out
    # the fence state is read even though the server is down
    assert out["fence"] == {"start_conf": "disabled", "marker": None, "fenced": False}


def test_unreachable_fails_when_asked_to_and_the_message_is_the_engines():
    needs_psycopg2()
    out = run_script(_remote.script("_pg.facts", "facts_task", params(fail_on_unreachable=True)))
    assert out["failed"] is True and out["reachable"] is False and "cannot connect" in out["msg"], out


def test_without_psycopg2_on_the_target_the_message_says_what_to_install():
    # -S: no site-packages, so no psycopg2 (and no Ansible): the bundle still imports, the task says what is missing
    out = run_script(_remote.script("_pg.promote", "promote_task", params(wait_seconds=5, replay_lsn=None,
                                                                          catchup_seconds=1)), "-S")
    assert out["failed"] is True and "python3-psycopg2" in out["msg"], out


def test_an_exception_outside_the_engine_errors_is_a_failed_result_with_its_traceback():
    out = run_script(_remote.script("_pg.facts", "no_such_task", params()))
    assert out["failed"] is True and "AttributeError" in out["msg"] and "Traceback" in out["exception"], out


def test_the_environment_and_path_options_are_applied_on_the_target(tmp_path):
    needs_psycopg2()
    (tmp_path / "start.conf").write_text("manual\n")
    text = _remote.script("_pg.facts", "facts_task", params(fail_on_unreachable=False, fence_dir="$DR_TEST_CONF"),
                          environment={"DR_TEST_CONF": str(tmp_path)}, paths=["fence_dir"])
    assert run_script(text)["fence"]["start_conf"] == "manual"


def test_the_password_is_in_the_script_on_stdin_not_in_the_command():
    text = _remote.script("_pg.facts", "facts_task", params(login_password="s3cr3t-pw"))
    assert "s3cr3t-pw" not in text  # base64 of the job, not plain text in a log of the command either
    action = fake_action()
    with mock.patch.object(_remote, "interpreter", return_value="/usr/bin/python3"):
        _remote.run(action, {}, "_pg.facts", "facts_task", pg_facts.facts_argument_spec())
    (cmd,), kwargs = action._low_level_execute_command.call_args
    assert cmd == "/usr/bin/python3" and kwargs["sudoable"] is True and "s3cr3t-pw" not in cmd


def test_what_the_script_printed_is_parsed_from_its_last_json_line():
    assert _remote.parse(0, 'noise\n{"changed": false, "x": 1}\n', "") == {"changed": False, "x": 1}
    bad = _remote.parse(1, "Traceback: boom\n", "some error")
    assert bad["failed"] and bad["module_stdout"].startswith("Traceback") and bad["module_stderr"] == "some error"
    missing = _remote.parse(127, "", "/bin/sh: 1: /usr/bin/python3: not found")
    assert missing["failed"] and "ansible_python_interpreter" in missing["msg"]


def fake_action(async_val=0, pipelining=True, become_pass=None, pipelining_enabled=True):
    action = mock.MagicMock()
    action._task.async_val = async_val
    action._task.args = {"login_password": "s3cr3t-pw"}
    action._task.check_mode = False
    action._task.diff = False
    action._connection.has_pipelining = pipelining
    action._is_pipelining_enabled.return_value = pipelining_enabled
    action._connection.become.get_option.return_value = become_pass
    action.validate_argument_spec.return_value = (None, params(login_password="s3cr3t-pw"))
    action._low_level_execute_command.return_value = {"rc": 0, "stdout": json.dumps({"changed": False}),
                                                      "stderr": ""}
    return action


def test_what_the_module_path_handles_differently_goes_to_the_module():
    for action in (fake_action(async_val=30), fake_action(pipelining=False), fake_action(become_pass="pw"),
                   fake_action(pipelining_enabled=False)):  # pipelining=false, su, a tty sudo needs: the module
        with mock.patch.object(_remote, "interpreter", return_value="/usr/bin/python3"):
            assert _remote.run(action, {}, "_pg.facts", "facts_task", pg_facts.facts_argument_spec()) is None
        action._low_level_execute_command.assert_not_called()
    action = fake_action()
    with mock.patch.object(_remote, "interpreter", return_value=None):  # interpreter discovery still to run
        assert _remote.run(action, {}, "_pg.facts", "facts_task", pg_facts.facts_argument_spec()) is None
    action._low_level_execute_command.assert_not_called()


def test_an_interpreter_with_arguments_is_run_as_words_and_no_log_values_are_masked():
    action = fake_action()
    action._low_level_execute_command.return_value = {
        "rc": 0, "stdout": json.dumps({"failed": True, "msg": "auth failed for s3cr3t-pw"}), "stderr": ""}
    validation = mock.MagicMock()
    validation._no_log_values = {"s3cr3t-pw"}
    action.validate_argument_spec.return_value = (validation, params(login_password="s3cr3t-pw"))
    with mock.patch.object(_remote, "interpreter", return_value="/usr/bin/env python3"):
        out = _remote.run(action, {}, "_pg.facts", "facts_task", pg_facts.facts_argument_spec())
    (cmd,), _kwargs = action._low_level_execute_command.call_args
    assert cmd == "/usr/bin/env python3"
    assert out["failed"] and "s3cr3t-pw" not in json.dumps(out) and "auth failed for" in out["msg"]


def test_nothing_is_imported_from_the_directory_the_script_runs_in(tmp_path):
    needs_psycopg2()
    (tmp_path / "json.py").write_text("raise SystemExit('planted json.py was imported')\n")
    proc = subprocess.run([sys.executable, "-"], input=_remote.script("_pg.facts", "facts_task", params(
        fail_on_unreachable=False)), capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    out = _remote.parse(proc.returncode, proc.stdout, proc.stderr)
    assert out.get("reachable") is False and "planted" not in proc.stderr + proc.stdout, out
