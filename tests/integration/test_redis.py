"""The Redis broker on a real redis-server: the contract, then issue #3's scenarios."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.contract import TransportContract
from tests.servers import RedisServer

pytestmark = pytest.mark.redis


def prefixed(server: RedisServer, *options: str) -> str:
    """Return the server's URL with a key prefix no other test uses."""
    query = "&".join((f"key_prefix=t{uuid.uuid4().hex[:10]}:", *options))
    return f"{server.url}?{query}"


class TestRedisTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, redis: RedisServer) -> str:
        return prefixed(redis)
