"""The embedded broker: one SQLite file, safe for many worker processes.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the
SQLAlchemy convention: three slashes then a relative path, four for an absolute
one); ``sqlite://taskmesh.db`` also reads as a relative path.

Options (query string):

- ``poll_interval`` (float, default 0.02): seconds between looks at an empty
  queue while ``receive`` waits;
- ``busy_timeout`` (float, default 30): seconds a connection waits for another
  process's write lock before failing.

How it keeps its promises: the file runs in WAL mode so readers never block the
writer; a receive claims rows in one short ``BEGIN IMMEDIATE`` transaction that
sets ``lease_until`` and a fresh ``lease_token`` and bumps ``deliveries``; ack,
requeue and lease extension match on the token, so a consumer whose lease ran
out cannot touch the message's next delivery. Delayed messages carry
``not_before`` and are invisible until then; no lease exists while they wait.

Capabilities: delays (any length), priorities 0-9, FIFO within a priority,
lease extension, core dead-lettering. Needs SQLite 3.35 or later (RETURNING).

Limitations: one machine only (SQLite over a network file system is unsafe),
and write throughput is bounded by one writer at a time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

from taskmesh.sqlitefile import failure, open_database, sqlite_path
from taskmesh.transport import Capabilities, Delivery, Outgoing, Transport
from taskmesh.urls import parse_options

__all__ = ["SQLiteTransport"]

logger = logging.getLogger(__name__)

_CLAIM = """
UPDATE taskmesh_messages
   SET lease_until = :until, lease_token = :token, deliveries = deliveries + 1
 WHERE id IN (
       SELECT id FROM taskmesh_messages
        WHERE queue = :queue AND not_before <= :now
          AND (lease_until IS NULL OR lease_until <= :now)
        ORDER BY priority DESC, id
        LIMIT :limit)
RETURNING id, body, headers, deliveries, priority
"""

_ANY_READY = """
SELECT 1 FROM taskmesh_messages
 WHERE queue = ? AND not_before <= ? AND (lease_until IS NULL OR lease_until <= ?)
 LIMIT 1
