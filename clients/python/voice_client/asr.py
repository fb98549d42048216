"""A live transcription stream (``WS /v1/stream/asr``) that survives dropped connections.

:class:`AsrStream` sends audio as the application gives it and yields the
service's events (:mod:`.events`). It keeps the audio it sent after the end of
the last final it received, and the ``commit``/``end`` messages among it. When
the socket drops it reconnects to the same URL declaring where the stream
resumes (``resume_at_s``: the stream time of the first kept byte;
``resume_utterance``: the next utterance number; ``resume_replay_s``: how much
it replays; ``resume_vad_state``: the voice detector's state the last final
carried, asked for with ``vad_state=true``), sends the kept audio again and
carries on: the server numbers and times its events from there, and its voice
detector goes on from where the dropped one was, so finals are neither lost nor
repeated and an utterance cut in the middle is heard again whole (its partials
rebuild). The audio kept is bounded by :attr:`~.backoff.ResumePolicy.max_replay_s`.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from ._stream import ResumableStream, StreamHandle
from .backoff import ResumePolicy
from .errors import ConnectionLost
from .events import Event, Final, Resumed, SpeechStart, parse_asr_event

BYTES_PER_SAMPLE = {"pcm_s16le": 2, "mulaw": 1}
FRAME_S = 0.1
"""Kept audio is replayed in frames of this much audio."""


class AsrStream(StreamHandle):
    """``async with AsrStream(url, sample_rate=16000) as stream:`` then ``send_audio``, ``finish`` and
    ``async for event in stream`` (typically in two tasks). Iteration ends after ``closed``; it raises
    :class:`~.errors.ServiceError` for a fatal error and :class:`~.errors.ConnectionLost` when a drop could
    not be resumed."""

    def __init__(self, url: str = "ws://127.0.0.1:8001/v1/stream/asr", *, sample_rate: int = 16000,
                 encoding: str = "pcm_s16le", language: str | None = None, partials: bool | None = None,
                 turn_detection: str | None = None, api_key: str | None = None,
                 resume: ResumePolicy = ResumePolicy(), params: dict[str, Any] | None = None) -> None:
        if encoding not in BYTES_PER_SAMPLE:
            raise ValueError(f"encoding must be one of {sorted(BYTES_PER_SAMPLE)}, got {encoding!r}")
        query = {"sample_rate": sample_rate, "encoding": encoding, "language": language, "partials": partials,
                 "turn_detection": turn_detection, "vad_state": True if resume.enabled else None, **(params or {})}
        self._core = _AsrCore(url, query, api_key, resume, sample_rate * BYTES_PER_SAMPLE[encoding],
                              BYTES_PER_SAMPLE[encoding])

    async def send_audio(self, data: bytes) -> None:
        """Send audio in the stream's encoding (any length). Returns at once while the stream reconnects, unless
        more than ``max_replay_s`` is kept: then it waits (backpressure: nothing is dropped, and the utterance in
        flight is kept whole for the resume)."""
        await self._core.send_audio(data)

    async def commit(self) -> None:
        """End the current utterance now (its final follows)."""
        await self._core.mark({"type": "commit"})

    async def finish(self) -> None:
        """No more audio: the server finalizes what it has, sends ``closed`` and iteration ends."""
        await self._core.mark({"type": "end"})

    @property
    def reconnects(self) -> int:
        """How many times the stream resumed."""
        return self._core.reconnects

    @property
    def kept_bytes(self) -> int:
        """Audio kept for a replay (sent after the last final's end, or not sent yet)."""
        return len(self._core.kept)

    @property
    def next_utterance(self) -> int:
        return self._core.next_utterance


class _AsrCore(ResumableStream):
    """The state behind :class:`AsrStream`: the kept audio and where each socket is in it."""

    def __init__(self, url: str, query: dict[str, Any], api_key: str | None, policy: ResumePolicy, bytes_per_s: int,
                 bytes_per_sample: int) -> None:
        super().__init__(url, query, api_key, policy)
        self.bytes_per_s, self.bytes_per_sample = bytes_per_s, bytes_per_sample
        self.kept = bytearray()
        self.kept_start = 0  # absolute byte offset of kept[0] in the stream
        self.total = 0  # bytes the application has given
        self.cursor = 0  # absolute byte offset the current socket has been sent up to
        self.marks: list[tuple[int, str]] = []  # (absolute offset, message) of commit/end, in order
        self.mark_index = 0  # marks before this one went out on the current socket
        self.next_utterance = 0
        self.open_start: int | None = None  # byte offset where the utterance in flight began
        self.lost_before = 0  # kept audio of an open utterance was let go up to here (resume impossible)
        self.vad_state: tuple[int, str] | None = None  # (byte offset, state) the last final carried at its end
        self.finishing = False
        self.max_bytes = self._offset(policy.max_replay_s)

    # -- what the application sends -----------------------------------------------------------
    async def send_audio(self, data: bytes) -> None:
        self._raise_if_failed()
        if self.finishing:
            raise RuntimeError("send_audio after finish()")
        self.kept += data
        self.total += len(data)
        self._bound()
        if self.live:
            await self._send_pending()
            return
        while len(self.kept) > self.max_bytes and not self.live:
            self._raise_if_failed()
            self._progress.clear()
            await self._progress.wait()  # reconnecting with a full buffer: wait rather than drop
            self._bound()
        if self.live:
            await self._send_pending()

    async def mark(self, message: dict) -> None:
        self._raise_if_failed()
        if self.finishing:
            return
        self.finishing = message["type"] == "end"
        self.marks.append((self.total, json.dumps(message)))
        if self.live:
            await self._send_pending()

    # -- sending, in order, on the current socket ------------------------------------------------
    async def _send_next(self, ws: ClientConnection) -> bool:
        if self.mark_index < len(self.marks) and self.marks[self.mark_index][0] <= self.cursor:
            await ws.send(self.marks[self.mark_index][1])
            self.mark_index += 1
            return True
        limit = self.marks[self.mark_index][0] if self.mark_index < len(self.marks) else self.total
        if self.cursor >= limit:
            return False
        frame = max(self.bytes_per_sample, int(FRAME_S * self.bytes_per_s))
        start = self.cursor - self.kept_start
        chunk = bytes(self.kept[start:start + min(frame, limit - self.cursor)])
        await ws.send(chunk)
        self.cursor += len(chunk)
        return True

    def _rewind(self) -> None:
        self.cursor = self.kept_start
        self.mark_index = next((i for i, (at, _) in enumerate(self.marks) if at >= self.kept_start),
                               len(self.marks))

    def _let_go(self, until: int) -> None:
        """Forget kept audio before absolute offset ``until`` (never what the socket was not sent)."""
        until = min(until, self.cursor)
        if until <= self.kept_start:
            return
        del self.kept[:until - self.kept_start]
        self.kept_start = until
        keep = [m for m in self.marks[:self.mark_index] if m[0] >= until]
        self.marks = keep + self.marks[self.mark_index:]
        self.mark_index = len(keep)
        self._progress.set()

    def _bound(self) -> None:
        excess = len(self.kept) - self.max_bytes
        if excess <= 0:
            return
        until = self.kept_start + excess // self.bytes_per_sample * self.bytes_per_sample
        if self.open_start is not None and until > self.open_start:
            if not self._connected:  # reconnecting: the resume needs the open utterance whole; send_audio waits
                until = self.open_start
            else:
                self.lost_before = max(self.lost_before, min(until, self.cursor))
        self._let_go(until)

    # -- what the server says -------------------------------------------------------------------
    def _parse(self, body: dict) -> Event:
        return parse_asr_event(body)

    def _offset(self, seconds: float) -> int:
        return int(seconds * self.bytes_per_s) // self.bytes_per_sample * self.bytes_per_sample

    def _on_event(self, event: Event) -> list[Event]:
        if isinstance(event, SpeechStart) and event.utterance >= self.next_utterance:
            self.open_start = self._offset(event.t)
        elif isinstance(event, Final):
            self.next_utterance = max(self.next_utterance, event.utterance + 1)
            self.open_start = None
            end = self._offset(event.end)
            self.vad_state = (end, event.vad_state) if event.vad_state else None
            if end >= self.lost_before:
                self.lost_before = 0
            self._let_go(end)
        return [event]

    # -- resuming ---------------------------------------------------------------------------------
    def _check_resumable(self, reason: str) -> None:
        if self.lost_before:
            raise ConnectionLost(f"connection dropped ({reason}); cannot resume: the utterance in flight "
                                 f"needs more than max_replay_s={self.policy.max_replay_s:g} s of kept audio")

    def _resume_params(self) -> dict[str, Any]:
        # announced no higher than max_replay_s (the server refuses more than its own bound with too_large): the
        # kept audio may pass it by the last chunk send_audio took before waiting for room
        replay_ms = min(self.total - self.kept_start, self.max_bytes) * 1000 // self.bytes_per_s
        state = self.vad_state[1] if self.vad_state is not None and self.vad_state[0] == self.kept_start else None
        return {"resume_at_s": f"{self.kept_start / self.bytes_per_s:.6f}", "resume_utterance": self.next_utterance,
                "resume_replay_s": f"{replay_ms / 1000:.3f}", "resume_vad_state": state}

    def _resumed(self, attempt: int, outage_s: float) -> Resumed:
        return Resumed(attempt, outage_s, at_s=round(self.kept_start / self.bytes_per_s, 6),
                       utterance=self.next_utterance,
                       replay_s=round((self.total - self.kept_start) / self.bytes_per_s, 3))
