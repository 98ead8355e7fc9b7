"""The contract every transport and result store keeps, as base classes to subclass.

One adapter's test module subclasses :class:`TransportContract` and
:class:`ResultStoreContract` and provides one fixture each: ``transport_url``
(a broker URL isolated for one test) and ``store_url`` (a result store URL
likewise). The base classes open every instance they need from those URLs,
close them afterwards, and skip what an adapter declares it does not do
(``Capabilities``). A subclass may override ``transport`` or ``store`` too,
or a helper such as :meth:`TransportContract.let_lease_expire` where its broker
ends a lease another way (RabbitMQ: closing the channel).

Timing: the machine running the suite may be loaded, so a test waits with a
deadline-bounded poll and asserts only lower bounds that the contract promises
("not before") and generous upper bounds ("eventually, within seconds").
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from taskmesh.errors import ConfigurationError
from taskmesh.result import ResultStore, connect_store
from taskmesh.transport import (
    Delivery,
    Outgoing,
    Transport,
    connect,
    dead_letter_queue,
)

# How late past its timeout a receive or a wait may return on a busy machine.
SLACK = 3.0
# How long a poll waits for something the contract says will happen.
EVENTUALLY = 20.0
# Clock granularity allowed when checking "not before".
EPSILON = 0.02


def with_option(url: str, option: str) -> str:
    """Return ``url`` with one more ``name=value`` in its query string."""
    return f"{url}{'&' if '?' in url else '?'}{option}"


def unique(prefix: str = "q") -> str:
    """Return a name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def drop_connection(transport: Transport) -> None:
    """Close the transport's connection under it, as a network failure would."""
    transport._drop()  # type: ignore[attr-defined]


def receive_until(
    transport: Transport, queues: list[str], count: int, deadline: float = EVENTUALLY
) -> list[Delivery]:
    """Receive until ``count`` messages arrived or ``deadline`` seconds passed."""
    taken: list[Delivery] = []
    end = time.monotonic() + deadline
    while len(taken) < count and time.monotonic() < end:
        taken += transport.receive(queues, count - len(taken), 0.2)
    return taken


