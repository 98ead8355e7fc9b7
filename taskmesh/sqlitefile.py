"""Opening one SQLite file safely from many processes.

Shared by the SQLite broker, the SQLite result store and beat's state file:
WAL mode (readers never block the writer), a busy timeout instead of instant
``database is locked`` errors, and the URL convention for paths.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskmesh.errors import BrokerUnavailable, ConfigurationError

__all__ = ["open_database", "sqlite_path"]


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


def open_database(path: str, busy_timeout: float, schema: str) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with ``schema`` applied.

    Raises:
        BrokerUnavailable: The file cannot be opened or created.
    """
    try:
        parent = Path(path).parent
        if not parent.exists():
            raise BrokerUnavailable(
                f"Cannot open SQLite file {path!r}: folder {str(parent)!r} does not exist. "
                "Create it, or point the URL elsewhere.",
                f"sqlite:///{path}",
            )
        # One thread at a time uses a connection (the transport contract), but
        # not always the thread that opened it: a worker opens in its main
        # thread and consumes in its loop thread.
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise BrokerUnavailable(
            f"Cannot open SQLite file {path!r}: {exc}. Check that it is a writable SQLite file.",
            f"sqlite:///{path}",
        ) from exc
    return conn
