"""Unit tests for the pure helpers of the benchmark scripts (scripts/benchlib.py, bench_asr.py, bench_turns.py;
no service, no eval data)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import script_modules


@pytest.fixture(scope="module")
def scripts():
    names = ("benchlib", "bench_asr", "bench_turns")
    with script_modules(*names) as modules:
        yield dict(zip(names, modules))


@pytest.fixture(scope="module")
def lib(scripts):
    return scripts["benchlib"]


@pytest.fixture(scope="module")
def bench(scripts):
    return scripts["bench_asr"]


@pytest.fixture(scope="module")
def turns(scripts):
    return scripts["bench_turns"]


# ----------------------------------------------------------------- percentiles

def test_percentile_matches_numpy_linear(lib):
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 101):
        xs = rng.exponential(100.0, n).tolist()
        for q in (0, 1, 50, 90, 95, 99, 100):
            assert lib.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_small_cases(lib):
    assert lib.percentile([], 50) is None
    assert lib.percentile([7], 95) == 7
    assert lib.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert lib.percentile([4, 1, 3, 2], 0) == 1  # order of input does not matter
    assert lib.percentile([4, 1, 3, 2], 100) == 4
    assert lib.percentile(range(1, 101), 95) == pytest.approx(95.05)
    with pytest.raises(ValueError):
        lib.percentile([1, 2], 101)


def test_summarize(lib):
    s = lib.summarize([300, 100, 200])
    assert s == {"n": 3, "p50": 200, "p95": pytest.approx(290), "max": 300, "mean": 200}
    empty = lib.summarize([])
    assert empty["n"] == 0 and empty["p50"] is None and empty["max"] is None


# ----------------------------------------------------------------- WER

def test_normalize_ignores_case_punctuation_and_numbers(bench):
    assert bench.normalize("Hello, World!") == "hello world"
    assert bench.normalize("  Mr. Smith   paid $20. ") == bench.normalize("mister smith paid twenty dollars")
    assert bench.normalize("") == ""
    assert bench.normalize(None) == ""


def test_corpus_wer_perfect_after_normalisation(bench):
    out = bench.corpus_wer(["And so, my fellow Americans."], ["and so my fellow americans"])
    assert out["wer"] == 0 and out["errors"] == 0 and out["ref_words"] == 5


def test_corpus_wer_is_pooled_not_mean_of_clips(bench):
    words = "the quick brown fox jumps over the lazy sleeping dog"
    refs = [words, "alpha beta"]
    hyps = [words, "alpha"]
    out = bench.corpus_wer(refs, hyps)
    # 1 deletion over 12 reference words, not the mean of 0.0 and 0.5
    assert out["wer"] == pytest.approx(1 / 12)
    assert (out["deletions"], out["substitutions"], out["insertions"]) == (1, 0, 0)


def test_corpus_wer_counts_empty_hypothesis_and_insertions(bench):
    out = bench.corpus_wer(["a cat sat", "dog"], ["", "big dog barks"])
    assert out["ref_words"] == 4
    assert out["deletions"] == 3 and out["insertions"] == 2
    assert out["wer"] == pytest.approx(5 / 4)


def test_corpus_wer_skips_empty_references(bench):
    out = bench.corpus_wer(["[inaudible]", "hello there"], ["noise", "hello there"])
    assert out["skipped_empty_refs"] == 1 and out["pairs"] == 1 and out["wer"] == 0
    assert bench.corpus_wer([], [])["wer"] is None
    with pytest.raises(ValueError):
        bench.corpus_wer(["a"], [])


# ----------------------------------------------------------------- speech end (synthetic audio)

def _burst(sr, total_s, spans, amp=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros(int(sr * total_s), dtype=np.float32)
    for a, b in spans:
        i, j = int(a * sr), int(b * sr)
        x[i:j] = amp * rng.standard_normal(j - i).astype(np.float32)
    return x


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
def test_energy_speech_end_single_segment(bench, sr):
    x = _burst(sr, 3.0, [(0.5, 1.5)])
    x += 1e-4 * np.random.default_rng(2).standard_normal(x.size).astype(np.float32)  # faint hiss
    start, end = bench.energy_speech_bounds(x, sr)
    assert end == pytest.approx(1.5, abs=0.021)
    assert start == pytest.approx(0.5, abs=0.021)


def test_energy_speech_end_finds_last_segment(bench):
    sr = 16000
    x = _burst(sr, 4.0, [(0.2, 1.0), (1.1, 1.6), (2.5, 3.2)])
    start, end = bench.energy_speech_bounds(x, sr)
    assert end == pytest.approx(3.2, abs=0.021)
    assert start == pytest.approx(2.5, abs=0.021)  # 0.9 s gap separates segments
    # a gap shorter than gap_s joins the segments (0.1 s between the first two)
    start2, _ = bench.energy_speech_bounds(x[: int(1.8 * sr)], sr)
    assert start2 == pytest.approx(0.2, abs=0.021)


def test_energy_speech_end_speech_to_the_last_sample(bench):
    sr = 16000
    x = _burst(sr, 1.01, [(0.3, 1.01)])  # length not a multiple of the frame
    _, end = bench.energy_speech_bounds(x, sr)
    assert end == pytest.approx(x.size / sr)


def test_energy_speech_end_silence(bench):
    assert bench.energy_speech_bounds(np.zeros(16000, dtype=np.float32), 16000) is None
    assert bench.energy_speech_bounds(np.zeros(0, dtype=np.float32), 16000) is None


def test_speech_bounds_on_silence_falls_back_to_whole_clip(bench):
    start, end, method = bench.speech_bounds(np.zeros(16000, dtype=np.float32), 16000)
    assert method == "none" and end == pytest.approx(1.0)


# ----------------------------------------------------------------- misc

def test_assign_clip(bench):
    starts = [0.0, 4.5, 10.0]
    assert bench.assign_clip(-0.1, starts) == 0
    assert bench.assign_clip(0.0, starts) == 0
    assert bench.assign_clip(4.49, starts) == 0
    assert bench.assign_clip(4.5, starts) == 1
    assert bench.assign_clip(99.0, starts) == 2


def test_session_clips_same_or_rotated(bench):
    clips = list("abcdefgh")
    assert [bench.session_clips(clips, i, 4, "same") for i in range(4)] == [clips] * 4
    rotated = [bench.session_clips(clips, i, 4, "rotated") for i in range(4)]
    assert [r[0] for r in rotated] == ["a", "c", "e", "g"]  # each starts i/N of the way through
    assert all(sorted(r) == clips for r in rotated)  # every session still streams every clip once
    assert bench.session_clips(clips, 0, 1, "rotated") == clips


def test_parse_proc_stat_with_odd_command_name(bench):
    fields = ["S", "41"] + ["0"] * 9 + ["250", "50"] + ["0"] * 30
    line = "1234 (python (uvicorn) x) " + " ".join(fields) + "\n"
    assert bench.parse_proc_stat(line) == (41, 300)


def test_tree_cpu_seconds_of_self(bench):
    import os
    v = bench.tree_cpu_seconds(os.getpid())
    assert v is not None and v >= 0
    assert bench.tree_cpu_seconds(2 ** 22 + 12345) is None  # beyond pid_max


def test_urls(lib):
    assert lib.ws_url("http://127.0.0.1:8001") == "ws://127.0.0.1:8001/v1/stream/asr"
    assert lib.ws_url("https://localhost:9/") == "wss://localhost:9/v1/stream/asr"
    assert lib.is_loopback_url("http://127.0.0.1:8001")
    assert lib.is_loopback_url("http://localhost:8001")
    assert lib.is_loopback_url("http://[::1]:8001")
    assert not lib.is_loopback_url("http://10.0.0.5:8001")
    assert not lib.is_loopback_url("http://example.com")


def test_mirror_tile(lib):
    x = np.arange(1, 4, dtype=np.float32)
    assert lib.mirror_tile(x, 8).tolist() == [1, 2, 3, 3, 2, 1, 1, 2]
    assert lib.mirror_tile(x, 2).tolist() == [1, 2]
    assert lib.mirror_tile(x, 0).size == 0 and lib.mirror_tile(x[:0], 5).size == 0


def test_read_wav_round_trip_and_format_check(lib, tmp_path):
    import wave

    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    for name, rate in (("ok.wav", 16000), ("bad.wav", 8000)):
        with wave.open(str(tmp_path / name), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
            w.writeframes(pcm.tobytes())
    assert lib.read_wav(tmp_path / "ok.wav").tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    with pytest.raises(ValueError, match="16000"):
        lib.read_wav(tmp_path / "bad.wav")


def test_rss_mb(lib):
    import os

    assert lib.rss_mb(os.getpid()) > 1.0
    assert lib.rss_mb(2 ** 22 + 12345) is None  # beyond pid_max: no such process


# ----------------------------------------------------------------- bench_turns --sweep

def test_turn_sweep_frontier_is_the_best_any_curve_can_do(turns):
    def case(kind, p96, p192, text="Done."):
        return {"kind": kind, "text": text, "service_p": {"96": p96, "192": p192}}

    sim = {"cases": {
        "a": case("complete", 0.99, 0.99),
        "b": case("complete", 0.94, 0.96),    # only a bar of <= 0.95 at 96 or <= 0.96 at 192 ends it
        "c": case("complete", 0.99, 0.99, "and the"),  # the text cue refuses it at any level
        "x": case("paused", 0.2, 0.97),       # a cut-off that climbs with the pause
        "y": case("paused", 0.95, 0.5),       # one that scores high early only
        "heldout:z": case("complete", 0.5, 0.5),
    }}
    rows = turns.sweep(sim)
    assert [(r["premature"], r["complete_by_turn"]) for r in rows] == [(0, 1), (1, 2)]
    assert all(r["paused"] == 2 and r["complete"] == 3 for r in rows)
    # the one-premature curve ends b and exactly one of x, y
    best = rows[1]["curve"]
    assert set(best) == {96, 192}
    ends = lambda p96, p192: p96 >= best[96] or p192 >= best[192]  # noqa: E731
    assert ends(0.94, 0.96) and ends(0.2, 0.97) != ends(0.95, 0.5)
    # the held-out set is scored with the tuning set's curves, never swept itself
    for row in rows:
        held = row["heldout"]
        assert (held["complete"], held["paused"], held["premature"]) == (1, 0, 0)
        assert held["complete_by_turn"] == int(min(row["curve"].values()) <= 0.5)
    assert turns.sweep({"cases": {"heldout:z": sim["cases"]["heldout:z"]}}) == []  # no tuning set: nothing to sweep


def test_words_sweep_picks_closing_thresholds_on_the_tuning_set(turns):
    def case(kind, p, closing, text="Done."):
        return {"kind": kind, "text": text, "end_probability": closing, "service_p": {"96": p, "192": p}}

    sim = {"cases": {
        "a": case("complete", 0.99, 0.95),
        "b": case("complete", 0.6, 0.95),     # ended only through a sure stop (closing_sure <= 0.95, bar <= 0.6)
        "x": case("paused", 0.99, 0.5),       # a clause end Smart Turn is sure of and Whisper doubts
        "y": case("paused", 0.6, 0.92),       # a sure stop at 0.92: closing_sure must be above it
        "heldout:z": case("paused", 0.99, 0.55),
    }}
    rows = turns.sweep_words(sim)
    assert [(r["premature"], r["complete_by_turn"]) for r in rows] == [(0, 2)]
    # of the ties, the weakest veto that stops x, and the lowest bar for a sure stop (in the highest closing_sure)
    assert rows[0]["params"] == {"closing_min": 0.6, "closing_sure": 0.95, "sure_probability": 0.5}
    assert rows[0]["heldout"] == {"premature": 0, "paused": 1, "complete_by_turn": 0, "complete": 0}  # 0.55 < 0.6


def test_turn_report_counts_fast_turn_ends_and_ratios(turns):
    rows = [{"name": "a", "kind": "complete", "reason": "turn", "ttf_ms": 600.0, "inner_turns": 0},
            {"name": "b", "kind": "complete", "reason": "turn", "ttf_ms": 700.0, "inner_turns": 0},
            {"name": "c", "kind": "complete", "reason": "silence", "ttf_ms": 500.0, "inner_turns": 0},
            {"name": "d", "kind": "paused", "reason": "turn", "ttf_ms": 400.0, "inner_turns": 0}]
    summary = turns.report(rows)["tuning_set"]
    assert summary["complete"]["turn_within_650ms"] == pytest.approx(1 / 3)  # a silence end never counts
    assert summary["paused"]["premature"] == ["d"]
    faster = turns.report([dict(r, ttf_ms=r["ttf_ms"] / 2) for r in rows])
    ratios = turns.ttf_ratios(turns.report(rows), faster)
    assert ratios["tuning_set.complete.ttf_ms.p50"] == pytest.approx(0.5)
