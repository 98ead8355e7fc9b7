"""The prefork supervisor: N child processes, each a consumer of its own.

Each child opens its own broker connection and runs tasks on its main thread,
so no message takes an extra hop through the parent. The parent only watches:
it starts the children, starts a new one when one dies (a task's hard time
limit, a crash, the OOM killer), and passes stop signals on.

Signals to the parent: the first SIGTERM or SIGINT asks every child to stop
gracefully (SIGTERM to the child); a second SIGINT stops them at once
(SIGQUIT). Children ignore SIGINT, so a Ctrl-C that reaches the whole process
group is counted once, by the parent.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from taskmesh.worker.consumer import EXIT_HARD_LIMIT

__all__ = ["PreforkSupervisor"]

logger = logging.getLogger(__name__)

_RESPAWN_PAUSE = 1.0


class PreforkSupervisor:
    """Keeps ``processes`` children running ``child_main`` until stopped.

    Args:
        processes: How many children to keep.
        child_main: What a child runs; it must return when the child gets
            SIGTERM and finishes its running task.
    """

    def __init__(self, processes: int, child_main: Callable[[int], None]) -> None:
        self.processes = processes
        self.child_main = child_main
        self._context = multiprocessing.get_context("fork")
        self._children: dict[int, BaseProcess] = {}
        self._stopping = False
        self._immediate = False

    def run(self) -> int:
        """Supervise until every child has stopped; return the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(self.processes):
            self._spawn(index)
        while self._children:
            by_sentinel = {child.sentinel: index for index, child in self._children.items()}
            multiprocessing.connection.wait(list(by_sentinel), timeout=0.5)
            for index, child in list(self._children.items()):
                if child.exitcode is not None:
                    self._reap(index)
        logger.info("worker stopped")
        return 0

    def _spawn(self, index: int) -> None:
        child = self._context.Process(
            target=self._child, args=(index,), name=f"taskmesh-child-{index}", daemon=False
        )
        child.start()
        self._children[index] = child
        logger.debug("child started index=%d pid=%s", index, child.pid)

    def _child(self, index: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, lambda signum, frame: os._exit(1))
        self.child_main(index)

    def _reap(self, index: int) -> None:
        child = self._children.pop(index)
        child.join()
        code = child.exitcode
        if self._stopping:
            logger.debug("child stopped index=%d pid=%s exit=%s", index, child.pid, code)
            return
        if code == EXIT_HARD_LIMIT:
            logger.warning("child replaced after a time limit index=%d pid=%s", index, child.pid)
        else:
            logger.warning(
                "child died, starting another index=%d pid=%s exit=%s", index, child.pid, code
            )
            time.sleep(_RESPAWN_PAUSE)  # a child that dies at once must not spin the CPU
        if not self._stopping:
            self._spawn(index)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping and signum == signal.SIGINT:
            self._immediate = True
            logger.warning("worker stopping at once")
            self._send(signal.SIGQUIT)
            return
        if self._stopping:
            return
        self._stopping = True
        logger.info("worker stopping signal=%s", signal.Signals(signum).name)
        self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for child in self._children.values():
            if child.pid is not None and child.is_alive():
                try:
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass
