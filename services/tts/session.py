"""One live synthesis session: ``WS /v1/stream/tts`` on the common session chassis.

The chassis (:mod:`services.common.session`) accepts, admits, reads, writes,
reports and drains; this module adds the TTS messages and the speaker:

* the reader feeds text to the session's :class:`~.text.TextChunker` and
  queues the complete pieces for the :class:`~.speaker.Speaker`; it speaks a
  pending fragment once it has waited ``flush_after_ms``, and it handles
  ``cancel`` itself, at once;
* the writer sends the outbox's events and audio in order, and keeps the
  session's audio clock (samples written): with ``word_timings=true`` each
  piece's word timings are put on it as they are sent, so they count only the
  audio that went out.

Admission comes first, before any other work (the voice lookup too).
Everything queued is bounded: audio by seconds (``max_buffered_audio_s``, which
holds synthesis back), and pieces, flush marks (consecutive ones are merged)
and events by count (``session_queue_items``): a client that floods the session
without reading is closed with ``overloaded`` (1013).

Barge-in: ``cancel`` starts a new outbox generation: the chunker is emptied,
the speaker task is cancelled (its piece is withdrawn from the scheduler, or
stopped between chunks), queued audio, segments and dones of the old
generation are dropped and ``cancelled`` is queued; nothing of the cancelled
text follows ``cancelled``. A fresh speaker task then serves new text. All
per-stream state lives here and in the speaker, never on the shared engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from ..common.errors import ErrorCode, ServiceError
from ..common.outbox import Outbox, OutboxFull
from ..common.session import Session
from .formats import WIRE_FORMATS, AudioEncoder
from .protocol import (Cancel, Cancelled, End, Flush, Ready, Segment, StreamParams, Text, Words, parse_client_message,
                       parse_stream_params)
from .serving import TtsRuntime
from .speaker import Audio, Mark, Piece, PieceTimings, Speaker, WorkQueue, audio_bytes, droppable
from .text import TextChunker
from .voices import ResolvedVoice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TtsSetup:
    """What a session starts with: its query's parameters, and (once admitted) the voice they resolve to."""

    params: StreamParams
    voice: ResolvedVoice | None = None


