"""The shared runtime of one ASR process: models, their schedulers, and the calls sessions make.

Built once in the app's lifespan and injected into every route (no module
globals). Each model - Whisper, Silero VAD, Smart Turn - is owned by its own
:class:`~services.common.scheduler.Scheduler`, so its inference runs on one
worker thread and never on the event loop. Sessions and the file route only
call the small async methods here. Uploads take a slot of ``http_admission``
(``server.max_file_jobs``) and their requests run in the schedulers' bulk lane,
after live work and, while streams are open, in a bounded share of the time.
How utterances end follows from the settings alone (``turn_policy``,
``detector_options``, ``endpoint_options``), so tools reproduce it without a runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from ..common.admission import Admission
from ..common.metrics import Metrics
from ..common.scheduler import Priority, Scheduler, SchedulerOptions
from ..common.vad import SileroVad, VadJob, VadStream
from .endpointing import DetectorOptions, EndpointOptions, TurnMode
from .engine import AsrEngine, DecodeRequest, DecodeResult, WhisperEngine
from .settings import AsrSettings
from .turn import SmartTurnModel, TurnDecision, TurnPolicy

log = logging.getLogger(__name__)

PARTIAL_MAX_BATCH = 1


class AsrMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("asr")
        self.time_to_final = self.histogram(
            "time_to_final_seconds", "From the decision that an utterance ended to its final being sent")
        self.finals = self.counter("finals", "Finals sent, by reason", ["reason"])
        self.partials = self.counter("partials", "Partials sent")
        self.audio_seconds = self.counter("audio_seconds", "Seconds of audio received on streams")
        self.file_seconds = self.counter("file_audio_seconds", "Seconds of audio transcribed from uploads")
        self.turn_checks = self.counter("turn_checks", "Smart Turn decisions", ["decision"])
        self.final_decodes = self.counter(
            "final_decodes", "Finals by when their decode ran: decoded_ahead (done before the end of the utterance "
            "was decided: no decode after it), started_ahead (still running or waiting then), decoded_after",
            ["source"])


def turn_policy(settings: AsrSettings) -> TurnPolicy:
    """The end-of-turn rule the settings describe (``turn.curve``, ``turn.text_cues``, ``turn.words`` and its
    closing thresholds)."""
    t = settings.turn
    return TurnPolicy(curve=tuple(t.curve), text_cues=t.text_cues, words=t.words, closing_min=t.closing_min,
                      closing_sure=t.closing_sure, sure_probability=t.sure_probability)


def detector_options(settings: AsrSettings) -> DetectorOptions:
    v = settings.vad
    return DetectorOptions(v.threshold, v.neg_threshold, v.min_speech_ms, v.speech_pad_ms)


def endpoint_options(settings: AsrSettings, policy: TurnPolicy, mode: TurnMode) -> EndpointOptions:
    """How utterances end in ``mode``: the VAD's pad and silence, and the turn checkpoints ``policy`` uses
    (every ``turn.check_interval_ms`` from its first point to its last, before ``turn.max_silence_ms``)."""
    v, t = settings.vad, settings.turn
    last = min(policy.last_check_ms, t.max_silence_ms - 1)
    checks = tuple(range(int(policy.first_check_ms), int(last) + 1, t.check_interval_ms))
    return EndpointOptions(
        mode=mode, end_pad_ms=v.end_pad_ms, vad_silence_ms=v.min_silence_ms,
        turn_checkpoints_ms=checks, max_silence_ms=t.max_silence_ms,
        max_utterance_ms=int(settings.streaming.max_utterance_s * 1000), speculate_ms=v.speculate_ms,
    )


@dataclass
class AsrRuntime:
    settings: AsrSettings
    engine: AsrEngine
    whisper: Scheduler[DecodeRequest, DecodeResult]
    vad_model: SileroVad
    vad: Scheduler[VadJob, np.ndarray]
    turn_model: SmartTurnModel
    turn: Scheduler[np.ndarray, float]
    policy: TurnPolicy
    admission: Admission
    http_admission: Admission
    metrics: AsrMetrics
    started_at: float
    final_max_batch: int = 1

    @classmethod
    def load(cls, settings: AsrSettings) -> "AsrRuntime":
        """Load every model (blocking; called once at start-up)."""
        m = settings.model
        t0 = time.perf_counter()
        engine = WhisperEngine(
            m.name, device=m.device, compute_type=m.compute_type, cpu_threads=m.cpu_threads,
            download_root=m.download_root, default_language=None if m.language == "auto" else m.language,
            encoder_bucket_s=m.encoder_bucket_s,
        )
        vad_model = SileroVad(settings.vad.model_path)
        turn_model = SmartTurnModel(settings.turn.model_path, threads=settings.turn.threads)
        metrics = AsrMetrics()
        s = settings.scheduler
        admission = Admission(settings.server.max_connections)
        watch = {"metrics": metrics, "on_stall": admission.set_stalled, "live_active": lambda: admission.active > 0}
        runtime = cls(
            settings=settings,
            engine=engine,
            whisper=Scheduler("whisper", engine.decode_batch, SchedulerOptions(
                max_batch=s.max_batch, max_pending=s.max_pending, max_bulk_pending=s.max_bulk_pending,
                duty={Priority.BACKGROUND: s.partial_share, Priority.BULK: s.bulk_share},
                call_timeout_s=s.call_timeout_s), **watch),
            vad_model=vad_model,
            vad=Scheduler("vad", vad_model.run_batch, SchedulerOptions(
                max_batch=32, max_pending=max(64, s.max_pending * 4), max_bulk_pending=max(8, s.max_bulk_pending),
                duty={Priority.BULK: 1.0}, call_timeout_s=s.call_timeout_s), **watch),
            turn_model=turn_model,
            turn=Scheduler("turn", turn_model.predict, SchedulerOptions(
                max_batch=settings.turn.max_batch, max_pending=max(32, s.max_pending),
                call_timeout_s=s.call_timeout_s), **watch),
            policy=turn_policy(settings),
            admission=admission,
            http_admission=Admission(settings.server.max_file_jobs, "file transcription"),
            metrics=metrics,
            started_at=time.time(),
            final_max_batch=s.final_max_batch or s.max_batch,
        )
        log.info("models loaded", extra={"model": m.name, "compute_type": engine.compute_type,
                                         "load_s": round(time.perf_counter() - t0, 2)})
        return runtime

    async def start(self) -> None:
        for scheduler in (self.whisper, self.vad, self.turn):
            await scheduler.start()

    async def stop(self) -> None:
        for scheduler in (self.whisper, self.vad, self.turn):
            await scheduler.stop()

    # -- what sessions call ------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.engine.name

    def detector_options(self) -> DetectorOptions:
        return detector_options(self.settings)

    def endpoint_options(self, mode: TurnMode) -> EndpointOptions:
        return endpoint_options(self.settings, self.policy, mode)

    async def speech_probabilities(self, stream: VadStream, samples: np.ndarray,
                                   priority: Priority = Priority.URGENT) -> np.ndarray:
        return await self.vad.submit(VadJob(stream, samples), priority=priority)

    def turn_backlogged(self, session_id: str | None = None) -> bool:
        """Other sessions' turn checks are waiting for the model: a session sheds its intermediate checks until
        it catches up (its own checks still out do not count: a stream sent faster than real time runs them all)."""
        return self.turn.waiting_for_others(session_id) > 0

    async def turn_probability(self, audio: np.ndarray, session_id: str | None = None) -> float:
        return await self.turn.submit(audio, priority=Priority.URGENT, owner=session_id)

    def record_turn(self, decision: TurnDecision, probability: float, silence_ms: int,
                    final: DecodeResult | None) -> None:
        self.metrics.turn_checks.labels(decision=decision.value).inc()
        log.debug("turn check", extra={
            "silence_ms": silence_ms, "probability": round(probability, 3), "decision": decision.value,
            "text": None if final is None else final.text[-40:],
            "end_probability": None if final is None or final.end_probability is None
            else round(final.end_probability, 3)})

    async def decode_final(self, request: DecodeRequest, priority: Priority = Priority.URGENT,
                           replace_key: Hashable | None = None, owner: str | None = None) -> DecodeResult:
        key: Hashable = ("final", request.beam_size, request.word_timestamps, request.language,
                         self.engine.encoder_frames(request.audio.size), request.temperature)
        cap = 0 if priority >= Priority.BULK else self.final_max_batch  # file work: the scheduler's max_batch
        return await self.whisper.submit(request, priority=priority, batch_key=key, replace_key=replace_key,
                                         max_batch=cap, owner=owner)

    async def decode_partial(self, request: DecodeRequest, session_id: str) -> DecodeResult:
        key = ("partial", request.beam_size, request.language)
        # A running batch cannot be interrupted: small partial batches keep a final's wait short. A stream's newer
        # partial replaces its waiting one.
        return await self.whisper.submit(request, priority=Priority.BACKGROUND, batch_key=key,
                                         replace_key=session_id, max_batch=PARTIAL_MAX_BATCH, owner=session_id)

    def promote_final(self, replace_key: Hashable) -> bool:
        """A final decoded ahead of need (submitted with ``replace_key``) is needed now: it goes ``URGENT``.
        False if it is no longer waiting (it runs or ran)."""
        return self.whisper.promote(replace_key, Priority.URGENT)

    def whisper_load(self) -> dict:
        """Whisper's load now, for a debug log line: requests waiting, and whether a batch runs."""
        return {"whisper_depth": self.whisper.depth, "whisper_busy": self.whisper.busy}

    def can_speculate(self) -> bool:
        """Speculative finals only while the live Whisper queue is short: under load they would only
        compete with real ones. Queued file work does not count: it waits behind them anyway."""
        return self.whisper.live_depth < self.settings.scheduler.max_batch

    def whisper_free_for(self, session_id: str) -> bool:
        """No live request waits for Whisper and none runs but this stream's own (its last partial, or the final
        of a pause it spoke on after): a final queued now runs next and delays no other stream (file work, below
        it, only waits a little longer). With one stream, that is often what runs when a pause begins."""
        return self.whisper.live_depth == 0 and self.whisper.live_running_only(session_id)

    def resolve_language(self, requested: str | None) -> str | None:
        """The language a request decodes with (None: detect). Raises ValueError if unsupported."""
        lang = (requested or self.settings.model.language).lower()
        if not self.engine.multilingual:
            if lang not in ("en", "auto"):
                raise ValueError(f"model {self.engine.name} is English-only; language {lang!r} is not available")
            return "en"
        if lang == "auto":
            return None
        if not self.engine.supports_language(lang):
            raise ValueError(f"unsupported language {lang!r}")
        return lang
