"""The kombu bridge: any transport kombu speaks, behind taskmesh's broker interface.

URL: ``kombu+`` followed by a kombu URL: ``kombu+memory://``,
``kombu+redis://host:6379/0``, ``kombu+amqp://user:password@host:5672//`` (py-amqp),
``kombu+pyamqp://...``, ``kombu+sqs://``. The bridge talks to kombu's
``Connection``, ``Producer`` and ``Consumer`` only, so what kombu supports, the
bridge reaches.

Options (query string; kombu's own URL options are not accepted here):

- ``connect_timeout`` (float, default 10): how long connecting and publishing
  retry before :class:`~taskmesh.errors.BrokerUnavailable`;
- ``delay_check_interval`` (float, default 0.5): seconds between looks at the
  parked delayed messages while receiving;
- ``poll_interval`` (float, default 0.1, Redis only): seconds between looks at
  empty queues (see the limitations for why Redis is polled);
- ``key_prefix`` (str, Redis only, default none): kombu's ``global_keyprefix``,
  so apps (or tests) sharing a Redis server keep their keys apart.

What each bridged transport can do, and what the bridge fills in:

- leases: an unacked kombu message. AMQP gives it back when the channel
  closes; memory when the channel closes; Redis when its entry in kombu's
  unacked index is older than kombu's ``visibility_timeout``: the bridge fixes
  that at 5 s and writes each delivery's deadline (``lease_seconds``, moved on
  by lease extensions) into the entry's score;
- delivery count: as in the native RabbitMQ adapter, a redelivered message is
  published again with the count in the ``x-taskmesh-deliveries`` header and
  the original acked;
- delays: kombu has none, so the bridge parks a delayed message in
  ``Q.delayed`` with its due time in a header, and every consumer of ``Q``
  moves the due ones into ``Q`` (and puts the others back) at most every
  ``delay_check_interval`` seconds. Accurate to about that interval; each
  parked message is handled once per interval, so it suits countdowns of
  seconds to minutes with modest numbers waiting;
- priorities 0-9: AMQP only (``x-max-priority`` 9, as the native adapter
  declares, so both can share a queue); Redis, memory and SQS keep FIFO;
- dead letters: the core's, to ``Q.dead`` with the reason as a header.

Limitations (issue #5): ``kombu+memory://`` lives in one process (threads
only); FIFO on SQS is not promised; kombu's Redis transport pops a message
before it records it as unacked, so a consumer killed with SIGKILL in between
loses that message. Its blocking consumer (``BRPOP``) makes that window as long
as the wait, so the bridge polls Redis with single pops instead, which narrows
it to an instant but cannot close it; the native ``redis://`` adapter, moving
a message atomically, has no such window.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import kombu
import kombu.exceptions

from taskmesh.errors import BrokerUnavailable, ConfigurationError, ConnectionLost
from taskmesh.transport import (
    DEAD_LETTER_SUFFIX,
    Capabilities,
    Delivery,
    Outgoing,
    Transport,
    dead_letter_queue,
)
from taskmesh.urls import mask_url, parse_options

__all__ = ["KombuTransport"]

logger = logging.getLogger(__name__)

# kombu's top-level names are lazy attributes mypy cannot see and its functions
# carry no annotations, so the bridge reaches them through Any.
_kombu: Any = kombu

T = TypeVar("T")

DELIVERIES_HEADER = "x-taskmesh-deliveries"
NOT_BEFORE_HEADER = "x-taskmesh-not-before"
DELAYED_SUFFIX = ".delayed"
REDIS_VISIBILITY = 5
PASS_HEADER = "x-taskmesh-pass"

_KOMBU_HEADERS = ("redelivered",)
_AMQP_SCHEMES = ("amqp", "pyamqp", "amqps")


def _bridged_scheme(url: str) -> str:
    scheme = url.split("://", 1)[0]
    return scheme.removeprefix("kombu+")


@dataclass(frozen=True, slots=True)
class _Receipt:
    generation: int
    message: Any
    priority: int


class KombuTransport(Transport):
    """A taskmesh transport over a kombu connection, one channel per instance.

    ``KombuTransport(url)`` returns the subclass that declares the bridged
    transport's capabilities.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, priorities=False, fifo=True, lease_extension=False
    )

    def __new__(cls, url: str, *args: Any, **kwargs: Any) -> KombuTransport:
        """Pick the subclass whose capabilities fit the bridged transport."""
        if cls is KombuTransport:
            scheme = _bridged_scheme(url)
            if scheme in _AMQP_SCHEMES:
                return super().__new__(_KombuAMQPTransport)
            if scheme == "redis":
                return super().__new__(_KombuRedisTransport)
        return super().__new__(cls)

    def __init__(self, url: str, *, lease_seconds: float = 30.0, **overrides: Any) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        declared = {
            "connect_timeout": float,
            "delay_check_interval": float,
            "key_prefix": str,
            "poll_interval": float,
        }
        options = parse_options(url, declared, overrides)
        self.connect_timeout: float = options.get("connect_timeout", 10.0)
        self.delay_check_interval: float = options.get("delay_check_interval", 0.5)
        self.poll_interval: float = options.get("poll_interval", 0.1)
        # Not split_options: urlunsplit turns "memory://" into "memory:".
        bare = url.split("?", 1)[0]
        if not bare.startswith("kombu+"):
            raise ConfigurationError(f"A kombu bridge URL starts with 'kombu+': {mask_url(url)}.")
        self.kombu_url = bare.removeprefix("kombu+")
        self.scheme = _bridged_scheme(url)
        self._transport_options: dict[str, Any] = {}
        if self.scheme == "redis":
            self._transport_options = {
                # One visibility timeout for every bridge instance, whatever
                # its lease: each delivery's own deadline is written into
                # kombu's unacked index as score + REDIS_VISIBILITY.
                "visibility_timeout": REDIS_VISIBILITY,
                "unacked_restore_throttle": 1,
                # kombu's restore lock lives 5 minutes by default: a consumer
                # killed while holding it would stop every restore that long.
                "unacked_mutex_expire": REDIS_VISIBILITY,
                "global_keyprefix": options.get("key_prefix", ""),
            }
        elif self.scheme in _AMQP_SCHEMES:
            # py-amqp waits for the broker's publisher confirm on each publish.
            self._transport_options = {"confirm_publish": True}
        if self.scheme != "redis" and "key_prefix" in options:
            raise ConfigurationError(
                f"The key_prefix option applies to kombu+redis only, not {mask_url(url)}."
            )
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._connection: Any = None
        self._channel: Any = None
        self._producer: Any = None
        self._consumer: Any = None
        self._consuming: tuple[str, ...] = ()
        self._prefetch = 0
        self._incoming: deque[tuple[str, Any]] = deque()
        self._outstanding: dict[int, Any] = {}
        self._generation = 0
        self._declared: set[str] = set()
        self._next_delay_check = 0.0

    # connection ----------------------------------------------------------------------

    def _queue(self, name: str) -> Any:
        """The kombu queue ``name``, bound to the default exchange by its name."""
        return _kombu.Queue(name, _kombu.Exchange(""), routing_key=name, durable=True)

    def _work_queue(self, name: str) -> Any:
        return self._queue(name)

    def _spec(self, name: str) -> Any:
        """The declaration of ``name``: a work queue, or a plain dead or parked one."""
        if name.endswith((DEAD_LETTER_SUFFIX, DELAYED_SUFFIX)):
            return self._queue(name)
        return self._work_queue(name)

    def _set_prefetch(self, consumer: Any, prefetch: int) -> None:
        consumer.qos(prefetch_count=prefetch)

    def _open(self) -> Any:
        if self._pid != os.getpid():
            # A forked child must not share the parent's socket.
            self._reset()
        if self._channel is not None:
            return self._channel
        connection = _kombu.Connection(
            self.kombu_url,
            connect_timeout=min(10.0, self.connect_timeout),
            transport_options=dict(self._transport_options),
        )
        try:
            connection.ensure_connection(
                max_retries=max(1, int(self.connect_timeout / 0.5)),
                interval_start=0.1,
                interval_step=0.2,
                interval_max=1.0,
            )
        except (*connection.connection_errors, OSError) as exc:
            raise BrokerUnavailable(
                f"Cannot connect to {mask_url(self.url)} within {self.connect_timeout} s: {exc!r}.",
                mask_url(self.url),
            ) from exc
        self._connection = connection
        self._channel = connection.channel()
        self._producer = _kombu.Producer(self._channel)
        self._generation += 1
        self._declared = set()
        self._consuming = ()
        self._consumer = None
        self._incoming.clear()
        self._outstanding.clear()
        return self._channel

    def _errors(self) -> tuple[type[BaseException], ...]:
        connection = self._connection
        if connection is None:
            return (OSError, kombu.exceptions.KombuError)
        return (
            *connection.connection_errors,
            *connection.channel_errors,
            OSError,
            kombu.exceptions.KombuError,
        )

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        channel = self._channel
        self._channel = self._producer = self._consumer = None
        self._consuming = ()
        held = [*self._outstanding.values(), *(message for _, message in self._incoming)]
        if connection is not None and self._pid == os.getpid():
            try:
                if self.scheme == "memory":
                    # kombu's memory transport drops unacked messages when its
                    # channel closes; a lease must end with them back instead.
                    for message in held:
                        message.requeue()
                if channel is not None:
                    channel.close()
                connection.release()
            except (OSError, kombu.exceptions.KombuError, AttributeError):
                logger.debug("broker connection release failed url=%s", self.safe_url)
        self._incoming.clear()
        self._outstanding.clear()

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.connect_timeout
        pause = 0.1
        while True:
            errors = self._errors()
            try:
                return operation()
            except BrokerUnavailable:
                raise
            except errors as exc:
                self._drop()
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"{what} on {self.safe_url} failed for {self.connect_timeout} s: {exc!r}.",
                        self.safe_url,
                    ) from exc
                logger.warning(
                    "broker %s failed, retrying url=%s error=%r", what, self.safe_url, exc
                )
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(2.0, pause * 2)

    # publishing ----------------------------------------------------------------------

    def _declare_queue(self, name: str) -> None:
        if name in self._declared:
            return
        channel = self._open()
        self._spec(name)(channel).declare()
        if not name.endswith((DEAD_LETTER_SUFFIX, DELAYED_SUFFIX)):
            self._queue(dead_letter_queue(name))(channel).declare()
        self._declared.add(name)

    def _send(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        priority: int,
        prior: int,
        not_before: float,
    ) -> None:
        self._open()
        self._declare_queue(queue)
        target = queue
        if prior:
            headers[DELIVERIES_HEADER] = str(prior)
        if not_before:
            headers[NOT_BEFORE_HEADER] = repr(not_before)
            if not_before > time.time():
                target = queue + DELAYED_SUFFIX
                self._declare_queue(target)
        assert self._producer is not None  # opened with the channel
        self._producer.publish(
            body,
            exchange="",
            routing_key=target,
            headers=headers,
            priority=max(0, min(9, priority)),
            content_type="application/octet-stream",
            content_encoding="binary",
            delivery_mode=2,
            serializer=None,
        )

    def publish(self, message: Outgoing) -> None:
        """Publish one message through kombu's producer.

        Raises:
            BrokerUnavailable: Still failing after ``connect_timeout``.
        """
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish messages one by one; not atomic."""
        for message in messages:
            self._retrying("publish", functools.partial(self._publish_one, message))

    def _publish_one(self, message: Outgoing) -> None:
        not_before = time.time() + message.delay if message.delay > 0 else 0.0
        self._send(
            message.queue, message.body, dict(message.headers), message.priority, 0, not_before
        )

    def declare(self, queue: str) -> None:
        """Declare ``queue`` and ``queue.dead``. Idempotent."""
        self._declared.discard(queue)
        self._retrying("declare", lambda: self._declare_queue(queue))

    # receiving -----------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_messages`` messages, draining kombu events up to ``timeout``.

        Raises:
            ConnectionLost: The connection dropped.
            BrokerUnavailable: Reconnecting failed.
        """
        self._open()
        errors = self._errors()
        try:
            return self._receive(queues, max_messages, timeout)
        except errors as exc:
            self._drop()
            raise ConnectionLost(
                f"Lost the connection to {self.safe_url}: {exc!r}.", self.safe_url
            ) from exc

    def _receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        if self.scheme == "redis":
            return self._receive_polling(queues, max_messages, timeout)
        self._consume(queues, max_messages)
        assert self._connection is not None  # opened by receive
        deadline = time.monotonic() + timeout
        taken: list[Delivery] = []
        while True:
            self._move_due_when_time(queues)
            while self._incoming and len(taken) < max_messages:
                delivery = self._accept(*self._incoming.popleft())
                if delivery is not None:
                    taken.append(delivery)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            try:
                wait = min(remaining, self._next_delay_check - time.time())
                self._connection.drain_events(timeout=max(0.01, wait))
            except TimeoutError:
                pass

    def _move_due_when_time(self, queues: Sequence[str]) -> bool:
        """Move parked delayed messages that are due, once per ``delay_check_interval``."""
        if time.time() < self._next_delay_check:
            return False
        self._next_delay_check = time.time() + self.delay_check_interval
        self._move_due(queues)
        return True

    def _receive_polling(
        self, queues: Sequence[str], max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Take messages with one non-blocking get at a time, in queue order.

        kombu's Redis consumer blocks in ``BRPOP``, which pops a message on the
        server before the client records it as unacked: a process killed while
        blocked loses whatever arrived. A plain pop is answered at once, so
        that window shrinks to the instant between reply and record.
        """
        channel = self._open()
        for queue in queues:
            self._declare_queue(queue)
        deadline = time.monotonic() + timeout
        taken: list[Delivery] = []
        while True:
            if self._move_due_when_time(queues):
                # Without kombu's consumer loop nothing else gives back the
                # messages of consumers that died.
                channel.qos.restore_visible(num=100, interval=1)
            for queue in queues:
                while len(taken) < max_messages:
                    message = self._spec(queue)(channel).get(no_ack=False, accept=None)
                    if message is None:
                        break
                    delivery = self._accept(queue, message)
                    if delivery is not None:
                        taken.append(delivery)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            wait = min(remaining, self.poll_interval, self._next_delay_check - time.time())
            time.sleep(max(0.005, wait))

    def _consume(self, queues: Sequence[str], wanted: int) -> None:
        prefetch = len(self._outstanding) + wanted
        if tuple(queues) == self._consuming and self._consumer is not None:
            if prefetch > self._prefetch:
                self._set_prefetch(self._consumer, prefetch)
                self._prefetch = prefetch
            return
        if self._consumer is not None:
            self._consumer.cancel()
        for queue in queues:
            self._declare_queue(queue)
        consumer = _kombu.Consumer(
            self._channel,
            [self._spec(q) for q in queues],
            accept=None,
            no_ack=False,
        )
        self._set_prefetch(consumer, prefetch)
        self._prefetch = prefetch
        consumer.register_callback(self._on_message)
        consumer.consume()
        self._consumer = consumer
        self._consuming = tuple(queues)

    def _on_message(self, body: Any, message: Any) -> None:
        queue = message.delivery_info.get("routing_key") or ""
        self._incoming.append((queue, message))

    def _accept(self, queue: str, message: Any) -> Delivery | None:
        headers: dict[str, Any] = dict(message.headers or {})
        raw = getattr(message, "_raw", None)  # kombu's virtual transports keep the payload
        redelivered = bool(
            message.delivery_info.get("redelivered")
            or headers.get("redelivered") is True
            or (isinstance(raw, dict) and raw.get("redelivered"))
        )
        prior = _int(headers.get(DELIVERIES_HEADER))
        count = prior + (2 if redelivered else 1)
        priority = int(message.properties.get("priority") or 0)
        not_before = _float(headers.get(NOT_BEFORE_HEADER))
        early = not_before > time.time()
        if early or redelivered:
            # Published again before the ack: a crash in between duplicates,
            # never loses. An early message keeps its count.
            self._send(queue, message.body, _user(headers), priority, count - 1, not_before)
            message.ack()
            return None
        self._outstanding[id(message)] = message
        receipt = _Receipt(self._generation, message, priority)
        delivery = Delivery(queue, message.body, _user(headers), count, receipt)
        self._leased(delivery)
        return delivery

    def _leased(self, delivery: Delivery) -> None:
        """Start the lease of a new delivery, where the transport needs telling."""

    def _move_due(self, queues: Sequence[str]) -> None:
        """Move parked messages that are due into their queues; park the rest again."""
        channel = self._channel
        for queue in queues:
            parked = self._queue(queue + DELAYED_SUFFIX)(channel)
            if queue + DELAYED_SUFFIX not in self._declared:
                parked.declare()
                self._declared.add(queue + DELAYED_SUFFIX)
            marker = f"{time.monotonic_ns()}-{id(self)}"
            for _ in range(1000):
                message = parked.get(no_ack=False, accept=None)
                if message is None:
                    break
                if not self._unpark(queue, message, marker):
                    break

    def _unpark(self, queue: str, message: Any, marker: str) -> bool:
        """Move one parked message on; return False once the pass has come round."""
        headers = dict(message.headers or {})
        seen = headers.get(PASS_HEADER) == marker
        not_before = _float(headers.get(NOT_BEFORE_HEADER))
        prior = _int(headers.get(DELIVERIES_HEADER))
        priority = int(message.properties.get("priority") or 0)
        user = _user(headers)
        if not_before > time.time():
            # Still waiting: back to the end of the parked queue, stamped so
            # this pass stops when it meets it again; look again when it is due.
            user[PASS_HEADER] = marker
            self._next_delay_check = min(self._next_delay_check, not_before)
        self._send(queue, message.body, user, priority, prior, not_before)
        message.ack()
        return not seen

    # settling ------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """Ack the message; a no-op once its connection is gone."""
        receipt: _Receipt = delivery.receipt
        if receipt.generation != self._generation or id(receipt.message) not in self._outstanding:
            return
        self._outstanding.pop(id(receipt.message), None)
        try:
            receipt.message.ack()
        except self._errors() as exc:
            logger.debug("broker ack failed url=%s error=%r", self.safe_url, exc)
            self._drop()

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Publish a copy that keeps the delivery count, then ack the original."""
        receipt: _Receipt = delivery.receipt
        not_before = time.time() + delay if delay > 0 else 0.0
        self._retrying(
            "requeue",
            lambda: self._send(
                delivery.queue,
                delivery.body,
                dict(delivery.headers),
                receipt.priority,
                delivery.delivery_count,
                not_before,
            ),
        )
        self.ack(delivery)

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Do nothing: kombu offers no way to extend an unacked message's hold."""

    # measuring -----------------------------------------------------------------------

    def _measure(self, queue: str, purge: bool) -> int:
        def measure() -> int:
            channel = self._open()
            total = 0
            for name in (queue, queue + DELAYED_SUFFIX):
                # Declaring (not a passive declare) answers for a queue that
                # does not exist yet, and kombu's passive check on Redis misses
                # a global_keyprefix.
                declared = self._spec(name)(channel).queue_declare()
                self._declared.add(name)
                if purge:
                    total += int(channel.queue_purge(name) or 0)
                else:
                    total += int(declared.message_count)
            return total

        return self._retrying("size" if not purge else "purge", measure)

    def size(self, queue: str) -> int:
        """Count ready and parked messages (unacked ones are not counted by AMQP)."""
        return self._measure(queue, purge=False)

    def purge(self, queue: str) -> int:
        """Delete ready and parked messages."""
        return self._measure(queue, purge=True)

    def close(self) -> None:
        """Release the connection; unacked messages go back as the transport allows."""
        self._drop()


class _KombuRedisTransport(KombuTransport):
    """The bridge over Redis: leases are kombu's visibility timeout, extended here."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, priorities=False, fifo=True, lease_extension=True
    )

    def _leased(self, delivery: Delivery) -> None:
        self.extend_lease(delivery, self.lease_seconds)

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Move the message's entry in kombu's unacked index forward.

        kombu restores an unacked message once its index score is older than
        its ``visibility_timeout``; scoring it ``seconds`` ahead of that keeps it.

        Raises:
            ConnectionLost: Redis could not be reached.
        """
        receipt: _Receipt = delivery.receipt
        channel = self._channel
        if receipt.generation != self._generation or channel is None:
            return
        if id(receipt.message) not in self._outstanding:
            return
        score = time.time() + seconds - REDIS_VISIBILITY
        tag = receipt.message.delivery_tag
        try:
            # xx: only an entry still there; an acked or restored one stays gone.
            channel.client.zadd(channel.unacked_index_key, {tag: score}, xx=True)
        except self._errors() as exc:
            self._drop()
            raise ConnectionLost(
                f"Lost the connection to {self.safe_url}: {exc!r}.", self.safe_url
            ) from exc


class _KombuAMQPTransport(KombuTransport):
    """The bridge over py-amqp: priorities through ``x-max-priority``."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, priorities=True, fifo=True, lease_extension=False
    )

    def _set_prefetch(self, consumer: Any, prefetch: int) -> None:
        # Channel-wide (global) on RabbitMQ: a per-consumer prefetch applies
        # only to consumers started after it, so it could never grow.
        consumer.qos(prefetch_count=prefetch, apply_global=True)

    def _work_queue(self, name: str) -> Any:
        # The same arguments as the native adapter declares, so both can share
        # a queue.
        return _kombu.Queue(
            name,
            _kombu.Exchange(""),
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-max-priority": 9,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead_letter_queue(name),
            },
        )


def _int(value: Any) -> int:
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _user(headers: dict[str, Any]) -> dict[str, str]:
    return {
        str(key): value if isinstance(value, str) else str(value)
        for key, value in headers.items()
        if not str(key).startswith("x-taskmesh-")
        and not str(key).startswith(("x-death", "x-first-death-", "x-last-death-"))
        and not (key in _KOMBU_HEADERS and isinstance(value, bool))
    }
