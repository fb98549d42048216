"""The segmenter: real speech through the real Silero VAD into utterances, the same however the audio and the
scoring arrive; a caller's decision is seen by the next window; the buffer keeps what an utterance needs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.asr.endpointing import (CheckTurn, DetectorOptions, Ended, EndpointOptions, EndReason, Speculate,
                                      Started, TurnMode)
from services.asr.segmenter import Segmenter
from services.common.vad import VAD_WINDOW_SAMPLES, SileroVad, VadStream, decode_state, encode_state

from conftest import DATA, read_wav

DET = DetectorOptions(threshold=0.5, neg_threshold=0.35, min_speech_ms=96, speech_pad_ms=192)
VAD_MODE = EndpointOptions(mode=TurnMode.VAD, end_pad_ms=96, vad_silence_ms=300)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """jfk.wav (pauses between phrases) and 1 s of silence: several utterances ended by silence."""
    samples, rate = read_wav(DATA / "asr" / "jfk.wav")
    assert rate == 16000
    return np.concatenate([samples.astype(np.float32) / 32768, np.zeros(16000, np.float32)])


def scripted(probabilities: list[float]):
    """A scorer that answers the windows in order from a script (the VAD's output, chosen by the test)."""
    it = iter(probabilities)

    def score(stream, samples: np.ndarray) -> np.ndarray:
        return np.array([next(it) for _ in range(samples.size // VAD_WINDOW_SAMPLES)], dtype=np.float32)
    return score


def test_same_utterances_however_the_audio_arrives(vad, speech):
    whole = Segmenter(VAD_MODE, DET)
    whole.append(speech)
    expected = list(whole.detect(vad.probabilities))
    ends = [a for a in expected if isinstance(a, Ended)]
    assert len(ends) >= 2 and all(e.reason is EndReason.SILENCE for e in ends)
    assert [type(a) for a in expected[:3]] == [Started, Speculate, Ended]

    framed = Segmenter(VAD_MODE, DET, chunk_samples=10 * VAD_WINDOW_SAMPLES)
    got = []
    for i in range(0, speech.size, 320):  # 20 ms frames, scored in slices of at most 10 windows
        framed.append(speech[i:i + 320])
        got += framed.detect(vad.probabilities)
        framed.trim()
    assert got == expected
    assert framed.vad_position == speech.size // VAD_WINDOW_SAMPLES * VAD_WINDOW_SAMPLES


def test_async_scoring_gives_the_same_actions(vad, speech):
    sync = Segmenter(VAD_MODE, DET)
    sync.append(speech)
    expected = list(sync.detect(vad.probabilities))

    async def run() -> list:
        async def score(stream, samples):
            return await asyncio.to_thread(vad.probabilities, stream, samples)
        seg = Segmenter(VAD_MODE, DET, chunk_samples=8000)
        seg.append(speech)
        return [a async for a in seg.detect_async(score)]

    assert asyncio.run(run()) == expected


def test_a_turn_ended_by_the_caller_is_seen_by_the_next_window():
    options = EndpointOptions(mode=TurnMode.SMART_TURN, turn_checkpoints_ms=(192, 480), max_silence_ms=800)
    seg = Segmenter(options, DET)
    seg.append(np.zeros(60 * VAD_WINDOW_SAMPLES, np.float32))
    got = []
    for action in seg.detect(scripted([0.9] * 20 + [0.0] * 40)):
        got.append(action)
        if isinstance(action, CheckTurn):
            assert seg.position_sample == action.end_sample - 96 * 16 + 192 * 16  # the window the check is for
            got.append(seg.endpointer.end(EndReason.TURN, action.end_sample))
    assert [type(a) for a in got] == [Started, Speculate, CheckTurn, Ended]
    assert got[-1].reason is EndReason.TURN  # no second check, no silence end for the same pause


def test_trim_keeps_the_open_utterance_and_drops_the_rest():
    seg = Segmenter(VAD_MODE, DET)
    audio = np.arange(400 * VAD_WINDOW_SAMPLES, dtype=np.float32)
    seg.append(audio[: 300 * VAD_WINDOW_SAMPLES])
    started = [a for a in seg.detect(scripted([0.0] * 100 + [0.9] * 200)) if isinstance(a, Started)]
    seg.trim()
    start = started[0].start_sample
    assert seg.buffer.start == start  # the open utterance, pre-roll included, is all still there
    assert np.array_equal(seg.slice(start, seg.position_sample), audio[start:seg.position_sample])

    seg.append(audio[300 * VAD_WINDOW_SAMPLES:])
    ended = [a for a in seg.detect(scripted([0.0] * 100)) if isinstance(a, Ended)]
    seg.trim()
    assert ended and not seg.endpointer.in_utterance
    assert seg.buffer.start == seg.vad_position - (192 + 96) * 16 - 4 * VAD_WINDOW_SAMPLES  # pre-roll's reach


def test_close_commits_mid_speech_and_ends_at_the_newest_sample():
    seg = Segmenter(EndpointOptions(mode=TurnMode.NONE), DET)
    seg.append(np.zeros(30 * VAD_WINDOW_SAMPLES + 100, np.float32))  # a partial window is buffered, not scored
    list(seg.detect(scripted([0.9] * 30)))
    committed = seg.close(EndReason.COMMIT)
    assert [type(a) for a in committed] == [Ended, Started]
    assert committed[0].end_sample == committed[1].start_sample == 30 * VAD_WINDOW_SAMPLES + 100
    (ended,) = seg.close(EndReason.END)
    assert ended.reason is EndReason.END and seg.close(EndReason.END) == []


@pytest.mark.parametrize("frame", [320, 4096])
def test_state_at_an_utterances_end_is_the_state_a_whole_run_has_there(vad, speech, frame):
    """What a final hands a resume: the VAD's state at the utterance's end, reached from a kept state, equals the
    state of one run over the audio up to there; the kept states stay few (no growth over a long stream)."""
    seg = Segmenter(VAD_MODE, DET, keep_states=True)
    ends, kept = [], []
    for offset in range(0, speech.size, frame):
        seg.append(speech[offset:offset + frame])
        for action in seg.detect(vad.probabilities):
            if isinstance(action, Ended):
                found = seg.state_at(action.end_sample)
                assert found is not None
                state, audio = found
                vad.probabilities(state, audio)
                ends.append((action.end_sample, state))
        seg.trim()
        kept.append(len(seg._states))
    assert len(ends) >= 2
    for end, state in ends:
        fresh = VadStream()
        vad.probabilities(fresh, speech[:end])  # one run from the start
        assert np.allclose(state.h, fresh.h, atol=1e-5) and np.allclose(state.c, fresh.c, atol=1e-5)
        assert np.array_equal(state.context, fresh.context)
    assert max(kept) <= 2 + 1000 // 32  # a pause's worth of windows at most (VAD_MODE ends at 300 ms of silence)
    assert seg.state_at(ends[-1][0] + 1) is None  # off the window grid: no state


def test_a_resumed_segmenter_goes_on_from_the_state_it_is_given(vad, speech):
    """Starting from the state at sample N gives the same probabilities as one run from 0, from N on."""
    n = 47616  # a window boundary inside the pause after the first phrase
    whole = vad.probabilities(VadStream(), speech[:speech.size // VAD_WINDOW_SAMPLES * VAD_WINDOW_SAMPLES])
    head = VadStream()
    vad.probabilities(head, speech[:n])
    fingerprint, carried = decode_state(encode_state(head, vad.fingerprint))
    assert fingerprint == vad.fingerprint
    tail = speech[n:n + (speech.size - n) // VAD_WINDOW_SAMPLES * VAD_WINDOW_SAMPLES]
    assert np.allclose(vad.probabilities(carried, tail), whole[n // VAD_WINDOW_SAMPLES:], atol=1e-5)
    fresh = vad.probabilities(VadStream(), tail)
    assert not np.allclose(fresh, whole[n // VAD_WINDOW_SAMPLES:], atol=1e-2)  # the state is what makes it


@pytest.mark.parametrize("text", ["", "AQID", "!" * 40, "A" * 5000])
def test_decode_state_refuses_what_encode_state_did_not_write(text):
    with pytest.raises(ValueError):
        decode_state(text)
