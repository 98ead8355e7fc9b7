"""The DynamoDB result store against moto's server mode on loopback (issue #6).

Each test uses a table of its own on the session's moto server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from taskmesh.backends.dynamodb import DynamoDBResultStore
from taskmesh.errors import ConfigurationError, ResultError
from taskmesh.result import connect_store
from tests.integration.contract import ResultStoreContract
from tests.integration.harness import wait_until
from tests.servers import MotoServer

pytestmark = [pytest.mark.sqs, pytest.mark.timeout(60)]


@pytest.fixture
def url(moto: MotoServer) -> str:
    return (
        f"dynamodb://Results-{uuid.uuid4().hex[:10]}?region=us-east-1&endpoint_url={moto.endpoint}"
    )


@pytest.fixture
def store(url: str) -> Iterator[DynamoDBResultStore]:
    opened = connect_store(url)
    assert isinstance(opened, DynamoDBResultStore)
    yield opened
    opened.close()


class TestDynamoDBResultStore(ResultStoreContract):
    @pytest.fixture
    def store_url(self, url: str) -> str:
        return url


def _in_threads(count: int, work: Any) -> list[Any]:
    """Run ``work(index)`` in ``count`` threads started together; return the results.

    An exception in a thread is returned in its place, so a failure shows its cause.
    """
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


class TestValues:
    def test_set_get_replace_and_delete(self, store: DynamoDBResultStore) -> None:
        assert store.get("task:1") is None
        store.set("task:1", b"\x00first", expires_seconds=60)
        assert store.get("task:1") == b"\x00first"
        store.set("task:1", b"second", expires_seconds=60, notify=True)
        assert store.get("task:1") == b"second"
        store.delete("task:1")
        store.delete("task:1")
        assert store.get("task:1") is None

    def test_get_many_keeps_order_and_spans_batches(self, store: DynamoDBResultStore) -> None:
        for index in range(0, 150, 2):
            store.set(f"k{index}", str(index).encode(), expires_seconds=60)
        keys = [f"k{index}" for index in range(150)] + ["k0"]
        expected = [str(i).encode() if i % 2 == 0 else None for i in range(150)] + [b"0"]
        assert store.get_many(keys) == expected

    def test_expired_value_reads_as_absent_before_ttl_removes_it(
        self, store: DynamoDBResultStore
    ) -> None:
        store.set("short", b"v", expires_seconds=0.5)
        assert store.get("short") == b"v"
        wait_until(lambda: store.get("short") is None, 10, "the value to expire")
        assert store.get_many(["short"]) == [None]

    def test_value_over_the_item_limit_is_a_clear_error(self, store: DynamoDBResultStore) -> None:
        with pytest.raises(ResultError, match="400000"):
            store.set("big", b"x" * 400_001, expires_seconds=60)

    def test_wait_returns_once_ready(self, store: DynamoDBResultStore, url: str) -> None:
        def later() -> None:
            writer = connect_store(url)
            time.sleep(0.3)
            writer.set("w", b"done", expires_seconds=60, notify=True)
            writer.close()

        thread = threading.Thread(target=later)
        thread.start()
        assert store.wait("w", 10, lambda value: value == b"done") == b"done"
        thread.join()
        assert store.wait("never", 0.2, lambda value: True) is None


class TestAtomicity:
    def test_add_member_counts_each_member_once(self, store: DynamoDBResultStore) -> None:
        assert store.add_member("chord:1", "a", expires_seconds=60) == 1
        assert store.add_member("chord:1", "a", expires_seconds=60) == 1
        assert store.add_member("chord:1", "b", expires_seconds=60) == 2

    def test_concurrent_adds_each_see_a_distinct_count(self, url: str) -> None:
        stores = [connect_store(url) for _ in range(12)]
        stores[0].get("warm-up")  # create the table once, before the race
        counts = _in_threads(
            12, lambda i: stores[i].add_member("chord:race", f"m{i}", expires_seconds=60)
        )
        assert not [c for c in counts if not isinstance(c, int)], counts
        assert sorted(counts) == list(range(1, 13))
        for opened in stores:
            opened.close()

    def test_expired_set_starts_counting_again(self, store: DynamoDBResultStore) -> None:
        store.add_member("chord:old", "a", expires_seconds=0.3)
        store.add_member("chord:old", "b", expires_seconds=0.3)
        lapsed = time.time() + 0.3
        wait_until(lambda: time.time() > lapsed, 5, "the set's expiry to pass")
        assert store.add_member("chord:old", "c", expires_seconds=60) == 1

    def test_claim_has_exactly_one_winner_among_concurrent_callers(self, url: str) -> None:
        stores = [connect_store(url) for _ in range(10)]
        stores[0].get("warm-up")
        won = _in_threads(10, lambda i: stores[i].claim("beat:lock", expires_seconds=60))
        assert won.count(True) == 1
        for opened in stores:
            opened.close()

    def test_claim_is_free_again_after_expiry(self, store: DynamoDBResultStore) -> None:
        assert store.claim("lock", expires_seconds=0.3) is True
        assert store.claim("lock", expires_seconds=0.3) is False
        assert wait_until(lambda: store.claim("lock", expires_seconds=60), 10, "the lock to lapse")


class TestTable:
    def test_created_table_has_ttl_on(self, store: DynamoDBResultStore, moto: MotoServer) -> None:
        store.set("x", b"1", expires_seconds=60)
        client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto.endpoint)
        ttl = client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"
        assert ttl["AttributeName"] == "ttl"

    def test_missing_table_is_a_clear_error_when_creation_is_off(self, url: str) -> None:
        strict = connect_store(url + "&create_table=false")
        with pytest.raises(ConfigurationError, match="does not exist and create_table is off"):
            strict.get("x")

    def test_table_name_keeps_its_case_and_secret_stays_out_of_repr(self, moto: MotoServer) -> None:
        url = f"dynamodb://AKID:s3cr3t@MixedCase?region=us-east-1&endpoint_url={moto.endpoint}"
        opened = connect_store(url)
        assert isinstance(opened, DynamoDBResultStore)
        assert opened.table == "MixedCase"
        assert "s3cr3t" not in repr(opened)
