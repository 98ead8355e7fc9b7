"""Beat with real processes on the SQLite broker (issue #7).

Beat and worker processes are ``python -m taskmesh -A tests.apps.beat_app``
subprocesses; ``beat.tick`` records each run's task id and scheduled time, and
each beat logs the ids it sent. Every process is stopped by its PID, also when
a test fails (the scenario fixture kills what is left).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Scenario, WorkerProcess, wait_until

pytestmark = pytest.mark.timeout(180)

EVERY_SECOND = {"tick": {"task": "beat.tick", "schedule": 1}}
_SENT = re.compile(r"beat sent entry=\S+ task=\S+ run_at=\S+ id=(\S+)")


def start(scenario: Scenario, *args: str, ready: str) -> WorkerProcess:
    """Start ``taskmesh -A tests.apps.beat_app ARGS`` and wait for its ``ready`` line."""
    log = scenario.folder / f"process-{len(scenario.workers)}.log"
    command = [sys.executable, "-m", "taskmesh", "-A", "tests.apps.beat_app", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=scenario.env(), cwd=ROOT
        )
    started = WorkerProcess(process, log)
    scenario.workers.append(started)
    wait_until(lambda: ready in started.output() or process.poll() is not None, 30, ready)
    if process.poll() is not None:
        raise AssertionError(f"{' '.join(args)} exited at start:\n{started.output()}")
    return started


def ticks(scenario: Scenario) -> list[tuple[str, float]]:
    """(task id, scheduled run time) of every run the worker finished."""
    return [(line.split()[0], float(line.split()[1])) for line in scenario.lines("beat-tick")]


def sent_ids(*processes: WorkerProcess) -> set[str]:
    return {match for p in processes for match in _SENT.findall(p.output())}


def configure(
    scenario: Scenario, state: str = "file", request: pytest.FixtureRequest | None = None
) -> None:
    scenario.settings.update(
        beat_schedule=json.dumps(EVERY_SECOND),
        beat_schedule_filename=str(scenario.folder / "beat-state.db"),
        beat_lock_seconds=2,
        beat_max_loop_interval=1,
    )
    if state == "store":
        scenario.settings["beat_state_url"] = f"sqlite:///{scenario.folder}/state.db"
    elif state == "redis" and request is not None:
        pytest.importorskip("taskmesh.backends.redis")
        server = request.getfixturevalue("redis")
        tag = uuid.uuid4().hex[:10]
        scenario.settings["beat_state_url"] = f"{server.url}?key_prefix=beat{tag}:"
    elif state == "dynamodb" and request is not None:
        pytest.importorskip("taskmesh.backends.dynamodb")
        aws = request.getfixturevalue("moto")
        tag = uuid.uuid4().hex[:10]
        where = f"region=us-east-1&endpoint_url={aws.endpoint}"
        scenario.settings["beat_state_url"] = f"dynamodb://beat{tag}?{where}"


@pytest.mark.parametrize(
    "state",
    [
        "file",
        "store",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("dynamodb", marks=pytest.mark.sqs),
    ],
)
def test_two_beats_one_killed_half_way_send_each_second_once(
    sqlite_scenario: Scenario, state: str, request: pytest.FixtureRequest
) -> None:
    scenario = sqlite_scenario
    configure(scenario, state, request)
    worker = start(scenario, "worker", "-c", "2", "-l", "info", ready="worker ready")
    beats = [start(scenario, "beat", "-l", "debug", ready="beat ready") for _ in range(2)]
    leaders = wait_until(
        lambda: [beat for beat in beats if "beat leading" in beat.output()], 30, "a leader"
    )
    assert len(leaders) == 1
    [leader] = leaders
    [survivor] = [beat for beat in beats if beat is not leader]
    wait_until(lambda: ticks(scenario), 30, "the first run")
    start_at = min(run_at for _, run_at in ticks(scenario))
    wait_until(lambda: any(run_at >= start_at + 5 for _, run_at in ticks(scenario)), 30, "half-way")
    leader.kill()
    wait_until(
        lambda: any(run_at >= start_at + 10 for _, run_at in ticks(scenario)),
        60,
        "ten seconds of runs",
    )
    assert survivor.terminate(timeout=30) == 0
    assert "beat leading" in survivor.output()
    sent = sent_ids(leader, survivor)
    wait_until(lambda: sent <= {task_id for task_id, _ in ticks(scenario)}, 30, "every run sent")
    assert worker.process.poll() is None

    runs = ticks(scenario)
    task_ids = [task_id for task_id, _ in runs]
    assert len(task_ids) == len(set(task_ids)), "a run was sent twice"
    run_times = [run_at for _, run_at in runs]
    assert len(run_times) == len(set(run_times)), "a second was sent twice"
    window = [run_at for run_at in run_times if start_at <= run_at < start_at + 10]
    assert 9 <= len(window) <= 11, sorted(window)


def test_a_restarted_beat_does_not_send_a_run_twice(sqlite_scenario: Scenario) -> None:
    scenario = sqlite_scenario
    configure(scenario)
    start(scenario, "worker", "-c", "1", "-l", "info", ready="worker ready")
    first = start(scenario, "beat", "-l", "debug", ready="beat ready")
    wait_until(lambda: len(ticks(scenario)) >= 2, 30, "two runs")
    assert first.terminate(timeout=30) == 0
    before = sent_ids(first)
    wait_until(lambda: before <= {task_id for task_id, _ in ticks(scenario)}, 30, "the runs sent")
    last_before = max(run_at for _, run_at in ticks(scenario))
    second = start(scenario, "beat", "-l", "debug", ready="beat ready")
    wait_until(lambda: len(sent_ids(second)) >= 2, 30, "two runs after the restart")
    assert second.terminate(timeout=30) == 0
    after = sent_ids(second)
    wait_until(lambda: after <= {task_id for task_id, _ in ticks(scenario)}, 30, "the runs sent")
    runs = ticks(scenario)
    assert not before & after
    assert all(run_at > last_before for task_id, run_at in runs if task_id in after)
    assert len({run_at for _, run_at in runs}) == len(runs)


def beat_child_pid(worker: WorkerProcess) -> int:
    found = wait_until(
        lambda: re.search(r"taskmesh-beat \S+: beat ready token=(\d+)@", worker.output()),
        30,
        "the embedded beat",
    )
    return int(found.group(1))


def gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def test_worker_with_beat_runs_the_schedule_and_stops_it_on_sigterm(
    sqlite_scenario: Scenario,
) -> None:
    scenario = sqlite_scenario
    configure(scenario)
    worker = start(scenario, "worker", "--beat", "-c", "1", "-l", "info", ready="worker ready")
    beat_pid = beat_child_pid(worker)
    wait_until(lambda: len(ticks(scenario)) >= 2, 30, "two runs")
    assert worker.terminate(timeout=30) == 0
    assert gone(beat_pid)
    assert "beat stopped" in worker.output()


def test_embedded_beat_stops_when_its_worker_is_killed(sqlite_scenario: Scenario) -> None:
    scenario = sqlite_scenario
    configure(scenario)
    worker = start(scenario, "worker", "--beat", "-c", "1", "-l", "info", ready="worker ready")
    beat_pid = beat_child_pid(worker)
    others = [pid for pid in worker.children() if pid != beat_pid]
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(10)
        wait_until(lambda: gone(beat_pid), 20, "the orphaned beat to stop")
    finally:
        for pid in [beat_pid, *others]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert "beat parent gone" in worker.output()


def test_beat_list_prints_next_run_times(sqlite_scenario: Scenario) -> None:
    scenario = sqlite_scenario
    scenario.settings.update(
        timezone="America/New_York",
        beat_schedule=json.dumps({"nightly": {"task": "beat.tick", "schedule": "30 2 * * *"}}),
    )
    command = [sys.executable, "-m", "taskmesh", "-A", "tests.apps.beat_app", "beat", "--list"]
    done = subprocess.run(
        [*command, "--count", "2"],
        env=scenario.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("nightly: beat.tick <Crontab '30 2 * * *'> next: ")
    assert line.count("T02:30:00-0") + line.count("T03:00:00-04:00") == 2
