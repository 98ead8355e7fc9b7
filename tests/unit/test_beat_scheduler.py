"""The beat loop with an injected clock, the memory broker and memory state (issue #7).

Lock expiry runs on the store's real clock, so a dead leader is simulated by
deleting its lock key, as its expiry would.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskmesh import TaskMesh
from taskmesh.beat import crontab
from taskmesh.beat.scheduler import Beat, describe, load_entries, open_state, run_id
from taskmesh.beat.state import BeatState
from taskmesh.errors import BrokerUnavailable, ConfigurationError, ResultError
from taskmesh.protocol import Envelope
from taskmesh.result import connect_store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    """One test's broker, state store and clock, shared by its beat processes."""

    def __init__(self) -> None:
        self.name = uuid.uuid4().hex[:10]
        self.clock = Clock(1_000_000.5)
        self.beats: list[Beat] = []

    def app(self, schedule: dict[str, Any], **settings: Any) -> TaskMesh:
        options: dict[str, Any] = {
            "beat_schedule": schedule,
            "beat_state_url": f"memory://{self.name}-state",
            "beat_lock_seconds": 10,
            "beat_max_loop_interval": 1,
        }
        options.update(settings)
        return TaskMesh(
            "proj", broker=f"memory://{self.name}", backend=f"memory://{self.name}", **options
        )

    def beat(self, schedule: dict[str, Any], **settings: Any) -> Beat:
        beat = Beat(self.app(schedule, **settings), clock=self.clock, hostname="test")
        self.beats.append(beat)
        return beat

    def sent(self, queue: str = "default") -> list[Envelope]:
        app = self.app({})
        with app.connect_broker() as transport:
            deliveries = transport.receive([queue], 1000, 0)
            envelopes = [app.codec().decode(delivery.body) for delivery in deliveries]
            transport.ack_many(deliveries)
        return envelopes

    def runs(self, queue: str = "default") -> list[tuple[str, float]]:
        return [(e.headers["beat_entry"], e.headers["beat_run_at"]) for e in self.sent(queue)]

    def forget(self, key: str) -> None:
        store = connect_store(f"memory://{self.name}-state")
        store.delete(f"beat:proj:{key}")

    def kill_leader(self) -> None:
        self.forget("leader")


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    yield world
    for beat in world.beats:
        beat.close()


EVERY_SECOND = {"tick": {"task": "proj.tick", "schedule": 1}}


def test_new_interval_entry_first_runs_at_its_next_run_time(world: World) -> None:
    beat = world.beat(EVERY_SECOND)
    beat.tick()
    assert world.runs() == []
    world.clock.now = 1_000_001.0
    beat.tick()
    world.clock.now = 1_000_001.9
    beat.tick()
    assert world.runs() == [("tick", 1_000_001.0)]


def test_tick_returns_the_wait_until_the_next_run_within_the_loop_interval(world: World) -> None:
    beat = world.beat({"slow": {"task": "proj.tick", "schedule": 60}})
    assert beat.tick() == pytest.approx(1.0)
    world.clock.now = 1_000_019.75
    assert beat.tick() == pytest.approx(0.25)


def test_message_carries_task_arguments_options_and_a_run_id(world: World) -> None:
    schedule = {
        "tick": {
            "task": "proj.tick",
            "schedule": 1,
            "args": [1, 2],
            "kwargs": {"x": 3},
            "options": {"queue": "periodic", "priority": 7, "headers": {"team": "ops"}},
        }
    }
    beat = world.beat(schedule)
    beat.tick()
    world.clock.now = 1_000_001.0
    beat.tick()
    [envelope] = world.sent("periodic")
    assert (envelope.task, list(envelope.args), dict(envelope.kwargs)) == (
        "proj.tick",
        [1, 2],
        {"x": 3},
    )
    assert envelope.priority == 7
    assert envelope.headers == {"team": "ops", "beat_entry": "tick", "beat_run_at": 1_000_001.0}
    assert envelope.id == run_id("proj", "tick", 1_000_001.0)


def test_only_the_leader_sends(world: World) -> None:
    first, second = world.beat(EVERY_SECOND), world.beat(EVERY_SECOND)
    for now in (1_000_000.5, 1_000_001.0, 1_000_002.0, 1_000_003.0):
        world.clock.now = now
        first.tick()
        second.tick()
    assert (first.is_leader, second.is_leader) == (True, False)
    assert [run for _, run in world.runs()] == [1_000_001.0, 1_000_002.0, 1_000_003.0]


