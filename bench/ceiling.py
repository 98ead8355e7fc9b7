"""The broker's own ceiling, measured in the same run as the systems.

For Redis: ``redis-benchmark`` for LPUSH and RPOP (its default 50 clients, and
one client), and redis-py on one connection, one round trip per push and
pipelined. For SQLite: the ``sqlite3`` module on one file, one committed
insert per transaction and 1,000 per transaction, with the pragmas the
taskmesh SQLite broker uses. For RabbitMQ: pika's ``BlockingConnection`` on
a durable queue with persistent messages, publishing with publisher confirms
(one round trip each) and without, consuming and acking with prefetch 1 and
100, and the publish-to-deliver latency. These are what the client libraries
can do with no task system around them.
"""

from __future__ import annotations

import csv
import io
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["rabbitmq_ceiling", "redis_ceiling", "sqlite_ceiling", "transport_latency"]


def _redis_benchmark(host: str, port: int, clients: int, requests: int) -> dict[str, float]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    output = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-c", str(clients), "-n", str(requests),
         "-t", "lpush,rpop", "--csv"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    rates = {}
    for row in csv.reader(io.StringIO(output)):
        if len(row) >= 2 and row[0] in ("LPUSH", "RPOP"):
            rates[row[0].lower()] = float(row[1])
    return rates


def redis_ceiling(url: str, count: int = 20000) -> dict[str, Any]:
    """Measure the Redis server at ``url`` with redis-benchmark and redis-py."""
    import redis

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    out: dict[str, Any] = {}
    for clients in (50, 1):
        for op, rate in _redis_benchmark(host, port, clients, count * 5).items():
            out[f"redis-benchmark {op} c={clients}"] = rate
    client = redis.Redis.from_url(url)
    key = f"bench:ceiling:{time.time_ns()}"
    try:
        client.ping()
        started = time.perf_counter()
        for _ in range(count):
            client.lpush(key, b"x" * 200)
        out["redis-py lpush, one round trip each"] = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(count):
            client.rpop(key)
        out["redis-py rpop, one round trip each"] = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(count // 1000):
            pipe = client.pipeline(transaction=False)
            for _ in range(1000):
                pipe.lpush(key, b"x" * 200)
            pipe.execute()
        out["redis-py lpush, pipelined by 1,000"] = count / (time.perf_counter() - started)
        out.update(_redis_latency(url, key + ":latency"))
    finally:
        client.delete(key)
        client.close()
    return out


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


def _paced(send: Callable[[bytes], None], count: int, rate: float) -> None:
    started = time.monotonic()
    for index in range(count):
        pause = started + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send(repr(time.time()).encode())


def _redis_latency(url: str, key: str, count: int = 1000, rate: float = 200.0) -> dict[str, Any]:
    """LPUSH from one connection, BRPOP on another, at ``rate``; the floor for latency."""
    import redis

    samples: list[float] = []
    receiver = redis.Redis.from_url(url)

    def receive() -> None:
        while len(samples) < count:
            reply = receiver.brpop([key], timeout=5)
            if reply is None:
                return
            samples.append(time.time() - float(reply[1]))

    thread = threading.Thread(target=receive)
    thread.start()
    sender = redis.Redis.from_url(url)
    try:
        _paced(lambda body: sender.lpush(key, body), count, rate)
        thread.join(30)
    finally:
        sender.delete(key)
        sender.close()
    receiver.close()
    if len(samples) < count:
        return {}
    p50, p99 = _percentiles(samples)
    return {
        "redis-py LPUSH to BRPOP latency, p50 ms": p50,
        "redis-py LPUSH to BRPOP latency, p99 ms": p99,
    }


def transport_latency(url: str, count: int = 1000, rate: float = 200.0) -> dict[str, Any]:
    """Publish to receive latency through taskmesh's transport alone, no worker."""
    from taskmesh.transport import Outgoing, connect

    queue = f"bench-latency-{time.time_ns()}"
    samples: list[float] = []
    consumer, producer = connect(url), connect(url)
    consumer.declare(queue)

    def receive() -> None:
        deadline = time.monotonic() + count / rate + 30
        while len(samples) < count and time.monotonic() < deadline:
            for delivery in consumer.receive([queue], 4, 0.5):
                samples.append(time.time() - float(delivery.body))
                consumer.ack(delivery)

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        _paced(lambda body: producer.publish(Outgoing(queue, body)), count, rate)
        thread.join(count / rate + 60)
    finally:
        producer.close()
    consumer.purge(queue)
    consumer.close()
    if len(samples) < count:
        return {}
    p50, p99 = _percentiles(samples)
    scheme = url.split("://")[0]
    return {
        f"taskmesh {scheme} transport alone, publish to receive, p50 ms": p50,
        f"taskmesh {scheme} transport alone, publish to receive, p99 ms": p99,
    }


def _pika_connection(url: str) -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(url))


