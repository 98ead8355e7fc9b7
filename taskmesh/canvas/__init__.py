"""Canvas: signatures and the workflows built from them.

Modules: ``signature`` (the unit), ``callbacks`` (what runs after a task).
"""

from __future__ import annotations

from taskmesh.canvas.callbacks import after_failure, after_success, encode_callbacks
from taskmesh.canvas.signature import Signature, signature

__all__ = ["Signature", "after_failure", "after_success", "encode_callbacks", "signature"]
