"""Chords: a group (the header), then one body called with the list of its results.

The join needs no coordinator and no polling task. Every header member's
final task carries a ``chord`` option naming the group, its size and the body.
When such a task succeeds, the worker adds the task id to a set in the result
store (``add_member``: idempotent, so a redelivered or retried task counts
once); the call that sees the set complete then ``claim``s the join, and only
the winner of that claim sends the body. A header task that fails for good
claims the same key, so the chord fails exactly once, with a ``ChordError`` in
the body's result, and the body never runs.

If the broker refuses the body, the claim is given back and the error
propagates, so the header task's message runs again and joins once more.

Limitations:
    A worker killed between winning the claim and publishing the body leaves
    the chord PENDING: the redelivered header task finds the claim taken.
    The window is one publish long (issue #4). A header task whose message is
    dead-lettered or expires in the consumer, without running, does not fail
    its chord yet: the consumer does not call the canvas on those paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from taskmesh.canvas.group import Group
from taskmesh.canvas.signature import Canvas, Outcome
from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.result import AsyncResult, GroupResult

__all__ = ["Chord", "chord"]


class Chord(Canvas):
    """A header group whose results, in order, are the body's first argument.

    Build one with :func:`chord`. Its result is the body's result.

    Args:
        header: The header: a group, or the members of one.
        body: Called with the list of the header's results; ``None`` until
            given by calling the chord (``chord(header)(body)``).
        options: Send options for every task that does not set its own.
        app: The app that sends it.
    """

    kind = "chord"

    def __init__(
        self,
        header: Group | Iterable[Canvas],
        body: Canvas | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        app: TaskMesh | None = None,
    ) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = body
        found = app or self.header.app or (body.app if body is not None else None)
        super().__init__(options, found)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "header": self.header.to_dict(),
            "body": None if self.body is None else self.body.to_dict(),
        }
        if self.options:
            data["options"] = self.options
        return data

    @classmethod
    def _from_data(cls, data: Mapping[str, Any], app: TaskMesh | None) -> Self:
        header = Canvas.from_dict(data["header"], app)
        body = data.get("body")
        return cls(
            header if isinstance(header, Group) else Group([header]),
            None if body is None else Canvas.from_dict(body, app),
            options=data.get("options"),
            app=app,
        )

    def _body(self) -> Canvas:
        if self.body is None:
            raise ConfigurationError(
                f"Chord {self!r} has no body: call it with one, chord(header)(body), "
                "or pass it, chord(header, body)."
            )
        return self.body

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chord(header)(body)`` sends the chord with that body; else as :meth:`delay`."""
        if self.body is None and len(args) == 1 and isinstance(args[0], Canvas):
            return Chord(self.header, args[0], options=self.options, app=self.app).apply_async(
                **kwargs
            )
        return self.apply_async(args, kwargs)

    def single(self) -> Chord:
        """Return a chord whose body yields one value."""
        return Chord(self.header, self._body().single(), options=self.options, app=self.app)

    def link(self, callback: Canvas) -> Self:
        """Call ``callback`` with the body's result when it succeeds."""
        self._body().link(callback)
        return self

    def link_error(self, callback: Canvas) -> Self:
        """Call ``callback`` once if the body fails or the header fails for good."""
        self._body().link_error(callback)
        return self

    def freeze(self, app: TaskMesh) -> AsyncResult | GroupResult:
        """Freeze header and body; return the body's result, its parent the header's."""
        body = self._body()
        body.set(**self._spread(body.options))
        header = self.header.freeze(app)
        result = body.freeze(app)
        root = result
        while root.parent is not None:
            root = root.parent
        root.parent = header
        return result

    def build(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        continuation: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Build the header's envelopes; the body rides in their ``chord`` option.

        ``args`` go to every header member. An empty header calls the body at once
        with ``[]``.
        """
        body = self._body().then(continuation)
        header = self.header.clone().set(**self._spread(self.header.options))
        return header.build_members(app, args, kwargs, {"body": body.to_dict()}, extra)

    def then(self, continuation: Sequence[Mapping[str, Any]]) -> Chord:
        """Return a copy whose body runs ``continuation`` after itself."""
        body = self._body().then(continuation)
        return Chord(self.header.clone(), body, options=self.options, app=self.app)

    def finals(self) -> list[Outcome]:
        """Return the body's final outcomes."""
        return self._body().finals()

    def heads(self) -> list[Outcome]:
        """Return the body's first outcomes: they fail in its place if the header does."""
        return self._body().heads()

    def mark_final(self, options: Mapping[str, Any]) -> None:
        """Add ``options`` to the body's final task(s)."""
        self._body().mark_final(options)


def chord(
    header: Group | Iterable[Canvas], body: Canvas | None = None, *, app: TaskMesh | None = None
) -> Chord:
    """Return a chord: ``chord(header, body)()`` or ``chord(header)(body)``.

    The body runs exactly once, after every header task succeeded, with the list
    of their results in header order. If a header task fails for good, the body
    does not run and the chord's result is a ``ChordError`` naming that task.
    """
    return Chord(header, body, app=app)
