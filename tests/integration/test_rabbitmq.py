"""The RabbitMQ adapter against a real rabbitmq-server node (issue #5).

The contract suite runs as on every broker, with two documented differences:
AMQP reports no count of unacked messages, so ``size`` and ``purge`` see ready
and delayed messages only; and a lease ends when its channel closes.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from taskmesh.errors import BrokerUnavailable, ConfigurationError, ConnectionLost, MessageTooLarge
from taskmesh.result import State, TaskRecord, task_key
from taskmesh.transport import Delivery, Outgoing, Transport, connect
from tests.integration.contract import (
    ConnectionLeaseContract,
    drop_connection,
    receive_until,
    unique,
)
from tests.integration.harness import Scenario, scenario_context, wait_until
from tests.servers import LOOPBACK, RABBITMQ_USER, RabbitMQServer, free_port, rabbitmq_server

pytestmark = pytest.mark.rabbitmq


class TestRabbitMQTransport(ConnectionLeaseContract):
    @pytest.fixture
    def transport_url(self, rabbitmq: RabbitMQServer) -> str:
        return rabbitmq.url


@pytest.mark.slow
class TestQuorumQueues(TestRabbitMQTransport):
    """The same contract on quorum queues, which count deliveries themselves."""

    @pytest.fixture
    def transport_url(self, rabbitmq: RabbitMQServer) -> str:
        return f"{rabbitmq.url}?queue_type=quorum"

    def test_higher_priority_first_then_publish_order(
        self, transport: Transport, queue: str
    ) -> None:
        pytest.skip("quorum queues in RabbitMQ 3.x do not support priorities (documented)")

    def test_queues_are_quorum_queues(self, transport: Transport, queue: str) -> None:
        # Redeclaring as classic fails only if the queue really is a quorum queue.
        with connect(transport.url.replace("queue_type=quorum", "queue_type=classic")) as other:
            with pytest.raises(ConfigurationError, match="other settings"):
                other.declare(queue)


# the broker on its own ------------------------------------------------------------------------


def test_unknown_option_and_bad_values_are_configuration_errors(rabbitmq: RabbitMQServer) -> None:
    with pytest.raises(ConfigurationError, match="queue_type"):
        connect(f"{rabbitmq.url}?queue_type=stream")
    with pytest.raises(ConfigurationError, match="max_priority"):
        connect(f"{rabbitmq.url}?max_priority=10")


def test_wrong_password_is_broker_unavailable_and_never_shows_it(
    rabbitmq: RabbitMQServer,
) -> None:
    url = rabbitmq.url.replace("guest:guest", "guest:s3cret-pw") + "?connect_timeout=1"
    with connect(url) as transport, pytest.raises(BrokerUnavailable) as caught:
        transport.publish(Outgoing(unique(), b"x"))
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in caught.value.url
    assert "s3cret-pw" not in repr(transport)


def test_publish_to_a_dead_server_fails_after_its_retry_window() -> None:
    url = f"amqp://guest:guest@{LOOPBACK}:{free_port()}/%2F?connect_timeout=1"
    started = time.monotonic()
    with connect(url) as transport, pytest.raises(BrokerUnavailable, match="within 1"):
        transport.publish(Outgoing("q", b"x"))
    assert 0.9 <= time.monotonic() - started < 10


def test_too_large_message_is_refused_before_sending(rabbitmq: RabbitMQServer) -> None:
    with connect(rabbitmq.url) as transport, pytest.raises(MessageTooLarge, match="bytes"):
        transport.publish(Outgoing(unique(), b"x" * (128 * 1024 * 1024 + 1)))


def test_messages_survive_a_broker_restart_and_the_transport_reconnects(
    rabbitmq: RabbitMQServer,
) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        transport.publish(Outgoing(queue, b"persistent", {"k": "v"}))
        transport.publish(Outgoing(queue, b"delayed", delay=3))
        rabbitmq.restart()
        with pytest.raises(ConnectionLost):
            transport.receive([queue], 1, 0.5)
        [first] = receive_until(transport, [queue], 1)
        assert (first.body, dict(first.headers), first.delivery_count) == (
            b"persistent",
            {"k": "v"},
            1,
        )
        transport.ack(first)
        [second] = receive_until(transport, [queue], 1)
        assert second.body == b"delayed"
        transport.ack(second)


def test_delay_of_days_waits_in_the_longest_fitting_delay_queue(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        transport.publish(Outgoing(queue, b"in two days", delay=2 * 86400))
        assert transport.receive([queue], 1, 0.5) == []
        assert transport.size(queue) == 1
        level = 125 << 20  # 131,072 s: the longest level within two days
        with pika_channel(rabbitmq) as channel:
            frame = channel.queue_declare(f"{queue}.delay.{level}", passive=True)
            assert frame.method.message_count == 1
        assert transport.purge(queue) == 1


def test_redelivered_message_is_counted_on_a_classic_queue(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    with connect(rabbitmq.url) as first, connect(rabbitmq.url) as second:
        first.publish(Outgoing(queue, b"crashy"))
        for expected in (1, 2, 3):
            [delivery] = receive_until(first, [queue], 1)
            assert delivery.delivery_count == expected
            drop_connection(first)  # the consumer dies holding it
        [delivery] = receive_until(second, [queue], 1)
        assert delivery.delivery_count == 4
        second.ack(delivery)
        assert second.size(queue) == 0


def bodies(deliveries: list[Delivery]) -> set[bytes]:
    return {delivery.body for delivery in deliveries}


def test_ack_many_of_a_gapped_batch_acks_exactly_those(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    messages = [f"m{i}".encode() for i in range(10)]
    with connect(rabbitmq.url) as transport:
        transport.publish_many([Outgoing(queue, body) for body in messages])
        taken = receive_until(transport, [queue], 10)
        assert [delivery.body for delivery in taken] == messages
        # A run from the lowest tag (one multiple frame), then a gapped tail.
        transport.ack_many([taken[i] for i in (0, 1, 2, 5, 7, 9)])
    # Closing the connection gives back what it still held, and only that.
    with connect(rabbitmq.url) as other:
        back = receive_until(other, [queue], 4)
        assert bodies(back) == {b"m3", b"m4", b"m6", b"m8"}
        assert other.receive([queue], 10, 0.5) == []
        other.ack_many(back)
        assert other.size(queue) == 0


def test_ack_many_of_the_oldest_leaves_the_newest_unacked(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        transport.publish_many([Outgoing(queue, f"m{i}".encode()) for i in range(6)])
        taken = receive_until(transport, [queue], 6)
        transport.ack_many(taken[:4])
        transport.ack_many(taken[:4])  # acking again is a no-op, not a channel error
        assert transport.receive([queue], 1, 0.2) == []
    with connect(rabbitmq.url) as other:
        back = receive_until(other, [queue], 2)
        assert bodies(back) == {b"m4", b"m5"}
        other.ack_many(back)


def test_ack_many_skips_deliveries_of_a_lost_connection(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        transport.publish_many([Outgoing(queue, f"m{i}".encode()) for i in range(5)])
        first = receive_until(transport, [queue], 5)
        transport.ack_many(first[:2])
        drop_connection(transport)
        # m2..m4 come back redelivered; the adapter re-publishes each with its
        # count and acks it, so the copies the caller gets carry tags 4 to 6
        # on the new channel, while the stale deliveries carry 3 to 5.
        fresh = receive_until(transport, [queue], 3)
        assert [(d.body, d.delivery_count) for d in fresh] == [
            (b"m2", 2),
            (b"m3", 2),
            (b"m4", 2),
        ]
        transport.ack_many([*first[2:], fresh[2]])
    with connect(rabbitmq.url) as other:
        back = receive_until(other, [queue], 2)
        assert bodies(back) == {b"m2", b"m3"}
        assert other.receive([queue], 10, 0.5) == []
        other.ack_many(back)


def drain(transport: Transport, queue: str, count: int, deadline: float = 60) -> list[bytes]:
    """Receive and ack until ``count`` messages came or ``deadline`` passed; return bodies."""
    taken: list[bytes] = []
    end = time.monotonic() + deadline
    while len(taken) < count and time.monotonic() < end:
        try:
            batch = transport.receive([queue], 500, 0.5)
        except ConnectionLost:
            continue  # a restarted broker: the next receive reconnects
        transport.ack_many(batch)
        taken += [delivery.body for delivery in batch]
    return taken


@pytest.mark.timeout(180)
def test_publish_many_of_5000_delivers_each_exactly_once(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    sent = [f"m{i}".encode() for i in range(5000)]
    with connect(rabbitmq.url) as transport:
        transport.publish_many([Outgoing(queue, body, {"n": "1"}) for body in sent])
        assert transport.size(queue) == 5000
        got = drain(transport, queue, 5000)
        assert got == sent  # one priority: publish order
        assert transport.receive([queue], 10, 0.5) == []


def test_publish_many_keeps_delays_and_priorities(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        sent = time.time()
        transport.publish_many(
            [
                Outgoing(queue, b"later", delay=1.0),
                Outgoing(queue, b"low", priority=0),
                Outgoing(queue, b"high", priority=9),
                Outgoing(queue, b"mid", priority=5),
            ]
        )
        assert transport.size(queue) == 4
        now = receive_until(transport, [queue], 3)
        assert [delivery.body for delivery in now] == [b"high", b"mid", b"low"]
        transport.ack_many(now)
        [later] = receive_until(transport, [queue], 1)
        assert later.body == b"later"
        assert time.time() >= sent + 1.0
        transport.ack(later)


def test_publish_many_to_a_queue_deleted_under_it_declares_it_again(
    rabbitmq: RabbitMQServer,
) -> None:
    queue = unique()
    with connect(rabbitmq.url) as transport:
        transport.publish_many([Outgoing(queue, b"first"), Outgoing(queue, b"second")])
        assert drain(transport, queue, 2) == [b"first", b"second"]
        transport.close()
    with pika_channel(rabbitmq) as channel:
        channel.queue_delete(queue)
    with connect(rabbitmq.url) as transport:
        transport.declare(queue)  # remembered as declared from here on
        with pika_channel(rabbitmq) as channel:
            channel.queue_delete(queue)
        # The whole batch comes back unroutable, then goes again.
        transport.publish_many([Outgoing(queue, f"m{i}".encode()) for i in range(20)])
        assert drain(transport, queue, 20) == [f"m{i}".encode() for i in range(20)]
        assert transport.receive([queue], 10, 0.5) == []


def rabbitmqctl(server: RabbitMQServer, *arguments: str) -> None:
    """Run ``rabbitmqctl`` against the test node, as its user.

    Debian's wrapper resets ``HOME``, so the node's cookie is passed along.
    """
    cookie = (server.folder / ".erlang.cookie").read_text().strip()
    subprocess.run(
        ["rabbitmqctl", "-n", server.node, "--erlang-cookie", cookie, *arguments],
        env=server.env(),
        cwd=server.folder,
        user=RABBITMQ_USER,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_publish_many_refused_by_a_queue_raises_and_spares_held_deliveries(
    rabbitmq: RabbitMQServer,
) -> None:
    queue = unique("full")
    rabbitmqctl(
        rabbitmq,
        "set_policy",
        "--apply-to",
        "queues",
        queue,
        f"^{queue}$",
        '{"max-length": 2, "overflow": "reject-publish"}',
    )
    try:
        with connect(f"{rabbitmq.url}?connect_timeout=1") as transport:
            transport.publish(Outgoing(queue, b"held"))
            [held] = receive_until(transport, [queue], 1)
            batch = [Outgoing(queue, f"m{i}".encode()) for i in range(5)]
            with pytest.raises(BrokerUnavailable, match="did not confirm a publish"):
                transport.publish_many(batch)
            # Only the transaction's channel closed: the held delivery is still
            # this transport's to ack.
            transport.ack(held)
        with connect(rabbitmq.url) as other:
            got = drain(other, queue, 3, deadline=3)
            # Which of the batch the full queue kept is the broker's business:
            # some, each once, and never the acked one.
            assert 1 <= len(got) <= 2
            assert len(set(got)) == len(got)
            assert set(got) <= {message.body for message in batch}
    finally:
        rabbitmqctl(rabbitmq, "clear_policy", queue)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_publish_many_across_a_broker_restart_loses_nothing(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    sent = {f"m{i}".encode() for i in range(30_000)}
    failure: list[BaseException] = []
    url = f"{rabbitmq.url}?connect_timeout=120"

    def publish() -> None:
        try:
            with connect(url) as transport:
                transport.publish_many([Outgoing(queue, body) for body in sorted(sent)])
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    with connect(url) as transport:
        transport.declare(queue)
        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            wait_until(lambda: transport.size(queue) >= 1000, 60, "the first batches")
            assert publisher.is_alive(), "the batch ended before the restart: nothing tested"
            rabbitmq.restart()
        finally:
            publisher.join(240)
        assert not publisher.is_alive()
        assert failure == []
        got = drain(transport, queue, len(sent), deadline=180)
        while batch := transport.receive([queue], 500, 1.0):  # the duplicates, if any
            transport.ack_many(batch)
            got += [delivery.body for delivery in batch]
        assert set(got) == sent


def test_a_consumer_asking_for_less_leaves_the_rest_to_another(rabbitmq: RabbitMQServer) -> None:
    queue = unique()
    sent = {f"m{i}".encode() for i in range(200)}
    with connect(rabbitmq.url) as first, connect(rabbitmq.url) as second:
        first.publish_many([Outgoing(queue, body) for body in sorted(sent)])
        busy = receive_until(first, [queue], 40)  # a prefetch of 40
        assert len(busy) == 40
        first.ack_many(busy)
        # Its tasks got slow: it asks for two at a time from now on. The 40 the
        # broker pushed on the ack are handed out first, then the window is 2.
        taken = [delivery.body for delivery in busy]
        for _ in range(30):
            batch = receive_until(first, [queue], 2)
            first.ack_many(batch)
            taken += [delivery.body for delivery in batch]
        assert len(taken) == 100
        # With the old window of 40 the first consumer would sit on 40 of the
        # remaining 100; now it holds at most 2 of them.
        rest = drain(second, queue, 98, deadline=30)
        assert len(rest) >= 98
        first.close()  # gives back what it still holds unseen
        rest += drain(second, queue, 100 - len(rest), deadline=30)
        assert sorted(taken + rest) == sorted(sent)


@contextlib.contextmanager
def pika_channel(server: RabbitMQServer) -> Iterator[Any]:
    """A plain pika channel on the server, to look at what the adapter made."""
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        yield connection.channel()
    finally:
        connection.close()


# worker scenarios of issue #5 -----------------------------------------------------------------


@pytest.fixture
def amqp_scenario(rabbitmq: RabbitMQServer, tmp_path: Path) -> Iterator[Scenario]:
    yield from scenario_context(rabbitmq.url, f"sqlite:///{tmp_path}/results.db", tmp_path)


def succeeded(scenario: Scenario, ids: list[str]) -> int:
    store = scenario.app.result_store()
    raws = store.get_many([task_key(task_id) for task_id in ids])
    return sum(
        1 for raw in raws if raw is not None and TaskRecord.from_bytes(raw).state is State.SUCCESS
    )


def server_log(server: RabbitMQServer) -> str:
    return "".join(
        path.read_text(errors="replace") for path in (server.folder / "log").glob("*.log")
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_2000_tasks_complete_across_a_broker_restart(
    rabbitmq: RabbitMQServer, amqp_scenario: Scenario
) -> None:
    workers = [amqp_scenario.start_worker(4, "threads") for _ in range(2)]
    app = amqp_scenario.app
    envelopes = [app.build_envelope("scenario.mark", [f"k{i}"]) for i in range(2000)]
    ids = [envelope.id for envelope in envelopes]
    for start in range(0, 2000, 100):
        app.publish(envelopes[start : start + 100])
    wait_until(lambda: len(amqp_scenario.lines("mark")) >= 300, 120, "300 tasks to run")
    rabbitmq.restart()
    wait_until(lambda: succeeded(amqp_scenario, ids) == 2000, 300, "all 2000 results", every=1)
    assert set(amqp_scenario.lines("mark")) == {f"k{i}" for i in range(2000)}
    for worker in workers:
        assert worker.process.poll() is None
        wait_until(lambda w=worker: "broker connection lost" in w.output(), 30, "the outage log")
        # A worker that found nothing left may still be in its reconnect backoff.
        wait_until(
            lambda w=worker: "broker connection restored" in w.output(), 30, "the reconnection"
        )
    with app.connect_broker() as transport:
        wait_until(lambda: transport.size(amqp_scenario.queue) == 0, 60, "an empty queue")


@pytest.mark.slow
def test_task_longer_than_ten_heartbeats_keeps_its_connection(
    rabbitmq: RabbitMQServer, amqp_scenario: Scenario
) -> None:
    amqp_scenario.broker_url = f"{rabbitmq.url}?heartbeat=1"
    # One slot and no prefetch beyond it: while the task runs, the loop thread
    # has no room and never calls receive; only the heartbeat thread talks.
    amqp_scenario.settings["worker_prefetch_multiplier"] = 1
    worker = amqp_scenario.start_worker(1, "prefork")
    missed_before = server_log(rabbitmq).count("missed heartbeats")
    result = amqp_scenario.app.send_task("scenario.sleep", [12.0, "long"])
    assert result.get(timeout=60) == 12.0
    assert amqp_scenario.lines("sleep-start") == ["long"]
    assert "broker connection lost" not in worker.output()
    assert server_log(rabbitmq).count("missed heartbeats") == missed_before


@pytest.mark.slow
def test_countdown_of_twenty_seconds_hops_and_runs_once_not_early(
    amqp_scenario: Scenario,
) -> None:
    amqp_scenario.start_worker(1, "threads")
    sent = time.time()
    result = amqp_scenario.app.send_task("scenario.started_at", ["eta"], countdown=20)
    started = result.get(timeout=60)
    # 16 s then 4 s through the delay queues: not early, about a second late at most.
    assert sent + 20 <= started < sent + 21.5
    assert len(amqp_scenario.lines("started")) == 1


@pytest.fixture(scope="module")
def impatient_rabbitmq() -> Iterator[RabbitMQServer]:
    """A node whose consumer_timeout is two seconds, checked every half second.

    (The defaults: 30 minutes, checked once a minute.)
    """
    advanced = "[{rabbit, [{consumer_timeout, 2000}, {channel_tick_interval, 500}]}]."
    with rabbitmq_server(advanced=advanced) as server:
        yield server


def hold(transport: Transport, queue: str, delivery: Delivery, seconds: float) -> None:
    """Keep ``delivery`` unacked for ``seconds`` while receiving, as a worker's loop does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        transport.extend_leases([delivery], transport.lease_seconds)
        assert transport.receive([queue], 1, 0.2) == []


