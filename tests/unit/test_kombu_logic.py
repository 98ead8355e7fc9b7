"""The kombu bridge's pure logic: which transport class, options, header filtering.

Nothing here connects: the bridge opens kombu's connection on first use.
"""

from __future__ import annotations

import pytest

from taskmesh.brokers.kombu import KombuTransport, _user
from taskmesh.errors import ConfigurationError
from taskmesh.transport import connect


@pytest.mark.parametrize(
    ("url", "priorities", "lease_extension"),
    [
        ("kombu+memory://", False, False),
        ("kombu+redis://127.0.0.1:6379/0", False, True),
        ("kombu+amqp://guest:guest@127.0.0.1:5672//", True, False),
        ("kombu+pyamqp://guest:guest@127.0.0.1:5672//", True, False),
    ],
)
def test_each_bridged_transport_declares_what_it_can_do(
    url: str, priorities: bool, lease_extension: bool
) -> None:
    transport = connect(url)
    assert isinstance(transport, KombuTransport)
    assert transport.capabilities.priorities is priorities
    assert transport.capabilities.lease_extension is lease_extension
    assert transport.capabilities.native_delay


def test_kombu_url_is_passed_on_without_the_prefix_or_our_options() -> None:
    transport = connect("kombu+redis://127.0.0.1:6379/3?key_prefix=app1:&connect_timeout=2")
    assert transport.kombu_url == "redis://127.0.0.1:6379/3"  # type: ignore[attr-defined]
    assert transport.connect_timeout == 2.0  # type: ignore[attr-defined]


def test_memory_url_keeps_its_slashes() -> None:
    assert connect("kombu+memory://").kombu_url == "memory://"  # type: ignore[attr-defined]


def test_key_prefix_is_for_redis_only() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        connect("kombu+memory://?key_prefix=x")


def test_unknown_option_is_a_configuration_error_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError, match="visibility") as caught:
        connect("kombu+amqp://app:s3cret@127.0.0.1//?visibility_timeout=5")
    assert "s3cret" not in str(caught.value)


def test_bridge_headers_drop_kombus_redelivered_flag_and_our_own() -> None:
    headers = {"redelivered": True, "x-taskmesh-deliveries": "2", "x-trace": "t", "n": 1}
    assert _user(headers) == {"x-trace": "t", "n": "1"}
