"""The worker: runs tasks from the broker in a pool of processes or threads.

Modules: ``execute`` (one task run), ``consumer`` (one process's receive loop),
``pool`` (the prefork supervisor). :class:`Worker` puts them together as the
``taskmesh worker`` command does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskmesh.errors import ConfigurationError
from taskmesh.result import connect_store
from taskmesh.urls import mask_url
from taskmesh.worker.consumer import Consumer, ExecutorMode, install_stop_signals
from taskmesh.worker.pool import PreforkSupervisor

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


class Worker:
    """Runs tasks of ``app`` from ``queues`` until told to stop.

    Args:
        app: The app; finalized when the worker starts.
        queues: Queues to consume, in priority order; the default queue if empty.
        concurrency: Processes (prefork) or threads; the CPU count if ``None``.
        pool: ``prefork`` or ``threads``.
        hostname: The worker's name; ``pid@host`` by default.
    """

    def __init__(
        self,
        app: TaskMesh,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: str | None = None,
        hostname: str | None = None,
    ) -> None:
        self.app = app
        app.finalize()
        conf_queues = app.conf.worker_queues
        self.queues = list(queues or conf_queues or [app.conf.task_default_queue])
        conf_concurrency = app.conf.worker_concurrency
        self.concurrency = int(concurrency or conf_concurrency or os.cpu_count() or 1)
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be 1 or more, got {self.concurrency}.")
        self.pool = pool or app.conf.worker_pool
        if self.pool not in ("prefork", "threads"):
            raise ConfigurationError(f"pool must be 'prefork' or 'threads', got {self.pool!r}.")
        self.hostname = hostname or f"{os.getpid()}@{socket.gethostname()}"
        # Fail on a wrong URL, a missing driver or an unreachable broker now,
        # in the parent, rather than in N children that would restart for ever.
        with app.connect_broker() as transport:
            for name in self.queues:
                transport.declare(name)
        store = connect_store(app.result_url)
        try:
            store.get("taskmesh:start-check")
        finally:
            store.close()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the process exit status."""
        logger.info(
            "worker ready hostname=%s pool=%s concurrency=%d queues=%s broker=%s results=%s",
            self.hostname,
            self.pool,
            self.concurrency,
            ",".join(self.queues),
            mask_url(self.app.conf.broker_url),
            mask_url(self.app.result_url),
        )
        if self.pool == "threads":
            return self._run_threads()
        return PreforkSupervisor(self.concurrency, self._child_main).run()

    def _child_main(self, index: int) -> None:
        consumer = Consumer(
            self.app,
            self.queues,
            mode=ExecutorMode.MAIN,
            hostname=f"{self.hostname}/{index}",
        )
        signal.signal(signal.SIGTERM, lambda signum, frame: consumer.stop())
        sys.exit(consumer.run())

    def _run_threads(self) -> int:
        consumer = Consumer(
            self.app,
            self.queues,
            concurrency=self.concurrency,
            mode=ExecutorMode.THREADS,
            hostname=self.hostname,
        )
        if threading.current_thread() is threading.main_thread():
            install_stop_signals(consumer, lambda: os._exit(1))
        status = consumer.run()
        logger.info("worker stopped")
        return status
