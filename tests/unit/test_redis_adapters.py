"""Redis adapters' own logic, without a server: options, payloads, error mapping, retries."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis as redis_py
from hypothesis import given
from hypothesis import strategies as st

from taskmesh.backends.redis import RedisResultStore
from taskmesh.brokers import redis as broker
from taskmesh.errors import BrokerError, BrokerUnavailable, ConfigurationError, ConnectionLost
from taskmesh.redisurl import RedisSettings, open_client, read_settings
from taskmesh.result import ResultStore
from taskmesh.transport import Outgoing, Transport

# A closed port: constructing adapters must not connect, so nothing listens here.
URL = "redis://:secret@127.0.0.1:1/0"


def test_defaults() -> None:
    settings = read_settings(URL)
    assert settings == RedisSettings()
    assert settings.key_prefix == "taskmesh:"


def test_options_are_typed() -> None:
    settings = read_settings(
        "redis://:secret@127.0.0.1:1"
        "?key_prefix=app1:&socket_timeout=2.5&retry_timeout=0&db=4&ssl_cert_reqs=none"
    )
    assert (settings.key_prefix, settings.socket_timeout, settings.retry_timeout) == (
        "app1:",
        2.5,
        0.0,
    )
    assert (settings.db, settings.ssl_cert_reqs) == (4, "none")


ADAPTERS: list[Callable[[str], Transport | ResultStore]] = [
    broker.RedisTransport,
    RedisResultStore,
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("key_prefx=a", "Did you mean 'key_prefix'"),
        ("socket_timeout=0", "Option socket_timeout .* must be above 0"),
        ("connect_timeout=-1", "Option connect_timeout .* must be above 0"),
        ("retry_timeout=-1", "Option retry_timeout .* must be 0 or more"),
        ("ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("db=first", "db"),
    ],
)
def test_bad_options_are_configuration_errors(
    adapter: Callable[[str], Transport | ResultStore], query: str, complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        adapter(f"{URL}?{query}")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_malformed_url_fails_at_construction_without_the_password(
    adapter: Callable[[str], Transport | ResultStore],
) -> None:
    with pytest.raises(ConfigurationError, match="port") as caught:
        adapter("redis://:secret@127.0.0.1:port/0")
    assert "secret" not in str(caught.value)


def test_the_client_never_retries_by_itself_and_keeps_tcp_connections_alive() -> None:
    url = (
        "rediss://:secret@127.0.0.1:1?db=9&socket_timeout=2&connect_timeout=3"
        "&ssl_cert_reqs=none&ssl_ca_certs=/tmp/taskmesh-test-ca.pem"
    )
    client = open_client(url, read_settings(url))
    options = client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (2.0, 3.0)
    assert (options["socket_keepalive"], options["db"], options["port"]) == (True, 9, 1)
    assert (options["ssl_cert_reqs"], options["ssl_ca_certs"]) == (
        "none",
        "/tmp/taskmesh-test-ca.pem",
    )
    assert options["retry"].get_retries() == 0
    client.close()


def test_a_unix_socket_client_takes_its_database_from_the_option_and_no_keepalive() -> None:
    url = "unix:///tmp/taskmesh-test-absent.sock?db=3"
    client = open_client(url, read_settings(url))
    options = client.connection_pool.connection_kwargs
    assert (options["path"], options["db"]) == ("/tmp/taskmesh-test-absent.sock", 3)
    assert "socket_keepalive" not in options
    client.close()


def test_a_url_redis_py_refuses_is_a_configuration_error_without_the_password() -> None:
    url = "http://:secret@127.0.0.1:1/0"
    with pytest.raises(ConfigurationError, match="Cannot use Redis URL") as caught:
        open_client(url, read_settings(url))
    assert "secret" not in str(caught.value)


def test_the_core_imports_without_redis_py() -> None:
    # Only the Redis adapters may import taskmesh.redisurl: taskmesh must work
    # without the redis extra installed.
    script = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import taskmesh, taskmesh.cli, taskmesh.worker\n"
        "print(sorted(name for name in sys.modules if 'redis' in name))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['redis']"


def test_constructing_does_not_connect_and_repr_hides_the_password() -> None:
    transport = broker.RedisTransport(URL)
    store = RedisResultStore(URL)
    assert "secret" not in repr(transport)
    assert "secret" not in repr(store)
    transport.declare("q")  # declares lazily: no call, so no error
    transport.close()
    store.close()


@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
)
def test_payload_round_trip(body: bytes, headers: dict[str, str]) -> None:
    payload = broker._encode(Outgoing("q", body, headers))
    assert broker._decode(payload) == (headers, body)


@pytest.mark.parametrize("payload", [b"no newline at all", b"[1, 2]\nbody", b"{bad json\nbody"])
def test_a_foreign_payload_is_handed_on_not_fatal(payload: bytes) -> None:
    headers, _ = broker._decode(payload)
    assert "x-unreadable-headers" in headers


def test_too_large_a_message_is_refused_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "MAX_MESSAGE_BYTES", 10)
    transport = broker.RedisTransport(URL)
    with pytest.raises(broker.MessageTooLarge, match="11-byte"):
        transport.publish_many([Outgoing("q", b"x"), Outgoing("q", b"x" * 11)])


def client(retry_timeout: float = 0) -> broker.RedisClient:
    return broker.RedisClient(URL, RedisSettings(retry_timeout=retry_timeout))


def failing(*errors: Exception) -> Callable[[], str]:
    """A call that raises ``errors`` in turn, then returns ``"ok"``."""
    pending = list(errors)

    def call() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    return call


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            redis_py.ConnectionError("Error 111 connecting to 127.0.0.1:1. Refused."),
            BrokerUnavailable,
        ),
        (redis_py.exceptions.BusyLoadingError("Redis is loading"), BrokerUnavailable),
        (redis_py.exceptions.ReadOnlyError("You can't write against a replica"), BrokerUnavailable),
        (redis_py.exceptions.AuthenticationError("invalid password"), BrokerUnavailable),
        (redis_py.ConnectionError("Connection closed by server."), ConnectionLost),
        (redis_py.TimeoutError("Timeout reading from socket"), ConnectionLost),
        (redis_py.ResponseError("OOM command not allowed"), BrokerError),
    ],
)
def test_driver_errors_map_to_taskmesh_errors(
    error: Exception, expected: type[BrokerError]
) -> None:
    with pytest.raises(expected) as caught:
        client().call("receive", failing(error), retry=False)
    assert type(caught.value) is expected
    assert caught.value.__cause__ is error
    assert "secret" not in str(caught.value)
    assert caught.value.url == "redis://:***@127.0.0.1:1/0"


def test_retry_outlasts_a_short_outage_and_logs_it_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(broker.time, "sleep", pauses.append)
    lost = redis_py.ConnectionError("Connection closed by server.")
    with caplog.at_level(logging.INFO, logger="taskmesh.brokers.redis"):
        result = client(retry_timeout=30).call("publish", failing(lost, lost, lost), retry=True)
    assert result == "ok"
    assert pauses == [0.05, 0.1, 0.2]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("redis unreachable, retrying")
    assert messages[1].startswith("redis reachable again")
    assert all("secret" not in message for message in messages)


def test_without_retry_nothing_is_logged_for_the_worker_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lost = redis_py.ConnectionError("Connection closed by server.")
    with (
        caplog.at_level(logging.INFO, logger="taskmesh.brokers.redis"),
        pytest.raises(ConnectionLost),
    ):
        client(retry_timeout=30).call("receive", failing(lost), retry=False)
    assert caplog.records == []


def test_a_database_named_in_the_path_and_by_db_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="names a database twice") as caught:
        read_settings("redis://:secret@127.0.0.1:6390/0?db=9")
    assert "secret" not in str(caught.value)
    assert read_settings("redis://127.0.0.1:6390?db=9").db == 9
    assert read_settings("redis://127.0.0.1:6390/2").db is None
