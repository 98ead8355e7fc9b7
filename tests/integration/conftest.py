"""Integration fixtures: real servers, and one scenario per test and broker.

``scenario`` is parametrized over every broker the project has, so a scenario
written once runs on each. A broker is added here with its server fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Scenario, scenario_context
from tests.servers import (
    MotoServer,
    RabbitMQServer,
    RedisServer,
    moto_server,
    rabbitmq_server,
    redis_server,
)


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate by key prefix and queue."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server (SQS, S3, DynamoDB) for the session, with dummy AWS credentials."""
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One rabbitmq-server node for the session; tests isolate by queue name."""
    with rabbitmq_server() as server:
        yield server


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


BROKERS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("sqs", id="sqs", marks=pytest.mark.sqs),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("kombu-amqp", id="kombu-amqp", marks=pytest.mark.rabbitmq),
    pytest.param("kombu-redis", id="kombu-redis", marks=pytest.mark.redis),
]


def broker_urls(name: str, request: pytest.FixtureRequest, folder: Path) -> tuple[str, str]:
    """Return (broker URL, result store URL) for broker ``name``, isolated for one test."""
    if name == "sqlite":
        url = f"sqlite:///{folder}/broker.db"
        return url, url
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        url = f"{server.url}?key_prefix={_prefix()}"
        return url, url
    if name == "sqs":
        aws: MotoServer = request.getfixturevalue("moto")
        where = f"region=us-east-1&endpoint_url={aws.endpoint}"
        tag = uuid.uuid4().hex[:10]
        return f"sqs://?{where}&queue_prefix=t{tag}-", f"dynamodb://t{tag}?{where}"
    if name in ("rabbitmq", "kombu-amqp"):
        amqp: RabbitMQServer = request.getfixturevalue("rabbitmq")
        scheme = "amqp" if name == "rabbitmq" else "kombu+amqp"
        return amqp.url.replace("amqp", scheme, 1), f"sqlite:///{folder}/results.db"
    if name == "kombu-redis":
        redis: RedisServer = request.getfixturevalue("redis")
        return f"kombu+{redis.url}?key_prefix={_prefix()}", f"sqlite:///{folder}/results.db"
    raise LookupError(f"no broker fixture named {name!r}")


@pytest.fixture(params=BROKERS)
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    """A broker, store and queue for one test, with workers stopped afterwards."""
    broker, backend = broker_urls(request.param, request, tmp_path)
    yield from scenario_context(broker, backend, tmp_path)


@pytest.fixture
def sqlite_scenario(tmp_path: Path) -> Iterator[Scenario]:
    """A scenario on the embedded SQLite broker only."""
    url = f"sqlite:///{tmp_path}/broker.db"
    yield from scenario_context(url, url, tmp_path)
