"""Canvas scenarios with real worker processes, on every broker (issue #4).

Chains, groups and chords travel between processes as JSON; chord bodies run
exactly once also when header tasks retry, run on two workers, arrive twice or
are redelivered after their worker was killed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmesh import AsyncResult, Chord, GroupResult, State, TaskMesh, chain, chord, group
from taskmesh.errors import ChordError
from taskmesh.result import TaskRecord, task_key
from tests.integration.conftest import BROKERS, broker_urls
from tests.integration.harness import ROOT, Scenario, scenario_context, wait_until

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60


def _drained(scenario: Scenario) -> None:
    """Wait until a task sent now has run, so that messages sent before it were seen."""
    key = f"sentinel-{time.monotonic_ns()}"
    assert scenario.app.send_task("scenario.mark", [key]).get(timeout=TIMEOUT) == key


def test_chain_passes_each_result_on_and_links_parents(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    add = scenario.app.tasks["scenario.add"]
    result = (add.s(1, 2) | add.s(10) | add.si(100, 1) | add.s(5))()
    assert result.get(timeout=TIMEOUT) == 106
    values = []
    step = result
    while step is not None:
        values.append(step.get(timeout=TIMEOUT))
        step = step.parent
    assert values == [106, 101, 13, 3]


def test_group_returns_results_in_order_and_restores_by_id(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    add = scenario.app.tasks["scenario.add"]
    result = group(add.s(i, i) for i in range(20))()
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(20)]
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.completed_count() == 20
    # Another process, knowing only the id, gathers the same results.
    code = (
        "import json, sys\n"
        "from taskmesh import GroupResult\n"
        "from tests.apps.scenario import app\n"
        "found = GroupResult.restore(sys.argv[1], app)\n"
        "print(json.dumps([found.completed_count(), found.get(timeout=30)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, result.id],
        env=scenario.env(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [20, [2 * i for i in range(20)]]


def test_empty_group_and_empty_chord_header(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=1)
    app = scenario.app
    assert group([], app=app)().get(timeout=TIMEOUT) == []
    body = app.tasks["scenario.body"]
    assert chord([], body.s("empty"))().get(timeout=TIMEOUT) == []
    assert scenario.lines("body") == ["empty 0"]


def test_chord_body_gets_header_results_in_order(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    add = scenario.app.tasks["scenario.add"]
    body = scenario.app.tasks["scenario.body"]
    result = chord((add.s(i, 1) for i in range(10)), body.s("ordered"))()
    assert result.get(timeout=TIMEOUT) == [i + 1 for i in range(10)]
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=TIMEOUT) == [i + 1 for i in range(10)]
    second = chord([add.s(2, 2), add.s(3, 3)])(body.s("called"))
    assert second.get(timeout=TIMEOUT) == [4, 6]


def test_chord_with_retried_headers_on_two_workers_runs_body_once(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    scenario.start_worker(concurrency=2)
    app = scenario.app
    flaky = app.tasks["scenario.flaky_value"]
    add = app.tasks["scenario.add"]
    header = [flaky.s(i, i % 3) for i in range(12)] + [add.s(100, i) for i in range(12)]
    result = chord(header, app.tasks["scenario.body"].s("retried"))()
    expected = list(range(12)) + [100 + i for i in range(12)]
    assert result.get(timeout=TIMEOUT) == expected
    _drained(scenario)
    assert scenario.lines("body") == ["retried 24"]


def test_header_message_delivered_twice_counts_once(scenario: Scenario) -> None:
    app = scenario.app
    add = app.tasks["scenario.add"]
    node = Chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], app.tasks["scenario.body"].s("dup"))
    result = node.freeze(app)
    envelopes = node.build(app, (), {}, [], {})
    # The first header message arrives twice (at-least-once delivery). If the
    # join counted it twice, the body would run before the third finished.
    app.publish([envelopes[0], envelopes[0], envelopes[1]])
    scenario.start_worker(concurrency=2)
    wait_until(lambda: _ready(app, envelopes[0].id) and _ready(app, envelopes[1].id), 30, "headers")
    _drained(scenario)
    assert scenario.lines("body") == []
    app.publish([envelopes[2]])
    assert result.get(timeout=TIMEOUT) == [2, 4, 6]
    _drained(scenario)
    assert scenario.lines("body") == ["dup 3"]


def _ready(app: TaskMesh, task_id: str) -> bool:
    return AsyncResult(task_id, app).ready()


def test_header_task_redelivered_after_worker_killed_counts_once(scenario: Scenario) -> None:
    scenario.settings["broker_lease_seconds"] = 2
    scenario.start_worker(concurrency=2)
    app = scenario.app
    die = app.tasks["scenario.die_once_value"]
    add = app.tasks["scenario.add"]
    header = [die.s(7, "k"), *(add.s(i, 0) for i in range(5))]
    result = chord(header, app.tasks["scenario.body"].s("crash"))()
    assert result.get(timeout=TIMEOUT) == [7, 0, 1, 2, 3, 4]
    assert [line.split()[1] for line in scenario.lines("die-once")][:2] == [
        "delivery=1",
        "delivery=2",
    ]
    _drained(scenario)
    assert scenario.lines("body") == ["crash 6"]


def test_chord_header_failure_fails_chord_once_and_skips_body(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    app = scenario.app
    add = app.tasks["scenario.add"]
    fail = app.tasks["scenario.fail"]
    header = [add.s(1, 1), fail.si("first"), fail.si("second"), add.s(2, 2)]
    result = chord(header, app.tasks["scenario.body"].s("never")).apply_async(
        link_error=app.tasks["scenario.on_error"].s("chord")
    )
    with pytest.raises(ChordError, match=r"failed with builtins\.ValueError") as caught:
        result.get(timeout=TIMEOUT)
    failed_ids = {result.parent.results[1].id, result.parent.results[2].id}
    assert caught.value.task_id in failed_ids
    assert result.state is State.FAILURE
    wait_until(lambda: scenario.lines("errors"), 30, "the error callback")
    _drained(scenario)
    assert scenario.lines("errors") == [f"chord {result.id}"]
    assert scenario.lines("body") == []


def test_chain_stops_at_first_failure(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    app = scenario.app
    add = app.tasks["scenario.add"]
    fail = app.tasks["scenario.fail"]
    on_error = app.tasks["scenario.on_error"]
    result = chain(add.s(1, 1), fail.si("stop"), add.s(1), add.s(2)).apply_async(
        link_error=on_error.s("chain")
    )
    with pytest.raises(ValueError, match="stop"):
        result.get(timeout=TIMEOUT)
    failed = result.parent.parent
    assert failed.state is State.FAILURE
    assert result.parent.state is State.PENDING
    assert failed.parent.get(timeout=TIMEOUT) == 2
    wait_until(lambda: scenario.lines("errors"), 30, "the error callback")
    _drained(scenario)
    assert scenario.lines("errors") == [f"chain {failed.id}"]
    assert result.parent.state is State.PENDING


def test_link_and_link_error_on_a_task(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=1)
    app = scenario.app
    add = app.tasks["scenario.add"]
    on_error = app.tasks["scenario.on_error"]
    ok = add.apply_async((2, 3), link=app.tasks["scenario.mark"].s(), link_error=on_error.s("x"))
    assert ok.get(timeout=TIMEOUT) == 5
    wait_until(lambda: scenario.lines("mark"), 30, "the link callback")
    bad = app.tasks["scenario.fail"].apply_async(("no",), link_error=on_error.s("task"))
    with pytest.raises(ValueError, match="no"):
        bad.get(timeout=TIMEOUT)
    wait_until(lambda: scenario.lines("errors"), 30, "the error callback")
    assert scenario.lines("errors") == [f"task {bad.id}"]
    assert scenario.lines("mark") == ["5"]


def test_nesting_group_in_chain_chain_in_group_chord_in_chain(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    app = scenario.app
    add = app.tasks["scenario.add"]
    tsum = app.tasks["scenario.tsum"]
    # A group followed by a task is a chord; a chain inside a group yields its last result.
    first = chain(add.s(1, 1), group(add.s(1), chain(add.s(2), add.s(3))), tsum.s())()
    assert first.get(timeout=TIMEOUT) == 3 + 7
    # A chord inside a chain, whose header holds a chain, a chord and a task.
    header = [chain(add.s(1), add.s(1)), chord([add.s(10), add.s(20)], tsum.s()), add.s(0)]
    second = chain(add.s(2, 2), chord(header, tsum.s()), add.s(1000))
    assert second().get(timeout=TIMEOUT) == 6 + 38 + 4 + 1000
    # A group nested in a group, and in a chord header, yields a list.
    third = group(add.s(1, 1), group(add.s(2, 2), add.s(3, 3)))()
    assert third.get(timeout=TIMEOUT) == [2, [4, 6]]
    body = app.tasks["scenario.body"]
    fourth = chord([group(add.s(1, 1), add.s(2, 2)), add.s(5, 5)], body.s("nested"))()
    assert fourth.get(timeout=TIMEOUT) == [[2, 4], 10]


def test_map_starmap_and_chunks(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    app = scenario.app
    add = app.tasks["scenario.add"]
    tsum = app.tasks["scenario.tsum"]
    assert tsum.map([[1, 2], [3], []])().get(timeout=TIMEOUT) == [3, 3, 0]
    assert add.starmap([(1, 2), (3, 4)])().get(timeout=TIMEOUT) == [3, 7]
    xs, ys = range(25), range(100, 125)
    parts = add.chunks(zip(xs, ys, strict=True), 10)()
    assert parts.get(timeout=TIMEOUT) == [
        [x + y for x, y in zip(xs[i : i + 10], ys[i : i + 10], strict=True)]
        for i in range(0, 25, 10)
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chord_of_1000_headers_on_two_workers_runs_body_once(sqlite_scenario: Scenario) -> None:
    scenario = sqlite_scenario
    scenario.start_worker(concurrency=2)
    scenario.start_worker(concurrency=2)
    app = scenario.app
    add = app.tasks["scenario.add"]
    started = time.monotonic()
    result = chord((add.s(i, i) for i in range(1000)), app.tasks["scenario.body"].s("big"))()
    assert result.get(timeout=540) == [2 * i for i in range(1000)]
    elapsed = time.monotonic() - started
    _drained(scenario)
    assert scenario.lines("body") == ["big 1000"]
    hosts = Counter(record.worker for record in _records(app, result.parent))
    assert len(hosts) >= 2, hosts
    print(f"chord of 1000 headers on two workers: {elapsed:.1f} s")  # noqa: T201


def _records(app: TaskMesh, group_result: GroupResult) -> list[TaskRecord]:
    ids = [result.id for result in group_result.results]
    raws = app.result_store().get_many([task_key(task_id) for task_id in ids])
    return [TaskRecord.from_bytes(raw) for raw in raws if raw is not None]


# Random nested canvases, checked against the same expression evaluated here. --

Spec = tuple[Any, ...]


def _standalone(depth: int) -> st.SearchStrategy[Spec]:
    """Specs of int-valued canvases that need no input."""
    leaf = st.tuples(st.just("leaf"), st.integers(-50, 50), st.integers(-50, 50))
    if depth == 0:
        return leaf
    inner = _standalone(depth - 1)
    members = st.lists(
        st.one_of(inner, st.tuples(st.just("group"), st.lists(inner, max_size=3))), max_size=3
    )
    return st.one_of(
        leaf,
        st.tuples(st.just("chain"), inner, st.lists(_consumer(depth - 1), min_size=1, max_size=3)),
        st.tuples(st.just("chord"), members),
        st.tuples(st.just("groupsum"), st.lists(inner, max_size=3)),
    )


def _consumer(depth: int) -> st.SearchStrategy[Spec]:
    """Specs of int-valued canvases that take an int as their first argument."""
    addk = st.tuples(st.just("addk"), st.integers(-50, 50))
    if depth == 0:
        return addk
    inner = _consumer(depth - 1)
    return st.one_of(
        addk,
        st.tuples(st.just("cchain"), st.lists(inner, min_size=1, max_size=3)),
        st.tuples(st.just("cchord"), st.lists(inner, max_size=3)),
        st.tuples(st.just("cgroupsum"), st.lists(inner, max_size=3)),
    )


def _evaluate(spec: Spec, value: int | None = None) -> Any:
    kind = spec[0]
    if kind == "leaf":
        return spec[1] + spec[2]
    if kind == "addk":
        return value + spec[1]
    if kind == "group":
        return [_evaluate(member) for member in spec[1]]
    if kind == "chain":
        result = _evaluate(spec[1])
        for step in spec[2]:
            result = _evaluate(step, result)
        return result
    if kind == "cchain":
        for step in spec[1]:
            value = _evaluate(step, value)
        return value
    if kind in ("chord", "groupsum"):
        return _deep_sum([_evaluate(member) for member in spec[1]])
    return sum(_evaluate(member, value) for member in spec[1])


def _deep_sum(values: Any) -> int:
    return sum(_deep_sum(v) for v in values) if isinstance(values, list) else int(values)


def _canvas(app: TaskMesh, spec: Spec) -> Any:
    add, total = app.tasks["scenario.add"], app.tasks["scenario.deep_sum"]
    kind, parts = spec[0], spec[1:]
    if kind == "leaf":
        return add.s(parts[0], parts[1])
    if kind == "addk":
        return add.s(parts[0])
    if kind == "group":
        return group([_canvas(app, member) for member in parts[0]], app=app)
    if kind == "chain":
        return chain(_canvas(app, parts[0]), *(_canvas(app, step) for step in parts[1]))
    if kind == "cchain":
        return chain([_canvas(app, step) for step in parts[0]])
    if kind in ("chord", "cchord"):
        return chord([_canvas(app, member) for member in parts[0]], total.s())
    return chain(group([_canvas(app, member) for member in parts[0]], app=app), total.s())


@pytest.fixture(scope="module", params=BROKERS)
def shared_scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """One scenario and one worker for every example of the property test."""
    folder = tmp_path_factory.mktemp("canvas-property")
    broker, backend = broker_urls(request.param, request, folder)
    for scenario in scenario_context(broker, backend, folder):
        scenario.start_worker(concurrency=2)
        yield scenario


@pytest.mark.timeout(300)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_standalone(3), top_group=st.booleans())
def test_random_nested_canvas_matches_local_evaluation(
    shared_scenario: Scenario, spec: Spec, top_group: bool
) -> None:
    app = shared_scenario.app
    if top_group:
        spec = ("group", [spec, ("leaf", 1, 2)])
    result = _canvas(app, spec).apply_async()
    assert result.get(timeout=TIMEOUT) == _evaluate(spec)


def test_expired_header_task_fails_the_chord(sqlite_scenario: Scenario) -> None:
    scenario = sqlite_scenario
    app = scenario.app
    add = app.tasks["scenario.add"]
    header = [add.s(1, 1), add.s(2, 2).set(expires=-1)]
    result = chord(header, app.tasks["scenario.body"].s("expired"))()
    scenario.start_worker(concurrency=1)
    with pytest.raises(ChordError):
        result.get(timeout=15)
