"""Reading a Redis URL's options and opening a redis-py client from them.

Shared by the Redis broker and the Redis result store, which take the same URL
forms and options (documented in :mod:`taskmesh.brokers.redis`), as
:mod:`taskmesh.sqlitefile` is by the two SQLite adapters: ``brokers`` and
``backends`` load and type-check as separate packages, so neither adapter can
import the other.

Only those adapters import this module, and it imports redis-py at its top: the
core (``taskmesh/__init__.py``) must never import it, so taskmesh installs and
runs without the ``redis`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskmesh.errors import ConfigurationError
from taskmesh.urls import mask_url, parse_options

__all__ = ["RedisSettings", "open_client", "read_settings"]

_CERT_CHECKS = (None, "required", "optional", "none")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The URL options (see :mod:`taskmesh.brokers.redis`)."""

    key_prefix: str = "taskmesh:"
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0
    retry_timeout: float = 10.0
    db: int | None = None
    ssl_cert_reqs: str | None = None
    ssl_ca_certs: str | None = None


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "key_prefix": str,
    "socket_timeout": float,
    "connect_timeout": float,
    "retry_timeout": float,
    "db": int,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
}


def _check_port(url: str) -> None:
    # Checked before anything formats the URL: mask_url cannot parse a bad port
    # either, and the message must not echo a password.
    try:
        urlsplit(url).port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise ConfigurationError(
            f"The port in the Redis URL is not a number between 0 and 65535 ({exc})."
        ) from exc


def read_settings(url: str) -> RedisSettings:
    """Read and check the options in ``url``'s query string.

    Args:
        url: A ``redis://``, ``rediss://`` or ``unix://`` URL.

    Returns:
        The options, with defaults for those the URL leaves out.

    Raises:
        ConfigurationError: The port is not a number, an option is unknown,
            does not convert or is out of range, or the database is named both
            in the path and by ``db``.
    """
    _check_port(url)
    settings = RedisSettings(**parse_options(url, _OPTIONS))
    for name in ("socket_timeout", "connect_timeout"):
        if getattr(settings, name) <= 0:
            raise ConfigurationError(f"Option {name} in {mask_url(url)} must be above 0.")
    if settings.retry_timeout < 0:
        raise ConfigurationError(f"Option retry_timeout in {mask_url(url)} must be 0 or more.")
    if settings.ssl_cert_reqs not in _CERT_CHECKS:
        raise ConfigurationError(
            f"Option ssl_cert_reqs in {mask_url(url)} must be required, optional or none."
        )
    parts = urlsplit(url)
    if settings.db is not None and parts.scheme != "unix" and parts.path.strip("/"):
        # redis-py would quietly take the path's database and ignore the option.
        raise ConfigurationError(
            f"{mask_url(url)} names a database twice, in its path and in db={settings.db}; "
            "keep one."
        )
    return settings


def open_client(url: str, settings: RedisSettings) -> redis.Redis:
    """Return a redis-py client for ``url``; it connects lazily, on its first call.

    The client never retries by itself: each adapter decides per operation
    whether to retry, within ``retry_timeout``.

    Args:
        url: The Redis URL (its query string is ignored here).
        settings: The options :func:`read_settings` read from it.

    Returns:
        The client, with its own connection pool.

    Raises:
        ConfigurationError: redis-py cannot use the URL.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        # redis-py's default would retry even a broker's receive, hiding an
        # outage from the worker, which backs off and logs it itself.
        "retry": Retry(NoBackoff(), 0),
    }
    if not url.startswith("unix:"):
        kwargs["socket_keepalive"] = True  # unix sockets take no keepalive
    for name in ("db", "ssl_cert_reqs", "ssl_ca_certs"):
        if getattr(settings, name) is not None:
            kwargs[name] = getattr(settings, name)
    bare = url.partition("?")[0]  # urlunsplit would drop unix://'s empty host
    try:
        return redis.Redis.from_url(bare, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Cannot use Redis URL {mask_url(url)}: {exc}.") from exc
