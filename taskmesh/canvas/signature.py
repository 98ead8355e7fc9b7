"""Signatures: a task name with arguments and send options, as data.

A signature travels inside messages as a JSON object (``docs/protocol.md``), so
any worker in any process can send it later.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.result import AsyncResult

__all__ = ["Signature", "signature"]


class Signature:
    """A task call described as data: name, arguments and options.

    Args:
        task: The task's registered name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        options: Send options (``queue``, ``countdown``, ``priority`` ...).
        immutable: Ignore the previous step's result in a chain or callback.
        app: The app that sends it.
    """

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
        app: TaskMesh | None = None,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self.app = app

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.to_dict() == self.to_dict()

    def set(self, **options: Any) -> Signature:
        """Add send options (``queue=``, ``countdown=`` ...); returns this signature."""
        self.options.update(options)
        return self

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Signature:
        """Return a copy with ``args`` prepended-after and ``kwargs`` merged in."""
        clone = Signature(
            self.task,
            (*self.args, *args),
            {**self.kwargs, **(kwargs or {})},
            options=copy.deepcopy(self.options),
            immutable=self.immutable,
            app=self.app,
        )
        return clone

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages."""
        data: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": self.kwargs}
        if self.options:
            data["options"] = self.options
        if self.immutable:
            data["immutable"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: TaskMesh | None = None) -> Signature:
        """Rebuild a signature from :meth:`to_dict`'s form."""
        return cls(
            data["task"],
            data.get("args", ()),
            data.get("kwargs", {}),
            options=data.get("options", {}),
            immutable=data.get("immutable", False),
            app=app,
        )

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task; ``args`` go before the signature's own unless immutable."""
        if self.app is None:
            raise ConfigurationError(
                f"Signature {self!r} has no app: build it with task.s(...) or pass app=."
            )
        call_args = self.args if self.immutable else (*args, *self.args)
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        merged = {**self.options, **options}
        return self.app.send_task(self.task, call_args, call_kwargs, **merged)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the task with extra arguments."""
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the task with extra arguments, as :meth:`delay` does."""
        return self.apply_async(args, kwargs)


def signature(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: TaskMesh | None = None,
) -> Signature:
    """Return a signature of the task named ``task``."""
    return Signature(task, args, kwargs, options=options, immutable=immutable, app=app)
