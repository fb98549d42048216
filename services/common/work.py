"""What a request to a model is, as the scheduler (scheduler.py) sees it: its :class:`Priority`, the two outcomes a
caller can get instead of a result (:class:`Superseded`, :class:`Failed`), and the :class:`Entry` the scheduler keeps
for it while it waits and runs. No behaviour lives here."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Hashable
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
