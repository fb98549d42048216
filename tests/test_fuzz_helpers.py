"""Property-based tests of the audio and text helpers (no model, no socket).

* ``StreamResampler``: any chunking of a stream gives exactly the samples of one call;
* G.711 u-law: every code survives decode -> encode, and every 16-bit sample comes back within the
  codec's quantisation step;
* ``ByteDecoder``: frames split anywhere (mid-sample too) decode like the joined bytes;
* ``TextChunker``: fragments of any text, cut anywhere, come out as pieces that lose and duplicate
  no letter or digit, keep the order, and stay within ``max_piece_chars`` (plus the closing marks of a sentence end);
* ``decode_file`` on arbitrary bytes (and on WAV headers with random payloads) raises only ``ServiceError``.
"""

from __future__ import annotations

import re
import struct

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from fuzzing import fuzz_settings, seeded
from services.common.audio import (ByteDecoder, Encoding, StreamResampler, decode_file, mulaw_to_pcm16,
                                   pcm16_to_mulaw, wav_header)
from services.common.errors import ServiceError
from services.tts.text import ChunkerOptions, TextChunker

RATES = st.sampled_from([8000, 11025, 16000, 22050, 24000, 44100, 48000])


def cuts(n: int, points: list[int]) -> list[tuple[int, int]]:
    edges = sorted({0, n, *(p % (n + 1) for p in points)})
    return list(zip(edges, edges[1:]))


@seeded
@fuzz_settings(40)
@given(in_rate=RATES, out_rate=RATES, n=st.integers(0, 6000), points=st.lists(st.integers(0, 10**6), max_size=8),
       seed=st.integers(0, 2**32 - 1))
def test_resampler_output_does_not_depend_on_chunking(in_rate, out_rate, n, points, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * 0.3).astype(np.float32)
    whole = StreamResampler(in_rate, out_rate)
    expected = np.concatenate([whole.process(x), whole.process(np.zeros(0, np.float32), last=True)])
    chunked = StreamResampler(in_rate, out_rate)
    parts = [chunked.process(x[a:b]) for a, b in cuts(n, points)]
    got = np.concatenate(parts + [chunked.process(np.zeros(0, np.float32), last=True)])
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert got.dtype == np.float32 and np.isfinite(got).all()


def test_mulaw_codes_round_trip_exhaustively():
    codes = np.arange(256, dtype=np.uint8)
    back = np.frombuffer(pcm16_to_mulaw(mulaw_to_pcm16(codes)), dtype=np.uint8)
    # the two zero codes (0x7F "negative zero" and 0xFF) both decode to 0, which encodes as 0xFF
    assert np.array_equal(back[codes != 0x7F], codes[codes != 0x7F]) and back[0x7F] == 0xFF


