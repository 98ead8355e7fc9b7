"""Chains: steps run one after another, each result the first argument of the next.

Only the first step is published. Its message carries the remaining steps in
the ``chain`` option; the worker that finishes a step publishes the next with
the rest, so a chain needs no coordinator and survives any one worker.

A group followed by another step becomes a chord: the step receives the list of
the group's results. A chain stops at its first final failure: the steps after
it are never published and stay PENDING, except the last, which stores a copy
of the failure so that waiting on the chain's result raises it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from taskmesh.canvas.chord import Chord
from taskmesh.canvas.group import Group
from taskmesh.canvas.signature import Canvas, Outcome
from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.result import AsyncResult, GroupResult

__all__ = ["Chain", "chain"]


class Chain(Canvas):
    """Steps run in order; build one with :func:`chain` or ``a | b``.

    Args:
        steps: The steps; nested chains are flattened.
        options: Send options for every step that does not set its own.
        app: The app that sends it; taken from the first step when omitted.
    """

    kind = "chain"

    steps: list[Canvas]

    def __init__(
        self,
        steps: Iterable[Canvas],
        *,
        options: Mapping[str, Any] | None = None,
        app: TaskMesh | None = None,
    ) -> None:
        flat: list[Canvas] = []
        for step in steps:
            if isinstance(step, Chain) and not step.options:
                flat.extend(step.steps)
            else:
                flat.append(step)
        super().__init__(options, app or next((s.app for s in flat if s.app), None))
        self.steps = flat

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.steps) or "chain()"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages."""
        data: dict[str, Any] = {"kind": self.kind, "steps": [s.to_dict() for s in self.steps]}
        if self.options:
            data["options"] = self.options
        return data

    @classmethod
    def _from_data(cls, data: Mapping[str, Any], app: TaskMesh | None) -> Self:
        steps = [Canvas.from_dict(step, app) for step in data.get("steps", ())]
        return cls(steps, options=data.get("options"), app=app)

    def link(self, callback: Canvas) -> Self:
        """Call ``callback`` with the last step's result when the chain succeeds."""
        if self.steps:
            self.steps[-1].link(callback)
        return self

    def link_error(self, callback: Canvas) -> Self:
        """Call ``callback`` once, with the failed task's id, if any step fails.

        Every step carries it; a chain stops at its first failure, so it runs once.
        """
        for step in self.steps:
            step.link_error(callback)
        return self

    def _normalized(self) -> list[Canvas]:
        """Return the steps ready to send: send options spread, groups joined to the next."""
        steps: list[Canvas] = []
        for step in self.steps:
            step = step.clone().set(**self._spread(step.options))
            previous = steps[-1] if steps else None
            if isinstance(previous, Group):
                steps.pop()
                step = Chord(previous, step, app=self.app)
            steps.append(step)
        return steps

    def freeze(self, app: TaskMesh) -> AsyncResult | GroupResult:
        """Freeze every step; return the last step's result, ``.parent`` linking back."""
        if not self.steps:
            raise ConfigurationError("An empty chain has no result: give it at least one step.")
        self.steps = self._normalized()
        self.options = {}
        previous: AsyncResult | GroupResult | None = None
        for step in self.steps:
            result = step.freeze(app)
            _root(result).parent = previous
            previous = result
        if previous is None:
            raise ConfigurationError("An empty chain has no result.")
        return previous

    def build(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        continuation: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Build the first step's envelopes; the rest ride in their ``chain`` option."""
        first, *rest = self._normalized()
        later = [step.to_dict() for step in rest]
        return first.build(app, args, kwargs, [*later, *continuation], extra)

    def then(self, continuation: Sequence[Mapping[str, Any]]) -> Chain:
        """Return this chain with ``continuation`` appended as further steps."""
        more = [Canvas.from_dict(step, self.app) for step in continuation]
        return Chain([*self._normalized(), *more], app=self.app)

    def single(self) -> Chain:
        """Return a chain whose last step yields one value."""
        if not self.steps:
            return self
        return Chain(
            [*self.steps[:-1], self.steps[-1].single()], options=self.options, app=self.app
        )

    def finals(self) -> list[Outcome]:
        """Return the outcomes of the last step."""
        return self.steps[-1].finals() if self.steps else []

    def heads(self) -> list[Outcome]:
        """Return the outcomes of the first step, carrying the rest as its continuation."""
        if not self.steps:
            return []
        first, *rest = self._normalized()
        return first.then([s.to_dict() for s in rest]).heads()

    def mark_final(self, options: Mapping[str, Any]) -> None:
        """Add ``options`` to the last step."""
        if self.steps:
            self.steps[-1].mark_final(options)


def _root(result: AsyncResult | GroupResult) -> AsyncResult | GroupResult:
    """Return the earliest result of a step, whose ``parent`` is the step before."""
    while result.parent is not None:
        result = result.parent
    return result


def chain(*steps: Canvas | Iterable[Canvas], app: TaskMesh | None = None) -> Chain:
    """Return a chain of ``steps``: ``chain(a.s(), b.s(), c.s())`` or ``chain([a, b])``.

    Each step gets the previous step's result as its first argument, unless it
    is immutable (``task.si(...)``). ``chain(...)()`` returns the last step's
    result; its ``.parent`` is the step before, back to the first.
    """
    flat: list[Canvas] = []
    for step in steps:
        flat.extend([step] if isinstance(step, Canvas) else step)
    return Chain(flat, app=app)
