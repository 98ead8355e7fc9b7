"""Every setting, its default, its environment variable, and its validation.

Settings are lower-case names (``broker_url``). They come, later winning, from
the defaults below, ``app.config_from_object(...)``, keyword arguments to
``TaskMesh(...)``, attribute assignment on ``app.conf``, and environment
variables ``TASKMESH_<NAME>`` (``TASKMESH_BROKER_URL``), which override
everything so an operator can change a deployment without editing code.

An unknown name or a value of the wrong type is a ``ConfigurationError`` when
it is set, not when it is first used. Once a worker or beat starts, the app is
finalized and ``app.conf`` becomes read-only: its values, environment
included, are read once then.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskmesh.errors import ConfigurationError

__all__ = ["SETTINGS", "Config", "Setting"]

_ENV_PREFIX = "TASKMESH_"
# TASKMESH_* variables that are not settings: the test suite's switch.
_OTHER_VARIABLES = frozenset({"TASKMESH_REQUIRE_SERVERS"})


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float, str)):
        return float(value)
    raise ValueError(f"expected a number of seconds, got {value!r}")


def _positive(convert: Callable[[Any], Any], *, allow_zero: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = convert(value)
        if number is not None and (number < 0 or (number == 0 and not allow_zero)):
            floor = "0 or more" if allow_zero else "more than 0"
            raise ValueError(f"must be {floor}, got {value!r}")
        if isinstance(number, float) and math.isnan(number):
            raise ValueError("must be a number, got NaN")
        return number

    return check


def _to_optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        return None
    return _to_float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _to_optional_str(value: Any) -> str | None:
    return None if value is None else _to_str(value)


def _to_zone_name(value: Any) -> str:
    name = _to_str(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"not an IANA time zone such as 'Europe/Berlin' or 'UTC' ({exc})") from exc
    return name


def _to_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a list of names or a comma-separated string, got {value!r}")


def _to_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def _to_choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its default, its converter, and what it means."""

    default: Any
    convert: Callable[[Any], Any]
    doc: str


SETTINGS: dict[str, Setting] = {
    "broker_url": Setting("sqlite:///taskmesh.db", _to_str, "Where messages go."),
    "result_backend": Setting(
        None, _to_optional_str, "Where results go; defaults to the broker URL when it can store."
    ),
    "result_expires": Setting(86400.0, _positive(_to_float), "Seconds a result is kept."),
    "task_default_queue": Setting("default", _to_str, "Queue for tasks that name none."),
    "task_serializer": Setting("json", _to_str, "Serializer for task arguments."),
    "accept_content": Setting(["json"], _to_str_list, "Serializers a worker decodes."),
    "signing_key": Setting(None, _to_optional_str, "HMAC key; signs and verifies messages."),
    "task_always_eager": Setting(False, _to_bool, "Run tasks in the caller, for tests."),
    "task_eager_propagates": Setting(True, _to_bool, "Eager failures raise at the call."),
    "task_acks_late": Setting(True, _to_bool, "Ack after the task ran (at least once)."),
    "task_ignore_result": Setting(False, _to_bool, "Store no results by default."),
    "task_time_limit": Setting(None, _positive(_to_optional_float), "Hard limit in seconds."),
    "task_soft_time_limit": Setting(None, _positive(_to_optional_float), "Soft limit in seconds."),
    "task_max_retries": Setting(
        3, _positive(_to_int, allow_zero=True), "Default retries for self.retry()."
    ),
    "task_default_retry_delay": Setting(
        180.0, _positive(_to_float, allow_zero=True), "Default retry countdown."
    ),
    "task_max_deliveries": Setting(
        5, _positive(_to_int), "Deliveries without finishing before a message is dead-lettered."
    ),
    "task_max_message_bytes": Setting(
        1_048_576, _positive(_to_int), "Largest encoded message a producer sends."
    ),
    "task_routes": Setting({}, _to_mapping, "Task name to options such as queue."),
    "task_track_started": Setting(False, _to_bool, "Store STARTED when a task begins."),
    "broker_lease_seconds": Setting(
        30.0, _positive(_to_float), "How long a received message is leased."
    ),
    "worker_concurrency": Setting(
        None, _positive(_to_optional_float), "Processes or threads; CPU count."
    ),
    "worker_pool": Setting("prefork", _to_choice("prefork", "threads"), "Execution pool."),
    "worker_prefetch_multiplier": Setting(
        16, _positive(_to_int), "Most messages held per slot; fewer while tasks are slow."
    ),
    "worker_shutdown_timeout": Setting(
        30.0, _positive(_to_float, allow_zero=True), "Seconds running tasks get at stop."
    ),
    "worker_queues": Setting(None, lambda v: None if v is None else _to_str_list(v), "Queues."),
    "timezone": Setting("UTC", _to_zone_name, "IANA zone for crontab schedules."),
    "beat_schedule": Setting({}, _to_mapping, "Periodic tasks."),
    "beat_schedule_filename": Setting("taskmesh-beat.db", _to_str, "Beat's state file."),
    "beat_state_url": Setting(None, _to_optional_str, "Store beat state in this store."),
    "beat_lock_seconds": Setting(10.0, _positive(_to_float), "Expiry of beat's leader lock."),
    "beat_catch_up": Setting("once", _to_choice("once", "skip"), "Missed runs at start."),
    "beat_max_loop_interval": Setting(1.0, _positive(_to_float), "Longest beat sleep."),
}


