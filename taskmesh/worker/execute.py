"""Running one task message: states, retries, signals, callbacks, and the verdict.

:func:`execute` is the single place a task runs, for workers and for eager
calls alike. It never raises for anything the task does; it stores the outcome
and returns a :class:`Verdict` telling the consumer what to do with the
message: ack it, dead-letter it, or give it back.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskmesh import canvas
from taskmesh.errors import (
    BrokerError,
    EncodeError,
    Ignore,
    MaxRetriesExceeded,
    Reject,
    ResultError,
    Retry,
    TaskRevoked,
)
from taskmesh.result import State, TaskRecord, task_key
from taskmesh.task import Request

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.task import Task

__all__ = [
    "Action",
    "ResultBatch",
    "Verdict",
    "execute",
    "follow_up",
    "run_eagerly",
    "store_failure",
]

logger = logging.getLogger(__name__)

_REPR_LIMIT = 200
_SCALARS = frozenset({str, int, float, bool})


class Action(enum.Enum):
    """What the consumer does with a message after its task ran."""

    ACK = "ack"
    REJECT = "reject"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one run.

    Attributes:
        action: Ack, dead-letter or give back the message.
        reason: Why, for a dead letter.
        state: The task state stored (or that would be stored).
        value: The return value on SUCCESS, the exception on FAILURE.
        retry: The message that runs the task again, on RETRY.
    """

    action: Action
    reason: str = ""
    state: State = State.SUCCESS
    value: Any = None
    retry: Envelope | None = None


def truncate(value: Any, limit: int = _REPR_LIMIT) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_str(exc: BaseException) -> str:
    """Return ``str(exc)``, or a stand-in when the exception's ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def exception_type_name(exc: BaseException) -> str:
    """Return ``module.Class`` of an exception, for storing and rebuilding it."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _json_args(exc: BaseException) -> list[Any] | None:
    try:
        json.dumps(list(exc.args))
    except (TypeError, ValueError):
        return None
    return list(exc.args)


class ResultBatch:
    """A task's result records held while it runs, for the worker's writer to store.

    A worker's executor passes one to :func:`execute`. The SUCCESS record of a
    task that no canvas step waits on is held here; after the task the executor
    takes it (:meth:`take`) and hands it to the consumer's writer thread, which
    writes the records of several tasks in one call (:meth:`write`) before
    their messages are acked. Records that must be stored before anything else
    happens (STARTED, failures, records a canvas step reads) never wait here.

    Args:
        app: The app whose result store receives the records.
    """

    def __init__(self, app: TaskMesh) -> None:
        self.app = app
        self._items: list[tuple[str, bytes, bool]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: TaskRecord) -> None:
        """Hold ``record`` until it is taken."""
        self._items.append((task_key(record.task_id), record.to_bytes(), record.ready))

    def take(self) -> list[tuple[str, bytes, bool]]:
        """Return the held records and forget them, for another thread to :meth:`write`."""
        items, self._items = self._items, []
        return items

    @staticmethod
    def write(app: TaskMesh, items: Sequence[tuple[str, bytes, bool]]) -> None:
        """Write records taken from batches in one call to ``app``'s store.

        Raises:
            ResultError: The store failed.
        """
        app.result_store().set_many(items, expires_seconds=app.conf.result_expires)


def _store(
    app: TaskMesh,
    task: Task[Any, Any] | None,
    record: TaskRecord,
    batch: ResultBatch | None = None,
) -> None:
    if task is not None and task.ignore_result and record.state is not State.FAILURE:
        return
    if batch is not None:
        batch.add(record)
        return
    app.result_store().set(
        task_key(record.task_id),
        record.to_bytes(),
        expires_seconds=app.conf.result_expires,
        notify=record.ready,
    )