@pytest.mark.slow
def test_consumer_timeout_close_is_reported_and_the_message_comes_back(
    impatient_rabbitmq: RabbitMQServer,
) -> None:
    queue = unique()
    # consumer_timeout left at its default: the adapter thinks it has 30 minutes.
    with connect(impatient_rabbitmq.url) as transport:
        transport.publish(Outgoing(queue, b"slow task"))
        [held] = receive_until(transport, [queue], 1)

        def closed_under_us() -> str:
            try:
                transport.receive([queue], 1, 0.2)
            except ConnectionLost as exc:
                return str(exc)
            return ""

        message = wait_until(closed_under_us, 30, "the consumer timeout to close the channel")
        assert "consumer_timeout" in message
        transport.ack(held)  # a no-op now, not an error
        [again] = receive_until(transport, [queue], 1)
        assert (again.body, again.delivery_count) == (b"slow task", 2)
        transport.ack(again)


@pytest.mark.slow
def test_delivery_held_past_the_consumer_timeout_is_moved_and_kept(
    impatient_rabbitmq: RabbitMQServer,
) -> None:
    queue = unique()
    url = f"{impatient_rabbitmq.url}?consumer_timeout=2"
    with connect(url, lease_seconds=1) as transport, connect(url) as other:
        transport.publish(Outgoing(queue, b"long task"))
        [delivery] = receive_until(transport, [queue], 1)
        hold(transport, queue, delivery, 6)  # three consumer timeouts, six holding TTLs
        assert other.receive([queue], 1, 0.5) == []
        transport.ack(delivery)
        # The copy is gone with the ack: nothing comes back after its TTL.
        assert other.receive([queue], 1, 3.0) == []
        assert transport.size(queue) == 0


