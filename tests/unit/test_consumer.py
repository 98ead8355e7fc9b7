"""The consumer loop's bookkeeping, on the memory broker, in one process.

A transport wrapper fails chosen calls the way a broker outage does; the rest
is the real consumer with real executor threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest

from taskmesh import TaskMesh
from taskmesh.brokers.memory import MemoryTransport
from taskmesh.errors import ConnectionLost
from taskmesh.transport import Delivery
from taskmesh.worker.consumer import Consumer, ExecutorMode, Job
from taskmesh.worker.execute import Action, Verdict

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


class Counting(MemoryTransport):
    """Records how many messages the consumer held at each receive."""

    held_after_first_ack: ClassVar[list[int]] = []
    asked: ClassVar[list[int]] = []

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._count = 0
        self._acked_once = False

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        Counting.asked.append(max_messages)
        deliveries = super().receive(queues, max_messages, timeout)
        self._count += len(deliveries)
        if self._acked_once:
            Counting.held_after_first_ack.append(self._count)
        return deliveries

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        super().ack_many(deliveries)
        self._count -= len(deliveries)
        self._acked_once = True


@contextmanager
def consuming(app: TaskMesh) -> Iterator[Consumer]:
    """A one-executor consumer running in a thread, stopped on the way out."""
    consumer = Consumer(app, ["default"], concurrency=1, mode=ExecutorMode.THREADS)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(10)
    assert not thread.is_alive(), "the consumer did not stop"


def widen(app: TaskMesh, consumer: Consumer) -> int:
    """Run fast tasks until the window is wide; return its size."""
    warm = [app.send_task("unit.add", [i, i]) for i in range(100)]
    assert [r.get(timeout=10) for r in warm] == [2 * i for i in range(100)]
    assert consumer.capacity > 2
    return consumer.capacity


def run_counting(app: TaskMesh, monkeypatch: pytest.MonkeyPatch, results: list[Any]) -> None:
    Counting.held_after_first_ack, Counting.asked = [], []
    monkeypatch.setattr(app, "connect_broker", lambda: Counting(app.conf.broker_url))
    with consuming(app):
        for result in results:
            result.get(timeout=20)


def test_fast_tasks_widen_the_prefetch_window_to_the_multiplier(
    app: TaskMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [app.send_task("unit.add", [i, i]) for i in range(300)]
    run_counting(app, monkeypatch, results)
    assert Counting.asked[0] == 2, "a new consumer holds two per executor"
    assert max(Counting.asked) > 2, "fast tasks never widened the window"
    assert max(Counting.asked) <= app.conf.worker_prefetch_multiplier


def test_slow_tasks_leave_nothing_waiting_behind_the_running_one(
    app: TaskMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="unit.nap")
    def nap() -> None:
        time.sleep(0.15)  # the workload: slower than the 0.1 s of waiting work

    results = [app.send_task("unit.nap") for _ in range(4)]
    run_counting(app, monkeypatch, results)
    assert Counting.held_after_first_ack, "nothing was received after the first ack"
    assert max(Counting.held_after_first_ack) <= 1, Counting.held_after_first_ack


def test_the_window_follows_the_running_average_of_task_time(app: TaskMesh) -> None:
    consumer = Consumer(app, ["default"], concurrency=4, mode=ExecutorMode.THREADS)
    assert (consumer.capacity, consumer.max_capacity) == (8, 64)

    def finish(seconds: float, count: int) -> None:
        delivery = Delivery("default", b"", {}, 1, None)
        job = Job(delivery, app.codec().decode(app.encode(app.build_envelope("x")).body), add)
        job.seconds = seconds
        consumer._resize([(job, Verdict(Action.ACK))] * count)

    add = app.get_task("unit.add")
    finish(0.0001, 1)
    assert consumer.capacity == 64
    finish(0.030, 30)  # 3 waiting per executor fit in 0.1 s
    assert consumer.capacity == 4 + 4 * 3
    finish(5.0, 1)
    assert consumer.capacity == 4, "a slow task leaves only the running ones"


def test_a_result_write_that_fails_gives_the_messages_back_to_run_again(
    app: TaskMesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from taskmesh.backends.memory import MemoryResultStore
    from taskmesh.errors import ResultError

    failures = [2]

    class FailingStore(MemoryResultStore):
        def set_many(
            self, items: Sequence[tuple[str, bytes, bool]], *, expires_seconds: float
        ) -> None:
            if failures[0] > 0 and threading.current_thread().name == "taskmesh-results":
                failures[0] -= 1
                raise ResultError("store went away", self.safe_url)
            super().set_many(items, expires_seconds=expires_seconds)

    stores: dict[int, FailingStore] = {}

    def result_store() -> FailingStore:
        return stores.setdefault(threading.get_ident(), FailingStore(app.result_url))

    monkeypatch.setattr(app, "result_store", result_store)
    results = [app.send_task("unit.add", [i, i]) for i in range(20)]
    run_counting(app, monkeypatch, results)
    assert [r.get(timeout=1) for r in results] == [2 * i for i in range(20)]
    assert failures == [0], "the writer thread never wrote a handed-over batch"
    assert app.transport().size("default") == 0, "a message was lost or left unacked"
    assert "task outcomes not stored, messages given back" in caplog.text


def test_a_finished_result_is_stored_while_a_slow_task_runs_behind_it(app: TaskMesh) -> None:
    release = threading.Event()

    @app.task(name="unit.hold")
    def hold() -> bool:
        return release.wait(20)  # the workload: runs until the test lets it go

    with consuming(app) as consumer:
        try:
            # Fast tasks first, so the window is wide and results could be held.
            widen(app, consumer)
            fast = app.build_envelope("unit.add", [20, 22])
            slow = app.build_envelope("unit.hold")
            app.publish([fast, slow])
            # Both arrive in one receive; the fast one's result must not wait
            # in the executor for the slow one to end.
            assert app.AsyncResult(fast.id).get(timeout=10) == 42
            assert not app.AsyncResult(slow.id).ready()
        finally:
            release.set()
    assert app.AsyncResult(slow.id).get(timeout=1) is True


class Requeues(MemoryTransport):
    """Counts the messages the consumer gives back."""

    given_back = 0

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        Requeues.given_back += 1
        super().requeue(delivery, delay)


def test_a_window_that_shrinks_gives_back_what_it_took_while_tasks_were_fast(
    app: TaskMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="unit.nap")
    def nap() -> None:
        time.sleep(0.3)  # the workload: slower than the 0.1 s of waiting work

    Requeues.given_back = 0
    monkeypatch.setattr(app, "connect_broker", lambda: Requeues(app.conf.broker_url))
    with consuming(app) as consumer:
        wide = widen(app, consumer)
        naps = [app.build_envelope("unit.nap") for _ in range(6)]
        app.publish(naps)
        for envelope in naps:
            app.AsyncResult(envelope.id).get(timeout=20)
    assert wide > 2
    assert consumer.capacity == 1
    assert Requeues.given_back >= 1, "the naps taken while the window was wide were kept"
