"""Task states, the result-store interface, and ``AsyncResult``.

A result store keeps small byte values per key with an expiry. The core stores
one JSON record per task id (state, result, traceback...) and a few keys of its
own (group membership, chord joins); the store knows nothing of tasks.

Like transports, one store instance is used by one thread at a time; the app
keeps one per thread.
"""

from __future__ import annotations

import abc
import builtins
import enum
import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskmesh.errors import TaskError, TaskRevoked, TimeoutError
from taskmesh.schemes import SchemeRegistry
from taskmesh.urls import mask_url

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh

__all__ = ["BACKENDS", "AsyncResult", "GroupResult", "ResultStore", "State", "TaskRecord"]

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    """A task's state, as Celery names them."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


READY_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What the store keeps for one task.

    Attributes:
        task_id: The task's id.
        state: Its state.
        result: The return value (SUCCESS) or the exception's message (FAILURE).
        name: The task's name, when known.
        exc_type: The exception's ``module.Class`` on FAILURE, RETRY and REVOKED.
        exc_args: The exception's arguments, when JSON can carry them.
        traceback: The formatted traceback on FAILURE.
        retries: How many retries ran before this state.
        date_done: When a ready state was stored (epoch seconds).
        worker: The hostname of the worker that stored it.
        attempts: On STARTED, how many deliveries of this run have started the
            task; the worker's poison-message limit counts these.
    """

    task_id: str
    state: State
    result: Any = None
    name: str | None = None
    exc_type: str | None = None
    exc_args: list[Any] | None = None
    traceback: str | None = None
    retries: int = 0
    date_done: float | None = None
    worker: str | None = None
    attempts: int = 1

    @property
    def ready(self) -> bool:
        """Whether the state is final."""
        return self.state in READY_STATES

    def to_bytes(self) -> bytes:
        """Encode as compact JSON; a result JSON cannot carry becomes its repr."""
        data = {
            "id": self.task_id,
            "state": str(self.state),
            "result": self.result,
            "name": self.name,
            "exc_type": self.exc_type,
            "exc_args": self.exc_args,
            "traceback": self.traceback,
            "retries": self.retries,
            "date_done": self.date_done,
            "worker": self.worker,
            "attempts": self.attempts,
        }
        return json.dumps(data, separators=(",", ":"), default=repr).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TaskRecord:
        """Decode what :meth:`to_bytes` produced."""
        data = json.loads(raw)
        return cls(
            task_id=data["id"],
            state=State(data["state"]),
            result=data.get("result"),
            name=data.get("name"),
            exc_type=data.get("exc_type"),
            exc_args=data.get("exc_args"),
            traceback=data.get("traceback"),
            retries=data.get("retries", 0),
            date_done=data.get("date_done"),
            worker=data.get("worker"),
            attempts=data.get("attempts", 1),
        )


class ResultStore(abc.ABC):
    """A key-value store of small byte values with expiry, for results.

    Args:
        url: The store's URL, options in its query string.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    @abc.abstractmethod
    def set(self, key: str, value: bytes, *, expires_seconds: float, notify: bool = False) -> None:
        """Store ``value`` under ``key``, replacing any value, for ``expires_seconds``.

        With ``notify``, wake every :meth:`wait` on ``key``. Durable as far as
        the store offers once it returns.
        """

    def set_many(self, items: Sequence[tuple[str, bytes, bool]], *, expires_seconds: float) -> None:
        """Store several ``(key, value, notify)`` items, in order, in one round trip if possible.

        The same as calling :meth:`set` for each item in turn; stores that can
        write many keys at once (a transaction, a pipeline) override it. Not
        atomic unless the store says so: on an error, some items may be stored.
        """
        for key, value, notify in items:
            self.set(key, value, expires_seconds=expires_seconds, notify=notify)

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or ``None`` if absent or expired."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the values under ``keys``, in order, in one round trip if possible."""
        return [self.get(key) for key in keys]

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``. Idempotent."""

    @abc.abstractmethod
    def add_member(self, key: str, member: str, *, expires_seconds: float) -> int:
        """Add ``member`` to the set under ``key``; return the set's size after.

        Atomic and idempotent: adding the same member twice counts it once, so
        a redelivered chord header task cannot count twice.
        """

    @abc.abstractmethod
    def claim(self, key: str, *, expires_seconds: float) -> bool:
        """Create ``key`` if absent; return whether this call created it.

        Atomic: among concurrent callers across processes exactly one wins.
        """

    def wait(self, key: str, timeout: float, ready: Callable[[bytes], bool]) -> bytes | None:
        """Block until ``key`` holds a value for which ``ready`` is true.

        Returns that value, or ``None`` once ``timeout`` seconds pass. This
        default polls with a backoff from 5 ms to 200 ms; stores that can push
        (pub/sub, blocking reads) override it.
        """
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            value = self.get(key)
            if value is not None and ready(value):
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections. Idempotent."""


