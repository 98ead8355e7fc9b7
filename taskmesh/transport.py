"""The broker interface every transport implements, and the broker scheme registry.

A transport moves opaque bytes between named queues; it knows nothing of tasks.
The core speaks to it only through :class:`Transport`'s methods, passing bytes,
header mappings and the small frozen dataclasses defined here.

Delivery is at least once. A received message is *leased*, not removed: it is
held for the receiving consumer until its lease deadline, and comes back to its
queue for any consumer when the lease runs out without an ack. A message with a
delay is not in flight while it waits: no lease can run out under it, and it is
never handed out before it is due.

Threading: one transport instance is used by one thread at a time. The app keeps
one instance per thread for publishing; a worker's consumer loop owns its own.
Adapters therefore need no locks of their own, and non-thread-safe drivers such
as pika are safe to use.

What an adapter lacks natively, the core provides once here:

- dead-lettering: :meth:`Transport.reject` publishes to
  :func:`dead_letter_queue` with the reason in a header, then acks;
- batching: :meth:`Transport.publish_many` and :meth:`Transport.ack_many`
  fall back to one call per message;
- delays longer than ``Capabilities.max_delay_seconds``: the worker re-sends a
  message that arrives before its ETA with the remaining delay.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from taskmesh.schemes import SchemeRegistry
from taskmesh.urls import mask_url

__all__ = [
    "BROKERS",
    "DEAD_LETTER_SUFFIX",
    "Capabilities",
    "Delivery",
    "Outgoing",
    "Transport",
    "dead_letter_queue",
]

DEAD_LETTER_SUFFIX = ".dead"

REASON_HEADER = "x-dead-letter-reason"
ORIGIN_HEADER = "x-original-queue"


def dead_letter_queue(queue: str) -> str:
    """Return the name of the dead-letter queue that belongs to ``queue``."""
    return queue + DEAD_LETTER_SUFFIX


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport does natively; the core fills in the rest.

    Attributes:
        native_delay: Holds a delayed message until due, without a lease.
        max_delay_seconds: The longest delay the broker holds in one go;
            ``None`` for no limit. Longer delays are re-sent by the worker.
        priorities: Honours priorities 0-9 within a queue (9 first).
        fifo: Keeps publish order within a queue (or a message group).
        dead_letter: Overrides :meth:`Transport.reject` with a native mechanism.
        max_message_bytes: The largest body accepted; ``None`` for no limit.
        lease_extension: :meth:`Transport.extend_lease` really extends the lease.
            Without it the broker holds a message for the connection's life
            (kombu over AMQP); RabbitMQ's native adapter declares it, because a
            long-held delivery moves to a holding queue that extensions renew.
    """

    native_delay: bool = True
    max_delay_seconds: float | None = None
    priorities: bool = False
    fifo: bool = True
    dead_letter: bool = False
    max_message_bytes: int | None = None
    lease_extension: bool = True


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish.

    Attributes:
        queue: The target queue's name.
        body: The encoded message.
        headers: Small string metadata carried beside the body.
        delay: Seconds before the message may be handed out; ``0`` for now.
        priority: 0 (lowest) to 9 (highest); ignored without ``priorities``.
    """

    queue: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received, leased message.

    Attributes:
        queue: The queue it came from.
        body: The encoded message, as published.
        headers: The headers it was published with.
        delivery_count: How many times it has been handed out, this time
            included (1 on the first delivery).
        receipt: The adapter's handle for ack, reject, requeue and lease
            extension; opaque to the core.
    """

    queue: str
    body: bytes
    headers: Mapping[str, str]
    delivery_count: int
    receipt: Any = field(compare=False)


