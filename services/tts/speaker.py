"""The work of one synthesis stream: pieces of text in, segments and audio out.

A :class:`Speaker` belongs to one session and speaks what the session's reader
queued on its :class:`WorkQueue` - :class:`Piece` s of text and flush
:class:`Mark` s - one at a time, in order, into the session's outbox: a ``segment`` event, then the piece's
audio pulled from ``runtime.stream`` (resampled and encoded on the model's
worker thread; with word timings, the piece's :class:`PieceTimings` among it, ahead of the audio they
describe), then ``segment_end`` where the client asked for it (a
resuming client learns the piece is complete), then ``done`` for a flush mark,
``closed`` and the close for an ``end``. Before each piece it waits for room in the outbox's audio budget, so a
slow reader holds synthesis back instead of filling memory. Everything it
queues carries its *generation*: after a barge-in the session starts a new
generation and a new :meth:`Speaker.speak` task, and nothing of the old one
reaches the client. While the instance drains, the speaker closes the session
with 1001 once nothing is being or waiting to be spoken. The same encoder
serves every piece of the session. The speaker holds the session's outbox and
chunker, never the session itself (no reference cycle keeps a session alive).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..common.outbox import CloseRequest, Outbox, QueueFull
from ..common.scheduler import Priority
from .formats import AudioEncoder
from .protocol import Closed, Done, Segment, SegmentEnd
from .serving import TtsRuntime
from .text import TextChunker
from .voices import ResolvedVoice
from .words import PieceWords, WordRate


@dataclass(frozen=True)
class Piece:
    text: str
    ready_at: float  # perf_counter when it was cut
    first: bool  # nothing else was waiting or speaking: its first audio is a time-to-first-audio
    voice: ResolvedVoice | None = None  # the voice it is spoken with (None: the speaker's)


@dataclass(frozen=True)
class Mark:
    """A flush: ``done`` goes out once everything before it is spoken (``end``: then ``closed`` and the close)."""

    end: bool = False
    flushes: int = 0  # client flushes this mark answers (merged marks add up)


@dataclass(frozen=True)
class Audio:
    data: bytes
    first_of: Piece | None = None  # set on a piece's first audio when it measures time to first audio


class WorkQueue:
    """What a session's reader queued for its speaker, in order: pieces and marks. At most ``limit`` wait (past
    that, :class:`~services.common.outbox.QueueFull`: the client floods without reading), and a mark right behind
    a waiting mark joins it, so a burst of flushes costs one ``done``. A barge-in replaces the whole queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Piece | Mark] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, item: Piece | Mark) -> None:
        last = self._items[-1] if self._items else None
        if isinstance(item, Mark) and isinstance(last, Mark):
            self._items[-1] = Mark(end=last.end or item.end, flushes=last.flushes + item.flushes)
            return
        if len(self._items) >= self.limit:
            raise QueueFull(f"{len(self._items)} pieces and marks waiting")
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Piece | Mark:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def waiting_chars(self) -> int:
        """Characters of the pieces waiting to be spoken."""
        return sum(len(item.text) for item in self._items if isinstance(item, Piece))


@dataclass(frozen=True)
class PieceTimings:
    """Words of segment ``segment``, in samples from the piece's first sample (the session puts them on its clock
    as it sends them)."""

    segment: int
    words: PieceWords


def droppable(item: Any) -> bool:
    """What a barge-in drops from the outbox: the cancelled text's audio, segments, word timings and dones."""
    return isinstance(item, (Audio, Segment, SegmentEnd, PieceTimings, Done))


def audio_bytes(item: Any) -> int:
    return len(item.data) if isinstance(item, Audio) else 0


class Speaker:
    def __init__(self, runtime: TtsRuntime, voice: ResolvedVoice, encoder: AudioEncoder, outbox: Outbox,
                 chunker: TextChunker, first_segment: int = 0, segment_end: bool = False,
                 word_timings: bool = False) -> None:
        self.runtime = runtime
        self.voice = voice
        self.encoder = encoder
        self.outbox = outbox
        self.chunker = chunker
        self.segments = first_segment  # the next segment's number (a resumed stream carries on)
        self.segment_end = segment_end
        self.words = WordRate() if word_timings else None  # the fallback's rate, for engines that do not align
        self.speaking = False
        self.draining = False

    def leave_if_drained(self, work: WorkQueue, generation: int) -> bool:
        """While draining, close (after everything queued) once nothing is being or waiting to be spoken."""
        if self.draining and not self.speaking and work.empty() and not self.chunker.pending:
            self.outbox.put(CloseRequest(1001), generation=generation)
            return True
        return False

    async def speak(self, work: WorkQueue, generation: int) -> None:
        """Speak ``work`` until an ``end`` mark (or until cancelled). Raises ``OutboxFull`` for a client that
        does not read, ``ServiceError`` when synthesis fails."""
        outbox = self.outbox
        while True:
            item = await work.get()
            if isinstance(item, Mark):
                self.speaking = not work.empty()  # a reply answered with done: the next piece starts a new one
                outbox.put(Done(item.flushes), generation=generation)
                if item.end:
                    outbox.put(Closed(), generation=generation)
                    outbox.put(CloseRequest(1000), generation=generation)
                    return
                if self.leave_if_drained(work, generation):
                    return
                continue
            self.speaking = True  # from the moment a piece is taken: one cut now is not a reply's first
            await outbox.wait_room()  # a slow reader holds synthesis back (bounded buffer)
            if generation != outbox.generation:
                return
            index, self.segments = self.segments, self.segments + 1
            outbox.put(Segment(index, item.text), generation=generation)
            first = item if item.first else None
            priority = Priority.URGENT if item.first else Priority.NORMAL  # first audio of a reply goes first
            async with contextlib.aclosing(self.runtime.stream(item.voice or self.voice, item.text, self.encoder,
                                                               priority=priority, words=self.words)) as audio:
                async for data in audio:
                    if isinstance(data, PieceWords):
                        if data.spans:
                            outbox.put(PieceTimings(index, data), generation=generation)
                        continue
                    outbox.put(Audio(data, first), generation=generation)
                    first = None
            if self.segment_end:
                outbox.put(SegmentEnd(index), generation=generation)
            self.speaking = not work.empty()
            if self.leave_if_drained(work, generation):
                return
