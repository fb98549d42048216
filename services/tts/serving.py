"""The shared runtime of one TTS process: the engine, its scheduler, the voices, and the calls sessions make.

Built once in the app's lifespan and injected into every route (no module
globals). The engine is owned by one :class:`~services.common.scheduler.Scheduler`:
each request is one piece of text, so sessions take turns piece by piece
(FIFO across sessions, one piece in flight per session), a barge-in drops a
session's queued piece before it costs compute, and synthesis runs on the
scheduler's worker thread, never on the event loop. Audio chunks come back to
the event loop through ``call_soon_threadsafe`` while a piece is still being
synthesized; a caller's ``encode`` step (resampling, wire or container
encoding) runs on the worker thread too, so the loop only moves bytes. HTTP
synthesis and cloning take a slot of their own admission (``http_admission``,
refused at once with ``overloaded``), and ``scheduler.max_pending`` covers
every session plus every HTTP slot, so HTTP load can never make the scheduler
refuse a live session's next piece. Cloning (validate the reference off the
loop, compute conditionals on the same model thread at ``NORMAL`` priority,
write to the store) lives here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..common.admission import Admission
from ..common.audio import decode_file, resample
from ..common.errors import ErrorCode, ServiceError
from ..common.metrics import Metrics
from ..common.scheduler import Priority, Scheduler
from .engine import CloneJob, SynthesisJob, SynthesisResult, TtsEngine, load_engine, run_jobs
from .settings import TtsSettings
from .text import ChunkerOptions
from .voices import ResolvedVoice, VoiceCatalog, VoiceInfo, VoiceStore, check_name, check_reference

log = logging.getLogger(__name__)

REFERENCE_RATE_HZ = 24000
VAD_RATE_HZ = 16000
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

ChunkCallback = Callable[[Any, int], None]
"""Called on the event loop with each chunk (samples, or what ``encode`` made of them) and its rate."""
ChunkEncoder = Callable[[np.ndarray, int], Any]
"""Called on the model's worker thread with each chunk's samples and rate."""


class TtsMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("tts")
        self.time_to_first_audio = self.histogram(
            "time_to_first_audio_seconds", "From a turn's first piece being ready to its first audio being sent")
        self.real_time_factor = self.histogram(
            "real_time_factor", "Synthesis wall time / audio duration, per piece", buckets=RTF_BUCKETS)
        self.pieces = self.counter("pieces", "Pieces of text synthesized")
        self.audio_seconds = self.counter("audio_seconds", "Seconds of audio synthesized")
        self.cancels = self.counter("cancels", "Barge-ins (cancel messages) handled")
        self.cancel_ack_seconds = self.histogram(
            "cancel_ack_seconds", "From a cancel being read to cancelled being sent")
        self.voices_cloned = self.counter("voices_cloned", "Voices cloned")
        self.http_synthesis = self.counter("http_synthesis", "HTTP synthesis requests", ["route"])


@dataclass
class TtsRuntime:
    settings: TtsSettings
    engine: TtsEngine
    scheduler: Scheduler
    store: VoiceStore
    voices: VoiceCatalog
    admission: Admission
    metrics: TtsMetrics
    chunker_options: ChunkerOptions
    http_admission: Admission | None = None
    vad_model: object | None = None
    vad: Scheduler | None = None

    def __post_init__(self) -> None:
        if self.http_admission is None:
            self.http_admission = Admission(self.settings.server.max_http_synthesis)

    @classmethod
    def load(cls, settings: TtsSettings, engine: TtsEngine | None = None) -> "TtsRuntime":
        """Load the engine (blocking; once at start-up). ``engine`` injects a prebuilt one (tests)."""
        started = time.perf_counter()
        engine = engine if engine is not None else load_engine(settings)
        metrics = TtsMetrics()
        store = VoiceStore(settings.voices.store_dir)
        v = settings.voices
        catalog = VoiceCatalog(engine, store, default=v.default, aliases=v.openai_aliases, cache_size=v.cache_size)
        admission = Admission(settings.server.max_connections)
        watch = {"metrics": metrics, "call_timeout_s": settings.scheduler.call_timeout_s,
                 "on_stall": admission.set_stalled}
        vad_model = vad = None
        if engine.can_clone:
            from ..asr.vad import SileroVad

            vad_model = SileroVad()
            vad = Scheduler("vad", _vad_batch(vad_model), max_batch=4, max_pending=16, **watch)
        t = settings.text
        runtime = cls(
            settings=settings, engine=engine,
            scheduler=Scheduler("tts", lambda jobs: run_jobs(engine, jobs), max_batch=1,
                                max_pending=settings.scheduler.max_pending, **watch),
            store=store, voices=catalog, admission=admission, metrics=metrics,
            chunker_options=ChunkerOptions(t.first_piece_min_chars, t.first_piece_max_chars, t.min_piece_chars,
                                           t.max_piece_chars),
            vad_model=vad_model, vad=vad,
        )
        log.info("engine loaded", extra={"engine": engine.name, "voices": list(engine.builtin_voices()),
                                         "load_s": round(time.perf_counter() - started, 2)})
        return runtime

    async def start(self) -> None:
        await self.scheduler.start()
        if self.vad is not None:
            await self.vad.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self.vad is not None:
            await self.vad.stop()

    # -- what sessions and routes call ----------------------------------------------------
    def native_rate_hz(self, voice: ResolvedVoice) -> int:
        return self.engine.sample_rate_hz(None if voice.cloned else voice.id)

    async def synthesize(self, voice: ResolvedVoice, text: str, on_chunk: ChunkCallback, *, speed: float = 1.0,
                         cancelled: threading.Event | None = None,
                         encode: ChunkEncoder | None = None) -> SynthesisResult:
        """Synthesize one piece; ``on_chunk`` runs on the event loop for each chunk, before this returns.

        ``encode(samples, rate_hz)``, if given, runs on the model's worker thread for each chunk and
        ``on_chunk`` receives its result: blocking conversion never runs on the event loop."""
        loop = asyncio.get_running_loop()

        def sink(samples: np.ndarray, rate_hz: int) -> None:  # worker thread
            payload = encode(samples, rate_hz) if encode is not None else samples
            loop.call_soon_threadsafe(on_chunk, payload, rate_hz)

        job = SynthesisJob(text, voice.id, voice.conditionals, sink=sink, speed=speed)
        if cancelled is not None:
            job.cancelled = cancelled
        try:
            result: SynthesisResult = await self.scheduler.submit(job)
        except asyncio.CancelledError:
            job.cancelled.set()  # stop between chunks if it is running now
            raise
        self.metrics.pieces.inc()
        if result.audio_s > 0:
            self.metrics.audio_seconds.inc(result.audio_s)
            if not result.cancelled:
                self.metrics.real_time_factor.observe(result.compute_s / result.audio_s)
        return result

    def acquire_http(self) -> None:
        """Take an HTTP synthesis slot or raise ``overloaded`` (503, Retry-After) at once; never waits."""
        adm = self.http_admission
        assert adm is not None
        if adm.active >= adm.max_sessions:
            raise ServiceError(ErrorCode.OVERLOADED, f"all {adm.max_sessions} HTTP synthesis slots are in use; "
                                                     f"try again later")
        adm.acquire()

    @contextlib.contextmanager
    def http_slot(self) -> Iterator[None]:
        self.acquire_http()
        try:
            yield
        finally:
            self.http_admission.release()

    def check_can_clone(self) -> None:
        if not self.engine.can_clone:
            raise ServiceError(ErrorCode.NOT_SUPPORTED,
                               f"the {self.engine.name} engine cannot clone voices; run an instance with "
                               f"TTS_ENGINE__NAME=chatterbox")

    async def clone_voice(self, name: str, data: bytes) -> VoiceInfo:
        self.check_can_clone()
        name = check_name(name)
        v = self.settings.voices
        if len(await asyncio.to_thread(self.store.list)) >= v.max_voices:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, f"the voice store is full ({v.max_voices} voices)")
        # Decoding stops just past the longest accepted reference: a small upload cannot expand to hours.
        audio = await asyncio.to_thread(decode_file, data, REFERENCE_RATE_HZ, v.max_reference_s + 1.0)
        limits = dict(min_s=v.min_reference_s, max_s=v.max_reference_s, min_speech_s=v.min_speech_s)

        def checked_16k() -> np.ndarray:
            check_reference(audio, REFERENCE_RATE_HZ, float("inf"), **limits)
            return resample(audio, REFERENCE_RATE_HZ, VAD_RATE_HZ)

        speech_s = await self._speech_seconds(await asyncio.to_thread(checked_16k))
        duration_s = await asyncio.to_thread(check_reference, audio, REFERENCE_RATE_HZ, speech_s, **limits)
        # NORMAL: a clone must not jump ahead of live sessions' pieces.
        conds = await self.scheduler.submit(CloneJob(audio, REFERENCE_RATE_HZ), priority=Priority.NORMAL)
        info = await asyncio.to_thread(self.store.create, name, self.engine.name, duration_s, audio,
                                       REFERENCE_RATE_HZ, lambda path: self.engine.save_conditionals(conds, path))
        self.metrics.voices_cloned.inc()
        log.info("voice cloned", extra={"voice": info.id, "duration_s": info.duration, "speech_s": round(speech_s, 2)})
        return info

    async def _speech_seconds(self, audio_16k: np.ndarray) -> float:
        assert self.vad is not None
        return await self.vad.submit(audio_16k)


def _vad_batch(model) -> Callable[[list[np.ndarray]], list[float]]:
    from ..asr.vad import WINDOW_MS, WINDOW_SAMPLES, VadStream

    def run(batch: list[np.ndarray]) -> list[float]:
        out = []
        for audio in batch:
            usable = audio[: audio.size - audio.size % WINDOW_SAMPLES]
            probabilities = model.probabilities(VadStream(), usable)  # fresh state per recording
            out.append(float((probabilities >= 0.5).sum()) * WINDOW_MS / 1000)
        return out

    return run