def store_failure(
    app: TaskMesh,
    envelope_id: str,
    name: str | None,
    exc: BaseException,
    *,
    state: State = State.FAILURE,
    retries: int = 0,
    hostname: str = "",
) -> None:
    """Store a final FAILURE (or REVOKED) record for a task, with its traceback."""
    tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ else ""
    record = TaskRecord(
        task_id=envelope_id,
        state=state,
        result=safe_str(exc),
        name=name,
        exc_type=exception_type_name(exc),
        exc_args=_json_args(exc),
        traceback=tb or None,
        retries=retries,
        date_done=time.time(),
        worker=hostname or None,
    )
    app.result_store().set(
        task_key(envelope_id),
        record.to_bytes(),
        expires_seconds=app.conf.result_expires,
        notify=True,
    )


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    # inspect.signature costs tens of microseconds, more than a no-op task's
    # whole run; a task's function never changes, so read it once.
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def check_arguments(task: Task[Any, Any], envelope: Envelope) -> str | None:
    """Return why the envelope's arguments do not fit the task's function, or ``None``."""
    signature = _signature(task.fn)
    if signature is None:
        return None
    args = list(envelope.args)
    if task.bind:
        args.insert(0, task)
    try:
        signature.bind(*args, **envelope.kwargs)
    except TypeError as exc:
        return f"arguments do not fit {task.name}{signature}: {exc}"
    return None


def make_request(envelope: Envelope, hostname: str, delivery_count: int, eager: bool) -> Request:
    """Build ``self.request`` for one run of ``envelope``."""
    return Request(
        id=envelope.id,
        task=envelope.task,
        args=envelope.args,
        kwargs=envelope.kwargs,
        retries=envelope.retries,
        eta=envelope.eta,
        expires=envelope.expires,
        queue=envelope.queue,
        hostname=hostname,
        delivery_count=delivery_count,
        parent_id=envelope.parent_id,
        root_id=envelope.root_id,
        group_id=envelope.group_id,
        headers=envelope.headers,
        options=envelope.options,
        is_eager=eager,
    )


def execute(
    app: TaskMesh,
    task: Task[Any, Any],
    envelope: Envelope,
    *,
    hostname: str = "",
    delivery_count: int = 1,
    eager: bool = False,
    limits: AbstractContextManager[None] | None = None,
    batch: ResultBatch | None = None,
) -> Verdict:
    """Run ``envelope`` with ``task`` and store what happened.

    Args:
        app: The app (result store, publishing retries and callbacks).
        task: The registered task named by the envelope.
        envelope: The decoded message.
        hostname: The worker's name, for ``self.request`` and the record.
        delivery_count: How many times the broker handed the message out.
        eager: Run for ``apply`` or eager mode.
        limits: Entered around the call itself; the consumer's time limits.
        batch: Where a plain task's SUCCESS record may wait to be written with
            others; without one, every record is written at once.

    Returns:
        What to do with the message.
    """
    verdict = _run(app, task, envelope, hostname, delivery_count, eager, limits, batch)
    if verdict.retry is not None and not eager:
        # Published before the consumer acks the original: a crash in between
        # runs the task once more, never zero times.
        app.publish([verdict.retry])
    return verdict


def _run(
    app: TaskMesh,
    task: Task[Any, Any],
    envelope: Envelope,
    hostname: str,
    delivery_count: int,
    eager: bool,
    limits: AbstractContextManager[None] | None,
    batch: ResultBatch | None = None,
) -> Verdict:
    misfit = None if canvas.is_mapped(envelope) else check_arguments(task, envelope)
    if misfit is not None:
        error = TypeError(misfit)
        store_failure(
            app, envelope.id, task.name, error, retries=envelope.retries, hostname=hostname
        )
        logger.warning("task rejected name=%s id=%s reason=%s", task.name, envelope.id, misfit)
        follow_up(canvas.after_failure, app, envelope, error)
        return Verdict(Action.REJECT, misfit, State.FAILURE, error)
    if delivery_count > 1 and not eager:
        poisoned = _count_start(app, task, envelope, hostname)
        if poisoned is not None:
            return poisoned
    elif app.conf.task_track_started and not task.ignore_result:
        _store(
            app,
            task,
            TaskRecord(
                envelope.id,
                State.STARTED,
                name=task.name,
                retries=envelope.retries,
                worker=hostname or None,
            ),
        )
    task.push_request(make_request(envelope, hostname, delivery_count, eager))
    started = time.perf_counter()
    try:
        with limits or nullcontext():
            value = canvas.call(task, envelope)
    except Retry as signal:
        return _retry(app, task, envelope, signal, hostname)
    except Reject as signal:
        return _reject(app, task, envelope, signal, hostname)
    except Ignore:
        logger.info("task ignored name=%s id=%s", task.name, envelope.id)
        return Verdict(Action.ACK, state=State.PENDING)
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        # A task's failure is data, stored below. SystemExit and
        # KeyboardInterrupt raised by a task are its failures too: they must
        # not end the executor that ran it.
        return _failed(app, task, envelope, exc, hostname, started)
    finally:
        task.push_request(None)
    # A canvas step that follows may read this result: store it at once then.
    held = batch if batch is not None and not envelope.options else None
    return _succeeded(app, task, envelope, value, hostname, started, held)