class TransportContract:
    """Behaviour every :class:`~taskmesh.transport.Transport` promises.

    Subclasses provide the ``transport_url`` fixture.
    """

    lease_seconds: float = 1.0
    """The lease the contract's transports get; short, so expiry tests run fast."""

    delay_seconds: float = 1.0
    """The delay used by the delay tests (whole seconds suit every broker)."""

    size_counts_leased: bool = True
    """Whether ``size`` counts received, unacked messages (AMQP's counts do not)."""

    @pytest.fixture
    def transport_url(self) -> str:
        raise NotImplementedError("a TransportContract subclass provides transport_url")

    @pytest.fixture
    def open_transport(self, transport_url: str) -> Iterator[Callable[..., Transport]]:
        """A factory of transports on ``transport_url``, all closed afterwards."""
        opened: list[Transport] = []

        def open_(lease_seconds: float | None = None) -> Transport:
            lease = self.lease_seconds if lease_seconds is None else lease_seconds
            transport = connect(transport_url, lease_seconds=lease)
            opened.append(transport)
            return transport

        yield open_
        for transport in opened:
            transport.close()

    @pytest.fixture
    def transport(self, open_transport: Callable[..., Transport]) -> Transport:
        return open_transport()

    @pytest.fixture
    def queue(self, transport: Transport) -> str:
        """A fresh, declared queue."""
        name = unique()
        transport.declare(name)
        return name

    def let_lease_expire(self, transport: Transport, delivery: Delivery) -> None:
        """End ``delivery``'s lease; by default do nothing and let it run out.

        The deadline-bounded receive that follows does the waiting.
        """

    # publish and receive -------------------------------------------------------------

    def test_round_trip_keeps_body_headers_and_queue(
        self, transport: Transport, queue: str
    ) -> None:
        body = bytes(range(256)) * 3
        headers = {"x-trace": "abc-123", "name": "späti ✓"}
        transport.publish(Outgoing(queue, body, headers))
        [delivery] = receive_until(transport, [queue], 1)
        assert delivery.body == body
        assert dict(delivery.headers) == headers
        assert delivery.queue == queue
        assert delivery.delivery_count == 1

    def test_publish_creates_an_undeclared_queue(self, transport: Transport) -> None:
        name = unique()
        transport.publish(Outgoing(name, b"first"))
        [delivery] = receive_until(transport, [name], 1)
        assert delivery.body == b"first"
        transport.ack(delivery)

    def test_receive_on_empty_queue_waits_its_timeout_then_returns_nothing(
        self, transport: Transport, queue: str
    ) -> None:
        started = time.monotonic()
        assert transport.receive([queue], 10, 1.0) == []
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 1.0 + SLACK

    def test_receive_wakes_when_a_message_arrives(
        self, open_transport: Callable[..., Transport], transport: Transport, queue: str
    ) -> None:
        producer = open_transport()
        producer.declare(queue)
        timer = threading.Timer(0.3, producer.publish, [Outgoing(queue, b"late")])
        started = time.monotonic()
        timer.start()
        try:
            taken = transport.receive([queue], 1, 10.0)
            if not taken:  # a receive may return early and empty; one more try
                taken = transport.receive([queue], 1, 10.0)
        finally:
            timer.join()
        assert [d.body for d in taken] == [b"late"]
        assert time.monotonic() - started < 10.0

    def test_receive_respects_max_messages(self, transport: Transport, queue: str) -> None:
        transport.publish_many([Outgoing(queue, str(i).encode()) for i in range(5)])
        first = transport.receive([queue], 3, 5.0)
        assert 1 <= len(first) <= 3
        rest = receive_until(transport, [queue], 5 - len(first), deadline=5.0)
        assert len(first) + len(rest) == 5
        assert transport.receive([queue], 3, 0.3) == []

    def test_queues_are_tried_in_the_order_given(self, transport: Transport, queue: str) -> None:
        other = unique()
        transport.declare(other)
        transport.publish(Outgoing(other, b"second-choice"))
        transport.publish(Outgoing(queue, b"first-choice"))
        first = transport.receive([queue, other], 1, 5.0)
        assert [(d.queue, d.body) for d in first] == [(queue, b"first-choice")]
        second = receive_until(transport, [queue, other], 1)
        assert [(d.queue, d.body) for d in second] == [(other, b"second-choice")]

    def test_one_receive_takes_from_several_queues(self, transport: Transport, queue: str) -> None:
        other = unique()
        transport.declare(other)
        transport.publish_many([Outgoing(queue, b"a"), Outgoing(other, b"b")])
        taken = receive_until(transport, [queue, other], 2)
        assert sorted((d.queue, d.body) for d in taken) == sorted([(queue, b"a"), (other, b"b")])

    def test_fifo_within_a_queue(self, transport: Transport, queue: str) -> None:
        if not transport.capabilities.fifo:
            pytest.skip("the transport does not keep publish order")
        for index in range(20):
            transport.publish(Outgoing(queue, str(index).encode()))
        taken = receive_until(transport, [queue], 20)
        assert [int(d.body) for d in taken] == list(range(20))

    def test_higher_priority_first_then_publish_order(
        self, transport: Transport, queue: str
    ) -> None:
        if not transport.capabilities.priorities:
            pytest.skip("the transport does not honour priorities")
        plan = [
            (0, "low-1"),
            (0, "low-2"),
            (9, "high-1"),
            (5, "mid-1"),
            (9, "high-2"),
            (0, "low-3"),
        ]
        transport.publish_many([Outgoing(queue, n.encode(), priority=p) for p, n in plan])
        taken = receive_until(transport, [queue], len(plan))
        expected = ["high-1", "high-2", "mid-1", "low-1", "low-2", "low-3"]
        assert [d.body.decode() for d in taken] == expected

    def test_publish_many_delivers_every_message(self, transport: Transport, queue: str) -> None:
        other = unique()
        messages = [Outgoing(queue if i % 2 else other, f"m{i}".encode()) for i in range(50)]
        transport.publish_many(messages)
        taken = receive_until(transport, [queue, other], 50)
        assert sorted(d.body for d in taken) == sorted(m.body for m in messages)

    # delays ----------------------------------------------------------------------------

    def test_delayed_message_is_not_handed_out_early_and_then_is(
        self, transport: Transport, queue: str
    ) -> None:
        if not transport.capabilities.native_delay:
            pytest.skip("the transport does not hold delayed messages")
        published = time.time()
        transport.publish(Outgoing(queue, b"later", delay=self.delay_seconds))
        transport.publish(Outgoing(queue, b"now"))
        [now] = receive_until(transport, [queue], 1)
        assert now.body == b"now"
        [later] = receive_until(transport, [queue], 1)
        assert time.time() >= published + self.delay_seconds - EPSILON
        assert later.body == b"later"
        # It waited longer than a lease, but waiting is not being in flight.
        assert later.delivery_count == 1

    def test_long_delay_counts_in_size_and_is_not_received(
        self, transport: Transport, queue: str
    ) -> None:
        if not transport.capabilities.native_delay:
            pytest.skip("the transport does not hold delayed messages")
        transport.publish(Outgoing(queue, b"next-hour", delay=3600))
        assert transport.receive([queue], 1, 0.5) == []
        assert transport.size(queue) == 1

    # leases ------------------------------------------------------------------------------

    def test_unacked_message_comes_back_after_its_lease_with_a_higher_count(
        self, open_transport: Callable[..., Transport], transport: Transport, queue: str
    ) -> None:
        transport.publish(Outgoing(queue, b"leased"))
        [first] = receive_until(transport, [queue], 1)
        self.let_lease_expire(transport, first)
        other = open_transport()  # any consumer recovers it, not only the first
        [second] = receive_until(other, [queue], 1)
        assert second.body == b"leased"
        assert second.delivery_count == first.delivery_count + 1
        other.ack(second)
        assert other.size(queue) == 0

    def test_leased_message_is_not_handed_out_again_while_leased(
        self, open_transport: Callable[..., Transport], queue: str
    ) -> None:
        holder = open_transport(lease_seconds=60)
        holder.publish(Outgoing(queue, b"mine"))
        [delivery] = receive_until(holder, [queue], 1)
        assert open_transport().receive([queue], 1, 1.0) == []
        holder.ack(delivery)

    def test_extended_lease_keeps_the_message_held(self, transport: Transport, queue: str) -> None:
        if not transport.capabilities.lease_extension:
            pytest.skip("the transport holds unacked messages for the connection's life")
        transport.publish(Outgoing(queue, b"long-task"))
        [delivery] = receive_until(transport, [queue], 1)
        transport.extend_lease(delivery, self.lease_seconds + 5)
        assert transport.receive([queue], 1, self.lease_seconds + 1.5) == []
        transport.ack(delivery)
        assert transport.size(queue) == 0

    def test_extend_leases_keeps_several_held(self, transport: Transport, queue: str) -> None:
        if not transport.capabilities.lease_extension:
            pytest.skip("the transport holds unacked messages for the connection's life")
        transport.publish_many([Outgoing(queue, b"a"), Outgoing(queue, b"b")])
        taken = receive_until(transport, [queue], 2)
        transport.extend_leases(taken, self.lease_seconds + 5)
        assert transport.receive([queue], 2, self.lease_seconds + 1.5) == []
        transport.ack_many(taken)
        assert transport.size(queue) == 0

    # settling ------------------------------------------------------------------------------

    def test_ack_removes_and_is_idempotent(self, transport: Transport, queue: str) -> None:
        transport.publish(Outgoing(queue, b"once"))
        [delivery] = receive_until(transport, [queue], 1)
        transport.ack(delivery)
        transport.ack(delivery)
        assert transport.size(queue) == 0
        assert transport.receive([queue], 1, 0.3) == []

    def test_ack_of_a_lapsed_lease_is_not_an_error(
        self, open_transport: Callable[..., Transport], transport: Transport, queue: str
    ) -> None:
        transport.publish(Outgoing(queue, b"slow"))
        [stale] = receive_until(transport, [queue], 1)
        self.let_lease_expire(transport, stale)
        other = open_transport()
        [fresh] = receive_until(other, [queue], 1)
        transport.ack(stale)  # may be a no-op or remove it; must not raise
        other.ack(fresh)
        assert other.size(queue) == 0

    def test_ack_many_removes_them_all(self, transport: Transport, queue: str) -> None:
        transport.publish_many([Outgoing(queue, str(i).encode()) for i in range(10)])
        taken = receive_until(transport, [queue], 10)
        assert len(taken) == 10
        transport.ack_many(taken)
        transport.ack_many(taken)
        assert transport.size(queue) == 0

    def test_requeue_makes_it_ready_again_and_keeps_the_count(
        self, transport: Transport, queue: str
    ) -> None:
        transport.publish(Outgoing(queue, b"again", {"h": "1"}))
        [first] = receive_until(transport, [queue], 1)
        transport.requeue(first)
        [second] = receive_until(transport, [queue], 1)
        assert (second.body, dict(second.headers)) == (b"again", {"h": "1"})
        assert second.delivery_count == first.delivery_count + 1
        transport.ack(second)

    def test_requeue_with_delay_holds_it_back_and_keeps_the_count(
        self, transport: Transport, queue: str
    ) -> None:
        transport.publish(Outgoing(queue, b"backoff"))
        [first] = receive_until(transport, [queue], 1)
        requeued = time.time()
        transport.requeue(first, delay=self.delay_seconds)
        [second] = receive_until(transport, [queue], 1)
        assert time.time() >= requeued + self.delay_seconds - EPSILON
        assert second.delivery_count == first.delivery_count + 1
        transport.ack(second)

    def test_reject_moves_it_to_the_dead_letter_queue_with_its_reason(
        self, transport: Transport, queue: str
    ) -> None:
        transport.publish(Outgoing(queue, b"poison", {"x-trace": "t1"}))
        [delivery] = receive_until(transport, [queue], 1)
        transport.reject(delivery, "cannot decode: bad byte")
        [dead] = receive_until(transport, [dead_letter_queue(queue)], 1)
        assert dead.body == b"poison"
        assert dead.headers["x-dead-letter-reason"] == "cannot decode: bad byte"
        assert dead.headers["x-trace"] == "t1"
        transport.ack(dead)
        assert transport.size(queue) == 0
        assert transport.receive([queue], 1, 0.3) == []

    # queue management ----------------------------------------------------------------------

    def test_size_counts_ready_delayed_and_leased(self, transport: Transport, queue: str) -> None:
        transport.publish_many([Outgoing(queue, b"ready-1"), Outgoing(queue, b"held", delay=3600)])
        transport.publish(Outgoing(queue, b"ready-2"))
        [leased] = receive_until(transport, [queue], 1)
        assert transport.size(queue) == (3 if self.size_counts_leased else 2)
        transport.ack(leased)

    def test_purge_leaves_leased_messages(self, transport: Transport, queue: str) -> None:
        transport.publish(Outgoing(queue, b"leased"))
        [leased] = receive_until(transport, [queue], 1)
        transport.publish_many([Outgoing(queue, b"ready"), Outgoing(queue, b"delayed", delay=3600)])
        assert transport.purge(queue) == 2
        assert transport.size(queue) == (1 if self.size_counts_leased else 0)
        transport.ack(leased)
        assert transport.size(queue) == 0
        assert transport.receive([queue], 1, 0.3) == []

    def test_purge_of_an_empty_queue_returns_zero(self, transport: Transport, queue: str) -> None:
        assert transport.purge(queue) == 0

    def test_declare_is_idempotent(self, transport: Transport, queue: str) -> None:
        transport.publish(Outgoing(queue, b"kept"))
        transport.declare(queue)
        transport.declare(queue)
        assert transport.size(queue) == 1

    def test_close_is_idempotent(self, open_transport: Callable[..., Transport]) -> None:
        transport = open_transport()
        transport.declare(unique())
        transport.close()
        transport.close()

    def test_unknown_url_option_is_a_configuration_error(self, transport_url: str) -> None:
        with pytest.raises(ConfigurationError, match="no_such_option"):
            connect(with_option(transport_url, "no_such_option=1"))

    def test_repr_hides_the_password(self, transport: Transport) -> None:
        assert ":***@" in repr(transport) or "@" not in transport.url


