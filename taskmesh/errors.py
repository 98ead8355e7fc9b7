"""Every exception taskmesh raises, rooted in one class.

The tree::

    TaskmeshError
    ├── ConfigurationError            a setting, URL or option is wrong
    ├── BrokerError                   the broker refused or failed an operation
    │   ├── BrokerUnavailable         the broker cannot be reached
    │   ├── ConnectionLost            an established connection dropped
    │   └── MessageTooLarge           a message exceeds what the broker accepts
    ├── SerializationError
    │   ├── EncodeError               arguments or a result cannot be encoded
    │   └── DecodeError               a message body cannot be decoded
    ├── TaskError                     a task failed (carries the remote type)
    │   ├── NotRegistered             (also a LookupError) no task by that name
    │   ├── TimeLimitExceeded         the hard time limit ended the task
    │   ├── SoftTimeLimitExceeded     raised inside a task at its soft limit
    │   ├── MaxRetriesExceeded        a retry was asked for past max_retries
    │   ├── TaskRevoked               the task was revoked or expired
    │   └── ChordError                a chord's header failed for good
    ├── ResultError
    │   └── TimeoutError              (also the builtin) a wait ran out
    └── TaskSignal                    control flow raised inside a task; never
        ├── Retry                     logged as an error
        ├── Reject
        └── Ignore

Exceptions carry their inputs as fields and rebuild from them (``__reduce__``),
so they survive pickling between processes.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ChordError",
    "ConfigurationError",
    "ConnectionLost",
    "DecodeError",
    "EncodeError",
    "Ignore",
    "MaxRetriesExceeded",
    "MessageTooLarge",
    "NotRegistered",
    "Reject",
    "ResultError",
    "Retry",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevoked",
    "TaskSignal",
    "TaskmeshError",
    "TimeLimitExceeded",
    "TimeoutError",
]


class TaskmeshError(Exception):
    """The root of every exception taskmesh raises."""


class ConfigurationError(TaskmeshError):
    """A setting, a URL or an option is wrong; the message names which and why."""


class BrokerError(TaskmeshError):
    """The broker refused or failed an operation.

    Args:
        message: What went wrong and what to do.
        url: The broker URL with its password masked.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url))


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (refused, timed out, unknown host)."""


class ConnectionLost(BrokerError):
    """An established connection to the broker dropped."""


class MessageTooLarge(BrokerError):
    """A message is larger than the broker, or a setting, accepts."""


class SerializationError(TaskmeshError):
    """Something could not be turned into bytes, or back."""


class EncodeError(SerializationError):
    """Arguments or a result cannot be encoded by the chosen serializer."""


class DecodeError(SerializationError):
    """A message body cannot be decoded into a task envelope."""


class TaskError(TaskmeshError):
    """A task failed; carries the remote exception's type and traceback.

    Raised by ``AsyncResult.get`` when the original exception type cannot be
    imported or rebuilt in the waiting process.

    Args:
        message: The remote exception's message.
        exc_type: The remote exception's qualified name, ``module.Class``.
        remote_traceback: The traceback formatted in the worker.
        task_id: The failed task's id.
        task_name: The failed task's name.
    """

    def __init__(
        self,
        message: str = "",
        exc_type: str = "",
        remote_traceback: str = "",
        task_id: str = "",
        task_name: str = "",
    ) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.task_name = task_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (str(self), self.exc_type, self.remote_traceback, self.task_id, self.task_name),
        )


class NotRegistered(TaskError, LookupError):
    """No task is registered under a name the message or caller used."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was ended."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a running task when its soft time limit passes.

    A task may catch it to clean up; the hard limit still applies.
    """


class MaxRetriesExceeded(TaskError):
    """``self.retry()`` was called after the task's last allowed retry."""


class TaskRevoked(TaskError):
    """The task was revoked, or its message expired before it ran."""


class ChordError(TaskError):
    """A task in a chord's header failed for good, so the body did not run."""


class ResultError(TaskmeshError):
    """A result could not be stored, read or waited for."""


class TimeoutError(ResultError, builtins.TimeoutError):
    """A wait for a result ran past its timeout.

    Also a builtin ``TimeoutError``, so ``except TimeoutError`` in either
    spelling catches it.
    """


class TaskSignal(TaskmeshError):
    """Control flow raised inside a task; the worker never logs it as an error."""


class Retry(TaskSignal):
    """Raised by ``self.retry()``: the task is scheduled again.

    Args:
        message: Why the task retries.
        exc: The exception that caused the retry, if any.
        countdown: Seconds until the retry runs.
    """

    def __init__(
        self, message: str = "", exc: BaseException | None = None, countdown: float | None = None
    ) -> None:
        super().__init__(message)
        self.exc = exc
        self.countdown = countdown

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.exc, self.countdown))


class Reject(TaskSignal):
    """Raised by a task to send its message to the dead-letter queue.

    Args:
        reason: Why the message is rejected; stored with the dead letter.
        requeue: Give the message back to its queue instead of dead-lettering it.
    """

    def __init__(self, reason: str = "", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.requeue))


class Ignore(TaskSignal):
    """Raised by a task to finish without storing any state."""
