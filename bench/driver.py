"""Runs the workloads on one system and prints one JSON object.

Started by :mod:`bench.run` with the Python of the system's environment::

    python -m bench.driver --system celery --broker redis://127.0.0.1:PORT/0 \
        --workloads enqueue,drain,cpu,latency --tasks 20000

``BENCH_RESULTS`` decides whether results are stored. Worker processes are
started in a session of their own and stopped by their PID (the session's
group, so a prefork pool's children go too), also when a workload fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.probe import ProbeTotals, read_probes
from bench.systems import SYSTEMS, System

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


class BenchError(Exception):
    """A workload could not finish: a worker died or a deadline passed."""


@contextlib.contextmanager
def workers(system: System, concurrency: int, probe_dir: Path, log_dir: Path) -> Iterator[None]:
    """Run the system's worker processes for the duration of the block."""
    env = dict(os.environ, BENCH_PROBE_DIR=str(probe_dir), PYTHONPATH=str(ROOT))
    env.update(system.worker_env)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, command in enumerate(system.worker_commands(concurrency)):
            log = open(log_dir / f"{system.name}-worker-{index}.log", "ab")
            processes.append(
                subprocess.Popen(
                    command, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
                )
            )
            log.close()
        yield
        for process in processes:
            if process.poll() is not None:
                raise BenchError(f"{system.name} worker exited early, see {log_dir}")
    finally:
        for process in processes:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    # The worker's own session: its pool children, and nothing of anyone else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def wait_count(probe_dir: Path, count: int, timeout: float) -> ProbeTotals:
    """Poll the probes until ``count`` tasks ran; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        totals = read_probes(probe_dir)
        if totals.count >= count:
            return read_probes(probe_dir, with_latencies=True)
        if time.monotonic() > deadline:
            raise BenchError(f"only {totals.count} of {count} tasks ran in {timeout:.0f} s")
        time.sleep(0.05)


def measure_enqueue(system: System, single: int, bulk: int) -> dict[str, Any]:
    """Time ``single`` one-by-one sends and ``bulk`` sends at once, then purge."""
    system.purge()
    system.enqueue("noop", ())  # connect before the clock starts
    started = time.perf_counter()
    for _ in range(single):
        system.enqueue("noop", ())
    single_rate = single / (time.perf_counter() - started)
    system.purge()
    args = [()] * bulk
    started = time.perf_counter()
    supported = system.enqueue_bulk("noop", args)
    bulk_rate = bulk / (time.perf_counter() - started) if supported else None
    system.purge()
    return {"enqueue_single": single_rate, "enqueue_bulk": bulk_rate, "bulk": system.bulk_kind}


def measure_drain(
    system: System, task: str, args: tuple[Any, ...], count: int, opts: argparse.Namespace
) -> float:
    """Preload ``count`` tasks, start workers, return tasks/s from first to last task."""
    system.purge()
    system.preload(task, [args] * count)
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as folder:
        probe_dir = Path(folder)
        with workers(system, opts.concurrency, probe_dir, opts.log_dir):
            totals = wait_count(probe_dir, count, timeout=60 + count / 50)
    return totals.rate


def measure_latency(system: System, opts: argparse.Namespace) -> dict[str, Any]:
    """Send ``stamp`` tasks at a steady rate to running workers; return percentiles."""
    system.purge()
    warmup = 4 * opts.concurrency * 5
    total = int(opts.rate * opts.latency_seconds)
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as folder:
        probe_dir = Path(folder)
        with workers(system, opts.concurrency, probe_dir, opts.log_dir):
            for _ in range(warmup):
                system.enqueue("stamp", (time.time(), False))
            wait_count(probe_dir, warmup, timeout=60)
            started = time.monotonic()
            for index in range(total):
                pause = started + index / opts.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                system.enqueue("stamp", (time.time(), True))
            sent_rate = total / (time.monotonic() - started)
            totals = wait_count(probe_dir, warmup + total, timeout=60)
    latencies = sorted(totals.latencies)
    return {
        "latency_p50_ms": _percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": _percentile(latencies, 0.99) * 1000,
        "latency_max_ms": latencies[-1] * 1000 if latencies else None,
        "latency_sent_rate": sent_rate,
        "latency_samples": len(latencies),
    }


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(fraction * len(values)) - 1))
    return values[index]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--workloads", default="enqueue,drain,cpu,latency")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--cpu-tasks", type=int, default=5000)
    parser.add_argument("--burn-iterations", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the chosen workloads and print their figures as one JSON line."""
    opts = parse_args(argv)
    wanted = set(opts.workloads.split(","))
    system = SYSTEMS[opts.system]()
    out: dict[str, Any] = {"system": opts.system, "results": os.environ.get("BENCH_RESULTS")}
    try:
        if "enqueue" in wanted:
            out.update(measure_enqueue(system, opts.single, opts.tasks))
        if "drain" in wanted:
            out["drain_noop"] = measure_drain(system, "noop", (), opts.tasks, opts)
        if "cpu" in wanted and opts.burn_iterations:
            burn = (opts.burn_iterations,)
            out["drain_cpu"] = measure_drain(system, "burn", burn, opts.cpu_tasks, opts)
        if "latency" in wanted:
            out.update(measure_latency(system, opts))
    except BenchError as exc:
        out["error"] = str(exc)
    finally:
        system.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
