"""The RabbitMQ broker, through pika: durable queues, confirms, acks after the task.

URL: ``amqp://user:password@host:5672/vhost`` (``%2F`` is the default vhost ``/``),
or ``amqps://`` for TLS with the system's certificate store.

Options (query string):

- ``heartbeat`` (float, default 60): seconds between AMQP heartbeats; ``0``
  turns them off. A helper thread keeps them flowing while the owning thread is
  busy elsewhere (a worker whose slots all run long tasks receives nothing);
- ``connect_timeout`` (float, default 10): how long connecting and publishing
  retry, with backoff, before :class:`~taskmesh.errors.BrokerUnavailable`;
- ``prefetch_count`` (int, default 0): unacked messages the broker pushes to
  one consumer; ``0`` follows each ``receive``: what the caller holds plus
  asks for, grown at once and shrunk once below half (see :func:`next_prefetch`);
- ``queue_type`` (``classic`` or ``quorum``, default ``classic``): the type of
  the work queues this adapter declares;
- ``max_priority`` (int 0-9, default 9): ``x-max-priority`` of classic work
  queues; ``0`` declares plain FIFO queues;
- ``consumer_timeout`` (float, default 1800): the server's ``consumer_timeout``
  in seconds; a delivery held for half of it is moved out of the channel (below).

How it maps the broker interface (see ``docs/rabbitmq.md`` for the long form):

- queue ``Q``: a durable queue of that name on the default exchange, with a
  dead-letter exchange (the default exchange, routing key ``Q.dead``) so that
  any ``basic.nack`` without requeue lands in the durable queue ``Q.dead``.
  :meth:`Transport.reject` itself publishes there with the reason as a header;
- publish: persistent messages, publisher confirms, ``mandatory``; a nack, an
  unroutable return or a lost connection is retried until ``connect_timeout``.
  Several at once go in AMQP transactions of up to 1,000 on a second channel,
  one round trip per commit (:meth:`RabbitMQTransport.publish_many`);
- ack: batches as one ``basic.ack`` with ``multiple`` where no delivery still
  held lies below (:func:`ack_frames`);
- receive: ``basic.consume`` with a channel-wide prefetch (per consumer on
  quorum queues); the lease is the unacked delivery, which RabbitMQ gives back
  when the channel or the connection closes (a dead worker);
- delivery count: quorum queues report ``x-delivery-count``. Classic queues
  only say ``redelivered``, so a redelivered message is published again with
  the count in the ``x-taskmesh-deliveries`` header and the original acked;
  the copy is what the worker sees, its count one higher. A message given back
  with :meth:`requeue` is re-published the same way;
- delay: the message carries its due time in ``x-taskmesh-not-before`` and
  waits in per-queue TTL queues ``Q.delay.<ms>`` whose lengths are powers of
  two from 125 ms to about 12 days; each dead-letters back into ``Q``. A
  message that comes back before it is due goes to the longest wait that still
  ends before its due time, so a delay of days takes about twenty hops and
  arrives at most 125 ms late. No plugin is needed;
- priorities 0-9: ``x-max-priority`` on classic queues (quorum queues in
  RabbitMQ 3.x ignore priorities).

Consumer timeout: RabbitMQ closes a channel whose oldest unacked delivery is
older than the server's ``consumer_timeout`` (30 min by default; per queue only
from 3.12). :meth:`RabbitMQTransport.extend_lease`, which the worker calls for
every running task, moves a delivery held for half that time into a holding
queue of its own (a TTL queue dead-lettering back to ``Q``), acks the original
and keeps re-publishing the copy until the task settles; if the worker dies,
the copy comes back within ``2 * lease_seconds``. Should a channel be closed
anyway (the option set higher than the server's value), the next ``receive``
raises :class:`~taskmesh.errors.ConnectionLost` naming the setting.

Capabilities: delays (any length), priorities 0-9 (classic queues), FIFO within
a priority, lease extension (as above), messages up to 128 MiB (the server's
default ``max_message_size``), core dead-lettering with the reason. Tested with
RabbitMQ 3.10 and pika 1.4.

Threads: one owner at a time, as for every transport; the heartbeat thread
takes the same lock before it touches the connection.

Limitations (issue #5): :meth:`RabbitMQTransport.size` counts ready and delayed
messages, not unacked or moved ones, which AMQP does not report; queues are
consumed together, so "in the order given" holds only among messages already
pushed. The module runs past 800 lines because topology, delay hops, counted
redeliveries and the holding queue share one connection's state; split, each
part would reach into the others' private fields.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, ReturnedMessage

from taskmesh.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
)
from taskmesh.transport import (
    DEAD_LETTER_SUFFIX,
    Capabilities,
    Delivery,
    Outgoing,
    Transport,
    dead_letter_queue,
)
from taskmesh.urls import mask_url, parse_options, split_options

__all__ = ["DELAY_LEVELS_MS", "RabbitMQTransport", "ack_frames", "delay_level_ms", "next_prefetch"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DELIVERIES_HEADER = "x-taskmesh-deliveries"
NOT_BEFORE_HEADER = "x-taskmesh-not-before"
HELD_HEADER = "x-taskmesh-held"
MAX_MESSAGE_BYTES = 128 * 1024 * 1024

DELAY_LEVELS_MS: tuple[int, ...] = tuple(125 << level for level in range(24))
"""The TTLs of the delay queues: 125 ms, 250 ms ... about 12 days."""

# A delay queue is deleted this long after it was last declared; publishers
# redeclare it at least every _REDECLARE_SECONDS, so it always outlives the
# messages in it (the longest level plus an hour).
_DELAY_QUEUE_EXPIRES_MS = DELAY_LEVELS_MS[-1] + 3_600_000
_REDECLARE_SECONDS = 600.0

# publish_many commits at most this many messages, or about this many body
# bytes, per transaction: RabbitMQ keeps a transaction's messages in the
# channel's memory until the commit, and a failed commit is retried whole.
_BATCH_MESSAGES = 1000
_BATCH_BYTES = 16 * 1024 * 1024

# A quorum queue's prefetch is per consumer and binds only consumers started
# after it, so shrinking it means cancelling and restarting them (and pika
# requeues what was pushed but not yet dispatched): at most this often.
_QUORUM_SHRINK_SECONDS = 60.0

_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
_DRIVER_ERRORS = (pika.exceptions.AMQPError, OSError)


def delay_level_ms(remaining_ms: float) -> int:
    """Return the delay queue TTL for a message due in ``remaining_ms``.

    The longest level that ends no later than the due time, or the shortest
    level when less than that remains, so a message is never early.
    """
    fitting = [level for level in DELAY_LEVELS_MS if level <= remaining_ms]
    return fitting[-1] if fitting else DELAY_LEVELS_MS[0]


def _delay_queue(queue: str, level: int) -> str:
    return f"{queue}.delay.{level}"


def delivery_count(headers: Mapping[str, Any], redelivered: bool, quorum: bool) -> int:
    """Return how often a message has been handed out, this time included.

    Args:
        headers: The AMQP headers as received.
        redelivered: The delivery's ``redelivered`` flag.
        quorum: Whether the queue is a quorum queue (which counts returns).

    Returns:
        The count; for a classic queue a redelivered message counts one more
        than its header, which the adapter then writes into a fresh copy.
    """
    prior = _int_header(headers, DELIVERIES_HEADER)
    if quorum:
        return prior + _int_header(headers, "x-delivery-count") + 1
    return prior + (2 if redelivered else 1)


def _int_header(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def ack_frames(tags: Collection[int], unacked: Iterable[int]) -> list[tuple[int, bool]]:
    """Return the fewest ``basic.ack`` frames that settle exactly ``tags``.

    An ack with ``multiple`` settles every unacked tag up to its own on the
    channel, and has no lower bound. So it may cover only the tags below the
    lowest unacked tag that is *not* being acked now; each tag above that one
    needs a frame of its own. Tags the broker has not delivered yet are higher
    than every delivered one and never in the way.

    Args:
        tags: The delivery tags to ack, all of them unacked on the channel.
        unacked: Every tag delivered on the channel and not acked yet, ``tags``
            included.

    Returns:
        ``(delivery_tag, multiple)`` pairs in the order to send them.
    """
    if not tags:
        return []
    kept = [tag for tag in unacked if tag not in tags]
    floor = min(kept) if kept else None
    ordered = sorted(tags)
    below = [tag for tag in ordered if floor is None or tag < floor]
    frames = [(below[-1], len(below) > 1)] if below else []
    frames.extend((tag, False) for tag in ordered[len(below) :])
    return frames


def next_prefetch(current: int, need: int, *, quorum: bool, since_change: float) -> int:
    """Return the channel prefetch to set when the caller holds and asks for ``need``.

    It grows at once to what is needed. It shrinks to ``need`` only once that
    falls below half the current value, so a need that wavers does not
    re-issue ``basic.qos`` on every receive, and on quorum queues, where a
    change restarts the consumers, only if the last change is
    ``_QUORUM_SHRINK_SECONDS`` old.

    Args:
        current: The prefetch in force (0: none set yet).
        need: Deliveries the caller holds plus those it asks for now.
        quorum: Whether the queues are quorum queues.
        since_change: Seconds since the prefetch last changed.

    Returns:
        The prefetch, never below 1 (0 would mean no limit in AMQP).
    """
    need = max(1, need)
    if need > current:
        return need
    if 2 * need >= current or (quorum and since_change < _QUORUM_SHRINK_SECONDS):
        return current
    return need


def _batches(messages: Sequence[Outgoing]) -> Iterator[Sequence[Outgoing]]:
    """Split ``messages`` into runs of at most ``_BATCH_MESSAGES`` and about ``_BATCH_BYTES``."""
    start = size = 0
    for index, message in enumerate(messages):
        if index > start and (index - start >= _BATCH_MESSAGES or size >= _BATCH_BYTES):
            yield messages[start:index]
            start, size = index, 0
        size += len(message.body)
    if start < len(messages):
        yield messages[start:]


def user_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Strip the adapter's and the broker's own headers, keep the publisher's."""
    return {
        str(key): value if isinstance(value, str) else str(value)
        for key, value in headers.items()
        if not key.startswith("x-taskmesh-") and not key.startswith(_BROKER_HEADERS)
    }


