"""The tasks the integration scenarios run in real worker processes.

Workers import this module with ``-A tests.apps.scenario``; the broker, result
store and queue come from ``TASKMESH_*`` variables the test sets. Tasks that
must prove how often they ran append a line to a file in ``SCENARIO_DIR``;
appends of one short line are atomic, so concurrent workers do not mix lines.

To add a task: define the function here and list it in ``TASKS`` with its
``@app.task`` options.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskmesh import TaskMesh
from taskmesh.task import Task


def _record(kind: str, value: str) -> None:
    folder = os.environ.get("SCENARIO_DIR")
    if folder:
        with open(Path(folder) / f"{kind}.log", "a", encoding="utf-8") as log:
            log.write(f"{value}\n")


def add(x: int, y: int) -> int:
    return x + y


def tsum(values: list[int]) -> int:
    return sum(values)


def mark(key: str) -> str:
    _record("mark", key)
    return key


def sleep(seconds: float, key: str = "") -> float:
    if key:
        _record("sleep-start", key)
    time.sleep(seconds)
    if key:
        _record("sleep-end", key)
    return seconds


def flaky(self: Task[Any, Any], failures: int) -> int:
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"failure {self.request.retries + 1}"))
    return self.request.retries


def fail(message: str) -> None:
    raise ValueError(message)


def die_once(self: Task[Any, Any], key: str) -> str:
    """Kill the worker process on the first delivery, succeed afterwards."""
    _record("die-once", f"{key} delivery={self.request.delivery_count}")
    if self.request.delivery_count == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return key


def die_always() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def soft_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except Exception as exc:
        return f"caught {type(exc).__name__}"
    return "finished"


def hard_limited(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


def request_info(self: Task[Any, Any]) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "queue": request.queue,
        "retries": request.retries,
        "hostname": request.hostname,
        "eta": request.eta,
    }


def started_at(key: str) -> float:
    now = time.time()
    _record("started", f"{key} {now}")
    return now


def body(values: list[Any], key: str) -> list[Any]:
    """A chord body that records each run and returns what it received."""
    _record("body", f"{key} {len(values)}")
    return values


def on_error(task_id: str, key: str) -> str:
    """An error callback that records each call with the failed task's id."""
    _record("errors", f"{key} {task_id}")
    return task_id


def flaky_value(self: Task[Any, Any], value: int, failures: int) -> int:
    """Retry ``failures`` times, then return ``value``."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"failure {self.request.retries + 1}"))
    return value


def die_once_value(self: Task[Any, Any], value: int, key: str) -> int:
    """Kill the worker process on the first delivery, return ``value`` afterwards."""
    _record("die-once", f"{key} delivery={self.request.delivery_count}")
    if self.request.delivery_count == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def deep_sum(values: Any) -> int:
    """Sum numbers in arbitrarily nested lists."""
    if isinstance(values, list):
        return sum(deep_sum(value) for value in values)
    return int(values)


TASKS: list[tuple[Callable[..., Any], dict[str, Any]]] = [
    (add, {"name": "scenario.add"}),
    (tsum, {"name": "scenario.tsum"}),
    (mark, {"name": "scenario.mark"}),
    (sleep, {"name": "scenario.sleep"}),
    (
        flaky,
        {"name": "scenario.flaky", "bind": True, "max_retries": 5, "default_retry_delay": 0.05},
    ),
    (fail, {"name": "scenario.fail"}),
    (die_once, {"name": "scenario.die_once", "bind": True}),
    (die_always, {"name": "scenario.die_always"}),
    (soft_limited, {"name": "scenario.soft_limited", "soft_time_limit": 0.5}),
    (hard_limited, {"name": "scenario.hard_limited", "time_limit": 1.0}),
    (request_info, {"name": "scenario.request_info", "bind": True}),
    (started_at, {"name": "scenario.started_at"}),
    (body, {"name": "scenario.body"}),
    (on_error, {"name": "scenario.on_error"}),
    (
        flaky_value,
        {
            "name": "scenario.flaky_value",
            "bind": True,
            "max_retries": 5,
            "default_retry_delay": 0.05,
        },
    ),
    (die_once_value, {"name": "scenario.die_once_value", "bind": True}),
    (deep_sum, {"name": "scenario.deep_sum"}),
]


def create_app(**settings: Any) -> TaskMesh:
    """Build an app with the scenario tasks registered."""
    app = TaskMesh("scenario", **settings)
    for function, options in TASKS:
        app.task(**options)(function)
    return app


app = create_app()