@seeded
@fuzz_settings(60)
@given(st.lists(st.integers(-32768, 32767), min_size=0, max_size=400))
def test_mulaw_round_trip_error_is_within_the_quantisation_step(values):
    x = np.array(values, dtype=np.int16)
    codes = pcm16_to_mulaw(x)
    assert len(codes) == x.size
    y = mulaw_to_pcm16(codes).astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    # G.711 segments: step 8 (16-bit scale) near zero, doubling per segment, 1024 in the top one
    bound = np.maximum(16, np.abs(x.astype(np.int32)) // 16 + 16)
    assert (err <= bound).all()


@seeded
@fuzz_settings(60)
@given(data=st.binary(max_size=3000), points=st.lists(st.integers(0, 10**6), max_size=12),
       encoding=st.sampled_from(list(Encoding)))
def test_byte_decoder_split_anywhere_equals_one_frame(data, points, encoding):
    whole = ByteDecoder(encoding).decode(data)
    decoder = ByteDecoder(encoding)
    got = np.concatenate([decoder.decode(data[a:b]) for a, b in cuts(len(data), points)] + [np.zeros(0, np.float32)])
    assert np.array_equal(got, whole)
    assert decoder.pending_bytes == (len(data) % 2 if encoding is Encoding.PCM_S16LE else 0)
    assert got.size == len(data) // encoding.bytes_per_sample and (np.abs(got) <= 1.0).all()


# -- the TTS text chunker -----------------------------------------------------------------------

WORDS = st.sampled_from(["Dr.", "e.g.", "U.S.", "3.14", "10:30", "example.com/a.b", "J.", "hello", "world", "the",
                         "cat", "it's", "naïve", "café", "1,000", "A", "no", "etc.", "..."])
PUNCT = st.sampled_from([".", ",", "!", "?", ";", ":", " -", " —", "…", "\n\n", "\"", ")", "?!", "", "", ""])
TOKEN = st.one_of(WORDS, st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
                  st.text(alphabet="abcdefghij", min_size=1, max_size=40))


@st.composite
def texts(draw) -> str:
    tokens = draw(st.lists(st.tuples(TOKEN, PUNCT), max_size=120))
    return " ".join(word + punct for word, punct in tokens)


TRAILING = ".!?…。！？\"')]}»”’」』）】"


def word_chars(text: str) -> str:
    return "".join(re.findall(r"\w", text))


def is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@seeded
@fuzz_settings(150)
@given(text=texts(), points=st.lists(st.integers(0, 10**6), max_size=30),
       options=st.sampled_from([ChunkerOptions(), ChunkerOptions(5, 10, 12, 40), ChunkerOptions(1, 2, 3, 8)]),
       flush_midway=st.booleans())
def test_chunker_loses_and_duplicates_nothing_and_bounds_pieces(text, points, options, flush_midway):
    chunker = TextChunker(options)
    pieces: list[str] = []
    spans = cuts(len(text), points)
    for i, (a, b) in enumerate(spans):
        pieces += chunker.push(text[a:b])
        if flush_midway and i == len(spans) // 2:
            pieces += chunker.flush()
    pieces += chunker.flush()
    assert chunker.pending == ""
    joined = "".join(pieces)
    assert word_chars(joined) == word_chars(text)  # every letter and digit, once, in order
    assert is_subsequence("".join(joined.split()), "".join(text.split()))  # nothing invented
    for piece in pieces:
        assert piece and piece == " ".join(piece.split()) and re.search(r"\w", piece)
        # a sentence end found inside the limit keeps its run of closing marks ("...?!\"")
        assert len(piece.rstrip(TRAILING)) <= options.max_piece_chars, (len(piece), piece[:80])


# -- file decoding ------------------------------------------------------------------------------

def _decode_only_service_errors(data: bytes) -> None:
    try:
        audio = decode_file(data, 16000)
    except ServiceError as err:
        assert err.code.value in ("bad_audio", "unsupported_media")
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()


@seeded
@fuzz_settings(60)
@given(st.binary(max_size=2048))
def test_decode_file_on_random_bytes_raises_only_service_errors(data):
    _decode_only_service_errors(data)


@seeded
@fuzz_settings(60)
@given(rate=st.integers(0, 2**32 - 1), channels=st.integers(0, 70), bits=st.sampled_from([0, 1, 8, 16, 24, 32, 64]),
       fmt=st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 2]), payload=st.binary(max_size=4096),
       declared=st.one_of(st.none(), st.integers(0, 2**32 - 1)), truncate=st.integers(0, 60))
def test_decode_file_on_mangled_wavs_raises_only_service_errors(rate, channels, bits, fmt, payload, declared,
                                                                truncate):
    header = bytearray(wav_header(16000, len(payload) // 2))
    block = max(1, channels * bits // 8)
    header[20:36] = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    if declared is not None:
        header[40:44] = struct.pack("<I", declared)
    data = bytes(header[: len(header) - truncate] if truncate < len(header) else header) + payload
    assume(data)
    _decode_only_service_errors(data)
