"""The threads a scheduler (scheduler.py) runs its model's batches on, and which of them a batch may take.

``WorkerThreads`` owns them: ``general`` threads for any work, and ``urgent`` threads kept for ``URGENT`` work only
(a reply's first piece), so it starts even while every general thread is busy with later work. With urgent threads,
the general ones run at a lower OS priority (``nice``; Linux sets it per thread, and raising it needs no privilege),
so while the CPU is short the urgent work gets it first and the rest takes what is left. A system that does not allow
it leaves the threads as they are, with a warning. :class:`Running` is the record of a batch on one of them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .work import Priority

__all__ = ["Running", "WorkerThreads", "lower_thread_priority"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Running:
    """A batch running on one of the model's threads: its priority, whose requests it holds, and whether it took
    one of the threads kept for urgent work."""

    priority: int
    owners: frozenset
    urgent_thread: bool = False


def lower_thread_priority(nice: int) -> None:
    """Run the calling thread at ``nice`` (0: leave it). Linux only: elsewhere a thread id is no process id."""
    if nice <= 0:
        return
    if not sys.platform.startswith("linux"):
        log.warning("model threads keep their priority: per-thread nice needs Linux")
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        log.warning("cannot lower a model thread's priority to nice %d: %s", nice, exc)


class WorkerThreads:
    def __init__(self, name: str, general: int = 1, urgent: int = 0, nice: int = 0) -> None:
        if general < 1 or urgent < 0:
            raise ValueError("workers must be >= 1 and urgent_workers >= 0")
        if not 0 <= nice <= 19:
            raise ValueError("worker_nice must be in [0, 19]")
        self.name = name
        self.general = general
        self.urgent = urgent
        self.nice = nice if urgent else 0  # alone, the general threads have nobody to yield to
        self._general: ThreadPoolExecutor | None = None
        self._urgent: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._general = ThreadPoolExecutor(max_workers=self.general, thread_name_prefix=f"model-{self.name}",
                                           initializer=lower_thread_priority, initargs=(self.nice,))
        if self.urgent:
            self._urgent = ThreadPoolExecutor(max_workers=self.urgent, thread_name_prefix=f"model-{self.name}-urgent")

    def shutdown(self, wait: bool) -> None:
        for executor in (self._general, self._urgent):
            if executor is not None:
                executor.shutdown(wait=wait, cancel_futures=True)

    def free(self, running: Sequence[Running]) -> tuple[bool, bool]:
        """Whether a general thread, and whether an urgent one, is free beside the batches ``running``."""
        on_urgent = sum(1 for r in running if r.urgent_thread)
        return len(running) - on_urgent < self.general, on_urgent < self.urgent

    def place(self, priority: int, urgent_free: bool) -> bool:
        """Whether a batch of ``priority`` goes to an urgent thread (one is free and the work is urgent)."""
        return urgent_free and priority <= Priority.URGENT

    def executor(self, urgent_thread: bool) -> ThreadPoolExecutor:
        executor = self._urgent if urgent_thread else self._general
        assert executor is not None, "WorkerThreads.start() first"
        return executor
