"""The benchmark command: taskmesh and its peers, same server, same run.

Usage (from the repository root, with the project's environment)::

    python -m bench.run                         # taskmesh on SQLite, no peers
    python -m bench.run --broker redis --peers all
    python -m bench.run --broker redis://127.0.0.1:6390/0 --peers celery,huey
    python -m bench.run --broker rabbitmq --peers celery,dramatiq

``--broker`` is where taskmesh runs: ``sqlite`` (a fresh file in a temporary
folder, the default), ``redis`` (the run's Redis server), ``rabbitmq`` (a
RabbitMQ node this command starts, see below) or a full URL. The peers run on
Redis: the server given by a ``redis://`` broker URL or by ``--redis``,
otherwise a redis-server this command starts on a free loopback port and stops
at the end. With ``rabbitmq`` (or an ``amqp://`` URL) Celery and Dramatiq run
on that RabbitMQ too, Huey and RQ (Redis only) are left out, and every system
stores its results in the run's Redis. ``rabbitmq`` starts a node exactly as
the tests do (``tests.servers.rabbitmq_server``: the ``rabbitmq`` user, loopback
only, its own epmd and ports) and stops it and its epmd by PID at the end, also
on failure. ``--peers`` installs Celery, Dramatiq, Huey and RQ into a virtual
environment of their own (``--peers-venv``) on first use, never into this
project's.

Prints a Markdown table (absolute figures, then taskmesh's ratio to each peer,
then the issue #8 targets) and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import cpu
from bench.ceiling import rabbitmq_ceiling, redis_ceiling, sqlite_ceiling, transport_latency
from bench.report import render

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
PEERS = {
    "celery": ["celery", "celery-solo"],
    "dramatiq": ["dramatiq"],
    "huey": ["huey"],
    "rq": ["rq"],
}
PEER_PACKAGES = ["celery[redis]", "dramatiq[redis,rabbitmq]", "huey", "rq", "redis"]
AMQP_PEERS = {"celery", "dramatiq"}  # Huey and RQ have no AMQP broker


def peers_python(venv: Path) -> str:
    """Return the peers' interpreter, creating their environment on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating the peers' environment in {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import celery, dramatiq, huey, rq, redis, pika"], capture_output=True
    )
    if probe.returncode != 0:
        print("installing the peers: " + " ".join(PEER_PACKAGES), file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return str(python)


@contextlib.contextmanager
def redis_for_run(url: str | None, folder: Path) -> Iterator[str]:
    """Yield a Redis URL: the one given, or a server started here and stopped after."""
    if url is not None:
        yield url
        return
    from tests.servers import RedisServer, free_port

    server = RedisServer(free_port(), folder, appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def rabbitmq_for_run(choice: str) -> Iterator[str | None]:
    """Yield the URL of a RabbitMQ node started here for ``--broker rabbitmq``, else None.

    The node and its epmd are the tests' (:func:`tests.servers.rabbitmq_server`),
    stopped by PID when the block ends, whatever ends it.
    """
    if choice != "rabbitmq":
        yield None
        return
    from tests.servers import rabbitmq_server

    print("starting a RabbitMQ node on loopback", file=sys.stderr, flush=True)
    with rabbitmq_server() as server:
        yield server.url


def run_driver(
    python: str,
    system: str,
    broker: str,
    results: bool,
    workloads: str,
    opts: argparse.Namespace,
    result_url: str | None = None,
) -> dict[str, Any]:
    """Run :mod:`bench.driver` for one system and return its figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMESH_", "BENCH_"))}
    env.update(
        BENCH_BROKER=broker,
        BENCH_QUEUE=f"bench-{system}",
        BENCH_RESULTS="1" if results else "0",
        PYTHONPATH=str(ROOT),
    )
    if result_url:
        env["BENCH_RESULT_URL"] = result_url
    command = [
        python, "-m", "bench.driver", "--system", system, "--workloads", workloads,
        "--tasks", str(opts.tasks), "--single", str(opts.single),
        "--cpu-tasks", str(opts.cpu_tasks), "--burn-iterations", str(opts.burn_iterations),
        "--rate", str(opts.rate), "--latency-seconds", str(opts.latency_seconds),
        "--concurrency", str(opts.concurrency), "--log-dir", str(opts.log_dir),
    ]  # fmt: skip
    label = f"{system} results={'on' if results else 'off'} {workloads}"
    print(f"running {label}", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"system": system, "error": done.stderr.strip().splitlines()[-1:]}
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def machine() -> dict[str, Any]:
    """Describe this machine for the report."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def taskmesh_broker(choice: str, redis_url: str, folder: Path, rabbitmq_url: str | None) -> str:
    """Turn ``--broker`` into taskmesh's broker URL."""
    if choice == "sqlite":
        return f"sqlite:///{folder}/bench.db"
    if choice == "redis":
        return redis_url
    if choice == "rabbitmq" and rabbitmq_url:
        return rabbitmq_url
    return choice


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark taskmesh against its peers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker", default="sqlite", help="sqlite, redis, rabbitmq or a URL [sqlite]"
    )
    parser.add_argument("--redis", default=None, help="Redis URL for the peers [start one]")
    parser.add_argument("--peers", default="", help="comma-separated, or 'all' [none]")
    parser.add_argument("--peers-venv", type=Path, default=Path("/tmp/bench-peers"))
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per drain [20000]")
    parser.add_argument("--single", type=int, default=5000, help="single delay() calls [5000]")
    parser.add_argument("--cpu-tasks", type=int, default=5000, help="CPU tasks per drain [5000]")
    parser.add_argument("--rate", type=float, default=200.0, help="latency send rate [200]/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--taskmesh",
        default="taskmesh",
        help="taskmesh variants: taskmesh, taskmesh-prefetch4, taskmesh-threads [taskmesh]",
    )
    parser.add_argument("--json", type=Path, default=None, help="[bench/results/<time>.json]")
    parser.add_argument("--skip", default="", help="workloads to skip: enqueue,drain,cpu,latency")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run everything and print the report."""
    opts = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workloads = ",".join(
        w for w in ("enqueue", "drain", "cpu", "latency") if w not in opts.skip.split(",")
    )
    peers = list(PEERS) if opts.peers == "all" else [p for p in opts.peers.split(",") if p]
    on_amqp = opts.broker == "rabbitmq" or opts.broker.startswith("amqp")
    if on_amqp and set(peers) - AMQP_PEERS:
        left_out = ", ".join(sorted(set(peers) - AMQP_PEERS))
        print(f"left out on RabbitMQ (no AMQP broker): {left_out}", file=sys.stderr)
        peers = [p for p in peers if p in AMQP_PEERS]
    peer_python = peers_python(opts.peers_venv) if peers else ""
    redis_given = opts.redis or (opts.broker if opts.broker.startswith("redis://") else None)
    opts.burn_iterations, cpu_seconds = cpu.calibrate()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as folder_name:
        folder = Path(folder_name)
        opts.log_dir = folder
        with (
            redis_for_run(redis_given, folder) as redis_url,
            rabbitmq_for_run(opts.broker) as rabbitmq_url,
        ):
            broker = taskmesh_broker(opts.broker, redis_url, folder, rabbitmq_url)
            # On RabbitMQ (a broker only) the peers share it, and every system
            # stores results in the run's Redis; elsewhere the peers use Redis
            # for both and taskmesh its broker.
            peer_url = broker if on_amqp else redis_url
            result_url = redis_url if on_amqp else None
            report: dict[str, Any] = {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": " ".join(["python -m bench.run", *(argv or sys.argv[1:])]),
                "machine": machine(),
                "taskmesh_broker": broker.split("://")[0],
                "result_store": "redis" if result_url else "the broker",
                "tasks": opts.tasks,
                "cpu_task_seconds": cpu_seconds,
                "cpu_limit": opts.concurrency / cpu_seconds,
                "concurrency": opts.concurrency,
                "ceiling": {},
                "systems": [],
            }
            if (peers and not on_amqp) or broker.startswith("redis"):
                report["ceiling"].update(redis_ceiling(redis_url))
            if on_amqp:
                report["ceiling"].update(rabbitmq_ceiling(broker))
            if broker.startswith("sqlite"):
                report["ceiling"].update(sqlite_ceiling())
            report["ceiling"].update(transport_latency(broker))
            runs: list[tuple[str, str, str]] = [
                (sys.executable, name, broker) for name in opts.taskmesh.split(",")
            ]
            runs += [(peer_python, name, peer_url) for peer in peers for name in PEERS[peer]]
            for python, name, url in runs:
                off = run_driver(python, name, url, False, workloads, opts, result_url)
                on = run_driver(python, name, url, True, "drain", opts, result_url)
                off["broker"] = url.split("://")[0]
                off["drain_noop_results"] = on.get("drain_noop")
                if "error" in on:
                    off.setdefault("error", on["error"])
                report["systems"].append(off)
    text = render(report)
    print(text)
    target = opts.json or ROOT / "bench" / "results" / f"{report['when'].replace(':', '')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {target}")


if __name__ == "__main__":
    main()