def _count_start(
    app: TaskMesh,
    task: Task[Any, Any],
    envelope: Envelope,
    hostname: str,
) -> Verdict | None:
    """Count a redelivered message's start; refuse it past ``task_max_deliveries``.

    A worker that dies also returns the messages it had only prefetched, so
    the broker's delivery count blames them too. What identifies a message
    that kills its worker is how often its task *started*: each start of a
    redelivered message is stored in its STARTED record (even for tasks that
    keep no result), and the start after the limit is dead-lettered instead.
    Only redeliveries pay for the extra read.
    """
    store = app.result_store()
    raw = store.get(task_key(envelope.id))
    previous = TaskRecord.from_bytes(raw) if raw is not None else None
    starts = 0
    if previous is not None and previous.state is State.STARTED:
        if previous.retries == envelope.retries:
            starts = previous.attempts
    limit: int = app.conf.task_max_deliveries
    if starts >= limit:
        reason = (
            f"started {starts} times without finishing (task_max_deliveries={limit}); "
            "the task may kill its worker"
        )
        error = TaskRevoked(reason, task_id=envelope.id, task_name=task.name)
        store_failure(
            app, envelope.id, task.name, error, retries=envelope.retries, hostname=hostname
        )
        logger.warning("task dead-lettered name=%s id=%s reason=%s", task.name, envelope.id, reason)
        follow_up(canvas.after_failure, app, envelope, error)
        return Verdict(Action.REJECT, reason, State.FAILURE, error)
    record = TaskRecord(
        envelope.id,
        State.STARTED,
        name=task.name,
        retries=envelope.retries,
        worker=hostname or None,
        attempts=starts + 1,
    )
    store.set(task_key(envelope.id), record.to_bytes(), expires_seconds=app.conf.result_expires)
    return None


def _succeeded(
    app: TaskMesh,
    task: Task[Any, Any],
    envelope: Envelope,
    value: Any,
    hostname: str,
    started: float,
    batch: ResultBatch | None = None,
) -> Verdict:
    duration_ms = (time.perf_counter() - started) * 1000
    record = TaskRecord(
        envelope.id,
        State.SUCCESS,
        result=value,
        name=task.name,
        retries=envelope.retries,
        date_done=time.time(),
        worker=hostname or None,
    )
    try:
        if value is not None and type(value) not in _SCALARS:
            json.dumps(value, allow_nan=False)
        elif type(value) is float and not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
    except (TypeError, ValueError, RecursionError) as exc:
        error = EncodeError(
            f"Task {task.name} (id {envelope.id}) returned {truncate(value, 80)}, which JSON "
            f"cannot store: {exc}. Return JSON types, or set ignore_result=True."
        )
        return _failed(app, task, envelope, error, hostname, started)
    _store(app, task, record, batch)
    logger.info(
        "task succeeded name=%s id=%s queue=%s duration_ms=%.1f",
        task.name,
        envelope.id,
        envelope.queue,
        duration_ms,
    )
    follow_up(canvas.after_success, app, envelope, value)
    return Verdict(Action.ACK, state=State.SUCCESS, value=value)


def follow_up(
    hook: Callable[[TaskMesh, Envelope, Any], None], app: TaskMesh, envelope: Envelope, value: Any
) -> None:
    """Send what follows a task (callbacks, the next chain step, a chord join).

    A broker or result-store error propagates, so the message runs again and
    the follow-up is sent at least once. Anything else means the message's canvas options are
    malformed: running the task again cannot mend them, so it is logged once.
    """
    try:
        hook(app, envelope, value)
    except (BrokerError, ResultError):
        # Sending again is safe: a chord counts each header task once.
        raise
    except Exception:
        logger.exception(
            "task follow-up not sent name=%s id=%s options=%s",
            envelope.task,
            envelope.id,
            truncate(dict(envelope.options), 120),
        )


