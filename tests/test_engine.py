"""The Whisper engine with the real embedded tiny.en model."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import normalise
from services.asr.engine import DecodeRequest, WhisperEngine, frames_bucket, looks_like_a_loop


@pytest.fixture(scope="module")
def engine():
    return WhisperEngine(cpu_threads=2)


def test_decodes_jfk_exactly(engine, jfk):
    [r] = engine.decode_batch([DecodeRequest(jfk.astype(np.float32) / 32768, beam_size=5, word_timestamps=True)])
    assert r.text.strip() == "And so my fellow Americans ask not what your country can do for you, ask what you can do for your country."
    assert [w.word.strip() for w in r.words][:3] == ["And", "so", "my"]
    assert all(a.start <= b.start for a, b in zip(r.words, r.words[1:]))
    assert r.words[-1].end <= 11.0 and r.language == "en"


def test_forced_prefix_is_continued_not_repeated(engine, jfk):
    audio = jfk.astype(np.float32) / 32768
    [r] = engine.decode_batch([DecodeRequest(audio, prefix=" And so my fellow Americans")])
    assert r.text.startswith(" And so my fellow Americans ask not")
    assert r.text.count("fellow") == 1


def test_batch_equals_one_by_one_for_the_same_bucket(engine, jfk):
    audio = jfk.astype(np.float32) / 32768
    a, b = audio[:16000 * 4], audio[16000 * 4:16000 * 8]
    assert frames_bucket(a.size) == frames_bucket(b.size)
    together = engine.decode_batch([DecodeRequest(a, beam_size=5), DecodeRequest(b, beam_size=5)])
    alone = [engine.decode_batch([DecodeRequest(x, beam_size=5)])[0] for x in (a, b)]
    assert [r.text for r in together] == [r.text for r in alone]


def test_short_utterances_do_not_loop(engine, jfk):
    audio = jfk.astype(np.float32) / 32768
    [r] = engine.decode_batch([DecodeRequest(audio[2048:37376], beam_size=5)])
    assert normalise(r.text) == ["and", "so", "my", "fellow", "americans"]


def test_audio_too_short_for_a_word_decodes_to_nothing_beside_real_audio(engine, jfk):
    """A commit right at the start of speech leaves an utterance of no audio: it gets empty text, not an error,
    and the rest of its batch is decoded as usual."""
    audio = jfk.astype(np.float32) / 32768
    empty, short, full = engine.decode_batch([DecodeRequest(audio[:0], word_timestamps=True),
                                              DecodeRequest(audio[:800]), DecodeRequest(audio[2048:37376])])
    assert (empty.text, empty.words, short.text) == ("", [], "")
    assert normalise(full.text) == ["and", "so", "my", "fellow", "americans"]


def test_loop_detector():
    assert looks_like_a_loop(" Ask what you can do. Ask what you can do.")
    assert not looks_like_a_loop(" I know, I know. It is what it is.")
    assert looks_like_a_loop(" and rather selfish is to be old-a-s-s-s-s-s-s")  # a greedy final cut by its budget
    assert not looks_like_a_loop(" No, no, no, no. Bye-bye.")


def test_english_only_model_reports_it(engine):
    assert not engine.multilingual and engine.supports_language("en") and not engine.supports_language("de")


def test_select_takes_rows_of_an_encoder_output():
    import ctranslate2

    from services.asr.engine import _select

    rows = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    picked = np.asarray(_select(ctranslate2.StorageView.from_array(rows), [0, 2]))
    assert np.array_equal(picked, rows[[0, 2]])


def test_only_greedy_decodes_get_a_generation_budget(engine, jfk):
    """Beam search keeps Whisper's full length (a budget changed its results: streaming WER 3.0 % -> 4.6 %);
    greedy partials are capped at 8 tokens a second (+16)."""
    model = engine._model.model
    seen: list[tuple[int, int]] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(model, name)

        def generate(self, encoded, prompts, **kw):
            seen.append((kw["beam_size"], kw["max_length"]))
            return model.generate(encoded, prompts, **kw)

    audio = jfk.astype(np.float32)[: 16000 * 4] / 32768
    engine._model.model = Recording()
    try:
        engine.decode_batch([DecodeRequest(audio, beam_size=5)])
        engine.decode_batch([DecodeRequest(audio, beam_size=1)])
    finally:
        engine._model.model = model
    prompt = 2  # tiny.en: <|startoftranscript|><|notimestamps|>
    assert seen == [(5, engine._model.max_length - prompt), (1, 8 * 4 + 16)]


def test_auto_compute_type_avoids_saturating_int8():
    from services.asr.engine import resolve_compute_type

    assert resolve_compute_type("int8", "cpu") == "int8" and resolve_compute_type("float16", "cuda") == "float16"
    assert resolve_compute_type("auto", "cuda") == "float16"
    assert resolve_compute_type("auto", "cpu", "x86_64", {"avx2", "avx512f"}) == "float32"  # saturating int8
    assert resolve_compute_type("auto", "cpu", "x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "int8"
    assert resolve_compute_type("auto", "cpu", "x86_64", {"avx2", "avx_vnni"}) == "int8"
    assert resolve_compute_type("auto", "cpu", "aarch64", set()) == "int8"


def test_the_encoder_length_follows_encoder_bucket_s(jfk):
    """The utterance plus 5 s, rounded up to the bucket: a 7 s utterance gets 12.5 s of encoder with 2.5 s buckets
    (15 s with the default 5 s), and decodes the same words."""
    fine = WhisperEngine(cpu_threads=1, encoder_bucket_s=2.5)
    seven_s = 7 * 16000
    assert (fine.encoder_frames(seven_s), frames_bucket(seven_s)) == (1250, 1500)
    audio = jfk.astype(np.float32) / 32768
    [r] = fine.decode_batch([DecodeRequest(audio[:seven_s], final=True)])
    assert normalise(r.text)[:5] == ["and", "so", "my", "fellow", "americans"]
