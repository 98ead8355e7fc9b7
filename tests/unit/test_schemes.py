"""The scheme registry and URL helpers."""

from __future__ import annotations

import pytest

from taskmesh.errors import ConfigurationError
from taskmesh.result import BACKENDS, connect_store
from taskmesh.schemes import SchemeRegistry, scheme_of
from taskmesh.transport import BROKERS, connect
from taskmesh.urls import mask_url, parse_bool, parse_options


def test_builtin_schemes_resolve_to_their_adapters() -> None:
    assert BROKERS.resolve("memory://").__name__ == "MemoryTransport"
    assert BROKERS.resolve("sqlite:///x.db").__name__ == "SQLiteTransport"
    assert BACKENDS.resolve("sqlite:///x.db").__name__ == "SQLiteResultStore"


def test_unknown_scheme_lists_the_known_and_the_nearest() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect("reddis://127.0.0.1:1/0")
    message = str(info.value)
    assert "Did you mean redis://" in message
    assert "sqlite" in message
    assert "amqp" in message


def test_not_a_url_says_what_a_url_looks_like() -> None:
    with pytest.raises(ConfigurationError, match="scheme://"):
        scheme_of("localhost:6379")


def test_missing_driver_names_the_extra() -> None:
    registry = SchemeRegistry(
        "broker", "taskmesh.tests-none", {"fake": "no_such_driver_module:X"}, {"fake": "fakeext"}
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'taskmesh\[fakeext\]'"):
        registry.resolve("fake://host")


def test_registered_scheme_is_used() -> None:
    registry = SchemeRegistry("broker", "taskmesh.tests-none", {}, {})
    registry.register("mem2", "taskmesh.brokers.memory:MemoryTransport")
    assert registry.resolve("mem2://x").__name__ == "MemoryTransport"
    assert registry.schemes() == ["mem2"]


def test_unknown_url_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"poll_intervall.*Did you mean 'poll_interval'"):
        connect("sqlite:///x.db?poll_intervall=1")
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        connect_store("sqlite:///x.db?busy_timeout=soon")


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("amqp://user:pw@host/vh") == "amqp://user:***@host/vh"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("redis://:pw@host:notaport/0") == "redis://:***@host:notaport/0"


def test_parse_options_converts_and_overrides() -> None:
    options = parse_options("x://h/?a=1&b=yes", {"a": int, "b": parse_bool}, {"a": 5})
    assert options == {"a": 5, "b": True}
    with pytest.raises(ValueError, match="expected one of"):
        parse_bool("maybe")
