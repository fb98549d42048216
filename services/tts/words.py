"""Word timings of synthesized speech: the words of a piece, their spans, and the fallback estimate.

A piece's words are its whitespace-separated tokens (punctuation stays on its word; a token with no letter or digit
joins the word before it), so a ``segment``'s words joined with spaces give back its text. An engine that aligns
(Piper) reports each chunk's words as :class:`WordSpan` s in samples of that chunk just before handing the chunk's
audio over; for one that does not (Chatterbox), :class:`WordRate` estimates them before a piece's first audio: the
piece's length, unknown until it has been spoken, is guessed from its characters at the rate this session's earlier
pieces were spoken at (a nominal rate for the first), and :func:`spread` splits it over the words by their
characters. Such spans are marked estimated. The pipe turns spans into samples of the piece at the output rate
(:class:`PieceWords`); the session, which alone knows how much audio it has sent, puts them on its clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPOKEN = re.compile(r"\w", re.UNICODE)

NOMINAL_S_PER_CHAR = 0.068
"""About 15 characters a second, the pace of the Piper and Chatterbox voices at speed 1 (spaces counted)."""


@dataclass(frozen=True)
class WordSpan:
    """One word and where it is, in samples ``[start, end)`` from the start of its chunk or piece."""

    word: str
    start: int
    end: int


@dataclass(frozen=True)
class PieceWords:
    """Words of one piece in samples from the piece's first sample at the session's output rate, made on the
    model's worker thread and carried through the piece's audio pipe ahead of the audio they describe."""

    spans: tuple[WordSpan, ...]
    estimated: bool


def split_words(text: str) -> list[str]:
    """The words of ``text``: whitespace tokens, a token without a letter or digit glued to the word before it."""
    words: list[str] = []
    for token in text.split():
        if words and not _SPOKEN.search(token):
            words[-1] = f"{words[-1]} {token}"
        else:
            words.append(token)
    if len(words) > 1 and not _SPOKEN.search(words[0]):  # leading punctuation joins the first real word
        words[1] = f"{words[0]} {words[1]}"
        del words[0]
    return words


def weight(word: str) -> int:
    """How long a word is taken to last, in the estimate: its letters and digits, plus one for the gap after it."""
    return sum(ch.isalnum() for ch in word) + 1


def spread(words: list[str], start: int, end: int) -> list[WordSpan]:
    """``[start, end)`` split over ``words`` in proportion to their :func:`weight`."""
    total = sum(weight(w) for w in words) or 1
    spans: list[WordSpan] = []
    at, used = start, 0
    for word in words:
        used += weight(word)
        stop = start + round((end - start) * used / total)
        spans.append(WordSpan(word, at, stop))
        at = stop
    return spans


class WordRate:
    """Seconds per character of one session's speech, learnt from the pieces it has spoken (the fallback's
    guess at a piece's length before it is spoken). One piece at a time uses it: a session speaks in order."""

    def __init__(self, s_per_char: float = NOMINAL_S_PER_CHAR) -> None:
        self.s_per_char = s_per_char

    def estimate(self, text: str, rate_hz: int) -> list[WordSpan]:
        words = split_words(text)
        return spread(words, 0, round(sum(weight(w) for w in words) * self.s_per_char * rate_hz))

    def learn(self, text: str, seconds: float) -> None:
        chars = sum(weight(w) for w in split_words(text))
        if chars and seconds > 0:
            self.s_per_char = 0.5 * self.s_per_char + 0.5 * seconds / chars
