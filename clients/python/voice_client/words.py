"""What a listener has heard of a reply: the word timings of a TTS stream against the audio played.

A :class:`ReplyWords` keeps the words of the reply being spoken (from ``words`` events, on the stream's audio
clock: samples received since the stream's first audio) and answers, for a position in that audio, which of them
had begun playing: at a barge-in, what the listener heard, so an agent can cut its own context there. A reply's
words are kept until the next reply's first words arrive after its ``done`` or ``cancelled``, so they can still be
asked for after the cancel; at ``cancelled`` the words whose audio never arrived are forgotten (a barge-in drops
queued audio, and the next reply's audio takes its place on the clock). At most :data:`MAX_WORDS` are kept.
"""

from __future__ import annotations

from collections import deque

MAX_WORDS = 5000
"""Words of one reply kept (about half an hour of speech); the oldest go first."""


class ReplyWords:
    def __init__(self) -> None:
        self.words: deque[dict] = deque(maxlen=MAX_WORDS)
        self._over = False  # the reply ended (done or cancelled): the next words start a new one

    def add(self, words: list[dict]) -> None:
        if self._over:
            self.words.clear()
            self._over = False
        self.words.extend(words)

    def reply_over(self) -> None:
        self._over = True

    def cancelled(self, received_samples: int) -> None:
        """A barge-in took effect after ``received_samples`` of audio: words that start later were never sent."""
        while self.words and self.words[-1]["start_sample"] >= received_samples:
            self.words.pop()
        self._over = True

    def heard(self, played_samples: int, whole: bool = False) -> list[dict]:
        """The reply's words whose audio had begun (``whole``: had ended) within the first ``played_samples``
        samples of the stream's audio."""
        key = "end_sample" if whole else "start_sample"
        return [w for w in self.words if (w[key] <= played_samples if whole else w[key] < played_samples)]

    def heard_text(self, played_samples: int, whole: bool = False) -> str:
        return " ".join(w["word"] for w in self.heard(played_samples, whole))
