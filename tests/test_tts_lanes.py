"""Piper's lanes (``engine.lanes``): pieces of different sessions synthesized at once, each on its own one-thread
copy of the voice, with the real embedded voice; a failing piece fails alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.common.scheduler import Failed
from services.tts.engine import SynthesisJob, run_jobs
from services.tts.piper import EMBEDDED_VOICE, PiperEngine, embedded_voice_files
from tts_support import Transcriber, mostly_heard

TEXTS = ["The weather is lovely today.", "Please close the door behind you."]


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine({EMBEDDED_VOICE: embedded_voice_files()}, cpu_threads=2, lanes=2, noise_scale=0,
                       noise_w_scale=0)


def job(text: str, chunks: list) -> SynthesisJob:
    return SynthesisJob(text, EMBEDDED_VOICE, sink=lambda samples, rate: chunks.append((samples.copy(), rate)))


def test_two_pieces_at_once_each_get_their_own_audio(engine):
    outs: list[list] = [[], []]
    done: list[str] = []
    threads: set[str] = set()
    jobs = [job(text, out) for text, out in zip(TEXTS, outs)]
    for j in jobs:
        j.on_done = lambda j=j: (done.append(j.text), threads.add(threading.current_thread().name))
    results = run_jobs(engine, jobs)
    assert sorted(done) == sorted(TEXTS) and len(threads) == 2  # each finished on its own lane's thread
    transcribe = Transcriber()
    for text, out, result in zip(TEXTS, outs, results):
        audio = np.concatenate([samples for samples, _ in out])
        rate = out[0][1]
        assert result.audio_s == pytest.approx(audio.size / rate)
        assert mostly_heard(text, transcribe(audio, rate)), text


def test_a_failing_piece_fails_alone_and_is_not_run_again(engine):
    good: list = []
    bad = SynthesisJob("This voice does not exist.", "no-such-voice")
    finished: list = []
    results = engine.synthesize_many([job(TEXTS[0], good), bad], finished.append)
    assert isinstance(results[1], Failed) and not isinstance(results[0], Failed)
    assert len(finished) == 2 and good  # the good piece's audio went out once, and both pieces finished
    with pytest.raises(ValueError):
        engine.synthesize_many([job(t, []) for t in TEXTS + TEXTS[:1]], finished.append)  # more than the lanes