def test_when_the_leader_dies_the_next_sends_every_late_run_once(world: World) -> None:
    first, second = world.beat(EVERY_SECOND), world.beat(EVERY_SECOND)
    for now in (1_000_000.5, 1_000_001.0, 1_000_002.0):
        world.clock.now = now
        first.tick()
        second.tick()
    world.kill_leader()
    world.clock.now = 1_000_006.5
    second.tick()
    assert second.is_leader
    assert [run for _, run in world.runs()] == [1_000_001.0 + n for n in range(6)]


def test_a_run_claimed_by_another_leader_is_not_sent_again(world: World) -> None:
    first, second = world.beat(EVERY_SECOND), world.beat(EVERY_SECOND)
    first.tick()
    world.clock.now = 1_000_001.0
    first.tick()
    world.kill_leader()
    world.clock.now = 1_000_002.0
    second.tick()
    # The lock renewal race: the old leader gets the lock back with its stale view.
    world.kill_leader()
    world.clock.now = 1_000_002.5
    first.tick()
    assert first.is_leader
    assert [run for _, run in world.runs()] == [1_000_001.0, 1_000_002.0]


def test_a_stopped_leader_hands_over_at_once(world: World) -> None:
    first, second = world.beat(EVERY_SECOND), world.beat(EVERY_SECOND)
    first.tick()
    first.close()
    second.tick()
    assert second.is_leader


def test_a_restart_does_not_send_a_run_twice(world: World) -> None:
    beat = world.beat(EVERY_SECOND)
    for now in (1_000_000.5, 1_000_001.0, 1_000_002.0):
        world.clock.now = now
        beat.tick()
    beat.close()
    restarted = world.beat(EVERY_SECOND)
    world.clock.now = 1_000_002.5
    restarted.tick()
    world.clock.now = 1_000_003.0
    restarted.tick()
    assert [run for _, run in world.runs()] == [1_000_001.0, 1_000_002.0, 1_000_003.0]


@pytest.mark.parametrize(("catch_up", "expected"), [("once", 1), ("skip", 0)])
def test_runs_missed_while_no_beat_ran(world: World, catch_up: str, expected: int) -> None:
    beat = world.beat(EVERY_SECOND, beat_catch_up=catch_up)
    beat.tick()
    world.clock.now = 1_000_001.0
    beat.tick()
    beat.close()
    world.runs()
    restarted = world.beat(EVERY_SECOND, beat_catch_up=catch_up)
    world.clock.now = 1_003_600.5
    restarted.tick()
    restarted.tick()
    assert len(world.runs()) == expected
    world.clock.now = 1_003_601.0
    restarted.tick()
    assert [run for _, run in world.runs()] == [1_003_601.0]


def test_a_missed_daily_run_is_sent_once_at_start(world: World) -> None:
    daily = {"nightly": {"task": "proj.cleanup", "schedule": crontab("0 3 * * *")}}
    start = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC).timestamp()
    world.clock.now = start
    world.beat(daily).tick()
    world.beats[0].close()
    world.clock.now = start + 3 * 86400
    world.beat(daily).tick()
    assert len(world.runs()) == 1


def test_a_rescheduled_entry_starts_afresh_and_a_removed_one_never_fires(world: World) -> None:
    schedule = {"tick": {"task": "proj.tick", "schedule": 1}, "gone": dict(EVERY_SECOND["tick"])}
    beat = world.beat(schedule)
    beat.tick()
    world.clock.now = 1_000_001.0
    beat.tick()
    beat.close()
    assert len(world.runs()) == 2
    changed = {"tick": {"task": "proj.tick", "schedule": 5}, "new": dict(EVERY_SECOND["tick"])}
    restarted = world.beat(changed)
    world.clock.now = 1_000_100.5
    restarted.tick()
    assert world.runs() == []
    world.clock.now = 1_000_105.0
    restarted.tick()
    assert sorted(world.runs()) == [
        ("new", 1_000_101.0),
        ("new", 1_000_102.0),
        ("new", 1_000_103.0),
        ("new", 1_000_104.0),
        ("new", 1_000_105.0),
        ("tick", 1_000_105.0),
    ]
    state = restarted.state.load(["tick", "gone", "new"])
    assert set(state) == {"tick", "new"}


