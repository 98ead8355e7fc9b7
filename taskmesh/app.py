"""The ``TaskMesh`` application: settings, the task registry, sending and routing.

An app is created once per project and passed around explicitly; nothing in
taskmesh looks an app up from a global. It opens broker and result-store
connections lazily, one per thread, so a web server's threads can each send
tasks without sharing a connection.
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib
import logging
import math
import os
import threading
import time
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from taskmesh.config import SETTINGS, Config
from taskmesh.errors import ConfigurationError, MessageTooLarge, NotRegistered
from taskmesh.protocol import Codec, Envelope
from taskmesh.result import BACKENDS, AsyncResult, ResultStore, connect_store
from taskmesh.schemes import scheme_of
from taskmesh.transport import Outgoing, Transport, connect
from taskmesh.urls import mask_url

if TYPE_CHECKING:
    from taskmesh.task import Task

__all__ = ["TaskMesh"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_TASK_OPTIONS = frozenset(
    {
        "name",
        "bind",
        "queue",
        "max_retries",
        "default_retry_delay",
        "autoretry_for",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "acks_late",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "priority",
        "message_group_id",
    }
)


def to_epoch(value: float | datetime.datetime | None, *, relative: bool) -> float | None:
    """Turn a countdown in seconds (``relative``) or a datetime into epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigurationError(
                f"Naive datetime {value.isoformat()} is ambiguous: pass an aware datetime, "
                "for example datetime.now(timezone.utc) + timedelta(minutes=5)."
            )
        return value.timestamp()
    if isinstance(value, datetime.timedelta):
        return time.time() + value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"Expected seconds or a datetime, got {value!r}.")
    return time.time() + float(value) if relative else float(value)


def _with_group(headers: Mapping[str, Any] | None, group: str | None) -> dict[str, Any]:
    """Return the envelope headers, with the FIFO message group when there is one."""
    merged = dict(headers or {})
    if group:
        merged["message_group_id"] = group
    return merged


