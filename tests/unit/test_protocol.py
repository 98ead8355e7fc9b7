"""The envelope codec: round trips, refusals at send time, decoding errors, signing."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from taskmesh.errors import ConfigurationError, DecodeError, EncodeError
from taskmesh.protocol import PROTOCOL_VERSION, Codec, Envelope


def envelope(**changes: object) -> Envelope:
    base = Envelope(id="id-1", task="proj.add", args=[1, 2], kwargs={"z": 3})
    return base.replace(**changes)


def test_json_round_trip_keeps_every_field() -> None:
    codec = Codec()
    original = envelope(
        queue="q",
        retries=2,
        eta=1.5,
        expires=9.0,
        priority=7,
        parent_id="p",
        root_id="r",
        group_id="g",
        headers={"h": 1},
        options={"link": [{"task": "t"}]},
        time_limit=3.0,
        soft_time_limit=2.0,
        sent_at=1.0,
    )
    assert codec.decode(codec.encode(original)) == original


def test_body_is_a_versioned_json_object() -> None:
    data = json.loads(Codec().encode(envelope()))
    assert data["v"] == PROTOCOL_VERSION
    assert data["task"] == "proj.add"
    assert data["args"] == [1, 2]


def test_arguments_json_cannot_encode_fail_at_send_time_naming_the_task() -> None:
    with pytest.raises(EncodeError, match=r"proj\.add.*JSON types"):
        Codec().encode(envelope(args=[object()]))
    with pytest.raises(EncodeError):
        Codec().encode(envelope(args=[float("nan")]))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"v": 99, "id": "x", "task": "t"}', "protocol version 99"),
        (b'{"v": 1, "task": "t"}', "not a valid task envelope"),
        (b'{"v": 1, "id": "x", "task": "t", "args": {"a": 1}}', "not a list"),
        (b'{"v": 1, "id": 5, "task": "t"}', "must be text"),
    ],
)
def test_bad_bodies_raise_decode_error_saying_why(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        Codec().decode(body)


def test_pickle_payload_is_refused_unless_accepted() -> None:
    payload = base64.b64encode(pickle.dumps([[1], {}])).decode()
    body = json.dumps(
        {"v": 1, "id": "x", "task": "t", "content_type": "pickle", "payload": payload}
    ).encode()
    with pytest.raises(DecodeError, match="refuses"):
        Codec().decode(body)
    accepting = Codec("json", ["json", "pickle"])
    assert accepting.decode(body).args == [1]


def test_pickle_serializer_round_trips_when_chosen_and_accepted() -> None:
    codec = Codec("pickle", ["pickle"])
    original = envelope(args=[{1, 2}])
    assert codec.decode(codec.encode(original)).args == [{1, 2}]


def test_serializer_outside_accept_content_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="accept_content"):
        Codec("pickle", ["json"])
    with pytest.raises(ConfigurationError, match="Unknown serializer"):
        Codec("yaml", ["yaml"])


def test_signed_messages_verify_and_tampering_is_refused() -> None:
    codec = Codec(signing_key="secret")
    body = codec.encode(envelope())
    assert codec.decode(body).task == "proj.add"
    tampered = body.replace(b'"args":[1,2]', b'"args":[1,3]')
    with pytest.raises(DecodeError, match="signature"):
        codec.decode(tampered)
    with pytest.raises(DecodeError, match="not signed"):
        codec.decode(Codec().encode(envelope()))
    with pytest.raises(DecodeError, match="signature"):
        Codec(signing_key="other").decode(body)


def test_peek_id_reads_what_it_can() -> None:
    assert Codec.peek_id(Codec().encode(envelope())) == ("id-1", "proj.add")
    assert Codec.peek_id(Codec(signing_key="k").encode(envelope())) == ("id-1", "proj.add")
    assert Codec.peek_id(b"garbage") == (None, None)
    assert Codec.peek_id(b'{"id": 3}') == (None, None)
