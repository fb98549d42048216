"""Event sequences of the VAD state machine and the endpointer, fed synthetic probabilities (no model)."""

import pytest

from services.asr.endpointing import CheckTurn, Ended, EndpointOptions, Endpointer, EndReason, Resumed, Speculate, Started, TurnMode
from services.asr.endpointing import DetectorOptions, SpeechDetector, SpeechState
from services.common.vad import VAD_WINDOW_SAMPLES as WINDOW_SAMPLES

DET = DetectorOptions(threshold=0.5, neg_threshold=0.35, min_speech_ms=96, speech_pad_ms=192)


def feed(ep: Endpointer, probs):
    out = []
    for i, p in enumerate(probs):
        out.extend((i, a) for a in ep.push(p))
    return out


def test_detector_states_and_hysteresis():
    d = SpeechDetector(DET)
    assert d.state is SpeechState.QUIET
    d.push(0.9)
    assert d.state is SpeechState.STARTING
    d.push(0.4)  # between the thresholds: no change
    assert d.state is SpeechState.STARTING
    d.push(0.9)
    d.push(0.9)
    assert d.state is SpeechState.SPEAKING
    d.push(0.4)
    assert d.state is SpeechState.SPEAKING
    d.push(0.1)
    assert d.state is SpeechState.STOPPING
    d.push(0.6)
    assert d.state is SpeechState.SPEAKING


def test_a_blip_shorter_than_min_speech_starts_nothing():
    ep = Endpointer(EndpointOptions(mode=TurnMode.VAD), DET)
    assert feed(ep, [0.0] * 10 + [0.9, 0.9] + [0.0] * 30) == []


def test_vad_mode_utterance_with_preroll_and_silence_end():
    ep = Endpointer(EndpointOptions(mode=TurnMode.VAD, end_pad_ms=96, vad_silence_ms=600), DET)
    actions = feed(ep, [0.0] * 20 + [0.9] * 40 + [0.0] * 30)
    kinds = [type(a).__name__ for _, a in actions]
    assert kinds == ["Started", "Speculate", "Ended"]
    (i0, started), (i1, spec), (i2, ended) = actions
    assert i0 == 22  # confirmed after 3 windows (96 ms)
    assert started.start_sample == 20 * WINDOW_SAMPLES - 192 * 16  # onset minus the pre-roll
    speech_end = 60 * WINDOW_SAMPLES
    assert spec.end_sample == ended.end_sample == speech_end + 96 * 16
    assert ended.reason is EndReason.SILENCE
    assert (i2 - 60 + 1) * 32 >= 600 > (i2 - 60) * 32


def test_speculate_at_the_first_silent_window_names_the_whole_pad():
    """With ``speculate_ms`` below ``end_pad_ms`` the final is announced as soon as the VAD hears the pause: its end
    is where the pad will end (past the audio seen so far), the same sample the turn's end then names."""
    options = EndpointOptions(mode=TurnMode.SMART_TURN, end_pad_ms=96, speculate_ms=32, turn_checkpoints_ms=(96,),
                              max_silence_ms=800)
    ep = Endpointer(options, DET)
    actions = feed(ep, [0.9] * 20 + [0.0] * 10)
    (i1, spec), (i2, check) = [(i, a) for i, a in actions if isinstance(a, (Speculate, CheckTurn))]
    speech_end = 20 * WINDOW_SAMPLES
    assert i1 == 20  # the first silent window
    assert spec.end_sample == check.end_sample == speech_end + 96 * 16 > (i1 + 1) * WINDOW_SAMPLES
    assert i2 == 22
    ended = ep.end(EndReason.TURN, check.end_sample)
    assert ended.end_sample == spec.end_sample


def test_speculate_ms_is_bounded_by_the_pad():
    with pytest.raises(ValueError):
        EndpointOptions(end_pad_ms=96, speculate_ms=128)


def test_smart_turn_mode_checkpoints_and_resume():
    ep = Endpointer(EndpointOptions(mode=TurnMode.SMART_TURN, turn_checkpoints_ms=(192, 480), max_silence_ms=800), DET)
    actions = feed(ep, [0.9] * 20 + [0.0] * 10 + [0.9] * 5 + [0.0] * 30)
    kinds = [type(a).__name__ for _, a in actions]
    # first pause: speculate, one check at 192 ms; speech resumes (void); second pause: checks, then timeout
    assert kinds == ["Started", "Speculate", "CheckTurn", "Resumed", "Speculate", "CheckTurn", "CheckTurn", "Ended"]
    checks = [a for _, a in actions if isinstance(a, CheckTurn)]
    assert [c.silence_ms for c in checks] == [192, 192, 480]
    assert actions[-1][1].reason is EndReason.SILENCE