BACKENDS = SchemeRegistry(
    kind="result store",
    group="taskmesh.backends",
    builtin={
        "memory": "taskmesh.backends.memory:MemoryResultStore",
        "sqlite": "taskmesh.backends.sqlite:SQLiteResultStore",
        "redis": "taskmesh.backends.redis:RedisResultStore",
        "rediss": "taskmesh.backends.redis:RedisResultStore",
        "unix": "taskmesh.backends.redis:RedisResultStore",
        "dynamodb": "taskmesh.backends.dynamodb:DynamoDBResultStore",
    },
    extras={"redis": "redis", "rediss": "redis", "unix": "redis", "dynamodb": "sqs"},
)


def connect_store(url: str) -> ResultStore:
    """Open the result store serving ``url``.

    Raises:
        ConfigurationError: Unknown scheme, missing driver, or a bad option.
    """
    cls: type[ResultStore] = BACKENDS.resolve(url)
    return cls(url)


def task_key(task_id: str) -> str:
    """Return the store key holding a task's record."""
    return f"task:{task_id}"


def _is_ready(raw: bytes) -> bool:
    return TaskRecord.from_bytes(raw).ready


def rebuild_exception(record: TaskRecord) -> BaseException:
    """Rebuild a stored failure as its original exception type where possible.

    Falls back to :class:`TaskError` carrying the remote type, message and
    traceback when the type cannot be imported or constructed here.
    """
    message = str(record.result or "")
    exc_type = record.exc_type or ""
    module_name, _, class_name = exc_type.rpartition(".")
    cls: Any = None
    if module_name == "builtins":
        cls = getattr(builtins, class_name, None)
    elif module_name:
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            cls = None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            exc = cls(*(record.exc_args if record.exc_args is not None else [message]))
        except Exception:  # any constructor mismatch falls back below
            exc = None
        if exc is not None:
            if isinstance(exc, TaskError) and not exc.remote_traceback:
                exc.remote_traceback = record.traceback or ""
            if record.traceback:
                exc.__notes__ = [f"Remote traceback (task {record.task_id}):\n{record.traceback}"]
            return exc
    return TaskError(message, exc_type, record.traceback or "", record.task_id, record.name or "")


class AsyncResult:
    """A handle on one task's state and result.

    Args:
        id: The task id.
        app: The app whose result store holds the result.
        parent: The result of the step before, in a chain.
    """

    def __init__(
        self, id: str, app: TaskMesh, parent: AsyncResult | GroupResult | None = None
    ) -> None:
        self.id = id
        self.app = app
        self.parent = parent

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _record(self) -> TaskRecord:
        raw = self.app.result_store().get(task_key(self.id))
        if raw is None:
            return TaskRecord(self.id, State.PENDING)
        return TaskRecord.from_bytes(raw)

    @property
    def state(self) -> State:
        """The task's state now; PENDING when nothing is known of it."""
        return self._record().state

    status = state

    @property
    def result(self) -> Any:
        """The return value on SUCCESS, the exception on FAILURE, else ``None``."""
        record = self._record()
        if record.state in (State.FAILURE, State.REVOKED):
            return rebuild_exception(record)
        return record.result if record.state is State.SUCCESS else None

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a failure, else ``None``."""
        return self._record().traceback

    @property
    def retries(self) -> int:
        """How many times the task was retried."""
        return self._record().retries

    @property
    def name(self) -> str | None:
        """The task's name, once a worker has stored a state."""
        return self._record().name

    def ready(self) -> bool:
        """Whether the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self._record().ready

    def successful(self) -> bool:
        """Whether the task finished with SUCCESS."""
        return self._record().state is State.SUCCESS

    def failed(self) -> bool:
        """Whether the task finished with FAILURE."""
        return self._record().state is State.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the task to finish and return its result.

        Args:
            timeout: Seconds to wait; ``None`` waits for ever.
            propagate: Raise the task's exception on FAILURE or REVOKED;
                otherwise return it.

        Raises:
            TimeoutError: The task was not ready within ``timeout`` seconds.
            TaskRevoked: The task was revoked or expired (with ``propagate``).
            Exception: The task's own exception type on FAILURE where it can
                be rebuilt here, else :class:`TaskError` (with ``propagate``).
        """
        store = self.app.result_store()
        limit = timeout if timeout is not None else float("inf")
        raw = store.wait(task_key(self.id), min(limit, 10**9), _is_ready)
        if raw is None:
            raise TimeoutError(f"Task {self.id} was not ready within {timeout} s.")
        record = TaskRecord.from_bytes(raw)
        if record.state is State.SUCCESS:
            return record.result
        exc = rebuild_exception(record)
        if record.state is State.REVOKED and not isinstance(exc, TaskRevoked):
            exc = TaskRevoked(str(record.result or "revoked"), record.exc_type or "", "", self.id)
        if propagate:
            raise exc
        return exc

    def forget(self) -> None:
        """Remove the task's stored state and result."""
        self.app.result_store().delete(task_key(self.id))


