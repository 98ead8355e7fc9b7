"""The message envelope: what a task message carries and how it becomes bytes.

The wire format is a versioned JSON object, described for other implementers in
``docs/protocol.md``. Arguments are encoded by a serializer: ``json`` by default
(inline in the envelope), or ``pickle`` only where the app's ``accept_content``
setting lists it (base64 in ``payload``). Encoding happens in the producer, so
arguments that cannot be encoded fail at send time, never in a worker.

Optional signing: with a ``signing_key`` setting, every envelope carries an
HMAC-SHA256 of its canonical body, and a worker refuses an unsigned or altered
message (to the dead-letter queue).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from taskmesh.errors import ConfigurationError, DecodeError, EncodeError

__all__ = [
    "PROTOCOL_VERSION",
    "Codec",
    "Envelope",
    "Serializer",
]

PROTOCOL_VERSION = 1


class Serializer(Protocol):
    """Turns task arguments and results into bytes and back."""

    name: str

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise ``TypeError`` or ``ValueError`` if it cannot."""

    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` produced."""


class JSONSerializer:
    """Compact JSON, refusing NaN and anything but JSON's own types."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as compact UTF-8 JSON."""
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        """Decode UTF-8 JSON."""
        return json.loads(data)


class PickleSerializer:
    """Pickle: only ever used when ``accept_content`` lists ``pickle``.

    Unpickling runs code chosen by whoever wrote the message, so a worker that
    accepts pickle trusts every producer that can reach its broker.
    """

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        """Pickle ``value`` with the highest protocol."""
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        """Unpickle ``data``."""
        return pickle.loads(data)  # only reached when pickle is accepted


SERIALIZERS: dict[str, Serializer] = {"json": JSONSerializer(), "pickle": PickleSerializer()}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One task message, decoded.

    Times are Unix epoch seconds (``float``); ``None`` means unset.

    Attributes:
        id: The task id, unique per task (kept across retries).
        task: The registered task name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        queue: The queue it was sent to.
        retries: How many times it was retried before this run.
        eta: Not to run before this time.
        expires: Not to run after this time; then REVOKED.
        priority: 0 (lowest) to 9 (highest).
        parent_id: The task that sent it, if any.
        root_id: The first task of the workflow it belongs to.
        group_id: The group it is a member of, if any.
        headers: User headers, JSON values.
        options: Canvas and routing options carried along (``link``,
            ``link_error``, ``chain``, ``chord`` ...), JSON values.
        time_limit: Hard limit in seconds, overriding the task's.
        soft_time_limit: Soft limit in seconds, overriding the task's.
        sent_at: When the producer encoded it.
    """

    id: str
    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    priority: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    sent_at: float | None = None

    def replace(self, **changes: Any) -> Envelope:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


_FIELDS = tuple(f.name for f in fields(Envelope))
_NUMBER = (int, float, type(None))
_TEXT = (str, type(None))
_OBJECT = (dict, type(None))
# What each optional field may hold on the wire (None: absent).
_TYPES: dict[str, tuple[type, ...]] = {
    "queue": _TEXT,
    "retries": (int, type(None)),
    "eta": _NUMBER,
    "expires": _NUMBER,
    "priority": (int, type(None)),
    "parent_id": _TEXT,
    "root_id": _TEXT,
    "group_id": _TEXT,
    "headers": _OBJECT,
    "options": _OBJECT,
    "time_limit": _NUMBER,
    "soft_time_limit": _NUMBER,
    "sent_at": _NUMBER,
}
_DEFAULTS = {
    f.name: f.default for f in fields(Envelope) if isinstance(f.default, (int, float, str))
}


class Codec:
    """Encodes envelopes to bytes and back, for one app's settings.

    Args:
        serializer: The name of the serializer for arguments (``json``).
        accept_content: Serializer names a worker decodes; others are refused.
        signing_key: If set, sign every message and require valid signatures.
    """

    def __init__(
        self,
        serializer: str = "json",
        accept_content: Sequence[str] = ("json",),
        signing_key: str | None = None,
    ) -> None:
        for name in (serializer, *accept_content):
            if name not in SERIALIZERS:
                raise ConfigurationError(
                    f"Unknown serializer {name!r}; choose from {', '.join(SERIALIZERS)}."
                )
        if serializer not in accept_content:
            raise ConfigurationError(
                f"task_serializer={serializer!r} is not in accept_content={list(accept_content)}:"
                " workers would refuse every message. Add it to accept_content."
            )
        self.serializer = SERIALIZERS[serializer]
        self.accept_content = frozenset(accept_content)
        self._key = signing_key.encode() if signing_key else None

    def encode(self, envelope: Envelope) -> bytes:
        """Encode ``envelope`` for the wire.

        Raises:
            EncodeError: An argument, header or option cannot be encoded; the
                message names the task and the offending type.
        """
        data: dict[str, Any] = {"v": PROTOCOL_VERSION}
        for name in _FIELDS:
            value = getattr(envelope, name)
            if name in ("args", "kwargs"):
                continue
            if value != _DEFAULTS.get(name, None) and value not in ((), {}):
                data[name] = value
        arguments = [list(envelope.args), dict(envelope.kwargs)]
        try:
            if self.serializer.name == "json":
                data["args"], data["kwargs"] = arguments
            else:
                data["content_type"] = self.serializer.name
                data["payload"] = base64.b64encode(self.serializer.dumps(arguments)).decode()
            # Sorted keys give the canonical form a signature covers; without
            # signing, sorting would only refuse dicts with mixed key types.
            body = json.dumps(
                data, separators=(",", ":"), allow_nan=False, sort_keys=self._key is not None
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(
                f"Cannot encode the message for task {envelope.task!r} (id {envelope.id}) "
                f"as {self.serializer.name}: {exc}. Pass JSON types (str, int, float, bool, "
                "None, list, dict), or convert the value before calling the task."
            ) from exc
        if self._key is not None:
            signature = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
            return b'{"sig":"' + signature.encode() + b'","msg":' + body.encode() + b"}"
        return body.encode()

    def decode(self, body: bytes) -> Envelope:
        """Decode a message body into an :class:`Envelope`.

        Raises:
            DecodeError: The body is not a valid envelope, uses a serializer not
                in ``accept_content``, comes from a newer protocol version, or
                fails its signature check.
        """
        data = self._load_object(body)
        if self._key is not None:
            data = self._verify(data)
        version = data.get("v")
        if version != PROTOCOL_VERSION:
            raise DecodeError(
                f"Message has protocol version {version!r}; this worker reads version "
                f"{PROTOCOL_VERSION}. Upgrade the worker or the producer so they match."
            )
        if "payload" in data:
            data["args"], data["kwargs"] = self._load_payload(data)
        try:
            values = {name: data[name] for name in _FIELDS if name in data}
            envelope = Envelope(**values)
        except TypeError as exc:
            raise DecodeError(f"Message is not a valid task envelope: {exc}.") from exc
        if not isinstance(envelope.id, str) or not isinstance(envelope.task, str):
            raise DecodeError("Message is not a valid task envelope: 'id' and 'task' must be text.")
        if not isinstance(envelope.args, list) or not isinstance(envelope.kwargs, dict):
            raise DecodeError(
                f"Message for task {envelope.task!r} (id {envelope.id}) has args that are not "
                "a list or kwargs that are not an object."
            )
        wrong = [name for name, kinds in _TYPES.items() if not isinstance(data.get(name), kinds)]
        if wrong:
            raise DecodeError(
                f"Message for task {envelope.task!r} (id {envelope.id}) has fields of the wrong "
                f"type: {', '.join(f'{name}={data[name]!r}' for name in wrong)}."
            )
        return envelope

    @staticmethod
    def peek_id(body: bytes) -> tuple[str | None, str | None]:
        """Return ``(task_id, task_name)`` from a body if they can be read at all."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None, None
        if isinstance(data, dict) and isinstance(data.get("msg"), dict):
            data = data["msg"]
        if not isinstance(data, dict):
            return None, None
        task_id, name = data.get("id"), data.get("task")
        return (
            task_id if isinstance(task_id, str) else None,
            name if isinstance(name, str) else None,
        )

    @staticmethod
    def _load_object(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            preview = body[:60]
            raise DecodeError(f"Message body is not JSON ({exc}); it starts {preview!r}.") from exc
        if not isinstance(data, dict):
            raise DecodeError(f"Message body is JSON {type(data).__name__}, not an object.")
        return data

    def _verify(self, data: dict[str, Any]) -> dict[str, Any]:
        assert self._key is not None  # only called when signing is on
        signature, message = data.get("sig"), data.get("msg")
        if not isinstance(signature, str) or not isinstance(message, dict):
            raise DecodeError("Message is not signed, and this app requires signed messages.")
        canonical = json.dumps(message, separators=(",", ":"), allow_nan=False, sort_keys=True)
        expected = hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            raise DecodeError(
                "Message signature does not match: altered, or signed with another key."
            )
        return message

    def _load_payload(self, data: dict[str, Any]) -> tuple[Any, Any]:
        content_type = data.get("content_type", "")
        if content_type not in self.accept_content:
            raise DecodeError(
                f"Message for task {data.get('task')!r} uses serializer {content_type!r}, "
                f"which accept_content={sorted(self.accept_content)} refuses."
            )
        try:
            raw = base64.b64decode(data["payload"])
            args, kwargs = SERIALIZERS[content_type].loads(raw)
        except Exception as exc:
            raise DecodeError(
                f"Message payload cannot be decoded as {content_type}: {exc}."
            ) from exc
        return args, kwargs
