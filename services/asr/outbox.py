"""The ordered, bounded queue of events waiting to go out on one socket.

Events leave in the order they were produced. A final is queued as a
:class:`FinalSlot` the moment its utterance ends, holding its place while it
is decoded, so utterance K+1's events never overtake K's final. When the client
reads slowly, a new partial replaces the queued partial of the same utterance
instead of piling up (vLLM's habit); if even so more than ``limit`` events wait,
:class:`OutboxFull` ends the session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import Partial


class OutboxFull(Exception):
    pass


@dataclass(eq=False)
class FinalSlot:
    """A final being decoded; ``future`` resolves to the Final event (or raises)."""

    utterance: int
    future: asyncio.Future = field(repr=False)
    decided_at: float = 0.0  # perf_counter when the utterance's end was decided


@dataclass(frozen=True)
class CloseRequest:
    code: int
    reason: str = ""


class Outbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, force: bool = False) -> None:
        """Queue ``item``; ``force`` bypasses the limit (finals, errors and closes are never refused)."""
        if len(self._items) >= self.limit and not force:
            raise OutboxFull(f"{len(self._items)} events waiting for the client")
        self._items.append(item)
        self._ready.set()

    def put_partial(self, partial: Partial) -> None:
        if self._items:
            last = self._items[-1]
            if isinstance(last, Partial) and last.utterance == partial.utterance:
                self._items[-1] = partial
                return
        self.put(partial)

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def drain_slots(self) -> list[FinalSlot]:
        return [i for i in self._items if isinstance(i, FinalSlot)]
