"""The ordered, bounded queue between a session's producers and its socket's writer.

A session's :class:`Outbox` holds the events and audio waiting for its writer
(the TTS work queue of pieces, ``tts/speaker.py``, is a queue of its own; both
raise :class:`QueueFull`). Items leave in the order they were put. At most ``limit`` items wait;
past that, :meth:`Outbox.put` raises :class:`OutboxFull` (the session then
ends with ``overloaded``), except for *forced* items: closes, ``closed`` and
fatal errors (what ends a session is never refused) and whatever a caller
forces (an ASR final's slot). An optional ``merge`` hook folds a new item into
the last one waiting (a newer partial of the same utterance replaces the queued
one; a burst of flushes becomes one), so a slow client does not make a queue
grow. An optional byte budget (``size_of`` + ``limit_bytes``) counts audio:
:meth:`Outbox.wait_room` holds a producer back while the budget is spent.
Items carry the *generation* they were made in: :meth:`Outbox.advance` starts a
new one (a barge-in) and drops the waiting items of older generations that
``droppable`` names; such items put later are discarded, and :meth:`Outbox.get`
never returns one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ServiceError
from .protocol import Closed


class QueueFull(Exception):
    """A session queue holds its limit of items: the client floods without reading."""


class OutboxFull(QueueFull):
    """The outbox holds its limit of items."""


@dataclass(frozen=True)
class CloseRequest:
    """Queued after a session's last event: the writer closes the socket with ``code``."""

    code: int
    reason: str = ""


def ends_session(item: Any) -> bool:
    """Items that are never refused: a close, the ``closed`` event, a fatal error."""
    return isinstance(item, (CloseRequest, Closed)) or (isinstance(item, ServiceError) and item.fatal)


Merge = Callable[[Any, Any], Any]
"""``merge(last, new)``: the item replacing ``last`` when ``new`` folds into it, else None."""


class Outbox:
    def __init__(self, limit: int, *, merge: Merge | None = None, size_of: Callable[[Any], int] | None = None,
                 limit_bytes: int | None = None, droppable: Callable[[Any], bool] = lambda item: False) -> None:
        self.limit = limit
        self.generation = 0
        self.bytes = 0
        self.limit_bytes = limit_bytes
        self._merge = merge
        self._size_of = size_of
        self._droppable = droppable
        self._items: deque[tuple[int, Any]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, item: Any, *, force: bool = False, generation: int | None = None) -> None:
        """Queue ``item`` (made in ``generation``, default the current one); ``OutboxFull`` past the limit."""
        generation = self.generation if generation is None else generation
        if generation < self.generation and self._droppable(item):
            return  # made for text that was cancelled meanwhile
        if self._merge is not None and self._items and self._items[-1][0] == generation:
            merged = self._merge(self._items[-1][1], item)
            if merged is not None:
                self._uncount(self._items[-1][1])
                self._items[-1] = (generation, merged)
                self._count(merged)
                return
        if len(self._items) >= self.limit and not (force or ends_session(item)):
            raise OutboxFull(f"{len(self._items)} items waiting")
        self._items.append((generation, item))
        self._count(item)
        self._ready.set()

    async def get(self) -> Any:
        """The next item, waiting for one; items of a cancelled generation are skipped."""
        while True:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            generation, item = self._items.popleft()
            self._uncount(item)
            if generation >= self.generation or not self._droppable(item):
                return item

    def advance(self) -> int:
        """Start a new generation; waiting droppable items of older ones go. Returns the new generation."""
        self.generation += 1
        kept = [(g, i) for g, i in self._items if not self._droppable(i)]
        self.clear()
        for generation, item in kept:
            self._items.append((generation, item))
            self._count(item)
        if kept:
            self._ready.set()
        return self.generation

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
        self._room.set()

    def items(self) -> list[Any]:
        return [item for _, item in self._items]

    async def wait_room(self) -> None:
        """Return once the byte budget has room (at once without a budget)."""
        await self._room.wait()

    def _count(self, item: Any) -> None:
        if self._size_of is not None:
            self.bytes += self._size_of(item)
            if self.limit_bytes is not None and self.bytes >= self.limit_bytes:
                self._room.clear()

    def _uncount(self, item: Any) -> None:
        if self._size_of is not None:
            self.bytes -= self._size_of(item)
            if self.limit_bytes is None or self.bytes < self.limit_bytes:
                self._room.set()
