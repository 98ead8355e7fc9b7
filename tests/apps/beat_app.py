"""The scenario app plus a task beat sends, for the beat process tests (issue #7).

Workers and beat processes import this module with ``-A tests.apps.beat_app``;
``beat_schedule`` and the other settings come from ``TASKMESH_*`` variables.
``beat.tick`` appends ``<task id> <scheduled run time>`` to ``beat-tick.log`` in
``SCENARIO_DIR``; one short append is atomic, so processes do not mix lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from taskmesh.task import Task
from tests.apps.scenario import create_app

app = create_app()


@app.task(name="beat.tick", bind=True)
def tick(self: Task[Any, Any]) -> float:
    run_at = float(self.request.headers["beat_run_at"])
    folder = os.environ.get("SCENARIO_DIR")
    if folder:
        with open(Path(folder) / "beat-tick.log", "a", encoding="utf-8") as log:
            log.write(f"{self.request.id} {run_at!r}\n")
    return run_at
