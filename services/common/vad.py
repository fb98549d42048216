"""Silero voice activity detection: the shared model and each stream's own state.

:class:`SileroVad` holds the ONNX session of the Silero VAD v6 model that
faster-whisper ships and nothing else; every caller keeps its own recurrent
state and audio context in a :class:`VadStream`, so one model serves every
session (ASR streams and uploads, TTS reference checks) through a scheduler.
The model scores windows of :data:`VAD_WINDOW_SAMPLES` samples (32 ms at
16 kHz). What the probabilities mean for a conversation (when an utterance
starts and ends) is the ASR service's policy, not this module's;
:func:`speech_seconds` is the one plain reading both services need: how much
of a recording is speech. :func:`encode_state` / :func:`decode_state` carry a
stream's state to a client and back, so a resumed stream's detector carries on
where the dropped one was.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
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

    def copy(self) -> VadStream:
        return VadStream(self.h.copy(), self.c.copy(), self.context.copy())


_STATE_VERSION = 1
_STATE_HEADER = struct.Struct("<B8s")  # version, model fingerprint
_STATE_FLOATS = 2 * 128 + CONTEXT_SAMPLES
_STATE_BYTES = _STATE_HEADER.size + 4 * _STATE_FLOATS
_STATE_BOUND = 1e4  # the LSTM's cell state stays far below this; larger is not a state this model made


def encode_state(stream: VadStream, fingerprint: bytes) -> str:
    """``stream`` as URL-safe base64 text (1.7 kB), tagged with the model it belongs to."""
    values = np.concatenate([stream.h.reshape(-1), stream.c.reshape(-1), stream.context]).astype("<f4")
    raw = _STATE_HEADER.pack(_STATE_VERSION, fingerprint) + values.tobytes()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_state(text: str) -> tuple[bytes, VadStream]:
    """The model fingerprint and the state :func:`encode_state` wrote; ``ValueError`` for anything else."""
    if len(text) > 2 * _STATE_BYTES:
        raise ValueError("too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise ValueError("not base64url") from exc
    if len(raw) != _STATE_BYTES:
        raise ValueError(f"{len(raw)} bytes, not {_STATE_BYTES}")
    version, fingerprint = _STATE_HEADER.unpack_from(raw)
    if version != _STATE_VERSION:
        raise ValueError(f"version {version}, not {_STATE_VERSION}")
    values = np.frombuffer(raw, dtype="<f4", offset=_STATE_HEADER.size).astype(np.float32)
    if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0.0) > _STATE_BOUND:
        raise ValueError("values out of range")
    h, c, context = np.split(values, [128, 256])
    return fingerprint, VadStream(h.reshape(1, 1, 128).copy(), c.reshape(1, 1, 128).copy(), context.copy())


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
        self.fingerprint = hashlib.sha256(self.path.read_bytes()).digest()[:8]
        """Names these weights in an encoded state: a state is only carried on by the model that made it."""
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
