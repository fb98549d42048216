"""Piper's phoneme alignments turned into word spans.

piper-tts reports, for a voice whose model exposes its phoneme durations (:func:`alignment_model` marks that
tensor as an output, in memory), how many samples each phoneme of a sentence lasts. Grouping the phonemes at the
spaces espeak puts between words would be the obvious way to words, but espeak joins words it says together
("of the" is one group, "ʌvðə") and splits others ("42" is two): :class:`WordPlan` instead phonemizes each word of
the piece on its own and aligns that sequence with the piece's sentences (``difflib``, stress marks, spaces and
punctuation left out), so each word gets the phonemes it was spoken with. Per chunk (one sentence),
:meth:`WordPlan.spans` gives each of that sentence's words the samples from its first phoneme's start to its last
phoneme's end; a word with no phoneme matched takes the gap between its neighbours, split by characters. A chunk
without alignments gets its duration split over its words by characters, marked estimated.
"""

from __future__ import annotations

import logging
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np

from .words import WordSpan, spread, split_words

log = logging.getLogger(__name__)

_NOT_SOUNDS = set("ˈˌ ^$_.,;:!?¡¿—–-…\"'()[]«»“”")
"""Phoneme symbols that are no sound of a word: stress marks, the word gap, sentence marks, punctuation."""


def alignment_model(model_path: Path) -> bytes | str:
    """The voice model with its phoneme durations as an extra output (serialized, for onnxruntime), or its path
    as it is when that cannot be done (no ``onnx`` package, a model already patched or of another shape)."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError:
        log.warning("the onnx package is missing: Piper word timings are estimated")
        return str(model_path)
    model = onnx.load(str(model_path))
    try:
        add_alignment_output(model)
    except ValueError as err:  # already an output (a patched file), or no single Ceil tensor to expose
        log.info("voice model not patched for alignments", extra={"model": str(model_path), "reason": str(err)})
        return str(model_path)
    return model.SerializeToString()


def _sounds(phonemes: list[str]) -> list[tuple[int, str]]:
    return [(i, p) for i, p in enumerate(phonemes) if p not in _NOT_SOUNDS]


class WordPlan:
    """Which words of a piece each of Piper's sentences says, and by which phonemes (made before synthesis)."""

    def __init__(self, voice: Any, text: str) -> None:
        self.words = split_words(text)
        self.sentences = [s for s in voice.phonemize(text) if s]  # Piper's chunks, in order
        spoken: list[str] = []
        where: list[tuple[int, int]] = []  # (sentence, phoneme index) of each sound
        for si, sentence in enumerate(self.sentences):
            for pi, p in _sounds(sentence):
                spoken.append(p)
                where.append((si, pi))
        said: list[str] = []
        owner: list[int] = []
        for wi, word in enumerate(self.words):
            for sentence in voice.phonemize(word):
                for _, p in _sounds(sentence):
                    said.append(p)
                    owner.append(wi)
        self.matched: list[list[tuple[int, int]]] = [[] for _ in self.words]
        for a, b, size in SequenceMatcher(None, said, spoken, autojunk=False).get_matching_blocks():
            for k in range(size):
                self.matched[owner[a + k]].append(where[b + k])
        # Each word belongs to the sentence of its first matched sound, never before the word ahead of it.
        last = max(len(self.sentences) - 1, 0)
        self.sentence_of: list[int] = []
        for wi in range(len(self.words)):
            first = self.matched[wi][0][0] if self.matched[wi] else 0
            self.sentence_of.append(min(max(first, self.sentence_of[-1] if wi else 0), last))

    def spans(self, chunk: int, phonemes: list[str], alignments: list[Any] | None, samples: int) -> tuple[
            list[WordSpan], bool]:
        """The words of chunk ``chunk`` (the last chunk takes any left), in samples of that chunk; True when
        estimated (no alignments, or not the sentence planned)."""
        last = chunk >= len(self.sentences) - 1
        mine = [wi for wi, si in enumerate(self.sentence_of) if si == chunk or (last and si > chunk)]
        words = [self.words[wi] for wi in mine]
        if (not alignments or chunk >= len(self.sentences) or phonemes != self.sentences[chunk]
                or len(alignments) != len(phonemes) + 2):
            return spread(words, 0, samples), True
        # alignments: BOS, one per phoneme (with the pad after it), EOS; edges[i + 1] is where phoneme i starts
        edges = np.concatenate([[0], np.cumsum([a.num_samples for a in alignments])]).astype(int)
        bounds: list[tuple[int, int] | None] = []
        for wi in mine:
            own = [pi for si, pi in self.matched[wi] if si == chunk]
            bounds.append((int(edges[min(own) + 1]), int(edges[max(own) + 2])) if own else None)
        return _fill(words, bounds, int(edges[1]), int(edges[-2])), False


def _fill(words: list[str], bounds: list[tuple[int, int] | None], first: int, last: int) -> list[WordSpan]:
    """Spans in word order: matched words keep theirs (kept from running backwards), unmatched runs share the
    gap between their neighbours by characters."""
    spans: list[WordSpan] = []
    i = 0
    while i < len(words):
        if bounds[i] is not None:
            start, end = bounds[i]  # type: ignore[misc]
            floor = spans[-1].start if spans else first
            start = max(start, floor)
            spans.append(WordSpan(words[i], start, max(end, start)))
            i += 1
            continue
        j = i
        while j < len(words) and bounds[j] is None:
            j += 1
        gap_start = spans[-1].end if spans else first
        gap_end = bounds[j][0] if j < len(words) else last  # type: ignore[index]
        spans.extend(spread(words[i:j], gap_start, max(gap_end, gap_start)))
        i = j
    return spans
