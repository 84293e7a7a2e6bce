"""Callback for bench/lab.py: the wall time of every task on every host, written as JSON lines.

Enabled only by the benchmark (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED=bench_timing), with
BENCH_TIMING_FILE naming the output. A task's time on a host runs from the task's start to that host's result, so
it holds the connection, the module transfer and run, and the result's way back: what an operator waits for.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timing
type: aggregate
short_description: per-task, per-host wall times for bench/lab.py
description: Writes one JSON line per task result to the file named by BENCH_TIMING_FILE.
requirements: [enabled in ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._task_start = 0.0
        self._task_name = ""
        self._out = os.environ.get("BENCH_TIMING_FILE")

    def _write(self, result, outcome: str) -> None:
        if not self._out:
            return
        row = {"task": self._task_name, "host": result._host.get_name(), "outcome": outcome,
               "seconds": round(time.monotonic() - self._task_start, 4)}
        with open(self._out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_name = task.get_name()
        self._task_start = time.monotonic()

    def v2_runner_on_ok(self, result):
        self._write(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._write(result, "unreachable")
