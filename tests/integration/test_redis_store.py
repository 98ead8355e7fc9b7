"""The Redis result store on a real redis-server: the contract, then its own promises."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis as redis_py

from taskmesh import TaskMesh
from taskmesh.errors import ResultError
from taskmesh.result import State, TaskRecord, connect_store, task_key
from tests.integration.contract import ResultStoreContract
from tests.integration.harness import wait_until
from tests.servers import LOOPBACK, RedisServer, free_port, prefixed

pytestmark = pytest.mark.redis


class TestRedisResultStore(ResultStoreContract):
    @pytest.fixture
    def store_url(self, redis: RedisServer) -> str:
        return prefixed(redis)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, to crash or to count its commands."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def command_calls(server: RedisServer, command: str) -> int:
    """How many times the server ran ``command`` since it started."""
    with closing(redis_py.Redis(host=LOOPBACK, port=server.port)) as client:
        stats = client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


def test_wait_sleeps_on_the_subscription_instead_of_polling(own_redis: RedisServer) -> None:
    store = connect_store(prefixed(own_redis))
    writer = connect_store(prefixed(own_redis))
    try:
        before = command_calls(own_redis, "get")
        assert store.wait("idle", 3.0, lambda value: True) is None
        # One read after subscribing; no read while the wait sleeps.
        assert command_calls(own_redis, "get") - before <= 2
    finally:
        store.close()
        writer.close()


def test_result_expires_is_the_records_lifetime(redis: RedisServer) -> None:
    url = prefixed(redis)
    app = TaskMesh("expiry", broker="memory://", backend=url, result_expires=1.5)
    try:
        result = app.AsyncResult("some-task")
        store = app.result_store()
        store.set(task_key(result.id), b"{}", expires_seconds=app.conf.result_expires)
        with closing(redis_py.Redis(host=LOOPBACK, port=redis.port)) as client:
            key_prefix = url.split("key_prefix=")[1]
            ttl_ms = client.pttl(f"{key_prefix}{task_key(result.id)}")
        assert 0 < ttl_ms <= 1500
    finally:
        app.close()


def test_forget_removes_the_record(redis: RedisServer) -> None:
    app = TaskMesh("forget", broker="memory://", backend=prefixed(redis), task_always_eager=True)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    try:
        result = double.delay(21)
        assert result.get(timeout=5) == 42
        result.forget()
        assert result.state is State.PENDING
    finally:
        app.close()


def test_get_wakes_the_instant_a_worker_stores_the_result(redis: RedisServer) -> None:
    url = prefixed(redis)
    app = TaskMesh("wake", broker="memory://", backend=url)
    writer = connect_store(url)
    try:
        record = TaskRecord("t-1", State.SUCCESS, result="done")
        timer = threading.Timer(
            0.5,
            lambda: writer.set(task_key("t-1"), record.to_bytes(), expires_seconds=60, notify=True),
        )
        started = time.monotonic()
        timer.start()
        assert app.AsyncResult("t-1").get(timeout=30) == "done"
        timer.join()
        assert time.monotonic() - started < 10
    finally:
        writer.close()
        app.close()


def test_store_survives_a_crash_and_waiters_keep_waiting(own_redis: RedisServer) -> None:
    url = prefixed(own_redis, "retry_timeout=30")
    store = connect_store(url)
    writer = connect_store(url)
    try:
        store.set("kept", b"by the AOF", expires_seconds=60)
        found: list[bytes | None] = []
        waiter = threading.Thread(
            target=lambda: found.append(store.wait("late", 60.0, lambda v: v == b"done"))
        )
        waiter.start()
        channel = url.split("key_prefix=")[1].split("&")[0] + "notify:late"
        with closing(redis_py.Redis(host=LOOPBACK, port=own_redis.port)) as client:
            wait_until(
                lambda: client.pubsub_numsub(channel)[0][1] == 1, 20, "the waiter to subscribe"
            )
        own_redis.kill()
        own_redis.start()
        writer.set("late", b"done", expires_seconds=60, notify=True)
        waiter.join(60)
        assert found == [b"done"]
        assert store.get("kept") == b"by the AOF"
    finally:
        store.close()
        writer.close()


def test_unreachable_store_raises_result_error_without_the_password() -> None:
    store = connect_store(f"redis://:secret@{LOOPBACK}:{free_port()}/0?retry_timeout=0.5")
    try:
        with pytest.raises(ResultError) as caught:
            store.get("anything")
        assert "secret" not in str(caught.value)
    finally:
        store.close()


def test_wait_on_an_unreachable_store_gives_up_within_its_own_timeout() -> None:
    # Found by a chaos run: get(timeout=5) used to take the full retry_timeout.
    store = connect_store(f"redis://{LOOPBACK}:{free_port()}/0?retry_timeout=30")
    with closing(store):
        started = time.monotonic()
        with pytest.raises(ResultError, match="unreachable"):
            store.wait("task:nowhere", 1.0, lambda value: True)
        assert time.monotonic() - started < 5
