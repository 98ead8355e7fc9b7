"""Canvas: signatures and the workflows built from them.

Modules, each importing only those before it:

- ``signature``: the :class:`Canvas` base, :class:`Signature` (one task call);
- ``join``: the chord join in the result store;
- ``callbacks``: what the worker runs after a task's final outcome;
- ``group``, ``chord``, ``chain``: the three ways to combine nodes;
- ``mapping``: ``map``, ``starmap`` and ``chunks``.

The wire format of every node is in ``docs/protocol.md``, section "Canvas".
"""

from __future__ import annotations

from taskmesh.canvas.callbacks import after_failure, after_success, encode_callbacks
from taskmesh.canvas.chain import Chain, chain
from taskmesh.canvas.chord import Chord, chord
from taskmesh.canvas.group import Group, group
from taskmesh.canvas.mapping import call, chunks, is_mapped, mapped
from taskmesh.canvas.signature import Canvas, Outcome, Signature, signature

__all__ = [
    "Canvas",
    "Chain",
    "Chord",
    "Group",
    "Outcome",
    "Signature",
    "after_failure",
    "after_success",
    "call",
    "chain",
    "chord",
    "chunks",
    "encode_callbacks",
    "group",
    "is_mapped",
    "mapped",
    "signature",
]
