"""Piper's lanes (``engine.lanes``, ``engine.first_piece_lanes``): pieces of different sessions synthesized at once,
one per worker thread of the TTS scheduler, each on its own one-thread copy of the voice, with the real embedded
voice. A short piece does not wait for a long one beside it, a first piece not even for two; a failing piece fails
alone."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from services.common.errors import ErrorCode, ServiceError
from services.common.scheduler import Priority, Scheduler, SchedulerOptions
from services.tts.engine import SynthesisJob, run_jobs
from services.tts.piper import EMBEDDED_VOICE, PiperEngine, embedded_voice_files
from conftest import loop_pass
from tts_support import Transcriber, mostly_heard

TEXTS = ["The weather is lovely today.", "Please close the door behind you."]
LONG = ("This is a long answer that keeps going, sentence after sentence, so that a piece takes a while to "
        "speak. It goes on about the weather, the trains, the meeting on Thursday and the plants on the sill.")


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine({EMBEDDED_VOICE: embedded_voice_files()}, cpu_threads=2, lanes=2, noise_scale=0,
                       noise_w_scale=0)


def job(text: str, chunks: list, voice: str = EMBEDDED_VOICE) -> SynthesisJob:
    return SynthesisJob(text, voice, sink=lambda samples, rate: chunks.append((samples.copy(), rate)))


async def on_lanes(scheduler: Scheduler) -> None:
    """Until every request submitted so far runs on a lane (none waits): event-loop passes, no time. The first
    pass lets a task just created queue its request."""
    for _ in range(10_000):
        await loop_pass()  # the scheduler's owner task takes what waits
        if scheduler.depth == 0:
            return
    raise AssertionError(f"{scheduler.depth} requests still wait for a lane")


async def speak_all(engine: PiperEngine, jobs: list[SynthesisJob], one_by_one: bool = False,
                    priorities: list[Priority] | None = None) -> tuple[list, list]:
    """Submit ``jobs`` to a scheduler like the service's (``one_by_one``: each once the ones before it run on a
    lane); results (or errors) in order, and the order in which they finished."""
    scheduler = Scheduler("tts", lambda batch: run_jobs(engine, batch), SchedulerOptions(
        max_batch=1, workers=engine.lanes, urgent_workers=engine.first_lanes, worker_nice=10))
    priorities = priorities or [Priority.NORMAL] * len(jobs)
    await scheduler.start()
    finished: list[int] = []

    async def one(i: int, j: SynthesisJob):
        try:
            return await scheduler.submit(j, priority=priorities[i])
        except ServiceError as err:
            return err
        finally:
            finished.append(i)

    try:
        tasks = []
        for i, j in enumerate(jobs):
            tasks.append(asyncio.create_task(one(i, j)))
            if one_by_one:
                await on_lanes(scheduler)
        return await asyncio.gather(*tasks), finished
    finally:
        await scheduler.stop()


def test_two_pieces_at_once_each_get_their_own_audio(engine):
    outs: list[list] = [[], []]
    threads: set[str] = set()
    jobs = [job(text, out) for text, out in zip(TEXTS, outs)]
    for j in jobs:
        j.on_done = lambda: threads.add(threading.current_thread().name)
    results, _ = asyncio.run(speak_all(engine, jobs))
    assert len(threads) == 2  # each piece ran (and finished) on its own worker thread
    transcribe = Transcriber()
    for text, out, result in zip(TEXTS, outs, results):
        audio = np.concatenate([samples for samples, _ in out])
        rate = out[0][1]
        assert result.audio_s == pytest.approx(audio.size / rate)
        assert mostly_heard(text, transcribe(audio, rate)), text


def test_a_short_piece_does_not_wait_for_a_long_one_beside_it(engine):
    """A reply's first piece arriving while another session's long piece is being spoken starts on the free lane
    and is done first (in one batch of two, it would have waited for the long one to end)."""
    long_audio: list = []
    short_audio: list = []
    results, finished = asyncio.run(speak_all(engine, [job(LONG, long_audio), job(TEXTS[0], short_audio)],
                                              one_by_one=True))
    assert finished == [1, 0], "the short piece finished after the long one"
    assert results[0].audio_s > 4 * results[1].audio_s and short_audio and long_audio


def test_a_failing_piece_fails_alone(engine):
    good: list = []
    results, _ = asyncio.run(speak_all(engine, [job(TEXTS[0], good), job(TEXTS[1], [], voice="no-such-voice")]))
    assert isinstance(results[1], ServiceError) and results[1].code is ErrorCode.NOT_FOUND
    assert not isinstance(results[0], ServiceError) and good  # the good piece's audio went out


def test_a_first_piece_starts_on_its_own_lane_while_both_lanes_speak_long_pieces():
    """``first_lanes``: with both lanes busy with other sessions' long pieces, a reply's first piece (``URGENT``)
    starts at once on the lane kept for first pieces, on its own copy of the voice, and is done first and heard;
    without that lane it would wait for a long piece to end."""
    engine = PiperEngine({EMBEDDED_VOICE: embedded_voice_files()}, cpu_threads=2, lanes=2, first_lanes=1,
                         noise_scale=0, noise_w_scale=0)
    outs: list[list] = [[], [], []]
    jobs = [job(LONG, outs[0]), job(LONG, outs[1]), job(TEXTS[0], outs[2])]
    results, finished = asyncio.run(speak_all(engine, jobs, one_by_one=True,
                                              priorities=[Priority.NORMAL, Priority.NORMAL, Priority.URGENT]))
    assert finished[0] == 2, finished
    assert all(r.audio_s > 4 * results[2].audio_s for r in results[:2])
    audio = np.concatenate([samples for samples, _ in outs[2]])
    assert mostly_heard(TEXTS[0], Transcriber()(audio, outs[2][0][1]))