@dataclass(frozen=True, slots=True)
class _Receipt:
    generation: int
    tag: int
    priority: int
    received_at: float


@dataclass(slots=True)
class _Held:
    """A long-held delivery, acked on its channel and kept as a copy in a holding queue."""

    queue: str
    marker: str
    copied_at: float


@dataclass(frozen=True, slots=True)
class _Incoming:
    queue: str
    tag: int
    redelivered: bool
    properties: pika.BasicProperties
    body: bytes


def _parse_queue_type(value: str) -> str:
    if value not in ("classic", "quorum"):
        raise ValueError("expected 'classic' or 'quorum'")
    return value


def _parse_priority(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 9:
        raise ValueError("expected 0 to 9")
    return number


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "heartbeat": float,
    "connect_timeout": float,
    "prefetch_count": int,
    "queue_type": _parse_queue_type,
    "max_priority": _parse_priority,
    "consumer_timeout": float,
}


class RabbitMQTransport(Transport):
    """Queues on a RabbitMQ server, one pika connection and channel per instance."""

    capabilities = Capabilities(
        native_delay=True,
        priorities=True,
        fifo=True,
        dead_letter=False,
        max_message_bytes=MAX_MESSAGE_BYTES,
        lease_extension=True,
    )

    def __init__(self, url: str, *, lease_seconds: float = 30.0, **overrides: Any) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        options = parse_options(url, _OPTIONS, overrides)
        self.heartbeat: float = options.get("heartbeat", 60.0)
        self.connect_timeout: float = options.get("connect_timeout", 10.0)
        self.prefetch_count: int = options.get("prefetch_count", 0)
        self.queue_type: str = options.get("queue_type", "classic")
        self.max_priority: int = options.get("max_priority", 9)
        self.consumer_timeout: float = options.get("consumer_timeout", 1800.0)
        self._holder = uuid.uuid4().hex[:12]
        self._hold_seconds = max(1.0, 2 * lease_seconds)
        self._parameters = self._connection_parameters(url)
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        # A second channel in AMQP transaction mode for publish_many: a
        # transaction on the main channel would hold back its acks too.
        self._tx_channel: BlockingChannel | None = None
        self._returned: list[ReturnedMessage] = []
        self._generation = 0
        self._declared: dict[str, float] = {}
        self._consuming: dict[str, str] = {}
        self._prefetch = 0
        self._prefetch_changed_at = 0.0
        self._incoming: deque[_Incoming] = deque()
        self._outstanding: set[int] = set()
        # Every tag delivered on the channel and not acked yet: the caller's
        # (``_outstanding``), those still in ``_incoming``, a holding-queue get.
        # A multiple ack must never reach one that is not being acked.
        self._unacked: set[int] = set()
        self._held: dict[tuple[int, int], _Held] = {}
        self._last_io = time.monotonic()
        self._pulse_stop = threading.Event()
        self._pulse: threading.Thread | None = None
        self._closed = False
        self._lost: BaseException | None = None

    def _connection_parameters(self, url: str) -> pika.URLParameters:
        bare, _ = split_options(url)
        scheme = urlsplit(bare).scheme
        try:
            parameters = pika.URLParameters(bare)
        except ValueError as exc:
            raise ConfigurationError(f"Cannot read the AMQP URL {mask_url(url)}: {exc}.") from exc
        if scheme == "amqps":
            host = urlsplit(bare).hostname or ""
            parameters.ssl_options = pika.SSLOptions(ssl.create_default_context(), host)
        parameters.heartbeat = round(self.heartbeat)
        parameters.connection_attempts = 1
        parameters.socket_timeout = min(10.0, self.connect_timeout)
        parameters.blocked_connection_timeout = max(self.connect_timeout, 30.0)
        return parameters

    # connection ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._pid != os.getpid():
            # A forked child must not touch the parent's socket: start afresh.
            self._reset_state()
        if self._closed:
            raise BrokerError("This RabbitMQ transport is closed.", self.safe_url)
        with self._lock:
            yield
            self._last_io = time.monotonic()

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            self._drop()
            self._connect_with_retry()
        assert self._connection is not None  # set by _connect_with_retry
        channel = self._connection.channel()
        channel.confirm_delivery()
        # Delivery tags are per channel: deliveries of an earlier channel (whose
        # unacked messages RabbitMQ has requeued) must never be acked on this one.
        self._generation += 1
        self._channel = channel
        self._consuming = {}
        self._incoming.clear()
        self._outstanding.clear()
        self._unacked.clear()
        self._prefetch = 0
        self._declared = {}
        self._start_pulse()
        return channel

    def _connect_with_retry(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        pause = 0.1
        while True:
            try:
                self._connection = pika.BlockingConnection(self._parameters)
            except _DRIVER_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"Cannot connect to RabbitMQ at {self.safe_url} within "
                        f"{self.connect_timeout} s: {exc!r}. Check that the server runs and "
                        "that the URL's host, port, vhost and credentials are right.",
                        self.safe_url,
                    ) from exc
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(2.0, pause * 2)
                continue
            logger.debug("broker connected url=%s", self.safe_url)
            return

    def _drop(self) -> None:
        """Forget the connection; RabbitMQ requeues what it had delivered on it."""
        connection, self._connection, self._channel = self._connection, None, None
        self._tx_channel = None
        self._returned.clear()
        self._incoming.clear()
        self._outstanding.clear()
        self._unacked.clear()
        self._consuming = {}
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except _DRIVER_ERRORS:
                logger.debug("broker connection close failed url=%s", self.safe_url)

    def _start_pulse(self) -> None:
        if self.heartbeat <= 0 or (self._pulse is not None and self._pulse.is_alive()):
            return
        self._pulse = threading.Thread(
            target=self._pulse_loop, name="taskmesh-amqp-heartbeat", daemon=True
        )
        self._pulse.start()

    def _pulse_loop(self) -> None:
        # The owning thread may not touch the transport for longer than the
        # heartbeat timeout (a worker whose slots all run long tasks receives
        # nothing). pika answers heartbeats only inside its own calls, so this
        # thread makes one whenever the owner has been quiet for a while. The
        # lock keeps it from ever running beside the owner.
        every = max(0.2, self.heartbeat / 4)
        pid = os.getpid()
        while not self._pulse_stop.wait(every):
            if pid != os.getpid() or not self._lock.acquire(blocking=False):
                continue
            try:
                connection = self._connection
                if connection is None or time.monotonic() - self._last_io < every:
                    continue
                connection.process_data_events(0)
                self._last_io = time.monotonic()
            except _DRIVER_ERRORS as exc:
                logger.warning("broker heartbeat failed url=%s error=%r", self.safe_url, exc)
                self._drop()
                self._lost = exc
            finally:
                self._lock.release()

    # publishing ----------------------------------------------------------------------

    def publish(self, message: Outgoing) -> None:
        """Publish one persistent message and wait for the broker's confirm.

        Raises:
            MessageTooLarge: The body is over 128 MiB.
            BrokerUnavailable: No confirm within ``connect_timeout`` of retrying.
        """
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistent messages, a transaction per batch, all committed on return.

        A single message is published with a publisher confirm, as
        :meth:`publish`. Several go over a channel of their own in AMQP
        transaction mode, up to 1,000 messages (or 16 MiB of bodies) per
        commit: RabbitMQ answers ``tx.commit`` only once every message of the
        batch is routed, and written to disk, so a batch costs about one
        confirm's round trip. A message returned unroutable (``mandatory``) is
        published again, with the queues declared anew; a lost connection makes
        the whole batch go again on a new one; both until ``connect_timeout``.

        Partial failure: when this raises, the batches committed before the
        failing one are in their queues, and some of the failing one may be
        too. Publishing the same messages again is safe (at least once) but
        may duplicate those; no message this returned for is ever lost.

        Raises:
            MessageTooLarge: A body is over 128 MiB (nothing is sent).
            BrokerUnavailable: A batch was not committed within
                ``connect_timeout`` of retrying.
        """
        for message in messages:
            if len(message.body) > MAX_MESSAGE_BYTES:
                raise MessageTooLarge(
                    f"A message of {len(message.body)} bytes for queue {message.queue!r} is "
                    f"over RabbitMQ's limit of {MAX_MESSAGE_BYTES} bytes.",
                    self.safe_url,
                )
        with self._locked():
            if len(messages) == 1:
                self._retrying("publish", functools.partial(self._publish_one, messages[0]))
                return
            now = time.time()
            for batch in _batches(messages):
                pending = [(m, now + m.delay if m.delay > 0 else 0.0) for m in batch]
                self._retrying("publish", functools.partial(self._commit_batch, pending))

    def _open_tx(self) -> BlockingChannel:
        channel = self._tx_channel
        if channel is not None and channel.is_open:
            return channel
        assert self._connection is not None  # the main channel is opened first
        channel = self._connection.channel()
        channel.tx_select()
        channel.add_on_return_callback(self._on_returned)
        self._tx_channel = channel
        self._returned.clear()
        return channel

    def _on_returned(
        self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        self._returned.append(ReturnedMessage(method, properties, body))

    def _commit_batch(self, pending: list[tuple[Outgoing, float]]) -> None:
        """Publish ``pending`` in one transaction; keep only the returned ones in it.

        Raises:
            pika.exceptions.UnroutableError: Some messages came back; ``pending``
                now holds them (and any others bound for the same queues).
        """
        channel = self._open()
        routed = [
            self._route(channel, m.queue, dict(m.headers), m.priority, 0, not_before)
            for m, not_before in pending
        ]
        tx = self._open_tx()
        self._returned.clear()
        try:
            for (message, _), (target, properties) in zip(pending, routed, strict=True):
                tx.basic_publish("", target, message.body, properties, mandatory=True)
            tx.tx_commit()
        except pika.exceptions.ChannelClosedByBroker:
            # A queue refused a message (a length limit with reject-publish,
            # say: "partial tx completion"). The main channel and its
            # deliveries are unharmed; the whole batch goes again.
            self._tx_channel = None
            raise
        assert self._connection is not None  # open: the commit just went through it
        # RabbitMQ sends a transaction's basic.return frames before its
        # commit-ok, so they have been read; this hands them to _on_returned.
        self._connection.process_data_events(0)
        if not self._returned:
            return
        returned, self._returned = self._returned, []
        targets = {message.method.routing_key for message in returned}
        pending[:] = [
            item for item, (target, _) in zip(pending, routed, strict=True) if target in targets
        ]
        raise pika.exceptions.UnroutableError(returned)

    def _publish_one(self, message: Outgoing) -> None:
        not_before = time.time() + message.delay if message.delay > 0 else 0.0
        self._send(
            message.queue, message.body, dict(message.headers), message.priority, 0, not_before
        )

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.connect_timeout
        pause = 0.1
        while True:
            try:
                return operation()
            except BrokerUnavailable:
                raise
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
                error: Exception = exc
                self._declared.clear()
            except pika.exceptions.ChannelClosedByBroker as exc:
                error = exc
                self._declared.clear()
                if self._channel is None or not self._channel.is_open:
                    self._drop()
            except _DRIVER_ERRORS as exc:
                error = exc
                self._drop()
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"RabbitMQ at {self.safe_url} did not confirm a {what} within "
                    f"{self.connect_timeout} s: {error!r}.",
                    self.safe_url,
                ) from error
            logger.warning("broker %s failed, retrying url=%s error=%r", what, self.safe_url, error)
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(2.0, pause * 2)

    def _send(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        priority: int,
        prior: int,
        not_before: float,
    ) -> None:
        """Publish to ``queue`` now, or to the delay queue that fits ``not_before``."""
        channel = self._open()
        target, properties = self._route(channel, queue, headers, priority, prior, not_before)
        channel.basic_publish("", target, body, properties, mandatory=True)

    def _route(
        self,
        channel: BlockingChannel,
        queue: str,
        headers: dict[str, Any],
        priority: int,
        prior: int,
        not_before: float,
    ) -> tuple[str, pika.BasicProperties]:
        """Declare what a message for ``queue`` needs; return its target and properties."""
        self._ensure_declared(channel, queue)
        if prior:
            headers[DELIVERIES_HEADER] = prior
        target = queue
        if not_before:
            headers[NOT_BEFORE_HEADER] = round(not_before * 1000)
            remaining_ms = (not_before - time.time()) * 1000
            if remaining_ms > 0:
                self._ensure_delay_queues(channel, queue)
                target = _delay_queue(queue, delay_level_ms(remaining_ms))
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
            priority=max(0, min(9, priority)),
        )
        return target, properties

    # topology ------------------------------------------------------------------------

    def _queue_arguments(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        }
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        elif self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        return arguments

    def _ensure_declared(self, channel: BlockingChannel, queue: str) -> None:
        if queue in self._declared:
            return
        if queue.endswith(DEAD_LETTER_SUFFIX):
            self._declare_one(channel, queue, {})
        else:
            self._declare_one(channel, queue, self._queue_arguments(queue))
            self._declare_one(channel, dead_letter_queue(queue), {})
        self._declared[queue] = time.monotonic()

    def _ensure_delay_queues(self, channel: BlockingChannel, queue: str) -> None:
        """Declare all of ``queue``'s delay queues together, refreshing their expiry.

        All or none of them exist at any time (they are declared and expire
        together), so :meth:`size` can tell from the first whether to count them.
        """
        declared = self._declared.get(_delay_queue(queue, DELAY_LEVELS_MS[0]))
        if declared is not None and time.monotonic() - declared < _REDECLARE_SECONDS:
            return
        for level in DELAY_LEVELS_MS:
            arguments = {
                "x-message-ttl": level,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
                "x-expires": _DELAY_QUEUE_EXPIRES_MS,
            }
            self._declare_one(channel, _delay_queue(queue, level), arguments)
        self._declared[_delay_queue(queue, DELAY_LEVELS_MS[0])] = time.monotonic()

    def _declare_one(self, channel: BlockingChannel, name: str, arguments: dict[str, Any]) -> None:
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 406:
                raise ConfigurationError(
                    f"Queue {name!r} exists on {self.safe_url} with other settings than this "
                    f"adapter declares ({arguments}): {exc.reply_text}. Delete the queue, or "
                    "match queue_type and max_priority to how it was created."
                ) from exc
            raise

    def declare(self, queue: str) -> None:
        """Declare ``queue`` and ``queue.dead``, durable. Idempotent.

        Raises:
            ConfigurationError: The queue exists with other arguments.
            BrokerUnavailable: The broker cannot be reached.
        """
        with self._locked():
            self._declared.pop(queue, None)
            self._retrying("declare", lambda: self._ensure_declared(self._open(), queue))

    # receiving -----------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_messages`` pushed messages, waiting up to ``timeout``.

        Messages that arrive early (a delay hop) or redelivered on a classic
        queue (to record the count) are re-published and acked here, unseen by
        the caller.

        Raises:
            ConnectionLost: The connection or channel dropped.
            BrokerUnavailable: Reconnecting failed.
        """
        with self._locked():
            try:
                return self._receive(queues, max_messages, timeout)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._drop()
                raise ConnectionLost(self._closed_message(exc), self.safe_url) from exc
            except _DRIVER_ERRORS as exc:
                self._drop()
                raise ConnectionLost(
                    f"Lost the connection to RabbitMQ at {self.safe_url}: {exc!r}.", self.safe_url
                ) from exc

    @staticmethod
    def _closed_message(exc: pika.exceptions.ChannelClosedByBroker) -> str:
        text = str(exc.reply_text)
        if exc.reply_code == 406 and "acknowledgement" in text and "timed out" in text:
            return (
                f"RabbitMQ closed the channel because a delivery stayed unacked past the "
                f"server's consumer_timeout ({text}). Raise consumer_timeout in rabbitmq.conf "
                "above the longest task's time limit; the message will run again."
            )
        return f"RabbitMQ closed the channel: {exc.reply_code} {text}."

    def _receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        lost, self._lost = self._lost, None
        if lost is not None:
            # The heartbeat thread saw the connection go: say so once, as a
            # receive on the dead connection would have, before reconnecting.
            raise lost
        channel = self._open()
        self._consume(channel, queues, max_messages)
        assert self._connection is not None  # opened with the channel
        deadline = time.monotonic() + timeout
        taken: list[Delivery] = []
        while True:
            self._connection.process_data_events(0)
            self._check_open(channel)
            while self._incoming and len(taken) < max_messages:
                delivery = self._accept(channel, self._incoming.popleft())
                if delivery is not None:
                    taken.append(delivery)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            self._connection.process_data_events(min(remaining, 0.5))

    def _check_open(self, channel: BlockingChannel) -> None:
        """Raise if the broker closed the channel while pika was only reading.

        pika raises a broker's channel close at the next call on the channel,
        not inside ``process_data_events``; without this check a receive would
        quietly open a new channel and the caller would never hear why (a
        consumer timeout, say).
        """
        if channel.is_open:
            return
        self._drop()
        reason = getattr(channel, "_closing_reason", None)
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            raise ConnectionLost(self._closed_message(reason), self.safe_url) from reason
        raise ConnectionLost(f"The channel to {self.safe_url} closed: {reason!r}.", self.safe_url)

    def _consume(self, channel: BlockingChannel, queues: Sequence[str], wanted: int) -> None:
        # The channel-wide prefetch counts unacked deliveries, so it must cover
        # those the caller still holds plus what it asks for now.
        # Once the caller asks for less (its tasks got slower), a smaller
        # prefetch stops the broker pushing messages that would wait here,
        # unseen by other consumers. What was pushed already stays and is
        # handed out first.
        quorum = self.queue_type == "quorum"
        prefetch = self.prefetch_count or next_prefetch(
            self._prefetch,
            len(self._outstanding) + wanted,
            quorum=quorum,
            since_change=time.monotonic() - self._prefetch_changed_at,
        )
        if prefetch != self._prefetch:
            if quorum:
                self._restart_consumers(channel, prefetch)
            else:
                channel.basic_qos(prefetch_count=prefetch, global_qos=True)
            logger.debug(
                "broker prefetch set url=%s prefetch=%d previous=%d",
                self.safe_url,
                prefetch,
                self._prefetch,
            )
            self._prefetch = prefetch
            self._prefetch_changed_at = time.monotonic()
        for queue in queues:
            if queue not in self._consuming:
                self._ensure_declared(channel, queue)
                self._consuming[queue] = channel.basic_consume(
                    queue, self._on_message(queue), auto_ack=False
                )

    def _restart_consumers(self, channel: BlockingChannel, prefetch: int) -> None:
        """Set a per-consumer prefetch, which quorum queues need instead of a global one.

        A per-consumer prefetch binds consumers started after it, so the
        running ones are cancelled first (and started again by the caller).
        Messages already received are dispatched into the buffer beforehand, as
        pika would give back the undispatched ones on cancel.
        """
        if self._consuming and self._connection is not None:
            self._connection.process_data_events(0)
        for tag in self._consuming.values():
            channel.basic_cancel(tag)
        self._consuming = {}
        channel.basic_qos(prefetch_count=prefetch)

    def _on_message(self, queue: str) -> Callable[..., None]:
        def on_message(
            channel: BlockingChannel,
            method: Any,
            properties: pika.BasicProperties,
            body: bytes,
        ) -> None:
            self._unacked.add(method.delivery_tag)
            self._incoming.append(
                _Incoming(queue, method.delivery_tag, method.redelivered, properties, body)
            )

        return on_message

    def _accept(self, channel: BlockingChannel, incoming: _Incoming) -> Delivery | None:
        headers: dict[str, Any] = dict(incoming.properties.headers or {})
        quorum = self.queue_type == "quorum"
        count = delivery_count(headers, incoming.redelivered, quorum)
        priority = incoming.properties.priority or 0
        not_before = _int_header(headers, NOT_BEFORE_HEADER) / 1000
        early = not_before > time.time()
        if early or (incoming.redelivered and not quorum):
            # Re-publish, confirmed, before the ack: a crash in between leaves a
            # duplicate, never a loss. An early message keeps its count.
            prior = count - 1
            logger.debug(
                "message re-published queue=%s early=%s deliveries=%d",
                incoming.queue,
                early,
                prior,
            )
            self._send(
                incoming.queue, incoming.body, user_headers(headers), priority, prior, not_before
            )
            channel.basic_ack(incoming.tag)
            self._unacked.discard(incoming.tag)
            return None
        receipt = _Receipt(self._generation, incoming.tag, priority, time.monotonic())
        self._outstanding.add(incoming.tag)
        return Delivery(incoming.queue, incoming.body, user_headers(headers), count, receipt)

    # settling ------------------------------------------------------------------------

    def _live(self, delivery: Delivery) -> _Receipt | None:
        receipt: _Receipt = delivery.receipt
        if receipt.generation != self._generation or self._channel is None:
            # Delivered on a connection that is gone: RabbitMQ has put the
            # message back already, and its next delivery is someone else's.
            return None
        return receipt

    def ack(self, delivery: Delivery) -> None:
        """Ack the delivery; a no-op when its connection is already gone."""
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries in as few frames as the channel allows.

        One ``basic.ack`` with ``multiple`` covers the given deliveries below
        the lowest delivery still unacked that is not among them; each of the
        others takes a frame of its own (see :func:`ack_frames`). Acks are not
        confirmed, so there is no round trip. Deliveries moved to a holding
        queue drop their copy instead; those of a connection that is gone, or
        already settled, are skipped.
        """
        with self._locked():
            # Holding-queue copies first: dropping one may reconnect, and tags
            # are read after that, against the channel they will be acked on.
            rest = [delivery for delivery in deliveries if not self._release_held(delivery)]
            tags: set[int] = set()
            for delivery in rest:
                receipt = self._live(delivery)
                if receipt is not None and receipt.tag in self._outstanding:
                    tags.add(receipt.tag)
            channel = self._channel
            if not tags or channel is None:
                return
            try:
                for tag, multiple in ack_frames(tags, self._unacked):
                    channel.basic_ack(tag, multiple=multiple)
            except _DRIVER_ERRORS as exc:
                # The broker gives the deliveries back; the next receive says
                # the connection was lost, as it would have seen it first.
                logger.debug("broker ack failed url=%s error=%r", self.safe_url, exc)
                self._drop()
                self._lost = exc
                return
            self._outstanding -= tags
            self._unacked -= tags

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Publish a copy that keeps the delivery count, then ack the original.

        Raises:
            BrokerUnavailable: The copy could not be published.
        """
        with self._locked():
            receipt: _Receipt = delivery.receipt
            not_before = time.time() + delay if delay > 0 else 0.0
            headers = dict(delivery.headers)
            self._retrying(
                "requeue",
                lambda: self._send(
                    delivery.queue,
                    delivery.body,
                    dict(headers),
                    receipt.priority,
                    delivery.delivery_count,
                    not_before,
                ),
            )
        self.ack(delivery)

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep a long-held delivery safe from the server's consumer timeout.

        An unacked delivery is held for as long as its channel lives, except
        that RabbitMQ closes a channel whose delivery stays unacked past its
        ``consumer_timeout``. So a delivery held for half of ``consumer_timeout``
        is *moved*: a copy goes to the holding queue ``Q.held.<id>`` of this
        transport, whose TTL dead-letters it back into ``Q``, and the original
        is acked. Later calls re-publish the copy before its TTL runs out, and
        ack, reject or requeue drop it. If this process dies, the copy returns
        to ``Q`` within ``2 * lease_seconds``.

        Raises:
            ConnectionLost: The connection dropped while moving or renewing.
        """
        self.extend_leases([delivery], seconds)

    def extend_leases(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Move or renew the long-held ones among ``deliveries`` (see :meth:`extend_lease`)."""
        with self._locked():
            try:
                self._extend(deliveries)
            except _DRIVER_ERRORS as exc:
                self._drop()
                raise ConnectionLost(
                    f"Lost the connection to RabbitMQ at {self.safe_url}: {exc!r}.", self.safe_url
                ) from exc

    def _extend(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        renew: set[str] = set()
        for delivery in deliveries:
            receipt: _Receipt = delivery.receipt
            held = self._held.get((receipt.generation, receipt.tag))
            if held is not None:
                if now - held.copied_at >= self._hold_seconds / 2:
                    renew.add(held.queue)
            elif now - receipt.received_at >= self.consumer_timeout / 2:
                if self._live(delivery) is not None and receipt.tag in self._outstanding:
                    self._move_to_holding(delivery)
        for queue in renew:
            self._sweep_holding(queue)

    def _holding_queue(self, channel: BlockingChannel, queue: str) -> tuple[str, int]:
        """Declare ``queue``'s holding queue of this transport; return its name and size."""
        name = f"{queue}.held.{self._holder}"
        hold_ms = round(self._hold_seconds * 1000)
        arguments = {
            "x-message-ttl": hold_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-expires": 2 * hold_ms + 60_000,
        }
        frame = channel.queue_declare(name, durable=True, arguments=arguments)
        return name, int(frame.method.message_count)

    def _move_to_holding(self, delivery: Delivery) -> None:
        receipt: _Receipt = delivery.receipt
        channel = self._open()
        holding, _ = self._holding_queue(channel, delivery.queue)
        marker = uuid.uuid4().hex
        headers: dict[str, Any] = dict(delivery.headers)
        headers[DELIVERIES_HEADER] = delivery.delivery_count
        headers[HELD_HEADER] = marker
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, headers=headers, priority=receipt.priority
        )
        # Copy first, confirmed, then ack: a crash in between duplicates.
        channel.basic_publish("", holding, delivery.body, properties, mandatory=True)
        channel.basic_ack(receipt.tag)
        self._outstanding.discard(receipt.tag)
        self._unacked.discard(receipt.tag)
        self._held[(receipt.generation, receipt.tag)] = _Held(
            delivery.queue, marker, time.monotonic()
        )
        logger.info(
            "long delivery moved to holding queue queue=%s held_ms=%.0f",
            delivery.queue,
            (time.monotonic() - receipt.received_at) * 1000,
        )

    def _sweep_holding(self, queue: str) -> None:
        """Take every copy out of ``queue``'s holding queue; put back those still held."""
        channel = self._open()
        holding, count = self._holding_queue(channel, queue)
        keep = {held.marker: held for held in self._held.values() if held.queue == queue}
        for _ in range(count):
            method, properties, body = channel.basic_get(holding, auto_ack=False)
            if method is None:
                break
            self._unacked.add(method.delivery_tag)
            marker = (properties.headers or {}).get(HELD_HEADER)
            if marker in keep:
                channel.basic_publish("", holding, body, properties, mandatory=True)
                keep[marker].copied_at = time.monotonic()
            channel.basic_ack(method.delivery_tag)
            self._unacked.discard(method.delivery_tag)

    def _release_held(self, delivery: Delivery) -> bool:
        """Drop a moved delivery's copy; return False if it was never moved."""
        receipt: _Receipt = delivery.receipt
        held = self._held.pop((receipt.generation, receipt.tag), None)
        if held is None:
            return False
        try:
            self._sweep_holding(held.queue)
        except _DRIVER_ERRORS as exc:
            # The copy comes back to its queue when its TTL runs out: a
            # duplicate run, never a loss.
            logger.warning(
                "held copy not dropped queue=%s url=%s error=%r", held.queue, self.safe_url, exc
            )
            self._drop()
        return True

    # measuring -----------------------------------------------------------------------

    def _measure(self, queue: str, purge: bool) -> int:
        with self._locked():
            try:
                self._open()
                assert self._connection is not None  # opened with the channel
                # A scratch channel: a missing queue closes it (404), which must
                # not cancel the consumers on the main channel.
                scratch = self._connection.channel()
                total = self._count(scratch, queue, purge)
                if total is None:
                    return 0
                delayed = [_delay_queue(queue, level) for level in DELAY_LEVELS_MS]
                first = self._count(scratch, delayed[0], purge)
                if first is not None:
                    total += first + sum(self._count(scratch, d, purge) or 0 for d in delayed[1:])
                if scratch.is_open:
                    scratch.close()
                return total
            except _DRIVER_ERRORS as exc:
                self._drop()
                raise BrokerUnavailable(
                    f"Cannot count queue {queue!r} on RabbitMQ at {self.safe_url}: {exc!r}.",
                    self.safe_url,
                ) from exc

    @staticmethod
    def _count(channel: BlockingChannel, name: str, purge: bool) -> int | None:
        """Count or purge one queue; ``None`` if it does not exist (channel closed)."""
        try:
            if purge:
                frame = channel.queue_purge(name)
            else:
                frame = channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            return None
        return int(frame.method.message_count)

    def size(self, queue: str) -> int:
        """Count ready and delayed messages (AMQP does not report unacked ones)."""
        return self._measure(queue, purge=False)

    def purge(self, queue: str) -> int:
        """Delete ready and delayed messages; unacked ones stay with their consumer."""
        return self._measure(queue, purge=True)

    def close(self) -> None:
        """Close the connection; unacked deliveries go back to their queues."""
        if self._pid != os.getpid():
            self._closed = True
            return
        self._pulse_stop.set()
        with self._lock:
            self._drop()
            self._closed = True
