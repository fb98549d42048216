"""Where utterances begin and end: the rules shared by live streams and files.

:class:`SpeechDetector` turns the shared VAD's per-window speech probabilities
(one window = 32 ms) into the states quiet, starting, speaking and stopping,
with thresholds in milliseconds, and reports when speech starts and how long
the current pause has lasted. :class:`Endpointer` wraps it and applies the
session's turn-detection mode to its pauses. Both are synchronous and count
samples only, so the same audio always yields the same utterances; the live
session and ``POST /v1/transcribe`` (which runs it in ``vad`` mode) share it,
which is why a stream and an upload of the same audio give the same text.
The endpointer asks its caller to act through small action objects:

* :class:`Started` - an utterance begins (pre-roll included);
* :class:`Speculate` - the pause has reached ``end_pad_ms`` (``smart_turn``
  mode: ``speculate_ms``): the utterance (its speech and ``end_pad_ms`` after
  it) is known if the speaker does not go on, so its final can be decoded now,
  ahead of the decision; where ``speculate_ms`` is shorter than ``end_pad_ms``
  the end of the pad has not arrived yet (the final decodes it as the silence
  the VAD says it is);
* :class:`CheckTurn` - ``smart_turn`` mode, a checkpoint of the pause: run the
  turn model and call :meth:`Endpointer.end` if the turn is complete;
* :class:`Resumed` - speech came back during the pause; speculation is void;
* :class:`Ended` - the utterance is over, with its reason and last sample.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ..common.audio import SAMPLE_RATE_HZ
from ..common.vad import VAD_WINDOW_MS, VAD_WINDOW_SAMPLES


# -- the speech state machine ------------------------------------------------------------------

class SpeechState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class DetectorOptions:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 96
    speech_pad_ms: int = 192


@dataclass(frozen=True)
class SpeechStarted:
    start_sample: int  # first sample of the utterance, pre-roll included


@dataclass(frozen=True)
class Silence:
    silence_ms: int  # pause so far, counted from the end of the last voiced window
    speech_end_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    pass


DetectorEvent = SpeechStarted | Silence | SpeechResumed


class SpeechDetector:
    """quiet -> starting -> speaking <-> stopping -> (utterance ended by the caller) -> quiet.

    Fed one probability per window in stream order. While stopping it emits a
    :class:`Silence` event for every window, so callers can act at whatever
    pause lengths they choose.
    """

    def __init__(self, options: DetectorOptions) -> None:
        self.options = options
        self.state = SpeechState.QUIET
        self.windows_seen = 0
        self._start_window = 0
        self._voiced_run = 0
        self.speech_end_sample = 0
        self._floor_sample = 0  # an utterance never starts before the previous one ended

    @property
    def position_sample(self) -> int:
        return self.windows_seen * VAD_WINDOW_SAMPLES

    def push(self, probability: float) -> list[DetectorEvent]:
        o = self.options
        index = self.windows_seen
        self.windows_seen += 1
        voiced = probability >= o.threshold
        unvoiced = probability < o.neg_threshold
        events: list[DetectorEvent] = []
        if self.state is SpeechState.QUIET:
            if voiced:
                self.state = SpeechState.STARTING
                self._start_window = index
                self._voiced_run = 1
        elif self.state is SpeechState.STARTING:
            if voiced:
                self._voiced_run += 1
            elif unvoiced:
                self.state = SpeechState.QUIET
            if self.state is SpeechState.STARTING and self._voiced_run * VAD_WINDOW_MS >= o.min_speech_ms:
                self.state = SpeechState.SPEAKING
                pad = o.speech_pad_ms * SAMPLE_RATE_HZ // 1000
                start = max(self._floor_sample, self._start_window * VAD_WINDOW_SAMPLES - pad)
                self.speech_end_sample = self.position_sample
                events.append(SpeechStarted(start))
        elif self.state is SpeechState.SPEAKING:
            if unvoiced:
                self.state = SpeechState.STOPPING
                self.speech_end_sample = index * VAD_WINDOW_SAMPLES
                events.append(Silence(VAD_WINDOW_MS, self.speech_end_sample))
            else:
                self.speech_end_sample = self.position_sample
        elif self.state is SpeechState.STOPPING:
            if voiced:
                self.state = SpeechState.SPEAKING
                self.speech_end_sample = self.position_sample
                events.append(SpeechResumed())
            else:
                silence_ms = (self.position_sample - self.speech_end_sample) * 1000 // SAMPLE_RATE_HZ
                events.append(Silence(int(silence_ms), self.speech_end_sample))
        return events

    def end_utterance(self, at_sample: int) -> None:
        """The caller closed the utterance at ``at_sample``.

        A pause or a quiet stream goes back to quiet; speech that is still going
        on (a cut at the length limit, a commit mid-word) starts the next
        utterance right at the cut.
        """
        self._floor_sample = at_sample
        if self.state in (SpeechState.STOPPING, SpeechState.STARTING):
            self.state = SpeechState.QUIET
        self._voiced_run = 0

    @property
    def in_speech(self) -> bool:
        return self.state in (SpeechState.SPEAKING, SpeechState.STOPPING)


# -- utterances ----------------------------------------------------------------------------------

class TurnMode(str, enum.Enum):
    SMART_TURN = "smart_turn"
    VAD = "vad"
    NONE = "none"


class EndReason(str, enum.Enum):
    TURN = "turn"
    SILENCE = "silence"
    COMMIT = "commit"
    END = "end"
    MAX_LENGTH = "max_length"


@dataclass(frozen=True)
class EndpointOptions:
    mode: TurnMode = TurnMode.SMART_TURN
    end_pad_ms: int = 96  # audio kept after the last voiced window
    vad_silence_ms: int = 600  # vad mode: a pause this long ends the utterance
    turn_checkpoints_ms: Sequence[int] = (192, 480)  # smart_turn mode: when the model is asked
    max_silence_ms: int = 700  # smart_turn mode: the utterance ends anyway after this pause
    max_utterance_ms: int = 30000
    speculate_ms: int | None = None  # smart_turn: pause after which Speculate comes (<= end_pad_ms); None: end_pad_ms

    def __post_init__(self) -> None:
        if self.speculate_ms is not None and not 0 < self.speculate_ms <= self.end_pad_ms:
            raise ValueError("speculate_ms must be in (0, end_pad_ms]")


@dataclass(frozen=True)
class Started:
    start_sample: int


@dataclass(frozen=True)
class Speculate:
    end_sample: int  # the utterance's end if this pause ends it; may lie past the audio seen so far


@dataclass(frozen=True)
class CheckTurn:
    silence_ms: int
    end_sample: int


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class Ended:
    reason: EndReason
    start_sample: int
    end_sample: int


Action = Started | Speculate | CheckTurn | Resumed | Ended


class Endpointer:
    def __init__(self, options: EndpointOptions, detector: DetectorOptions) -> None:
        self.options = options
        self.detector = SpeechDetector(detector)
        self.start_sample: int | None = None  # of the open utterance
        self._pause_marks: set[int] = set()
        self._speculated = False
        self._pad_samples = options.end_pad_ms * SAMPLE_RATE_HZ // 1000
        self._max_samples = options.max_utterance_ms * SAMPLE_RATE_HZ // 1000

    @property
    def in_utterance(self) -> bool:
        return self.start_sample is not None

    @property
    def position_sample(self) -> int:
        return self.detector.position_sample

    def settles(self, probability: float) -> bool:
        """Pushing this window would resume speech in the pause or cut the utterance at its length limit: what
        a turn check of the pause still out decides must be applied first (it may end the utterance before)."""
        if self.start_sample is None:
            return False
        if self.detector.state is SpeechState.STOPPING and probability >= self.detector.options.threshold:
            return True
        return self.position_sample + VAD_WINDOW_SAMPLES - self.start_sample >= self._max_samples

    def pause_end_sample(self) -> int:
        """Last sample of the utterance if it ended in the current pause."""
        return min(self.detector.speech_end_sample + self._pad_samples, self.position_sample)

    def push(self, probability: float) -> list[Action]:
        actions: list[Action] = []
        for event in self.detector.push(probability):
            if isinstance(event, SpeechStarted):
                self.start_sample = event.start_sample
                self._reset_pause()
                actions.append(Started(event.start_sample))
            elif isinstance(event, SpeechResumed):
                if self._speculated or self._pause_marks:
                    actions.append(Resumed())
                self._reset_pause()
            elif isinstance(event, Silence) and self.start_sample is not None:
                actions.extend(self._on_silence(event))
        if self.start_sample is not None and self.position_sample - self.start_sample >= self._max_samples:
            cut = self.start_sample + self._max_samples
            if self.detector.state is SpeechState.STOPPING:
                cut = min(cut, self.pause_end_sample())
            # The cut closes the utterance now: a turn check or speculation of this same window is void.
            actions = [a for a in actions if not isinstance(a, (CheckTurn, Speculate))]
            actions.append(self.end(EndReason.MAX_LENGTH, cut))
            if self.detector.in_speech:  # still talking: the next utterance starts at the cut
                self.start_sample = cut
                actions.append(Started(cut))
        return actions

    def _reset_pause(self) -> None:
        self._pause_marks.clear()
        self._speculated = False

    def _on_silence(self, event: Silence) -> list[Action]:
        o = self.options
        out: list[Action] = []
        end_sample = min(event.speech_end_sample + self._pad_samples, self.position_sample)
        # A vad-mode decision comes long after the pad: its final waits for the whole pad, and is the upload's.
        early = o.mode is TurnMode.SMART_TURN and o.speculate_ms is not None
        speculate_ms = o.speculate_ms if early else o.end_pad_ms
        if not self._speculated and event.silence_ms >= speculate_ms and o.mode is not TurnMode.NONE:
            self._speculated = True
            out.append(Speculate(event.speech_end_sample + self._pad_samples))
        if o.mode is TurnMode.VAD and event.silence_ms >= o.vad_silence_ms:
            out.append(self.end(EndReason.SILENCE, end_sample))
        elif o.mode is TurnMode.SMART_TURN:
            if event.silence_ms >= o.max_silence_ms:
                out.append(self.end(EndReason.SILENCE, end_sample))
            else:
                for mark in o.turn_checkpoints_ms:
                    if event.silence_ms >= mark and mark not in self._pause_marks:
                        self._pause_marks.add(mark)
                        out.append(CheckTurn(event.silence_ms, end_sample))
                        break
        return out

    def end(self, reason: EndReason, end_sample: int | None = None) -> Ended:
        """Close the open utterance (the caller checks :attr:`in_utterance`)."""
        assert self.start_sample is not None
        if end_sample is None:
            end_sample = self.pause_end_sample() if self.detector.state is SpeechState.STOPPING else self.position_sample
        ended = Ended(reason, self.start_sample, max(end_sample, self.start_sample))
        self.detector.end_utterance(ended.end_sample)
        self.start_sample = None
        self._reset_pause()
        return ended

    def split(self, reason: EndReason, now_sample: int | None = None) -> list[Action]:
        """commit/end: close the open utterance now (at ``now_sample`` if speech is going on);
        after a commit, speech that is still going on opens the next utterance at the cut."""
        if self.start_sample is None:
            return []
        speaking = self.detector.state is SpeechState.SPEAKING
        ended = self.end(reason, now_sample if speaking else None)
        actions: list[Action] = [ended]
        if reason is EndReason.COMMIT and speaking:
            self.start_sample = ended.end_sample
            actions.append(Started(ended.end_sample))
        return actions
