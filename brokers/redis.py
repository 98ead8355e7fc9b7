"""The Redis broker: reliable queues in sorted sets, moved by Lua scripts.

URL: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
``unix:///path/to/redis.sock`` (database by the ``db`` option).

Options (query string):

- ``key_prefix`` (str, default ``taskmesh:``): prepended to every key, so
  several apps can share one database;
- ``socket_timeout`` (float, default 10): seconds a command may take on the wire;
- ``connect_timeout`` (float, default 5): seconds to open a connection;
- ``retry_timeout`` (float, default 10): seconds every call but ``receive``
  keeps retrying an unreachable server before raising ``BrokerUnavailable``;
  ``0`` fails at once. A ``receive`` raises at once, as the worker's loop backs
  off and logs the outage itself;
- ``db`` (int): the database, for ``unix://`` URLs;
- ``ssl_cert_reqs`` (``required``, ``optional`` or ``none``) and
  ``ssl_ca_certs`` (a path): certificate checks for ``rediss://``.

How it keeps its promises. Each queue is a handful of keys (see
``redis_common.lua``): a *ready* sorted set scored by priority band then
arrival number, a *delayed* sorted set scored by due time, a *leased* sorted
set scored by lease deadline, and hashes holding each message's payload and
delivery count. Every state change is one Lua script, so it is atomic:

- ``receive`` first moves due delayed messages and lapsed leases back to ready
  (any worker recovers a dead worker's messages; no reaper process), then pops
  up to ``max_messages`` in one round trip, records each lease deadline and
  bumps each delivery count. With nothing ready it blocks on the queues' wake
  lists (``BLPOP``), no longer than until the next delay or lease ends;
- a delayed message waits in *delayed* and is not leased while it waits, so it
  is never handed out before it is due and never redelivered for waiting;
- ack, requeue and lease extension carry the delivery count as a fence: once a
  message whose lease lapsed was handed out again, the old holder's calls do
  nothing;
- ``publish_many`` sends up to 500 messages per script call, one round trip.

Why sorted sets and scripts rather than Streams with consumer groups: a stream
has no priorities and no delayed entries, and ``XAUTOCLAIM`` recovers pending
entries by idle time, which a running task's lease extension would have to
reset by re-claiming; ``BLMOVE`` between lists gives no lease deadline at all.

Capabilities: delays of any length, priorities 0-9, FIFO within a priority,
lease extension, atomic dead-lettering to ``<queue>.dead`` (one script moves
the message and adds the reason headers), messages up to 512 MiB (Redis's
limit).
Needs Redis 6.0 or later (fractional ``BLPOP`` timeouts); tested with 7.0.

Limitations: Redis acknowledges a write before it reaches disk unless
``appendonly yes`` with ``appendfsync always``; with the default
``appendfsync everysec`` a crash of Redis itself can lose the last second of
publishes and acks (an acked message may come back, a published one vanish),
and without AOF everything since the last snapshot. A publish retried after a
lost reply may publish twice (delivery is at least once). Redis Cluster is not
supported: a receive spans several queues' keys.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
)

from taskmesh.errors import (
    BrokerError,
    BrokerUnavailable,
    ConnectionLost,
    MessageTooLarge,
)
from taskmesh.redisurl import RedisSettings, open_client, read_settings
from taskmesh.transport import (
    ORIGIN_HEADER,
    REASON_HEADER,
    Capabilities,
    Delivery,
    Outgoing,
    Transport,
    dead_letter_queue,
)
from taskmesh.urls import mask_url

__all__ = ["RedisTransport"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
_PUBLISH_BATCH = 500
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError)
_SCRIPTS = ("publish", "receive", "ack", "extend", "requeue", "reject", "purge")


class RedisClient:
    """A redis-py client plus what the transport does around each call.

    Maps redis-py errors to taskmesh errors, retries where asked to within
    ``retry_timeout``, and logs an outage once when it starts and once when it
    ends. Connections are opened lazily; a call after a failure reconnects.

    Args:
        url: The Redis URL (its query string is ignored here).
        settings: The options read from it.
    """

    def __init__(self, url: str, settings: RedisSettings) -> None:
        self.safe_url = mask_url(url)
        self.settings = settings
        self._outage: float | None = None
        self.redis: redis.Redis = open_client(url, settings)

    def key(self, *parts: str) -> str:
        """Return the prefixed key made of ``parts`` joined by ``:``."""
        return self.settings.key_prefix + ":".join(parts)

    def call(self, operation: str, fn: Callable[[], T], *, retry: bool) -> T:
        """Run ``fn``, mapping errors; retry connection errors if ``retry``.

        Raises:
            BrokerUnavailable: Redis cannot be reached, is loading or read-only,
                or refused the credentials (after the retry window, if any).
            ConnectionLost: An established connection dropped (without retry).
            BrokerError: Redis answered with an error.
        """
        deadline: float | None = None
        pause = 0.05
        while True:
            try:
                result = fn()
            except AuthenticationError as exc:
                raise BrokerUnavailable(
                    f"Redis {self.safe_url} refused the credentials: {exc}.", self.safe_url
                ) from exc
            except _RETRYABLE as exc:
                now = time.monotonic()
                self._lost(operation, exc, now, retrying=retry and self.settings.retry_timeout > 0)
                deadline = deadline if deadline is not None else now + self.settings.retry_timeout
                if not retry or now >= deadline:
                    raise self._map(operation, exc) from exc
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 1.0)
                continue
            except RedisError as exc:
                raise BrokerError(
                    f"Redis {operation} on {self.safe_url} failed: {exc}.", self.safe_url
                ) from exc
            if self._outage is not None:
                logger.info(
                    "redis reachable again url=%s outage_ms=%.0f",
                    self.safe_url,
                    (time.monotonic() - self._outage) * 1000,
                )
                self._outage = None
            return result

    def _lost(self, operation: str, exc: Exception, now: float, *, retrying: bool) -> None:
        if self._outage is not None:
            return
        self._outage = now
        # The worker's loop logs the outage of a receive itself.
        if retrying:
            logger.warning(
                "redis unreachable, retrying url=%s operation=%s error=%s",
                self.safe_url,
                operation,
                exc,
            )

    def _map(self, operation: str, exc: Exception) -> BrokerError:
        if isinstance(exc, BusyLoadingError):
            detail = "is loading its data set"
        elif isinstance(exc, ReadOnlyError):
            detail = "is a read-only replica"
        elif "connecting to" in str(exc) or "Connection refused" in str(exc):
            detail = f"cannot be reached ({exc})"
        else:
            return ConnectionLost(
                f"Connection to Redis {self.safe_url} lost during {operation}: {exc}.",
                self.safe_url,
            )
        return BrokerUnavailable(
            f"Redis {self.safe_url} {detail}; {operation} failed. Check that the server runs "
            "and the URL is right.",
            self.safe_url,
        )

    def close(self) -> None:
        """Close the pool's connections; idempotent."""
        self.redis.close()