def _failed(
    app: TaskMesh,
    task: Task[Any, Any],
    envelope: Envelope,
    exc: BaseException,
    hostname: str,
    started: float,
) -> Verdict:
    if task.autoretry_for and isinstance(exc, task.autoretry_for):
        limit = task.max_retries
        if limit is None or envelope.retries < limit:
            countdown = task.retry_countdown(envelope.retries)
            return _retry(app, task, envelope, Retry("autoretry", exc, countdown), hostname)
        logger.warning(
            "task retries exhausted name=%s id=%s retries=%d",
            task.name,
            envelope.id,
            envelope.retries,
        )
    duration_ms = (time.perf_counter() - started) * 1000
    state = State.REVOKED if isinstance(exc, TaskRevoked) else State.FAILURE
    store_failure(
        app, envelope.id, task.name, exc, state=state, retries=envelope.retries, hostname=hostname
    )
    if isinstance(exc, MaxRetriesExceeded):
        logger.warning(
            "task failed name=%s id=%s duration_ms=%.1f error=%s",
            task.name,
            envelope.id,
            duration_ms,
            exc,
        )
    else:
        logger.error(
            "task failed name=%s id=%s duration_ms=%.1f error=%s",
            task.name,
            envelope.id,
            duration_ms,
            truncate(exc),
            exc_info=exc,
        )
    follow_up(canvas.after_failure, app, envelope, exc)
    return Verdict(Action.ACK, state=state, value=exc)


def _retry(
    app: TaskMesh, task: Task[Any, Any], envelope: Envelope, signal: Retry, hostname: str
) -> Verdict:
    countdown = signal.countdown if signal.countdown is not None else task.default_retry_delay
    retry_envelope = envelope.replace(
        retries=envelope.retries + 1,
        eta=time.time() + countdown if countdown > 0 else None,
        sent_at=time.time(),
    )
    cause = signal.exc if signal.exc is not None else signal
    record = TaskRecord(
        envelope.id,
        State.RETRY,
        result=str(cause),
        name=task.name,
        exc_type=exception_type_name(cause),
        retries=envelope.retries,
        worker=hostname or None,
    )
    _store(app, task, record)
    logger.info(
        "task retry scheduled name=%s id=%s retries=%d countdown_ms=%.0f reason=%s",
        task.name,
        envelope.id,
        envelope.retries + 1,
        countdown * 1000,
        truncate(cause, 120),
    )
    return Verdict(Action.ACK, state=State.RETRY, value=cause, retry=retry_envelope)


def _reject(
    app: TaskMesh, task: Task[Any, Any], envelope: Envelope, signal: Reject, hostname: str
) -> Verdict:
    if signal.requeue:
        logger.info("task requeued name=%s id=%s reason=%s", task.name, envelope.id, signal.reason)
        return Verdict(Action.REQUEUE, signal.reason, State.PENDING)
    store_failure(app, envelope.id, task.name, signal, retries=envelope.retries, hostname=hostname)
    logger.warning("task rejected name=%s id=%s reason=%s", task.name, envelope.id, signal.reason)
    return Verdict(Action.REJECT, signal.reason or "rejected by the task", State.FAILURE, signal)


def run_eagerly(app: TaskMesh, envelope: Envelope, raise_errors: bool | None = None) -> Verdict:
    """Run ``envelope`` in this thread, as ``apply`` and eager mode do.

    Retries run at once (their countdown is not waited for). With
    ``task_eager_propagates`` (or ``raise_errors``), a final failure raises
    the task's exception in the caller.
    """
    task = app.get_task(envelope.task)
    verdict = execute(app, task, envelope, hostname="eager", eager=True)
    while verdict.retry is not None:
        verdict = execute(app, task, verdict.retry, hostname="eager", eager=True)
    propagate = app.conf.task_eager_propagates if raise_errors is None else raise_errors
    if propagate and verdict.state is State.FAILURE and isinstance(verdict.value, BaseException):
        raise verdict.value
    return verdict
