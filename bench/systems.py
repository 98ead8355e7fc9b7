"""How the driver talks to each system: enqueue one, enqueue many, purge, start workers.

Each :class:`System` imports its framework only when built, so this module
loads in either environment (taskmesh's, or the peers' with Celery, Dramatiq,
Huey and RQ). Worker commands are each system's own CLI, in the configuration
that suits a 2-core machine best as far as its documentation tells.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.apps import settings

__all__ = ["SYSTEMS", "System"]

_CHUNK = 1000


class System:
    """One task system, configured from ``BENCH_*`` variables already set."""

    name = ""
    bulk_kind = "n/a"
    worker_env: dict[str, str] = {}  # noqa: RUF012 - read-only, replaced by subclasses

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        """Send one task, the way a user's code sends one."""
        raise NotImplementedError

    def enqueue_bulk(self, task: str, args: Sequence[tuple[Any, ...]]) -> bool:
        """Send many tasks at once; return ``False`` if the system has no bulk send."""
        return False

    def preload(self, task: str, args: Sequence[tuple[Any, ...]]) -> None:
        """Fill the queue the fastest way the system offers (not timed)."""
        if not self.enqueue_bulk(task, args):
            for one in args:
                self.enqueue(task, one)

    def purge(self) -> None:
        """Empty the benchmark queue."""
        raise NotImplementedError

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        """The worker processes to start, one command each."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class TaskmeshSystem(System):
    """taskmesh, prefork, results per ``BENCH_RESULTS``."""

    name = "taskmesh"
    bulk_kind = "app.publish, 1,000 envelopes per call"
    pool = "prefork"

    def __init__(self) -> None:
        from bench.apps import taskmesh_app

        self.module = taskmesh_app
        self.app = taskmesh_app.app
        self.tasks = {"noop": taskmesh_app.noop, "burn": taskmesh_app.burn}
        self.tasks["stamp"] = taskmesh_app.stamp

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        self.tasks[task].delay(*args)

    def enqueue_bulk(self, task: str, args: Sequence[tuple[Any, ...]]) -> bool:
        name = self.tasks[task].name
        build = self.app.build_envelope
        for start in range(0, len(args), _CHUNK):
            self.app.publish([build(name, one) for one in args[start : start + _CHUNK]])
        return True

    def purge(self) -> None:
        with self.app.connect_broker() as transport:
            transport.purge(self.app.conf.task_default_queue)

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        return [
            [sys.executable, "-m", "taskmesh", "-A", "bench.apps.taskmesh_app", "worker",
             "-c", str(concurrency), "-P", self.pool, "-l", "warning"],
        ]  # fmt: skip

    def close(self) -> None:
        self.app.close()


class TaskmeshThreads(TaskmeshSystem):
    """taskmesh with the threads pool in one process."""

    name = "taskmesh-threads"
    pool = "threads"


class TaskmeshShallow(TaskmeshSystem):
    """taskmesh prefork with the old fixed prefetch of 4 per slot.

    Until commit 32b45dc the multiplier defaulted to 4 and the window did not
    follow task time; this variant shows what the adaptive window of up to 16
    gains over it.
    """

    name = "taskmesh-prefetch4"
    worker_env = {"TASKMESH_WORKER_PREFETCH_MULTIPLIER": "4"}  # noqa: RUF012


class CelerySystem(System):
    """Celery prefork, one child per core (its default pool)."""

    name = "celery"
    bulk_kind = "group().apply_async()"

    def __init__(self) -> None:
        from bench.apps import celery_app

        self.module = celery_app
        self.app = celery_app.app
        self.tasks = {"noop": celery_app.noop, "burn": celery_app.burn, "stamp": celery_app.stamp}

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        self.tasks[task].delay(*args)

    def enqueue_bulk(self, task: str, args: Sequence[tuple[Any, ...]]) -> bool:
        from celery import group

        signature = self.tasks[task].s
        for start in range(0, len(args), _CHUNK):
            group(signature(*one) for one in args[start : start + _CHUNK]).apply_async()
        return True

    def purge(self) -> None:
        if self.app.conf.broker_url.startswith("amqp"):
            # Declares the queue first: purging a missing one closes the channel.
            self.app.control.purge()
            return
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(self.app.conf.task_default_queue)

    def _command(self, *extra: str) -> list[str]:
        return [
            _tool("celery"), "-A", "bench.apps.celery_app", "worker", "-l", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-Q", self.app.conf.task_default_queue, *extra,
        ]  # fmt: skip

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        return [self._command("-P", "prefork", "-c", str(concurrency))]


class CelerySolo(CelerySystem):
    """Celery with one solo-pool worker process per core."""

    name = "celery-solo"

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        return [self._command("-P", "solo", "-n", f"w{i}@%h") for i in range(concurrency)]


class DramatiqSystem(System):
    """Dramatiq, one process per core with two threads each."""

    name = "dramatiq"

    def __init__(self) -> None:
        from bench.apps import dramatiq_app

        self.module = dramatiq_app
        self.tasks = {
            "noop": dramatiq_app.noop,
            "burn": dramatiq_app.burn,
            "stamp": dramatiq_app.stamp,
        }

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        self.tasks[task].send(*args)

    def purge(self) -> None:
        self.module.broker.flush_all()

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        _, queue, _ = settings()
        return [
            [_tool("dramatiq"), "bench.apps.dramatiq_app", "--processes", str(concurrency),
             "--threads", "2", "--queues", queue],
        ]  # fmt: skip


class HueySystem(System):
    """Huey with one worker process per core, blocking reads from Redis."""

    name = "huey"

    def __init__(self) -> None:
        from bench.apps import huey_app

        self.module = huey_app
        self.tasks: dict[str, Callable[..., Any]] = {
            "noop": huey_app.noop,
            "burn": huey_app.burn,
            "stamp": huey_app.stamp,
        }

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        self.tasks[task](*args)

    def purge(self) -> None:
        self.module.huey.flush()

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        return [
            [_tool("huey_consumer"), "bench.apps.huey_app.huey", "-k", "process",
             "-w", str(concurrency), "-C", "-q"],
        ]  # fmt: skip


class RQSystem(System):
    """RQ's worker pool of non-forking workers, one per core."""

    name = "rq"
    bulk_kind = "Queue.enqueue_many (one pipeline)"

    def __init__(self) -> None:
        from redis import Redis
        from rq import Queue

        from bench.apps import rq_app

        url, queue, results = settings()
        self.url = url
        self.connection = Redis.from_url(url)
        self.queue = Queue(queue, connection=self.connection)
        self.result_ttl = 500 if results else 0
        self.tasks = {"noop": rq_app.noop, "burn": rq_app.burn, "stamp": rq_app.stamp}

    def enqueue(self, task: str, args: tuple[Any, ...]) -> None:
        self.queue.enqueue(self.tasks[task], *args, result_ttl=self.result_ttl)

    def enqueue_bulk(self, task: str, args: Sequence[tuple[Any, ...]]) -> bool:
        from rq import Queue

        fn = self.tasks[task]
        for start in range(0, len(args), _CHUNK):
            jobs = [
                Queue.prepare_data(fn, args=one, result_ttl=self.result_ttl)
                for one in args[start : start + _CHUNK]
            ]
            self.queue.enqueue_many(jobs)
        return True

    def purge(self) -> None:
        self.queue.empty()

    def worker_commands(self, concurrency: int) -> list[list[str]]:
        return [
            [_tool("rq"), "worker-pool", "-n", str(concurrency), "-u", self.url,
             "-w", "rq.worker.SimpleWorker", "-q", self.queue.name],
        ]  # fmt: skip

    def close(self) -> None:
        self.connection.close()


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (
        TaskmeshSystem,
        TaskmeshThreads,
        TaskmeshShallow,
        CelerySystem,
        CelerySolo,
        DramatiqSystem,
        HueySystem,
        RQSystem,
    )
}