def test_a_failed_send_is_retried_on_the_next_turn(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    beat = world.beat(EVERY_SECOND)
    real_send: Callable[..., Any] = beat.app.send_task
    failures = [BrokerUnavailable("broker down for the test")]

    def flaky_send(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_send(*args, **kwargs)

    monkeypatch.setattr(beat.app, "send_task", flaky_send)
    beat.tick()
    world.clock.now = 1_000_001.0
    assert beat.tick() == pytest.approx(1.0)
    assert world.runs() == []
    world.clock.now = 1_000_001.5
    beat.tick()
    assert world.runs() == [("tick", 1_000_001.0)]


def test_hourly_crontab_through_the_berlin_fall_back_night_runs_every_real_hour(
    world: World,
) -> None:
    zone = ZoneInfo("Europe/Berlin")
    schedule = {"hourly": {"task": "proj.tick", "schedule": "0 * * * *"}}
    start = datetime.datetime(2024, 10, 26, 23, 30, tzinfo=zone).timestamp()
    world.clock.now = start
    beat = world.beat(schedule, timezone="Europe/Berlin")
    for step in range(1, 6 * 12 + 1):
        world.clock.now = start + step * 300
        beat.tick()
    runs = [run for _, run in world.runs()]
    assert len(runs) == 6
    assert [later - earlier for earlier, later in itertools.pairwise(runs)] == [3600.0] * 5


def test_half_past_two_on_both_berlin_change_nights_runs_once(world: World) -> None:
    zone = ZoneInfo("Europe/Berlin")
    schedule = {"daily": {"task": "proj.tick", "schedule": crontab("30 2 * * *")}}
    nights = {
        datetime.datetime(2024, 3, 30, 23): "2024-03-31T03:00:00+02:00",
        datetime.datetime(2024, 10, 26, 23): "2024-10-27T02:30:00+02:00",
    }
    for night, expected in nights.items():
        world.clock.now = night.replace(tzinfo=zone).timestamp()
        beat = world.beat(schedule, timezone="Europe/Berlin")
        for _ in range(6 * 12):
            world.clock.now += 300
            beat.tick()
        beat.close()
        [(_, run)] = world.runs()
        assert datetime.datetime.fromtimestamp(run, zone).isoformat() == expected
        world.forget("entry:daily")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": 1}, "needs a task name"),
        ({"task": "t"}, "has no schedule"),
        ({"task": "t", "schedule": 1, "every": 2}, "unknown key"),
        ({"task": "t", "schedule": 1, "options": {"countdwn": 1}}, "unknown option"),
        ({"task": "t", "schedule": 1, "args": "x"}, "must be a list"),
        ({"task": "t", "schedule": [5]}, "Invalid schedule"),
        ("t", "must be a mapping"),
    ],
)
def test_invalid_entries_are_configuration_errors(spec: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_entries({"entry": spec})


def test_invalid_timezone_is_refused_when_configured() -> None:
    with pytest.raises(ConfigurationError, match="timezone"):
        TaskMesh("proj", timezone="Nowhere/Land")


def test_describe_lists_each_entry_with_its_next_runs() -> None:
    app = TaskMesh(
        "proj",
        broker="memory://",
        timezone="America/New_York",
        beat_schedule={"nightly": {"task": "proj.cleanup", "schedule": "30 2 * * *"}},
    )
    start = datetime.datetime(2024, 3, 9, 12, tzinfo=ZoneInfo("America/New_York")).timestamp()
    [line] = describe(app, 2, now=start)
    assert line == (
        "nightly: proj.cleanup <Crontab '30 2 * * *'> next: "
        "2024-03-10T03:00:00-04:00, 2024-03-11T02:30:00-04:00"
    )


def test_default_state_is_a_sqlite_file_of_its_own(tmp_path: Any) -> None:
    path = tmp_path / "beat-state.db"
    app = TaskMesh("proj", broker="memory://", beat_schedule_filename=str(path))
    state = open_state(app)
    try:
        assert state.claim_run("tick", 5.0)
        assert not state.claim_run("tick", 5.0)
        assert state.hold_lock("me")
        assert not state.hold_lock("you")
    finally:
        state.close()
    assert path.exists()


class Turns(threading.Event):
    """A stop event that never waits: it counts turns and is set after ``turns``."""

    def __init__(self, turns: int) -> None:
        super().__init__()
        self.left = turns
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        self.left -= 1
        if self.left <= 0:
            self.set()
        return self.is_set()


class FlakyState(BeatState):
    failures = 1

    def hold_lock(self, token: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise ResultError("store down for the test")
        return super().hold_lock(token)


def test_run_survives_a_failing_store_and_gives_the_lock_up_at_stop(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    app = world.app(EVERY_SECOND)
    state = FlakyState(connect_store(f"memory://{world.name}-state"), "proj", lock_seconds=10)
    beat = Beat(app, state=state, clock=world.clock, hostname="test")
    turns = Turns(3)
    with caplog.at_level(logging.INFO, logger="taskmesh.beat.scheduler"):
        beat.run(turns)
    assert turns.pauses[0] == 1.0
    assert "beat turn failed, retrying error=store down for the test" in caplog.text
    assert "beat leading" in caplog.text
    assert "beat stopped" in caplog.text
    other = world.beat(EVERY_SECOND)
    other.tick()
    assert other.is_leader
