"""The beat loop: decides which runs are due and sends them, once each.

One or more beat processes share a :class:`~taskmesh.beat.state.BeatState`.
Each loop turn (:meth:`Beat.tick`) a process takes or renews the leader lock;
only the leader sends. For each entry the leader knows the instant up to which
every run is handled (``covered``) and sends the runs due since, each one
claimed in the store first, then sent through ``app.send_task`` (so beat works
with every broker), then recorded. The claim makes a run go out once even if
two processes believe they lead; the record makes a restart resume after it.

A run is *late* when it fell due less than ``beat_lock_seconds`` plus two loop
intervals ago, the longest a handover between leaders takes: late runs are all
sent, so a leader's death loses none. Runs older than that were *missed*
because no beat ran: ``beat_catch_up="once"`` sends one run for all of them,
``"skip"`` none; either way the entry resumes at its next run time.

A new entry, or one whose schedule changed, starts at the next run time after
the leader first sees it; it never catches up on runs of another schedule.

Limitations:
    A process killed between claiming a run and sending it loses that run (the
    claim stays); sending first would risk a double run instead. The window is
    one publish long.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from taskmesh.beat.schedules import Schedule, load_zone, to_schedule
from taskmesh.beat.state import BeatState, EntryState
from taskmesh.errors import BrokerError, ConfigurationError, ResultError, TaskmeshError
from taskmesh.result import connect_store

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh

__all__ = [
    "Beat",
    "Entry",
    "describe",
    "load_entries",
    "open_state",
    "run_beat",
    "spawn_beat_process",
    "stop_beat_process",
]

logger = logging.getLogger(__name__)

ENTRY_OPTIONS = frozenset(
    {"queue", "priority", "expires", "countdown", "headers", "time_limit", "soft_time_limit"}
)
_ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options"})
_MAX_LATE_RUNS = 1000


@dataclass(frozen=True)
class Entry:
    """One periodic task.

    Attributes:
        name: The entry's key in ``beat_schedule``.
        task: The task name to send.
        schedule: When it runs.
        args: Positional arguments.
        kwargs: Keyword arguments.
        options: Send options: ``queue``, ``priority``, ``expires``,
            ``countdown``, ``headers``, ``time_limit``, ``soft_time_limit``.
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


def _entry(name: str, spec: Any) -> Entry:
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"beat_schedule entry {name!r} must be a mapping, got {spec!r}.")
    unknown = set(spec) - _ENTRY_KEYS
    if unknown:
        raise ConfigurationError(
            f"beat_schedule entry {name!r} has unknown key(s) {sorted(unknown)}; "
            f"known: {sorted(_ENTRY_KEYS)}."
        )
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"beat_schedule entry {name!r} needs a task name, got {task!r}.")
    if "schedule" not in spec:
        raise ConfigurationError(f"beat_schedule entry {name!r} has no schedule.")
    args = spec.get("args", ())
    kwargs = spec.get("kwargs", {})
    options = spec.get("options", {})
    if not isinstance(args, (list, tuple)):
        raise ConfigurationError(f"args of beat entry {name!r} must be a list, got {args!r}.")
    if not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
        raise ConfigurationError(f"kwargs and options of beat entry {name!r} must be mappings.")
    bad = set(options) - ENTRY_OPTIONS
    if bad:
        raise ConfigurationError(
            f"beat entry {name!r} has unknown option(s) {sorted(bad)}; "
            f"known: {sorted(ENTRY_OPTIONS)}."
        )
    schedule = to_schedule(spec["schedule"], entry=name)
    return Entry(name, task, schedule, tuple(args), dict(kwargs), dict(options))


def load_entries(schedule: Mapping[str, Any]) -> list[Entry]:
    """Validate a ``beat_schedule`` setting and return its entries, by name.

    Raises:
        ConfigurationError: An entry lacks a task or schedule, or has an
            unknown key or option.
    """
    return [_entry(str(name), spec) for name, spec in sorted(schedule.items())]


def open_state(app: TaskMesh) -> BeatState:
    """Open the state store ``app`` configures: ``beat_state_url``, else the SQLite file.

    Raises:
        ConfigurationError: The URL's scheme or options are wrong.
    """
    url: str | None = app.conf.beat_state_url
    if url is None:
        url = "sqlite:///" + str(app.conf.beat_schedule_filename)
    return BeatState(connect_store(url), app.main, lock_seconds=app.conf.beat_lock_seconds)


