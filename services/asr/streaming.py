"""The LocalAgreement-2 streaming policy of whisper-streaming (Machacek et al., 2023).

Each partial decode of the growing utterance is a hypothesis. Words on which
two consecutive hypotheses agree (the longest common prefix after the text
already confirmed) become *stable*: they are confirmed and forced as the decoder
prefix of every later partial decode of this utterance, so they never change
in later partials. (The final is a separate beam search over the whole
utterance; see session.py.) The rest of the newest hypothesis is the unstable tail shown in
``partial`` events. Words keep Whisper's own leading spaces so joining them
reproduces the decoded text. Pure logic, no model: unit-tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"\s*\S+")


def split_words(text: str) -> list[str]:
    """Words with their leading whitespace: ``" And so"`` -> ``[" And", " so"]``."""
    return _WORD.findall(text)


def _key(word: str) -> str:
    return word.strip()


@dataclass
class LocalAgreement:
    stable_words: list[str] = field(default_factory=list)
    _previous_tail: list[str] | None = None
    tail_words: list[str] = field(default_factory=list)

    @property
    def stable(self) -> str:
        return "".join(self.stable_words)

    @property
    def text(self) -> str:
        return "".join(self.stable_words + self.tail_words)

    def update(self, hypothesis: str) -> bool:
        """Apply a new full hypothesis of the utterance (stable prefix included).

        Returns False (and changes nothing) when the hypothesis does not start
        with the confirmed words, e.g. a late result decoded before the last
        confirmation.
        """
        words = split_words(hypothesis)
        n_stable = len(self.stable_words)
        if [_key(w) for w in words[:n_stable]] != [_key(w) for w in self.stable_words]:
            return False
        tail = words[n_stable:]
        if self._previous_tail is not None:
            agreed = 0
            for a, b in zip(self._previous_tail, tail):
                if _key(a) != _key(b):
                    break
                agreed += 1
            self.stable_words.extend(tail[:agreed])
            tail = tail[agreed:]
        self._previous_tail = tail
        self.tail_words = tail
        return True
