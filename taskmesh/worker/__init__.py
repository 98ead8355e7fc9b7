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
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskmesh.errors import BrokerError, ConfigurationError, ResultError
from taskmesh.result import connect_store
from taskmesh.urls import mask_url
from taskmesh.worker.consumer import Consumer, ExecutorMode, install_stop_signals
from taskmesh.worker.pool import PreforkSupervisor

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

_START_LOG_EVERY = 60.0


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
        self._checked = False

    def check_servers(self) -> None:
        """Open the broker and the result store once, declaring the queues.

        Raises:
            ConfigurationError: A URL, option or driver is wrong.
            BrokerError: The broker cannot be reached.
            ResultError: The result store cannot be reached.
        """
        with self.app.connect_broker() as transport:
            for name in self.queues:
                transport.declare(name)
        store = connect_store(self.app.result_url)
        try:
            store.get("taskmesh:start-check")
        finally:
            store.close()

    def wait_for_servers(self) -> None:
        """Check the servers, waiting out an outage as a running worker would.

        A wrong URL or a missing driver fails at once, in the parent, rather
        than in N children restarting for ever. An unreachable server is waited
        for (a worker started with the machine may come up before its broker),
        with one log line a minute.

        Raises:
            ConfigurationError: A URL, option or driver is wrong.
        """
        pause, logged = 0.2, -_START_LOG_EVERY
        while True:
            try:
                self.check_servers()
            except (BrokerError, ResultError) as exc:
                now = time.monotonic()
                if now - logged >= _START_LOG_EVERY:
                    logger.warning("servers unreachable at start, waiting error=%s", exc)
                    logged = now
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if logged >= 0:
                logger.warning("servers reachable, starting")
            self._checked = True
            return

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the process exit status.

        Raises:
            ConfigurationError: A URL, option or driver is wrong.
        """
        if not self._checked:
            self.wait_for_servers()
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
