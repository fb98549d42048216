"""The shared runtime of one TTS process: the engine, its scheduler, the voices, and the calls sessions make.

Built once in the app's lifespan (:meth:`TtsRuntime.load` builds the configured
engine) and injected into every route (no module globals). The engine is owned
by one :class:`~services.common.scheduler.Scheduler`: each request is one piece
of text, so sessions take turns piece by piece (FIFO across sessions, one piece
in flight per session), a barge-in drops a session's queued piece before it
costs compute, and synthesis runs on the scheduler's worker thread, never on
the event loop. A piece's audio is a *pulled* stream: ``async for data in
runtime.stream(voice, text, encoder)`` reads a bounded
:class:`~.pipe.AudioPipe` that the worker thread fills as the engine makes
chunks, already resampled and encoded there (the loop only moves bytes);
leaving the loop early withdraws or stops the piece. The WebSocket session and
both HTTP routes consume it the same way; a session that asked for word timings
passes its :class:`~.words.WordRate` and gets :class:`~.words.PieceWords` among
the bytes, ahead of the audio they describe. The first piece of a session's reply
is ``URGENT``: a session waiting for its first audio goes before the later
pieces of sessions already speaking. HTTP synthesis and cloning take a slot of
their own admission (``http_admission``, refused at once with ``overloaded``),
and ``scheduler.max_pending`` covers every session plus every HTTP slot, so
HTTP load can never make the scheduler refuse a live session's next piece.
Cloning is the :class:`~.cloning.VoiceCloner`'s, present when the engine can clone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..common.admission import Admission
from ..common.errors import ErrorCode, ServiceError
from ..common.metrics import Metrics
from ..common.scheduler import Priority, Scheduler, SchedulerOptions
from .cloning import VoiceCloner
from .engine import SynthesisJob, SynthesisResult, TtsEngine, run_jobs
from .formats import AudioEncoder
from .pipe import piece_pipe
from .settings import TtsSettings
from .text import ChunkerOptions
from .voices import ResolvedVoice, VoiceCatalog, VoiceInfo, VoiceStore
from .words import PieceWords, WordRate

log = logging.getLogger(__name__)

RTF_BUCKETS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


def load_engine(settings: TtsSettings) -> TtsEngine:
    """Build the configured engine (blocking; once at start-up)."""
    if settings.engine.name == "chatterbox":
        from .chatterbox import ChatterboxEngine

        return ChatterboxEngine.from_settings(settings)
    from .piper import PiperEngine

    return PiperEngine.from_settings(settings)


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
    cloner: VoiceCloner | None = None  # None: the engine cannot clone

    def __post_init__(self) -> None:
        if self.http_admission is None:
            self.http_admission = Admission(self.settings.server.max_http_synthesis, "HTTP synthesis")

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
        call_timeout_s = settings.scheduler.call_timeout_s
        scheduler = Scheduler("tts", lambda jobs: run_jobs(engine, jobs), SchedulerOptions(
            max_batch=1, max_pending=settings.scheduler.max_pending, call_timeout_s=call_timeout_s,
            workers=engine.lanes, urgent_workers=engine.first_lanes, worker_nice=settings.engine.lane_nice),
            metrics=metrics, on_stall=admission.set_stalled)
        cloner = None
        if engine.can_clone:
            cloner = VoiceCloner.build(engine, scheduler, store, v, metrics, call_timeout_s, admission.set_stalled)
        t = settings.text
        runtime = cls(
            settings=settings, engine=engine, scheduler=scheduler,
            store=store, voices=catalog, admission=admission, metrics=metrics,
            chunker_options=ChunkerOptions(t.first_piece_min_chars, t.first_piece_max_chars, t.min_piece_chars,
                                           t.max_piece_chars),
            cloner=cloner,
        )
        log.info("engine loaded", extra={"engine": engine.name, "voices": list(engine.builtin_voices()),
                                         "load_s": round(time.perf_counter() - started, 2)})
        return runtime

    async def start(self) -> None:
        await self.scheduler.start()
        if self.cloner is not None:
            await self.cloner.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self.cloner is not None:
            await self.cloner.stop()

    # -- what sessions and routes call ----------------------------------------------------
    def native_rate_hz(self, voice: ResolvedVoice) -> int:
        return self.engine.sample_rate_hz(None if voice.cloned else voice.id)

    async def stream(self, voice: ResolvedVoice, text: str, encoder: AudioEncoder, *, speed: float = 1.0,
                     priority: Priority = Priority.NORMAL,
                     words: WordRate | None = None) -> AsyncIterator[bytes | PieceWords]:
        """One piece's audio in ``encoder``'s format, as the engine makes it (see the module docstring); with
        ``words``, its word timings too (the engine's where it aligns, else estimated by ``words``).

        The resampler's tail comes last (the encoder then starts the next piece afresh); a failure is raised
        after the audio made before it. Leaving the loop early (a barge-in, a client that left) withdraws the
        piece if it is still waiting and stops it between chunks if it is running."""
        job = SynthesisJob(text, voice.id, voice.conditionals, speed=speed)
        pipe = piece_pipe(job, encoder, self.settings.server.max_piece_audio_s, words=words,
                          aligned=words is not None and self.engine.aligns_words)
        synthesis = asyncio.ensure_future(self._synthesize(job, priority))
        synthesis.add_done_callback(lambda task: pipe.end(None if task.cancelled() else task.exception()))
        try:
            async for data in pipe:
                yield data
        finally:
            if not synthesis.done():
                job.cancelled.set()  # stops between chunks if it is running now
                synthesis.cancel()  # withdrawn if it is still waiting

    async def _synthesize(self, job: SynthesisJob, priority: Priority) -> SynthesisResult:
        result: SynthesisResult = await self.scheduler.submit(job, priority=priority)
        self.metrics.pieces.inc()
        if result.audio_s > 0:
            self.metrics.audio_seconds.inc(result.audio_s)
            if not result.cancelled:
                self.metrics.real_time_factor.observe(result.compute_s / result.audio_s)
        return result

    def check_can_clone(self) -> None:
        if self.cloner is None:
            raise ServiceError(ErrorCode.NOT_SUPPORTED,
                               f"the {self.engine.name} engine cannot clone voices; run an instance with "
                               f"TTS_ENGINE__NAME=chatterbox")

    async def clone_voice(self, name: str, data: bytes) -> VoiceInfo:
        self.check_can_clone()
        assert self.cloner is not None
        return await self.cloner.clone(name, data)
