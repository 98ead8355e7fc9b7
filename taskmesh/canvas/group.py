"""Groups: tasks run in parallel, their results gathered in order.

A group publishes all its members in one batch and stores the ordered list of
their result ids under its own id, so :meth:`GroupResult.restore` can gather
them from any process.

Where a group must yield one value (it is a member of another group, or of a
chord's header, or is followed by more steps in a chord body), it *collects*:
its members join like a chord header whose body, instead of a task, stores the
list of results under the group's own task id. No extra message is sent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from taskmesh.canvas import callbacks
from taskmesh.canvas.signature import Canvas, Outcome

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.result import AsyncResult, GroupResult

__all__ = ["Group", "group"]

logger = logging.getLogger(__name__)

_COLLECTOR = "taskmesh.group"


class Group(Canvas):
    """Members run in parallel; build one with :func:`group`.

    Args:
        tasks: The members. A member that is itself a group collects its
            results into one list.
        options: Send options for every member that does not set its own.
        id: The group id; given when frozen.
        collect: Yield one list result under ``options["task_id"]``.
        app: The app that sends it; taken from the first member when omitted.
    """

    kind = "group"

    def __init__(
        self,
        tasks: Iterable[Canvas],
        *,
        options: Mapping[str, Any] | None = None,
        id: str | None = None,
        collect: bool = False,
        app: TaskMesh | None = None,
    ) -> None:
        members = [task.single() for task in tasks]
        super().__init__(options, app or next((m.app for m in members if m.app), None))
        self.tasks = members
        self.id = id
        self.collect = collect

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(task) for task in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form carried in messages."""
        data: dict[str, Any] = {"kind": self.kind, "tasks": [t.to_dict() for t in self.tasks]}
        if self.id is not None:
            data["id"] = self.id
        if self.collect:
            data["collect"] = True
        if self.options:
            data["options"] = self.options
        return data

    @classmethod
    def _from_data(cls, data: Mapping[str, Any], app: TaskMesh | None) -> Self:
        return cls(
            [Canvas.from_dict(task, app) for task in data.get("tasks", ())],
            options=data.get("options"),
            id=data.get("id"),
            collect=data.get("collect", False),
            app=app,
        )

    def single(self) -> Group:
        """Return a collecting copy: its result is the list of its members' results."""
        if self.collect:
            return self
        clone = self.clone()
        clone.collect = True
        return clone

    def link(self, callback: Canvas) -> Self:
        """Call ``callback`` with each member's result (with the list, if collecting)."""
        if self.collect:
            self.options.setdefault("link", []).append(callback.to_dict())
        else:
            for task in self.tasks:
                task.link(callback)
        return self

    def link_error(self, callback: Canvas) -> Self:
        """Call ``callback`` for each member that fails (once, if collecting)."""
        if self.collect:
            self.options.setdefault("link_error", []).append(callback.to_dict())
        else:
            for task in self.tasks:
                task.link_error(callback)
        return self

    def freeze(self, app: TaskMesh) -> AsyncResult | GroupResult:
        """Give the group and its members ids; return a :class:`GroupResult`.

        A collecting group returns the :class:`AsyncResult` of its list instead.
        """
        from taskmesh.result import AsyncResult, GroupResult

        if self.id is None:
            self.id = str(uuid.uuid4())
        results = [task.freeze(app) for task in self.tasks]
        if self.collect:
            return AsyncResult(self.options.setdefault("task_id", str(uuid.uuid4())), app)
        return GroupResult(self.id, results, app)

    def then(self, continuation: Sequence[Mapping[str, Any]]) -> Group:
        """Return a collecting copy that runs ``continuation`` with the list of results."""
        clone = self.single()
        if clone is self:
            clone = self.clone()
        if continuation:
            clone.options["chain"] = [*clone.options.get("chain", ()), *continuation]
        return clone

    def build(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        continuation: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Build every member's envelopes, after storing the group's member list."""
        if continuation:
            node = self.then(continuation)
            node.freeze(app)
            return node.build(app, args, kwargs, [], extra)
        descriptor = None
        if self.collect:
            descriptor = {"body": None, "collect": self._collector().to_dict()}
        return self.build_members(app, args, kwargs, descriptor, extra)

    def build_members(
        self,
        app: TaskMesh,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        descriptor: Mapping[str, Any] | None,
        extra: Mapping[str, Any],
    ) -> list[Envelope]:
        """Store the member list, then build the members' envelopes.

        Args:
            app: The app building the envelopes.
            args: Arguments put before each member's own.
            kwargs: Keyword arguments merged into each member's own.
            descriptor: The join (``body`` or ``collect``) the members count
                into, or ``None`` for a plain group.
            extra: Envelope fields for every task.
        """
        from taskmesh.result import GroupResult

        if self.id is None:
            self.freeze(app)
        group_id = str(self.id)
        ids = [task.finals()[0].id for task in self.tasks]
        GroupResult(group_id, [app.AsyncResult(task_id) for task_id in ids], app).save()
        if descriptor is not None and not self.tasks:
            return callbacks.join_empty(app, descriptor, extra)
        marker: dict[str, Any] = {"group_id": group_id}
        if descriptor is not None:
            marker["chord"] = {"group_id": group_id, "size": len(self.tasks), **descriptor}
        envelopes: list[Envelope] = []
        for task in self.tasks:
            member = task.clone().set(**self._spread(task.options))
            member.mark_final(marker)
            envelopes.extend(member.build(app, args, kwargs, [], extra))
        logger.debug("group built id=%s size=%d", group_id, len(self.tasks))
        return envelopes

    def _collector(self) -> Outcome:
        options = {k: v for k, v in self.options.items() if k != "task_id"}
        return Outcome(str(self.options["task_id"]), _COLLECTOR, options)

    def finals(self) -> list[Outcome]:
        """Return the collected list's outcome, or every member's final outcomes."""
        if self.collect:
            steps = self.options.get("chain")
            if steps:
                return Canvas.from_dict(steps[-1], self.app).finals()
            return [self._collector()]
        return [outcome for task in self.tasks for outcome in task.finals()]

    def heads(self) -> list[Outcome]:
        """Return the collected list's outcome, or every member's first outcomes."""
        if self.collect:
            return [self._collector()]
        return [outcome for task in self.tasks for outcome in task.heads()]

    def mark_final(self, options: Mapping[str, Any]) -> None:
        """Add ``options`` to the collected list's outcome, or to every member."""
        if self.collect:
            steps = self.options.get("chain")
            if steps:
                last = Canvas.from_dict(steps[-1], self.app)
                last.mark_final(options)
                steps[-1] = last.to_dict()
            else:
                self.options.update(options)
        else:
            for task in self.tasks:
                task.mark_final(options)


def group(*tasks: Canvas | Iterable[Canvas], app: TaskMesh | None = None) -> Group:
    """Return a group: ``group(add.s(i, i) for i in range(10))`` or ``group(a, b)``.

    Applying it returns a :class:`GroupResult` whose ``get()`` lists the
    members' results in order. An empty group returns ``[]``.
    """
    members: list[Canvas] = []
    for task in tasks:
        members.extend([task] if isinstance(task, Canvas) else task)
    return Group(members, app=app)
