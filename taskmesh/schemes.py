"""The scheme registry: which adapter class serves which URL scheme.

Built-in adapters are named as ``'module:Class'`` strings and imported on first
use, so the core never imports a broker driver it does not need. Third-party
packages add schemes through the entry-point groups ``taskmesh.brokers`` and
``taskmesh.backends``; an entry point's name is the scheme.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from taskmesh.errors import ConfigurationError
from taskmesh.urls import mask_url

__all__ = ["SchemeRegistry", "scheme_of"]

logger = logging.getLogger(__name__)


def scheme_of(url: str) -> str:
    """Return the scheme of ``url`` (``redis`` for ``redis://...``).

    Raises:
        ConfigurationError: ``url`` has no ``scheme://`` prefix.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ConfigurationError(
            f"{mask_url(url)!r} is not a URL: expected scheme://..., "
            "for example sqlite://taskmesh.db or redis://127.0.0.1:6379/0."
        )
    return scheme.lower()


class SchemeRegistry:
    """Maps URL schemes to adapter classes for one kind of adapter.

    Args:
        kind: ``broker`` or ``result store``, for messages.
        group: The entry-point group read for third-party schemes.
        builtin: Scheme to ``'module:Class'``.
        extras: Scheme to the pip extra that installs its driver.
    """

    def __init__(
        self, kind: str, group: str, builtin: dict[str, str], extras: dict[str, str]
    ) -> None:
        self.kind = kind
        self.group = group
        self._targets = dict(builtin)
        self._extras = extras
        self._plugins_loaded = False

    def register(self, scheme: str, target: str) -> None:
        """Serve ``scheme`` with ``target``, a ``'module:Class'`` string."""
        self._targets[scheme.lower()] = target

    def schemes(self) -> list[str]:
        """Return every known scheme, built-in and from entry points, sorted."""
        self._load_plugins()
        return sorted(self._targets)

    def resolve(self, url: str) -> type[Any]:
        """Return the adapter class serving ``url``'s scheme.

        Raises:
            ConfigurationError: The scheme is unknown, or its driver is missing
                (the message names the pip extra to install).
        """
        scheme = scheme_of(url)
        target = self._targets.get(scheme)
        if target is None:
            self._load_plugins()
            target = self._targets.get(scheme)
        if target is None:
            known = self.schemes()
            near = difflib.get_close_matches(scheme, known, n=1)
            hint = f" Did you mean {near[0]}://?" if near else ""
            raise ConfigurationError(
                f"No {self.kind} for scheme {scheme!r} in {mask_url(url)}.{hint} "
                f"Known schemes: {', '.join(known)}."
            )
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = self._extras.get(scheme)
            how = f" Install it with: pip install 'taskmesh[{extra}]'." if extra else ""
            raise ConfigurationError(
                f"The {self.kind} for {scheme}:// needs a package that is not installed "
                f"({exc.name or exc}).{how}"
            ) from exc
        adapter: type[Any] = getattr(module, attr)
        return adapter

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in entry_points(group=self.group):
            self._targets.setdefault(entry.name.lower(), entry.value)
            logger.debug("plugin scheme registered kind=%s scheme=%s", self.kind, entry.name)
