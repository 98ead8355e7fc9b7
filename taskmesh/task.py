"""Tasks: the ``@app.task`` wrapper, sending, the retry policy and ``self.request``.

A :class:`Task` wraps a function. Calling it runs the function here; ``delay``
and ``apply_async`` send it to a worker; ``apply`` runs it here the way a
worker would (states stored, retries run), for tests.
"""

from __future__ import annotations

import datetime
import functools
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from taskmesh.errors import MaxRetriesExceeded, Retry
from taskmesh.result import AsyncResult

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.canvas import Group, Signature

__all__ = ["Request", "Task", "backoff_delay"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Request:
    """What a running task knows about its own message (``self.request``).

    Attributes:
        id: The task id.
        task: The task's name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        retries: How many times it was retried before this run.
        eta: When it was due, as epoch seconds, if delayed.
        expires: When it expires, as epoch seconds.
        queue: The queue it came from.
        hostname: The worker running it.
        delivery_count: How many times the broker handed this message out.
        parent_id: The task that sent it.
        root_id: The first task of its workflow.
        group_id: The group it belongs to.
        headers: User headers.
        options: Canvas options carried along (link, chain, chord...).
        is_eager: Whether it runs through ``apply`` or eager mode.
    """

    id: str
    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    queue: str = "default"
    hostname: str = ""
    delivery_count: int = 1
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    is_eager: bool = False


def backoff_delay(
    retries: int, base: float, maximum: float, jitter: bool, rng: random.Random | None = None
) -> float:
    """Return the countdown before retry number ``retries + 1``.

    Exponential: ``base * 2**retries``, capped at ``maximum``. With ``jitter``,
    a uniformly random value between zero and that ("full jitter"), so that
    tasks failing together do not retry together.
    """
    delay = min(maximum, base * (2**retries))
    if jitter:
        delay = (rng or random).uniform(0, delay)
    return float(delay)


class Task(Generic[P, R]):
    """A registered task. Created by ``@app.task``; see that for the options.

    Calling the task object runs the function in the caller, like a plain call.
    """

    def __init__(
        self,
        app: TaskMesh,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        bind: bool = False,
        queue: str | None = None,
        priority: int = 0,
        max_retries: int | None = None,
        default_retry_delay: float | None = None,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        acks_late: bool | None = None,
        ignore_result: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        message_group_id: str | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name or self._default_name(app, fn)
        self.bind = bind
        self.queue = queue
        self.priority = priority
        self.max_retries = app.conf.task_max_retries if max_retries is None else max_retries
        self.default_retry_delay = (
            app.conf.task_default_retry_delay
            if default_retry_delay is None
            else float(default_retry_delay)
        )
        self.autoretry_for = tuple(autoretry_for)
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.acks_late = app.conf.task_acks_late if acks_late is None else acks_late
        self.ignore_result = app.conf.task_ignore_result if ignore_result is None else ignore_result
        self.time_limit = app.conf.task_time_limit if time_limit is None else time_limit
        self.message_group_id = message_group_id
        self.soft_time_limit = (
            app.conf.task_soft_time_limit if soft_time_limit is None else soft_time_limit
        )
        self._context = threading.local()
        functools.update_wrapper(self, fn)

    @staticmethod
    def _default_name(app: TaskMesh, fn: Callable[..., Any]) -> str:
        module = fn.__module__
        if module == "__main__":
            module = app.main
        return f"{module}.{fn.__qualname__}"

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, like a plain call."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    # the running task's context ------------------------------------------------

    @property
    def request(self) -> Request:
        """The message being run in this thread (for ``bind=True`` tasks)."""
        request: Request | None = getattr(self._context, "request", None)
        if request is None:
            return Request(id="", task=self.name)
        return request

    def push_request(self, request: Request | None) -> None:
        """Set (or with ``None`` clear) the message being run in this thread."""
        self._context.request = request

    # sending -------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; shortcut for :meth:`apply_async`."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime.datetime | float | None = None,
        expires: datetime.datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task to a worker.

        Args:
            args: Positional arguments.
            kwargs: Keyword arguments.
            countdown: Seconds from now before it may run.
            eta: An aware datetime (or epoch seconds) before which it may not run.
            expires: Seconds from now, or an aware datetime, after which it is
                not run (its state becomes REVOKED).
            queue: The queue; otherwise routes, the task's queue, the default.
            priority: 0 (lowest) to 9 (highest), where the broker supports it.
            task_id: Use this id instead of a new UUID.
            headers: Extra JSON-encodable headers, readable as ``self.request.headers``.
            link: A signature (or list) to call with the result on success.
            link_error: A signature (or list) to call with the task id on failure.
            **options: ``time_limit``, ``soft_time_limit``, ``message_group_id``
                (FIFO queues), and canvas options.

        Returns:
            A handle on the result.

        Raises:
            EncodeError: The arguments cannot be encoded (nothing is sent).
            MessageTooLarge: The message is over ``task_max_message_bytes``.
            BrokerUnavailable: The broker cannot be reached.
        """
        if link is not None or link_error is not None:
            from taskmesh.canvas import encode_callbacks

            options["link"] = encode_callbacks(link)
            options["link_error"] = encode_callbacks(link_error)
        return self.app.send_task(
            self.name,
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue,
            priority=priority,
            task_id=task_id,
            headers=headers,
            **options,
        )

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Run the task here, as a worker would: states stored, retries run inline.

        Retry countdowns are not waited for. A failure is stored, not raised:
        ``get()`` on the returned result raises it. Useful in tests.
        """
        from taskmesh.worker.execute import run_eagerly

        envelope = self.app.build_envelope(self.name, args, kwargs, **options)
        run_eagerly(self.app, envelope, raise_errors=False)
        return AsyncResult(envelope.id, self.app)

    # retries -------------------------------------------------------------------

    def retry_countdown(self, retries: int) -> float:
        """Return the countdown before retry ``retries + 1`` under this task's policy."""
        if self.retry_backoff:
            base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            return backoff_delay(retries, base, self.retry_backoff_max, self.retry_jitter)
        return self.default_retry_delay

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Schedule this task to run again, and stop the current run.

        Call as ``raise self.retry(exc=exc)`` or just ``self.retry(...)``.

        Args:
            exc: The exception that made the task retry; raised instead of
                :class:`MaxRetriesExceeded` when no retries are left.
            countdown: Seconds before the retry; otherwise the task's policy.
            max_retries: Overrides the task's ``max_retries`` for this call;
                ``None`` in the task option means retry for ever.

        Raises:
            Retry: Always, when a retry is allowed; the worker publishes it.
            MaxRetriesExceeded: No retries are left and ``exc`` is ``None``.
        """
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(
                f"Task {self.name} (id {request.id}) was retried {request.retries} times, "
                f"its limit ({limit}).",
                task_id=request.id,
                task_name=self.name,
            )
        if countdown is None:
            countdown = self.retry_countdown(request.retries)
        raise Retry(f"retry in {countdown:.3f} s", exc=exc, countdown=countdown)

    # canvas shortcuts -------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Return a signature of this task with these arguments."""
        from taskmesh.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Return an immutable signature: it ignores the previous step's result."""
        from taskmesh.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app, immutable=True)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Return a signature of this task with arguments and send options."""
        from taskmesh.canvas import Signature

        return Signature(self.name, args or (), kwargs or {}, options=options, app=self.app)

    def map(self, items: Iterable[Any]) -> Signature:
        """Return a signature running this task once per item, in one message.

        Its result is the list of the task's results. Immutable: in a chain it
        ignores the previous step's result.
        """
        from taskmesh.canvas import mapped

        return mapped(self.name, items, "map", self.app)

    def starmap(self, items: Iterable[Sequence[Any]]) -> Signature:
        """Return a signature running ``task(*item)`` per item, in one message."""
        from taskmesh.canvas import mapped

        return mapped(self.name, items, "starmap", self.app)

    def chunks(self, items: Iterable[Sequence[Any]], size: int) -> Group:
        """Return a group of :meth:`starmap` signatures of ``size`` items each.

        Its result is a list of lists, one per chunk.

        Raises:
            ConfigurationError: ``size`` is not a positive integer.
        """
        from taskmesh.canvas import chunks

        return chunks(self.name, items, size, self.app)
