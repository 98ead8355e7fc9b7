"""One small app per system with the same three benchmark tasks.

Each reads ``BENCH_BROKER`` (a URL), ``BENCH_QUEUE`` and ``BENCH_RESULTS``
(``1`` to store results, ``0`` not to) from the environment, and
``BENCH_RESULT_URL`` (where results go when the broker cannot hold them, as
with RabbitMQ: the run's Redis, the same for every system), so the driver and
the worker processes it starts build the same app. The tasks are ``noop``,
``burn`` (a fixed amount of CPU work) and ``stamp`` (records enqueue-to-start
latency); each ends by counting itself in :mod:`bench.probe`.
"""

from __future__ import annotations

import os

__all__ = ["result_url", "settings"]


def settings() -> tuple[str, str, bool]:
    """Return (broker URL, queue, whether to store results) from the environment."""
    url = os.environ.get("BENCH_BROKER", "")
    queue = os.environ.get("BENCH_QUEUE", "bench")
    results = os.environ.get("BENCH_RESULTS", "0") == "1"
    return url, queue, results


def result_url() -> str:
    """Return the result store's URL: ``BENCH_RESULT_URL``, else the broker's."""
    return os.environ.get("BENCH_RESULT_URL") or os.environ.get("BENCH_BROKER", "")
