"""One stream's audio cut into utterances: the sample buffer, the VAD reading it and the endpointer.

:class:`Segmenter` owns the per-stream state between audio and utterances -
the :class:`~.buffer.SampleBuffer`, the VAD's recurrent state
(:class:`~..common.vad.VadStream`) and how far the VAD has read, and the
:class:`~.endpointing.Endpointer` - and yields the endpointer's actions
(:class:`~.endpointing.Started`, ``Speculate``, ``CheckTurn``, ``Resumed``,
``Ended``) as the pushed audio is scored. The caller supplies the scoring: the
service awaits the runtime's VAD scheduler (:meth:`Segmenter.detect_async`),
a benchmark calls the model directly (:meth:`Segmenter.detect`); both run the
same loop over the same windows, so the live session, ``POST
/v1/transcribe`` and the benchmark scripts cut the same audio into the same
utterances. Actions are produced lazily, one window at a time, so a caller that
ends an utterance while acting on one (a turn check) is seen by the next
window; a caller whose turn checks run beside the stream passes ``settle``, which
waits for them before a window that would resume speech or reach the length
limit. :meth:`Segmenter.trim` keeps the buffer bounded: it drops everything
before the open utterance and before the audio the VAD may still turn into
pre-roll. A live stream that hands its detector's state to the client for a
resume keeps the VAD's state after each scoring call (``keep_states``), so
:meth:`Segmenter.state_at` can tell the state at an utterance's end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ
from ..common.vad import VAD_WINDOW_SAMPLES, VadStream
from .buffer import SampleBuffer
from .endpointing import Action, DetectorOptions, Endpointer, EndpointOptions, EndReason

Score = Callable[[VadStream, np.ndarray], np.ndarray]
AsyncScore = Callable[[VadStream, np.ndarray], Awaitable[np.ndarray]]


class Segmenter:
    """Audio in (:meth:`append`), the endpointer's actions out (:meth:`detect` / :meth:`detect_async`).

    ``chunk_samples`` caps how much audio one scoring call gets (a whole upload
    is scored in fair slices); by default all the whole windows buffered.
    """

    def __init__(self, endpoint: EndpointOptions, detector: DetectorOptions, chunk_samples: int | None = None,
                 vad_stream: VadStream | None = None, keep_states: bool = False) -> None:
        self.endpointer = Endpointer(endpoint, detector)
        self.buffer = SampleBuffer()
        self.vad_stream = vad_stream or VadStream()  # a resumed stream's detector goes on from the state it had
        self.vad_position = 0  # samples the VAD has scored
        # (position, state) after scoring calls, oldest first, back to where an utterance can still end: state_at
        self._states: list[tuple[int, VadStream]] | None = [(0, self.vad_stream.copy())] if keep_states else None
        self._chunk_windows = None if chunk_samples is None else max(1, chunk_samples // VAD_WINDOW_SAMPLES)
        # Audio the detector may still reach back into: its pre-roll, the voiced run before speech starts, a margin.
        self._keep_back = ((detector.speech_pad_ms + detector.min_speech_ms) * SAMPLE_RATE_HZ // 1000
                           + 4 * VAD_WINDOW_SAMPLES)

    @property
    def position_sample(self) -> int:
        """End of the last window the endpointer has seen (while acting on an action: of that action's window)."""
        return self.endpointer.position_sample

    def append(self, samples: np.ndarray) -> None:
        """16 kHz float32 samples of the stream, in order."""
        self.buffer.append(samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of the buffered samples [start, end)."""
        return self.buffer.slice(start, end)

    def detect(self, score: Score) -> Iterator[Action]:
        """Score every whole window not yet scored with ``score(stream, samples)`` (the VAD model's
        ``probabilities``) and yield the endpointer's actions, window by window."""
        while (chunk := self._next_chunk()) is not None:
            probabilities = score(self.vad_stream, chunk)
            self._keep_state()
            yield from self._actions(probabilities)

    async def detect_async(self, score: AsyncScore,
                           settle: Callable[[float], Awaitable[None] | None] | None = None) -> AsyncIterator[Action]:
        """As :meth:`detect`, with ``score`` awaited (the service's VAD scheduler). ``settle``, if given, is
        called with each window's probability before the endpointer sees it, and what it returns, if anything,
        is awaited first (the caller's turn checks still out, before a window whose actions depend on them:
        :meth:`~.endpointing.Endpointer.settles`)."""
        while (chunk := self._next_chunk()) is not None:
            probabilities = await score(self.vad_stream, chunk)
            self._keep_state()
            for probability in probabilities:
                probability = float(probability)
                if settle is not None and (pending := settle(probability)) is not None:
                    await pending
                for action in self.endpointer.push(probability):
                    yield action

    def state_at(self, sample: int) -> tuple[VadStream, np.ndarray] | None:
        """The VAD's state at ``sample`` as a kept state before it and the audio from there to ``sample`` (score
        that audio on a copy of the state to reach it); None when ``sample`` is off the window grid or the audio
        is gone (or states are not kept)."""
        if self._states is None or sample % VAD_WINDOW_SAMPLES or sample > self.vad_position:
            return None
        for position, state in reversed(self._states):
            if position <= sample:
                if position < self.buffer.start:
                    return None
                return state.copy(), self.buffer.slice(position, sample)
        return None

    def close(self, reason: EndReason) -> list[Action]:
        """Commit or end of input: the open utterance ends now (at the newest sample if speech is going on);
        after a commit, speech that goes on opens the next utterance at the cut."""
        return self.endpointer.split(reason, self.buffer.end)

    def trim(self) -> None:
        """Drop the audio no utterance can need any more."""
        keep = self.vad_position - self._keep_back
        if self.endpointer.start_sample is not None:
            keep = min(keep, self.endpointer.start_sample)
        self.buffer.discard_before(keep)
        if self._states is not None:
            # No utterance can end before the detector's last speech (an end is a pause after it) or where the
            # audio is gone: the newest state at or before that stays, the ones after it are reached from it.
            cut = max(self.endpointer.detector.speech_end_sample, self.buffer.start)
            first = max((i for i, (position, _) in enumerate(self._states) if position <= cut), default=0)
            del self._states[:first]

    def _keep_state(self) -> None:
        if self._states is not None:
            self._states.append((self.vad_position, self.vad_stream.copy()))

    def _next_chunk(self) -> np.ndarray | None:
        windows = (self.buffer.end - self.vad_position) // VAD_WINDOW_SAMPLES
        if self._chunk_windows is not None:
            windows = min(windows, self._chunk_windows)
        if windows <= 0:
            return None
        chunk = self.buffer.slice(self.vad_position, self.vad_position + windows * VAD_WINDOW_SAMPLES)
        self.vad_position += windows * VAD_WINDOW_SAMPLES
        return chunk

    def _actions(self, probabilities: Iterable[float]) -> Iterator[Action]:
        for probability in probabilities:
            yield from self.endpointer.push(float(probability))
