"""The consumer: one process's loop of receive, run, acknowledge.

Threads in a consumer process:

- the *loop thread* owns the broker connection. It receives messages into a
  prefetch buffer, screens them (poison, undecodable, unknown task, expired,
  early), acks, rejects or gives back finished ones in batches, keeps the
  leases of every held message alive, and enforces time limits;
- *executors* take screened jobs from the buffer and run them: the process's
  main thread in a prefork child (so the soft time limit can interrupt
  blocking calls through ``SIGALRM``), or N threads in the threads pool;
- the *writer thread* stores the result records executors hand it, those that
  arrive together in one call, then passes their jobs to the loop thread to be
  acked: a message is never acked before its result is stored.

Only the loop thread touches the consumer's transport, so adapters need no
locks. Executors publish retries and callbacks through the app's per-thread
connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from taskmesh.canvas import after_failure
from taskmesh.errors import (
    BrokerError,
    DecodeError,
    NotRegistered,
    SoftTimeLimitExceeded,
    TaskmeshError,
    TaskRevoked,
    TimeLimitExceeded,
)
from taskmesh.result import State
from taskmesh.transport import Delivery, Outgoing, Transport
from taskmesh.worker.execute import (
    Action,
    ResultBatch,
    Verdict,
    execute,
    follow_up,
    store_failure,
)

if TYPE_CHECKING:
    from taskmesh.app import TaskMesh
    from taskmesh.protocol import Envelope
    from taskmesh.task import Task

__all__ = ["EXIT_HARD_LIMIT", "Consumer", "ExecutorMode"]

logger = logging.getLogger(__name__)

EXIT_HARD_LIMIT = 75
"""Exit status of a prefork child ended by a task's hard time limit."""

_RECEIVE_WAIT = 0.5
_BACKSTOP_FACTOR = 4
# Seconds of waiting work one executor may hold besides its running task; the
# prefetch window shrinks towards one message per executor as tasks get slower.
_WAITING_SECONDS = 0.1
# Weight of the newest task's duration in the running average.
_DURATION_WEIGHT = 0.2
_BACKOFF_START, _BACKOFF_MAX = 0.2, 10.0


class ExecutorMode(enum.Enum):
    """Where tasks run inside a consumer process."""

    MAIN = "main"
    THREADS = "threads"


class _Abandoned(BaseException):
    """Ends an executor whose job the hard time limit already finished."""


@dataclass(eq=False)
class _Write:
    """Finished jobs whose result records the writer thread stores before they are settled."""

    records: list[tuple[str, bytes, bool]]
    jobs: list[tuple[Job, Verdict]]


