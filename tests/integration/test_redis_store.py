"""The Redis result store on a real redis-server: the contract, then its own promises."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.contract import ResultStoreContract
from tests.servers import RedisServer

pytestmark = pytest.mark.redis


def prefixed(server: RedisServer, *options: str) -> str:
    """Return the server's URL with a key prefix no other test uses."""
    query = "&".join((f"key_prefix=t{uuid.uuid4().hex[:10]}:", *options))
    return f"{server.url}?{query}"


class TestRedisResultStore(ResultStoreContract):
    @pytest.fixture
    def store_url(self, redis: RedisServer) -> str:
        return prefixed(redis)
