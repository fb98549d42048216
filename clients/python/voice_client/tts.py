"""A live synthesis stream (``WS /v1/stream/tts``) that survives dropped connections.

:class:`TtsStream` sends text fragments (an LLM's tokens), ``flush``,
``cancel`` and ``end``, and yields the service's events with the audio as
:class:`~.events.Audio` events tagged with their segment. It opens the socket
with ``segment_end=true``, so the server says when each piece's audio is
complete, and keeps the text not yet fully spoken (and the flushes and the
``end`` among it). When the socket drops it reconnects to the same URL with
``resume_segment`` (the number of the piece to speak next) and sends the kept
text again: the pieces already complete are not spoken again, and the piece
that was cut starts over from its beginning (:class:`~.events.Resumed` says
so with ``restarted``). With ``word_timings=True`` the server also sends
:class:`~.events.Words` before the audio they describe; the stream puts them on
its own audio clock (samples received since its first audio, across resumes)
and :meth:`TtsStream.heard_text` says which words of the current reply a
listener heard by a given position in that audio (:mod:`.words`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from websockets.asyncio.client import ClientConnection

from ._stream import ResumableStream, StreamHandle
from .backoff import ResumePolicy
from .events import Audio, Cancelled, Done, Event, Resumed, Segment, SegmentEnd, Words, parse_tts_event
from .words import ReplyWords

_SPEAKABLE = re.compile(r"\w", re.UNICODE)
"""Text the server speaks has a letter or digit (services/tts/text.py ``is_speakable``)."""
MAX_KEPT_CHARS = 50000
"""Text kept while the stream reconnects before ``send_text`` waits for the resume (the server's default
``max_buffered_chars``: a replay of more would be refused with ``too_large``)."""
TEXT_FRAME_CHARS = 4000
"""Kept text is sent again in messages of at most this many characters."""


def spoken_through(text: str, piece: str) -> int | None:
    """The index in ``text`` just past ``piece`` (the server collapses whitespace in pieces and drops pieces with
    nothing to say, so the match ignores whitespace and may skip such text); None when it is not there."""
    target = "".join(piece.split())
    if not target:
        return 0
    where = [i for i, ch in enumerate(text) if not ch.isspace()]
    found = "".join(text[i] for i in where).find(target)
    return None if found < 0 else where[found + len(target) - 1] + 1


class TtsStream(StreamHandle):
    """``async with TtsStream(url, voice=...) as tts:`` then ``send_text``/``flush``/``cancel``/``finish`` and
    ``async for event in tts``. Iteration ends after ``closed``; it raises :class:`~.errors.ServiceError` for a
    fatal error and :class:`~.errors.ConnectionLost` when a drop could not be resumed."""

    def __init__(self, url: str = "ws://127.0.0.1:8002/v1/stream/tts", *, voice: str | None = None,
                 encoding: str = "pcm_s16le", sample_rate: int | None = None, api_key: str | None = None,
                 resume: ResumePolicy = ResumePolicy(), params: dict[str, Any] | None = None,
                 word_timings: bool = False) -> None:
        query = {"voice": voice, "encoding": encoding, "sample_rate": sample_rate, "segment_end": True,
                 "word_timings": True if word_timings else None, **(params or {})}
        self._core = _TtsCore(url, query, api_key, resume, 1 if encoding == "mulaw" else 2)

    async def send_text(self, text: str) -> None:
        """Append text (any fragment); the server speaks it piece by piece as sentences complete. Returns at once
        while the stream reconnects, unless more than ``MAX_KEPT_CHARS`` (50000) characters would be kept: then it
        waits for the resume."""
        if text:
            await self._core.add("text", text)

    async def flush(self) -> None:
        """Speak everything sent so far, even an unfinished sentence; ``done`` follows its audio. Every flush is
        answered with a ``done``, also one with nothing to say; a flush with nothing speakable (no letter or digit)
        since one whose ``done`` has not come yet is not sent: that ``done`` answers both (the server merges them)."""
        await self._core.add("flush")

    async def finish(self) -> None:
        """Speak the rest, then the session closes (``done``, ``closed``) and iteration ends."""
        await self._core.add("end")

    async def cancel(self) -> None:
        """Barge-in: stop speaking, drop the text not yet spoken; ``cancelled`` follows."""
        await self._core.cancel()

    @property
    def reconnects(self) -> int:
        return self._core.reconnects

    @property
    def received_samples(self) -> int:
        """Samples of audio received so far: the stream's audio clock."""
        return self._core.received_samples

    def heard_words(self, played_samples: int, *, whole: bool = False) -> list[dict]:
        """The words of the current reply (the one being spoken, or the last one, also after it was cancelled)
        whose audio had begun (``whole=True``: had ended) once ``played_samples`` samples of the stream's audio
        were played. Needs ``word_timings=True``."""
        return self._core.reply_words.heard(played_samples, whole)

    def heard_text(self, played_samples: int, *, whole: bool = False) -> str:
        """:meth:`heard_words` joined with spaces: at a barge-in, the part of the reply the listener heard."""
        return self._core.reply_words.heard_text(played_samples, whole)

    @property
    def pending_text(self) -> str:
        """The text sent and not yet fully spoken."""
        return "".join(op[1] for op in self._core.ops if op[0] == "text")