"""


_INSERT = (
    "INSERT INTO taskmesh_messages (queue, priority, not_before, headers, body) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _row(message: Outgoing, now: float) -> tuple[str, int, float, str, bytes]:
    headers = json.dumps(dict(message.headers)) if message.headers else "{}"
    return (message.queue, message.priority, now + message.delay, headers, message.body)


def _queue_order(row: tuple[Any, ...]) -> tuple[int, int]:
    # A priority column written by hand with a non-number must not stop the
    # queue: such a row sorts as priority 0.
    priority = row[4] if isinstance(row[4], int) else 0
    return (-priority, row[0])


def _headers(raw: object) -> dict[str, str]:
    """Read a headers column; one not holding a JSON object yields no headers."""
    try:
        headers = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except (ValueError, RecursionError):
        headers = None
    if not isinstance(headers, dict):
        return {"x-unreadable-headers": repr(raw)[:100]}
    return {str(k): str(v) for k, v in headers.items()}


class SQLiteTransport(Transport):
    """Queues as rows of one SQLite file."""

    capabilities = Capabilities(native_delay=True, priorities=True, fifo=True)

    def __init__(
        self,
        url: str = "sqlite:///taskmesh.db",
        *,
        lease_seconds: float = 30.0,
        poll_interval: float | None = None,
        busy_timeout: float | None = None,
    ) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        overrides = {
            k: v
            for k, v in (("poll_interval", poll_interval), ("busy_timeout", busy_timeout))
            if v is not None
        }
        options = parse_options(url, {"poll_interval": float, "busy_timeout": float}, overrides)
        self.poll_interval: float = options.get("poll_interval", 0.02)
        self.busy_timeout: float = options.get("busy_timeout", 30.0)
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, opened on first use (and again after a fork)."""
        if self._conn is None or self._pid != os.getpid():
            schema = resources.files("taskmesh.brokers").joinpath("sqlite.sql").read_text()
            self._conn = open_database(self.path, self.busy_timeout, schema)
            self._pid = os.getpid()
        return self._conn

    def _write(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise failure(exc, self.path, "broker", store=False) from exc

    def publish(self, message: Outgoing) -> None:
        """Insert one message, committed before returning.

        One statement is its own transaction in autocommit mode, as durable as
        an explicit one and a third of the calls into SQLite (issue #8).
        """
        try:
            self.conn.execute(_INSERT, _row(message, time.time()))
        except sqlite3.Error as exc:
            raise failure(exc, self.path, "broker", store=False) from exc

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Insert messages in one transaction: all are published, or none."""
        now = time.time()
        self._write(_INSERT, [_row(m, now) for m in messages])

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Claim ready rows, polling every ``poll_interval`` until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._any_ready(queues):
                taken = self._claim(queues, max_messages)
                if taken:
                    return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(self.poll_interval, remaining))

    def _any_ready(self, queues: Sequence[str]) -> bool:
        # A plain read takes no write lock, so idle workers polling an empty
        # queue do not queue up behind each other on BEGIN IMMEDIATE.
        now = time.time()
        return any(
            self.conn.execute(_ANY_READY, (queue, now, now)).fetchone() is not None
            for queue in queues
        )

    def _claim(self, queues: Sequence[str], max_messages: int) -> list[Delivery]:
        conn = self.conn
        now = time.time()
        token = uuid.uuid4().hex
        taken: list[Delivery] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for queue in queues:
                if len(taken) >= max_messages:
                    break
                params = {
                    "until": now + self.lease_seconds,
                    "token": token,
                    "queue": queue,
                    "now": now,
                    "limit": max_messages - len(taken),
                }
                rows = conn.execute(_CLAIM, params).fetchall()
                # RETURNING gives rows in no promised order: restore the queue's.
                rows.sort(key=_queue_order)
                taken.extend(
                    Delivery(queue, row[1], _headers(row[2]), row[3], (row[0], token))
                    for row in rows
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise failure(exc, self.path, "broker", store=False) from exc
        return taken

    def ack(self, delivery: Delivery) -> None:
        """Delete the row if this delivery still holds its lease."""
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Delete several rows in one transaction."""
        self._write(
            "DELETE FROM taskmesh_messages WHERE id = ? AND lease_token = ?",
            [d.receipt for d in deliveries],
        )

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Clear the lease; ready again after ``delay`` seconds."""
        message_id, token = delivery.receipt
        self._write(
            "UPDATE taskmesh_messages SET lease_until = NULL, lease_token = NULL, not_before = ? "
            "WHERE id = ? AND lease_token = ?",
            [(time.time() + delay, message_id, token)],
        )

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Move the lease deadline to ``seconds`` from now."""
        self.extend_leases([delivery], seconds)

    def extend_leases(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Extend several leases in one transaction."""
        until = time.time() + seconds
        self._write(
            "UPDATE taskmesh_messages SET lease_until = ? WHERE id = ? AND lease_token = ?",
            [(until, *d.receipt) for d in deliveries],
        )

    def declare(self, queue: str) -> None:
        """Create the file and schema; queues themselves need no declaring."""
        self.conn.execute("SELECT 1")

    def size(self, queue: str) -> int:
        """Count the queue's rows."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM taskmesh_messages WHERE queue = ?", (queue,)
        ).fetchone()
        return int(row[0])

    def purge(self, queue: str) -> int:
        """Delete the queue's rows that hold no live lease."""
        now = time.time()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute(
            "DELETE FROM taskmesh_messages WHERE queue = ? "
            "AND (lease_until IS NULL OR lease_until <= ?)",
            (queue, now),
        )
        conn.execute("COMMIT")
        return cursor.rowcount

    def close(self) -> None:
        """Close the connection (only in the process that opened it)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
