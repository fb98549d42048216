"""One live transcription session: ``WS /v1/stream/asr`` on the common session chassis.

The chassis (:mod:`services.common.session`) accepts, admits, reads, writes,
reports and drains; this module adds the ASR messages and the processor task:

* the reader puts binary frames on a bounded inbound queue: when the processor
  falls behind, the queue fills, reading stops and TCP pushes back on the client,
  so audio is never dropped whatever the sending rate. A frame over
  ``max_frame_bytes``, an idle timeout and ``end`` are queued *after* the
  accepted audio, so what was accepted is transcribed and its finals sent before
  the error or close;
* the processor task feeds the :class:`~.processor.AudioProcessor` in order;
* the writer awaits each :class:`~.processor.FinalSlot` in turn, so finals keep
  their place among the events, and stamps ``latency_ms`` when it sends one.

Idle: a session that sends less than ``MIN_PROGRESS_MS`` of audio within
``server.idle_timeout_s`` is closed (``timeout``): a byte now and then does not
keep a slot. Drain (SIGTERM): the frames already queued are transcribed, and
the session closes with 1001 as soon as no utterance is open (or starting); an
utterance still open ``DRAIN_MARGIN_S`` before ``server.drain_timeout_s`` (at
once with ``turn_detection=none``, where nothing else would end it) is ended
with reason ``end`` and its final sent first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from ..common.errors import ErrorCode, ServiceError
from ..common.outbox import CloseRequest, Outbox, OutboxFull
from ..common.session import Session
from .endpointing import TurnMode
from .processor import AudioProcessor, FinalSlot
from .protocol import (Closed, Commit, End, Final, Ready, StreamParams, merge_partials, parse_client_message,
                       parse_stream_params)
from .serving import AsrRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Fatal:
    """Put on the inbound queue after the last accepted frame: finish, then report."""

    error: ServiceError


_DRAIN = object()  # inbound marker: wakes the processor to check whether a draining session can leave
_LEAVE = object()  # inbound marker: draining and out of patience: end the open utterance now, then leave

MIN_PROGRESS_MS = 100
"""Audio a client must send within ``idle_timeout_s`` to keep its session."""
DRAIN_MARGIN_S = 3.0
"""Before the drain timeout, the time an open utterance's final gets to be decoded and sent."""


@dataclass(frozen=True)
class AsrSetup:
    """What a session starts with, from its handshake's query: the stream's parameters, the language finals
    decode with, and the non-fatal problems to report once it runs."""

    params: StreamParams
    language: str | None
    warnings: list[ServiceError]


