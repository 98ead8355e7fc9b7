"""In-process broker for tests and eager runs: ``memory://`` or ``memory://NAME``.

Every transport opened with the same name in one process shares the same
queues, so a test's producer thread and worker threads meet. Nothing survives
the process, and other processes cannot see it.

Capabilities: delays, priorities 0-9, FIFO within a priority, leases with
extension, core dead-lettering. No options.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from taskmesh.transport import Capabilities, Delivery, Outgoing, Transport
from taskmesh.urls import parse_options

__all__ = ["MemoryTransport"]


@dataclass
class _Message:
    queue: str
    body: bytes
    headers: dict[str, str]
    priority: int
    deliveries: int = 0
    token: str | None = None
    lease_until: float = 0.0


@dataclass
class _Space:
    """All queues of one ``memory://NAME``, guarded by one condition."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    messages: dict[int, _Message] = field(default_factory=dict)
    ready: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    delayed: list[tuple[float, int]] = field(default_factory=list)
    leased: list[tuple[float, int]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def make_ready(self, message_id: int) -> None:
        message = self.messages[message_id]
        heapq.heappush(self.ready.setdefault(message.queue, []), (-message.priority, message_id))

    def promote(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, message_id = heapq.heappop(self.delayed)
            if message_id in self.messages:
                self.make_ready(message_id)
        while self.leased and self.leased[0][0] <= now:
            deadline, message_id = heapq.heappop(self.leased)
            message = self.messages.get(message_id)
            if message is not None and message.token and message.lease_until == deadline:
                message.token = None
                self.make_ready(message_id)


class MemoryTransport(Transport):
    """Queues in this process's memory, shared by name."""

    capabilities = Capabilities(native_delay=True, priorities=True, fifo=True)
    _spaces: ClassVar[dict[str, _Space]] = {}
    _spaces_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str = "memory://", *, lease_seconds: float = 30.0) -> None:
        super().__init__(url, lease_seconds=lease_seconds)
        parse_options(url, {})
        name = url.partition("://")[2].split("?")[0]
        with self._spaces_lock:
            self._space = self._spaces.setdefault(name, _Space())

    def publish(self, message: Outgoing) -> None:
        """Add a message; wake a waiting receiver."""
        space = self._space
        with space.cond:
            message_id = next(space.ids)
            space.messages[message_id] = _Message(
                message.queue, message.body, dict(message.headers), message.priority
            )
            if message.delay > 0:
                heapq.heappush(space.delayed, (time.time() + message.delay, message_id))
            else:
                space.make_ready(message_id)
            space.cond.notify_all()

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Lease ready messages, waiting up to ``timeout`` for the first."""
        space = self._space
        deadline = time.monotonic() + timeout
        with space.cond:
            while True:
                space.promote(time.time())
                taken = self._take(queues, max_messages)
                remaining = deadline - time.monotonic()
                if taken or remaining <= 0:
                    return taken
                next_due = min(
                    [space.delayed[0][0] - time.time()] if space.delayed else [remaining]
                )
                space.cond.wait(max(0.001, min(remaining, next_due, 0.05)))

    def _take(self, queues: Sequence[str], max_messages: int) -> list[Delivery]:
        space = self._space
        taken: list[Delivery] = []
        now = time.time()
        for queue in queues:
            heap = space.ready.get(queue)
            while heap and len(taken) < max_messages:
                _, message_id = heapq.heappop(heap)
                message = space.messages.get(message_id)
                if message is None or message.token is not None:
                    continue
                message.deliveries += 1
                message.token = uuid.uuid4().hex
                message.lease_until = now + self.lease_seconds
                heapq.heappush(space.leased, (message.lease_until, message_id))
                taken.append(
                    Delivery(
                        queue,
                        message.body,
                        dict(message.headers),
                        message.deliveries,
                        (message_id, message.token),
                    )
                )
        return taken

    def _held(self, delivery: Delivery) -> _Message | None:
        message_id, token = delivery.receipt
        message = self._space.messages.get(message_id)
        return message if message is not None and message.token == token else None

    def ack(self, delivery: Delivery) -> None:
        """Remove the message if this delivery still holds it."""
        with self._space.cond:
            if self._held(delivery) is not None:
                del self._space.messages[delivery.receipt[0]]

    def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Release the lease; the message is ready again after ``delay``."""
        space = self._space
        with space.cond:
            message = self._held(delivery)
            if message is None:
                return
            message.token = None
            if delay > 0:
                heapq.heappush(space.delayed, (time.time() + delay, delivery.receipt[0]))
            else:
                space.make_ready(delivery.receipt[0])
            space.cond.notify_all()

    def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Push the lease deadline to ``seconds`` from now."""
        space = self._space
        with space.cond:
            message = self._held(delivery)
            if message is not None:
                message.lease_until = time.time() + seconds
                heapq.heappush(space.leased, (message.lease_until, delivery.receipt[0]))

    def declare(self, queue: str) -> None:
        """Queues exist on first use; nothing to do."""

    def size(self, queue: str) -> int:
        """Count messages of ``queue`` in any state."""
        with self._space.cond:
            return sum(1 for m in self._space.messages.values() if m.queue == queue)

    def purge(self, queue: str) -> int:
        """Delete the queue's messages that are not leased."""
        space = self._space
        with space.cond:
            doomed = [i for i, m in space.messages.items() if m.queue == queue and m.token is None]
            for message_id in doomed:
                del space.messages[message_id]
            return len(doomed)
