"""In-process result store for tests and eager runs: ``memory://`` or ``memory://NAME``.

Stores opened with the same name in one process share their data. Waiting
uses a condition variable, so ``get()`` wakes as soon as a result is stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from taskmesh.result import ResultStore
from taskmesh.urls import parse_options

__all__ = ["MemoryResultStore"]


@dataclass
class _Space:
    cond: threading.Condition = field(default_factory=threading.Condition)
    values: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    sets: dict[str, tuple[set[str], float]] = field(default_factory=dict)


class MemoryResultStore(ResultStore):
    """Results in this process's memory, shared by name."""

    _spaces: ClassVar[dict[str, _Space]] = {}
    _spaces_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        parse_options(url, {})
        name = url.partition("://")[2].split("?")[0]
        with self._spaces_lock:
            self._space = self._spaces.setdefault(name, _Space())

    def set(self, key: str, value: bytes, *, expires_seconds: float, notify: bool = False) -> None:
        """Store ``value``; wake waiters."""
        with self._space.cond:
            self._space.values[key] = (value, time.time() + expires_seconds)
            self._space.cond.notify_all()

    def get(self, key: str) -> bytes | None:
        """Return the live value under ``key``."""
        with self._space.cond:
            return self._get(key)

    def _get(self, key: str) -> bytes | None:
        entry = self._space.values.get(key)
        if entry is None:
            return None
        if entry[1] <= time.time():
            del self._space.values[key]
            return None
        return entry[0]

    def delete(self, key: str) -> None:
        """Remove ``key`` and any set under it."""
        with self._space.cond:
            self._space.values.pop(key, None)
            self._space.sets.pop(key, None)

    def add_member(self, key: str, member: str, *, expires_seconds: float) -> int:
        """Add ``member`` to the set; return its size."""
        with self._space.cond:
            members, expires = self._space.sets.get(key, (set(), 0.0))
            if expires <= time.time():
                members = set()  # the set expired: start a fresh one
            members.add(member)
            self._space.sets[key] = (members, time.time() + expires_seconds)
            return len(members)

    def claim(self, key: str, *, expires_seconds: float) -> bool:
        """Create ``key`` if absent."""
        with self._space.cond:
            if self._get(key) is not None:
                return False
            self._space.values[key] = (b"1", time.time() + expires_seconds)
            return True

    def wait(self, key: str, timeout: float, ready: Callable[[bytes], bool]) -> bytes | None:
        """Block on the condition until ``key`` holds a ready value."""
        deadline = time.monotonic() + timeout
        with self._space.cond:
            while True:
                value = self._get(key)
                if value is not None and ready(value):
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._space.cond.wait(min(remaining, 1.0))
