"""The ``taskmesh`` command, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT, Scenario

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
