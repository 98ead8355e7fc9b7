"""The benchmark tasks on RQ (run in the peers' environment only).

RQ enqueues plain functions by import path; these are the same three tasks.
"""

from __future__ import annotations

import time

from bench import cpu, probe


def noop() -> None:
    """Do nothing."""
    probe.tick()


def burn(iterations: int) -> int:
    """Burn a fixed amount of CPU."""
    value = cpu.burn(iterations)
    probe.tick()
    return value


def stamp(sent: float, record: bool) -> None:
    """Record the time since ``sent``."""
    if record:
        probe.latency(time.time() - sent)
    probe.tick()
