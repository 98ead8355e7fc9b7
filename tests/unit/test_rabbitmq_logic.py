"""The RabbitMQ adapter's pure logic: delay levels, delivery counts, headers, options.

Nothing here connects: the adapter opens its connection on first use.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmesh.brokers.rabbitmq import (
    DELAY_LEVELS_MS,
    RabbitMQTransport,
    ack_frames,
    delay_level_ms,
    delivery_count,
    next_prefetch,
    user_headers,
)
from taskmesh.errors import ConfigurationError
from taskmesh.transport import connect

URL = "amqp://app:s3cret@127.0.0.1:5672/%2F"


def test_delay_levels_run_from_an_eighth_of_a_second_to_beyond_twelve_days() -> None:
    assert DELAY_LEVELS_MS[0] == 125
    assert all(b == 2 * a for a, b in itertools.pairwise(DELAY_LEVELS_MS))
    assert DELAY_LEVELS_MS[-1] / 1000 / 86400 > 12


@pytest.mark.parametrize(
    ("remaining_ms", "level"),
    [(1, 125), (124.9, 125), (125, 125), (999, 500), (1000, 1000), (1500, 1000), (20_000, 16_000)],
)
def test_delay_level_is_the_longest_that_does_not_overshoot(
    remaining_ms: float, level: int
) -> None:
    assert delay_level_ms(remaining_ms) == level


@pytest.mark.parametrize("days", [1, 2, 7, 30])
def test_a_delay_of_days_takes_about_twenty_hops_and_is_never_early(days: int) -> None:
    remaining = days * 86_400_000.0
    hops = 0
    while remaining > 0:
        level = delay_level_ms(remaining)
        assert level <= remaining or level == DELAY_LEVELS_MS[0]
        remaining -= level
        hops += 1
    assert hops <= 24 + days // 12
    assert remaining > -DELAY_LEVELS_MS[0]


def settled(frames: list[tuple[int, bool]], unacked: set[int]) -> set[int]:
    """Replay ``frames`` as the broker would; return the tags they settle."""
    left = set(unacked)
    for tag, multiple in frames:
        assert tag in left
        left -= {other for other in left if other <= tag} if multiple else {tag}
    return set(unacked) - left


def test_acking_every_unacked_delivery_is_one_multiple_frame() -> None:
    assert ack_frames({3, 1, 2}, {1, 2, 3}) == [(3, True)]


def test_a_single_delivery_is_acked_alone() -> None:
    assert ack_frames({5}, {5, 6}) == [(5, False)]
    assert ack_frames({6}, {5, 6}) == [(6, False)]


def test_multiple_stops_below_the_first_delivery_kept_unacked() -> None:
    # 4 stays unacked, so 5 and 7 need frames of their own.
    assert ack_frames({1, 2, 3, 5, 7}, {1, 2, 3, 4, 5, 6, 7}) == [
        (3, True),
        (5, False),
        (7, False),
    ]


def test_a_batch_above_a_kept_delivery_is_acked_one_by_one() -> None:
    assert ack_frames({2, 3}, {1, 2, 3}) == [(2, False), (3, False)]


def test_tags_acked_earlier_leave_no_gap() -> None:
    # 2 was an early or redelivered message the adapter acked on receipt.
    assert ack_frames({1, 3}, {1, 3, 4}) == [(3, True)]


def test_nothing_to_ack_sends_nothing() -> None:
    assert ack_frames(set(), {1, 2}) == []


@given(st.sets(st.integers(1, 40)), st.data())
def test_frames_settle_exactly_the_batch_and_no_more_frames_than_needed(
    unacked: set[int], data: st.DataObject
) -> None:
    batch = data.draw(st.sets(st.sampled_from(sorted(unacked)))) if unacked else set()
    frames = ack_frames(batch, unacked)
    assert settled(frames, unacked) == batch
    kept = unacked - batch
    floor = min(kept, default=max(unacked, default=0) + 1)
    below = [tag for tag in batch if tag < floor]
    assert len(frames) == min(1, len(below)) + len(batch) - len(below)


def test_prefetch_grows_at_once_to_what_is_needed() -> None:
    assert next_prefetch(0, 8, quorum=False, since_change=0) == 8
    assert next_prefetch(8, 32, quorum=False, since_change=0) == 32
    assert next_prefetch(8, 32, quorum=True, since_change=0) == 32


def test_prefetch_shrinks_only_below_half() -> None:
    assert next_prefetch(32, 16, quorum=False, since_change=0) == 32
    assert next_prefetch(32, 20, quorum=False, since_change=0) == 32
    assert next_prefetch(32, 15, quorum=False, since_change=0) == 15


def test_a_quorum_prefetch_shrinks_only_a_minute_after_its_last_change() -> None:
    assert next_prefetch(32, 4, quorum=True, since_change=5) == 32
    assert next_prefetch(32, 4, quorum=True, since_change=61) == 4


def test_prefetch_is_never_zero_which_amqp_reads_as_unlimited() -> None:
    assert next_prefetch(0, 0, quorum=False, since_change=0) == 1
    assert next_prefetch(8, 0, quorum=False, since_change=100) == 1


@given(st.lists(st.integers(0, 64), min_size=1, max_size=50))
def test_prefetch_covers_the_need_and_shrinks_only_past_half(needs: list[int]) -> None:
    current = 0
    for need in needs:
        following = next_prefetch(current, need, quorum=False, since_change=0)
        assert following >= max(1, need)
        if following < current:
            assert 2 * following < current
        current = following


def test_delivery_count_on_a_classic_queue_reads_the_header_and_the_redelivered_flag() -> None:
    assert delivery_count({}, redelivered=False, quorum=False) == 1
    assert delivery_count({}, redelivered=True, quorum=False) == 2
    assert delivery_count({"x-taskmesh-deliveries": 3}, redelivered=False, quorum=False) == 4
    assert delivery_count({"x-taskmesh-deliveries": 3}, redelivered=True, quorum=False) == 5


def test_delivery_count_on_a_quorum_queue_adds_the_brokers_count() -> None:
    headers = {"x-taskmesh-deliveries": 2, "x-delivery-count": 1}
    assert delivery_count(headers, redelivered=True, quorum=True) == 4
    assert delivery_count({}, redelivered=False, quorum=True) == 1


def test_delivery_count_ignores_a_garbled_header() -> None:
    assert delivery_count({"x-taskmesh-deliveries": "many"}, False, False) == 1
    assert delivery_count({"x-taskmesh-deliveries": -4}, False, False) == 1


def test_user_headers_drop_the_adapters_and_the_brokers_own() -> None:
    raw = {
        "x-trace": "t1",
        "x-taskmesh-deliveries": 2,
        "x-taskmesh-not-before": 1,
        "x-death": [{"count": 1}],
        "x-first-death-queue": "q.delay.125",
        "x-delivery-count": 1,
        "x-dead-letter-reason": "bad",
    }
    assert user_headers(raw) == {"x-trace": "t1", "x-dead-letter-reason": "bad"}


def test_options_are_typed_and_validated_without_connecting() -> None:
    transport = connect(f"{URL}?heartbeat=5&queue_type=quorum&max_priority=0&prefetch_count=8")
    assert isinstance(transport, RabbitMQTransport)
    assert (transport.heartbeat, transport.queue_type) == (5.0, "quorum")
    assert (transport.max_priority, transport.prefetch_count) == (0, 8)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("queue_type=stream", "queue_type"),
        ("max_priority=10", "max_priority"),
        ("heartbeat=soon", "heartbeat"),
        ("hearbeat=5", "heartbeat"),
    ],
)
def test_bad_options_are_configuration_errors_naming_them(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as caught:
        connect(f"{URL}?{query}")
    assert "s3cret" not in str(caught.value)


def test_repr_and_errors_never_show_the_password() -> None:
    transport = connect(URL)
    assert "s3cret" not in repr(transport)
    assert "app:***@" in repr(transport)
