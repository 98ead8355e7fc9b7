"""The consumer loop's bookkeeping, on the memory broker, in one process.

A transport wrapper fails chosen calls the way a broker outage does; the rest
is the real consumer with real executor threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from taskmesh import TaskMesh
from taskmesh.brokers.memory import MemoryTransport
from taskmesh.errors import ConnectionLost
from taskmesh.transport import Delivery
from taskmesh.worker.consumer import Consumer, ExecutorMode

pytestmark = pytest.mark.timeout(30)


class AckOutage(MemoryTransport):
    """Fails the first ``failures`` ack batches, as a broker that went away."""

    failures = 2

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if AckOutage.failures > 0:
            AckOutage.failures -= 1
            raise ConnectionLost("broker went away", self.safe_url)
        super().ack_many(deliveries)


@pytest.fixture
def app() -> TaskMesh:
    name = uuid.uuid4().hex
    app = TaskMesh(
        "unit",
        broker=f"memory://{name}",
        backend=f"memory://{name}",
        worker_shutdown_timeout=5,
    )

    @app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.fixture
def consumer(app: TaskMesh, monkeypatch: pytest.MonkeyPatch) -> Iterator[Consumer]:
    monkeypatch.setattr(app, "connect_broker", lambda: AckOutage(app.conf.broker_url))
    monkeypatch.setattr("taskmesh.worker.consumer._BACKOFF_START", 0.01)
    consumer = Consumer(app, ["default"], concurrency=2, mode=ExecutorMode.THREADS)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield consumer
    consumer.stop()
    thread.join(10)
    assert not thread.is_alive(), "the consumer did not stop"


def test_jobs_whose_ack_failed_are_acked_once_the_broker_is_back(
    app: TaskMesh, consumer: Consumer
) -> None:
    AckOutage.failures = 2
    results = [app.send_task("unit.add", [i, i]) for i in range(6)]
    assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6, 8, 10]
    deadline = time.monotonic() + 10
    while app.transport().size("default") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.transport().size("default") == 0, "a finished message was never acked"
    assert AckOutage.failures == 0


class GoneAway(MemoryTransport):
    """A broker that stops answering acks and requeues once ``gone`` is set."""

    gone = threading.Event()

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if GoneAway.gone.is_set():
            raise ConnectionLost("broker went away", self.safe_url)
        super().ack_many(deliveries)

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        if GoneAway.gone.is_set():
            raise ConnectionLost("broker went away", self.safe_url)
        super().requeue(delivery, delay)


def test_stopping_while_the_broker_is_away_ends_within_the_timeout_without_crashing(
    app: TaskMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    GoneAway.gone.clear()
    app.conf.worker_shutdown_timeout = 1
    monkeypatch.setattr(app, "connect_broker", lambda: GoneAway(app.conf.broker_url))
    consumer = Consumer(app, ["default"], concurrency=1, mode=ExecutorMode.THREADS)
    results = [app.send_task("unit.add", [i, i]) for i in range(3)]
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(consumer.run()), daemon=True)
    thread.start()
    assert results[0].get(timeout=10) == 0
    GoneAway.gone.set()
    consumer.stop()
    started = time.monotonic()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert status == [0], "the consumer reported a crash"
