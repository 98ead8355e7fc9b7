"""Broker and result-store URLs: masking passwords and reading typed options.

Every adapter takes its options from the URL's query string
(``redis://host/0?key_prefix=app1&lease=30``). :func:`parse_options` turns that
query into typed keyword arguments against the adapter's declared options, so an
unknown or ill-typed option fails at start-up with a message naming it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from taskmesh.errors import ConfigurationError

__all__ = ["mask_url", "parse_bool", "parse_options", "split_options"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if password is None:
        return url
    user = parts.username or ""
    # The host and port as written: parts.port raises on a port that is not
    # a number, and a URL being masked for an error message may be that bad.
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_bool(value: str) -> bool:
    """Read a boolean option value such as ``true``, ``0`` or ``off``."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}, got {value!r}")


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """Split ``url`` into the URL without its query and the query as a dict."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment))
    return bare, query


def parse_options(
    url: str,
    declared: Mapping[str, Callable[[str], Any]],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read the URL's query options, typed by ``declared``.

    Args:
        url: The adapter URL; only its query string is read.
        declared: Option name to a converter from ``str`` (``int``, ``float``,
            :func:`parse_bool`, ``str`` ...).
        overrides: Options given as keywords, which win over the URL's.

    Returns:
        The options present, converted.

    Raises:
        ConfigurationError: An option is unknown or its value does not convert.
    """
    _, query = split_options(url)
    result: dict[str, Any] = {}
    for name, raw in query.items():
        if name not in declared:
            near = difflib.get_close_matches(name, list(declared), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            known = ", ".join(sorted(declared)) or "none"
            raise ConfigurationError(
                f"Unknown option {name!r} in {mask_url(url)}.{hint} Known options: {known}."
            )
        try:
            result[name] = declared[name](raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"Option {name}={raw!r} in {mask_url(url)} is not valid: {exc}."
            ) from exc
    for name, value in (overrides or {}).items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ConfigurationError(f"Unknown option {name!r}. Known options: {known}.")
        result[name] = value
    return result
