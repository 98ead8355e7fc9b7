"""Task options, sending, routing, the retry policy and eager runs (memory adapters)."""

from __future__ import annotations

import datetime
import random
import uuid
from typing import Any

import pytest

from taskmesh import State, TaskMesh
from taskmesh.errors import (
    ConfigurationError,
    EncodeError,
    MaxRetriesExceeded,
    MessageTooLarge,
    NotRegistered,
)
from taskmesh.protocol import Envelope
from taskmesh.task import Task, backoff_delay


@pytest.fixture
def app() -> TaskMesh:
    name = uuid.uuid4().hex
    return TaskMesh("proj", broker=f"memory://{name}", backend=f"memory://{name}")


def receive_one(app: TaskMesh, queue: str = "default") -> Envelope:
    deliveries = app.transport().receive([queue], 1, 0.5)
    assert len(deliveries) == 1
    return app.codec().decode(deliveries[0].body)


def test_default_name_is_module_and_function(app: TaskMesh) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_default_name_is_module_and_function.<locals>.add"
    assert add(2, 3) == 5
    assert app.get_task(add.name) is add


def test_unknown_task_option_is_refused(app: TaskMesh) -> None:
    with pytest.raises(ConfigurationError, match="retry_bakoff"):
        app.task(retry_bakoff=True)


def test_get_task_for_unknown_name_says_how_to_fix(app: TaskMesh) -> None:
    with pytest.raises(NotRegistered, match="imported by the worker"):
        app.get_task("proj.nope")


def test_delay_puts_a_decodable_envelope_on_the_default_queue(app: TaskMesh) -> None:
    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, y=3)
    envelope = receive_one(app)
    assert envelope.id == result.id
    assert (envelope.task, envelope.args, envelope.kwargs) == ("proj.add", [2], {"y": 3})
    assert envelope.root_id == result.id


def test_apply_async_options_reach_the_envelope(app: TaskMesh) -> None:
    @app.task(name="proj.t", queue="slow", priority=3)
    def t() -> None:
        return None

    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
    t.apply_async(
        eta=eta,
        expires=120,
        task_id="fixed",
        headers={"tenant": "a"},
        queue="fast",
        priority=8,
        time_limit=5,
    )
    delivered = app.transport().receive(["fast"], 1, 0.1)
    assert delivered == []  # its ETA is a minute away
    assert app.transport().size("fast") == 1
    envelope = app.build_envelope("proj.t")
    assert envelope.queue == "slow"
    assert envelope.priority == 3


def test_routes_pick_the_queue_by_name_or_pattern(app: TaskMesh) -> None:
    app.conf.task_routes = {"billing.*": {"queue": "billing"}, "proj.exact": {"queue": "x"}}
    assert app.build_envelope("billing.charge").queue == "billing"
    assert app.build_envelope("proj.exact").queue == "x"
    assert app.build_envelope("proj.other").queue == "default"


def test_naive_eta_is_refused(app: TaskMesh) -> None:
    with pytest.raises(ConfigurationError, match="aware datetime"):
        app.build_envelope("t", eta=datetime.datetime(2030, 1, 1))


def test_priority_out_of_range_is_refused(app: TaskMesh) -> None:
    with pytest.raises(ConfigurationError, match="priority must be 0-9"):
        app.build_envelope("t", priority=12)


def test_unencodable_arguments_fail_at_send_and_nothing_is_sent(app: TaskMesh) -> None:
    @app.task(name="proj.t")
    def t(value: Any) -> None:
        return None

    with pytest.raises(EncodeError, match=r"proj\.t"):
        t.delay(object())
    assert app.transport().size("default") == 0


def test_oversized_message_is_refused_at_send(app: TaskMesh) -> None:
    app.conf.task_max_message_bytes = 1000

    @app.task(name="proj.t")
    def t(value: str) -> None:
        return None

    with pytest.raises(MessageTooLarge, match="task_max_message_bytes=1000"):
        t.delay("x" * 2000)
    assert app.transport().size("default") == 0


