"""Unit tests of services/tts/text.py: cutting streamed text into speakable pieces (no model)."""

from __future__ import annotations

import pytest

from services.tts.text import ChunkerOptions, TextChunker, is_speakable


def feed(chunker: TextChunker, text: str, step: int = 1) -> list[str]:
    out: list[str] = []
    for i in range(0, len(text), step):
        out += chunker.push(text[i:i + step])
    return out


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_sentences_cut_and_specials_kept_whole(step):
    text = ("Dr. Smith arrived at 10:30 and paid 3.14 dollars, e.g. at example.com/a.b today. "
            "Mr. J. Doe of the U.S. stayed! Did he? Yes. ")
    pieces = feed(TextChunker(ChunkerOptions(first_piece_max_chars=60)), text, step)
    joined = " ".join(pieces)
    assert joined == " ".join(text.split())  # nothing lost or reordered
    for kept in ("Dr. Smith", "10:30", "3.14", "e.g. at", "example.com/a.b", "Mr. J. Doe", "U.S. stayed"):
        assert any(kept in p for p in pieces), kept
    assert pieces[-2:] == ["Did he?", "Yes."]
    assert all(p.endswith((".", "!", "?", ",")) for p in pieces)


def test_boundary_waits_for_the_next_character():
    c = TextChunker(ChunkerOptions(first_piece_max_chars=60))
    assert c.push("It costs 3.") == []  # could be 3.14
    assert c.push("14 dollars today. Then") == ["It costs 3.14 dollars today."]
    assert c.pending.strip() == "Then"


def test_a_cut_for_length_is_never_inside_a_number():
    """The first piece is cut at about 20 characters; a full stop inside "3.14" is not a place to cut."""
    pieces = TextChunker().push("It costs 3.14 dollars today. ")
    assert pieces[0] == "It costs 3.14" and " ".join(pieces) == "It costs 3.14 dollars today."


def test_first_piece_is_short_then_clauses_only_when_long():
    c = TextChunker()
    pieces = c.push("Well, hello there, my friend, how are you doing on this fine morning, I wonder? ")
    assert pieces[0] == "Well, hello there,"  # first clause once >= 12 chars
    assert len(pieces[0]) < 30
    rest = " ".join(pieces[1:])
    assert rest == "my friend, how are you doing on this fine morning, I wonder?"


def test_first_piece_cut_at_a_word_when_no_punctuation():
    c = TextChunker(ChunkerOptions(first_piece_max_chars=30))
    pieces = c.push("the quick brown fox jumps over the lazy dog and keeps on running far away ")
    assert pieces and len(pieces[0]) <= 31 and not pieces[0].endswith(" ")
    assert pieces[0].split()[-1] in "the quick brown fox jumps over the lazy".split()


def test_long_text_hard_cut():
    c = TextChunker(ChunkerOptions(max_piece_chars=50, first_piece_max_chars=20))
    text = "word " * 60
    pieces = c.push(text) + c.flush()
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_flush_speaks_unfinished_text_and_resets_turn():
    c = TextChunker()
    assert c.push("a thought") == []
    assert c.flush() == ["a thought"]
    assert c.pending == ""
    assert c.push("Hello there, friend. ") == ["Hello there,", "friend."]  # a new turn: short first piece


def test_punctuation_and_emoji_are_not_spoken():
    c = TextChunker()
    assert c.push("... !!! 🙂🙂 ?? ") == []
    assert c.flush() == []
    assert not is_speakable("🙂 ... —")
    assert is_speakable("🙂 hi")


def test_reset_drops_pending():
    c = TextChunker()
    c.push("Something half")
    c.reset()
    assert c.pending == "" and c.flush() == []


def test_paragraph_break_ends_a_piece():
    c = TextChunker(ChunkerOptions(first_piece_max_chars=60))
    assert c.push("A heading without a stop\n\nThen") == ["A heading without a stop"]


def test_unspaced_flood_is_linear_and_loses_nothing():
    """A client pushing 50 000 one-character fragments with no spaces must not stall the event loop
    (the old chunker rescanned the whole buffer on each push and only cut at whitespace). What it holds stays
    under a piece's bound after every push, so no push can cost more than one piece's scan: linear in the text."""
    import random

    rng = random.Random(7)
    parts = []
    while sum(map(len, parts)) < 50_000:
        run = "".join(rng.choice("abcdefghij中文字0123") for _ in range(rng.randint(1, 600)))
        parts.append(run + rng.choice(["", "。", "，", "！", "？", ".", ",", "3.14", "—"]))
    text = "".join(parts)[:50_000]
    assert " " not in text
    chunker = TextChunker()
    pieces, held = [], 0
    for ch in text:
        pieces += chunker.push(ch)
        held = max(held, len(chunker.pending))
    pieces += chunker.flush()
    assert held <= ChunkerOptions().max_piece_chars + 1, held
    assert "".join(pieces) == text  # no character lost, duplicated or reordered
    assert max(map(len, pieces)) <= ChunkerOptions().max_piece_chars
    assert len(pieces) >= 50_000 // ChunkerOptions().max_piece_chars


def test_pushed_pieces_are_cut_while_streaming_not_only_at_flush():
    chunker = TextChunker(ChunkerOptions(first_piece_max_chars=20, max_piece_chars=40))
    out = feed(chunker, "x" * 1000)
    assert len(out) >= 24 and all(len(p) <= 40 for p in out)  # cut as it arrives
    assert len(chunker) <= 40


def test_cjk_sentence_and_clause_marks():
    c = TextChunker()
    assert c.push("你好。我很好，谢谢！今天天气怎么样？好") == ["你好。", "我很好，谢谢！", "今天天气怎么样？"]
    assert c.flush() == ["好"]
    c = TextChunker()
    assert c.push("「走吧。」他说。") == ["「走吧。」"]  # the closer stays with its sentence
    assert c.flush() == ["他说。"]  # the last mark waits for the next character (or a flush)
