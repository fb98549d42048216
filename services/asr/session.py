"""One live transcription session: the state and tasks behind one ``WS /v1/stream/asr``.

Three tasks per connection, joined by bounded queues:

* the *reader* takes frames off the socket into the inbound queue (when it is
  full, reading stops and TCP pushes back on the client: no audio is dropped);
* the *processor* decodes and resamples audio, runs it through the shared VAD,
  the :class:`~.endpointing.Endpointer` and, at pauses, the shared Smart Turn
  model; it asks the shared Whisper scheduler for partial hypotheses
  (LocalAgreement-2) and for each utterance's final;
* the *writer* sends events from the :class:`~.outbox.Outbox` in order.

All per-stream state (VAD recurrent state, resampler, audio, agreement) lives
here; the models only ever see requests. When the client goes, every task and
every pending model request of the session is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..common import logs
from ..common.admission import refuse, session_slot
from ..common.audio import ByteDecoder, StreamResampler
from ..common.errors import ErrorCode, ServiceError
from ..common.scheduler import Priority, Superseded
from ..common.tasks import TaskSet
from .buffer import SampleBuffer
from .endpointing import Action, CheckTurn, Ended, Endpointer, EndReason, Resumed, Speculate, Started
from .engine import DecodeRequest, DecodeResult
from .outbox import CloseRequest, FinalSlot, Outbox, OutboxFull
from .protocol import (Closed, Commit, End, Final, Partial, Ready, SpeechStart, StreamParams, parse_client_message,
                       parse_stream_params)
from .serving import AsrRuntime
from .streaming import LocalAgreement
from .turn import TurnDecision
from .vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, SpeechState, VadStream

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 0.5  # on SIGTERM, frames already on the wire are read before a session counts as idle


@dataclass(frozen=True)
class _Fatal:
    """Put on the inbound queue after the last accepted frame: finish, then report."""

    error: ServiceError


@dataclass
class _Utterance:
    index: int
    start_sample: int
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    last_partial_sample: int = 0
    last_partial_text: str = ""
    speculative_end: int | None = None
    speculative: asyncio.Task | None = None

    @property
    def frozen(self) -> bool:
        """True during a pause once the final is being decoded: no more partials for it."""
        return self.speculative is not None


_DRAIN = object()  # inbound marker: wakes the processor to check whether a draining session can leave


def _seconds(sample: int) -> float:
    return round(sample / SAMPLE_RATE_HZ, 3)


class AsrSession:
    def __init__(self, ws: WebSocket, runtime: AsrRuntime, params: StreamParams, language: str | None,
                 session_id: str) -> None:
        s = runtime.settings
        self.ws = ws
        self.runtime = runtime
        self.params = params
        self.language = language
        self.id = session_id
        self.outbox = Outbox(s.server.outbound_queue)
        self.inbound: asyncio.Queue = asyncio.Queue(maxsize=s.server.inbound_queue_frames)
        self.decoder = ByteDecoder(params.encoding)
        self.resampler = StreamResampler(params.sample_rate, SAMPLE_RATE_HZ)
        self.buffer = SampleBuffer()
        self.vad_stream = VadStream()
        self.endpointer = Endpointer(runtime.endpoint_options(params.turn_detection), runtime.detector_options())
        self.vad_position = 0
        self.next_index = 0
        self.utterance: _Utterance | None = None
        self.partial_interval = s.streaming.partial_interval_ms * SAMPLE_RATE_HZ // 1000
        self.min_partial = s.streaming.min_partial_audio_ms * SAMPLE_RATE_HZ // 1000
        self.keep_back = (s.vad.speech_pad_ms + s.vad.min_speech_ms) * SAMPLE_RATE_HZ // 1000 + 4 * WINDOW_SAMPLES
        self._tasks = TaskSet(self.id)
        self._gone = asyncio.Event()
        self._draining = False

    # -- entry point (the route calls this) ------------------------------------------
    @classmethod
    async def serve(cls, ws: WebSocket, runtime: AsrRuntime) -> None:
        await ws.accept()
        with logs.session_scope() as session_id:
            try:
                params, warnings = parse_stream_params(dict(ws.query_params))
                try:
                    language = runtime.resolve_language(params.language)
                except ValueError as exc:
                    warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"{exc}; using the default"))
                    language = runtime.resolve_language(None)
                runtime.admission.acquire()
            except ServiceError as err:
                await refuse(ws, runtime.metrics, err)
                return
            with session_slot(runtime.admission, runtime.metrics):
                await cls(ws, runtime, params, language, session_id).run(warnings)

    async def run(self, warnings: list[ServiceError] = ()) -> None:
        p = self.params
        log.info("session started", extra={"sample_rate": p.sample_rate, "encoding": p.encoding.value,
                                           "turn_detection": p.turn_detection.value})
        self.outbox.put(Ready(self.id, p.sample_rate, p.encoding.value, self.language or "auto",
                              self.runtime.model_name))
        for warning in warnings:
            self._report(warning)
        writer = self._tasks.spawn(self._write(), "writer")
        self._tasks.spawn(self._read(), "reader")
        self._tasks.spawn(self._process(), "processor")
        self._tasks.spawn(self._watch_drain(), "drain")
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            for slot in self.outbox.drain_slots():
                slot.future.cancel()
            if self.utterance is not None and self.utterance.speculative is not None:
                self.utterance.speculative.cancel()
            await self._tasks.cancel_all()
            log.info("session ended", extra={"utterances": self.next_index})

    # -- reader ---------------------------------------------------------------------------
    async def _read(self) -> None:
        limits = self.runtime.settings.server
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), timeout=limits.idle_timeout_s)
                except asyncio.TimeoutError:
                    await self.inbound.put(_Fatal(ServiceError(
                        ErrorCode.TIMEOUT, f"no data for {limits.idle_timeout_s:g} s; closing")))
                    return
                if message["type"] == "websocket.disconnect":
                    self._gone.set()
                    return
                data = message.get("bytes")
                if data is not None:
                    if len(data) > limits.max_frame_bytes:
                        await self.inbound.put(_Fatal(ServiceError(
                            ErrorCode.TOO_LARGE, f"binary frame of {len(data)} bytes exceeds the limit of "
                                                 f"{limits.max_frame_bytes}")))
                        return
                    await self.inbound.put(data)  # blocks when full: backpressure
                    continue
                text = message.get("text")
                if text is None:
                    continue
                try:
                    msg = parse_client_message(text)
                except ServiceError as err:
                    self._report(err)
                    continue
                await self.inbound.put(msg)
                if isinstance(msg, End):
                    return
        except (WebSocketDisconnect, RuntimeError):
            self._gone.set()

    async def _watch_drain(self) -> None:
        """The instance is draining (SIGTERM): the processor ends the session with 1001 once no
        utterance is open, i.e. right after the final of the utterance in progress (services/common/serve.py)."""
        await self.runtime.admission.drain_requested.wait()
        await asyncio.sleep(DRAIN_GRACE_S)  # audio sent just before the signal is still read and detected first
        self._draining = True
        try:
            self.inbound.put_nowait(_DRAIN)  # wake an idle processor; a busy one checks after its next item
        except asyncio.QueueFull:
            pass

    # -- processor -----------------------------------------------------------------------
    async def _process(self) -> None:
        try:
            while True:
                item = await self.inbound.get()
                if isinstance(item, (bytes, bytearray)):
                    await self._on_audio(item)
                elif isinstance(item, Commit):
                    await self._close_now(EndReason.COMMIT)
                elif isinstance(item, End):
                    await self._flush_tail()
                    await self._close_now(EndReason.END)
                    self.outbox.put(Closed(), force=True)
                    self.outbox.put(CloseRequest(1000), force=True)
                    return
                elif isinstance(item, _Fatal):
                    await self._flush_tail()
                    await self._close_now(EndReason.END)
                    self._report(item.error)
                    return
                if self._draining and self.utterance is None:
                    self.outbox.put(CloseRequest(1001), force=True)  # draining: "going away" after the last final
                    return
        except asyncio.CancelledError:
            raise
        except ServiceError as err:
            self._report(err if err.fatal else ServiceError(ErrorCode.INTERNAL, err.message))
        except OutboxFull as exc:
            self._report(ServiceError(ErrorCode.OVERLOADED, f"client is not reading its events ({exc})"))
        except Exception as exc:  # noqa: BLE001 - this session fails, nobody else
            log.exception("session failed")
            self._report(ServiceError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"))

    async def _on_audio(self, frame: bytes) -> None:
        samples = self.decoder.decode(frame)
        self.runtime.metrics.audio_seconds.inc(samples.size / self.params.sample_rate)
        self.buffer.append(self.resampler.process(samples))
        await self._run_vad()
        self._maybe_partial()
        self._trim()

    async def _run_vad(self) -> None:
        windows = (self.buffer.end - self.vad_position) // WINDOW_SAMPLES
        if windows <= 0:
            return
        chunk = self.buffer.slice(self.vad_position, self.vad_position + windows * WINDOW_SAMPLES)
        self.vad_position += windows * WINDOW_SAMPLES
        probabilities = await self.runtime.speech_probabilities(self.vad_stream, chunk)
        for probability in probabilities:
            for action in self.endpointer.push(float(probability)):
                await self._act(action)

    async def _flush_tail(self) -> None:
        self.buffer.append(self.resampler.process(np.zeros(0, dtype=np.float32), last=True))
        await self._run_vad()

    async def _close_now(self, reason: EndReason) -> None:
        if self.endpointer.in_utterance:
            speaking = self.endpointer.detector.state is SpeechState.SPEAKING
            now = self.buffer.end if speaking else None
            for action in self.endpointer.split(reason, now):
                await self._act(action)

    async def _act(self, action: Action) -> None:
        if isinstance(action, Started):
            self.utterance = _Utterance(self.next_index, action.start_sample, last_partial_sample=action.start_sample)
            self.next_index += 1
            self.outbox.put(SpeechStart(self.utterance.index, _seconds(action.start_sample)))
        elif isinstance(action, Speculate):
            u = self.utterance
            if u is not None and self.runtime.can_speculate():
                # Decoded ahead of the turn decision at NORMAL priority; promoted when the turn ends.
                u.speculative_end = action.end_sample
                u.speculative = self._tasks.spawn(
                    self._decode_final(u, action.end_sample, Priority.NORMAL, self._speculation_key(u)),
                    "speculative-final")
        elif isinstance(action, Resumed):
            u = self.utterance
            if u is not None and u.speculative is not None:
                u.speculative.cancel()
                u.speculative, u.speculative_end = None, None
        elif isinstance(action, CheckTurn):
            u = self.utterance
            if u is None:
                return
            audio = self.buffer.slice(u.start_sample, self.endpointer.position_sample)
            decision = await self.runtime.turn_decision(audio, action.silence_ms)
            if decision is TurnDecision.COMPLETE and self.utterance is u:
                self._finish(self.endpointer.end(EndReason.TURN, action.end_sample))
        elif isinstance(action, Ended):
            self._finish(action)

    def _speculation_key(self, u: _Utterance) -> tuple:
        return ("speculative-final", self.id, u.index)

    def _decode_final(self, u: _Utterance, end_sample: int, priority: Priority = Priority.URGENT,
                      replace_key: tuple | None = None):
        rt = self.runtime
        # The final is a fresh beam search over the whole utterance, deliberately not forced
        # onto the partials' stable prefix: it is the accurate, never-revised transcript, and
        # it is the same request an upload of this audio makes (see files.py).
        request = DecodeRequest(
            audio=self.buffer.slice(u.start_sample, end_sample), beam_size=rt.settings.model.beam_size,
            word_timestamps=True, language=self.language,
        )
        return rt.decode_final(request, priority, replace_key)

    def _finish(self, ended: Ended) -> None:
        u = self.utterance
        self.utterance = None
        if u is None:
            return
        decided_at = time.perf_counter()
        if u.speculative is not None and u.speculative_end == ended.end_sample:
            decoding = u.speculative
            self.runtime.whisper.promote(self._speculation_key(u), Priority.URGENT)
        else:
            if u.speculative is not None:
                u.speculative.cancel()
            decoding = self._tasks.spawn(self._decode_final(u, ended.end_sample), "final")
        slot = FinalSlot(u.index, asyncio.ensure_future(self._build_final(u, ended, decoding)), decided_at)
        self.outbox.put(slot, force=True)

    async def _build_final(self, u: _Utterance, ended: Ended, decoding: asyncio.Task) -> Final:
        result: DecodeResult = await decoding
        offset = ended.start_sample / SAMPLE_RATE_HZ
        words = [{"word": w.word.strip(), "start": round(w.start + offset, 3), "end": round(w.end + offset, 3),
                  "probability": round(w.probability, 4)} for w in result.words]
        return Final(u.index, result.text.strip(), _seconds(ended.start_sample), _seconds(ended.end_sample),
                     ended.reason, words)

    def _maybe_partial(self) -> None:
        u = self.utterance
        if (u is None or not self.params.partials or u.frozen
                or self.endpointer.detector.state is not SpeechState.SPEAKING):
            return
        position = self.endpointer.position_sample
        if position - u.last_partial_sample < self.partial_interval or position - u.start_sample < self.min_partial:
            return
        u.last_partial_sample = position
        audio = self.buffer.slice(u.start_sample, position)
        self._tasks.spawn(self._partial(u, audio, position), "partial")

    async def _partial(self, u: _Utterance, audio: np.ndarray, position: int) -> None:
        rt = self.runtime
        request = DecodeRequest(audio=audio, beam_size=rt.settings.model.partial_beam_size,
                                prefix=u.agreement.stable, language=self.language)
        try:
            result = await rt.decode_partial(request, replace_key=self.id)
        except Superseded:
            return  # a newer partial replaced it
        except ServiceError as err:
            if err.code is ErrorCode.INTERNAL:  # the engine failed (or hung) on this session's audio: so would its final
                self._report(err)
            return  # the model is busy: partials are optional
        if self.utterance is not u or u.frozen or not u.agreement.update(result.text):
            return
        text = u.agreement.text.strip()
        if text and text != u.last_partial_text:
            u.last_partial_text = text
            try:
                self.outbox.put_partial(Partial(u.index, text, u.agreement.stable.strip(), _seconds(position)))
                rt.metrics.partials.inc()
            except OutboxFull:
                pass

    def _trim(self) -> None:
        keep = self.vad_position - self.keep_back
        if self.utterance is not None:
            keep = min(keep, self.utterance.start_sample)
        if keep > self.buffer.start:
            self.buffer.discard_before(keep)

    # -- writer ----------------------------------------------------------------------------
    async def _write(self) -> None:
        metrics = self.runtime.metrics
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, FinalSlot):
                    try:
                        final: Final = await item.future
                    except ServiceError as err:
                        await self._send_error(err)
                        await self.ws.close(err.close_code)
                        return
                    latency_s = time.perf_counter() - item.decided_at
                    final.latency_ms = round(latency_s * 1000, 1)
                    await self.ws.send_text(final.to_json())
                    metrics.time_to_final.observe(latency_s)
                    metrics.finals.labels(reason=final.reason.value).inc()
                    log.info("final", extra={"utterance": final.utterance, "reason": final.reason.value,
                                             "latency_ms": final.latency_ms, "audio_s": round(final.end - final.start, 2)})
                elif isinstance(item, CloseRequest):
                    await self.ws.close(item.code)
                    return
                elif isinstance(item, ServiceError):
                    await self._send_error(item)
                else:
                    await self.ws.send_text(item.to_json())
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._gone.set()

    async def _send_error(self, err: ServiceError) -> None:
        self.runtime.metrics.errors.labels(code=err.code.value).inc()
        log.info("error sent", extra={"code": err.code.value, "detail": err.message})
        await self.ws.send_text(err.to_json())

    def _report(self, err: ServiceError) -> None:
        """Queue an error event; a fatal one also closes the session after it."""
        self.outbox.put(err, force=True)
        if err.fatal:
            self.outbox.put(CloseRequest(err.close_code), force=True)
