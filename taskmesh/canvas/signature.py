"""Signatures: a task call as data, and the base every canvas node shares.

A canvas is a tree of nodes: :class:`Signature` (one task call) at the leaves,
``Chain``, ``Group`` and ``Chord`` above them. Every node travels inside
messages as a JSON object (``docs/protocol.md``, section "Canvas"), so any
worker in any process can continue a workflow another one started.

Sending a node happens in three steps shared by all kinds:

1. ``clone`` it, so the caller's object is never changed by sending;
2. ``freeze`` it: give every task and group its id, and return the result
   handle, before anything is published;
3. ``build`` the envelopes of the tasks that run first, then publish them in one
   batch. Later steps ride along in the ``chain`` and ``chord`` options of
   those envelopes and are sent by the worker that finishes the step before.
"""

from __future__ import annotations

import abc
import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.result import AsyncResult, GroupResult

__all__ = ["Canvas", "Outcome", "Signature", "signature"]

# Send options that describe where a node sits in a workflow, as opposed to
# how its tasks are sent (queue, countdown...). They are never copied from a
# canvas to its members.
_WORKFLOW_OPTIONS = frozenset({"task_id", "group_id", "chain", "chord", "link", "link_error"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's end as the canvas sees it: an id, and the options it carried.

    A real task's outcome comes from its envelope; a virtual one stands for a
    result the canvas stores itself (a nested group's list of results, or a
    chord body that never ran because its header failed).

    Attributes:
        id: The task id whose result this is.
        task: The task's name, for logs.
        options: Its canvas options (``chain``, ``chord``, ``link``...).
        root_id: The first task of the workflow.
    """

    id: str
    task: str
    options: Mapping[str, Any] = field(default_factory=dict)
    root_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in a chord's join descriptor."""
        return {"id": self.id, "task": self.task, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root_id: str | None = None) -> Outcome:
        """Rebuild an outcome from :meth:`to_dict`'s form."""
        return cls(data["id"], data["task"], data.get("options", {}), root_id)

    @classmethod
    def of(cls, envelope: Envelope) -> Outcome:
        """Return the outcome of a real task message."""
        options = dict(envelope.options)
        if envelope.group_id is not None:
            options["group_id"] = envelope.group_id
        return cls(envelope.id, envelope.task, options, envelope.root_id)


class Canvas(abc.ABC):
    """A node of a workflow: a task call, a chain, a group or a chord.

    Args:
        options: Send options, applied to every task of the node that does
            not set its own (``queue``, ``countdown``, ``priority``...).
        app: The app that sends it.
    """

    kind: ClassVar[str] = ""
    _kinds: ClassVar[dict[str, type[Canvas]]] = {}

    def __init__(self, options: Mapping[str, Any] | None, app: TaskMesh | None) -> None:
        self.options: dict[str, Any] = dict(options or {})
        self.app = app

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The four kinds register themselves as their modules are imported;
        # importing any of taskmesh.canvas imports them all (__init__.py).
        if cls.kind:
            Canvas._kinds[cls.kind] = cls

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Canvas) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    # the JSON form -----------------------------------------------------------------

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages (``docs/protocol.md``)."""

    @classmethod
    @abc.abstractmethod
    def _from_data(cls, data: Mapping[str, Any], app: TaskMesh | None) -> Self:
        """Rebuild a node of this kind from :meth:`to_dict`'s form."""

    @staticmethod
    def from_dict(data: Mapping[str, Any], app: TaskMesh | None = None) -> Canvas:
        """Rebuild any node from its JSON form.

        Raises:
            ConfigurationError: The form names an unknown kind of node.
        """
        kind = data.get("kind", "signature")
        try:
            cls = Canvas._kinds[kind]
        except KeyError:
            raise ConfigurationError(
                f"Unknown canvas kind {kind!r}; known: {sorted(Canvas._kinds)}. Is the "
                "producer newer than this worker?"
            ) from None
        return cls._from_data(data, app)

    # options -------------------------------------------------------------------------

    def set(self, **options: Any) -> Self:
        """Add send options (``queue=``, ``countdown=`` ...); returns this node."""
        self.options.update(options)
        return self

    def clone(self) -> Self:
        """Return a deep copy that shares only the app."""
        return type(self)._from_data(copy.deepcopy(self.to_dict()), self.app)

    @abc.abstractmethod
    def link(self, callback: Canvas) -> Self:
        """Call ``callback`` with this node's result when it succeeds; returns this node."""

    @abc.abstractmethod
    def link_error(self, callback: Canvas) -> Self:
        """Call ``callback`` with the failed task's id if this node fails; returns this node."""

    def _spread(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Return send options for a member: the node's own, then the member's on top."""
        return {k: v for k, v in {**self.options, **options}.items() if k not in _WORKFLOW_OPTIONS}

    # sending -----------------------------------------------------------------------

    @abc.abstractmethod
    def freeze(self, app: TaskMesh) -> AsyncResult | GroupResult:
        """Give every task and group in this node an id (once) and return its result.

        Nothing is sent. Freezing twice returns handles on the same ids.
        """

    @abc.abstractmethod
    def build(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        continuation: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Return the envelopes to publish now to start this (frozen) node.

        Args:
            app: The app building the envelopes.
            args: Arguments put before the node's own (the previous step's result).
            kwargs: Keyword arguments merged into the node's own.
            continuation: Nodes, in JSON form, to run after this one with its result.
            extra: Envelope fields for every task (``parent_id``, ``root_id``).
        """

    @abc.abstractmethod
    def finals(self) -> list[Outcome]:
        """Return the outcomes that hold this node's result, once frozen."""

    @abc.abstractmethod
    def heads(self) -> list[Outcome]:
        """Return the outcomes of the tasks that would run first, once frozen.

        A chord whose header failed stores its error as if these had failed.
        """

    @abc.abstractmethod
    def mark_final(self, options: Mapping[str, Any]) -> None:
        """Add workflow options to the task(s) whose outcome is this node's result."""

    @abc.abstractmethod
    def then(self, continuation: Sequence[Mapping[str, Any]]) -> Canvas:
        """Return a copy that runs ``continuation`` (JSON forms) after itself, with its result."""

    def single(self) -> Canvas:
        """Return a node whose result is one value, for a place that needs one id.

        A group's members and a chord header's members each need one result;
        a group there collects its members' results into a list.
        """
        return self

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        link: Canvas | Sequence[Canvas] | None = None,
        link_error: Canvas | Sequence[Canvas] | None = None,
        **options: Any,
    ) -> Any:
        """Send the node; ``args`` go before the first tasks' own unless immutable.

        Args:
            args: Positional arguments for the first task(s).
            kwargs: Keyword arguments for the first task(s).
            link: Called with the node's result on success.
            link_error: Called with the failed task's id on failure.
            **options: Send options for every task that does not set its own.

        Returns:
            An :class:`AsyncResult`, or a :class:`GroupResult` for a group.

        Raises:
            ConfigurationError: The node has no app.
            EncodeError: An argument cannot be encoded (nothing is sent).
            BrokerUnavailable: The broker cannot be reached.
        """
        if self.app is None:
            raise ConfigurationError(
                f"{self!r} has no app: build signatures with task.s(...) or pass app=."
            )
        node = self.clone().set(**options)
        for callback in _as_list(link):
            node.link(callback)
        for callback in _as_list(link_error):
            node.link_error(callback)
        app = self.app
        result = node.freeze(app)
        app.publish(node.build(app, tuple(args), dict(kwargs or {}), [], {}))
        return result

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send the node with these extra arguments."""
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Send the node with these extra arguments, as :meth:`delay` does."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Canvas) -> Canvas:
        """``a | b`` is ``chain(a, b)``."""
        if not isinstance(other, Canvas):
            return NotImplemented
        data = {"kind": "chain", "steps": [self.to_dict(), other.to_dict()]}
        return Canvas.from_dict(data, self.app or other.app)


def _as_list(value: Canvas | Sequence[Canvas] | None) -> list[Canvas]:
    if value is None:
        return []
    if isinstance(value, Canvas):
        return [value]
    return list(value)


def encode_callbacks(callbacks: Any) -> list[dict[str, Any]] | None:
    """Turn a node, a list of nodes, or their JSON forms into a JSON list (``None`` stays)."""
    if callbacks is None:
        return None
    if isinstance(callbacks, (Canvas, Mapping)):
        callbacks = [callbacks]
    return [c.to_dict() if isinstance(c, Canvas) else dict(c) for c in callbacks]


class Signature(Canvas):
    """A task call described as data: name, arguments and options.

    Args:
        task: The task's registered name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        options: Send options (``queue``, ``countdown``, ``priority`` ...).
        immutable: Ignore the previous step's result in a chain or callback.
        app: The app that sends it.
    """

    kind = "signature"

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
        super().__init__(options, app)
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{'~' if self.immutable else ''}{self.task}({', '.join(parts)})"

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Self:
        """Return a deep copy, with ``args`` appended and ``kwargs`` merged in."""
        clone = super().clone()
        clone.args = (*clone.args, *args)
        clone.kwargs.update(kwargs or {})
        return clone

    @property
    def id(self) -> str | None:
        """The task id, once frozen or set with ``set(task_id=...)``."""
        value = self.options.get("task_id")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages."""
        data: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": self.kwargs}
        if self.options:
            data["options"] = self.options
        if self.immutable:
            data["immutable"] = True
        return data

    @classmethod
    def _from_data(cls, data: Mapping[str, Any], app: TaskMesh | None) -> Self:
        return cls(
            data["task"],
            data.get("args", ()),
            data.get("kwargs", {}),
            options=data.get("options", {}),
            immutable=data.get("immutable", False),
            app=app,
        )

    def link(self, callback: Canvas) -> Self:
        """Call ``callback`` with this task's return value when it succeeds."""
        self.options.setdefault("link", []).append(callback.to_dict())
        return self

    def link_error(self, callback: Canvas) -> Self:
        """Call ``callback`` with this task's id if it fails for good."""
        self.options.setdefault("link_error", []).append(callback.to_dict())
        return self

    def freeze(self, app: TaskMesh) -> AsyncResult:
        """Give the task its id (once) and return a handle on its result."""
        from taskmesh.result import AsyncResult

        task_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(task_id, app)

    def build(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        continuation: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Return this task's envelope, with ``continuation`` in its ``chain`` option."""
        call_args = self.args if self.immutable else (*args, *self.args)
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **kwargs}
        options = {**extra, **self.options}
        if continuation:
            options["chain"] = [*options.get("chain", ()), *continuation]
        return [app.build_envelope(self.task, call_args, call_kwargs, **options)]

    def finals(self) -> list[Outcome]:
        """Return this task's outcome, or that of the last step chained after it."""
        steps = self.options.get("chain")
        if steps:
            return Canvas.from_dict(steps[-1], self.app).finals()
        return [self._outcome()]

    def heads(self) -> list[Outcome]:
        """Return this task's outcome: it runs first."""
        return [self._outcome()]

    def mark_final(self, options: Mapping[str, Any]) -> None:
        """Add ``options`` to this task, or to the last step chained after it."""
        steps = self.options.get("chain")
        if steps:
            last = Canvas.from_dict(steps[-1], self.app)
            last.mark_final(options)
            steps[-1] = last.to_dict()
        else:
            self.options.update(options)

    def then(self, continuation: Sequence[Mapping[str, Any]]) -> Signature:
        """Return a copy whose ``chain`` option runs ``continuation`` after this task."""
        clone = self.clone()
        if continuation:
            clone.options["chain"] = [*clone.options.get("chain", ()), *continuation]
        return clone

    def _outcome(self) -> Outcome:
        if self.id is None:
            raise ConfigurationError(f"Signature {self!r} has no id yet: freeze it first.")
        return Outcome(self.id, self.task, self.options)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        link: Canvas | Sequence[Canvas] | None = None,
        link_error: Canvas | Sequence[Canvas] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task; ``args`` go before the signature's own unless immutable.

        Options are those of ``Task.apply_async``.

        Returns:
            A handle on the task's result.
        """
        result: AsyncResult = super().apply_async(
            args, kwargs, link=link, link_error=link_error, **options
        )
        return result


def signature(
    task: str | Mapping[str, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: TaskMesh | None = None,
) -> Canvas:
    """Return a signature of the task named ``task``, or rebuild a node from its JSON form."""
    if isinstance(task, Mapping):
        return Canvas.from_dict(task, app)
    return Signature(task, args, kwargs, options=options, immutable=immutable, app=app)
