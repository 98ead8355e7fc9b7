"""Counting finished tasks in worker processes at the cost of a memory write.

Every benchmark task calls :func:`tick` (and :func:`latency` for the latency
workload). Each worker process keeps one small file in ``BENCH_PROBE_DIR``,
mapped into memory, holding when its first and last tasks ran, how many ran,
and the enqueue-to-start latencies it saw. The runner reads the files from
outside, so no system pays a broker round trip to report progress, and every
system pays the same few hundred nanoseconds per task.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProbeTotals", "latency", "read_probes", "tick"]

_HEADER = struct.Struct("<ddQQ")  # first, last, count, latencies stored
LATENCY_CAPACITY = 1 << 16
_SIZE = _HEADER.size + 8 * LATENCY_CAPACITY


class _Probe:
    def __init__(self) -> None:
        self.pid = -1
        self.map: mmap.mmap | None = None
        self.first = 0.0
        self.count = 0
        self.stored = 0
        # Thread pools (Dramatiq, taskmesh threads) tick from several threads.
        self.lock = threading.Lock()

    def ensure(self) -> mmap.mmap | None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.first, self.count, self.stored = 0.0, 0, 0
            folder = os.environ.get("BENCH_PROBE_DIR")
            self.map = None
            if folder:
                path = Path(folder) / f"{self.pid}.probe"
                with open(path, "w+b") as handle:
                    handle.truncate(_SIZE)
                    self.map = mmap.mmap(handle.fileno(), _SIZE)
        return self.map


_probe = _Probe()


def tick() -> None:
    """Count one finished task in this process."""
    with _probe.lock:
        mapped = _probe.ensure()
        if mapped is None:
            return
        now = time.time()
        if _probe.count == 0:
            _probe.first = now
        _probe.count += 1
        _HEADER.pack_into(mapped, 0, _probe.first, now, _probe.count, _probe.stored)


def latency(seconds: float) -> None:
    """Record one enqueue-to-start latency (call before :func:`tick`)."""
    with _probe.lock:
        mapped = _probe.ensure()
        if mapped is None or _probe.stored >= LATENCY_CAPACITY:
            return
        struct.pack_into("<d", mapped, _HEADER.size + 8 * _probe.stored, seconds)
        _probe.stored += 1


@dataclass
class ProbeTotals:
    """What every worker process reported, added up."""

    count: int
    first: float
    last: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Tasks per second between the first and the last task."""
        span = self.last - self.first
        return self.count / span if span > 0 else 0.0


def read_probes(folder: Path, with_latencies: bool = False) -> ProbeTotals:
    """Add up the probe files in ``folder``."""
    count, first, last, latencies = 0, float("inf"), 0.0, []
    for path in folder.glob("*.probe"):
        data = path.read_bytes()
        if len(data) < _SIZE:
            continue
        p_first, p_last, p_count, stored = _HEADER.unpack_from(data, 0)
        if p_count == 0:
            continue
        count += p_count
        first = min(first, p_first)
        last = max(last, p_last)
        if with_latencies and stored:
            latencies.extend(struct.unpack_from(f"<{stored}d", data, _HEADER.size))
    return ProbeTotals(count, first if count else 0.0, last, latencies)
