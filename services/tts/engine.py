"""The synthesis engine interface: the :class:`TtsEngine` protocol and the jobs it runs.

An engine is a shared model behind a small protocol of plain synchronous
methods; the scheduler's single worker thread is the only caller, so engines
never touch the event loop. One :class:`SynthesisJob` is one piece of text: the
engine hands each audio chunk to ``job.sink`` as soon as it exists (that is how
audio streams within a piece) and stops between chunks once ``job.cancelled``
is set (barge-in); :func:`run_jobs` then calls ``job.on_done`` on the same
thread. Everything about the request - its voice, its speed, where its audio
goes - travels in the job; the engine keeps no per-request state. The engines:
:mod:`.piper` (CPU, the default) and :mod:`.chatterbox` (GPU, cloning).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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
    on_done: Callable[[], None] | None = None
    """Called on the worker thread after the last chunk (after a barge-in or a failure too)."""


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
    lanes: int
    """Jobs the engine synthesizes at once (``synthesize_many``); the scheduler's batch size."""

    def builtin_voices(self) -> dict[str, int]:
        """Built-in voice ids and their native sample rates, the default first."""
        ...

    def sample_rate_hz(self, voice_id: str | None) -> int:
        """Native rate of a voice (None: of cloned voices)."""
        ...

    def synthesize(self, job: SynthesisJob) -> SynthesisResult: ...

    def synthesize_many(self, jobs: list[SynthesisJob],
                        finished: Callable[[SynthesisJob], None]) -> list[SynthesisResult]:
        """Up to ``lanes`` jobs at once, results in order, ``finished(job)`` as each ends (engines with one lane
        are never given more than one job)."""
        ...

    def clone(self, job: CloneJob) -> Any:
        """Conditionals of a new voice (raises ``not_supported`` if the engine cannot clone)."""
        ...

    def save_conditionals(self, conditionals: Any, path: Path) -> None: ...

    def load_conditionals(self, path: Path) -> Any: ...


def finish(job: SynthesisJob) -> None:
    """A piece is over (spoken, cancelled or failed): its ``on_done`` runs, on the thread that synthesized it."""
    if job.on_done is not None:
        job.on_done()


def run_jobs(engine: TtsEngine, jobs: list[SynthesisJob | CloneJob]) -> list[Any]:
    """The scheduler's batch function, on the model's worker thread: the pieces of a batch at once on the
    engine's lanes; otherwise one job at a time. Every piece's ``on_done`` runs, whatever happens."""
    if len(jobs) > 1 and all(isinstance(job, SynthesisJob) for job in jobs):
        return list(engine.synthesize_many(jobs, finish))  # type: ignore[arg-type]
    out: list[Any] = []
    for job in jobs:
        if isinstance(job, CloneJob):
            out.append(engine.clone(job))
            continue
        try:
            out.append(engine.synthesize(job))
        finally:
            finish(job)
    return out
