"""The exception tree: one root, drawn in errors.py's docstring, picklable."""

from __future__ import annotations

import builtins
import inspect
import pickle
import re

import pytest

import taskmesh.errors as errors

PUBLIC = [
    obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and name in errors.__all__
]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_public_exception_descends_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, errors.TaskmeshError)


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_public_exception_is_drawn_in_the_tree(cls: type[BaseException]) -> None:
    tree = (errors.__doc__ or "").split("The tree::", 1)[1]
    assert re.search(rf"[─ ]{cls.__name__}\b", tree), f"{cls.__name__} is not in the tree"


def test_builtins_callers_expect_are_inherited() -> None:
    assert issubclass(errors.NotRegistered, LookupError)
    assert issubclass(errors.TimeoutError, builtins.TimeoutError)


@pytest.mark.parametrize(
    "exc",
    [
        errors.BrokerUnavailable("down", "redis://u:***@h/0"),
        errors.TaskError("boom", "mod.Err", "tb", "id-1", "proj.add"),
        errors.NotRegistered("no task", task_name="proj.x"),
        errors.Retry("again", ValueError("x"), 1.5),
        errors.Reject("bad", requeue=True),
    ],
)
def test_exceptions_survive_pickling_with_their_fields(exc: BaseException) -> None:
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert str(clone) == str(exc)
    assert vars(clone).keys() == vars(exc).keys()


def test_signals_are_not_task_errors() -> None:
    for cls in (errors.Retry, errors.Reject, errors.Ignore):
        assert issubclass(cls, errors.TaskSignal)
        assert not issubclass(cls, errors.TaskError)
