"""Worker scenarios with real worker processes, on every broker.

Foundation issue #2: exactly-once in a normal run, recovery after SIGKILL,
retries, dead letters, graceful stop, time limits, expiry and ETAs.
"""

from __future__ import annotations

import datetime
import signal
import threading
import time
from collections import Counter

import pytest

from taskmesh.errors import NotRegistered, TaskRevoked, TimeLimitExceeded
from taskmesh.result import AsyncResult, State
from taskmesh.transport import Outgoing
from tests.integration.harness import Scenario, wait_until

pytestmark = pytest.mark.timeout(120)


def test_500_tasks_from_two_producers_run_exactly_once(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=2)
    scenario.start_worker(concurrency=2)
    results: dict[str, AsyncResult] = {}
    lock = threading.Lock()

    def produce(prefix: str) -> None:
        app = scenario.app
        for index in range(250):
            key = f"{prefix}-{index}"
            result = app.send_task("scenario.mark", [key])
            with lock:
                results[key] = result
        app.close()

    producers = [threading.Thread(target=produce, args=(name,)) for name in ("a", "b")]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    for key, result in results.items():
        assert result.get(timeout=60) == key
    counts = Counter(scenario.lines("mark"))
    assert len(counts) == 500
    assert set(counts.values()) == {1}


def test_worker_killed_mid_task_then_restarted_completes_it(scenario: Scenario) -> None:
    scenario.settings["broker_lease_seconds"] = 2
    worker = scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.sleep", [1.5, "k1"])
    wait_until(lambda: "k1" in scenario.lines("sleep-start"), 20, "the task to start")
    worker.kill()
    assert "k1" not in scenario.lines("sleep-end")
    scenario.start_worker(concurrency=1)
    assert result.get(timeout=30) == 1.5
    assert scenario.lines("sleep-start").count("k1") == 2
    assert scenario.lines("sleep-end").count("k1") == 1


def test_task_failing_twice_then_succeeding_ends_in_success_with_two_retries(
    scenario: Scenario,
) -> None:
    scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.flaky", [2])
    assert result.get(timeout=30) == 2
    assert result.state is State.SUCCESS
    assert result.retries == 2


def test_final_failure_stores_exception_and_traceback(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.fail", ["broken on purpose"])
    with pytest.raises(ValueError, match="broken on purpose"):
        result.get(timeout=30)
    assert result.state is State.FAILURE
    assert "ValueError: broken on purpose" in (result.traceback or "")


def test_malformed_and_unknown_messages_are_dead_lettered_and_worker_keeps_serving(
    scenario: Scenario,
) -> None:
    worker = scenario.start_worker(concurrency=1)
    with scenario.app.connect_broker() as transport:
        transport.publish(Outgoing(scenario.queue, b"\x00 not a task"))
    unknown = scenario.app.send_task("scenario.no_such_task", [1])
    misfit = scenario.app.send_task("scenario.add", [1, 2, 3])
    assert scenario.app.send_task("scenario.add", [2, 3]).get(timeout=30) == 5
    with pytest.raises(NotRegistered):
        unknown.get(timeout=30)
    with pytest.raises(TypeError, match="arguments do not fit"):
        misfit.get(timeout=30)
    dead = wait_until(lambda: scenario.dead_letters(), 20, "dead letters")
    reasons = sorted(headers["x-dead-letter-reason"] for _, headers in dead)
    while len(reasons) < 3:
        more = wait_until(lambda: scenario.dead_letters(), 20, "more dead letters")
        reasons += [headers["x-dead-letter-reason"] for _, headers in more]
    assert any("not JSON" in reason for reason in reasons)
    assert any("scenario.no_such_task" in reason for reason in reasons)
    assert any("arguments do not fit" in reason for reason in reasons)
    assert worker.process.poll() is None


def test_sigterm_lets_the_running_task_finish_and_store_its_result(scenario: Scenario) -> None:
    worker = scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.sleep", [1.0, "graceful"])
    wait_until(lambda: "graceful" in scenario.lines("sleep-start"), 20, "the task to start")
    assert worker.terminate(timeout=30) == 0
    assert result.state is State.SUCCESS
    assert result.get(timeout=1) == 1.0


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_soft_time_limit_raises_inside_the_task(scenario: Scenario, pool: str) -> None:
    scenario.start_worker(1, pool)
    result = scenario.app.send_task("scenario.soft_limited", [10])
    assert result.get(timeout=30) == "caught SoftTimeLimitExceeded"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_hard_time_limit_fails_the_task_and_the_worker_keeps_serving(
    scenario: Scenario, pool: str
) -> None:
    worker = scenario.start_worker(1, pool)
    result = scenario.app.send_task("scenario.hard_limited", [10])
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)
    assert scenario.app.send_task("scenario.add", [20, 22]).get(timeout=30) == 42
    assert worker.process.poll() is None


