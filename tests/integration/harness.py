"""Real worker processes for integration tests, and helpers to wait on them.

A :class:`Scenario` ties one test to one broker URL, one result-store URL and a
queue name of its own, so tests never see each other's messages even on a
shared server. Workers are ``python -m taskmesh`` subprocesses stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskmesh import TaskMesh
from tests.apps.scenario import create_app

ROOT = Path(__file__).resolve().parents[2]


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class WorkerProcess:
    """One ``taskmesh worker`` subprocess."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """PIDs of the worker's child processes (prefork)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for a graceful exit; SIGKILL if it does not come."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the worker and its children."""
        for pid in [*self.children(), self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Scenario:
    """One test's broker, store, queue and workers."""

    broker_url: str
    backend_url: str
    folder: Path
    queue: str = field(default_factory=lambda: f"q-{uuid.uuid4().hex[:12]}")
    settings: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    _app: TaskMesh | None = None

    @property
    def app(self) -> TaskMesh:
        """A producer app in the test process, configured like the workers."""
        if self._app is None:
            self._app = create_app(
                broker=self.broker_url,
                backend=self.backend_url,
                task_default_queue=self.queue,
                **self.settings,
            )
        return self._app

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMESH_")}
        env.update(
            TASKMESH_BROKER_URL=self.broker_url,
            TASKMESH_RESULT_BACKEND=self.backend_url,
            TASKMESH_TASK_DEFAULT_QUEUE=self.queue,
            SCENARIO_DIR=str(self.folder),
            PYTHONPATH=str(ROOT),
        )
        for name, value in self.settings.items():
            env[f"TASKMESH_{name.upper()}"] = str(value)
        env.update(extra)
        return env

    def start_worker(
        self, concurrency: int = 2, pool: str = "prefork", *args: str, **env: str
    ) -> WorkerProcess:
        """Start a worker and wait until its consumers are up."""
        log = self.folder / f"worker-{len(self.workers)}.log"
        command = [
            sys.executable,
            "-m",
            "taskmesh",
            "-A",
            "tests.apps.scenario",
            "worker",
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-l",
            "debug",
            *args,
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env(**env), cwd=ROOT
            )
        worker = WorkerProcess(process, log)
        self.workers.append(worker)
        wait_until(
            lambda: "worker ready" in worker.output() or process.poll() is not None,
            20,
            "the worker to start",
        )
        if process.poll() is not None:
            raise AssertionError(f"worker exited at start:\n{worker.output()}")
        return worker

    def lines(self, kind: str) -> list[str]:
        """Lines the scenario tasks recorded under ``kind``."""
        path = self.folder / f"{kind}.log"
        return path.read_text().splitlines() if path.exists() else []

    def dead_letters(self, limit: int = 100) -> list[tuple[bytes, dict[str, str]]]:
        """Take up to ``limit`` messages from the queue's dead-letter queue."""
        from taskmesh.transport import dead_letter_queue

        with self.app.connect_broker() as transport:
            found = []
            deliveries = transport.receive([dead_letter_queue(self.queue)], limit, 1.0)
            for delivery in deliveries:
                found.append((delivery.body, dict(delivery.headers)))
                transport.ack(delivery)
            return found

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill()
        if self._app is not None:
            self._app.close()


def scenario_context(broker_url: str, backend_url: str, folder: Path) -> Iterator[Scenario]:
    """Yield a scenario and stop its workers afterwards, also on failure."""
    scenario = Scenario(broker_url, backend_url, folder)
    try:
        yield scenario
    finally:
        scenario.close()