class ConnectionLeaseContract(TransportContract):
    """The contract for brokers where a lease is the connection that holds it (AMQP).

    Closing the connection ends the lease at once, and ``size`` counts only
    the messages not yet received (AMQP cannot see unacked ones).
    """

    size_counts_leased = False

    def let_lease_expire(self, transport: Transport, delivery: Delivery) -> None:
        drop_connection(transport)


class ResultStoreContract:
    """Behaviour every :class:`~taskmesh.result.ResultStore` promises.

    Subclasses provide the ``store_url`` fixture.
    """

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("a ResultStoreContract subclass provides store_url")

    @pytest.fixture
    def open_store(self, store_url: str) -> Iterator[Callable[[], ResultStore]]:
        """A factory of stores on ``store_url``, all closed afterwards."""
        opened: list[ResultStore] = []
        lock = threading.Lock()

        def open_() -> ResultStore:
            store = connect_store(store_url)
            with lock:
                opened.append(store)
            return store

        yield open_
        for store in opened:
            store.close()

    @pytest.fixture
    def store(self, open_store: Callable[[], ResultStore]) -> ResultStore:
        return open_store()

    @pytest.fixture
    def key(self) -> str:
        return unique("key")

    # values --------------------------------------------------------------------------------

    def test_set_then_get_returns_the_bytes(self, store: ResultStore, key: str) -> None:
        value = bytes(range(256))
        store.set(key, value, expires_seconds=60)
        assert store.get(key) == value

    def test_get_of_a_missing_key_is_none(self, store: ResultStore) -> None:
        assert store.get(unique("missing")) is None

    def test_set_replaces(self, store: ResultStore, key: str) -> None:
        store.set(key, b"one", expires_seconds=60)
        store.set(key, b"two", expires_seconds=60)
        assert store.get(key) == b"two"

    def test_value_expires(self, store: ResultStore, key: str) -> None:
        store.set(key, b"short-lived", expires_seconds=1)
        assert store.get(key) == b"short-lived"
        deadline = time.monotonic() + EVENTUALLY
        while store.get(key) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.get(key) is None

    def test_set_many_stores_each_in_order(self, store: ResultStore) -> None:
        first, second = unique("k"), unique("k")
        items = [(first, b"old", False), (second, b"two", True), (first, b"new", True)]
        store.set_many(items, expires_seconds=60)
        assert store.get_many([first, second]) == [b"new", b"two"]
        store.set_many([], expires_seconds=60)

    def test_set_many_wakes_waiters(
        self, open_store: Callable[[], ResultStore], store: ResultStore, key: str
    ) -> None:
        writer = open_store()
        items = [(unique("other"), b"x", False), (key, b"done", True)]
        timer = threading.Timer(0.3, lambda: writer.set_many(items, expires_seconds=60))
        timer.start()
        try:
            assert store.wait(key, 20.0, lambda v: v == b"done") == b"done"
        finally:
            timer.join()

    def test_get_many_keeps_order_and_reports_missing(self, store: ResultStore) -> None:
        keys = [unique("k") for _ in range(5)]
        for index in (0, 2, 4):
            store.set(keys[index], f"v{index}".encode(), expires_seconds=60)
        assert store.get_many(keys) == [b"v0", None, b"v2", None, b"v4"]
        assert store.get_many([]) == []

    def test_delete_is_idempotent(self, store: ResultStore, key: str) -> None:
        store.set(key, b"gone soon", expires_seconds=60)
        store.delete(key)
        store.delete(key)
        assert store.get(key) is None

    def test_values_are_shared_between_instances(
        self, open_store: Callable[[], ResultStore], key: str
    ) -> None:
        open_store().set(key, b"shared", expires_seconds=60)
        assert open_store().get(key) == b"shared"

    # sets and claims ---------------------------------------------------------------------

    def test_add_member_counts_each_member_once(self, store: ResultStore, key: str) -> None:
        assert store.add_member(key, "a", expires_seconds=60) == 1
        assert store.add_member(key, "b", expires_seconds=60) == 2
        assert store.add_member(key, "a", expires_seconds=60) == 2

    def test_add_member_is_atomic_across_instances(
        self, open_store: Callable[[], ResultStore], key: str
    ) -> None:
        stores = [open_store() for _ in range(12)]
        counts: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(stores))

        def add(index: int) -> None:
            barrier.wait(10)
            count = stores[index].add_member(key, f"m{index}", expires_seconds=60)
            with lock:
                counts.append(count)

        threads = [threading.Thread(target=add, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Each caller saw the set grow by its own member: 1, 2, ... n, in some order.
        assert sorted(counts) == list(range(1, len(stores) + 1))

    def test_member_set_expires(self, store: ResultStore, key: str) -> None:
        assert store.add_member(key, "old", expires_seconds=1) == 1
        time.sleep(1.5)  # the expiry itself: a lower bound, so no race
        assert store.add_member(key, "new", expires_seconds=60) == 1

    def test_delete_removes_a_member_set(self, store: ResultStore, key: str) -> None:
        store.add_member(key, "a", expires_seconds=60)
        store.add_member(key, "b", expires_seconds=60)
        store.delete(key)
        assert store.add_member(key, "c", expires_seconds=60) == 1

    def test_claim_wins_once_then_again_after_expiry(self, store: ResultStore, key: str) -> None:
        assert store.claim(key, expires_seconds=1) is True
        assert store.claim(key, expires_seconds=1) is False
        deadline = time.monotonic() + EVENTUALLY
        won = False
        while not won and time.monotonic() < deadline:
            time.sleep(0.1)
            won = store.claim(key, expires_seconds=60)
        assert won

    def test_claim_has_exactly_one_winner_across_threads(
        self, open_store: Callable[[], ResultStore], key: str
    ) -> None:
        stores = [open_store() for _ in range(8)]
        wins: list[bool] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(stores))

        def race(index: int) -> None:
            barrier.wait(10)
            won = stores[index].claim(key, expires_seconds=60)
            with lock:
                wins.append(won)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(wins) == len(stores)
        assert wins.count(True) == 1

    # waiting ---------------------------------------------------------------------------------

    def test_wait_returns_a_ready_value_at_once(self, store: ResultStore, key: str) -> None:
        store.set(key, b"done", expires_seconds=60, notify=True)
        started = time.monotonic()
        assert store.wait(key, 10.0, lambda value: value == b"done") == b"done"
        assert time.monotonic() - started < SLACK

    def test_wait_times_out_with_none(self, store: ResultStore, key: str) -> None:
        store.set(key, b"pending", expires_seconds=60)
        started = time.monotonic()
        assert store.wait(key, 1.0, lambda value: value == b"done") is None
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 1.0 + SLACK

    def test_wait_wakes_when_another_instance_notifies(
        self, open_store: Callable[[], ResultStore], store: ResultStore, key: str
    ) -> None:
        writer = open_store()
        writer.set(key, b"pending", expires_seconds=60, notify=False)

        def finish() -> None:
            writer.set(key, b"done", expires_seconds=60, notify=True)

        timer = threading.Timer(0.5, finish)
        started = time.monotonic()
        timer.start()
        try:
            value = store.wait(key, 20.0, lambda v: v == b"done")
        finally:
            timer.join()
        assert value == b"done"
        assert 0.4 <= time.monotonic() - started < 10.0

    def test_wait_for_a_key_that_appears_later(
        self, open_store: Callable[[], ResultStore], store: ResultStore, key: str
    ) -> None:
        writer = open_store()
        timer = threading.Timer(0.3, lambda: writer.set(key, b"x", expires_seconds=60, notify=True))
        timer.start()
        try:
            assert store.wait(key, 20.0, lambda v: True) == b"x"
        finally:
            timer.join()

    def test_close_is_idempotent(self, open_store: Callable[[], ResultStore]) -> None:
        store = open_store()
        store.get(unique("k"))
        store.close()
        store.close()

    def test_unknown_url_option_is_a_configuration_error(self, store_url: str) -> None:
        with pytest.raises(ConfigurationError, match="no_such_option"):
            connect_store(with_option(store_url, "no_such_option=1"))