class TtsSession(Session):
    runtime: TtsRuntime

    def __init__(self, ws: WebSocket, runtime: TtsRuntime, setup: TtsSetup, session_id: str) -> None:
        server = runtime.settings.server
        params, voice = setup.params, setup.voice
        assert voice is not None
        self.params = params
        self.out_rate_hz = params.sample_rate or runtime.native_rate_hz(voice)
        super().__init__(ws, runtime, session_id, Outbox(
            server.session_queue_items, size_of=audio_bytes, droppable=droppable,
            limit_bytes=int(server.max_buffered_audio_s * self.out_rate_hz * params.encoding.bytes_per_sample)))
        self.voice = voice
        self.chunker = TextChunker(runtime.chunker_options)
        self.work = self._new_work()
        self.speaker = Speaker(runtime, voice, AudioEncoder(WIRE_FORMATS[params.encoding], self.out_rate_hz),
                               self.outbox, self.chunker, params.first_segment, params.segment_end,
                               params.word_timings)
        self.speaker_task: asyncio.Task | None = None
        self.piece_voice: ResolvedVoice | None = None
        """A dialect's voice for the pieces queued from now on, where a request names its own (None: the
        session's); the session's encoder resamples it to the session's rate."""
        self.samples_sent = 0  # the session's audio clock: samples written since its first audio
        self._piece_start = 0  # the clock where the piece being sent began
        self._cancel_started = 0.0

    # -- chassis hooks: setup ------------------------------------------------------------------
    @classmethod
    def prepare(cls, ws: WebSocket, runtime: TtsRuntime) -> TtsSetup:
        return TtsSetup(parse_stream_params(dict(ws.query_params)))

    @classmethod
    async def open(cls, ws: WebSocket, runtime: TtsRuntime, setup: TtsSetup, session_id: str) -> "TtsSession":
        voice = await runtime.voices.resolve(setup.params.voice)  # after admission: it may read the disk
        return cls(ws, runtime, TtsSetup(setup.params, voice), session_id)

    def begin(self) -> None:
        log.info("session started", extra={"voice": self.voice.id, "sample_rate": self.out_rate_hz,
                                           "encoding": self.params.encoding.value})
        self.greet()
        self.speaker_task = self.tasks.spawn(self._speak(self.work, self.outbox.generation), "speaker")

    def greet(self) -> None:
        """Queue the first event: the contract's ``ready``."""
        self.outbox.put(Ready(self.id, self.out_rate_hz, self.params.encoding.value, self.voice.id))

    def summary(self) -> dict:
        return {"segments": self.speaker.segments}

    # -- chassis hooks: reading ------------------------------------------------------------------
    def receive_timeout(self) -> float:
        timeout = self.runtime.settings.server.idle_timeout_s
        flush_after_s = self.runtime.settings.text.flush_after_ms / 1000
        if self.chunker.pending and flush_after_s > 0:
            timeout = max(0.0, min(timeout, self.last_input + flush_after_s - time.perf_counter()))
        return timeout

    async def on_timeout(self) -> bool:
        if self.chunker.pending and self.runtime.settings.text.flush_after_ms > 0:
            self._queue(self.chunker.flush())  # the fragment waited long enough: speak it
            return False
        if self._idle():
            return await super().on_timeout()
        return False

    async def on_binary(self, data: bytes) -> bool:
        raise ServiceError(ErrorCode.BAD_MESSAGE, "binary frames are not accepted on the TTS socket; send JSON text "
                                                  "messages ({\"type\":\"text\",\"text\":...}); frame ignored")

    async def on_text(self, raw: str) -> bool:
        return await self.take(parse_client_message(raw))

    async def take(self, msg: Text | Flush | Cancel | End) -> bool:
        """One client message (a dialect maps its own onto these); True stops reading."""
        limits = self.runtime.settings.text
        if isinstance(msg, Text):
            if not msg.text:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "empty text ignored")
            if len(msg.text) > limits.max_text_chars:
                raise ServiceError(ErrorCode.TOO_LARGE, f"text of {len(msg.text)} characters exceeds the limit of "
                                                        f"{limits.max_text_chars}")
            if self.work.waiting_chars() + len(self.chunker) + len(msg.text) > limits.max_buffered_chars:
                raise ServiceError(ErrorCode.TOO_LARGE, f"more than {limits.max_buffered_chars} characters "
                                                        f"waiting to be spoken")
            self._queue(self.chunker.push(msg.text))
        elif isinstance(msg, Flush):
            self._queue(self.chunker.flush())
            self.work.put(Mark(flushes=1))
        elif isinstance(msg, Cancel):
            self._cancel()
        elif isinstance(msg, End):
            self._queue(self.chunker.flush())
            self.work.put(Mark(end=True))
            return True
        return False

    def _queue(self, pieces: list[str]) -> None:
        now = time.perf_counter()
        for text in pieces:
            self.work.put(Piece(text, now, first=not self.speaker.speaking and self.work.empty(),
                                voice=self.piece_voice))

    def _idle(self) -> bool:
        return not self.speaker.speaking and self.work.empty() and not self.chunker.pending and not len(self.outbox)

    def _new_work(self) -> WorkQueue:
        return WorkQueue(self.runtime.settings.server.session_queue_items)

    def _cancel(self) -> None:
        self._cancel_started = time.perf_counter()
        self.chunker.reset()
        if self.speaker_task is not None:
            self.speaker_task.cancel()  # its piece is withdrawn, or stopped at its next chunk
        generation = self.outbox.advance()
        self.work = self._new_work()
        self.speaker.speaking = False
        self.outbox.put(Cancelled())
        self.runtime.metrics.cancels.inc()
        self.speaker_task = self.tasks.spawn(self._speak(self.work, generation), "speaker")

    # -- draining and failing ----------------------------------------------------------------------
    def on_drain(self) -> None:
        self.speaker.draining = True
        self.speaker.leave_if_drained(self.work, self.outbox.generation)

    def on_fail(self) -> None:
        if self.speaker_task is not None:
            self.speaker_task.cancel()

    # -- the speaker task --------------------------------------------------------------------------
    async def _speak(self, work: WorkQueue, generation: int) -> None:
        try:
            await self.speaker.speak(work, generation)
        except asyncio.CancelledError:
            raise
        except OutboxFull as exc:
            self.fail(ServiceError(ErrorCode.OVERLOADED, f"the client is not reading ({exc}); closing"))
        except ServiceError as err:
            self.report(err)
        except Exception as exc:  # noqa: BLE001 - this session fails, nobody else
            log.exception("synthesis failed")
            self.report(ServiceError(ErrorCode.INTERNAL, f"synthesis failed: {type(exc).__name__}"))

    # -- chassis hooks: writing ------------------------------------------------------------------
    async def send(self, item: Any) -> bool:
        metrics = self.runtime.metrics
        if isinstance(item, Audio):
            await self.write_audio(item.data)
            self.samples_sent += len(item.data) // self.params.encoding.bytes_per_sample
            if item.first_of is not None:
                metrics.time_to_first_audio.observe(time.perf_counter() - item.first_of.ready_at)
            return False
        if isinstance(item, Segment):
            self._piece_start = self.samples_sent  # the piece's audio follows, after all the audio sent before it
        elif isinstance(item, PieceTimings):
            item = self.on_clock(item)
        await self.send_event(item)
        if isinstance(item, Cancelled):
            metrics.cancel_ack_seconds.observe(time.perf_counter() - self._cancel_started)
        return False

    def on_clock(self, timings: PieceTimings) -> Words:
        """A piece's word timings on the session's audio clock (what was sent, so audio a barge-in dropped is not
        counted)."""
        rate, base = self.out_rate_hz, self._piece_start
        return Words(timings.segment, [
            {"word": s.word, "start": round((base + s.start) / rate, 3), "end": round((base + s.end) / rate, 3),
             "start_sample": base + s.start, "end_sample": base + s.end} for s in timings.words.spans],
            timings.words.estimated)

    async def write_audio(self, data: bytes) -> None:
        await self.write(data)

    async def send_event(self, item: Any) -> None:
        """An event or error, as the contract's JSON (a dialect renders its own)."""
        await super().send(item)
