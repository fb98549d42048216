"""How live finals reach Whisper: batched by default, one per batch, the longest-waiting first, with
``scheduler.final_max_batch`` 1; and turn checks reach Smart Turn in batches of at most ``turn.max_batch``. The real
runtime (models loaded) and its real schedulers."""

from __future__ import annotations

import asyncio

import numpy as np

from services.asr.engine import DecodeRequest
from services.asr.serving import AsrRuntime
from services.asr.settings import load
from services.common.scheduler import Priority


def model_batches(runtime: AsrRuntime, model: str = "whisper") -> tuple[float, float]:
    """(batches run, requests in them) so far, from the scheduler's batch-size histogram."""
    samples = [s for metric in runtime.metrics.batch_size.collect() for s in metric.samples
               if s.labels.get("model") == model]
    count = next(s.value for s in samples if s.name.endswith("_count"))
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    return count, total


def run_finals(final_max_batch: int | None, n: int = 3) -> tuple[float, float, int]:
    async def go():
        settings = load()
        settings.scheduler.final_max_batch = final_max_batch
        runtime = AsrRuntime.load(settings)
        await runtime.start()
        try:
            audio = np.zeros(16000, dtype=np.float32)  # 1 s each: one encoder length, so they could share a batch
            finals = [runtime.decode_final(DecodeRequest(audio, word_timestamps=True, final=True), Priority.URGENT)
                      for _ in range(n)]
            await asyncio.gather(*finals)
            return (*model_batches(runtime), runtime.final_max_batch)
        finally:
            await runtime.stop()

    return asyncio.run(go())


def test_final_max_batch_1_decodes_live_finals_one_at_a_time():
    batches, requests, cap = run_finals(1)
    assert cap == 1
    assert (batches, requests) == (3, 3)


def test_by_default_finals_that_arrive_together_are_batched():
    batches, requests, cap = run_finals(None)
    assert cap == 8
    assert requests == 3 and batches < 3


def run_checks(max_batch: int | None, n: int = 3) -> tuple[float, float]:
    async def go():
        settings = load()
        if max_batch is not None:
            settings.turn.max_batch = max_batch
        runtime = AsrRuntime.load(settings)
        await runtime.start()
        try:
            audio = np.zeros(16000, dtype=np.float32)
            await asyncio.gather(*(runtime.turn_probability(audio) for _ in range(n)))
            return model_batches(runtime, "turn")
        finally:
            await runtime.stop()

    return asyncio.run(go())


def test_turn_checks_batch_up_to_turn_max_batch():
    assert run_checks(1) == (3, 3)
    batches, requests = run_checks(None)  # default 4: checks that arrive together share a run
    assert requests == 3 and batches < 3
