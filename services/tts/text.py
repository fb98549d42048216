"""Cutting streamed text into speakable pieces.

:class:`TextChunker` takes text fragments as they arrive (an LLM's tokens) and
returns pieces at sentence ends (``.`` ``!`` ``?`` ``…`` and the CJK ``。`` ``！``
``？``), or at clause ends (``,`` ``;`` ``:`` dashes, ``，``) when a piece grows
long. A boundary counts only once the character after it is
seen, so "3.14", "10:30", "example.com/a.b" and "e.g." are never cut, and a
known abbreviation ("Dr.", "e.g.", "U.S.") or a single initial ("J.") does not
end a sentence. The first piece of a turn is cut earlier (at the first clause,
or at a word once it is long) so that first audio comes early. A buffer longer
than the piece limit is cut whatever its characters (text without spaces too),
and each push scans only the new characters, so any input costs linear time.
The chunker is pure: it keeps no clock; the session calls :meth:`TextChunker.flush` on the
client's ``flush`` or when a fragment has waited ``flush_after_ms``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx dept est fig inc ltd co corp no vol
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun a.m p.m u.s u.k u.n
    ph.d b.a m.a gen col lt sgt capt rev hon gov sen rep ave blvd rd""".split()
)

LEANING_WORDS = frozenset("""a an the and or but nor of to in on at by for with from into as than that which who
    whose if because my your his her its our their this these those very""".split())
"""Words a piece should not end with: spoken as the end of a sentence, they sound cut off."""

_SENTENCE_END = ".!?…。！？"
_CLAUSE_END = ",;:，"
_CJK_MARKS = "。！？，"  # a boundary without a following space: CJK text has none
_CLOSERS = "\"')]}»”’」』）】"
_WORD_RE = re.compile(r"[\w]", re.UNICODE)


def is_speakable(text: str) -> bool:
    """True when ``text`` has at least one letter or digit (punctuation and emoji alone are not spoken)."""
    return _WORD_RE.search(text) is not None


@dataclass(frozen=True)
class ChunkerOptions:
    first_piece_min_chars: int = 8
    """The first piece of a turn may end at a clause boundary once it is this long."""
    first_piece_max_chars: int = 20
    """...and is cut at a word boundary when it grows past this without any boundary."""
    min_piece_chars: int = 40
    """Later pieces end at a clause boundary only once they are this long (else at sentence ends)."""
    max_piece_chars: int = 250
    """A piece longer than this is cut at its last clause or word boundary."""


class TextChunker:
    def __init__(self, options: ChunkerOptions | None = None) -> None:
        self.options = options or ChunkerOptions()
        self._buffer = ""
        self._first = True  # the next piece starts a turn
        self._rescan()

    @property
    def pending(self) -> str:
        return self._buffer

    def __len__(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Drop buffered text (barge-in); the next piece starts a new turn."""
        self._buffer = ""
        self._first = True
        self._rescan()

    def push(self, fragment: str) -> list[str]:
        """Append ``fragment``; return the pieces that are now complete."""
        self._buffer += fragment
        pieces: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            self._take(cut, pieces)
        return pieces

    def flush(self) -> list[str]:
        """Return everything buffered as pieces (an unfinished sentence too); the next piece starts a turn."""
        pieces: list[str] = []
        while len(self._buffer) > self.options.max_piece_chars:
            self._take(self._hard_cut(self._buffer, self.options.max_piece_chars), pieces)
        self._emit(self._buffer, pieces)
        self._buffer = ""
        self._first = True
        self._rescan()
        return pieces

    # -- internals -------------------------------------------------------------------
    def _rescan(self) -> None:
        """Forget the scan state: the buffer's start changed."""
        self._scan = 0  # characters before this were already looked at
        self._last_clause: int | None = None  # end of the last clause boundary seen
        self._first_word: int | None = None  # index of the first letter or digit seen

    def _take(self, cut: int, out: list[str]) -> None:
        piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self._emit(piece, out)
        self._rescan()

    def _emit(self, piece: str, out: list[str]) -> None:
        piece = " ".join(piece.split())
        if is_speakable(piece):
            out.append(piece)
            self._first = False

    def _speakable_before(self, i: int) -> bool:
        return self._first_word is not None and self._first_word < i

    def _find_cut(self) -> int | None:
        """Index just past the next boundary in the buffer, or None if no piece is complete yet.

        Resumes where the previous call stopped (``_scan``), so each character is examined once."""
        text = self._buffer
        o = self.options
        clause_ok = o.first_piece_min_chars if self._first else o.min_piece_chars
        limit = o.first_piece_max_chars if self._first else o.max_piece_chars
        i = self._scan
        n = len(text)
        try:
            while i < n:
                if i >= limit:  # too long whatever the characters: cut at the last clause, word, or here
                    return self._last_clause if self._last_clause is not None else self._hard_cut(text, limit)
                ch = text[i]
                if self._first_word is None and _WORD_RE.match(ch):
                    self._first_word = i
                if ch == "\n":
                    if i + 1 >= n:
                        return None  # need the next character to decide
                    if text[i + 1] == "\n" and self._speakable_before(i):
                        return i + 2
                if ch in _SENTENCE_END or ch in _CLAUSE_END or ch in "—–":
                    j = i + 1
                    while j < n and (text[j] in _SENTENCE_END or text[j] in _CLOSERS):
                        j += 1
                    if j >= n:
                        return None  # need the next character to decide
                    if text[j].isspace() or ch in _CJK_MARKS:
                        marks = text[i:j].rstrip(_CLOSERS)
                        if ch in _SENTENCE_END or marks.endswith(("!", "?", "…", "！", "？", "。")):
                            if not (ch == "." and self._is_abbreviation(text, i)) and self._speakable_before(i):
                                return j
                        elif self._speakable_before(i):
                            self._last_clause = j
                            if j >= clause_ok:
                                return j
                    i = j
                    continue
                i += 1
            return None
        finally:
            self._scan = i

    @staticmethod
    def _is_abbreviation(text: str, dot: int) -> bool:
        start = dot
        while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "(\"'":
            start -= 1
        word = text[start:dot].lower()
        if not word:
            return False
        if word in ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isalpha():
            return True  # an initial: "J. Smith"
        # dotted acronyms written out: "U.S.A", "e.g" already above
        return bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", word))

    @staticmethod
    def _hard_cut(text: str, limit: int) -> int:
        """Cut ``text`` near ``limit``: at the last clause mark, else at the last space - before a word that
        leans on the next one ("to", "the", "and", ...) where it can, since each piece is spoken as a
        sentence of its own - else at the limit."""
        head = text[:limit]
        marks = [i for i, ch in enumerate(head) if ch in _SENTENCE_END + _CLAUSE_END
                 and (i + 1 == len(text) or text[i + 1].isspace())]  # "3.14" and "a,b" are not boundaries
        if marks and marks[-1] > limit // 3:
            return marks[-1] + 1
        spaces = [i for i, ch in enumerate(head) if ch in " \n\t" and i > limit // 3]
        for i in reversed(spaces):
            word = re.sub(r"[^\w']", "", head[:i].rsplit(None, 1)[-1].lower()) if head[:i].strip() else ""
            if word not in LEANING_WORDS:
                return i + 1
        return spaces[-1] + 1 if spaces else limit