class AsrSession(Session):
    runtime: AsrRuntime

    def __init__(self, ws: WebSocket, runtime: AsrRuntime, setup: AsrSetup, session_id: str) -> None:
        server = runtime.settings.server
        super().__init__(ws, runtime, session_id, Outbox(server.outbound_queue, merge=merge_partials))
        self.warnings = setup.warnings
        self.inbound: asyncio.Queue = asyncio.Queue(maxsize=server.inbound_queue_frames)
        self.processor = AudioProcessor(session_id, self.outbox, self.tasks, runtime, setup.params, setup.language)
        self._progress_at = time.perf_counter()  # when the client last sent MIN_PROGRESS_MS of audio
        self._unproductive_bytes = 0
        self._leaving = False

    # -- chassis hooks: setup ------------------------------------------------------------------
    @classmethod
    def prepare(cls, ws: WebSocket, runtime: AsrRuntime) -> AsrSetup:
        params, warnings = parse_stream_params(dict(ws.query_params), runtime.settings.server.max_replay_s,
                                               runtime.settings.model.max_context_chars, runtime.vad_model.fingerprint)
        try:
            language = runtime.resolve_language(params.language)
        except ValueError as exc:
            warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"{exc}; using the default"))
            language = runtime.resolve_language(None)
        return AsrSetup(params, language, warnings)

    def begin(self) -> None:
        p = self.params
        log.info("session started", extra={"sample_rate": p.sample_rate, "encoding": p.encoding.value,
                                           "turn_detection": p.turn_detection.value, **p.resume.log_fields(),
                                           **self.processor.context.log_fields()})
        self.greet()
        for warning in self.warnings:
            self.report(warning)
        self.tasks.spawn(self._process(), "processor")

    @property
    def params(self) -> StreamParams:
        """The stream's parameters (the processor's: a dialect may change the format before the first audio)."""
        return self.processor.params

    @property
    def language(self) -> str | None:
        """The language finals decode with (the processor's: a dialect's session update may change it)."""
        return self.processor.language

    @property
    def _progress_bytes(self) -> int:
        return self.params.sample_rate * self.params.encoding.bytes_per_sample * MIN_PROGRESS_MS // 1000

    def greet(self) -> None:
        """Queue the first event: the contract's ``ready``."""
        p = self.params
        self.outbox.put(Ready(self.id, p.sample_rate, p.encoding.value, self.language or "auto",
                              self.runtime.model_name))

    def summary(self) -> dict:
        return {"utterances": self.processor.utterances}

    def keep_alive(self) -> None:
        """The client says it is still there (a dialect's keep-alive message): the idle timer starts over."""
        self._progress_at, self._unproductive_bytes = time.perf_counter(), 0

    # -- chassis hooks: reading ------------------------------------------------------------------
    def receive_timeout(self) -> float:
        idle_s = self.runtime.settings.server.idle_timeout_s
        return max(0.0, self._progress_at + idle_s - time.perf_counter())

    async def on_timeout(self) -> bool:
        idle_s = self.runtime.settings.server.idle_timeout_s
        if time.perf_counter() - self._progress_at >= idle_s:
            raise ServiceError(ErrorCode.TIMEOUT, f"less than {MIN_PROGRESS_MS} ms of audio in {idle_s:g} s; closing")
        return False

    async def on_binary(self, data: bytes) -> bool:
        limit = self.runtime.settings.server.max_frame_bytes
        if len(data) > limit:
            raise ServiceError(ErrorCode.TOO_LARGE, f"binary frame of {len(data)} bytes exceeds the limit of {limit}")
        if self._leaving:
            return True  # the session is ending (drain): audio from here on is not taken
        self._unproductive_bytes += len(data)
        if self._unproductive_bytes >= self._progress_bytes:
            self._progress_at, self._unproductive_bytes = time.perf_counter(), 0
        await self.inbound.put(data)  # blocks when full: backpressure
        return False

    async def on_text(self, raw: str) -> bool:
        message = parse_client_message(raw)
        await self.inbound.put(message)
        return isinstance(message, End)

    async def end_with(self, err: ServiceError) -> None:
        await self.inbound.put(_Fatal(err))  # after the accepted audio: its finals go out first

    def on_drain(self) -> None:
        if self.params.turn_detection is TurnMode.NONE:  # nothing but commit/end would end its utterance
            self.tasks.spawn(self._leave_after(0.0), "drain")
            return
        try:
            self.inbound.put_nowait(_DRAIN)  # wake an idle processor; a busy one checks after its next item
        except asyncio.QueueFull:
            pass
        patience = self.runtime.settings.server.drain_timeout_s - DRAIN_MARGIN_S
        self.tasks.spawn(self._leave_after(max(0.0, patience)), "drain")

    async def _leave_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._leaving = True
        await self.inbound.put(_LEAVE)  # after the frames already queued: they are transcribed first

    # -- the processor task ----------------------------------------------------------------------
    async def _process(self) -> None:
        processor = self.processor
        try:
            while True:
                if await self.handle(await self.inbound.get()):
                    return
                if self.draining and self.inbound.empty() and processor.idle:
                    self.outbox.put(CloseRequest(1001))  # draining: "going away" after the last final
                    return
        except asyncio.CancelledError:
            raise
        except ServiceError as err:
            self.report(err if err.fatal else ServiceError(ErrorCode.INTERNAL, err.message))
        except OutboxFull as exc:
            self.fail(ServiceError(ErrorCode.OVERLOADED, f"client is not reading its events ({exc})"))
        except Exception as exc:  # noqa: BLE001 - this session fails, nobody else
            log.exception("session failed")
            self.report(ServiceError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"))

    async def handle(self, item: Any) -> bool:
        """One inbound item (audio, a client message, a marker), in arrival order; True ends processing. A dialect
        adds its own messages and calls this for the rest."""
        processor = self.processor
        if isinstance(item, (bytes, bytearray)):
            await processor.audio(item)
        elif isinstance(item, Commit):
            await processor.commit()
        elif isinstance(item, End):
            await processor.finish()
            self.outbox.put(Closed())
            self.outbox.put(CloseRequest(1000))
            return True
        elif isinstance(item, _Fatal):
            await processor.finish()
            self.report(item.error)
            return True
        elif item is _LEAVE:
            await processor.finish()  # the open utterance ends now, reason end, with its final
            self.outbox.put(CloseRequest(1001))
            return True
        return False

    def on_fail(self) -> None:
        self.processor.stop()

    # -- chassis hooks: writing ------------------------------------------------------------------
    async def send(self, item: Any) -> bool:
        if not isinstance(item, FinalSlot):
            return await super().send(self.params.resume.shift(item))  # a resumed stream's time and numbering
        try:
            final: Final = self.params.resume.shift(await item.future)
        except ServiceError as err:
            await self.send_error(err)
            await self.close(err.close_code)
            return True
        latency_s = time.perf_counter() - item.decided_at
        final.latency_ms = round(latency_s * 1000, 1)
        await self.write_final(final)
        metrics = self.runtime.metrics
        metrics.time_to_final.observe(latency_s)
        metrics.finals.labels(reason=final.reason.value).inc()
        log.info("final", extra={"utterance": final.utterance, "reason": final.reason.value,
                                 "latency_ms": final.latency_ms, "audio_s": round(final.end - final.start, 2)})
        return False

    async def write_final(self, final: Final) -> None:
        """Send one final as the contract's ``final`` event (a dialect renders its own)."""
        await self.write(final.to_json())
