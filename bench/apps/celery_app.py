"""The benchmark tasks on Celery (run in the peers' environment only)."""

from __future__ import annotations

import time

from celery import Celery

from bench import cpu, probe
from bench.apps import result_url, settings

_url, _queue, _results = settings()

app = Celery("bench", broker=_url, backend=result_url() if _results else None)
app.conf.update(
    task_default_queue=_queue,
    task_ignore_result=not _results,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
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
    """Record the time since ``sent``."""
    if record:
        probe.latency(time.time() - sent)
    probe.tick()