def test_caller_ends_the_turn_after_a_check():
    ep = Endpointer(EndpointOptions(mode=TurnMode.SMART_TURN), DET)
    actions = feed(ep, [0.9] * 20 + [0.0] * 6)
    check = next(a for _, a in actions if isinstance(a, CheckTurn))
    ended = ep.end(EndReason.TURN, check.end_sample)
    assert ended.reason is EndReason.TURN and not ep.in_utterance
    assert feed(ep, [0.0] * 60) == []  # nothing more for this pause


def test_settles_names_the_windows_whose_actions_depend_on_a_check_still_out():
    """Only a window that resumes speech in a pause, or reaches the length limit, settles: a check that ends the turn
    would have ended the utterance before it. More silence, a timeout, speech outside a pause do not."""
    ep = Endpointer(EndpointOptions(mode=TurnMode.SMART_TURN, max_silence_ms=5000, max_utterance_ms=3200), DET)
    assert not ep.settles(0.9)  # no utterance open
    feed(ep, [0.9] * 20)
    assert not ep.settles(0.9) and not ep.settles(0.0)  # speaking: nothing of a pause to wait for
    feed(ep, [0.0] * 5)
    assert ep.settles(0.9)  # speech comes back in the pause
    assert not ep.settles(0.4) and not ep.settles(0.0)  # the pause goes on
    feed(ep, [0.0] * (100 - 25 - 1))  # one window before 3.2 s of utterance
    assert ep.settles(0.0)  # the length limit's cut


def test_none_mode_never_ends_on_silence():
    ep = Endpointer(EndpointOptions(mode=TurnMode.NONE), DET)
    actions = feed(ep, [0.9] * 10 + [0.0] * 200)
    assert [type(a) for _, a in actions] == [Started]
    assert [type(a) for a in ep.split(EndReason.COMMIT)] == [Ended]


def test_max_length_cuts_and_continues():
    ep = Endpointer(EndpointOptions(mode=TurnMode.VAD, max_utterance_ms=2000), DET)
    actions = feed(ep, [0.9] * 100)
    ends = [a for _, a in actions if isinstance(a, Ended)]
    starts = [a for _, a in actions if isinstance(a, Started)]
    assert ends and all(e.reason is EndReason.MAX_LENGTH for e in ends)
    assert all(e.end_sample - e.start_sample == 32000 for e in ends)
    assert [s.start_sample for s in starts[1:]] == [e.end_sample for e in ends]


def test_commit_mid_speech_opens_the_next_utterance_at_the_cut():
    ep = Endpointer(EndpointOptions(mode=TurnMode.NONE), DET)
    feed(ep, [0.9] * 30)
    actions = ep.split(EndReason.COMMIT, now_sample=30 * WINDOW_SAMPLES + 100)
    assert isinstance(actions[0], Ended) and actions[0].end_sample == 30 * WINDOW_SAMPLES + 100
    assert isinstance(actions[1], Started) and actions[1].start_sample == actions[0].end_sample
    assert isinstance(ep.split(EndReason.END)[0], Ended)


def test_speculation_is_voided_by_resumed_speech():
    ep = Endpointer(EndpointOptions(mode=TurnMode.VAD, vad_silence_ms=600), DET)
    actions = feed(ep, [0.9] * 10 + [0.0] * 5 + [0.9] * 3)
    assert [type(a) for _, a in actions] == [Started, Speculate, Resumed]


def test_a_length_cut_voids_the_turn_check_of_the_same_window():
    """The length cut and a pause checkpoint can fall in one window. The cut closes the utterance inside
    push(); a CheckTurn returned beside it made the processor end an utterance that was already closed
    (an assertion: internal/1011, and the cut utterance's final lost)."""
    cuts = 0
    for speech_windows in range(24, 40):
        ep = Endpointer(EndpointOptions(mode=TurnMode.SMART_TURN, turn_checkpoints_ms=(192,), max_silence_ms=800,
                                        max_utterance_ms=1024), DET)
        ended = []
        for p in [0.9] * speech_windows + [0.0] * 40:
            actions = ep.push(p)
            kinds = {type(a) for a in actions}
            assert not (kinds & {CheckTurn, Speculate} and Ended in kinds), (speech_windows, actions)
            cuts += any(isinstance(a, Ended) and a.reason is EndReason.MAX_LENGTH for a in actions)
            ended += [a for a in actions if isinstance(a, Ended)]
        assert ended and not ep.in_utterance  # every utterance got its end, hence its final
        assert all(e.end_sample > e.start_sample for e in ended)
    assert cuts
