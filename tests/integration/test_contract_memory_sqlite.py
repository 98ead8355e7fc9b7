"""The transport and result-store contracts on the built-in memory:// and sqlite://."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration.contract import ResultStoreContract, TransportContract


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def transport_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"


class TestMemoryResultStore(ResultStoreContract):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"


class TestSQLiteTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/broker.db"


class TestSQLiteResultStore(ResultStoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/results.db"
