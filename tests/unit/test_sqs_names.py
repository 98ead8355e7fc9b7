"""The SQS broker's pure logic: queue names, URL options, and how a message is sent.

No server: the transport is built with a loopback endpoint nothing listens on,
and only methods that make no request are called.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmesh.brokers.sqs import (
    MAX_MESSAGE_BYTES,
    SQSTransport,
    _Queue,
    sqs_queue_name,
)
from taskmesh.errors import ConfigurationError, MessageTooLarge
from taskmesh.transport import BROKERS, Outgoing

ENDPOINT = "region=us-east-1&endpoint_url=http://127.0.0.1:9"
VALID = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")
# Up to 6 characters encode to at most 72; ".fifo" alone has an empty stem (refused below).
names = st.text(min_size=1, max_size=6).filter(lambda name: name != ".fifo")


@pytest.fixture
def transport() -> SQSTransport:
    return SQSTransport(f"sqs://?{ENDPOINT}")


STANDARD = _Queue("q", "http://127.0.0.1:9/q", fifo=False)
FIFO = _Queue("q.fifo", "http://127.0.0.1:9/q.fifo", fifo=True)


class TestQueueNames:
    @given(names)
    def test_every_name_maps_to_a_valid_sqs_name(self, name: str) -> None:
        assert VALID.match(sqs_queue_name(name, "app-"))

    @given(names, names)
    def test_distinct_names_never_share_a_queue(self, first: str, second: str) -> None:
        if first != second:
            assert sqs_queue_name(first) != sqs_queue_name(second)

    def test_common_names_stay_readable(self) -> None:
        assert sqs_queue_name("q-3fa1.dead", "t1-") == "t1-q-3fa1_2edead"
        assert sqs_queue_name("default") == "default"
        assert sqs_queue_name("orders.fifo") == "orders.fifo"
        assert sqs_queue_name("orders.fifo.dead") == "orders_2efifo_2edead"

    @pytest.mark.parametrize("name", ["", ".fifo", "x" * 81])
    def test_empty_or_too_long_names_are_refused(self, name: str) -> None:
        with pytest.raises(ConfigurationError, match="SQS allows 1 to 80"):
            sqs_queue_name(name)


class TestOptions:
    def test_registry_maps_the_scheme(self) -> None:
        assert BROKERS.resolve(f"sqs://?{ENDPOINT}") is SQSTransport

    def test_options_are_typed(self) -> None:
        opened = SQSTransport(
            f"sqs://?{ENDPOINT}&queue_prefix=p-&create_queues=off&poll_interval=0.5"
        )
        assert (opened.queue_prefix, opened.create_queues, opened.poll_interval) == (
            "p-",
            False,
            0.5,
        )

    def test_unknown_option_is_refused_with_a_hint(self) -> None:
        with pytest.raises(ConfigurationError, match="Did you mean 'queue_prefix'"):
            SQSTransport(f"sqs://?{ENDPOINT}&queue_prefx=a")

    def test_a_prefix_sqs_cannot_name_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match=r"queue_prefix='app\.1'"):
            SQSTransport(f"sqs://?{ENDPOINT}&queue_prefix=app.1")

    def test_a_host_in_the_url_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="endpoint_url"):
            SQSTransport("sqs://localhost:4566?region=us-east-1")

    def test_missing_region_is_a_configuration_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        with pytest.raises(ConfigurationError, match=r"\?region="):
            SQSTransport("sqs://?endpoint_url=http://127.0.0.1:9")

    def test_secret_in_the_url_is_masked(self) -> None:
        opened = SQSTransport(f"sqs://AKID:very-secret@?{ENDPOINT}")
        assert "very-secret" not in repr(opened)
        assert "very-secret" not in opened.safe_url


class TestOutgoingEntries:
    def test_delay_is_rounded_up_and_capped_at_900_seconds(self, transport: SQSTransport) -> None:
        assert (
            transport._entry(STANDARD, Outgoing("q", b"x", delay=0.2)).fields["DelaySeconds"] == 1
        )
        assert (
            transport._entry(STANDARD, Outgoing("q", b"x", delay=1200)).fields["DelaySeconds"]
            == 900
        )
        assert "DelaySeconds" not in transport._entry(STANDARD, Outgoing("q", b"x")).fields

    def test_body_sqs_cannot_carry_is_base64_encoded(self, transport: SQSTransport) -> None:
        fields = transport._entry(STANDARD, Outgoing("q", b"\x00\xfe")).fields
        assert base64.b64decode(fields["MessageBody"]) == b"\x00\xfe"
        assert fields["MessageAttributes"]["taskmesh-encoding"]["StringValue"] == "base64"

    def test_oversized_body_is_refused_without_a_bucket(self, transport: SQSTransport) -> None:
        with pytest.raises(MessageTooLarge, match="s3_bucket"):
            transport._entry(STANDARD, Outgoing("q", b"x" * (MAX_MESSAGE_BYTES + 1)))
        headers = {"h": "y" * 100}
        with pytest.raises(MessageTooLarge):  # attributes count towards the limit
            transport._entry(STANDARD, Outgoing("q", b"x" * (MAX_MESSAGE_BYTES - 50), headers))

    def test_fifo_group_comes_from_header_then_envelope_then_task_name(
        self, transport: SQSTransport
    ) -> None:
        plain = json.dumps({"id": "t1", "task": "billing.charge"}).encode()
        grouped = json.dumps(
            {"id": "t2", "task": "billing.charge", "headers": {"message_group_id": "cust-7"}}
        ).encode()
        assert (
            transport._entry(FIFO, Outgoing("q.fifo", plain)).fields["MessageGroupId"]
            == "billing.charge"
        )
        assert (
            transport._entry(FIFO, Outgoing("q.fifo", grouped)).fields["MessageGroupId"] == "cust-7"
        )
        explicit = Outgoing("q.fifo", grouped, {"x-message-group-id": "g"})
        assert transport._entry(FIFO, explicit).fields["MessageGroupId"] == "g"

    def test_fifo_deduplication_follows_task_id_and_retry(self, transport: SQSTransport) -> None:
        def dedup(body: dict[str, object]) -> str:
            message = Outgoing("q.fifo", json.dumps(body).encode())
            return str(transport._entry(FIFO, message).fields["MessageDeduplicationId"])

        first = dedup({"id": "t1", "task": "a"})
        assert dedup({"id": "t1", "task": "a", "args": [1]}) == first
        assert dedup({"id": "t1", "task": "a", "retries": 1}) != first
        assert dedup({"id": "t2", "task": "a"}) != first

    def test_fifo_delay_travels_as_an_attribute(self, transport: SQSTransport) -> None:
        fields = transport._entry(FIFO, Outgoing("q.fifo", b"{}", delay=30)).fields
        assert "DelaySeconds" not in fields
        assert "taskmesh-not-before" in fields["MessageAttributes"]