@pytest.mark.slow
def test_moved_delivery_of_a_dead_consumer_comes_back_with_its_count(
    impatient_rabbitmq: RabbitMQServer,
) -> None:
    queue = unique()
    url = f"{impatient_rabbitmq.url}?consumer_timeout=2"
    with connect(url, lease_seconds=1) as transport, connect(url) as other:
        transport.publish(Outgoing(queue, b"long task", {"k": "v"}))
        [delivery] = receive_until(transport, [queue], 1)
        hold(transport, queue, delivery, 1.5)
        drop_connection(transport)  # dies without acking or renewing
        [again] = receive_until(other, [queue], 1, deadline=10)
        assert (again.body, dict(again.headers), again.delivery_count) == (
            b"long task",
            {"k": "v"},
            2,
        )
        other.ack(again)


@pytest.mark.slow
def test_worker_task_longer_than_the_consumer_timeout_runs_once(
    impatient_rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    url = f"{impatient_rabbitmq.url}?consumer_timeout=2"
    backend = f"sqlite:///{tmp_path}/results.db"
    with contextlib.contextmanager(scenario_context)(url, backend, tmp_path) as scenario:
        scenario.settings["broker_lease_seconds"] = 1.5
        worker = scenario.start_worker(1, "prefork")
        result = scenario.app.send_task("scenario.sleep", [6.0, "long"])
        assert result.get(timeout=60) == 6.0
        assert scenario.lines("sleep-start") == ["long"]
        assert "long delivery moved to holding queue" in worker.output()
        assert "broker connection lost" not in worker.output()
