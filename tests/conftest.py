"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_taskmesh_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's TASKMESH_* variables from reaching apps built in tests."""
    for name in list(os.environ):
        if name.startswith("TASKMESH_") and name != "TASKMESH_REQUIRE_SERVERS":
            monkeypatch.delenv(name)
