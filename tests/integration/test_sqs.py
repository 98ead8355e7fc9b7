"""The SQS broker against moto's server mode on loopback (issue #6).

Every test names its own queue prefix, so tests share one moto server without
seeing each other's queues. boto3 only ever gets the moto endpoint and the
dummy credentials the ``moto`` fixture puts in the environment.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from taskmesh.brokers.sqs import MAX_MESSAGE_BYTES, SQSTransport, sqs_queue_name
from taskmesh.errors import BrokerError, BrokerUnavailable, ConfigurationError, MessageTooLarge
from taskmesh.result import State
from taskmesh.transport import Outgoing, Transport, connect
from tests.integration.contract import TransportContract, receive_until
from tests.integration.harness import Scenario, scenario_context, wait_until
from tests.servers import MotoServer, free_port

pytestmark = [pytest.mark.sqs, pytest.mark.timeout(120)]


def _tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _where(moto: MotoServer) -> str:
    return f"region=us-east-1&endpoint_url={moto.endpoint}"


@pytest.fixture
def prefix() -> str:
    return _tag() + "-"


@pytest.fixture
def url(moto: MotoServer, prefix: str) -> str:
    return f"sqs://?{_where(moto)}&queue_prefix={prefix}"


@pytest.fixture
def transport(url: str) -> Iterator[SQSTransport]:
    opened = connect(url, lease_seconds=2)
    assert isinstance(opened, SQSTransport)
    with opened:
        yield opened


@pytest.fixture
def client(moto: MotoServer) -> Any:
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint)


def _scenario(moto: MotoServer, folder: Path, extra: str = "") -> Iterator[Scenario]:
    tag = _tag()
    broker = f"sqs://?{_where(moto)}&queue_prefix={tag}-{extra}"
    yield from scenario_context(broker, f"dynamodb://{tag}?{_where(moto)}", folder)


@pytest.fixture
def sqs_scenario(moto: MotoServer, tmp_path: Path) -> Iterator[Scenario]:
    yield from _scenario(moto, tmp_path)


def _attributes(client: Any, name: str) -> dict[str, int]:
    queue_url = client.get_queue_url(QueueName=name)["QueueUrl"]
    found = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return {key: int(value) for key, value in found.items() if key.startswith("Approximate")}


class TestSQSTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, url: str) -> str:
        return url

    def test_purge_leaves_leased_messages(self, transport: Transport, queue: str) -> None:
        """SQS variant: delayed messages stay too (module docstring, Limitations).

        SQS offers no call that removes delayed messages but not leased ones:
        ``PurgeQueue`` takes both, receiving reaches neither.
        """
        transport.publish(Outgoing(queue, b"leased"))
        [leased] = receive_until(transport, [queue], 1)
        transport.publish_many([Outgoing(queue, b"ready"), Outgoing(queue, b"delayed", delay=3600)])
        assert transport.purge(queue) == 1
        assert transport.size(queue) == 2
        transport.ack(leased)
        assert transport.size(queue) == 1


class TestMessages:
    def test_body_headers_and_binary_bytes_round_trip(self, transport: SQSTransport) -> None:
        transport.publish(Outgoing("q-1", b"\x00\xff not text", {"a": "1", "b": "two"}))
        transport.publish(Outgoing("q-1", "texte accentué".encode()))
        got = wait_until(lambda: transport.receive(["q-1"], 10, 1.0), 10, "two messages")
        while len(got) < 2:
            got += transport.receive(["q-1"], 10, 1.0)
        bodies = {delivery.body: delivery for delivery in got}
        assert bodies[b"\x00\xff not text"].headers == {"a": "1", "b": "two"}
        assert bodies["texte accentué".encode()].headers == {}
        assert all(delivery.delivery_count == 1 for delivery in got)
        transport.ack_many(got)
        assert transport.size("q-1") == 0

    def test_publish_many_sends_more_than_one_batch(self, transport: SQSTransport) -> None:
        transport.publish_many([Outgoing("q-batch", str(i).encode()) for i in range(25)])
        seen: set[bytes] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 25 and time.monotonic() < deadline:
            got = transport.receive(["q-batch"], 25, 1.0)
            assert len(got) <= 25
            seen.update(delivery.body for delivery in got)
            transport.ack_many(got)
        assert seen == {str(i).encode() for i in range(25)}

    def test_queues_are_tried_in_the_order_given(self, transport: SQSTransport) -> None:
        transport.publish(Outgoing("q-low", b"low"))
        transport.publish(Outgoing("q-high", b"high"))
        first = wait_until(lambda: transport.receive(["q-high", "q-low"], 1, 1.0), 10, "one")
        assert [delivery.body for delivery in first] == [b"high"]
        transport.ack_many(first)

    def test_queue_names_map_to_distinct_sqs_queues(
        self, transport: SQSTransport, client: Any, prefix: str
    ) -> None:
        transport.publish(Outgoing("jobs.dead", b"dotted"))
        transport.publish(Outgoing("jobs_2edead", b"look-alike"))
        names = [sqs_queue_name(name, prefix) for name in ("jobs.dead", "jobs_2edead")]
        assert names[0] != names[1]
        for name in names:
            assert _attributes(client, name)["ApproximateNumberOfMessages"] == 1

    def test_idle_short_polls_are_spaced_by_poll_interval(self, url: str) -> None:
        calls: list[float] = []
        with connect(url + "&poll_interval=0.25") as idle:
            assert isinstance(idle, SQSTransport)
            idle.declare("q-idle")
            idle.sqs.meta.events.register(
                "before-call.sqs.ReceiveMessage", lambda **_: calls.append(time.monotonic())
            )
            for _ in range(4):  # as the worker waits: half a second at a time
                assert idle.receive(["q-idle"], 10, 0.5) == []
        gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
        assert len(calls) >= 2
        assert min(gaps) >= 0.25 - 0.01

    def test_size_and_purge_count_the_queue(self, transport: SQSTransport) -> None:
        transport.publish_many([Outgoing("q-purge", b"x") for _ in range(12)])
        assert transport.size("q-purge") == 12
        leased = transport.receive(["q-purge"], 2, 1.0)
        assert len(leased) == 2
        assert transport.purge("q-purge") == 10
        assert transport.size("q-purge") == 2


class TestLease:
    def test_unacked_message_returns_after_the_lease_with_a_higher_count(
        self, transport: SQSTransport
    ) -> None:
        transport.publish(Outgoing("q-lease", b"m"))
        first = wait_until(lambda: transport.receive(["q-lease"], 1, 1.0), 10, "the message")
        assert transport.receive(["q-lease"], 1, 0.3) == []
        again = wait_until(lambda: transport.receive(["q-lease"], 1, 1.0), 10, "its return")
        assert again[0].body == b"m"
        assert again[0].delivery_count == first[0].delivery_count + 1 == 2
        transport.ack(again[0])

    def test_extended_lease_keeps_the_message_hidden(self, transport: SQSTransport) -> None:
        transport.publish(Outgoing("q-extend", b"m"))
        held = wait_until(lambda: transport.receive(["q-extend"], 1, 1.0), 10, "the message")
        transport.extend_lease(held[0], 6)
        # Past the original 2 s lease, well inside the extension.
        assert transport.receive(["q-extend"], 1, 3.0) == []
        transport.ack(held[0])
        transport.ack(held[0])  # idempotent

    def test_requeue_with_delay_hides_then_returns_keeping_the_count(
        self, transport: SQSTransport
    ) -> None:
        transport.publish(Outgoing("q-requeue", b"m"))
        held = wait_until(lambda: transport.receive(["q-requeue"], 1, 1.0), 10, "the message")
        transport.requeue(held[0], delay=2)
        started = time.monotonic()
        back = wait_until(lambda: transport.receive(["q-requeue"], 1, 1.0), 15, "its return")
        assert time.monotonic() - started >= 1.5
        assert back[0].delivery_count == 2
        transport.ack(back[0])


class TestDelays:
    def test_short_delay_is_rounded_up_not_down(self, transport: SQSTransport) -> None:
        sent = time.monotonic()
        transport.publish(Outgoing("q-delay", b"later", delay=1.2))
        got = wait_until(lambda: transport.receive(["q-delay"], 1, 1.0), 15, "the message")
        assert time.monotonic() - sent >= 1.2
        transport.ack(got[0])

    def test_delay_over_fifteen_minutes_is_held_900_seconds_natively(
        self, transport: SQSTransport, client: Any, prefix: str
    ) -> None:
        transport.publish(Outgoing("q-long", b"in twenty minutes", delay=1200))
        counts = _attributes(client, sqs_queue_name("q-long", prefix))
        assert counts["ApproximateNumberOfMessagesDelayed"] == 1
        assert transport.receive(["q-long"], 1, 1.0) == []

    def test_twenty_minute_countdown_that_comes_back_early_is_resent_not_run(
        self, sqs_scenario: Scenario, client: Any
    ) -> None:
        # The re-send path directly: publish the task's message with no delay,
        # as if SQS's 900 s had passed; the worker must send it back, not run it.
        app = sqs_scenario.app
        envelope = app.build_envelope("scenario.mark", ["too early"], countdown=1200)
        early = app.encode(envelope)
        with app.connect_broker() as producer:
            producer.publish(Outgoing(early.queue, early.body))
        sqs_scenario.start_worker(concurrency=1)
        name = sqs_queue_name(sqs_scenario.queue, _prefix_of(sqs_scenario.broker_url))

        def resent() -> bool:
            counts = _attributes(client, name)
            return counts == {
                "ApproximateNumberOfMessages": 0,
                "ApproximateNumberOfMessagesNotVisible": 0,
                "ApproximateNumberOfMessagesDelayed": 1,
            }

        wait_until(resent, 30, "the early message to be re-sent with a delay")
        assert sqs_scenario.lines("mark") == []
        assert app.AsyncResult(envelope.id).state is State.PENDING

    def test_countdown_on_a_fifo_queue_is_not_run_early(self, sqs_scenario: Scenario) -> None:
        sqs_scenario.queue += ".fifo"
        sqs_scenario.start_worker(concurrency=1)
        sent = time.time()
        result = sqs_scenario.app.send_task("scenario.started_at", ["fifo-eta"], countdown=2)
        assert result.get(timeout=30) >= sent + 2


def _prefix_of(broker_url: str) -> str:
    return broker_url.split("queue_prefix=")[1].split("&")[0]


class TestLongTasks:
    def test_task_longer_than_three_visibility_timeouts_runs_exactly_once(
        self, sqs_scenario: Scenario
    ) -> None:
        sqs_scenario.settings["broker_lease_seconds"] = 2
        sqs_scenario.start_worker(concurrency=1)
        sqs_scenario.start_worker(concurrency=1)
        result = sqs_scenario.app.send_task("scenario.sleep", [7.0, "long"])
        assert result.get(timeout=60) == 7.0
        assert sqs_scenario.lines("sleep-start") == ["long"]
        assert sqs_scenario.lines("sleep-end") == ["long"]


class TestLargeMessages:
    def test_300_kib_argument_is_refused_at_send_time_without_a_bucket(
        self, sqs_scenario: Scenario
    ) -> None:
        with pytest.raises(MessageTooLarge, match="s3_bucket") as caught:
            sqs_scenario.app.send_task("scenario.mark", ["x" * 300 * 1024])
        assert str(MAX_MESSAGE_BYTES) in str(caught.value)

    def test_300_kib_argument_travels_through_s3_with_a_bucket(
        self, moto: MotoServer, tmp_path: Path
    ) -> None:
        bucket = _tag()
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.endpoint)
        s3.create_bucket(Bucket=bucket)
        scenarios = _scenario(moto, tmp_path, f"&s3_bucket={bucket}")
        with contextlib.closing(scenarios):
            scenario = next(scenarios)
            scenario.start_worker(concurrency=1)
            payload = "y" * 300 * 1024
            big = scenario.app.send_task("scenario.mark", [payload])
            assert big.get(timeout=30) == payload
            # The acked message takes its S3 body with it.
            wait_until(
                lambda: s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0,
                15,
                "the S3 body to be deleted after the ack",
            )


class TestFifo:
    def test_order_within_a_group_holds_for_200_messages(self, transport: SQSTransport) -> None:
        queue = "orders.fifo"
        bodies = [json.dumps({"id": f"task-{i}", "task": "t", "n": i}).encode() for i in range(200)]
        transport.publish_many(
            [Outgoing(queue, body, {"x-message-group-id": "g1"}) for body in bodies]
        )
        seen: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(seen) < 200 and time.monotonic() < deadline:
            got = transport.receive([queue], 10, 1.0)
            seen.extend(delivery.body for delivery in got)
            transport.ack_many(got)
        assert seen == bodies

    def test_worker_runs_a_group_in_publish_order(self, sqs_scenario: Scenario) -> None:
        sqs_scenario.queue += ".fifo"
        sqs_scenario.start_worker(1, "threads")
        results = [sqs_scenario.app.send_task("scenario.mark", [f"k{i:03d}"]) for i in range(40)]
        for result in results:
            result.get(timeout=60)
        assert sqs_scenario.lines("mark") == [f"k{i:03d}" for i in range(40)]

    def test_same_task_id_is_deduplicated_and_groups_come_from_task_names(
        self, transport: SQSTransport
    ) -> None:
        queue = "dedup.fifo"
        body = json.dumps({"id": "same-id", "task": "billing.charge"}).encode()
        transport.publish(Outgoing(queue, body))
        transport.publish(Outgoing(queue, body))
        got = wait_until(lambda: transport.receive([queue], 10, 1.0), 10, "the message")
        assert [delivery.body for delivery in got] == [body]
        transport.ack_many(got)
        assert transport.receive([queue], 10, 1.0) == []

    def test_resend_of_a_received_message_is_not_dropped_as_a_duplicate(
        self, transport: SQSTransport
    ) -> None:
        # The worker's early-ETA path publishes the received body again, then
        # acks the original: SQS must not swallow the copy as a duplicate.
        queue = "resend.fifo"
        body = json.dumps({"id": "task-9", "task": "t"}).encode()
        transport.publish(Outgoing(queue, body))
        [first] = wait_until(lambda: transport.receive([queue], 10, 1.0), 10, "the message")
        transport.publish(Outgoing(queue, first.body, first.headers))
        transport.ack(first)
        again = wait_until(lambda: transport.receive([queue], 10, 1.0), 10, "the copy")
        assert [delivery.body for delivery in again] == [body]

    def test_retries_on_a_fifo_queue_are_not_deduplicated(self, sqs_scenario: Scenario) -> None:
        sqs_scenario.queue += ".fifo"
        sqs_scenario.start_worker(concurrency=1)
        result = sqs_scenario.app.send_task("scenario.flaky", [2])
        assert result.get(timeout=60) == 2
        assert result.retries == 2

    def test_priority_is_ignored(self, transport: SQSTransport) -> None:
        queue = "prio.fifo"
        transport.publish(Outgoing(queue, b'{"id":"a","task":"t"}', priority=0))
        transport.publish(Outgoing(queue, b'{"id":"b","task":"t"}', priority=9))
        got: list[bytes] = []
        while len(got) < 2:
            got += [d.body for d in transport.receive([queue], 10, 1.0)]
        assert got == [b'{"id":"a","task":"t"}', b'{"id":"b","task":"t"}']


class TestDeadLetters:
    def test_reject_goes_to_the_project_dead_letter_queue_without_redrive(
        self, transport: SQSTransport
    ) -> None:
        transport.publish(Outgoing("q-plain", b"bad", {"k": "v"}))
        held = wait_until(lambda: transport.receive(["q-plain"], 1, 1.0), 10, "the message")
        transport.reject(held[0], "broken")
        dead = wait_until(lambda: transport.receive(["q-plain.dead"], 1, 1.0), 10, "dead letter")
        assert dead[0].body == b"bad"
        assert dead[0].headers["x-dead-letter-reason"] == "broken"
        assert dead[0].headers["k"] == "v"
        assert transport.size("q-plain") == 0

    def test_reject_follows_the_queue_redrive_policy(
        self, transport: SQSTransport, client: Any, prefix: str
    ) -> None:
        target = client.create_queue(QueueName=f"{prefix}operators-dlq")["QueueUrl"]
        arn = client.get_queue_attributes(QueueUrl=target, AttributeNames=["QueueArn"])
        policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "5"}
        client.create_queue(
            QueueName=sqs_queue_name("q-redrive", prefix),
            Attributes={"RedrivePolicy": json.dumps(policy)},
        )
        transport.publish(Outgoing("q-redrive", b"poison"))
        held = wait_until(lambda: transport.receive(["q-redrive"], 1, 1.0), 10, "the message")
        transport.reject(held[0], "poison pill")
        found = client.receive_message(
            QueueUrl=target, MessageAttributeNames=["All"], WaitTimeSeconds=2
        )["Messages"]
        headers = json.loads(found[0]["MessageAttributes"]["taskmesh-headers"]["StringValue"])
        assert found[0]["Body"] == "poison"
        assert headers["x-dead-letter-reason"] == "poison pill"
        assert transport.size("q-redrive.dead") == 0


class TestConfiguration:
    def test_queue_deleted_under_the_transport_is_created_again(
        self, transport: SQSTransport, client: Any, prefix: str
    ) -> None:
        transport.publish(Outgoing("q-gone", b"first"))
        gone = client.get_queue_url(QueueName=sqs_queue_name("q-gone", prefix))["QueueUrl"]
        client.delete_queue(QueueUrl=gone)
        with pytest.raises(BrokerError, match=r"NonExistentQueue|QueueDoesNotExist"):
            transport.publish(Outgoing("q-gone", b"lost"))
        transport.publish(Outgoing("q-gone", b"second"))
        got = wait_until(lambda: transport.receive(["q-gone"], 10, 1.0), 10, "the message")
        assert [delivery.body for delivery in got] == [b"second"]

    def test_missing_queue_is_a_clear_error_when_creation_is_off(self, url: str) -> None:
        with (
            connect(url + "&create_queues=false") as strict,
            pytest.raises(ConfigurationError, match="does not exist and create_queues is off"),
        ):
            strict.publish(Outgoing("q-absent", b"x"))

    def test_secret_stays_out_of_repr_and_errors(self) -> None:
        port = free_port()  # nothing listens here
        url = (
            f"sqs://AKIDEXAMPLE:s3cr3t-value@?region=us-east-1&endpoint_url=http://127.0.0.1:{port}"
        )
        with connect(url) as broken:
            assert "s3cr3t-value" not in repr(broken)
            with pytest.raises(BrokerUnavailable) as caught:
                broken.publish(Outgoing("q", b"x"))
        assert "s3cr3t-value" not in str(caught.value)
        assert "s3cr3t-value" not in caught.value.url
