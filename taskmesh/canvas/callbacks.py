"""What runs after a task: ``link`` on success and ``link_error`` on failure.

The worker calls :func:`after_success` and :func:`after_failure` once per final
outcome of a task; they send the callbacks the message carries.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskmesh.canvas.signature import Signature

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope

__all__ = ["after_failure", "after_success", "encode_callbacks"]

logger = logging.getLogger(__name__)


def encode_callbacks(callbacks: Any) -> list[dict[str, Any]] | None:
    """Turn a signature, or a list of them, into their JSON form (``None`` stays)."""
    if callbacks is None:
        return None
    if isinstance(callbacks, Signature):
        callbacks = [callbacks]
    return [sig.to_dict() for sig in callbacks]


def _send(app: TaskMesh, envelope: Envelope, data: dict[str, Any], argument: Any) -> None:
    sig = Signature.from_dict(data, app)
    sig.apply_async((argument,), parent_id=envelope.id, root_id=envelope.root_id)


def after_success(app: TaskMesh, envelope: Envelope, value: Any) -> None:
    """Send the envelope's ``link`` callbacks with the task's return value."""
    for data in envelope.options.get("link") or ():
        _send(app, envelope, data, value)


def after_failure(app: TaskMesh, envelope: Envelope, exc: BaseException) -> None:
    """Send the envelope's ``link_error`` callbacks with the failed task's id."""
    for data in envelope.options.get("link_error") or ():
        _send(app, envelope, data, envelope.id)