def group_key(group_id: str) -> str:
    """Return the store key holding a group's ordered member ids."""
    return f"group:{group_id}"


class GroupResult:
    """A handle on the results of a group's members, in order.

    Args:
        id: The group id.
        results: The members' results, in the group's order.
        app: The app whose result store holds them.
        parent: The result of the step before, in a chain.
    """

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult | GroupResult],
        app: TaskMesh,
        parent: AsyncResult | GroupResult | None = None,
    ) -> None:
        self.id = id
        self.results = list(results)
        self.app = app
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} results]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def _records(self) -> list[TaskRecord]:
        ids = [result.id for result in self.results]
        raws = self.app.result_store().get_many([task_key(task_id) for task_id in ids])
        return [
            TaskRecord.from_bytes(raw) if raw is not None else TaskRecord(task_id, State.PENDING)
            for task_id, raw in zip(ids, raws, strict=True)
        ]

    def ready(self) -> bool:
        """Whether every member has finished."""
        return all(record.ready for record in self._records())

    def successful(self) -> bool:
        """Whether every member finished with SUCCESS."""
        return all(record.state is State.SUCCESS for record in self._records())

    def failed(self) -> bool:
        """Whether any member finished with FAILURE."""
        return any(record.state is State.FAILURE for record in self._records())

    def completed_count(self) -> int:
        """How many members finished with SUCCESS."""
        return sum(record.state is State.SUCCESS for record in self._records())

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Wait for every member and return their results in order.

        Args:
            timeout: Seconds to wait for all of them; ``None`` waits for ever.
            propagate: Raise the first failed member's exception; otherwise
                its exception takes its place in the list.

        Raises:
            TimeoutError: Not every member was ready within ``timeout`` seconds.
            Exception: A member's exception, with ``propagate``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=remaining, propagate=propagate))
            except TimeoutError as exc:
                raise TimeoutError(
                    f"Group {self.id} was not ready within {timeout} s: "
                    f"{self.completed_count()} of {len(self.results)} members succeeded."
                ) from exc
        return values

    join = get

    def forget(self) -> None:
        """Remove the members' results and the group's saved member list."""
        for result in self.results:
            result.forget()
        self.app.result_store().delete(group_key(self.id))

    def save(self) -> None:
        """Store the member ids under the group id, for :meth:`restore` in any process."""
        data = {"results": [result.id for result in self.results]}
        self.app.result_store().set(
            group_key(self.id),
            json.dumps(data, separators=(",", ":")).encode(),
            expires_seconds=self.app.conf.result_expires,
        )

    @classmethod
    def restore(cls, id: str, app: TaskMesh) -> GroupResult | None:
        """Return the group saved under ``id`` (every sent group is), or ``None``."""
        raw = app.result_store().get(group_key(id))
        if raw is None:
            return None
        ids = json.loads(raw)["results"]
        return cls(id, [AsyncResult(task_id, app) for task_id in ids], app)
