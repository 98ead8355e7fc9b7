"""The ``taskmesh`` command, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT, Scenario, wait_until

pytestmark = pytest.mark.timeout(120)


def taskmesh(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmesh", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_version() -> None:
    done = taskmesh("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("taskmesh, version ")


def test_demo_runs_a_real_workload_and_exits_zero(sqlite_scenario: Scenario) -> None:
    done = taskmesh("demo", env=sqlite_scenario.env(), timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Total:" in done.stdout
    assert "worker stopped with status 0" in done.stdout


def test_unimportable_app_is_a_clear_usage_error(sqlite_scenario: Scenario) -> None:
    done = taskmesh("-A", "no_such_project", "worker", env=sqlite_scenario.env())
    assert done.returncode == 2
    assert "Cannot import 'no_such_project'" in done.stderr


def test_wrong_broker_url_fails_at_start_with_the_reason(sqlite_scenario: Scenario) -> None:
    env = sqlite_scenario.env(TASKMESH_BROKER_URL="reddis://:pw@127.0.0.1:1/0")
    done = taskmesh("-A", "tests.apps.scenario", "worker", env=env)
    assert done.returncode == 1
    assert "Did you mean redis://" in done.stderr
    assert "pw" not in done.stderr


def test_missing_sqlite_folder_fails_at_start_with_the_path(sqlite_scenario: Scenario) -> None:
    env = sqlite_scenario.env(TASKMESH_BROKER_URL="sqlite:////nonexistent-dir/x.db")
    done = taskmesh("-A", "tests.apps.scenario", "worker", env=env)
    assert done.returncode == 1
    assert "/nonexistent-dir" in done.stderr


def test_call_wait_result_and_purge(sqlite_scenario: Scenario) -> None:
    env = sqlite_scenario.env()
    sqlite_scenario.start_worker(concurrency=1)
    done = taskmesh(
        "-A",
        "tests.apps.scenario",
        "call",
        "scenario.add",
        "--args",
        "[1, 2]",
        "--wait",
        "--timeout",
        "30",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    sent = taskmesh(
        "-A", "tests.apps.scenario", "call", "scenario.add", "--args", "[5, 5]", env=env
    )
    task_id = sent.stdout.strip()
    shown = taskmesh(
        "-A", "tests.apps.scenario", "result", task_id, "--wait", "--timeout", "30", env=env
    )
    assert json.loads(shown.stdout) == {"id": task_id, "state": "SUCCESS", "result": 10}
    sqlite_scenario.workers[0].terminate()
    taskmesh("-A", "tests.apps.scenario", "call", "scenario.add", "--args", "[1, 1]", env=env)
    purged = taskmesh("-A", "tests.apps.scenario", "purge", "-f", env=env)
    assert purged.returncode == 0
    assert f"{sqlite_scenario.queue}: 1 messages deleted" in purged.stdout


def test_call_with_arguments_that_are_not_json_says_so(sqlite_scenario: Scenario) -> None:
    done = taskmesh(
        "-A",
        "tests.apps.scenario",
        "call",
        "scenario.add",
        "--args",
        "[1, 2",
        env=sqlite_scenario.env(),
    )
    assert done.returncode == 2
    assert "--args is not JSON" in done.stderr


def test_app_module_that_fails_on_import_shows_the_users_own_frames(
    sqlite_scenario: Scenario,
) -> None:
    (sqlite_scenario.folder / "broken_app.py").write_text("value = 1 / 0\n")
    env = sqlite_scenario.env(PYTHONPATH=str(sqlite_scenario.folder))
    done = taskmesh("-A", "broken_app", "worker", env=env)
    assert done.returncode == 1
    assert "Importing 'broken_app' failed" in done.stderr
    assert "ZeroDivisionError" in done.stderr
    assert "importlib" not in done.stderr


@pytest.mark.redis
def test_worker_started_before_its_broker_waits_for_it(
    sqlite_scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.servers import RedisServer, free_port

    server = RedisServer(free_port(), tmp_path_factory.mktemp("late-redis"))
    url = f"{server.url}?retry_timeout=0"
    env = sqlite_scenario.env(TASKMESH_BROKER_URL=url, TASKMESH_RESULT_BACKEND=url)
    log = sqlite_scenario.folder / "late.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskmesh", "-A", "tests.apps.scenario", "worker", "-c", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        wait_until(lambda: "servers unreachable at start" in log.read_text(), 30, "the wait")
        assert worker.poll() is None
        server.start()
        wait_until(lambda: "worker ready" in log.read_text(), 30, "the worker to start")
        sqlite_scenario.broker_url = sqlite_scenario.backend_url = url
        assert sqlite_scenario.app.send_task("scenario.add", [2, 2]).get(timeout=30) == 4
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop()