def rabbitmq_ceiling(url: str, count: int = 20000, confirmed: int = 5000) -> dict[str, Any]:
    """Measure the RabbitMQ node at ``url`` with bare pika, one connection.

    Messages are 200 bytes, persistent, on a durable classic queue of their own
    (no priorities, no dead-lettering), deleted afterwards.
    """
    import pika

    queue = f"bench-ceiling-{time.time_ns()}"
    body = b"x" * 200
    persistent = pika.BasicProperties(delivery_mode=2)
    out: dict[str, Any] = {}
    connection = _pika_connection(url)
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)

        def publish(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                channel.basic_publish("", queue, body, persistent)
            # Without confirms basic_publish returns once the socket has the
            # message; the clock stops when the queue holds them all.
            while channel.queue_declare(queue, passive=True).method.message_count < n:
                time.sleep(0.001)
            return n / (time.perf_counter() - started)

        def consume(n: int, prefetch: int) -> float:
            channel.basic_qos(prefetch_count=prefetch)
            started = time.perf_counter()
            got = 0
            for method, _, _ in channel.consume(queue, inactivity_timeout=10):
                if method is None:
                    break
                channel.basic_ack(method.delivery_tag)
                got += 1
                if got == n:
                    break
            channel.cancel()
            return got / (time.perf_counter() - started)

        out["pika publish, no confirms (until all queued)"] = publish(count)
        out["pika consume+ack, prefetch 100"] = consume(count, 100)
        channel.confirm_delivery()
        out["pika publish, confirm each (one round trip)"] = publish(confirmed)
        out["pika consume+ack, prefetch 1"] = consume(confirmed, 1)
        channel.queue_delete(queue)
    finally:
        connection.close()
    out.update(_rabbitmq_latency(url, queue + "-latency"))
    return out


def _rabbitmq_latency(
    url: str, queue: str, count: int = 1000, rate: float = 200.0
) -> dict[str, Any]:
    """Confirmed publish on one connection, consume on another, at ``rate``."""
    import pika

    samples: list[float] = []
    setup = _pika_connection(url)
    setup.channel().queue_declare(queue, durable=True)
    setup.close()
    ready = threading.Event()

    def receive() -> None:
        connection = _pika_connection(url)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=8)
        ready.set()
        for method, _, body in channel.consume(queue, inactivity_timeout=5):
            if method is None:
                break
            samples.append(time.time() - float(body))
            channel.basic_ack(method.delivery_tag)
            if len(samples) >= count:
                break
        channel.cancel()
        connection.close()

    thread = threading.Thread(target=receive)
    thread.start()
    ready.wait(10)
    connection = _pika_connection(url)
    channel = connection.channel()
    channel.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    try:
        _paced(lambda body: channel.basic_publish("", queue, body, persistent), count, rate)
        thread.join(30)
    finally:
        channel.queue_delete(queue)
        connection.close()
    if len(samples) < count:
        return {}
    p50, p99 = _percentiles(samples)
    return {
        "pika publish (confirmed) to consume latency, p50 ms": p50,
        "pika publish (confirmed) to consume latency, p99 ms": p99,
    }


def sqlite_ceiling(count: int = 5000) -> dict[str, Any]:
    """Measure bare sqlite3 inserts on a fresh file in a temporary folder."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
        conn = sqlite3.connect(Path(folder) / "ceiling.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        body = b"x" * 200
        started = time.perf_counter()
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
        out["sqlite3 insert, one transaction each"] = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(count * 4 // 1000):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (body) VALUES (?)", [(body,)] * 1000)
            conn.execute("COMMIT")
        out["sqlite3 insert, 1,000 per transaction"] = count * 4 / (time.perf_counter() - started)
        conn.close()
    return out