def run_id(namespace: str, entry: str, run_at: float) -> str:
    """Return the task id of one run: the same in every beat process."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"taskmesh-beat:{namespace}:{entry}:{run_at!r}"))


def _iso(moment: float, zone: ZoneInfo) -> str:
    return datetime.datetime.fromtimestamp(moment, zone).isoformat(timespec="seconds")


class Beat:
    """Sends ``app``'s periodic tasks while this process leads.

    Args:
        app: The app; its ``beat_*`` settings and ``timezone`` are read once.
        state: The shared state; :func:`open_state` of ``app`` by default.
        clock: Returns the time in epoch seconds; tests inject their own.
        hostname: Names this process in the leader token and logs.

    Raises:
        ConfigurationError: A ``beat_schedule`` entry or the zone is invalid.
    """

    def __init__(
        self,
        app: TaskMesh,
        *,
        state: BeatState | None = None,
        clock: Callable[[], float] = time.time,
        hostname: str | None = None,
    ) -> None:
        self.app = app
        conf = app.conf
        self.zone = load_zone(conf.timezone)
        self.entries = load_entries(conf.beat_schedule)
        self.lock_seconds: float = conf.beat_lock_seconds
        self.max_interval: float = conf.beat_max_loop_interval
        self.catch_up: str = conf.beat_catch_up
        if self.lock_seconds <= 0 or self.max_interval <= 0:
            raise ConfigurationError(
                "beat_lock_seconds and beat_max_loop_interval must be more than 0, got "
                f"{self.lock_seconds} and {self.max_interval}."
            )
        self.grace = self.lock_seconds + 2 * self.max_interval
        self.state = state if state is not None else open_state(app)
        self.clock = clock
        self.hostname = hostname or f"{os.getpid()}@{socket.gethostname()}"
        self.token = f"{self.hostname}/{uuid.uuid4().hex[:8]}"
        self.is_leader = False
        self.covered: dict[str, float] = {}
        self._next: dict[str, tuple[float, float]] = {}

    # one turn --------------------------------------------------------------

    def tick(self) -> float:
        """Take or renew the lock, send what is due; return seconds to wait.

        A run that fails to send is released and retried on the next turn;
        its failure is logged, not raised.

        Raises:
            ResultError: The state store failed.
            BrokerUnavailable: The state's SQLite file cannot be opened.
        """
        now = self.clock()
        if not self.state.hold_lock(self.token):
            if self.is_leader:
                logger.warning("beat lost the leader lock token=%s", self.token)
                self.is_leader = False
            return min(self.max_interval, self.lock_seconds / 4)
        if not self.is_leader:
            self._lead(now)
        wake = now + self.max_interval
        for entry in self.entries:
            wake = min(wake, self._run_entry(entry, now))
        return max(0.0, min(wake - self.clock(), self.max_interval, self.lock_seconds / 3))

    def _lead(self, now: float) -> None:
        names = [entry.name for entry in self.entries]
        stored = self.state.load(names)
        removed = self.state.forget_removed(names)
        if removed:
            logger.info("beat entries removed names=%s", ",".join(removed))
        self.covered = {}
        for entry in self.entries:
            fingerprint = entry.schedule.fingerprint(self.zone)
            previous = stored.get(entry.name)
            if previous is not None and previous.fingerprint == fingerprint:
                self.covered[entry.name] = previous.covered
                continue
            self.covered[entry.name] = now
            self.state.save(entry.name, EntryState(fingerprint, now))
            logger.info(
                "beat entry %s name=%s schedule=%s",
                "rescheduled" if previous else "added",
                entry.name,
                fingerprint,
            )
        self.is_leader = True
        logger.info("beat leading token=%s entries=%d", self.token, len(self.entries))

    def _run_entry(self, entry: Entry, now: float) -> float:
        """Send the entry's due runs; return its next run time."""
        covered = self.covered[entry.name]
        cached = self._next.get(entry.name)
        if cached is not None and cached[0] == covered:
            run_at = cached[1]
        else:
            # A crontab's next run costs a few hundred microseconds: compute
            # it once per run, not once per loop turn.
            run_at = entry.schedule.next_after(covered, self.zone)
            self._next[entry.name] = (covered, run_at)
        if run_at > now:
            return run_at
        if now - run_at > self.grace:
            logger.info(
                "beat missed runs entry=%s since=%s catch_up=%s",
                entry.name,
                _iso(run_at, self.zone),
                self.catch_up,
            )
            if self.catch_up == "once" and not self._send(entry, run_at):
                return now + self.max_interval  # retry on the next turn, not at once
            self._advance(entry, now)
            return entry.schedule.next_after(now, self.zone)
        for _ in range(_MAX_LATE_RUNS):
            if run_at > now:
                break
            if not self._send(entry, run_at):
                return now + self.max_interval  # retry on the next turn, not at once
            self._advance(entry, run_at)
            run_at = entry.schedule.next_after(run_at, self.zone)
        return run_at

    def _advance(self, entry: Entry, covered: float) -> None:
        self.covered[entry.name] = covered
        fingerprint = entry.schedule.fingerprint(self.zone)
        self.state.save(entry.name, EntryState(fingerprint, covered))

    def _send(self, entry: Entry, run_at: float) -> bool:
        """Claim and send one run; whether it is handled (sent now or before)."""
        if not self.state.claim_run(entry.name, run_at):
            logger.debug("beat run already sent entry=%s run_at=%s", entry.name, run_at)
            return True
        options = dict(entry.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(beat_entry=entry.name, beat_run_at=run_at)
        task_id = run_id(self.app.main, entry.name, run_at)
        started = time.monotonic()
        try:
            self.app.send_task(
                entry.task,
                entry.args,
                entry.kwargs,
                task_id=task_id,
                headers=headers,
                **options,
            )
        except TaskmeshError as exc:
            self.state.release_run(entry.name, run_at)
            logger.warning(
                "beat send failed entry=%s task=%s run_at=%s error=%s",
                entry.name,
                entry.task,
                _iso(run_at, self.zone),
                exc,
            )
            return False
        logger.info(
            "beat sent entry=%s task=%s run_at=%s id=%s duration_ms=%d",
            entry.name,
            entry.task,
            _iso(run_at, self.zone),
            task_id,
            (time.monotonic() - started) * 1000,
        )
        return True

    # the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; then give the lock up and close.

        A failing store or broker is logged and retried every loop interval;
        the lock is given up meanwhile, so a healthy beat process can lead.
        """
        logger.info(
            "beat ready token=%s entries=%d timezone=%s state=%r",
            self.token,
            len(self.entries),
            self.zone.key,
            self.state,
        )
        if not self.entries:
            logger.warning("beat has no entries; set beat_schedule to send periodic tasks")
        try:
            while not stop.is_set():
                try:
                    pause = self.tick()
                except (ResultError, BrokerError) as exc:
                    logger.warning("beat turn failed, retrying error=%s", exc)
                    self.is_leader = False
                    pause = self.max_interval
                stop.wait(pause)
        finally:
            self.close()
            logger.info("beat stopped token=%s", self.token)

    def close(self) -> None:
        """Give the lock up if held, and close connections. Idempotent."""
        if self.is_leader:
            self.is_leader = False
            try:
                self.state.release_lock(self.token)
            except ResultError as exc:
                logger.warning("beat could not release the lock error=%s", exc)
        self.state.close()
        self.app.close()


def describe(app: TaskMesh, count: int, now: float | None = None) -> list[str]:
    """Return one line per entry with its next ``count`` run times, for ``beat --list``.

    Raises:
        ConfigurationError: The schedule or zone is invalid.
    """
    zone = load_zone(app.conf.timezone)
    moment = time.time() if now is None else now
    lines = []
    for entry in load_entries(app.conf.beat_schedule):
        runs = entry.schedule.upcoming(moment, zone, count)
        when = ", ".join(_iso(run, zone) for run in runs)
        lines.append(f"{entry.name}: {entry.task} {entry.schedule!r} next: {when}")
    return lines


def run_beat(app: TaskMesh, stop: threading.Event | None = None) -> None:
    """Run beat in this process until SIGTERM or SIGINT (or ``stop``).

    Raises:
        ConfigurationError: The schedule, zone or state URL is invalid.
    """
    stop = stop or threading.Event()
    beat = Beat(app)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: stop.set())
    beat.run(stop)


def _beat_child(app: TaskMesh, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent counts Ctrl-C
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def orphaned() -> None:
        # A worker killed with SIGKILL cannot stop us; its death re-parents us.
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logger.warning("beat parent gone, stopping parent=%d", parent)
                stop.set()

    threading.Thread(target=orphaned, name="beat-parent-watch", daemon=True).start()
    beat = Beat(app)
    beat.run(stop)


def spawn_beat_process(app: TaskMesh) -> BaseProcess:
    """Start beat in a forked child of this process, for ``worker --beat``.

    A child rather than a thread: the prefork supervisor forks new workers
    while it runs, and forking a process that runs a thread can copy a lock
    that thread holds. Stop it with :func:`stop_beat_process`; it also stops
    by itself once this process dies.

    Raises:
        ConfigurationError: The schedule or zone is invalid (checked here, so
            the error reaches the command line rather than a child's log).
    """
    load_zone(app.conf.timezone)
    load_entries(app.conf.beat_schedule)
    context = multiprocessing.get_context("fork")
    child = context.Process(
        target=_beat_child, args=(app, os.getpid()), name="taskmesh-beat", daemon=False
    )
    child.start()
    return child


def stop_beat_process(child: BaseProcess, timeout: float = 10.0) -> None:
    """Stop a beat child with SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if child.is_alive():
        child.terminate()
    child.join(timeout)
    if child.is_alive():
        logger.warning("beat child did not stop, killing it pid=%s", child.pid)
        child.kill()
        child.join(timeout)
