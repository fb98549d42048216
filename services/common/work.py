"""What the scheduler (scheduler.py) works with: how it is configured (:class:`SchedulerOptions`), what a request to
a model is (its :class:`Priority`, the two outcomes a caller can get instead of a result, :class:`Superseded` and
:class:`Failed`, and the :class:`Entry` the scheduler keeps for it while it waits and runs). No behaviour lives here."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    URGENT = 0  # latency-critical: a final, a turn decision
    NORMAL = 1
    BACKGROUND = 2  # mergeable or droppable: a partial
    BULK = 3  # file work: the bulk lane (see scheduler.py)


class Superseded(Exception):
    """The request was replaced by a newer one with the same replace_key."""


@dataclass(eq=False)
class Entry:
    """A request waiting for (or running on) a model, as the scheduler keeps it."""

    priority: int
    seq: int
    request: Any
    batch_key: Hashable
    replace_key: Hashable | None
    future: asyncio.Future = field(repr=False)
    max_batch: int = 0  # 0: the scheduler's
    submitted: float = 0.0  # perf_counter
    owner: Hashable = None  # whom the request is for (a session): Scheduler.live_running_only


@dataclass
class Failed:
    """In a batch function's results, in place of a request that failed: its caller gets ``error``."""

    error: BaseException


@dataclass(frozen=True)
class SchedulerOptions:
    """How a scheduler serves its model; each runtime builds these from its settings (``scheduler.*``)."""

    max_batch: int = 8
    """Most requests one model call takes (a request may ask for a smaller cap)."""
    max_pending: int = 64
    """Live requests that may wait; past it a new one is refused at once with ``overloaded``."""
    max_bulk_pending: int | None = None
    """The bulk lane's own bound (file work); None: ``max_pending``."""
    duty: Mapping[Priority, float] = field(default_factory=dict)
    """Capped priorities and their share of the model's time, in (0, 1], while live streams are active."""
    call_timeout_s: float | None = None
    """A model call running longer stalls the scheduler (see scheduler.py); None: no limit."""
    workers: int = 1
    """Threads that run batches side by side (an engine's lanes)."""
    urgent_workers: int = 0
    """More threads that take ``URGENT`` batches only."""
    worker_nice: int = 0
    """The OS priority the general threads run at beside urgent ones (workers.py)."""

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_pending < 1 or any(not 0 < s <= 1 for s in self.duty.values()):
            raise ValueError("max_batch and max_pending must be >= 1, duty shares in (0, 1]")
        if self.call_timeout_s is not None and self.call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be > 0 (or None: no limit)")
