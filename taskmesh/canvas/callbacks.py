"""What runs after a task: callbacks, the next chain step, and chord joins.

The worker calls :func:`after_success` and :func:`after_failure` once per final
outcome of a task (retries are not outcomes), after its record is stored. They
read the canvas options the message carries:

- ``link`` / ``link_error``: callbacks, sent with the return value or the task id;
- ``chain``: the steps still to run; the next is sent with the return value;
- ``chord``: the join this task counts into (:mod:`taskmesh.canvas.join`).

A nested group's collected list and a chord body that never ran are *virtual*
outcomes: the same functions complete them, so a failure travels up through
any depth of nesting the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskmesh.canvas import join
from taskmesh.canvas.signature import Canvas, Outcome, encode_callbacks
from taskmesh.errors import BrokerError

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope

__all__ = ["after_failure", "after_success", "encode_callbacks", "join_empty"]

logger = logging.getLogger(__name__)


def after_success(app: TaskMesh, envelope: Envelope, value: Any) -> None:
    """Send what follows the envelope's task now that it returned ``value``."""
    succeeded(app, Outcome.of(envelope), value)


def after_failure(app: TaskMesh, envelope: Envelope, exc: BaseException) -> None:
    """Send the envelope's error callbacks and fail what depended on its task."""
    failed(app, Outcome.of(envelope), Outcome.of(envelope))


def succeeded(app: TaskMesh, outcome: Outcome, value: Any) -> None:
    """Complete ``outcome`` with ``value``: callbacks, next chain step, chord join."""
    extra = {"parent_id": outcome.id, "root_id": outcome.root_id}
    envelopes: list[Envelope] = []
    for data in outcome.options.get("link") or ():
        envelopes.extend(_start(app, data, (value,), [], extra))
    steps: Sequence[Mapping[str, Any]] = outcome.options.get("chain") or ()
    if steps:
        envelopes.extend(_start(app, steps[0], (value,), steps[1:], extra))
    if envelopes:
        app.publish(envelopes)
    chord = outcome.options.get("chord")
    if chord is not None and join.count_member(app, chord, outcome.id):
        try:
            body = _join(app, chord, extra)
            if body:
                app.publish(body)
        except BrokerError:
            # The body was not sent: give the claim back, so that the header
            # task's message, run again after this error, can join once more.
            join.release(app, chord)
            raise


def failed(app: TaskMesh, outcome: Outcome, origin: Outcome) -> None:
    """Fail what depends on ``outcome``, whose failure is already stored.

    Args:
        app: The app.
        outcome: The task (or virtual task) that failed.
        origin: The real task whose failure caused it, for error messages.
    """
    extra = {"parent_id": outcome.id, "root_id": outcome.root_id}
    envelopes: list[Envelope] = []
    for data in outcome.options.get("link_error") or ():
        envelopes.extend(_start(app, data, (outcome.id,), [], extra))
    if envelopes:
        app.publish(envelopes)
    steps: Sequence[Mapping[str, Any]] = outcome.options.get("chain") or ()
    if steps:
        # The chain stops here: its last step holds the failure, the steps in
        # between stay PENDING and are never sent.
        for final in Canvas.from_dict(steps[-1], app).finals():
            join.store_copy(app, outcome.id, final)
            logger.info(
                "chain stopped id=%s failed_id=%s failed_name=%s",
                final.id,
                outcome.id,
                outcome.task,
            )
            chord = final.options.get("chord")
            if chord is not None:
                _chord_failed(app, chord, origin, outcome.root_id)
    chord = outcome.options.get("chord")
    if chord is not None:
        _chord_failed(app, chord, origin, outcome.root_id)


def join_empty(app: TaskMesh, chord: Mapping[str, Any], extra: Mapping[str, Any]) -> list[Envelope]:
    """Complete a join whose header is empty: the body gets ``[]`` at once."""
    return _complete(app, chord, [], extra)


def _start(
    app: TaskMesh,
    data: Mapping[str, Any],
    args: Sequence[Any],
    continuation: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any],
) -> list[Envelope]:
    node = Canvas.from_dict(data, app)
    node.freeze(app)
    return node.build(app, args, {}, continuation, extra)


def _join(app: TaskMesh, chord: Mapping[str, Any], extra: Mapping[str, Any]) -> list[Envelope]:
    values = join.gather(app, chord["group_id"])
    logger.info("chord joined group_id=%s size=%d", chord["group_id"], len(values))
    return _complete(app, chord, values, extra)


def _complete(
    app: TaskMesh, chord: Mapping[str, Any], values: list[Any], extra: Mapping[str, Any]
) -> list[Envelope]:
    if chord.get("body") is not None:
        return _start(app, chord["body"], (values,), [], extra)
    collected = Outcome.from_dict(chord["collect"], extra.get("root_id"))
    join.store_value(app, collected, values)
    succeeded(app, collected, values)
    return []


def _chord_failed(
    app: TaskMesh, chord: Mapping[str, Any], origin: Outcome, root_id: str | None
) -> None:
    """Fail the chord once: its body's first tasks fail with a ``ChordError``."""
    if not join.claim(app, chord):
        return
    group_id = chord["group_id"]
    if chord.get("body") is not None:
        targets = Canvas.from_dict(chord["body"], app).heads()
    else:
        targets = [Outcome.from_dict(chord["collect"])]
    logger.warning(
        "chord failed group_id=%s failed_id=%s failed_name=%s", group_id, origin.id, origin.task
    )
    for target in targets:
        join.chord_error(app, group_id, origin, target)
        failed(app, Outcome(target.id, target.task, target.options, root_id), origin)
