"""Canvas workflows run eagerly on the memory adapters: results, failures and joins (issue #4)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskmesh import GroupResult, State, TaskMesh, chain, chord, group
from taskmesh.canvas import Outcome, callbacks, join
from taskmesh.errors import BrokerUnavailable, ChordError


@pytest.fixture
def calls() -> list[tuple[str, Any]]:
    """What ``proj.record`` was called with, in order."""
    return []


@pytest.fixture
def app(calls: list[tuple[str, Any]]) -> TaskMesh:
    name = uuid.uuid4().hex
    app = TaskMesh(
        "proj",
        broker=f"memory://{name}",
        backend=f"memory://{name}",
        task_always_eager=True,
        task_eager_propagates=False,
    )

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="proj.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="proj.record")
    def record(value: Any, key: str) -> Any:
        calls.append((key, value))
        return value

    return app


def sig(app: TaskMesh, name: str, *args: Any) -> Any:
    return app.tasks[f"proj.{name}"].s(*args)


def test_chain_returns_last_result_with_parents(app: TaskMesh) -> None:
    result = chain(sig(app, "add", 1, 2), sig(app, "add", 3), sig(app, "add", 4))()
    assert result.get(timeout=1) == 10
    assert result.parent.get(timeout=1) == 6
    assert result.parent.parent.get(timeout=1) == 3
    assert result.parent.parent.parent is None


def test_immutable_step_ignores_the_previous_result(app: TaskMesh) -> None:
    result = (sig(app, "add", 1, 2) | app.tasks["proj.add"].si(10, 10))()
    assert result.get(timeout=1) == 20


def test_group_and_empty_group(app: TaskMesh) -> None:
    result = group(sig(app, "add", i, i) for i in range(5))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=1) == [0, 2, 4, 6, 8]
    assert result.completed_count() == 5
    assert group([], app=app)().get(timeout=1) == []


def test_group_result_restores_by_id(app: TaskMesh) -> None:
    result = group(sig(app, "add", 1, 1), sig(app, "fail", "x"))()
    restored = GroupResult.restore(result.id, app)
    assert restored is not None
    assert [r.id for r in restored.results] == [r.id for r in result.results]
    assert restored.ready()
    assert restored.failed()
    assert not restored.successful()
    assert restored.completed_count() == 1
    values = restored.get(timeout=1, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], ValueError)
    assert GroupResult.restore("no-such-group", app) is None


def test_chord_body_gets_results_in_order_and_empty_header_gives_empty_list(
    app: TaskMesh, calls: list[tuple[str, Any]]
) -> None:
    header = [sig(app, "add", i, 0) for i in range(6)]
    assert chord(header, sig(app, "record", "body"))().get(timeout=1) == list(range(6))
    assert chord([], sig(app, "record", "empty"))().get(timeout=1) == []
    assert calls == [("body", list(range(6))), ("empty", [])]


def test_chain_stops_at_first_failure_and_calls_link_error_once(
    app: TaskMesh, calls: list[tuple[str, Any]]
) -> None:
    steps = [sig(app, "add", 1, 1), app.tasks["proj.fail"].si("stop"), sig(app, "add", 1)]
    result = chain(*steps, sig(app, "add", 2)).apply_async(link_error=sig(app, "record", "err"))
    assert result.state is State.FAILURE
    with pytest.raises(ValueError, match="stop"):
        result.get(timeout=1)
    assert result.parent.state is State.PENDING
    failed = result.parent.parent
    assert failed.state is State.FAILURE
    assert calls == [("err", failed.id)]


def test_chord_header_failure_is_a_chord_error_once(
    app: TaskMesh, calls: list[tuple[str, Any]]
) -> None:
    header = [sig(app, "add", 1, 1), sig(app, "fail", "one"), sig(app, "fail", "two")]
    result = chord(header, sig(app, "record", "body")).apply_async(
        link_error=sig(app, "record", "err")
    )
    with pytest.raises(ChordError, match=r"failed with builtins\.ValueError: one") as caught:
        result.get(timeout=1)
    assert caught.value.task_id == result.parent.results[1].id
    assert caught.value.task_name == "proj.fail"
    assert calls == [("err", result.id)]


def test_chord_error_travels_up_through_a_chain_and_an_outer_chord(app: TaskMesh) -> None:
    inner = chord([sig(app, "fail", "deep")], sig(app, "tsum"))
    outer = chord([chain(sig(app, "add", 1, 1), sig(app, "add", 1)), inner], sig(app, "tsum"))
    result = chain(outer, sig(app, "add", 5))()
    with pytest.raises(ChordError, match="deep"):
        result.get(timeout=1)


def test_nested_canvases_compute_like_the_expression(app: TaskMesh) -> None:
    nested = chain(
        sig(app, "add", 1, 1),
        group(sig(app, "add", 1), chain(sig(app, "add", 2), sig(app, "add", 3))),
        sig(app, "tsum"),
        chord(
            [sig(app, "add", 0), group(sig(app, "add", 1), sig(app, "add", 2))],
            sig(app, "record", "n"),
        ),
    )
    assert nested().get(timeout=1) == [10, [11, 12]]
    assert group(sig(app, "add", 1, 1), group(sig(app, "add", 2, 2)))().get(timeout=1) == [2, [4]]


def test_chain_ending_in_a_group_returns_its_group_result(app: TaskMesh) -> None:
    result = chain(sig(app, "add", 1, 1), group(sig(app, "add", 1), sig(app, "add", 2)))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=1) == [3, 4]
    assert result.parent is not None
    assert result.parent.get(timeout=1) == 2


def test_map_starmap_and_chunks(app: TaskMesh) -> None:
    tsum, add = app.tasks["proj.tsum"], app.tasks["proj.add"]
    assert tsum.map([[1, 2], [3]])().get(timeout=1) == [3, 3]
    assert add.starmap([(1, 2), (3, 4)])().get(timeout=1) == [3, 7]
    assert add.chunks(zip(range(5), range(5), strict=True), 2)().get(timeout=1) == [
        [0, 2],
        [4, 6],
        [8],
    ]


def test_join_counts_a_member_once_and_claims_once(app: TaskMesh) -> None:
    descriptor = {"group_id": uuid.uuid4().hex, "size": 2}
    assert not join.count_member(app, descriptor, "a")
    assert not join.count_member(app, descriptor, "a")
    assert join.count_member(app, descriptor, "b")
    assert not join.count_member(app, descriptor, "b")
    assert not join.claim(app, descriptor)


def test_link_on_a_group_calls_back_per_member(app: TaskMesh, calls: list[tuple[str, Any]]) -> None:
    members = [sig(app, "add", 1, 1), sig(app, "add", 2, 2)]
    group(members).apply_async(link=sig(app, "record", "each"))
    assert sorted(calls) == [("each", 2), ("each", 4)]


def test_body_not_sent_gives_the_claim_back_for_the_redelivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = uuid.uuid4().hex
    app = TaskMesh("proj", broker=f"memory://{name}", backend=f"memory://{name}")
    app.task(name="proj.tsum")(sum)
    header = chord([app.tasks["proj.tsum"].s([1])], app.tasks["proj.tsum"].s())
    header.freeze(app)
    (envelope,) = header.build(app, (), {}, [], {})
    join.store_value(app, Outcome.of(envelope), 1)  # the header task's stored result
    real_publish = app.publish

    def broker_down(envelopes: Any) -> None:
        raise BrokerUnavailable("down for this test")

    monkeypatch.setattr(app, "publish", broker_down)
    with pytest.raises(BrokerUnavailable):
        callbacks.after_success(app, envelope, 1)
    monkeypatch.setattr(app, "publish", real_publish)
    callbacks.after_success(app, envelope, 1)  # the redelivered header task
    callbacks.after_success(app, envelope, 1)  # and once more: counted already
    bodies = app.transport().receive(["default"], 10, 0.1)
    assert [app.codec().decode(d.body).args for d in bodies] == [[[1]]]
