"""The chord join in the result store: counting members, claiming, gathering.

Keys, all with the app's ``result_expires``:

- ``chord:<group id>:members``: the set of header task ids that succeeded
  (``add_member``, so a task counted twice still counts once);
- ``chord:<group id>:done``: created once (``claim``) by whoever completes or
  fails the chord; no one else sends the body or stores its error;
- ``group:<group id>``: the ordered member result ids (``GroupResult.save``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskmesh.canvas.signature import Outcome
from taskmesh.errors import ChordError
from taskmesh.result import GroupResult, State, TaskRecord, task_key

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh

__all__ = [
    "chord_error",
    "claim",
    "count_member",
    "gather",
    "release",
    "store_copy",
    "store_value",
]

logger = logging.getLogger(__name__)


def count_member(app: TaskMesh, chord: Mapping[str, Any], member_id: str) -> bool:
    """Count a succeeded header member; return whether this call must send the body.

    True for exactly one caller: the one whose member completed the set and
    who then won the claim. A member counted again (redelivered, or run twice)
    does not grow the set.
    """
    group_id = chord["group_id"]
    store = app.result_store()
    expires = app.conf.result_expires
    count = store.add_member(f"chord:{group_id}:members", member_id, expires_seconds=expires)
    logger.debug(
        "chord member counted group_id=%s id=%s count=%d size=%d",
        group_id,
        member_id,
        count,
        chord["size"],
    )
    return count >= int(chord["size"]) and claim(app, chord)


def claim(app: TaskMesh, chord: Mapping[str, Any]) -> bool:
    """Claim the chord's outcome; return whether this call won it."""
    key = f"chord:{chord['group_id']}:done"
    return app.result_store().claim(key, expires_seconds=app.conf.result_expires)


def release(app: TaskMesh, chord: Mapping[str, Any]) -> None:
    """Undo a won claim whose body could not be sent, so a redelivery can claim again."""
    app.result_store().delete(f"chord:{chord['group_id']}:done")


def gather(app: TaskMesh, group_id: str) -> list[Any]:
    """Return the results of a group's members, in order, in one read.

    A member without a stored success (``ignore_result=True``) gives ``None``.
    """
    restored = GroupResult.restore(group_id, app)
    if restored is None:
        return []
    ids = [result.id for result in restored.results]
    raws = app.result_store().get_many([task_key(task_id) for task_id in ids])
    values: list[Any] = []
    for raw in raws:
        record = TaskRecord.from_bytes(raw) if raw is not None else None
        values.append(record.result if record and record.state is State.SUCCESS else None)
    return values


def store_value(app: TaskMesh, outcome: Outcome, value: Any) -> None:
    """Store ``value`` as the successful result of a virtual task (a collected list)."""
    record = TaskRecord(
        outcome.id, State.SUCCESS, result=value, name=outcome.task, date_done=time.time()
    )
    _put(app, record)


def store_copy(app: TaskMesh, source_id: str, target: Outcome) -> None:
    """Store the failure recorded for ``source_id`` again under ``target``'s id.

    The last step of a chain that stopped holds the failure this way, so
    waiting on the chain's result raises what the failed step raised.
    """
    raw = app.result_store().get(task_key(source_id))
    if raw is None:
        return
    record = TaskRecord.from_bytes(raw)
    _put(app, dataclasses.replace(record, task_id=target.id, name=target.task))


def chord_error(app: TaskMesh, group_id: str, failed: Outcome, target: Outcome) -> None:
    """Store a :class:`ChordError` naming ``failed`` as ``target``'s failure."""
    raw = app.result_store().get(task_key(failed.id))
    cause = TaskRecord.from_bytes(raw) if raw is not None else None
    reason = f"{cause.exc_type}: {cause.result}" if cause is not None else "unknown error"
    message = (
        f"Chord {group_id} did not run its body: header task {failed.task} "
        f"(id {failed.id}) failed with {reason}."
    )
    # Stored, not raised: rebuild_exception() turns exc_args back into a
    # ChordError whose task_id and task_name name the failed header task.
    record = TaskRecord(
        target.id,
        State.FAILURE,
        result=message,
        name=target.task,
        exc_type=f"{ChordError.__module__}.{ChordError.__qualname__}",
        exc_args=[message, "", "", failed.id, failed.task],
        traceback=cause.traceback if cause is not None else None,
        date_done=time.time(),
    )
    _put(app, record)


def _put(app: TaskMesh, record: TaskRecord) -> None:
    app.result_store().set(
        task_key(record.task_id),
        record.to_bytes(),
        expires_seconds=app.conf.result_expires,
        notify=True,
    )