class Config:
    """Attribute access to every setting of one app.

    Args:
        overrides: Initial values, validated.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", {})
        # Set when finalized: every value, read here with no environment
        # lookup and no conversion on a worker's hot path.
        object.__setattr__(self, "_frozen", None)
        for name, value in (overrides or {}).items():
            self[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __getitem__(self, name: str) -> Any:
        frozen: dict[str, Any] | None = self._frozen
        if frozen is not None and name in frozen:
            return frozen[name]
        setting = _setting(name)
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None:
            return _convert(name, setting, env, f"environment variable {_ENV_PREFIX}{name.upper()}")
        values: dict[str, Any] = self._values
        if name in values:
            return values[name]
        default = setting.default
        return dict(default) if isinstance(default, dict) else default

    def __setitem__(self, name: str, value: Any) -> None:
        if self._frozen is not None:
            raise ConfigurationError(
                f"Cannot set {name!r}: the app is finalized (a worker or beat started). "
                "Configure the app before starting it."
            )
        setting = _setting(name)
        self._values[name] = _convert(name, setting, value, "setting")

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several settings, validating each."""
        for name, value in values.items():
            self[name] = value

    def finalize(self) -> None:
        """Validate the environment overrides and make the settings read-only.

        Raises:
            ConfigurationError: A ``TASKMESH_*`` variable names no setting (a
                typo would otherwise be ignored in silence) or has a bad value.
        """
        for variable in os.environ:
            if variable.startswith(_ENV_PREFIX) and variable not in _OTHER_VARIABLES:
                name = variable[len(_ENV_PREFIX) :].lower()
                if name not in SETTINGS:
                    near = difflib.get_close_matches(name, list(SETTINGS), n=1)
                    hint = f" Did you mean {_ENV_PREFIX}{near[0].upper()}?" if near else ""
                    raise ConfigurationError(
                        f"Environment variable {variable} names no setting.{hint}"
                    )
        values = {name: self[name] for name in SETTINGS}
        object.__setattr__(self, "_frozen", values)

    def as_dict(self) -> dict[str, Any]:
        """Return every setting's current value."""
        return {name: self[name] for name in SETTINGS}


def _setting(name: str) -> Setting:
    setting = SETTINGS.get(name)
    if setting is None:
        near = difflib.get_close_matches(name, list(SETTINGS), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigurationError(f"Unknown setting {name!r}.{hint}")
    return setting


def _convert(name: str, setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.convert(value)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"Invalid {source} {name}={value!r}: {exc}.") from exc