@pytest.mark.parametrize(
    ("retries", "expected"), [(0, 2.0), (1, 4.0), (2, 8.0), (5, 30.0), (40, 30.0)]
)
def test_backoff_is_exponential_and_capped(retries: int, expected: float) -> None:
    assert backoff_delay(retries, 2.0, 30.0, jitter=False) == expected


def test_jitter_stays_between_zero_and_the_backoff() -> None:
    rng = random.Random(7)
    values = [backoff_delay(3, 1.0, 600.0, jitter=True, rng=rng) for _ in range(200)]
    assert all(0 <= v <= 8.0 for v in values)
    assert len(set(values)) > 100


def test_eager_apply_runs_retries_inline_and_stores_success(app: TaskMesh) -> None:
    calls: list[int] = []

    @app.task(bind=True, name="proj.flaky", max_retries=3, default_retry_delay=60)
    def flaky(self: Task[Any, Any]) -> int:
        calls.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=OSError("transient"))
        return self.request.retries

    result = flaky.apply()
    assert calls == [0, 1, 2]
    assert result.get(timeout=1) == 2
    assert result.state is State.SUCCESS
    assert result.retries == 2


def test_autoretry_gives_up_after_max_retries_with_the_original_error(app: TaskMesh) -> None:
    @app.task(
        name="proj.down",
        autoretry_for=(ConnectionError,),
        max_retries=2,
        retry_backoff=True,
        retry_jitter=False,
    )
    def down() -> None:
        raise ConnectionError("still down")

    result = down.apply()
    with pytest.raises(ConnectionError, match="still down"):
        result.get(timeout=1)
    assert result.retries == 2


def test_retry_without_exception_past_the_limit_raises_max_retries(app: TaskMesh) -> None:
    @app.task(bind=True, name="proj.loop", max_retries=1, default_retry_delay=0)
    def loop(self: Task[Any, Any]) -> None:
        self.retry()

    with pytest.raises(MaxRetriesExceeded, match="retried 1 times"):
        loop.apply().get(timeout=1)


def test_always_eager_runs_on_delay_and_propagates(app: TaskMesh) -> None:
    app.conf.task_always_eager = True

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.boom")
    def boom() -> None:
        raise KeyError("k")

    assert add.delay(1, 2).get(timeout=1) == 3
    with pytest.raises(KeyError):
        boom.delay()
    assert app.transport().size("default") == 0


def test_result_json_cannot_store_becomes_a_clear_failure(app: TaskMesh) -> None:
    @app.task(name="proj.obj")
    def obj() -> object:
        return object()

    result = obj.apply()
    with pytest.raises(EncodeError, match="JSON cannot store"):
        result.get(timeout=1)


def test_failure_of_an_unimportable_type_becomes_task_error(app: TaskMesh) -> None:
    from taskmesh.errors import TaskError
    from taskmesh.result import TaskRecord, task_key

    record = TaskRecord(
        "t1", State.FAILURE, result="gone", exc_type="nowhere.Missing", traceback="Traceback..."
    )
    app.result_store().set(task_key("t1"), record.to_bytes(), expires_seconds=60, notify=True)
    with pytest.raises(TaskError) as info:
        app.AsyncResult("t1").get(timeout=1)
    assert info.value.exc_type == "nowhere.Missing"
    assert info.value.remote_traceback == "Traceback..."


def test_get_past_its_timeout_raises_timeout_error(app: TaskMesh) -> None:
    with pytest.raises(TimeoutError, match=r"not ready within 0\.05"):
        app.AsyncResult("never").get(timeout=0.05)


def test_forget_removes_the_result(app: TaskMesh) -> None:
    @app.task(name="proj.one")
    def one() -> int:
        return 1

    result = one.apply()
    assert result.successful()
    result.forget()
    assert result.state is State.PENDING


def test_message_group_id_comes_from_the_call_or_the_task(app: TaskMesh) -> None:
    @app.task(name="proj.ordered", message_group_id="tenant-a")
    def ordered() -> None:
        return None

    assert app.build_envelope("proj.ordered").headers == {"message_group_id": "tenant-a"}
    sent = app.build_envelope("proj.ordered", message_group_id="tenant-b", headers={"h": 1})
    assert sent.headers == {"h": 1, "message_group_id": "tenant-b"}
    assert app.build_envelope("proj.other").headers == {}