@dataclass(eq=False)
class Job:
    """One screened message on its way through the consumer."""

    delivery: Delivery
    envelope: Envelope
    task: Task[Any, Any]
    acked: bool = False
    thread_id: int | None = None
    soft_at: float | None = None
    hard_at: float | None = None
    soft_sent: bool = False
    abandoned: bool = False
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Buffer:
    """The prefetch buffer: screened jobs waiting for an executor."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def take(self) -> Job | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            return self._jobs.popleft() if self._jobs else None

    def take_newest(self, count: int) -> list[Job]:
        """Remove and return up to ``count`` jobs from the end of the buffer."""
        with self._cond:
            taken: list[Job] = []
            while self._jobs and len(taken) < count:
                taken.append(self._jobs.pop())
            return taken

    def drain(self) -> list[Job]:
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._jobs)


class Consumer:
    """Receives and runs messages from some queues, in one process.

    Args:
        app: The app whose tasks run here.
        queues: Queue names, polled in this order.
        concurrency: Executors (threads) in THREADS mode; 1 in MAIN mode.
        mode: Where tasks run (see the module docstring).
        hostname: This consumer's name for logs and ``self.request``.
        prefetch_multiplier: Most messages held per executor, running included;
            fewer while tasks are slow (see :meth:`_resize`).
    """

    def __init__(
        self,
        app: TaskMesh,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        mode: ExecutorMode = ExecutorMode.MAIN,
        hostname: str = "",
        prefetch_multiplier: int | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues)
        self.mode = mode
        self.concurrency = 1 if mode is ExecutorMode.MAIN else max(1, concurrency)
        self.hostname = hostname or f"{os.getpid()}@consumer"
        multiplier = prefetch_multiplier or app.conf.worker_prefetch_multiplier
        self.max_capacity = max(1, self.concurrency * multiplier)
        # Until tasks have been timed, hold two per executor, as a slow task
        # would get: a queue of long tasks is not hoarded by the first child.
        self.capacity = min(self.max_capacity, 2 * self.concurrency)
        self._refill = max(1, self.capacity // 2)
        self._task_seconds: float | None = None
        self.max_deliveries: int = app.conf.task_max_deliveries
        self.shutdown_timeout: float = app.conf.worker_shutdown_timeout
        self._buffer = _Buffer()
        self._done: queue.SimpleQueue[tuple[Job, Verdict]] = queue.SimpleQueue()
        # Result records on their way to the store, written by the writer thread.
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._held: dict[int, Job] = {}
        self._unsettled: list[tuple[Job, Verdict]] = []
        self._running: dict[int, Job] = {}
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._crashed = False
        # A prefork child stops when its supervisor is gone (killed with
        # SIGKILL, say) instead of running on unsupervised.
        self._parent = os.getppid() if mode is ExecutorMode.MAIN else None
        self._transport: Transport | None = None
        self._loop_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    # lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Consume until :meth:`stop`; return 0 after a graceful stop, 1 after a crash."""
        self._transport = self.app.connect_broker()
        for name in self.queues:
            self._transport.declare(name)
        self._loop_thread = threading.Thread(target=self._loop, name="taskmesh-loop", daemon=True)
        self._loop_thread.start()
        writer = threading.Thread(target=self._writer, name="taskmesh-results", daemon=True)
        writer.start()
        if self.mode is ExecutorMode.MAIN:
            self._install_soft_limit_handler()
            self._executor()
        else:
            for _ in range(self.concurrency):
                self._start_executor()
        self._finished.wait()
        return 1 if self._crashed else 0

    def stop(self) -> None:
        """Stop taking messages, give back prefetched ones, finish running tasks.

        Safe to call from a signal handler and from any thread.
        """
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping.is_set()

    # executors -----------------------------------------------------------------------

    def _start_executor(self) -> None:
        thread = threading.Thread(target=self._executor, name="taskmesh-executor", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _executor(self) -> None:
        batch = ResultBatch(self.app)
        while (job := self._buffer.take()) is not None:
            try:
                verdict = execute(
                    self.app,
                    job.task,
                    job.envelope,
                    hostname=self.hostname,
                    delivery_count=job.delivery.delivery_count,
                    limits=self._limits(job),
                    batch=batch,
                )
            except _Abandoned:
                # The hard time limit already stored this task's failure and
                # started another executor; the batch is empty between tasks.
                return
            except Exception as error:
                # execute() stores every task outcome; what reaches here failed
                # in storing it (the result store is down, say). Give the
                # message back so it runs again rather than vanish. An outage
                # is expected trouble: one line, the traceback only at DEBUG.
                logger.warning(
                    "task outcome not stored, message given back name=%s id=%s error=%s",
                    job.task.name,
                    job.envelope.id,
                    error,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                verdict = Verdict(Action.REQUEUE, "outcome not stored", State.PENDING)
            if batch:
                # The writer thread stores the held records, with whatever else
                # waits, then passes the job on to be acked; this executor runs
                # on meanwhile.
                self._writes.put(_Write(batch.take(), [(job, verdict)]))
            else:
                self._done.put((job, verdict))

    def _writer(self) -> None:
        """Store handed-over result records, then hand their jobs to the loop thread.

        Group commit: records that arrive while a write is under way go
        together in the next one, so a busy worker writes many per call and an
        idle one writes each at once.
        """
        while (first := self._writes.get()) is not None:
            writes = [first]
            stop = False
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._writes.get_nowait()
                    if item is None:
                        stop = True
                        break
                    writes.append(item)
            for pair in self._write_results(writes):
                self._done.put(pair)
            if stop:
                return

    @contextmanager
    def _limits(self, job: Job) -> Iterator[None]:
        soft = job.envelope.soft_time_limit or job.task.soft_time_limit
        hard = job.envelope.time_limit or job.task.time_limit
        now = time.monotonic()
        with self._running_lock:
            job.thread_id = threading.get_ident()
            job.soft_at = now + soft if soft else None
            job.hard_at = now + hard if hard else None
            self._running[id(job)] = job
        main = self.mode is ExecutorMode.MAIN
        if main and soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            yield
        finally:
            if main and soft:
                signal.setitimer(signal.ITIMER_REAL, 0)
            with self._running_lock:
                self._running.pop(id(job), None)
                job.thread_id = None
            job.seconds = time.monotonic() - now
            if job.abandoned:
                raise _Abandoned

    def _install_soft_limit_handler(self) -> None:
        def on_alarm(signum: int, frame: FrameType | None) -> None:
            # No lock here: the handler runs on the main thread, which may hold
            # it already. Copying the values is atomic under the GIL.
            if any(job.soft_at is not None for job in list(self._running.values())):
                raise SoftTimeLimitExceeded("soft time limit exceeded")

        signal.signal(signal.SIGALRM, on_alarm)

    # the loop thread -------------------------------------------------------------------

    def _loop(self) -> None:
        transport = self._transport
        assert transport is not None  # set by run() before the thread starts
        lease_every = max(0.5, transport.lease_seconds / 3)
        next_lease = time.monotonic() + lease_every
        outage: float | None = None
        try:
            while not self._stopping.is_set():
                if self._parent is not None and os.getppid() != self._parent:
                    logger.warning("worker parent gone, stopping this child")
                    self._stopping.set()
                    break
                try:
                    self._settle(transport, block=self._full())
                    self._check_limits(transport)
                    if time.monotonic() >= next_lease:
                        self._extend_leases(transport)
                        next_lease = time.monotonic() + lease_every
                    room = self.capacity - len(self._held)
                    if room > 0:
                        wait = min(_RECEIVE_WAIT, self._next_limit_in())
                        if self._admit(transport, transport.receive(self.queues, room, wait)):
                            # Let a waiting executor take the GIL now rather
                            # than when this thread next blocks on the broker.
                            time.sleep(0)
                    if outage is not None:
                        logger.info(
                            "broker connection restored url=%s after_ms=%.0f",
                            transport.safe_url,
                            (time.monotonic() - outage) * 1000,
                        )
                        outage = None
                except BrokerError as exc:
                    outage = self._pause_after(exc, transport, outage)
            self._shutdown(transport)
        except Exception:
            logger.critical("consumer loop crashed; stopping this consumer", exc_info=True)
            self._crashed = True
            self._stopping.set()
            self._buffer.close()
            self._writes.put(None)
        finally:
            self._finished.set()

    def _pause_after(self, exc: BrokerError, transport: Transport, outage: float | None) -> float:
        now = time.monotonic()
        if outage is None:
            logger.warning(
                "broker connection lost, reconnecting url=%s error=%s", transport.safe_url, exc
            )
            outage = now
        pause = min(_BACKOFF_MAX, max(_BACKOFF_START, (now - outage) / 2))
        self._stopping.wait(pause)
        return outage

    def _next_limit_in(self) -> float:
        now = time.monotonic()
        with self._running_lock:
            deadlines = [
                at
                for job in self._running.values()
                for at in (job.soft_at if not job.soft_sent else None, job.hard_at)
                if at is not None
            ]
        return max(0.0, min(deadlines) - now) if deadlines else _RECEIVE_WAIT

    def _admit(self, transport: Transport, deliveries: Sequence[Delivery]) -> int:
        """Screen ``deliveries`` into the buffer; return how many jobs it gained."""
        admitted = 0
        for delivery in deliveries:
            try:
                job = self._screen(transport, delivery)
            except BrokerError:
                raise
            except Exception as exc:
                # Whatever a message holds, it must not stop the loop: one that
                # cannot even be screened is set aside with the reason.
                logger.warning("message unreadable queue=%s", delivery.queue, exc_info=True)
                reason = f"message could not be read: {type(exc).__name__}: {exc}"
                self._dead_letter(transport, delivery, reason, None, None)
                continue
            if job is None:
                continue
            self._held[id(job)] = job
            if not job.task.acks_late:
                transport.ack(delivery)
                job.acked = True
            self._buffer.put(job)
            admitted += 1
        return admitted

    def _screen(self, transport: Transport, delivery: Delivery) -> Job | None:
        """Return a runnable job, or settle the message here and return ``None``.

        The precise poison-message limit counts the deliveries on which the
        task *started* (see ``execute``), so that messages prefetched beside
        a task that kills its worker are not blamed for its deaths. The check
        here is only a backstop against a message that ends its consumer
        before any task starts.
        """
        # The id and name are read apart from decoding only for a message that
        # is set aside: a second JSON parse per message is a no-op task's cost.
        peek = self.app.codec().peek_id
        if delivery.delivery_count > self.max_deliveries * _BACKSTOP_FACTOR:
            reason = (
                f"delivered {delivery.delivery_count} times without finishing "
                f"(task_max_deliveries={self.max_deliveries}); it may end its worker"
            )
            self._dead_letter(transport, delivery, reason, *peek(delivery.body))
            return None
        try:
            envelope = self.app.codec().decode(delivery.body)
        except DecodeError as exc:
            self._dead_letter(transport, delivery, str(exc), *peek(delivery.body), exc)
            return None
        try:
            task = self.app.get_task(envelope.task)
        except NotRegistered as exc:
            self._dead_letter(transport, delivery, str(exc), envelope.id, envelope.task, exc)
            # A workflow waiting on this task (a chord, a chain's link_error)
            # hears of the failure like of any other.
            follow_up(after_failure, self.app, envelope, exc)
            return None
        now = time.time()
        if envelope.expires is not None and envelope.expires <= now:
            self._expire(transport, delivery, envelope)
            return None
        if envelope.eta is not None and envelope.eta > now:
            # The broker gave it back before its ETA (a delay longer than the
            # broker can hold): send it again for the rest of the wait.
            message = Outgoing(
                delivery.queue,
                delivery.body,
                delivery.headers,
                envelope.eta - now,
                envelope.priority,
            )
            transport.publish(message)
            transport.ack(delivery)
            return None
        return Job(delivery, envelope, task)

    def _dead_letter(
        self,
        transport: Transport,
        delivery: Delivery,
        reason: str,
        task_id: str | None,
        name: str | None,
        exc: BaseException | None = None,
    ) -> None:
        logger.warning(
            "message dead-lettered name=%s id=%s queue=%s reason=%s",
            name,
            task_id,
            delivery.queue,
            reason,
        )
        if task_id is not None:
            error = exc or TaskRevoked(reason, task_id=task_id, task_name=name or "")
            try:
                store_failure(self.app, task_id, name, error, hostname=self.hostname)
            except TaskmeshError as store_error:
                # The dead letter itself must not wait for the result store.
                logger.warning(
                    "failure not stored name=%s id=%s error=%s", name, task_id, store_error
                )
        transport.reject(delivery, reason)

    def _expire(self, transport: Transport, delivery: Delivery, envelope: Envelope) -> None:
        reason = f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(envelope.expires))}"
        logger.info(
            "task expired name=%s id=%s queue=%s", envelope.task, envelope.id, envelope.queue
        )
        error = TaskRevoked(reason, task_id=envelope.id, task_name=envelope.task)
        store_failure(
            self.app, envelope.id, envelope.task, error, state=State.REVOKED, hostname=self.hostname
        )
        follow_up(after_failure, self.app, envelope, error)
        transport.ack(delivery)

    def _full(self) -> bool:
        """Whether to wait for finished jobs before receiving more.

        Receiving and acking one message per finished job costs two broker
        round trips per task; waiting until half the prefetch room is free
        makes them one per half a prefetch. An executor with nothing buffered
        is never kept waiting for that.
        """
        room = self.capacity - len(self._held)
        return room <= 0 or (room < self._refill and len(self._buffer) > 0)

    def _settle(self, transport: Transport, *, block: bool) -> None:
        """Ack, reject or give back finished jobs.

        With ``block``, wait briefly until enough jobs finish to free half the
        prefetch room, or the buffer runs empty, whichever comes first. Jobs
        whose ack fails (the broker went away) stay held, leases extended, and
        are settled on a later call once the broker is back: dropping them
        would leave their messages leased by this worker until it stops.
        """
        finished = self._unsettled
        self._collect(finished, block=block)
        if not finished:
            return
        if self._resize(finished):
            self._shed(transport)
        acks = [
            job.delivery
            for job, verdict in finished
            if verdict.action is Action.ACK and not job.acked
        ]
        if acks:
            transport.ack_many(acks)
        while finished:
            job, verdict = finished[0]
            if verdict.action is Action.REJECT and not job.acked:
                transport.reject(job.delivery, verdict.reason)
            elif verdict.action is Action.REQUEUE and not job.acked:
                transport.requeue(job.delivery)
            job.acked = True
            self._held.pop(id(job), None)
            finished.pop(0)

    def _collect(self, finished: list[tuple[Job, Verdict]], *, block: bool) -> None:
        """Move finished jobs into ``finished``; with ``block``, wait for enough of them."""
        need = max(1, self._refill - (self.capacity - len(self._held))) if block else 0
        try:
            while len(finished) < need:
                wait = max(0.01, min(0.5, self._next_limit_in()))
                finished.append(self._done.get(timeout=wait))
                if not len(self._buffer):
                    break
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass

    def _write_results(self, writes: Sequence[_Write]) -> list[tuple[Job, Verdict]]:
        """Store the records of ``writes`` in one call; their jobs are then finished.

        If the store fails, the jobs' messages are given back to run again
        rather than acked with their outcome lost.
        """
        jobs = [pair for write in writes for pair in write.jobs]
        records = [record for write in writes for record in write.records]
        try:
            if records:
                ResultBatch.write(self.app, records)
        except Exception as error:
            # One line per failed write, not per task: an outage fails many.
            ids = ", ".join(f"{job.task.name}[{job.envelope.id}]" for job, _ in jobs[:5])
            logger.warning(
                "task outcomes not stored, messages given back count=%d tasks=%s%s error=%s",
                len(jobs),
                ids,
                " ..." if len(jobs) > 5 else "",
                error,
            )
            given_back = Verdict(Action.REQUEUE, "outcome not stored", State.PENDING)
            return [(job, given_back) for job, _ in jobs]
        return jobs

    def _shed(self, transport: Transport) -> None:
        """Give back buffered messages beyond a window that just shrank.

        They were taken while tasks were fast; now that a task is slow they
        would wait behind it while another worker could run them.
        """
        excess = len(self._held) - len(self._unsettled) - self.capacity
        jobs = self._buffer.take_newest(excess) if excess > 0 else []
        for job in jobs:
            self._held.pop(id(job), None)
            if not job.acked:
                transport.requeue(job.delivery)
        if jobs:
            logger.debug("prefetched messages given back after a slow task count=%d", len(jobs))

    def _resize(self, finished: Sequence[tuple[Job, Verdict]]) -> bool:
        """Fit the prefetch window to how long tasks take.

        Fast tasks get the whole window (``worker_prefetch_multiplier`` per
        executor), so one receive and one ack cover many tasks. Slow ones get
        only as many waiting messages as an executor finishes in
        ``_WAITING_SECONDS``, down to none: a message held behind a long task
        would wait there while another worker idles. Returns whether the
        window shrank.
        """
        average = self._task_seconds
        for job, _ in finished:
            if job.seconds > 0:
                if average is None:
                    average = job.seconds
                else:
                    average += (job.seconds - average) * _DURATION_WEIGHT
        if average is None:
            return False
        self._task_seconds = average
        waiting = int(_WAITING_SECONDS / max(average, 1e-6)) * self.concurrency
        capacity = max(self.concurrency, min(self.max_capacity, self.concurrency + waiting))
        shrunk = capacity < self.capacity
        if capacity != self.capacity:
            self.capacity = capacity
            self._refill = max(1, capacity // 2)
        return shrunk

    def _extend_leases(self, transport: Transport) -> None:
        if not transport.capabilities.lease_extension:
            return
        held = [job.delivery for job in self._held.values() if not job.acked]
        if held:
            transport.extend_leases(held, transport.lease_seconds)

    def _check_limits(self, transport: Transport) -> None:
        now = time.monotonic()
        with self._running_lock:
            running = list(self._running.values())
        for job in running:
            if job.hard_at is not None and now >= job.hard_at:
                self._hard_limit(transport, job)
            elif job.soft_at is not None and now >= job.soft_at and not job.soft_sent:
                job.soft_sent = True
                if self.mode is ExecutorMode.THREADS:
                    self._raise_in(job, SoftTimeLimitExceeded)

    def _raise_in(self, job: Job, exc_type: type[BaseException]) -> None:
        with self._running_lock:
            if job.thread_id is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(job.thread_id), ctypes.py_object(exc_type)
                )

    def _hard_limit(self, transport: Transport, job: Job) -> None:
        limit = job.envelope.time_limit or job.task.time_limit
        error = TimeLimitExceeded(
            f"Task {job.task.name} (id {job.envelope.id}) ran past its time limit of {limit} s.",
            task_id=job.envelope.id,
            task_name=job.task.name,
        )
        logger.error(
            "task killed by time limit name=%s id=%s limit_ms=%.0f",
            job.task.name,
            job.envelope.id,
            (limit or 0) * 1000,
        )
        store_failure(
            self.app,
            job.envelope.id,
            job.task.name,
            error,
            retries=job.envelope.retries,
            hostname=self.hostname,
        )
        follow_up(after_failure, self.app, job.envelope, error)
        if not job.acked:
            transport.ack(job.delivery)
            job.acked = True
        self._held.pop(id(job), None)
        with self._running_lock:
            job.abandoned = True
            self._running.pop(id(job), None)
        if self.mode is ExecutorMode.MAIN:
            # The main thread is stuck in the task: this process ends here and
            # the prefork supervisor starts a fresh child in its place.
            self._give_back(transport)
            os._exit(EXIT_HARD_LIMIT)
        self._raise_in(job, TimeLimitExceeded)
        self._start_executor()

    def _give_back(self, transport: Transport) -> None:
        """Return prefetched, not yet started messages to their queues at once.

        If the broker is away, the rest are left to their leases, which bring
        them back just the same, only later.
        """
        jobs = self._buffer.drain()
        for job in jobs:
            self._held.pop(id(job), None)
        try:
            for job in jobs:
                if not job.acked:
                    transport.requeue(job.delivery)
        except BrokerError as exc:
            logger.warning(
                "prefetched messages not given back, they return when their leases run out "
                "error=%s",
                exc,
            )
            return
        logger.debug("prefetched messages given back count=%d", len(jobs))

    def _shutdown(self, transport: Transport) -> None:
        self._give_back(transport)
        deadline = time.monotonic() + self.shutdown_timeout
        with contextlib.suppress(BrokerError):
            self._settle(transport, block=False)
        if self._held:
            logger.info(
                "waiting for running tasks count=%d timeout_ms=%.0f",
                len(self._held),
                self.shutdown_timeout * 1000,
            )
        while self._held and time.monotonic() < deadline:
            try:
                self._settle(transport, block=True)
                self._check_limits(transport)
            except BrokerError:
                # Finished jobs stay unsettled and are tried again until the
                # deadline; after it their leases return the messages.
                time.sleep(0.2)
        if self._held:
            logger.warning(
                "shutdown timeout passed with tasks running or unacked count=%d; their "
                "messages return to the queue when the lease runs out",
                len(self._held),
            )
        self._buffer.close()
        self._writes.put(None)
        transport.close()


def install_stop_signals(consumer: Consumer, on_immediate: Callable[[], None]) -> None:
    """Make SIGTERM and SIGINT stop ``consumer`` gracefully, a second SIGINT at once."""

    def graceful(signum: int, frame: FrameType | None) -> None:
        if consumer.stopping and signum == signal.SIGINT:
            on_immediate()
        logger.info("worker stopping signal=%s", signal.Signals(signum).name)
        consumer.stop()

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
