"""Beat's shared state: how far each entry has run, run claims, the leader lock.

Everything lives in a result store, through the :class:`~taskmesh.result.ResultStore`
interface only (``get``, ``get_many``, ``set``, ``delete``, ``claim``), so any
store works: by default a SQLite file of beat's own (``beat_schedule_filename``),
or the store at ``beat_state_url`` (Redis, DynamoDB...) when several machines
run beat. Keys, under ``beat:<app main name>:``:

- ``entry:<name>``: JSON ``{"fingerprint", "covered"}``: every run of the
  entry at or before ``covered`` (epoch seconds) has been handled, for the
  schedule the fingerprint names. Kept for ten years.
- ``entries``: the entry names of the last leader, so a removed entry's state
  is deleted.
- ``run:<name>:<run time>``: a claim per scheduled run. Whoever creates it
  emits that run; it is the exactly-once guarantee between beat processes.
- ``leader``: the leader's token, with an expiry of ``beat_lock_seconds``.

Limitations:
    Renewing the lock reads it, then writes it again: a leader that renews in
    the instant its lock expires may overwrite a new leader's token, and both
    believe they lead until the next renewal. Neither can emit a run twice,
    since each run is claimed atomically first; the lock only decides who does
    the work. Claims live ``max(3600, 3 * beat_lock_seconds)`` seconds: a beat
    process frozen for longer than that, mid-run, could emit a run again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from taskmesh.result import ResultStore

__all__ = ["BeatState", "EntryState"]

logger = logging.getLogger(__name__)

STATE_SECONDS = 10 * 365 * 86400.0
_MIN_CLAIM_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class EntryState:
    """How far one entry has run.

    Attributes:
        fingerprint: The schedule's fingerprint when the state was written.
        covered: Every run at or before this instant (epoch seconds) is done.
    """

    fingerprint: str
    covered: float

    def to_bytes(self) -> bytes:
        """Encode as compact JSON."""
        return json.dumps({"fingerprint": self.fingerprint, "covered": self.covered}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EntryState | None:
        """Decode :meth:`to_bytes`' output; ``None`` for anything unreadable."""
        try:
            data = json.loads(raw)
            return cls(str(data["fingerprint"]), float(data["covered"]))
        except (ValueError, TypeError, KeyError):
            return None


class BeatState:
    """Beat's keys in one result store.

    Used by one thread at a time, like the store under it.

    Args:
        store: The result store holding the state; closed by :meth:`close`.
        namespace: Separates apps sharing a store (the app's main name).
        lock_seconds: Expiry of the leader lock.
    """

    def __init__(self, store: ResultStore, namespace: str, *, lock_seconds: float) -> None:
        self.store = store
        self.prefix = f"beat:{namespace}:"
        self.lock_seconds = lock_seconds
        self.claim_seconds = max(_MIN_CLAIM_SECONDS, 3 * lock_seconds)

    def __repr__(self) -> str:
        return f"<BeatState {self.prefix} in {self.store!r}>"

    def _entry_key(self, name: str) -> str:
        return f"{self.prefix}entry:{name}"

    def _run_key(self, name: str, run_at: float) -> str:
        return f"{self.prefix}run:{name}:{run_at!r}"

    def load(self, names: Sequence[str]) -> dict[str, EntryState]:
        """Return the stored state of each entry in ``names`` that has one."""
        raws = self.store.get_many([self._entry_key(name) for name in names])
        found: dict[str, EntryState] = {}
        for name, raw in zip(names, raws, strict=True):
            state = EntryState.from_bytes(raw) if raw is not None else None
            if state is not None:
                found[name] = state
        return found

    def save(self, name: str, state: EntryState) -> None:
        """Store how far entry ``name`` has run."""
        self.store.set(self._entry_key(name), state.to_bytes(), expires_seconds=STATE_SECONDS)

    def forget_removed(self, names: Sequence[str]) -> list[str]:
        """Delete the state of entries the last leader had and ``names`` lacks.

        Returns:
            The removed entries' names.
        """
        key = f"{self.prefix}entries"
        raw = self.store.get(key)
        try:
            previous = [str(name) for name in json.loads(raw)] if raw is not None else []
        except (ValueError, TypeError):
            previous = []
        removed = sorted(set(previous) - set(names))
        for name in removed:
            self.store.delete(self._entry_key(name))
        self.store.set(key, json.dumps(sorted(names)).encode(), expires_seconds=STATE_SECONDS)
        return removed

    def claim_run(self, name: str, run_at: float) -> bool:
        """Claim the run of ``name`` due at ``run_at``; whether this call won it."""
        return self.store.claim(self._run_key(name, run_at), expires_seconds=self.claim_seconds)

    def release_run(self, name: str, run_at: float) -> None:
        """Give a claimed run back, after sending it failed."""
        self.store.delete(self._run_key(name, run_at))

    def hold_lock(self, token: str) -> bool:
        """Take or renew the leader lock for ``token``; whether ``token`` holds it now."""
        key = f"{self.prefix}leader"
        mine = token.encode()
        holder = self.store.get(key)
        if holder is None:
            if not self.store.claim(key, expires_seconds=self.lock_seconds):
                return False
        elif holder != mine:
            return False
        self.store.set(key, mine, expires_seconds=self.lock_seconds)
        return True

    def release_lock(self, token: str) -> None:
        """Drop the leader lock if ``token`` holds it, so another beat takes over now."""
        key = f"{self.prefix}leader"
        if self.store.get(key) == token.encode():
            self.store.delete(key)

    def close(self) -> None:
        """Close the store connection."""
        self.store.close()
