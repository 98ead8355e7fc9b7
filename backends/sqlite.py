"""The embedded result store: results in one SQLite file.

URL: the same forms as the SQLite broker (``sqlite:///taskmesh.db``); the two
may share a file. Option ``busy_timeout`` (float, default 30).

Expired rows are invisible at once and deleted by an occasional sweep on write.
``wait`` polls (5 ms rising to 200 ms): SQLite cannot notify another process.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Sequence
from importlib import resources

from taskmesh.result import ResultStore
from taskmesh.sqlitefile import failure, open_database, sqlite_path
from taskmesh.urls import parse_options

__all__ = ["SQLiteResultStore"]

_SWEEP_CHANCE = 0.001


class SQLiteResultStore(ResultStore):
    """Results as rows of one SQLite file."""

    def __init__(self, url: str = "sqlite:///taskmesh.db") -> None:
        super().__init__(url)
        options = parse_options(url, {"busy_timeout": float})
        self.busy_timeout: float = options.get("busy_timeout", 30.0)
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, opened on first use (and again after a fork)."""
        if self._conn is None or self._pid != os.getpid():
            schema = resources.files("taskmesh.backends").joinpath("sqlite.sql").read_text()
            self._conn = open_database(self.path, self.busy_timeout, schema, store=True)
            self._pid = os.getpid()
        return self._conn

    def _execute(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise failure(exc, self.path, "result store", store=True) from exc

    def set(self, key: str, value: bytes, *, expires_seconds: float, notify: bool = False) -> None:
        """Insert or replace ``key``; ``notify`` is implied, as waiters poll."""
        now = time.time()
        self._execute(
            "INSERT OR REPLACE INTO taskmesh_results (key, value, expires) VALUES (?, ?, ?)",
            (key, value, now + expires_seconds),
        )
        if random.random() < _SWEEP_CHANCE:  # load spreading, not security
            self._execute("DELETE FROM taskmesh_results WHERE expires <= ?", (now,))
            self._execute("DELETE FROM taskmesh_members WHERE expires <= ?", (now,))

    def set_many(self, items: Sequence[tuple[str, bytes, bool]], *, expires_seconds: float) -> None:
        """Insert or replace every item in one transaction: all are stored, or none."""
        until = time.time() + expires_seconds
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO taskmesh_results (key, value, expires) VALUES (?, ?, ?)",
                [(key, value, until) for key, value, _ in items],
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise failure(exc, self.path, "result store", store=True) from exc

    def get(self, key: str) -> bytes | None:
        """Return the live value under ``key``."""
        row = self._execute(
            "SELECT value FROM taskmesh_results WHERE key = ? AND expires > ?", (key, time.time())
        ).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the values under ``keys`` with one query per 500 keys."""
        found: dict[str, bytes] = {}
        now = time.time()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._execute(
                f"SELECT key, value FROM taskmesh_results WHERE key IN ({marks}) AND expires > ?",
                (*chunk, now),
            ).fetchall()
            found.update((row[0], bytes(row[1])) for row in rows)
        return [found.get(key) for key in keys]

    def delete(self, key: str) -> None:
        """Remove ``key`` and any set under it."""
        self._execute("DELETE FROM taskmesh_results WHERE key = ?", (key,))
        self._execute("DELETE FROM taskmesh_members WHERE key = ?", (key,))

    def add_member(self, key: str, member: str, *, expires_seconds: float) -> int:
        """Insert ``member`` once and count the set, in one transaction."""
        conn = self.conn
        try:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            # The set expires as a whole, like a value: an expired one counts as
            # absent, and each add moves the expiry of every member.
            conn.execute("DELETE FROM taskmesh_members WHERE key = ? AND expires <= ?", (key, now))
            conn.execute(
                "INSERT OR IGNORE INTO taskmesh_members (key, member, expires) VALUES (?, ?, ?)",
                (key, member, now + expires_seconds),
            )
            conn.execute(
                "UPDATE taskmesh_members SET expires = ? WHERE key = ?",
                (now + expires_seconds, key),
            )
            row = conn.execute(
                "SELECT COUNT(*) FROM taskmesh_members WHERE key = ?", (key,)
            ).fetchone()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise failure(exc, self.path, "result store", store=True) from exc
        return int(row[0])

    def claim(self, key: str, *, expires_seconds: float) -> bool:
        """Insert ``key`` unless a live row exists; the insert decides the winner."""
        now = time.time()
        self._execute("DELETE FROM taskmesh_results WHERE key = ? AND expires <= ?", (key, now))
        cursor = self._execute(
            "INSERT OR IGNORE INTO taskmesh_results (key, value, expires) VALUES (?, ?, ?)",
            (key, b"1", now + expires_seconds),
        )
        return cursor.rowcount == 1

    def close(self) -> None:
        """Close the connection (only in the process that opened it)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
