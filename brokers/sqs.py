"""Amazon SQS broker, through boto3 (``pip install 'taskmesh[sqs]'``).

URL: ``sqs://`` or ``sqs://ACCESS_KEY_ID:SECRET_ACCESS_KEY@`` with options in
the query string, for example
``sqs://?region=eu-west-1&queue_prefix=app1-``. Without keys in the URL,
credentials come from boto3's standard chain (environment, profile, instance
role). The secret never appears in logs, errors or ``repr``.

Options (query string):

- ``region`` (str, default: boto3's configured region): the AWS region; a
  missing region is a ``ConfigurationError``;
- ``endpoint_url`` (str, default: none, so AWS's endpoint for the region): an
  SQS-compatible endpoint such as ``http://127.0.0.1:5000`` for local servers;
- ``queue_prefix`` (str, default ``""``): prepended to every SQS queue name;
- ``create_queues`` (bool, default true): create a missing queue on first use;
  when false a missing queue is a ``ConfigurationError``;
- ``poll_interval`` (float, default 0.2): seconds between short polls while a
  receive waits less than one second (SQS long polls in whole seconds);
- ``s3_bucket`` (str, default none): store bodies over 256 KiB in this
  existing bucket and send a pointer; without it such bodies are refused at
  send time with ``MessageTooLarge``;
- ``s3_prefix`` (str, default ``taskmesh/``): key prefix of those objects.

Queue names: SQS allows ``[A-Za-z0-9_-]``, at most 80 characters, and a FIFO
queue's name must end in ``.fifo``. A taskmesh queue name maps to
``queue_prefix`` plus the name with every other byte of its UTF-8 written as
``_`` and two hex digits, ``_`` itself included (``q-1.dead`` becomes
``q-1_2edead``), so two taskmesh names never share an SQS queue. A name ending
in ``.fifo`` keeps that suffix and makes a FIFO queue.

How each feature maps:

- lease: the visibility timeout. ``receive`` sets it to ``lease_seconds``
  (rounded up to whole seconds), ``extend_lease`` calls
  ``ChangeMessageVisibility``, ``requeue`` sets it to the delay; the delivery
  count is ``ApproximateReceiveCount``;
- delays: ``DelaySeconds``, rounded up, at most 900 s; a message that comes
  back before its ETA is re-sent by the worker with the rest of the wait;
- FIFO queues accept no per-message delay, so a delayed message carries its
  due time as an attribute and ``receive`` hides it again (visibility) until
  then; the message group id is the task option ``message_group_id``
  (carried as the envelope header of that name), else the task name; the
  deduplication id comes from the task id and retry number;
- priorities: ignored. SQS has none; route urgent tasks to their own queue and
  list it first in ``-Q`` instead;
- dead letters: ``reject`` sends to the queue's redrive-policy target when one
  is configured, else to ``<queue>.dead`` like every broker;
- batches: receives take up to 10 messages a call; ``publish_many``,
  ``ack_many`` and ``extend_leases`` use the batch calls (10 a request).

Capabilities: native delays up to 900 s, no priorities, no ordering (but
FIFO queues keep it per group), lease extension, messages up to 256 KiB.

Limitations (issue #6): ``purge`` removes only messages visible now (delayed and
leased ones stay); delivery counts are approximate, as SQS names them; the
worker asks for sub-second receive waits, which SQS can only short-poll, so an
idle worker makes about ``1 / poll_interval`` requests a second per queue.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
import botocore.exceptions

from taskmesh.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
)
from taskmesh.transport import (
    ORIGIN_HEADER,
    REASON_HEADER,
    Capabilities,
    Delivery,
    Outgoing,
    Transport,
    dead_letter_queue,
)
from taskmesh.urls import mask_url, parse_bool, parse_options

__all__ = ["SQSTransport", "sqs_queue_name"]

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 262_144
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43_200
MAX_NAME_LENGTH = 80
FIFO_SUFFIX = ".fifo"

HEADERS_ATTRIBUTE = "taskmesh-headers"
ENCODING_ATTRIBUTE = "taskmesh-encoding"
NOT_BEFORE_ATTRIBUTE = "taskmesh-not-before"
S3_ATTRIBUTE = "taskmesh-s3-key"

# SQS message bodies are XML text: these are the characters it accepts.
_SQS_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
_NAME_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)
_GONE_RECEIPT = frozenset({"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"})
_MISSING_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_RESENT_MEMORY = 10_000

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "region": str,
    "endpoint_url": str,
    "queue_prefix": str,
    "create_queues": parse_bool,
    "poll_interval": float,
    "s3_bucket": str,
    "s3_prefix": str,
}


def sqs_queue_name(queue: str, prefix: str = "") -> str:
    """Return the SQS queue name that holds taskmesh queue ``queue``.

    Raises:
        ConfigurationError: The name is empty or longer than SQS allows.
    """
    stem, suffix = queue, ""
    if queue.endswith(FIFO_SUFFIX):
        stem, suffix = queue[: -len(FIFO_SUFFIX)], FIFO_SUFFIX
    encoded = "".join(chr(byte) if byte in _NAME_SAFE else f"_{byte:02x}" for byte in stem.encode())
    name = f"{prefix}{encoded}{suffix}"
    if not stem or len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"Queue {queue!r} maps to SQS queue name {name!r} ({len(name)} characters); SQS "
            f"allows 1 to {MAX_NAME_LENGTH}. Use a shorter queue name or queue_prefix."
        )
    return name


@dataclass(frozen=True, slots=True)
class _Queue:
    name: str
    url: str
    fifo: bool


@dataclass(frozen=True, slots=True)
class _Receipt:
    queue_url: str
    handle: str
    message_id: str
    s3_key: str | None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One message ready for ``SendMessageBatch``, with its size in bytes."""

    fields: dict[str, Any]
    size: int


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class SQSTransport(Transport):
    """Queues as Amazon SQS queues."""

    capabilities = Capabilities(
        native_delay=True,
        max_delay_seconds=MAX_DELAY_SECONDS,
        priorities=False,
        fifo=False,
        dead_letter=False,
        max_message_bytes=MAX_MESSAGE_BYTES,
        lease_extension=True,
    )

    def __init__(self, url: str = "sqs://", *, lease_seconds: float = 30.0, **options: Any) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        parts = urlsplit(url)
        if parts.hostname or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"SQS URL {mask_url(url)} names a host or path; write sqs:// with the options "
                "region and endpoint_url in the query string instead."
            )
        values = parse_options(url, _OPTIONS, options)
        self.queue_prefix: str = values.get("queue_prefix", "")
        if not set(self.queue_prefix.encode()) <= _NAME_SAFE | {ord("_")}:
            raise ConfigurationError(
                f"queue_prefix={self.queue_prefix!r} in {mask_url(url)} may hold only letters, "
                "digits, '-' and '_', as SQS queue names do."
            )
        self.create_queues: bool = values.get("create_queues", True)
        self.poll_interval: float = values.get("poll_interval", 0.2)
        self.s3_bucket: str | None = values.get("s3_bucket")
        self.s3_prefix: str = values.get("s3_prefix", "taskmesh/")
        self.endpoint_url: str | None = values.get("endpoint_url")
        self._session = boto3.session.Session(
            aws_access_key_id=unquote(parts.username) if parts.username else None,
            aws_secret_access_key=unquote(parts.password) if parts.password else None,
            region_name=values.get("region"),
        )
        if not self._session.region_name:
            raise ConfigurationError(
                f"No AWS region for {mask_url(url)}: add ?region=... to the URL or set "
                "AWS_DEFAULT_REGION."
            )
        self._clients: dict[str, Any] = {}
        self._pid = os.getpid()
        self._queues: dict[str, _Queue] = {}
        self._redrive: dict[str, _Queue | None] = {}
        self._next_poll = 0.0
        # Bodies received from FIFO queues, by digest, to the message id they
        # came in: a re-send of one (the worker's early-ETA path) must not be
        # dropped by SQS as a duplicate of the message it replaces.
        self._fifo_received: OrderedDict[bytes, str] = OrderedDict()

    # connections -------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        if self._pid != os.getpid():
            self._clients, self._pid = {}, os.getpid()
        client = self._clients.get(service)
        if client is None:
            config = botocore.config.Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            client = self._session.client(service, endpoint_url=self.endpoint_url, config=config)
            self._clients[service] = client
        return client

    @property
    def sqs(self) -> Any:
        """The boto3 SQS client, created on first use (and again after a fork)."""
        return self._client("sqs")

    @contextlib.contextmanager
    def _boundary(self, action: str, lost: bool = False) -> Iterator[None]:
        """Turn boto3's errors into taskmesh's, naming ``action``."""
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            kind = ConnectionLost if lost else BrokerUnavailable
            raise kind(f"SQS {action} failed: {exc}.", self.safe_url) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise ConfigurationError(
                f"SQS {action} found no AWS credentials: put keys in the URL or the environment, "
                "or configure a profile."
            ) from exc
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING_QUEUE:
                # Deleted under us: look the queues up (and create them) afresh.
                self._queues.clear()
                self._redrive.clear()
            raise BrokerError(
                f"SQS {action} was refused ({_error_code(exc)}): {exc}.", self.safe_url
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BrokerUnavailable(f"SQS {action} failed: {exc}.", self.safe_url) from exc

    # queues ----------------------------------------------------------------------------

    def _queue(self, queue: str) -> _Queue:
        found = self._queues.get(queue)
        if found is None:
            name = sqs_queue_name(queue, self.queue_prefix)
            found = _Queue(name, self._queue_url(name), name.endswith(FIFO_SUFFIX))
            self._queues[queue] = found
        return found

    def _queue_url(self, name: str) -> str:
        sqs = self.sqs
        with self._boundary(f"lookup of queue {name!r}"):
            try:
                return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
            except sqs.exceptions.QueueDoesNotExist as exc:
                if not self.create_queues:
                    raise ConfigurationError(
                        f"SQS queue {name!r} does not exist and create_queues is off: create "
                        "it, or allow creation with create_queues=true."
                    ) from exc
            attributes = {"FifoQueue": "true"} if name.endswith(FIFO_SUFFIX) else {}
            created = sqs.create_queue(QueueName=name, Attributes=attributes)
        logger.info("queue created name=%s url=%s", name, self.safe_url)
        return str(created["QueueUrl"])

    def declare(self, queue: str) -> None:
        """Create the SQS queue and its dead-letter queue if missing (unless forbidden)."""
        self._queue(queue)
        self._queue(dead_letter_queue(queue))

    def size(self, queue: str) -> int:
        """Sum SQS's approximate counts: visible, in flight and delayed."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        target = self._queue(queue)
        with self._boundary(f"size of {target.name!r}"):
            found = self.sqs.get_queue_attributes(QueueUrl=target.url, AttributeNames=names)
        return sum(int(found["Attributes"].get(name, 0)) for name in names)

    def purge(self, queue: str) -> int:
        """Receive and delete visible messages until none are left; return how many.

        ``PurgeQueue`` would also drop leased messages and may run once a
        minute only, so this drains by hand.
        """
        target = self._queue(queue)
        removed = 0
        while True:
            with self._boundary(f"purge of {target.name!r}"):
                found = self.sqs.receive_message(
                    QueueUrl=target.url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=30,
                    WaitTimeSeconds=0,
                    MessageAttributeNames=[S3_ATTRIBUTE],
                ).get("Messages", [])
            if not found:
                return removed
            receipts = [
                _Receipt(
                    target.url,
                    m["ReceiptHandle"],
                    m["MessageId"],
                    m.get("MessageAttributes", {}).get(S3_ATTRIBUTE, {}).get("StringValue"),
                )
                for m in found
            ]
            self._delete(receipts)
            removed += len(found)

    # publishing ---------------------------------------------------------------------

    def publish(self, message: Outgoing) -> None:
        """Send one message; returns once SQS has stored it.

        Raises:
            MessageTooLarge: Over 256 KiB without ``s3_bucket``.
            BrokerUnavailable: SQS cannot be reached.
        """
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Send messages with ``SendMessageBatch``, up to 10 (and 256 KiB) a request.

        Not atomic: when a request fails, earlier ones stay sent.
        """
        by_queue: dict[str, list[Outgoing]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).append(message)
        for queue, group in by_queue.items():
            target = self._queue(queue)
            self._send(target, [self._entry(target, message) for message in group])

    def _send(self, target: _Queue, entries: Sequence[_Entry]) -> None:
        batch: list[_Entry] = []
        for entry in entries:
            if batch and (
                len(batch) == 10 or sum(e.size for e in batch) + entry.size > MAX_MESSAGE_BYTES
            ):
                self._send_batch(target, batch)
                batch = []
            batch.append(entry)
        if batch:
            self._send_batch(target, batch)

    def _send_batch(self, target: _Queue, batch: Sequence[_Entry]) -> None:
        request = [dict(entry.fields, Id=str(index)) for index, entry in enumerate(batch)]
        started = time.monotonic()
        with self._boundary(f"send to {target.name!r}"):
            response = self.sqs.send_message_batch(QueueUrl=target.url, Entries=request)
        failed = response.get("Failed", [])
        if failed:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
            raise BrokerError(
                f"SQS refused {len(failed)} of {len(batch)} messages for {target.name!r}: "
                f"{reasons}.",
                self.safe_url,
            )
        logger.debug(
            "messages sent queue=%s count=%d duration_ms=%.0f",
            target.name,
            len(batch),
            (time.monotonic() - started) * 1000,
        )

    def _entry(self, target: _Queue, message: Outgoing) -> _Entry:
        attributes: dict[str, dict[str, str]] = {}
        try:
            text = message.body.decode()
            if not _SQS_TEXT.match(text):
                raise ValueError("characters SQS does not carry")
        except ValueError:
            text = base64.b64encode(message.body).decode()
            attributes[ENCODING_ATTRIBUTE] = {"DataType": "String", "StringValue": "base64"}
        if message.headers:
            value = json.dumps(dict(message.headers), separators=(",", ":"))
            attributes[HEADERS_ATTRIBUTE] = {"DataType": "String", "StringValue": value}
        fields: dict[str, Any] = {"MessageBody": text}
        if target.fifo:
            fields.update(self._fifo_fields(message))
            if message.delay > 0:
                due = f"{time.time() + message.delay:.3f}"
                attributes[NOT_BEFORE_ATTRIBUTE] = {"DataType": "String", "StringValue": due}
        elif message.delay > 0:
            # Rounded up: a message must never be handed out before its time.
            fields["DelaySeconds"] = min(MAX_DELAY_SECONDS, math.ceil(message.delay))
        size = len(text.encode()) + _attributes_size(attributes)
        if size > MAX_MESSAGE_BYTES:
            text = self._offload(target, message, size, attributes)
            fields["MessageBody"] = text
            size = len(text.encode()) + _attributes_size(attributes)
        if attributes:
            fields["MessageAttributes"] = attributes
        return _Entry(fields, size)

    def _offload(
        self, target: _Queue, message: Outgoing, size: int, attributes: dict[str, dict[str, str]]
    ) -> str:
        """Put the body in S3 and return the pointer body; refuse without a bucket."""
        if self.s3_bucket is None:
            raise MessageTooLarge(
                f"Message for SQS queue {target.name!r} is {size} bytes; SQS takes at most "
                f"{MAX_MESSAGE_BYTES}. Pass a reference instead of the data, or set the "
                "s3_bucket option to carry large bodies through S3.",
                self.safe_url,
            )
        key = f"{self.s3_prefix}{uuid.uuid4().hex}"
        with self._boundary(f"upload of a large body to s3://{self.s3_bucket}/{key}"):
            self._client("s3").put_object(Bucket=self.s3_bucket, Key=key, Body=message.body)
        attributes.pop(ENCODING_ATTRIBUTE, None)
        attributes[S3_ATTRIBUTE] = {"DataType": "String", "StringValue": key}
        logger.debug("large body stored in s3 queue=%s bytes=%d key=%s", target.name, size, key)
        return json.dumps({"s3_bucket": self.s3_bucket, "s3_key": key})

    def _fifo_fields(self, message: Outgoing) -> dict[str, str]:
        envelope = _envelope(message.body)
        task_id, name = envelope.get("id"), envelope.get("task")
        group = message.headers.get("x-message-group-id") or _envelope_group(envelope)
        group = group or (name if isinstance(name, str) else None) or "default"
        digest = hashlib.sha256(message.body).digest()
        if not isinstance(task_id, str):
            dedup = uuid.uuid4().hex
        else:
            dedup = f"{task_id}:{_envelope_retries(envelope)}"
            previous = self._fifo_received.get(digest)
            if previous is not None:
                dedup += f":{previous}"
        return {
            "MessageGroupId": group[:128],
            "MessageDeduplicationId": hashlib.sha256(dedup.encode()).hexdigest(),
        }

    # receiving --------------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages``, trying queues in order, waiting up to ``timeout``.

        One queue and a wait of a second or more long-poll SQS. Otherwise the
        queues are short-polled, at once while messages keep coming, and after
        an empty poll not again for ``poll_interval`` seconds, across calls, so
        an idle worker's request rate does not depend on how it waits.
        """
        targets = [self._queue(queue) for queue in queues]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            wait = min(20, int(remaining)) if len(targets) == 1 and remaining >= 1 else 0
            if wait or time.monotonic() >= self._next_poll:
                taken = self._receive_round(queues, targets, max_messages, wait)
                if taken:
                    self._next_poll = 0.0
                    return taken
                self._next_poll = time.monotonic() + self.poll_interval
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(max(0.0, min(self._next_poll - time.monotonic(), remaining)))

    def _receive_round(
        self, queues: Sequence[str], targets: Sequence[_Queue], max_messages: int, wait: int
    ) -> list[Delivery]:
        taken: list[Delivery] = []
        for queue, target in zip(queues, targets, strict=True):
            room = max_messages - len(taken)
            if room <= 0:
                break
            taken.extend(self._receive_from(queue, target, min(10, room), wait))
        return taken

    def _receive_from(self, queue: str, target: _Queue, count: int, wait: int) -> list[Delivery]:
        visibility = max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(self.lease_seconds)))
        with self._boundary(f"receive from {target.name!r}", lost=True):
            found = self.sqs.receive_message(
                QueueUrl=target.url,
                MaxNumberOfMessages=count,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        deliveries = []
        for raw in found:
            delivery = self._delivery(queue, target, raw)
            if delivery is not None:
                deliveries.append(delivery)
        if deliveries:
            logger.debug("messages received queue=%s count=%d", target.name, len(deliveries))
        return deliveries

    def _delivery(self, queue: str, target: _Queue, raw: dict[str, Any]) -> Delivery | None:
        attributes = {
            name: value.get("StringValue", "")
            for name, value in raw.get("MessageAttributes", {}).items()
        }
        receipt = _Receipt(
            target.url, raw["ReceiptHandle"], raw["MessageId"], attributes.get(S3_ATTRIBUTE)
        )
        count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        if NOT_BEFORE_ATTRIBUTE in attributes:
            due = float(attributes[NOT_BEFORE_ATTRIBUTE])
            if due > time.time():
                self._hold(target, receipt, due - time.time())
                return None
            # The first receive of a delayed FIFO message was the one that hid it.
            count = max(1, count - 1)
        if receipt.s3_key is not None:
            body = self._fetch(target, receipt)
            if body is None:
                return None
        elif attributes.get(ENCODING_ATTRIBUTE) == "base64":
            body = base64.b64decode(raw["Body"])
        else:
            body = raw["Body"].encode()
        headers = json.loads(attributes.get(HEADERS_ATTRIBUTE, "{}"))
        if target.fifo:
            self._fifo_received[hashlib.sha256(body).digest()] = receipt.message_id
            while len(self._fifo_received) > _RESENT_MEMORY:
                self._fifo_received.popitem(last=False)
        return Delivery(queue, body, headers, count, receipt)

    def _hold(self, target: _Queue, receipt: _Receipt, seconds: float) -> None:
        hidden = min(MAX_VISIBILITY_SECONDS, math.ceil(seconds))
        with self._boundary(f"delay of a message in {target.name!r}"):
            self.sqs.change_message_visibility(
                QueueUrl=target.url, ReceiptHandle=receipt.handle, VisibilityTimeout=hidden
            )
        logger.debug("delayed message hidden queue=%s seconds=%d", target.name, hidden)

    def _fetch(self, target: _Queue, receipt: _Receipt) -> bytes | None:
        """Read a body from S3; ``None`` (and the pointer deleted) if it is gone."""
        if self.s3_bucket is None:
            raise ConfigurationError(
                f"A message in {target.name!r} keeps its body in S3; set the s3_bucket option "
                "to the bucket its producer uses."
            )
        s3 = self._client("s3")
        with self._boundary(f"download of s3://{self.s3_bucket}/{receipt.s3_key}"):
            try:
                found = s3.get_object(Bucket=self.s3_bucket, Key=receipt.s3_key)
            except s3.exceptions.NoSuchKey:
                found = None
        if found is None:
            logger.warning(
                "large body gone, message dropped queue=%s key=%s; it was acked before",
                target.name,
                receipt.s3_key,
            )
            self._delete([_Receipt(target.url, receipt.handle, receipt.message_id, None)])
            return None
        with self._boundary(f"download of s3://{self.s3_bucket}/{receipt.s3_key}"):
            return bytes(found["Body"].read())

    # settling ---------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """Delete the message (and its S3 body); a stale receipt is not an error."""
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Delete messages with ``DeleteMessageBatch``, 10 a request."""
        receipts = [delivery.receipt for delivery in deliveries]
        for delivery in deliveries:
            self._fifo_received.pop(hashlib.sha256(delivery.body).digest(), None)
        self._delete(receipts)

    def _delete(self, receipts: Sequence[_Receipt]) -> None:
        def call(url: str, entries: list[dict[str, str]]) -> Any:
            return self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)

        self._batched("delete", receipts, call, {})
        keys = [r.s3_key for r in receipts if r.s3_key is not None]
        if keys and self.s3_bucket is not None:
            with self._boundary(f"delete of large bodies in s3://{self.s3_bucket}"):
                self._client("s3").delete_objects(
                    Bucket=self.s3_bucket, Delete={"Objects": [{"Key": key} for key in keys]}
                )

    def _batched(
        self, action: str, receipts: Sequence[_Receipt], call: Any, extra: dict[str, Any]
    ) -> None:
        by_url: dict[str, list[_Receipt]] = {}
        for receipt in receipts:
            by_url.setdefault(receipt.queue_url, []).append(receipt)
        for url, group in by_url.items():
            for start in range(0, len(group), 10):
                entries = [
                    {"Id": str(index), "ReceiptHandle": receipt.handle, **extra}
                    for index, receipt in enumerate(group[start : start + 10])
                ]
                with self._boundary(action):
                    response = call(url, entries)
                self._check_failed(action, response.get("Failed", []))

    def _check_failed(self, action: str, failed: Sequence[dict[str, Any]]) -> None:
        # A receipt from a lease that ran out is stale; the contract makes that a no-op.
        real = [f for f in failed if f.get("Code") not in _GONE_RECEIPT]
        for entry in failed:
            if entry not in real:
                logger.debug("stale receipt ignored action=%s code=%s", action, entry.get("Code"))
        if real:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in real)
            raise BrokerError(f"SQS {action} failed for {len(real)} messages: {reasons}.")

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (visibility timeout)."""
        self._fifo_received.pop(hashlib.sha256(delivery.body).digest(), None)
        seconds = max(0, math.ceil(delay))
        if seconds > MAX_DELAY_SECONDS:
            # Visibility ends at most 12 h after the receive: re-send instead.
            self.publish(Outgoing(delivery.queue, delivery.body, delivery.headers, delay))
            self.ack(delivery)
            return
        self.extend_lease(delivery, seconds)

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Set the message's visibility timeout to ``seconds`` from now."""
        self.extend_leases([delivery], seconds)

    def extend_leases(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Change visibility with ``ChangeMessageVisibilityBatch``, 10 a request."""
        hidden = max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))

        def call(url: str, entries: list[dict[str, Any]]) -> Any:
            return self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)

        self._batched(
            "visibility change",
            [delivery.receipt for delivery in deliveries],
            call,
            {"VisibilityTimeout": hidden},
        )

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter to the redrive-policy target if the queue has one, else ``<queue>.dead``."""
        target = self._redrive_target(delivery.queue)
        if target is None:
            super().reject(delivery, reason)
            return
        headers = {**delivery.headers, REASON_HEADER: reason, ORIGIN_HEADER: delivery.queue}
        message = Outgoing(delivery.queue, delivery.body, headers)
        self._send(target, [self._entry(target, message)])
        self.ack(delivery)
        logger.debug("message dead-lettered by redrive target queue=%s", target.name)

    def _redrive_target(self, queue: str) -> _Queue | None:
        if queue in self._redrive:
            return self._redrive[queue]
        source = self._queue(queue)
        with self._boundary(f"redrive policy of {source.name!r}"):
            found = self.sqs.get_queue_attributes(
                QueueUrl=source.url, AttributeNames=["RedrivePolicy"]
            )
        policy = found.get("Attributes", {}).get("RedrivePolicy")
        target = None
        if policy:
            arn = str(json.loads(policy)["deadLetterTargetArn"])
            account, name = arn.split(":")[4], arn.split(":")[5]
            with self._boundary(f"lookup of dead-letter queue {name!r}"):
                url = self.sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
            target = _Queue(name, str(url["QueueUrl"]), name.endswith(FIFO_SUFFIX))
        self._redrive[queue] = target
        return target

    def close(self) -> None:
        """Close the boto3 clients' connection pools."""
        if self._pid == os.getpid():
            for client in self._clients.values():
                client.close()
        self._clients = {}


def _attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    # SQS counts each attribute's name, type and value against the 256 KiB.
    return sum(
        len(name.encode()) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if isinstance(data, dict) and isinstance(data.get("msg"), dict):
        data = data["msg"]
    return data if isinstance(data, dict) else {}


def _envelope_group(envelope: dict[str, Any]) -> str | None:
    headers = envelope.get("headers")
    group = headers.get("message_group_id") if isinstance(headers, dict) else None
    return str(group) if group else None


def _envelope_retries(envelope: dict[str, Any]) -> int:
    retries = envelope.get("retries", 0)
    return retries if isinstance(retries, int) else 0
