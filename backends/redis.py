"""The Redis result store: values with expiry, pub/sub to wake waiters.

URL: the Redis broker's forms (``redis://``, ``rediss://``, ``unix://``) and
options (``key_prefix``, ``socket_timeout``, ``connect_timeout``,
``retry_timeout``, ``db``, ``ssl_cert_reqs``, ``ssl_ca_certs``; see
:mod:`taskmesh.brokers.redis`). Broker and store may share one database.

How it keeps its promises:

- a value is one string key written with ``SET ... PX``, so Redis drops it
  when ``expires_seconds`` (the core passes ``result_expires``) runs out;
- ``set(..., notify=True)`` writes and publishes on the key's channel in one
  script call (``set_many`` does the same for a batch). ``wait`` subscribes
  first, then reads, then sleeps on the subscription, so a result stored
  between the read and the sleep still wakes it; it reads again every few
  seconds in case a notification was lost with a connection. No busy polling;
- ``add_member`` is ``SADD``, ``PEXPIRE`` and ``SCARD`` in one transaction, so
  concurrent callers see sizes 1, 2, ... n and a member added twice counts once;
- ``claim`` is ``SET NX`` with a token of its own, so a retry after a lost
  reply still knows it won.

Connection errors are retried for ``retry_timeout`` seconds (default 10), then
raised as ``ResultError``. The options are read, and the client opened, by
:mod:`taskmesh.redisurl`, which the broker uses too.

Limitations: pub/sub channels are shared by every database of a server, so
apps in different databases should still use different ``key_prefix`` values
(a shared channel only costs a spurious read). Durability is Redis's: see the
broker's docstring on AOF.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.client import PubSub
from redis.exceptions import AuthenticationError

from taskmesh.errors import ResultError
from taskmesh.redisurl import open_client, read_settings
from taskmesh.result import ResultStore
from taskmesh.urls import mask_url

__all__ = ["RedisResultStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RECHECK_SECONDS = 5.0
_MGET_BATCH = 1000
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)


def _as_bytes(value: object) -> bytes | None:
    # redis-py types replies as bytes-or-str; without decode_responses they are bytes.
    return value if isinstance(value, bytes) else None


# KEYS: the keys to set. ARGV: the expiry in ms, then per key its value and
# the channel to notify ('' for none).
_SET_MANY = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i], 'PX', ARGV[1])
  if ARGV[2 * i + 1] ~= '' then
    redis.call('PUBLISH', ARGV[2 * i + 1], '1')
  end
end
return #KEYS
"""


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisResultStore(ResultStore):
    """Results in one Redis database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = read_settings(url)
        self._redis = open_client(url, self.settings)
        self._set_many = self._redis.register_script(_SET_MANY)
        self._pubsub: PubSub | None = None
        self._outage: float | None = None

    def _key(self, key: str) -> str:
        return self.settings.key_prefix + key

    def _members(self, key: str) -> str:
        return f"{self.settings.key_prefix}{key}:members"

    def _channel(self, key: str) -> str:
        return f"{self.settings.key_prefix}notify:{key}"

    def _call(self, operation: str, fn: Callable[[], T], limit: float | None = None) -> T:
        """Run ``fn``; retry connection errors for ``retry_timeout``, then raise.

        ``limit`` shortens the retrying (a ``wait`` must not outlast its own
        timeout because the server is away).

        Raises:
            ResultError: Redis failed the call, or stayed unreachable.
        """
        patience = (
            self.settings.retry_timeout
            if limit is None
            else min(limit, self.settings.retry_timeout)
        )
        deadline = time.monotonic() + patience
        pause = 0.05
        while True:
            try:
                result = fn()
            except AuthenticationError as exc:
                raise ResultError(f"Redis {mask_url(self.url)} refused the credentials.") from exc
            except _RETRYABLE as exc:
                now = time.monotonic()
                if self._outage is None:
                    self._outage = now
                    logger.warning(
                        "result store unreachable, retrying url=%s operation=%s error=%s",
                        mask_url(self.url),
                        operation,
                        exc,
                    )
                if now >= deadline:
                    raise ResultError(
                        f"Redis result store {mask_url(self.url)} unreachable for "
                        f"{patience:g} s during {operation}: {exc}."
                    ) from exc
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 1.0)
                continue
            except redis.RedisError as exc:
                raise ResultError(
                    f"Redis result store {mask_url(self.url)} failed {operation}: {exc}."
                ) from exc
            if self._outage is not None:
                logger.info(
                    "result store reachable again url=%s outage_ms=%.0f",
                    mask_url(self.url),
                    (time.monotonic() - self._outage) * 1000,
                )
                self._outage = None
            return result

    def set(self, key: str, value: bytes, *, expires_seconds: float, notify: bool = False) -> None:
        """Store ``value`` with its expiry; with ``notify``, wake every waiter.

        Raises:
            ResultError: Redis stayed unreachable for ``retry_timeout``.
        """
        self.set_many([(key, value, notify)], expires_seconds=expires_seconds)

    def set_many(self, items: Sequence[tuple[str, bytes, bool]], *, expires_seconds: float) -> None:
        """Store several ``(key, value, notify)`` items in one script call.

        In order, each write before its notification, atomically.

        Raises:
            ResultError: Redis stayed unreachable for ``retry_timeout``.
        """
        if not items:
            return
        keys = [self._key(key) for key, _, _ in items]
        args: list[Any] = [_milliseconds(expires_seconds)]
        for key, value, notify in items:
            args += [value, self._channel(key) if notify else ""]
        # One script call rather than a pipeline of a SET and a PUBLISH per
        # item: a worker writes these for every batch of tasks, and parsing
        # two replies per item cost it more than the writes themselves.
        self._call("set_many", lambda: self._set_many(keys=keys, args=args))

    def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or ``None``."""
        return _as_bytes(self._call("get", lambda: self._redis.get(self._key(key))))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the values under ``keys`` with one ``MGET`` per 1,000 keys."""
        found: list[bytes | None] = []
        for start in range(0, len(keys), _MGET_BATCH):
            chunk = [self._key(key) for key in keys[start : start + _MGET_BATCH]]
            found += self._call("get_many", functools.partial(self._mget, chunk))
        return found

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        return [_as_bytes(value) for value in self._redis.mget(keys)]

    def delete(self, key: str) -> None:
        """Remove ``key`` and its member set; idempotent."""
        self._call("delete", lambda: self._redis.delete(self._key(key), self._members(key)))

    def add_member(self, key: str, member: str, *, expires_seconds: float) -> int:
        """Add ``member`` to the set under ``key``; return the set's size after."""

        def add() -> int:
            pipe = self._redis.pipeline(transaction=True)
            members = self._members(key)
            pipe.sadd(members, member)
            pipe.pexpire(members, _milliseconds(expires_seconds))
            pipe.scard(members)
            return int(pipe.execute()[-1])

        count: int = self._call("add_member", add)
        return count

    def claim(self, key: str, *, expires_seconds: float) -> bool:
        """Create ``key`` if absent; exactly one caller among many wins."""
        token = uuid.uuid4().hex.encode()

        def attempt() -> bool:
            target = self._key(key)
            if self._redis.set(target, token, nx=True, px=_milliseconds(expires_seconds)):
                return True
            # A retry after a lost reply finds its own token: it did win.
            return bool(self._redis.get(target) == token)

        won: bool = self._call("claim", attempt)
        return won

    def wait(self, key: str, timeout: float, ready: Callable[[bytes], bool]) -> bytes | None:
        """Block until ``key`` holds a ready value, woken by ``set(notify=True)``.

        Returns the value, or ``None`` after ``timeout`` seconds.

        Raises:
            ResultError: Redis stayed unreachable for ``retry_timeout``.
        """
        deadline = time.monotonic() + timeout
        channel = self._channel(key)
        try:
            while True:
                pubsub = self._subscribe(channel, max(0.0, deadline - time.monotonic()))
                read = functools.partial(self._redis.get, self._key(key))
                value = _as_bytes(self._call("wait", read, max(0.0, deadline - time.monotonic())))
                if value is not None and ready(value):
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._sleep_on(pubsub, min(remaining, _RECHECK_SECONDS))
        finally:
            self._unsubscribe(channel)

    def _subscribe(self, channel: str, limit: float | None = None) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        pubsub = self._pubsub

        name = channel.encode()

        def subscribe() -> None:
            pubsub.subscribe(channel)
            # Read on until the server confirms: only then is a notification
            # published after the read that follows sure to reach us.
            limit = time.monotonic() + self.settings.socket_timeout
            while (remaining := limit - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=remaining)
                if message and message["type"] == "subscribe" and message["channel"] == name:
                    return
            raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")

        try:
            self._call("wait", subscribe, limit)
        except ResultError:
            self._drop_pubsub()
            raise
        return pubsub

    def _sleep_on(self, pubsub: PubSub, seconds: float) -> None:
        limit = time.monotonic() + seconds
        try:
            while (remaining := limit - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=remaining)
                if message and message["type"] == "message":
                    return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The subscription died with its connection: start a new one on
            # the next round, which reads the value again first.
            logger.debug("result subscription lost error=%s", exc)
            self._drop_pubsub()

    def _unsubscribe(self, channel: str) -> None:
        if self._pubsub is None:
            return
        try:
            # redis-py leaves PubSub.unsubscribe without annotations.
            self._pubsub.unsubscribe(channel)  # type: ignore[no-untyped-call]
        except redis.RedisError:
            self._drop_pubsub()

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        """Close the subscription and the connections; idempotent."""
        self._drop_pubsub()
        self._redis.close()
