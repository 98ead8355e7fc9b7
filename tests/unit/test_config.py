"""Settings: defaults, sources and their order, validation, finalizing."""

from __future__ import annotations

import datetime
import types

import pytest

from taskmesh import TaskMesh
from taskmesh.config import Config
from taskmesh.errors import ConfigurationError


def test_defaults_use_the_embedded_sqlite_file() -> None:
    app = TaskMesh()
    assert app.conf.broker_url == "sqlite:///taskmesh.db"
    assert app.result_url == "sqlite:///taskmesh.db"


def test_keyword_arguments_and_attribute_assignment() -> None:
    app = TaskMesh("proj", broker="memory://", backend="memory://x", task_default_queue="jobs")
    assert app.conf.result_backend == "memory://x"
    app.conf.task_default_queue = "other"
    assert app.conf["task_default_queue"] == "other"


def test_config_from_module_reads_lower_case_settings_and_skips_imports() -> None:
    module = types.ModuleType("proj_settings")
    module.broker_url = "memory://"  # type: ignore[attr-defined]
    module.result_expires = 60  # type: ignore[attr-defined]
    module.datetime = datetime  # type: ignore[attr-defined]
    module.HELPER_CONSTANT = 3  # type: ignore[attr-defined]
    app = TaskMesh()
    app.config_from_object(module)
    assert app.conf.broker_url == "memory://"
    assert app.conf.result_expires == 60.0


def test_config_from_dotted_path_that_does_not_exist_says_which() -> None:
    with pytest.raises(ConfigurationError, match="no_such_settings_module"):
        TaskMesh().config_from_object("no_such_settings_module")


def test_unknown_setting_suggests_the_nearest() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'broker_url'"):
        TaskMesh(broker_ur="memory://")


def test_ill_typed_setting_is_refused_when_set() -> None:
    app = TaskMesh()
    with pytest.raises(ConfigurationError, match="result_expires"):
        app.conf.result_expires = "a day"
    with pytest.raises(ConfigurationError, match="worker_pool"):
        app.conf.worker_pool = "gevent"


def test_environment_overrides_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMESH_BROKER_URL", "memory://from-env")
    monkeypatch.setenv("TASKMESH_RESULT_EXPIRES", "90")
    app = TaskMesh(broker="memory://from-code")
    assert app.conf.broker_url == "memory://from-env"
    assert app.conf.result_expires == 90.0


def test_ill_typed_environment_variable_fails_at_finalize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMESH_WORKER_PREFETCH_MULTIPLIER", "many")
    with pytest.raises(ConfigurationError, match="TASKMESH_WORKER_PREFETCH_MULTIPLIER"):
        TaskMesh().finalize()


def test_finalized_settings_are_read_only() -> None:
    app = TaskMesh(broker="memory://")
    app.finalize()
    with pytest.raises(ConfigurationError, match="finalized"):
        app.conf.broker_url = "memory://other"


def test_finalized_settings_read_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMESH_RESULT_EXPIRES", "90")
    app = TaskMesh(broker="memory://")
    app.finalize()
    monkeypatch.setenv("TASKMESH_RESULT_EXPIRES", "120")
    assert app.conf.result_expires == 90.0
    assert TaskMesh(broker="memory://").conf.result_expires == 120.0


def test_timedelta_is_accepted_for_seconds() -> None:
    conf = Config({"result_expires": datetime.timedelta(hours=1)})
    assert conf.result_expires == 3600.0


def test_lists_accept_comma_separated_strings() -> None:
    conf = Config({"accept_content": "json, pickle"})
    assert conf.accept_content == ["json", "pickle"]


def test_broker_without_results_and_no_backend_says_what_to_set() -> None:
    app = TaskMesh(broker="amqp://guest:secret@127.0.0.1:5672//")
    with pytest.raises(ConfigurationError, match="set result_backend") as info:
        app.result_url  # noqa: B018 - the property raises
    assert "secret" not in str(info.value)
    app.conf.result_backend = "memory://"
    assert app.result_url == "memory://"
