"""The benchmark tasks on taskmesh."""

from __future__ import annotations

import os
import time

from bench import cpu, probe
from bench.apps import settings
from taskmesh import TaskMesh

_url, _queue, _results = settings()

app = TaskMesh(
    "bench",
    broker=_url or "sqlite:///bench.db",
    # Redis when the broker is RabbitMQ (a broker only); otherwise the broker's own.
    backend=os.environ.get("BENCH_RESULT_URL") or None,
    task_default_queue=_queue,
    task_ignore_result=not _results,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing."""
    probe.tick()


@app.task(name="bench.burn")
def burn(iterations: int) -> int:
    """Burn a fixed amount of CPU."""
    value = cpu.burn(iterations)
    probe.tick()
    return value


@app.task(name="bench.stamp")
def stamp(sent: float, record: bool) -> None:
    """Record the time since ``sent``, the producer's clock before enqueueing."""
    if record:
        probe.latency(time.time() - sent)
    probe.tick()
