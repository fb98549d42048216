"""The synthesis engine interface: the :class:`TtsEngine` protocol and the jobs it runs.

An engine is a shared model behind a small protocol of plain synchronous
methods; the scheduler's single worker thread is the only caller, so engines
never touch the event loop. One :class:`SynthesisJob` is one piece of text: the
engine hands each audio chunk to ``job.sink`` as soon as it exists (that is how
audio streams within a piece) and stops between chunks once ``job.cancelled``
is set (barge-in); :func:`run_jobs` then calls ``job.on_done`` on the same
thread. An engine that ``aligns_words`` hands a chunk's word timings to
``job.word_sink`` (when the job has one) just before the chunk itself; the
others never call it and the runtime estimates them (:mod:`.words`). Everything about the request - its voice, its speed, where its audio
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

from .words import WordSpan

AudioSink = Callable[[np.ndarray, int], None]
"""Called from the worker thread with each chunk: (mono float32 samples, sample rate in Hz)."""
WordSink = Callable[[list[WordSpan], int, bool], None]
"""Called from the worker thread just before a chunk goes to the audio sink: (the chunk's words in samples from
the chunk's first sample, the chunk's rate in Hz, True where they are estimated rather than aligned)."""


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
    word_sink: WordSink | None = None
    """Set when the session asked for word timings; called by engines that ``aligns_words``."""


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
    """Pieces the engine can synthesize at once, each on its own thread: the TTS scheduler's ``workers``."""
    first_lanes: int
    """Threads beside ``lanes`` for a reply's first piece only (the scheduler's ``urgent_workers``);
    ``synthesize`` is called from up to ``lanes + first_lanes`` threads at a time."""
    aligns_words: bool
    """True: ``synthesize`` reports each chunk's words to ``job.word_sink`` (when set) before the chunk."""

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


def finish(job: SynthesisJob) -> None:
    """A piece is over (spoken, cancelled or failed): its ``on_done`` runs, on the thread that synthesized it."""
    if job.on_done is not None:
        job.on_done()


def run_jobs(engine: TtsEngine, jobs: list[SynthesisJob | CloneJob]) -> list[Any]:
    """The scheduler's batch function, on one of the model's worker threads (a batch is one job: the lanes are
    the scheduler's workers). Every piece's ``on_done`` runs, whatever happens."""
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
