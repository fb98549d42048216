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

On drain (SIGTERM) the session closes with 1001 as soon as no utterance is open.
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


@dataclass(frozen=True)
class _Prepared:
    params: StreamParams
    language: str | None
    warnings: list[ServiceError]


class AsrSession(Session):
    runtime: AsrRuntime

    def __init__(self, ws: WebSocket, runtime: AsrRuntime, prepared: _Prepared, session_id: str) -> None:
        server = runtime.settings.server
        super().__init__(ws, runtime, session_id, Outbox(server.outbound_queue, merge=merge_partials))
        self.params = prepared.params
        self.language = prepared.language
        self.warnings = prepared.warnings
        self.inbound: asyncio.Queue = asyncio.Queue(maxsize=server.inbound_queue_frames)
        self.processor = AudioProcessor(session_id, self.outbox, self.tasks, runtime, prepared.params, prepared.language)

    # -- chassis hooks: setup ------------------------------------------------------------------
    @classmethod
    def prepare(cls, ws: WebSocket, runtime: AsrRuntime) -> _Prepared:
        params, warnings = parse_stream_params(dict(ws.query_params))
        try:
            language = runtime.resolve_language(params.language)
        except ValueError as exc:
            warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"{exc}; using the default"))
            language = runtime.resolve_language(None)
        return _Prepared(params, language, warnings)

    def begin(self) -> None:
        p = self.params
        log.info("session started", extra={"sample_rate": p.sample_rate, "encoding": p.encoding.value,
                                           "turn_detection": p.turn_detection.value})
        self.outbox.put(Ready(self.id, p.sample_rate, p.encoding.value, self.language or "auto",
                              self.runtime.model_name))
        for warning in self.warnings:
            self.report(warning)
        self.tasks.spawn(self._process(), "processor")

    def summary(self) -> dict:
        return {"utterances": self.processor.utterances}

    # -- chassis hooks: reading ------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> bool:
        limit = self.runtime.settings.server.max_frame_bytes
        if len(data) > limit:
            raise ServiceError(ErrorCode.TOO_LARGE, f"binary frame of {len(data)} bytes exceeds the limit of {limit}")
        await self.inbound.put(data)  # blocks when full: backpressure
        return False

    async def on_text(self, raw: str) -> bool:
        message = parse_client_message(raw)
        await self.inbound.put(message)
        return isinstance(message, End)

    async def end_with(self, err: ServiceError) -> None:
        await self.inbound.put(_Fatal(err))  # after the accepted audio: its finals go out first

    def on_drain(self) -> None:
        try:
            self.inbound.put_nowait(_DRAIN)  # wake an idle processor; a busy one checks after its next item
        except asyncio.QueueFull:
            pass

    # -- the processor task ----------------------------------------------------------------------
    async def _process(self) -> None:
        processor = self.processor
        try:
            while True:
                item = await self.inbound.get()
                if isinstance(item, (bytes, bytearray)):
                    await processor.audio(item)
                elif isinstance(item, Commit):
                    await processor.commit()
                elif isinstance(item, End):
                    await processor.finish()
                    self.outbox.put(Closed())
                    self.outbox.put(CloseRequest(1000))
                    return
                elif isinstance(item, _Fatal):
                    await processor.finish()
                    self.report(item.error)
                    return
                if self.draining and not processor.in_utterance:
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

    def on_fail(self) -> None:
        self.processor.stop()

    # -- chassis hooks: writing ------------------------------------------------------------------
    async def send(self, item: Any) -> bool:
        if not isinstance(item, FinalSlot):
            return await super().send(item)
        try:
            final: Final = await item.future
        except ServiceError as err:
            await self.send_error(err)
            await self.ws.close(err.close_code)
            return True
        latency_s = time.perf_counter() - item.decided_at
        final.latency_ms = round(latency_s * 1000, 1)
        await self.ws.send_text(final.to_json())
        metrics = self.runtime.metrics
        metrics.time_to_final.observe(latency_s)
        metrics.finals.labels(reason=final.reason.value).inc()
        log.info("final", extra={"utterance": final.utterance, "reason": final.reason.value,
                                 "latency_ms": final.latency_ms, "audio_s": round(final.end - final.start, 2)})
        return False
