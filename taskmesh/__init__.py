"""taskmesh: background tasks through the broker you already run.

from taskmesh import TaskMesh

app = TaskMesh("proj", broker="redis://127.0.0.1:6379/0")

@app.task
def add(x, y):
    return x + y

add.delay(2, 3).get(timeout=10)
"""

from __future__ import annotations

from taskmesh.app import TaskMesh
from taskmesh.canvas import Signature, signature
from taskmesh.errors import (
    ConfigurationError,
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskmeshError,
    TimeLimitExceeded,
    TimeoutError,
)
from taskmesh.result import AsyncResult, State
from taskmesh.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "ConfigurationError",
    "Ignore",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "State",
    "Task",
    "TaskError",
    "TaskMesh",
    "TaskmeshError",
    "TimeLimitExceeded",
    "TimeoutError",
    "__version__",
    "signature",
]
