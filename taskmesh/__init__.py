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
from taskmesh.canvas import Chain, Chord, Group, Signature, chain, chord, group, signature
from taskmesh.errors import (
    ChordError,
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
from taskmesh.result import AsyncResult, GroupResult, State
from taskmesh.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Chain",
    "Chord",
    "ChordError",
    "ConfigurationError",
    "Group",
    "GroupResult",
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
    "chain",
    "chord",
    "group",
    "signature",
]
