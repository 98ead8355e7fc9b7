"""Opening one SQLite file safely from many processes.

Shared by the SQLite broker, the SQLite result store and beat's state file:
WAL mode (readers never block the writer), a busy timeout instead of instant
``database is locked`` errors, and the URL convention for paths.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from taskmesh.errors import BrokerUnavailable, ConfigurationError, ResultError, TaskmeshError

__all__ = ["failure", "open_database", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """Return the file path a ``sqlite://`` URL names.

    Raises:
        ConfigurationError: The URL names no file.
    """
    rest = url.partition("://")[2].split("?", 1)[0]
    if rest.startswith("/"):
        rest = rest[1:]
    if not rest:
        raise ConfigurationError(
            f"{url!r} names no file: use sqlite:///taskmesh.db (relative) or "
            "sqlite:////var/lib/app/taskmesh.db (absolute)."
        )
    return rest


def failure(exc: sqlite3.Error, path: str, what: str, *, store: bool) -> TaskmeshError:
    """Map a SQLite error to the taskmesh error a caller should see.

    A read-only file or one that is not a database will not mend by retrying:
    those are ``ConfigurationError``. Anything else (a lock held too long, a
    full disk) is an outage the worker rides out: ``BrokerUnavailable`` for
    the broker, ``ResultError`` for the result store.
    """
    text = str(exc)
    if "readonly" in text or "not a database" in text or "unable to open" in text:
        return ConfigurationError(
            f"SQLite file {path!r} cannot be used for the {what}: {text}. Check that the "
            "file and its folder are writable by this process and hold a SQLite database."
        )
    message = f"SQLite {what} {path!r} failed: {text}."
    if store:
        return ResultError(message)
    return BrokerUnavailable(message, f"sqlite:///{path}")


def open_database(
    path: str, busy_timeout: float, schema: str, *, store: bool = False
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with ``schema`` applied.

    Args:
        path: The file; created if missing, its folder must exist.
        busy_timeout: Seconds to wait for another process's write lock.
        schema: SQL run once per connection (``CREATE ... IF NOT EXISTS``).
        store: Whether a result store (not the broker) opens it; picks the
            error class of an outage.

    Raises:
        ConfigurationError: The folder is missing, or the file is read-only or
            not a SQLite database.
        BrokerUnavailable: (broker) Any other failure to open it.
        ResultError: (result store) Any other failure to open it.
    """
    what = "result store" if store else "broker"
    parent = Path(path).parent
    if not parent.exists():
        raise ConfigurationError(
            f"Cannot open SQLite file {path!r} for the {what}: folder {str(parent)!r} does "
            "not exist. Create it, or point the URL elsewhere."
        )
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            return _connect(path, busy_timeout, schema)
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL takes an exclusive lock and fails at
            # once, without the busy handler, when another process or thread
            # is opening the same file: wait like the busy timeout would.
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise failure(exc, path, what, store=store) from exc
        except sqlite3.Error as exc:
            raise failure(exc, path, what, store=store) from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _connect(path: str, busy_timeout: float, schema: str) -> sqlite3.Connection:
    # One thread at a time uses a connection (the transport contract), but not
    # always the thread that opened it: a worker opens in its main thread and
    # consumes in its loop thread.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn
