"""``map``, ``starmap`` and ``chunks``: many calls of one task in few messages.

``task.map(items)`` sends one message whose worker calls the task once per
item and returns the list of results; ``task.starmap(pairs)`` unpacks each
item as the arguments. ``task.chunks(pairs, n)`` splits the pairs into
``starmap`` messages of ``n`` and groups them, so its result is a list of lists.

The message names the task itself, with a ``map`` option (``"map"`` or
``"starmap"``), so no extra task has to be registered in any worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from taskmesh.canvas.group import Group
from taskmesh.canvas.signature import Signature
from taskmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.task import Task

__all__ = ["call", "chunks", "is_mapped", "mapped"]

_MODES = ("map", "starmap")


def mapped(task: str, items: Iterable[Any], mode: str, app: TaskMesh | None) -> Signature:
    """Return an immutable signature calling ``task`` once per item in one message.

    Immutable: in a chain it ignores the previous result, since its argument is
    the list of items.

    Raises:
        ConfigurationError: ``mode`` is not ``map`` or ``starmap``.
    """
    if mode not in _MODES:
        raise ConfigurationError(f"map mode must be one of {_MODES}, got {mode!r}.")
    return Signature(task, [list(items)], options={"map": mode}, immutable=True, app=app)


def chunks(task: str, items: Iterable[Any], size: int, app: TaskMesh | None) -> Group:
    """Return a group of ``starmap`` signatures of ``size`` items each.

    Raises:
        ConfigurationError: ``size`` is not a positive integer.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigurationError(f"chunks size must be a positive integer, got {size!r}.")
    iterator = iter(items)
    parts: list[Signature] = []
    while batch := list(islice(iterator, size)):
        parts.append(mapped(task, [list(item) for item in batch], "starmap", app))
    return Group(parts, app=app)


def is_mapped(envelope: Envelope) -> bool:
    """Whether the envelope is a ``map``/``starmap`` message."""
    return envelope.options.get("map") in _MODES


def call(task: Task[Any, Any], envelope: Envelope) -> Any:
    """Run the envelope's task: once, or once per item of a mapped message.

    Raises:
        TypeError: A mapped message's argument is not a list of items.
        Exception: Whatever the task raises.
    """
    if not is_mapped(envelope):
        return task(*envelope.args, **envelope.kwargs)
    if len(envelope.args) != 1 or not isinstance(envelope.args[0], list):
        raise TypeError(
            f"A {envelope.options['map']} message for {task.name} takes one list of items, "
            f"got arguments {list(envelope.args)!r}."
        )
    items: list[Any] = envelope.args[0]
    kwargs: Mapping[str, Any] = envelope.kwargs
    if envelope.options["map"] == "starmap":
        return [task(*item, **kwargs) for item in items]
    return [task(item, **kwargs) for item in items]
