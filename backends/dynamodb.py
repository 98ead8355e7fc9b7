"""Amazon DynamoDB result store, through boto3 (``pip install 'taskmesh[sqs]'``).

URL: ``dynamodb://TABLE`` or ``dynamodb://ACCESS_KEY_ID:SECRET_ACCESS_KEY@TABLE``,
options in the query string, for example
``dynamodb://taskmesh-results?region=eu-west-1``. Without keys in the URL,
credentials come from boto3's standard chain; the secret never appears in logs,
errors or ``repr``.

Options (query string):

- ``region`` (str, default: boto3's configured region): the AWS region;
- ``endpoint_url`` (str, default: none, so AWS's endpoint for the region): a
  DynamoDB-compatible endpoint such as ``http://127.0.0.1:5000``;
- ``create_table`` (bool, default true): create a missing table on first use
  (on-demand billing, TTL on), else a missing table is a ``ConfigurationError``.

The table has one string hash key ``k``. An item holds the value in ``v``
(binary), its expiry in ``expires_at`` (epoch seconds with milliseconds,
checked on every read) and in ``ttl`` (whole seconds, DynamoDB's TTL attribute,
which deletes expired items within days, not at once). A set lives in the
string-set attribute ``m``: ``add_member`` is one conditional ``UpdateItem``
with ``ADD``, so adding a member and reading the set's size is atomic and
counts a member once, which is what a chord join needs. ``claim`` is a
``PutItem`` conditional on no live item. Reads are strongly consistent.

Limitations (issue #6): an item holds at most 400 KB, so a larger result is a
``ResultError``; ``wait`` polls (every poll is a read request, billed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
import botocore.exceptions

from taskmesh.errors import ConfigurationError, ResultError
from taskmesh.result import ResultStore
from taskmesh.urls import mask_url, parse_bool, parse_options

__all__ = ["DynamoDBResultStore"]

logger = logging.getLogger(__name__)

MAX_ITEM_BYTES = 400_000
_BATCH_GET = 100
_TABLE_READY_SECONDS = 60.0
_NAMES = {"#k": "k", "#v": "v", "#e": "expires_at", "#t": "ttl", "#m": "m"}
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "region": str,
    "endpoint_url": str,
    "create_table": parse_bool,
}


def _number(value: float) -> dict[str, str]:
    return {"N": f"{value:.3f}"}


class DynamoDBResultStore(ResultStore):
    """Results as items of one DynamoDB table."""

    def __init__(self, url: str = "dynamodb://taskmesh", **options: Any) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        # urlsplit lower-cases the host, but table names are case-sensitive.
        self.table = parts.netloc.rpartition("@")[2]
        if not self.table or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"DynamoDB URL {mask_url(url)} must name a table: dynamodb://TABLE?region=..."
            )
        values = parse_options(url, _OPTIONS, options)
        self.create_table: bool = values.get("create_table", True)
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
        self._client: Any = None
        self._pid = os.getpid()
        self._ready = False

    @property
    def dynamodb(self) -> Any:
        """The boto3 client, created on first use (and again after a fork)."""
        if self._client is None or self._pid != os.getpid():
            config = botocore.config.Config(
                connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
            )
            self._client = self._session.client(
                "dynamodb", endpoint_url=self.endpoint_url, config=config
            )
            self._pid = os.getpid()
        if not self._ready:
            self._ready = True
            self._ensure_table(self._client)
        return self._client

    @contextlib.contextmanager
    def _boundary(self, action: str) -> Iterator[None]:
        """Turn boto3's errors into ``ResultError``, naming ``action`` and the table."""
        try:
            yield
        except botocore.exceptions.NoCredentialsError as exc:
            raise ConfigurationError(
                f"DynamoDB {action} on table {self.table!r} found no AWS credentials: put keys "
                "in the URL or the environment, or configure a profile."
            ) from exc
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise ResultError(
                f"DynamoDB {action} on table {self.table!r} was refused ({code}): {exc}."
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ResultError(
                f"DynamoDB {action} on table {self.table!r} failed: {exc}. Is "
                f"{self.endpoint_url or 'the region endpoint'} reachable?"
            ) from exc

    def _ensure_table(self, client: Any) -> None:
        try:
            with self._boundary("describe"):
                try:
                    status = client.describe_table(TableName=self.table)["Table"]["TableStatus"]
                except client.exceptions.ResourceNotFoundException as exc:
                    if not self.create_table:
                        raise ConfigurationError(
                            f"DynamoDB table {self.table!r} does not exist and create_table is "
                            "off: create it with hash key 'k' (string), or allow creation."
                        ) from exc
                    status = self._create_table(client)
            if status != "ACTIVE":
                self._wait_active(client)
        except BaseException:
            self._ready = False
            raise

    def _create_table(self, client: Any) -> str:
        try:
            client.create_table(
                TableName=self.table,
                AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except client.exceptions.ResourceInUseException:
            return "CREATING"  # another process created it first
        self._wait_active(client)
        client.update_time_to_live(
            TableName=self.table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
        )
        logger.info("result table created table=%s", self.table)
        return "ACTIVE"

    def _wait_active(self, client: Any) -> None:
        deadline = time.monotonic() + _TABLE_READY_SECONDS
        while client.describe_table(TableName=self.table)["Table"]["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise ResultError(
                    f"DynamoDB table {self.table!r} was not ACTIVE within "
                    f"{_TABLE_READY_SECONDS:.0f} s."
                )
            time.sleep(0.5)

    def _item(self, key: str, expires_seconds: float, value: bytes) -> dict[str, Any]:
        until = time.time() + expires_seconds
        return {
            "k": {"S": key},
            "v": {"B": value},
            "expires_at": _number(until),
            "ttl": {"N": str(math.ceil(until))},
        }

    def set(self, key: str, value: bytes, *, expires_seconds: float, notify: bool = False) -> None:
        """Put the item, replacing any; waiters poll, so ``notify`` needs nothing.

        Raises:
            ResultError: The value is over DynamoDB's 400 KB item limit, or the
                write failed.
        """
        if len(value) + len(key) > MAX_ITEM_BYTES:
            raise ResultError(
                f"Value for {key!r} is {len(value)} bytes; a DynamoDB item holds at most "
                f"{MAX_ITEM_BYTES}. Return a reference (an S3 key, a path) instead of the data."
            )
        client = self.dynamodb
        with self._boundary("put"):
            client.put_item(TableName=self.table, Item=self._item(key, expires_seconds, value))

    def get(self, key: str) -> bytes | None:
        """Read the item, strongly consistent; an expired one reads as absent."""
        client = self.dynamodb
        with self._boundary("get"):
            found = client.get_item(
                TableName=self.table, Key={"k": {"S": key}}, ConsistentRead=True
            ).get("Item")
        return _live_value(found, time.time())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Read with ``BatchGetItem``, 100 keys a request, retrying unprocessed keys."""
        client = self.dynamodb
        found: dict[str, bytes | None] = {}
        unique = list(dict.fromkeys(keys))
        now = time.time()
        for start in range(0, len(unique), _BATCH_GET):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"k": {"S": key}} for key in unique[start : start + _BATCH_GET]],
                    "ConsistentRead": True,
                }
            }
            pause = 0.05
            while request:
                with self._boundary("batch get"):
                    response = client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    found[item["k"]["S"]] = _live_value(item, now)
                request = response.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(pause)  # throttled: back off before asking again
                    pause = min(pause * 2, 1.0)
        return [found.get(key) for key in keys]

    def delete(self, key: str) -> None:
        """Delete the item (value or set). Idempotent."""
        client = self.dynamodb
        with self._boundary("delete"):
            client.delete_item(TableName=self.table, Key={"k": {"S": key}})

    def add_member(self, key: str, member: str, *, expires_seconds: float) -> int:
        """Add to the string set with one conditional ``UpdateItem``; return its size."""
        client = self.dynamodb
        for _ in range(3):
            now = time.time()
            until = now + expires_seconds
            with self._boundary("add member"):
                try:
                    response = client.update_item(
                        TableName=self.table,
                        Key={"k": {"S": key}},
                        UpdateExpression="ADD #m :member SET #e = :until, #t = :ttl",
                        ConditionExpression="attribute_not_exists(#k) OR #e > :now",
                        ExpressionAttributeNames={
                            name: _NAMES[name] for name in ("#k", "#m", "#e", "#t")
                        },
                        ExpressionAttributeValues={
                            ":member": {"SS": [member]},
                            ":until": _number(until),
                            ":ttl": {"N": str(math.ceil(until))},
                            ":now": _number(now),
                        },
                        ReturnValues="ALL_NEW",
                    )
                except client.exceptions.ConditionalCheckFailedException:
                    response = None
            if response is not None:
                return len(response["Attributes"]["m"]["SS"])
            # The set expired but DynamoDB's TTL has not removed it yet.
            self._delete_expired(client, key, now)
        raise ResultError(f"DynamoDB add to set {key!r} kept meeting an expired set.")

    def _delete_expired(self, client: Any, key: str, now: float) -> None:
        with (
            self._boundary("delete expired"),
            contextlib.suppress(client.exceptions.ConditionalCheckFailedException),
        ):
            client.delete_item(
                TableName=self.table,
                Key={"k": {"S": key}},
                ConditionExpression="#e <= :now",
                ExpressionAttributeNames={"#e": "expires_at"},
                ExpressionAttributeValues={":now": _number(now)},
            )

    def claim(self, key: str, *, expires_seconds: float) -> bool:
        """Put the item only if no live one exists; DynamoDB's condition picks one winner."""
        client = self.dynamodb
        now = time.time()
        with self._boundary("claim"):
            try:
                client.put_item(
                    TableName=self.table,
                    Item=self._item(key, expires_seconds, b"1"),
                    ConditionExpression="attribute_not_exists(#k) OR #e <= :now",
                    ExpressionAttributeNames={"#k": "k", "#e": "expires_at"},
                    ExpressionAttributeValues={":now": _number(now)},
                )
            except client.exceptions.ConditionalCheckFailedException:
                return False
        return True

    def close(self) -> None:
        """Close the client's connection pool."""
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
        self._ready = False


def _live_value(item: dict[str, Any] | None, now: float) -> bytes | None:
    if item is None or "v" not in item:
        return None
    if float(item["expires_at"]["N"]) <= now:
        return None
    return bytes(item["v"]["B"])
