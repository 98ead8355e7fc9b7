"""The benchmark tasks on Huey (run in the peers' environment only)."""

from __future__ import annotations

import time

from huey import RedisHuey

from bench import cpu, probe
from bench.apps import settings

_url, _queue, _results = settings()

huey = RedisHuey(_queue, url=_url, results=_results, blocking=True)


@huey.task(name="bench.noop")
def noop() -> None:
    """Do nothing."""
    probe.tick()


@huey.task(name="bench.burn")
def burn(iterations: int) -> int:
    """Burn a fixed amount of CPU."""
    value = cpu.burn(iterations)
    probe.tick()
    return value


@huey.task(name="bench.stamp")
def stamp(sent: float, record: bool) -> None:
    """Record the time since ``sent``."""
    if record:
        probe.latency(time.time() - sent)
    probe.tick()
