"""The kombu bridge on kombu's memory transport, real Redis and real RabbitMQ (issue #5).

The contract suite runs on each bridged transport. Where AMQP is underneath,
``size`` cannot see unacked messages and a lease ends with its channel, as
for the native RabbitMQ adapter.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from taskmesh.worker.consumer import Consumer, ExecutorMode
from tests.apps.scenario import create_app
from tests.integration.contract import ConnectionLeaseContract
from tests.servers import RabbitMQServer, RedisServer


class BridgeContract(ConnectionLeaseContract):
    """The contract on the bridge: leases and counts are kombu's, as on AMQP."""


class TestKombuMemoryTransport(BridgeContract):
    @pytest.fixture
    def transport_url(self) -> str:
        return "kombu+memory://"


@pytest.mark.redis
class TestKombuRedisTransport(BridgeContract):
    @pytest.fixture
    def transport_url(self, redis: RedisServer) -> str:
        return f"kombu+{redis.url}?key_prefix=t{uuid.uuid4().hex[:10]}:"


@pytest.mark.rabbitmq
class TestKombuAMQPTransport(BridgeContract):
    @pytest.fixture
    def transport_url(self, rabbitmq: RabbitMQServer) -> str:
        return "kombu+" + rabbitmq.url


def test_threads_worker_runs_tasks_retries_and_countdowns_on_kombu_memory() -> None:
    # kombu's memory transport lives in one process: the worker runs here, on threads.
    queue = f"q-{uuid.uuid4().hex[:12]}"
    app = create_app(
        broker="kombu+memory://",
        backend=f"memory://kombu-{queue}",
        task_default_queue=queue,
    )
    consumer = Consumer(app, [queue], concurrency=2, mode=ExecutorMode.THREADS, hostname="t@test")
    thread = threading.Thread(target=consumer.run, name="test-consumer", daemon=True)
    thread.start()
    try:
        results = [app.send_task("scenario.add", [i, i]) for i in range(20)]
        assert [result.get(timeout=30) for result in results] == [2 * i for i in range(20)]
        flaky = app.send_task("scenario.flaky", [2])
        assert flaky.get(timeout=30) == 2
        assert flaky.retries == 2
        sent = time.time()
        assert app.send_task("scenario.started_at", ["eta"], countdown=1).get(timeout=30) >= (
            sent + 1
        )
    finally:
        consumer.stop()
        thread.join(30)
        app.close()
    assert not thread.is_alive()
