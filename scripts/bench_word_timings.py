#!/usr/bin/env python
"""How good and how dear the TTS word timings are, in-process, no service (not a test).

For each sentence below (none of them used while the alignment was written), Piper speaks it with word timings
(``word_timings=true``'s path: the engine's ``word_sink``, :class:`services.tts.alignment.WordPlan`) and without,
alternately, so the cost is a ratio within one run. The project's ASR model (tiny.en, beam 5, word timestamps)
then says where each word is in the audio; per word matched by text: the distance between our start and the
ASR's, between the ends, and whether the two intervals overlap. The same for the estimate an engine without
alignment gets (:class:`services.tts.words.WordRate`, learnt over the sentences before). Also the start-up cost
of exposing the phoneme durations (patching the model in memory and loading it from bytes, against loading the
file). Whisper's own word times are approximate (tens of ms), so the distances are an upper bound of our error.

    .venv/bin/python scripts/bench_word_timings.py --out docs/bench/word-timings.json
    .venv/bin/python scripts/plot_bench.py --words docs/bench/word-timings.json --out docs/img
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import time
from pathlib import Path

import numpy as np

from benchlib import percentile

SENTENCES = [
    "Seven brave sailors carried fresh lemons across the windy harbour before sunrise.",
    "Dr. Patel moved the meeting to 4:30 on Friday, June 12th.",
    "Your parcel, number 58213, left the warehouse in Leeds this morning.",
    "I'm not sure it'll rain, but you'd better take an umbrella anyway.",
    "The museum opens at nine and closes at half past five, except on Mondays.",
    "Press one for billing, two for technical support, or stay on the line.",
    "Grandma's recipe calls for three eggs, a cup of flour and a pinch of salt.",
    "After the storm, the old oak tree by the river had lost half of its branches.",
    "Please confirm that you want to transfer 250 dollars to account ending in 4471.",
    "Nobody expected the quiet lighthouse keeper to win the singing contest.",
    "The flight to Buenos Aires was delayed by two hours because of fog.",
    "Well, that depends on whether the bridge is open tonight.",
]


def norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']+", "", word.lower())


def compare(ours: list[tuple[str, float, float]], asr: list[tuple[str, float, float]]) -> list[dict]:
    a, b = [norm(w) for w, _, _ in ours], [norm(w) for w, _, _ in asr]
    out = []
    for i, j, size in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(size):
            (_, s, e), (_, s2, e2) = ours[i + k], asr[j + k]
            out.append({"start_ms": abs(s - s2) * 1000, "end_ms": abs(e - e2) * 1000, "overlap": s < e2 and s2 < e})
    return out


def summary(rows: list[dict], words: int) -> dict:
    return {"matched": len(rows), "words": words,
            "start_errors_ms": [round(r["start_ms"], 1) for r in rows],
            "end_errors_ms": [round(r["end_ms"], 1) for r in rows],
            "start_ms_p50": round(percentile([r["start_ms"] for r in rows], 50), 1),
            "start_ms_p90": round(percentile([r["start_ms"] for r in rows], 90), 1),
            "end_ms_p50": round(percentile([r["end_ms"] for r in rows], 50), 1),
            "end_ms_p90": round(percentile([r["end_ms"] for r in rows], 90), 1),
            "overlap": round(sum(r["overlap"] for r in rows) / max(len(rows), 1), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="synthesis timings per sentence and mode")
    args = parser.parse_args()

    import onnxruntime

    from services.asr.engine import DecodeRequest, WhisperEngine
    from services.common.audio import resample
    from services.tts.alignment import WordPlan, alignment_model
    from services.tts.engine import SynthesisJob
    from services.tts.piper import EMBEDDED_VOICE, PiperEngine, embedded_voice_files
    from services.tts.words import WordRate

    model_path, _ = embedded_voice_files()
    load = {"file_s": [], "patched_s": []}
    for _ in range(3):
        started = time.perf_counter()
        onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        load["file_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        onnxruntime.InferenceSession(alignment_model(model_path), providers=["CPUExecutionProvider"])
        load["patched_s"].append(time.perf_counter() - started)

    engine = PiperEngine({EMBEDDED_VOICE: embedded_voice_files()}, cpu_threads=2, noise_scale=0, noise_w_scale=0)
    # the same voice loaded from its file, without the duration output: what every session paid before
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    options = onnxruntime.SessionOptions()  # as PiperEngine loads its voices
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    plain_voice = PiperVoice(session=onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                                                  providers=["CPUExecutionProvider"]),
                             config=engine._voices[EMBEDDED_VOICE].config)
    plain_config = SynthesisConfig(noise_scale=0, noise_w_scale=0, volume=0.9)
    asr = WhisperEngine()
    rate = WordRate()
    timing = {"unpatched_s": [], "plain_s": [], "timed_s": []}
    plans: list[float] = []  # the part of the timed synthesis that is ours: phonemizing and aligning the words
    aligned_rows, estimated_rows, words_total = [], [], 0
    for text in SENTENCES:
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _chunk in plain_voice.synthesize(text, syn_config=plain_config):
                pass
            timing["unpatched_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            WordPlan(engine._voices[EMBEDDED_VOICE], text)
            plans.append(time.perf_counter() - started)
            for mode in ("plain_s", "timed_s"):
                job = SynthesisJob(text, EMBEDDED_VOICE)
                if mode == "timed_s":
                    job.word_sink = lambda spans, hz, est: None
                started = time.perf_counter()
                engine.synthesize(job)
                timing[mode].append(time.perf_counter() - started)
        chunks, spans = [], []
        job = SynthesisJob(text, EMBEDDED_VOICE, sink=lambda samples, hz: chunks.append((samples, hz)))
        job.word_sink = lambda found, hz, est: spans.extend(
            (s.word, (sum(c[0].size for c in chunks) + s.start) / hz, (sum(c[0].size for c in chunks) + s.end) / hz)
            for s in found)
        engine.synthesize(job)
        hz = chunks[0][1]
        audio = np.concatenate([c[0] for c in chunks])
        heard = asr.decode_batch([DecodeRequest(resample(audio, hz, 16000), beam_size=5, word_timestamps=True)])[0]
        theirs = [(w.word.strip(), w.start, w.end) for w in heard.words]
        aligned_rows += compare(spans, theirs)
        guess = [(s.word, s.start / hz, s.end / hz) for s in rate.estimate(text, hz)]
        estimated_rows += compare(guess, theirs)
        rate.learn(text, audio.size / hz)
        words_total += len(spans)

    result = {
        "conditions": "in-process, 2-core shared machine, Piper en_US-joe-medium (noise 0), tiny.en beam 5 word "
                      "timestamps as the reference; cost ratios within one run",
        "sentences": len(SENTENCES),
        "aligned": summary(aligned_rows, words_total),
        "estimated": summary(estimated_rows, words_total),
        "synthesis_ms_p50": {k: round(percentile(v, 50) * 1000, 1) for k, v in timing.items()},
        "word_plan_ms_p50": round(percentile(plans, 50) * 1000, 1),
        "word_plan_share_of_synthesis": round(sum(plans) / sum(timing["plain_s"]), 4),
        "synthesis_cost_ratio": round(float(np.median(timing["timed_s"]) / np.median(timing["plain_s"])), 3),
        "patched_model_cost_ratio": round(float(np.median(timing["plain_s"]) / np.median(timing["unpatched_s"])), 3),
        "voice_load_s_p50": {k: round(percentile(v, 50), 2) for k, v in load.items()},
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("aligned", "estimated")}, indent=2))
    a, e = result["aligned"], result["estimated"]
    print("\n| timings | words matched | start error p50 / p90 | end error p50 / p90 | overlap with the ASR's |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("aligned (Piper)", a), ("estimated (fallback)", e)):
        print(f"| {name} | {r['matched']} / {r['words']} | {r['start_ms_p50']:.0f} / {r['start_ms_p90']:.0f} ms | "
              f"{r['end_ms_p50']:.0f} / {r['end_ms_p90']:.0f} ms | {r['overlap'] * 100:.0f} % |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
