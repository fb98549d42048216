"""Cloning a voice from a reference recording: checked, turned into the engine's conditionals, stored.

A :class:`VoiceCloner` exists only for an engine that can clone. It decodes the upload off the event loop
(stopping just past the longest accepted reference, so a small upload cannot expand to hours), checks its length
and how much of it is speech (Silero VAD, on a scheduler of its own), computes the conditionals on the engine's
scheduler at ``NORMAL`` priority (a clone never jumps ahead of live sessions' pieces) and writes the voice to the
store, which every instance shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ, decode_file, resample
from ..common.errors import ErrorCode, ServiceError
from ..common.metrics import Metrics
from ..common.scheduler import Priority, Scheduler, SchedulerOptions
from ..common.vad import SileroVad, speech_seconds
from .engine import CloneJob, TtsEngine
from .settings import VoiceSettings
from .voices import VoiceInfo, VoiceStore, check_name, check_reference

log = logging.getLogger(__name__)

REFERENCE_RATE_HZ = 24000


class VoiceCloner:
    """Clones voices for one runtime; ``metrics`` is the runtime's (its ``voices_cloned`` counter)."""

    def __init__(self, engine: TtsEngine, scheduler: Scheduler, store: VoiceStore, settings: VoiceSettings,
                 metrics: Metrics, vad: Scheduler[np.ndarray, float]) -> None:
        self.engine = engine
        self.scheduler = scheduler  # the engine's: conditionals are computed on the model thread
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.vad = vad

    @classmethod
    def build(cls, engine: TtsEngine, scheduler: Scheduler, store: VoiceStore, settings: VoiceSettings,
              metrics: Metrics, call_timeout_s: float | None,
              on_stall: Callable[[str, bool], None]) -> "VoiceCloner":
        """With the VAD model that checks references for speech (blocking: it loads the model)."""
        vad_model = SileroVad()
        vad = Scheduler("vad", lambda batch: [speech_seconds(vad_model, audio) for audio in batch],
                        SchedulerOptions(max_batch=4, max_pending=16, call_timeout_s=call_timeout_s),
                        metrics=metrics, on_stall=on_stall)
        return cls(engine, scheduler, store, settings, metrics, vad)

    async def start(self) -> None:
        await self.vad.start()

    async def stop(self) -> None:
        await self.vad.stop()

    async def clone(self, name: str, data: bytes) -> VoiceInfo:
        name = check_name(name)
        v = self.settings
        if len(await asyncio.to_thread(self.store.list)) >= v.max_voices:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, f"the voice store is full ({v.max_voices} voices)")
        audio = await asyncio.to_thread(decode_file, data, REFERENCE_RATE_HZ, v.max_reference_s + 1.0)
        limits = dict(min_s=v.min_reference_s, max_s=v.max_reference_s, min_speech_s=v.min_speech_s)

        def checked_16k() -> np.ndarray:
            check_reference(audio, REFERENCE_RATE_HZ, float("inf"), **limits)
            return resample(audio, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)

        speech_s = await self.vad.submit(await asyncio.to_thread(checked_16k))
        duration_s = await asyncio.to_thread(check_reference, audio, REFERENCE_RATE_HZ, speech_s, **limits)
        conds = await self.scheduler.submit(CloneJob(audio, REFERENCE_RATE_HZ), priority=Priority.NORMAL)
        info = await asyncio.to_thread(self.store.create, name, self.engine.name, duration_s, audio,
                                       REFERENCE_RATE_HZ, lambda path: self.engine.save_conditionals(conds, path),
                                       v.max_voices)
        self.metrics.voices_cloned.inc()
        log.info("voice cloned", extra={"voice": info.id, "duration_s": info.duration, "speech_s": round(speech_s, 2)})
        return info
