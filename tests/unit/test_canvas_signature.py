"""Canvas nodes as data: building, cloning, freezing and the JSON form (issue #4)."""

from __future__ import annotations

import json
import uuid

import pytest

from taskmesh import Chain, Chord, Group, Signature, TaskMesh, chain, chord, group, signature
from taskmesh.canvas import Canvas
from taskmesh.errors import ConfigurationError
from taskmesh.task import Task


@pytest.fixture
def app() -> TaskMesh:
    name = uuid.uuid4().hex
    return TaskMesh("proj", broker=f"memory://{name}", backend=f"memory://{name}")


@pytest.fixture
def add(app: TaskMesh) -> Task[[int, int], int]:
    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    return add


def test_signature_options_set_and_clone_are_independent(add: Task[[int, int], int]) -> None:
    original = add.s(2).set(queue="fast", countdown=3)
    copy = original.clone((5,), {"z": 1})
    copy.set(queue="slow")
    assert original.options == {"queue": "fast", "countdown": 3}
    assert copy.args == (2, 5)
    assert copy.kwargs == {"z": 1}
    assert copy.options["queue"] == "slow"
    assert repr(add.si(1, 2)) == "~proj.add(1, 2)"


def test_signature_function_builds_by_name_and_from_json(app: TaskMesh) -> None:
    sig = signature("proj.add", args=(1,), kwargs={"y": 2}, options={"queue": "q"}, app=app)
    assert isinstance(sig, Signature)
    assert signature(sig.to_dict(), app=app) == sig


def test_pipe_and_chain_flatten_nested_chains(add: Task[[int, int], int]) -> None:
    piped = add.s(1, 1) | add.s(2) | add.s(3)
    assert isinstance(piped, Chain)
    assert [step.args for step in piped.steps] == [(1, 1), (2,), (3,)]
    nested = chain(add.s(1, 1), chain(add.s(2), add.s(3)))
    assert nested == piped


def test_every_kind_round_trips_through_json(add: Task[[int, int], int], app: TaskMesh) -> None:
    canvas = chain(
        add.s(1, 1),
        group(add.s(2), chain(add.s(3), add.si(4, 4)), group(add.s(5), add.s(6))),
        chord([add.s(7), add.s(8)], add.s(9)),
    )
    text = json.dumps(canvas.to_dict())
    again = Canvas.from_dict(json.loads(text), app)
    assert again == canvas
    assert again.to_dict() == canvas.to_dict()


def test_unknown_kind_is_a_configuration_error(app: TaskMesh) -> None:
    with pytest.raises(ConfigurationError, match="Unknown canvas kind 'loop'"):
        Canvas.from_dict({"kind": "loop"}, app)


def test_sending_without_an_app_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="has no app"):
        Signature("proj.add", (1, 2)).delay()


def test_a_group_inside_a_group_collects_into_one_result(add: Task[[int, int], int]) -> None:
    outer = group(add.s(1, 1), group(add.s(2, 2), add.s(3, 3)))
    inner = outer.tasks[1]
    assert isinstance(inner, Group)
    assert inner.collect
    assert not outer.collect


def test_freeze_gives_ids_once_and_links_chain_parents(
    add: Task[[int, int], int], app: TaskMesh
) -> None:
    canvas = chain(add.s(1, 1), add.s(2), add.s(3))
    first = canvas.freeze(app)
    second = canvas.freeze(app)
    assert first.id == second.id
    ids = []
    step = first
    while step is not None:
        ids.append(step.id)
        step = step.parent
    assert len(set(ids)) == 3
    assert ids[::-1] == [s.options["task_id"] for s in canvas.steps]


def test_group_followed_by_a_step_becomes_a_chord(add: Task[[int, int], int]) -> None:
    canvas = chain(add.s(1, 1), group(add.s(1), add.s(2)), add.s(3))
    canvas.freeze(add.app)
    assert [type(step) for step in canvas.steps] == [Signature, Chord]


def test_chord_without_body_cannot_be_sent(add: Task[[int, int], int]) -> None:
    with pytest.raises(ConfigurationError, match="has no body"):
        chord([add.s(1, 1)]).delay()


def test_chunks_and_map_validate_their_input(add: Task[[int, int], int]) -> None:
    with pytest.raises(ConfigurationError, match="positive integer"):
        add.chunks([(1, 2)], 0)
    parts = add.chunks([(i, i) for i in range(5)], 2)
    assert [len(part.args[0]) for part in parts.tasks] == [2, 2, 1]  # type: ignore[attr-defined]
    assert add.map([1, 2]).immutable
    assert add.starmap([(1, 2)]).options == {"map": "starmap"}
