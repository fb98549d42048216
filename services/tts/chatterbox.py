"""The Chatterbox engine (GPU, voice cloning), from the optional ``chatterbox`` extra.

chatterbox-streaming keeps the current voice on the model object
(``ChatterboxTTS.conds``: ``prepare_conditionals`` sets it, ``generate_stream``
reads it and may even replace its ``t3`` part). :class:`ChatterboxEngine` wraps
the model so that no voice ever outlives a request: every job carries its own
conditionals; under one lock, on the scheduler's single worker thread, the
engine puts a private copy of them on the model (a new ``Conditionals`` with
shallow copies of ``t3`` and of the ``gen`` dict: ``generate_stream`` may
replace ``conds.t3``, T3 caches ``cond_prompt_speech_emb`` on the ``T3Cond`` it
is given and S3Gen re-assigns entries of ``gen``; none of it may reach the
stored voice), runs the streaming generator to its end (or to a barge-in)
under ``torch.no_grad()``, and clears ``conds`` again in a ``finally``.
Cloning likewise computes the conditionals (under ``no_grad`` too), takes them
off the model and returns them; the voice store persists them with
``Conditionals.save``/``load``. The model is warmed up once at load with the
built-in voice.

A checkpoint without ``conds.pt`` has no built-in voice: set ``voices.default``
to a cloned voice's id, or every request must name a voice. There is no
``max_new_tokens`` setting: chatterbox-streaming 0.1.2's ``generate_stream``
hard-codes its token limit (1000). torch and chatterbox are imported only when
this engine is built, so the default install never needs them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common.audio import float_to_pcm16, wav_header
from ..common.errors import ErrorCode, ServiceError
from .engine import CloneJob, SynthesisJob, SynthesisResult

log = logging.getLogger(__name__)

BUILTIN_VOICE = "chatterbox-default"


class ChatterboxEngine:
    name = "chatterbox"
    can_clone = True
    aligns_words = False  # word timings are estimated (words.WordRate)
    lanes = 1  # one GPU stream: pieces run one at a time
    first_lanes = 0

    def __init__(self, model: Any, conditionals_cls: Any, *, device: str = "cpu", chunk_tokens: int = 25,
                 context_window: int = 50, exaggeration: float = 0.5, cfg_weight: float = 0.5,
                 temperature: float = 0.8) -> None:
        """``model``: a loaded ``ChatterboxTTS``; ``conditionals_cls``: ``chatterbox.tts.Conditionals``."""
        self._model = model
        self._conditionals_cls = conditionals_cls
        self._device = device
        self._lock = threading.Lock()
        self.chunk_tokens = chunk_tokens
        self.context_window = context_window
        self.exaggeration = exaggeration
        self.cfg_weight = cfg_weight
        self.temperature = temperature
        # A checkpoint's conds.pt becomes the built-in voice; the model itself keeps none.
        self._builtin = model.conds
        model.conds = None
        self._no_grad = _no_grad_factory()

    @classmethod
    def from_settings(cls, settings) -> "ChatterboxEngine":
        try:
            from chatterbox.tts import ChatterboxTTS, Conditionals
        except ImportError as exc:
            raise RuntimeError(
                "engine.name=chatterbox needs the chatterbox extra: "
                "UV_PROJECT_ENVIRONMENT=.venv-chatterbox uv sync --extra chatterbox") from exc
        c = settings.chatterbox
        device = settings.engine.device
        if device == "cpu" and settings.engine.cpu_threads:
            import torch

            torch.set_num_threads(settings.engine.cpu_threads)
        started = time.perf_counter()
        if c.checkpoint_dir:
            model = ChatterboxTTS.from_local(c.checkpoint_dir, device)
        else:
            model = ChatterboxTTS.from_pretrained(device)
        engine = cls(model, Conditionals, device=device, chunk_tokens=c.chunk_tokens,
                     context_window=c.context_window, exaggeration=c.exaggeration, cfg_weight=c.cfg_weight,
                     temperature=c.temperature)
        if engine._builtin is None:
            log.warning("the checkpoint has no conds.pt, so no built-in voice: set voices.default to a cloned "
                        "voice id, or every request must name a voice")
        engine.warm_up()
        log.info("chatterbox loaded", extra={"device": device, "load_s": round(time.perf_counter() - started, 2)})
        return engine

    def warm_up(self) -> None:
        """One short synthesis with the built-in voice (CUDA kernels, allocator) so the first client does not
        pay for it; skipped without a built-in voice."""
        if self._builtin is not None:
            self.synthesize(SynthesisJob("Ready.", BUILTIN_VOICE))

    # -- TtsEngine -----------------------------------------------------------------------
    def builtin_voices(self) -> dict[str, int]:
        return {BUILTIN_VOICE: self._model.sr} if self._builtin is not None else {}

    def sample_rate_hz(self, voice_id: str | None) -> int:
        return int(self._model.sr)

    def synthesize(self, job: SynthesisJob) -> SynthesisResult:
        conds = job.conditionals
        if conds is None:
            if job.voice_id != BUILTIN_VOICE or self._builtin is None:
                raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {job.voice_id!r}")
            conds = self._builtin
        started = time.perf_counter()
        audio_s = 0.0
        chunks = 0
        rate = int(self._model.sr)
        with self._lock, self._no_grad():
            # A private copy: generate_stream may replace conds.t3 (exaggeration) or touch conds.gen,
            # which must not reach the stored voice; and conds never stay on the model after this block.
            self._model.conds = self._private_copy(conds)
            try:
                stream = self._model.generate_stream(
                    job.text, exaggeration=self.exaggeration, cfg_weight=self.cfg_weight,
                    temperature=self.temperature, chunk_size=self.chunk_tokens, context_window=self.context_window,
                    print_metrics=False,
                )
                try:
                    for audio, _metrics in stream:
                        if job.cancelled.is_set():
                            break
                        samples = _to_numpy(audio)
                        audio_s += samples.size / rate
                        chunks += 1
                        if job.sink is not None:
                            job.sink(samples, rate)
                finally:
                    stream.close()
            finally:
                self._model.conds = None
        return SynthesisResult(audio_s, time.perf_counter() - started, chunks, job.cancelled.is_set())

    def clone(self, job: CloneJob) -> Any:
        # prepare_conditionals reads a file (librosa.load): hand it a temporary WAV.
        pcm = float_to_pcm16(job.reference)
        fd, name = tempfile.mkstemp(suffix=".wav", prefix="tts-ref-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(wav_header(job.sample_rate_hz, pcm.size) + pcm.astype("<i2").tobytes())
            with self._lock, self._no_grad():
                try:
                    self._model.prepare_conditionals(name, exaggeration=self.exaggeration)
                    conds = self._model.conds
                finally:
                    self._model.conds = None
        finally:
            os.unlink(name)
        if conds is None:
            raise ServiceError(ErrorCode.INTERNAL, "chatterbox computed no conditionals")
        return conds

    def _private_copy(self, conds: Any) -> Any:
        """``Conditionals(copy(t3), dict(gen))``: the model may replace ``t3`` or entries of ``gen`` on its copy,
        and ``T3.prepare_conditioning`` sets ``t3.cond_prompt_speech_emb`` (an embedding made under
        ``inference_mode``) on the ``T3Cond`` it gets; the stored voice must stay as it was cloned."""
        return self._conditionals_cls(copy.copy(conds.t3), dict(conds.gen))

    def save_conditionals(self, conditionals: Any, path: Path) -> None:
        conditionals.save(path)

    def load_conditionals(self, path: Path) -> Any:
        conds = self._conditionals_cls.load(path, map_location="cpu")
        return conds.to(self._device) if hasattr(conds, "to") else conds


def _no_grad_factory():
    """``torch.no_grad`` (no autograd graph is kept during inference), or a no-op where torch is absent."""
    try:
        import torch
    except ImportError:
        return contextlib.nullcontext
    return torch.no_grad


def _to_numpy(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)
