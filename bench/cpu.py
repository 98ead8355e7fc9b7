"""The CPU-bound benchmark task's work, and its calibration.

The work is a fixed number of loop iterations, so every system runs exactly
the same instructions; the runner calibrates the count to about one millisecond
of CPU time on this machine and measures the CPU time it really takes.
"""

from __future__ import annotations

import time

__all__ = ["burn", "calibrate"]


def burn(iterations: int) -> int:
    """Spin for ``iterations`` rounds of integer arithmetic; return a checksum."""
    total = 0
    for index in range(iterations):
        total = (total + index * index) % 1_000_003
    return total


def calibrate(target_seconds: float = 0.001, rounds: int = 400) -> tuple[int, float]:
    """Return (iterations, CPU seconds per call) for about ``target_seconds`` of CPU."""
    iterations = 1000
    while True:
        started = time.process_time()
        burn(iterations)
        spent = time.process_time() - started
        if spent > 0.0005:
            break
        iterations *= 2
    for _ in range(2):  # the first estimate runs cold; refine it twice
        iterations = max(1, int(iterations * target_seconds / spent))
        started = time.process_time()
        for _ in range(rounds // 4):
            burn(iterations)
        spent = (time.process_time() - started) / (rounds // 4)
    started = time.process_time()
    for _ in range(rounds):
        burn(iterations)
    return iterations, (time.process_time() - started) / rounds