class _TtsCore(ResumableStream):
    """The state behind :class:`TtsStream`: the kept messages and the segments in flight."""

    def __init__(self, url: str, query: dict[str, Any], api_key: str | None, policy: ResumePolicy,
                 bytes_per_sample: int = 2) -> None:
        super().__init__(url, query, api_key, policy)
        self.bytes_per_sample = bytes_per_sample
        self.received_samples = 0  # the stream's audio clock
        self.session_base = 0  # the clock where the current socket's session began
        self.rate_hz = 0  # the audio's rate (from ready)
        self.reply_words = ReplyWords()
        self.ops: list[list[str]] = []  # [kind, text]: text (what is left of it), flush, end; not yet answered
        self.base = 0  # the absolute number of ops[0] (ops are numbered from the start of the stream)
        self.sent = 0  # ops numbered below this went out on the current socket
        self.segments: dict[int, str] = {}  # index -> text of segments begun and not yet complete
        self.open_segment: int | None = None  # the segment whose audio is arriving
        self.open_had_audio = False
        self.next_segment = 0
        self.cancelling = False  # a cancel was sent and its cancelled has not come
        self.ended = False

    # -- what the application sends --------------------------------------------------------------------
    async def add(self, kind: str, text: str = "") -> None:
        self._raise_if_failed()
        if self.ended:
            raise RuntimeError(f"{kind} after finish()")
        if kind == "flush" and self._joins_kept_flush():
            return  # the server would merge it into that flush (one done for both): not sent, that done answers it
        while text and not self.live and self._kept_chars() + len(text) > MAX_KEPT_CHARS:
            self._raise_if_failed()
            self._progress.clear()
            await self._progress.wait()  # reconnecting with much text kept: wait rather than grow without bound
        self.ops.append([kind, text])
        self.ended = kind == "end"
        if self.live:
            await self._send_pending()

    def _kept_chars(self) -> int:
        return sum(len(op[1]) for op in self.ops)

    def _joins_kept_flush(self) -> bool:
        """A flush now would join the last kept flush on the server: that flush is not answered yet and no
        speakable text was sent after it (the server's ``WorkQueue.put`` merges a flush mark into a waiting one
        when no piece lies between, and text with no letter or digit makes no piece: ``is_speakable``). Such a
        flush is not sent, so every flush sent gets exactly one ``done`` and the kept ops stay in step."""
        last = next((i for i in range(len(self.ops) - 1, -1, -1) if self.ops[i][0] != "text"), None)
        if last is None or self.ops[last][0] != "flush":
            return False
        return not _SPEAKABLE.search("".join(op[1] for op in self.ops[last + 1:]))

    async def cancel(self) -> None:
        self._raise_if_failed()
        self._drop(len(self.ops))
        self.cancelling = True
        await self._send_control({"type": "cancel"})

    def _drop(self, count: int) -> None:
        """Forget the first ``count`` ops (answered, or cancelled)."""
        del self.ops[:count]
        self.base += count
        self.sent = max(self.sent, self.base)

    async def _send_next(self, ws: ClientConnection) -> bool:
        number = self.sent
        if number - self.base >= len(self.ops):
            return False
        kind, text = self.ops[number - self.base]
        if kind != "text":
            await ws.send(json.dumps({"type": kind}))
        for i in range(0, len(text), TEXT_FRAME_CHARS):
            await ws.send(json.dumps({"type": "text", "text": text[i:i + TEXT_FRAME_CHARS]}))
        self.sent = max(self.sent, number + 1)
        return True

    def _rewind(self) -> None:
        self.sent = self.base

    # -- what the server says ---------------------------------------------------------------------------
    def _parse(self, body: dict) -> Event:
        if body.get("type") == "ready" and isinstance(body.get("sample_rate"), int):
            self.rate_hz = body["sample_rate"]  # every socket's ready comes through here
        return parse_tts_event(body)

    def _on_binary(self, data: bytes) -> list[Event]:
        if self.open_segment is not None:
            self.open_had_audio = True
        self.received_samples += len(data) // self.bytes_per_sample
        return [Audio(data, self.open_segment)]

    def _on_event(self, event: Event) -> list[Event]:
        if isinstance(event, Words):
            event = self._on_clock(event)
            self.reply_words.add(event.words)
        elif isinstance(event, Segment):
            self.segments[event.index] = event.text
            self.open_segment, self.open_had_audio = event.index, False
            self.next_segment = max(self.next_segment, event.index + 1)
        elif isinstance(event, SegmentEnd):
            text = self.segments.pop(event.index, "")
            self.open_segment = None
            if not self.cancelling:
                self._spoken(text)
        elif isinstance(event, Done):
            self.reply_words.reply_over()
            if not self.cancelling:
                self._answered_flush()
        elif isinstance(event, Cancelled):
            self.cancelling, self.open_segment = False, None
            self.segments.clear()
            self.reply_words.cancelled(self.received_samples)
        return [event]

    def _on_clock(self, event: Words) -> Words:
        """The session counts its audio from its own first sample; the stream, from the first socket's."""
        base = self.session_base
        if not base:
            return event
        shifted = [{**w, "start_sample": w["start_sample"] + base, "end_sample": w["end_sample"] + base,
                    "start": round((w["start_sample"] + base) / self.rate_hz, 3) if self.rate_hz else w["start"],
                    "end": round((w["end_sample"] + base) / self.rate_hz, 3) if self.rate_hz else w["end"]}
                   for w in event.words]
        return Words(event.segment, shifted, event.estimated)

    def _spoken(self, piece: str) -> None:
        """A piece is complete: take its text off the front of what is kept (it may span several fragments)."""
        count = next((i for i, op in enumerate(self.ops) if op[0] != "text"), len(self.ops))
        through = spoken_through("".join(op[1] for op in self.ops[:count]), piece)
        if through is None:
            return  # not found (it should be): keep the text; speaking it twice beats losing it
        done = 0
        for op in self.ops[:count]:
            take = min(through, len(op[1]))
            op[1], through = op[1][take:], through - take
            if op[1] or through < 0:
                break
            done += 1
        self._drop(done)

    def _answered_flush(self) -> None:
        """``done``: everything up to the first kept flush (or the end) was spoken."""
        for i, (kind, _) in enumerate(self.ops):
            if kind in ("flush", "end"):
                self._drop(i + 1 if kind == "flush" else i)
                return

    # -- resuming -------------------------------------------------------------------------------------------
    def _resume_params(self) -> dict[str, Any]:
        segment = self.open_segment if self.open_segment is not None else self.next_segment
        return {"resume_segment": segment}

    def _resumed(self, attempt: int, outage_s: float) -> Resumed:
        self.session_base = self.received_samples  # the new session's clock starts here
        restarted = self.open_segment is not None and self.open_had_audio
        segment = self.open_segment if self.open_segment is not None else self.next_segment
        if self.open_segment is not None:
            self.segments.pop(self.open_segment, None)
        self.open_segment = None
        return Resumed(attempt, outage_s, segment=segment, restarted=restarted)

    def _after_resume(self) -> list[Event]:
        if self.cancelling:  # the cancel's answer was lost with the socket; the new session has none of that text
            self.cancelling = False
            return [Cancelled()]
        return []
