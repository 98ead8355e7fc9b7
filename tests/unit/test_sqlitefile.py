"""Opening one SQLite file from many threads at once (issue #2's embedded default)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from taskmesh.sqlitefile import open_database

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY);"


@pytest.mark.parametrize("round_number", range(30))
def test_threads_opening_a_new_file_together_all_succeed(tmp_path: Path, round_number: int) -> None:
    path = str(tmp_path / f"fresh-{round_number}.db")
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def open_it() -> None:
        barrier.wait(10)
        try:
            open_database(path, 10.0, SCHEMA, store=True).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
