"""``taskmesh beat`` and ``worker --beat`` on the command line, without starting a loop."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from taskmesh.cli import main


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TASKMESH_BROKER_URL", "memory://beat-cli")
    monkeypatch.setenv("TASKMESH_TIMEZONE", "Europe/Berlin")
    return CliRunner()


def test_list_prints_every_entry_with_the_asked_number_of_runs(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = {
        "nightly": {"task": "beat.tick", "schedule": "@daily"},
        "often": {"task": "beat.tick", "schedule": 90},
    }
    monkeypatch.setenv("TASKMESH_BEAT_SCHEDULE", json.dumps(schedule))
    result = runner.invoke(main, ["-A", "tests.apps.beat_app", "beat", "--list", "--count", "4"])
    assert result.exit_code == 0, result.output
    nightly, often = result.output.splitlines()
    assert nightly.startswith("nightly: beat.tick <Crontab '0 0 * * *'> next: ")
    assert nightly.count("T00:00:00+01:00") == 4
    assert often.startswith("often: beat.tick <Interval every 90 s> next: ")
    assert often.count(", ") == 3


@pytest.mark.parametrize("command", [["beat"], ["beat", "--list"], ["worker", "--beat"]])
def test_an_invalid_entry_is_reported_before_anything_starts(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    schedule = {"broken": {"task": "beat.tick", "schedule": "61 * * * *"}}
    monkeypatch.setenv("TASKMESH_BEAT_SCHEDULE", json.dumps(schedule))
    result = runner.invoke(main, ["-A", "tests.apps.beat_app", *command])
    assert result.exit_code == 1
    assert "Invalid cron expression '61 * * * *'" in result.output
