"""Silero voice activity detection: the shared model and the speech state machine.

:class:`SileroVad` holds the ONNX session of the Silero VAD v6 model that
faster-whisper ships and nothing else; every stream keeps its own recurrent
state and audio context in a :class:`VadStream`, so one model serves all
sessions. :class:`SpeechDetector` turns the per-window speech probabilities
(one window = 512 samples = 32 ms at 16 kHz) into the states quiet, starting,
speaking and stopping, with thresholds in milliseconds, and reports when speech
starts and how long the current pause has lasted. It counts samples, never wall
time, so the same audio always gives the same decisions.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

SAMPLE_RATE_HZ = 16000
WINDOW_SAMPLES = 512
WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE_HZ  # 32
CONTEXT_SAMPLES = 64


def default_model_path() -> Path:
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


@dataclass
class VadStream:
    """Per-stream recurrent state of the shared model (owned by one session)."""

    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, dtype=np.float32))


@dataclass
class VadJob:
    stream: VadStream
    samples: np.ndarray  # float32, a whole number of windows


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
        opts.enable_cpu_mem_arena = False  # see services/common/memory.py: the arena only grows
        self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"], sess_options=opts)

    def probabilities(self, stream: VadStream, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window; advances ``stream``."""
        if samples.size % WINDOW_SAMPLES:
            raise ValueError("VAD input must be a whole number of 512-sample windows")
        n = samples.size // WINDOW_SAMPLES
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = samples.astype(np.float32, copy=False).reshape(n, WINDOW_SAMPLES)
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


class SpeechState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class DetectorOptions:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 96
    speech_pad_ms: int = 192


@dataclass(frozen=True)
class SpeechStarted:
    start_sample: int  # first sample of the utterance, pre-roll included


@dataclass(frozen=True)
class Silence:
    silence_ms: int  # pause so far, counted from the end of the last voiced window
    speech_end_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    pass


DetectorEvent = SpeechStarted | Silence | SpeechResumed


class SpeechDetector:
    """quiet -> starting -> speaking <-> stopping -> (utterance ended by the caller) -> quiet.

    Fed one probability per window in stream order. While stopping it emits a
    :class:`Silence` event for every window, so callers can act at whatever
    pause lengths they choose.
    """

    def __init__(self, options: DetectorOptions) -> None:
        self.options = options
        self.state = SpeechState.QUIET
        self.windows_seen = 0
        self._start_window = 0
        self._voiced_run = 0
        self.speech_end_sample = 0
        self._floor_sample = 0  # an utterance never starts before the previous one ended

    @property
    def position_sample(self) -> int:
        return self.windows_seen * WINDOW_SAMPLES

    def push(self, probability: float) -> list[DetectorEvent]:
        o = self.options
        index = self.windows_seen
        self.windows_seen += 1
        voiced = probability >= o.threshold
        unvoiced = probability < o.neg_threshold
        events: list[DetectorEvent] = []
        if self.state is SpeechState.QUIET:
            if voiced:
                self.state = SpeechState.STARTING
                self._start_window = index
                self._voiced_run = 1
        elif self.state is SpeechState.STARTING:
            if voiced:
                self._voiced_run += 1
            elif unvoiced:
                self.state = SpeechState.QUIET
            if self.state is SpeechState.STARTING and self._voiced_run * WINDOW_MS >= o.min_speech_ms:
                self.state = SpeechState.SPEAKING
                pad = o.speech_pad_ms * SAMPLE_RATE_HZ // 1000
                start = max(self._floor_sample, self._start_window * WINDOW_SAMPLES - pad)
                self.speech_end_sample = self.position_sample
                events.append(SpeechStarted(start))
        elif self.state is SpeechState.SPEAKING:
            if unvoiced:
                self.state = SpeechState.STOPPING
                self.speech_end_sample = index * WINDOW_SAMPLES
                events.append(Silence(WINDOW_MS, self.speech_end_sample))
            else:
                self.speech_end_sample = self.position_sample
        elif self.state is SpeechState.STOPPING:
            if voiced:
                self.state = SpeechState.SPEAKING
                self.speech_end_sample = self.position_sample
                events.append(SpeechResumed())
            else:
                silence_ms = (self.position_sample - self.speech_end_sample) * 1000 // SAMPLE_RATE_HZ
                events.append(Silence(int(silence_ms), self.speech_end_sample))
        return events

    def end_utterance(self, at_sample: int) -> None:
        """The caller closed the utterance at ``at_sample``.

        A pause or a quiet stream goes back to quiet; speech that is still going
        on (a cut at the length limit, a commit mid-word) starts the next
        utterance right at the cut.
        """
        self._floor_sample = at_sample
        if self.state in (SpeechState.STOPPING, SpeechState.STARTING):
            self.state = SpeechState.QUIET
        self._voiced_run = 0

    @property
    def in_speech(self) -> bool:
        return self.state in (SpeechState.SPEAKING, SpeechState.STOPPING)
