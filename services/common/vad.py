"""Silero voice activity detection: the shared model and each stream's own state.

:class:`SileroVad` holds the ONNX session of the Silero VAD v6 model that
faster-whisper ships and nothing else; every caller keeps its own recurrent
state and audio context in a :class:`VadStream`, so one model serves every
session (ASR streams and uploads, TTS reference checks) through a scheduler.
The model scores windows of :data:`VAD_WINDOW_SAMPLES` samples (32 ms at
16 kHz). What the probabilities mean for a conversation (when an utterance
starts and ends) is the ASR service's policy, not this module's;
:func:`speech_seconds` is the one plain reading both services need: how much
of a recording is speech.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from .audio import SAMPLE_RATE_HZ

VAD_WINDOW_SAMPLES = 512
VAD_WINDOW_MS = VAD_WINDOW_SAMPLES * 1000 // SAMPLE_RATE_HZ  # 32
CONTEXT_SAMPLES = 64
SPEECH_PROBABILITY = 0.5


def default_model_path() -> Path:
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


@dataclass
class VadStream:
    """Per-stream recurrent state of the shared model (owned by one caller)."""

    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, dtype=np.float32))


@dataclass
class VadJob:
    stream: VadStream
    samples: np.ndarray  # float32 at 16 kHz, a whole number of windows


class SileroVad:
    """The shared Silero VAD v6 ONNX session (weights only)."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 1) -> None:
        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Silero VAD model not found at {self.path}")
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 4
        opts.enable_cpu_mem_arena = False  # the arena keeps the largest batch's buffers for good (RELIABILITY.md)
        self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"],
                                                     sess_options=opts)

    def probabilities(self, stream: VadStream, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each window; advances ``stream``."""
        if samples.size % VAD_WINDOW_SAMPLES:
            raise ValueError(f"VAD input must be a whole number of {VAD_WINDOW_SAMPLES}-sample windows")
        n = samples.size // VAD_WINDOW_SAMPLES
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = samples.astype(np.float32, copy=False).reshape(n, VAD_WINDOW_SAMPLES)
        contexts = np.empty((n, CONTEXT_SAMPLES), dtype=np.float32)
        contexts[0] = stream.context
        contexts[1:] = windows[:-1, -CONTEXT_SAMPLES:]
        batch = np.concatenate([contexts, windows], axis=1)
        out, stream.h, stream.c = self._session.run(None, {"input": batch, "h": stream.h, "c": stream.c})
        stream.context = windows[-1, -CONTEXT_SAMPLES:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def run_batch(self, jobs: Sequence[VadJob]) -> list[np.ndarray]:
        """Scheduler entry point: streams have separate state, so they run one after another."""
        return [self.probabilities(job.stream, job.samples) for job in jobs]


def speech_seconds(model: SileroVad, audio: np.ndarray) -> float:
    """Seconds of ``audio`` (16 kHz, a whole recording, fresh state) that the model calls speech."""
    usable = audio[: audio.size - audio.size % VAD_WINDOW_SAMPLES]
    probabilities = model.probabilities(VadStream(), usable)
    return float((probabilities >= SPEECH_PROBABILITY).sum()) * VAD_WINDOW_MS / 1000