def test_expired_message_is_not_run_and_is_revoked(scenario: Scenario) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    result = scenario.app.send_task("scenario.mark", ["expired"], expires=past)
    fresh = scenario.app.send_task("scenario.mark", ["fresh"], expires=60)
    scenario.start_worker(concurrency=1)
    assert fresh.get(timeout=30) == "fresh"
    with pytest.raises(TaskRevoked, match="expired"):
        result.get(timeout=30)
    assert result.state is State.REVOKED
    assert scenario.lines("mark") == ["fresh"]


def test_countdown_is_not_run_before_its_eta(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=1)
    sent = time.time()
    result = scenario.app.send_task("scenario.started_at", ["eta"], countdown=1.5)
    assert result.get(timeout=30) >= sent + 1.5


def test_message_that_kills_its_worker_is_dead_lettered_after_max_deliveries(
    scenario: Scenario,
) -> None:
    scenario.settings.update(broker_lease_seconds=1, task_max_deliveries=2)
    scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.die_always")
    with pytest.raises(TaskRevoked, match="started 2 times without finishing"):
        result.get(timeout=60)
    dead = wait_until(lambda: scenario.dead_letters(), 20, "the dead letter")
    assert "task_max_deliveries=2" in dead[0][1]["x-dead-letter-reason"]
    assert scenario.app.send_task("scenario.add", [1, 1]).get(timeout=30) == 2


def test_request_carries_id_queue_and_hostname(scenario: Scenario) -> None:
    scenario.start_worker(concurrency=1)
    result = scenario.app.send_task("scenario.request_info")
    info = result.get(timeout=30)
    assert info["id"] == result.id
    assert info["queue"] == scenario.queue
    assert "@" in info["hostname"]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_second_sigint_stops_at_once_and_the_task_runs_again_later(
    scenario: Scenario, pool: str
) -> None:
    scenario.settings["broker_lease_seconds"] = 2
    worker = scenario.start_worker(1, pool)
    result = scenario.app.send_task("scenario.sleep", [3, "interrupted"])
    wait_until(lambda: "interrupted" in scenario.lines("sleep-start"), 20, "the task to start")
    worker.process.send_signal(signal.SIGINT)
    wait_until(lambda: "worker stopping" in worker.output(), 10, "the graceful stop to begin")
    worker.process.send_signal(signal.SIGINT)
    worker.process.wait(10)
    wait_until(lambda: not worker.children(), 10, "the children to exit")
    assert scenario.lines("sleep-end") == []
    scenario.start_worker(1, pool)
    assert result.get(timeout=30) == 3
    assert scenario.lines("sleep-start").count("interrupted") == 2


def test_messages_prefetched_beside_a_worker_killer_still_run(scenario: Scenario) -> None:
    scenario.settings.update(broker_lease_seconds=1, task_max_deliveries=2)
    killer = scenario.app.send_task("scenario.die_always")
    innocents = [scenario.app.send_task("scenario.add", [i, i]) for i in range(5)]
    scenario.start_worker(concurrency=1)
    assert [r.get(timeout=90) for r in innocents] == [0, 2, 4, 6, 8]
    with pytest.raises(TaskRevoked, match="started 2 times"):
        killer.get(timeout=60)


def test_high_priority_runs_before_low_queued_earlier(scenario: Scenario) -> None:
    with scenario.app.connect_broker() as transport:
        if not transport.capabilities.priorities:
            pytest.skip("the broker has no priorities (documented)")
    scenario.settings["worker_prefetch_multiplier"] = 1
    scenario.start_worker(1, "threads")
    app = scenario.app
    busy = app.send_task("scenario.sleep", [1.0, "busy"])
    wait_until(lambda: scenario.lines("sleep-start"), 20, "the worker to be busy")
    low = [app.build_envelope("scenario.mark", [f"low-{i}"], priority=0) for i in range(50)]
    high = [app.build_envelope("scenario.mark", [f"high-{i}"], priority=9) for i in range(50)]
    app.publish(low)
    app.publish(high)
    assert busy.get(timeout=30) == 1.0
    for envelope in low + high:
        app.AsyncResult(envelope.id).get(timeout=60)
    order = scenario.lines("mark")
    assert order == [f"high-{i}" for i in range(50)] + [f"low-{i}" for i in range(50)]