class TaskMesh:
    """A taskmesh application.

    Args:
        main: The project's name, used as the prefix of task names defined in
            ``__main__``.
        broker: The broker URL; overrides ``broker_url``.
        backend: The result store URL; overrides ``result_backend``.
        **settings: Any other setting, by its lower-case name.

    Raises:
        ConfigurationError: A setting is unknown or ill-typed.
    """

    def __init__(
        self,
        main: str = "taskmesh",
        *,
        broker: str | None = None,
        backend: str | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Config(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._local = threading.local()
        self._codec: Codec | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<TaskMesh {self.main} broker={mask_url(self.conf.broker_url)}>"

    # configuration ---------------------------------------------------------

    def config_from_object(self, obj: str | object) -> None:
        """Read settings from a module, a dotted path to one, or any object.

        Every public lower-case attribute that is not a module, class or
        function is read as a setting; an unknown name is an error.

        Raises:
            ConfigurationError: The module cannot be imported, or an attribute
                is not a known setting or has the wrong type.
        """
        if isinstance(obj, str):
            try:
                obj = importlib.import_module(obj)
            except ImportError as exc:
                raise ConfigurationError(f"Cannot import settings module {obj!r}: {exc}.") from exc
        values = obj if isinstance(obj, Mapping) else vars(obj)
        for name, value in values.items():
            if name.startswith("_") or name != name.lower():
                continue
            if isinstance(value, (types.ModuleType, type, types.FunctionType)):
                continue
            if name not in SETTINGS and callable(value):
                continue
            self.conf[name] = value
        self._codec = None

    def finalize(self) -> None:
        """Validate every setting and freeze them; a worker or beat calls this."""
        self.conf.finalize()
        self.codec()

    @property
    def result_url(self) -> str:
        """The result store URL: ``result_backend``, or the broker's when unset.

        Raises:
            ConfigurationError: ``result_backend`` is unset and the broker's
                scheme keeps no results (RabbitMQ, SQS).
        """
        url: str | None = self.conf.result_backend
        if url is not None:
            return url
        broker: str = self.conf.broker_url
        scheme = scheme_of(broker)
        if scheme not in BACKENDS.schemes():
            raise ConfigurationError(
                f"The broker {mask_url(broker)} keeps no results, and result_backend is not "
                "set. Workers store each task's state (and count the starts of redelivered "
                "messages) there: set result_backend, for example to "
                "sqlite:///taskmesh-results.db or redis://127.0.0.1:6379/1."
            )
        return broker

    def codec(self) -> Codec:
        """The envelope codec built from the serializer settings."""
        if self._codec is None:
            self._codec = Codec(
                self.conf.task_serializer, self.conf.accept_content, self.conf.signing_key
            )
        return self._codec

    # connections -------------------------------------------------------------

    def _thread_state(self) -> threading.local:
        if self._pid != os.getpid():
            # A forked child must not reuse its parent's sockets or SQLite
            # handles: drop them unclosed (closing would disturb the parent).
            self._pid = os.getpid()
            self._local = threading.local()
        return self._local

    def transport(self) -> Transport:
        """This thread's broker connection, opened on first use."""
        state = self._thread_state()
        transport: Transport | None = getattr(state, "transport", None)
        if transport is None:
            transport = self.connect_broker()
            state.transport = transport
        return transport

    def connect_broker(self) -> Transport:
        """Open a new broker connection, owned by the caller."""
        return connect(self.conf.broker_url, lease_seconds=self.conf.broker_lease_seconds)

    def result_store(self) -> ResultStore:
        """This thread's result store connection, opened on first use."""
        state = self._thread_state()
        store: ResultStore | None = getattr(state, "store", None)
        if store is None:
            store = connect_store(self.result_url)
            state.store = store
        return store

    def close(self) -> None:
        """Close this thread's connections."""
        state = self._thread_state()
        for name in ("transport", "store"):
            conn = getattr(state, name, None)
            if conn is not None:
                conn.close()
                setattr(state, name, None)

    # tasks -------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(...)``.

        Options: ``name``, ``bind``, ``queue``, ``priority``, ``max_retries``,
        ``default_retry_delay``, ``autoretry_for``, ``retry_backoff``,
        ``retry_backoff_max``, ``retry_jitter``, ``acks_late``, ``ignore_result``,
        ``time_limit``, ``soft_time_limit``, ``message_group_id`` (the group of
        a FIFO queue, such as an SQS ``.fifo`` queue; the task name by default).

        Raises:
            ConfigurationError: An option is unknown.
        """
        unknown = set(options) - _TASK_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"Unknown task option(s) {sorted(unknown)}; known: {sorted(_TASK_OPTIONS)}."
            )

        def register(func: Callable[P, R]) -> Task[P, R]:
            from taskmesh.task import Task

            task: Task[P, R] = Task(self, func, **options)
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def get_task(self, name: str) -> Task[Any, Any]:
        """Return the task registered as ``name``.

        Raises:
            NotRegistered: No task has that name.
        """
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"No task named {name!r} is registered in app {self.main!r}. Is the module "
                "that defines it imported by the worker (-A)?",
                task_name=name,
            ) from None

    # sending -----------------------------------------------------------------

    def route(self, name: str) -> dict[str, Any]:
        """Return the ``task_routes`` options that match task ``name``."""
        routes: dict[str, Any] = self.conf.task_routes
        if name in routes:
            return dict(routes[name])
        for pattern, options in routes.items():
            if fnmatch.fnmatchcase(name, pattern):
                return dict(options)
        return {}

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send a task by name, without needing its code in this process.

        Options are those of :meth:`Task.apply_async`.

        Raises:
            EncodeError: The arguments cannot be encoded.
            MessageTooLarge: The message exceeds ``task_max_message_bytes``.
            BrokerUnavailable: The broker cannot be reached.
        """
        envelope = self.build_envelope(name, args, kwargs, **options)
        self.publish([envelope])
        return AsyncResult(envelope.id, self)

    def build_envelope(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | datetime.datetime | None = None,
        expires: float | datetime.datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        group_id: str | None = None,
        retries: int = 0,
        message_group_id: str | None = None,
        **canvas: Any,
    ) -> Envelope:
        """Build the envelope for one task message, applying routes and defaults.

        Raises:
            TypeError: ``args`` is not a list or tuple, or ``kwargs`` not a mapping.
            ConfigurationError: An option has a wrong value.
        """
        if args is not None and not isinstance(args, (list, tuple)):
            raise TypeError(
                f"args for task {name!r} must be a list or tuple, got {type(args).__name__} "
                f"{args!r:.60}; for one argument write args=[value]."
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(
                f"kwargs for task {name!r} must be a mapping, got {type(kwargs).__name__}."
            )
        route = self.route(name)
        task = self.tasks.get(name)
        if queue is None:
            queue = route.get("queue") or (task.queue if task else None)
        if priority is None:
            priority = route.get("priority", task.priority if task else 0)
        if priority is not None and not 0 <= int(priority) <= 9:
            raise ConfigurationError(f"priority must be 0-9, got {priority!r} for task {name!r}.")
        when = to_epoch(eta, relative=False) if eta is not None else None
        if countdown is not None:
            when = to_epoch(countdown, relative=True)
        # A number for expires is seconds from now, as in Celery.
        expires_at = to_epoch(expires, relative=True)
        task_id = task_id or str(uuid.uuid4())
        return Envelope(
            id=task_id,
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            queue=queue or self.conf.task_default_queue,
            retries=retries,
            eta=when,
            expires=expires_at,
            priority=int(priority or 0),
            parent_id=parent_id,
            root_id=root_id or task_id,
            group_id=group_id,
            headers=_with_group(
                headers, message_group_id or (task.message_group_id if task else None)
            ),
            options={k: v for k, v in canvas.items() if v is not None},
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            sent_at=time.time(),
        )

    def encode(self, envelope: Envelope) -> Outgoing:
        """Encode ``envelope`` into the message to publish.

        Raises:
            EncodeError: Something in it cannot be encoded.
            MessageTooLarge: It exceeds ``task_max_message_bytes``.
        """
        return self._encode(envelope, self.codec(), self.conf.task_max_message_bytes)

    def _encode(self, envelope: Envelope, codec: Codec, limit: int) -> Outgoing:
        body = codec.encode(envelope)
        if len(body) > limit:
            raise MessageTooLarge(
                f"Message for task {envelope.task!r} (id {envelope.id}) is {len(body)} bytes, "
                f"over task_max_message_bytes={limit}. Pass a reference (a path, a key, a URL) "
                "instead of the data, or raise the setting if the broker accepts more.",
                mask_url(self.conf.broker_url),
            )
        delay = max(0.0, envelope.eta - time.time()) if envelope.eta is not None else 0.0
        return Outgoing(envelope.queue, body, {}, delay, envelope.priority)

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Encode and publish envelopes, in one batch where the broker allows.

        In eager mode (``task_always_eager``) they run here instead.
        """
        if self.conf.task_always_eager:
            for envelope in envelopes:
                self.run_eager(envelope)
            return
        codec, limit = self.codec(), self.conf.task_max_message_bytes
        messages = [self._encode(envelope, codec, limit) for envelope in envelopes]
        transport = self.transport()
        if len(messages) == 1:
            transport.publish(messages[0])
        else:
            transport.publish_many(messages)
        if logger.isEnabledFor(logging.DEBUG):
            for envelope in envelopes:
                logger.debug(
                    "task sent name=%s id=%s queue=%s", envelope.task, envelope.id, envelope.queue
                )

    def run_eager(self, envelope: Envelope) -> None:
        """Run ``envelope``'s task in this thread, storing its result as a worker would.

        Raises:
            Exception: The task's exception, with ``task_eager_propagates``.
        """
        from taskmesh.worker.execute import run_eagerly

        run_eagerly(self, envelope)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        """Return a handle on task ``task_id``'s result."""
        return AsyncResult(task_id, self)