class Transport(abc.ABC):
    """A connection to one broker.

    Subclasses set :attr:`capabilities`, accept their URL and typed options in
    ``__init__`` (an unknown option is a ``ConfigurationError``), and implement
    the abstract primitives. Connecting may be lazy, but a wrong URL must fail
    in ``__init__``.

    Args:
        url: The broker URL, options in its query string.
        lease_seconds: How long a received message stays leased without an ack
            or an extension.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, *, lease_seconds: float = 30.0) -> None:
        self.url = url
        self.lease_seconds = lease_seconds

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs and errors."""
        return mask_url(self.url)

    @abc.abstractmethod
    def publish(self, message: Outgoing) -> None:
        """Put one message on its queue, creating the queue if needed.

        Returns only once the broker holds the message durably as far as the
        broker offers (confirmed, committed, acknowledged by the server).

        Raises:
            BrokerUnavailable: The broker cannot be reached after a bounded retry.
            MessageTooLarge: The body exceeds ``max_message_bytes``.
        """

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish several messages, in one round trip where the broker allows.

        Not atomic: on an error, some messages may have been published.
        """
        for message in messages:
            self.publish(message)

    @abc.abstractmethod
    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages`` ready messages from ``queues``.

        Queues are tried in the order given; within a queue, higher priority
        first, then publish order. Blocks until at least one message is ready
        or ``timeout`` seconds pass, then returns what it has (possibly empty).
        Each returned message is leased for :attr:`lease_seconds` and its
        delivery count is one higher than before.

        Raises:
            ConnectionLost: The connection dropped; the caller reconnects by
                calling again after a pause.
        """

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Remove a leased message for good. Idempotent.

        Acking a message whose lease ran out and which was handed to another
        consumer may be a no-op or may remove it; either way it is not an error.
        """

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several messages, in one round trip where the broker allows."""
        for delivery in deliveries:
            self.ack(delivery)

    @abc.abstractmethod
    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Give a leased message back to its queue, ready after ``delay`` seconds.

        The delivery count is kept, so a message given back still counts
        towards the poison-message limit.
        """

    @abc.abstractmethod
    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep a leased message held for another ``seconds`` from now.

        A no-op on brokers that hold unacked messages for the connection's life.
        """

    def extend_leases(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Extend several leases, in one round trip where the broker allows."""
        for delivery in deliveries:
            self.extend_lease(delivery, seconds)

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Move a leased message to its queue's dead-letter queue, with a reason.

        The dead letter keeps the body and headers, adds the reason and the
        original queue as headers, and is published before the original is
        acked, so a crash in between leaves a duplicate, never a loss.
        """
        headers = dict(delivery.headers)
        headers[REASON_HEADER] = reason
        headers[ORIGIN_HEADER] = delivery.queue
        self.publish(Outgoing(dead_letter_queue(delivery.queue), delivery.body, headers))
        self.ack(delivery)

    @abc.abstractmethod
    def declare(self, queue: str) -> None:
        """Create ``queue`` (and its dead-letter queue) if missing. Idempotent."""

    @abc.abstractmethod
    def size(self, queue: str) -> int:
        """Count the messages in ``queue``: ready, delayed and leased."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every message of ``queue`` that is not leased; return how many."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections. Idempotent; the instance is unusable afterwards."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


BROKERS = SchemeRegistry(
    kind="broker",
    group="taskmesh.brokers",
    builtin={
        "memory": "taskmesh.brokers.memory:MemoryTransport",
        "sqlite": "taskmesh.brokers.sqlite:SQLiteTransport",
        "redis": "taskmesh.brokers.redis:RedisTransport",
        "rediss": "taskmesh.brokers.redis:RedisTransport",
        "unix": "taskmesh.brokers.redis:RedisTransport",
        "amqp": "taskmesh.brokers.rabbitmq:RabbitMQTransport",
        "amqps": "taskmesh.brokers.rabbitmq:RabbitMQTransport",
        "sqs": "taskmesh.brokers.sqs:SQSTransport",
        "kombu+memory": "taskmesh.brokers.kombu:KombuTransport",
        "kombu+redis": "taskmesh.brokers.kombu:KombuTransport",
        "kombu+amqp": "taskmesh.brokers.kombu:KombuTransport",
        "kombu+pyamqp": "taskmesh.brokers.kombu:KombuTransport",
        "kombu+sqs": "taskmesh.brokers.kombu:KombuTransport",
    },
    extras={
        "redis": "redis",
        "rediss": "redis",
        "unix": "redis",
        "amqp": "rabbitmq",
        "amqps": "rabbitmq",
        "sqs": "sqs",
        "kombu+memory": "kombu",
        "kombu+redis": "kombu",
        "kombu+amqp": "kombu",
        "kombu+pyamqp": "kombu",
        "kombu+sqs": "kombu",
    },
)


def connect(url: str, *, lease_seconds: float = 30.0) -> Transport:
    """Open the transport serving ``url``.

    Raises:
        ConfigurationError: Unknown scheme, missing driver, or a bad option.
    """
    cls: type[Transport] = BROKERS.resolve(url)
    return cls(url, lease_seconds=lease_seconds)