def _load_scripts(client: redis.Redis) -> dict[str, Any]:
    folder = resources.files("taskmesh.brokers")
    common = folder.joinpath("redis_common.lua").read_text()
    return {
        name: client.register_script(common + folder.joinpath(f"redis_{name}.lua").read_text())
        for name in _SCRIPTS
    }


def _encode(message: Outgoing) -> bytes:
    # JSON escapes newlines, so the first newline ends the headers.
    headers = json.dumps(dict(message.headers), separators=(",", ":")).encode()
    return headers + b"\n" + message.body


def _decode(payload: bytes) -> tuple[dict[str, str], bytes]:
    raw, _, body = payload.partition(b"\n")
    try:
        headers = json.loads(raw)
    except (ValueError, RecursionError):
        headers = None
    if not isinstance(headers, dict):
        # Written by something other than this adapter: hand the message on
        # (the worker dead-letters what it cannot decode) rather than stop
        # the receive loop on it.
        return {"x-unreadable-headers": repr(raw[:100])}, body
    return {str(key): str(value) for key, value in headers.items()}, body


class RedisTransport(Transport):
    """Queues in one Redis database (see the module docstring)."""

    capabilities = Capabilities(
        native_delay=True,
        priorities=True,
        fifo=True,
        dead_letter=True,
        max_message_bytes=MAX_MESSAGE_BYTES,
        lease_extension=True,
    )

    def __init__(self, url: str, *, lease_seconds: float = 30.0) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        settings = read_settings(url)
        self._client = RedisClient(url, settings)
        self._scripts = _load_scripts(self._client.redis)
        # Block no longer than half the socket timeout, so a blocking read
        # never looks like a dead connection.
        self._block_max = settings.socket_timeout / 2

    def _keys(self, queue: str, *kinds: str) -> list[str]:
        return [self._client.key(queue, kind) for kind in kinds]

    def _script(self, name: str, keys: list[str], args: list[Any], *, retry: bool = True) -> Any:
        script = self._scripts[name]
        return self._client.call(name, lambda: script(keys=keys, args=args), retry=retry)

    # publishing ----------------------------------------------------------------------

    def publish(self, message: Outgoing) -> None:
        """Publish one message; see :meth:`publish_many`."""
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish messages in one script call per 500, each call atomic.

        Raises:
            MessageTooLarge: A body is over 512 MiB; nothing was published.
            BrokerUnavailable: Redis stayed unreachable for ``retry_timeout``.
        """
        for message in messages:
            if len(message.body) > MAX_MESSAGE_BYTES:
                raise MessageTooLarge(
                    f"A {len(message.body)}-byte message for queue {message.queue!r} is over "
                    f"Redis's limit of {MAX_MESSAGE_BYTES} bytes.",
                    self.safe_url,
                )
        for start in range(0, len(messages), _PUBLISH_BATCH):
            self._publish_batch(messages[start : start + _PUBLISH_BATCH])

    def _publish_batch(self, messages: Sequence[Outgoing]) -> None:
        numbers: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = []
        for message in messages:
            if message.queue not in numbers:
                numbers[message.queue] = len(numbers) + 1
                keys += self._keys(message.queue, "ready", "delayed", "messages", "seq", "wake")
            priority = min(9, max(0, int(message.priority)))
            delay_ms = math.ceil(message.delay * 1000) if message.delay > 0 else 0
            args += [numbers[message.queue], priority, delay_ms, _encode(message)]
        self._script("publish", keys, args)

    # receiving -------------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages``, blocking on the wake lists while none is ready.

        Raises:
            ConnectionLost: The connection dropped; call again to reconnect.
            BrokerUnavailable: Redis cannot be reached, or is loading its data.
        """
        if max_messages < 1 or not queues:
            return []
        kinds = ("ready", "delayed", "leased", "messages", "deliveries", "wake")
        keys = [key for queue in queues for key in self._keys(queue, *kinds)]
        wake_keys = [self._client.key(queue, "wake") for queue in queues]
        lease_ms = max(1, round(self.lease_seconds * 1000))
        args = [max_messages, lease_ms]
        deadline = time.monotonic() + timeout
        reply = self._script("receive", keys, args, retry=False)
        while True:
            if len(reply) > 1:
                return self._deliveries(queues, reply)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = min(remaining, self._block_max)
            if int(reply[0]) >= 0:
                wait = min(wait, int(reply[0]) / 1000)
            # BLPOP reads 0 as "for ever"; wait at least a millisecond instead.
            reply = self._block_then_receive(wake_keys, max(wait, 0.001), keys, args)

    def _block_then_receive(
        self, wake_keys: list[str], seconds: float, keys: list[str], args: list[Any]
    ) -> Any:
        """Wait on the wake lists, then run the receive script, in one round trip.

        Redis runs a connection's commands in order, and holds those sent
        behind a blocked ``BLPOP`` until it returns: so the script runs the
        moment a publish wakes the list, without a second trip from here.
        """
        script = self._scripts["receive"]

        def pipelined() -> Any:
            # evalsha by hand: a Script object in a pipeline costs a SCRIPT
            # EXISTS round trip on every execute.
            pipe = self._client.redis.pipeline(transaction=False)
            pipe.blpop(wake_keys, seconds)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            woken, reply = pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                return None
            for result in (woken, reply):
                if isinstance(result, Exception):
                    raise result
            return reply

        reply = self._client.call("receive", pipelined, retry=False)
        if reply is None:
            # The server lost its scripts (a restart, SCRIPT FLUSH): the
            # Script object loads the script again.
            return self._script("receive", keys, args, retry=False)
        return reply

    def _deliveries(self, queues: Sequence[str], reply: list[Any]) -> list[Delivery]:
        deliveries = []
        for index in range(1, len(reply), 4):
            number, message_id, count, payload = reply[index : index + 4]
            headers, body = _decode(payload)
            queue = queues[int(number) - 1]
            receipt = (message_id.decode(), int(count))
            deliveries.append(Delivery(queue, body, headers, int(count), receipt))
        logger.debug("messages leased count=%d", len(deliveries))
        return deliveries

    # settling ----------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """Remove the message if this delivery still holds it; idempotent."""
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Remove several messages in one script call."""
        if not deliveries:
            return
        keys, args = self._grouped(deliveries, ("ready", "leased", "messages", "deliveries"))
        self._script("ack", keys, args)

    def _grouped(
        self, deliveries: Sequence[Delivery], kinds: tuple[str, ...]
    ) -> tuple[list[str], list[Any]]:
        numbers: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = []
        for delivery in deliveries:
            if delivery.queue not in numbers:
                numbers[delivery.queue] = len(numbers) + 1
                keys += self._keys(delivery.queue, *kinds)
            message_id, count = delivery.receipt
            args += [numbers[delivery.queue], message_id, count]
        return keys, args

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Give the message back, ready after ``delay`` seconds; the count is kept."""
        message_id, count = delivery.receipt
        keys = self._keys(delivery.queue, "ready", "delayed", "leased", "deliveries", "wake")
        delay_ms = math.ceil(delay * 1000) if delay > 0 else 0
        self._script("requeue", keys, [message_id, count, delay_ms])

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<queue>.dead`` with its reason, in one atomic step.

        The dead letter keeps body and headers and gains ``x-dead-letter-reason``
        and ``x-original-queue``. Unlike the core's publish-then-ack, a crash
        cannot leave a copy in both queues. Does nothing if this delivery no
        longer holds the message.
        """
        message_id, count = delivery.receipt
        dead = dead_letter_queue(delivery.queue)
        headers = {**delivery.headers, REASON_HEADER: reason, ORIGIN_HEADER: delivery.queue}
        keys = [
            *self._keys(delivery.queue, "ready", "leased", "messages", "deliveries"),
            *self._keys(dead, "ready", "messages", "seq", "wake"),
        ]
        payload = _encode(Outgoing(dead, delivery.body, headers))
        self._script("reject", keys, [message_id, count, payload])

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Move the lease deadline to ``seconds`` from now."""
        self.extend_leases([delivery], seconds)

    def extend_leases(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Extend several leases in one script call."""
        if not deliveries:
            return
        keys, args = self._grouped(deliveries, ("leased", "deliveries"))
        self._script("extend", keys, [max(1, round(seconds * 1000)), *args])

    # queue management ----------------------------------------------------------------------

    def declare(self, queue: str) -> None:
        """Nothing to do: a queue's keys appear with its first message.

        Makes no call, so a worker starts (and then waits for Redis) even
        while Redis is down.
        """

    def size(self, queue: str) -> int:
        """Count the queue's messages: ready, delayed and leased."""
        key = self._client.key(queue, "messages")
        return int(self._client.call("size", lambda: self._client.redis.hlen(key), retry=True))

    def purge(self, queue: str) -> int:
        """Delete the queue's messages that hold no live lease; return how many."""
        keys = self._keys(queue, "ready", "delayed", "leased", "messages", "deliveries")
        return int(self._script("purge", keys, []))

    def close(self) -> None:
        """Close the connections; idempotent."""
        self._client.close()
