#!/usr/bin/env python3
"""What Whisper's encoder costs for the length it is given, and what a shorter one costs in words.

    .venv/bin/python scripts/bench_encoder.py --data eval/asr --out bench-results/encoder.json

In-process, no service. CTranslate2 encodes any log-mel length up to Whisper's 3000 frames (30 s); the engine
gives it the utterance plus a margin of silence rounded up to a bucket (``model.encoder_bucket_s``). For each
``--configs`` entry ``MARGIN_S:BUCKET_S`` every clip's final (the utterance the service's segmenter cuts from it,
as ``scripts/bench_floor.py``: speech plus ``vad.end_pad_ms``; greedy, word timestamps, the loop check) is decoded
with that encoder length; the configurations of a clip run one after another, ``--repeat`` times each, starting
with a different one for each clip, so all see the same load: total decode time per configuration and its
ratio to the first, the corpus WER of its finals, how many finals differ from the first configuration's text and how many were caught looping (and decoded again on
30 s). ``--curve`` adds the encoder alone on random audio of each length (median of ``--repeat``).
A measurement tool, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from services.asr.__main__ import quiet_threads

quiet_threads(os.environ)  # the service's thread settings, before numpy and CTranslate2 load

import numpy as np  # noqa: E402
from bench_asr import corpus_wer, load_clips  # noqa: E402
from bench_floor import utterance_audio  # noqa: E402
from benchlib import RATE  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="samples", type=Path)
    p.add_argument("--out", default="bench-results/encoder.json", type=Path)
    p.add_argument("--configs", default="5:5,5:2.5,5:1,3:1,2:1,1:1",
                   help="MARGIN_S:BUCKET_S of the encoder length, the first is the reference")
    p.add_argument("--curve", default="3,5,8,10,15,20,30", help="encoder lengths in s timed alone ('' = skip)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-clips", type=int, default=None)
    args = p.parse_args(argv)

    import ctranslate2

    from services.asr import engine as whisper
    from services.asr.endpointing import TurnMode
    from services.asr.segmenter import Segmenter
    from services.asr.serving import detector_options, endpoint_options, turn_policy
    from services.asr.settings import load
    from services.common.vad import SileroVad

    settings = load()
    endpoint = endpoint_options(settings, turn_policy(settings), TurnMode.SMART_TURN)
    m = settings.model
    engine = whisper.WhisperEngine(m.name, device=m.device, compute_type=m.compute_type, cpu_threads=m.cpu_threads)
    vad = SileroVad(settings.vad.model_path)
    configs = [tuple(float(v) for v in c.split(":")) for c in args.configs.split(",")]
    frames_per_s = RATE // whisper.HOP_SAMPLES
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    curve = {}
    for seconds in [float(v) for v in args.curve.split(",") if v]:
        noise = np.random.default_rng(0).standard_normal(int(30 * RATE)).astype(np.float32) * 0.01
        feats = np.ascontiguousarray(engine._features(noise, int(seconds * frames_per_s))[None])
        times = []
        for _ in range(max(3, args.repeat)):
            t = time.perf_counter()
            engine._model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
            times.append((time.perf_counter() - t) * 1000)
        curve[seconds] = round(statistics.median(times), 1)
        print(f"encoder alone, {seconds:4.1f} s: {curve[seconds]:6.1f} ms", file=sys.stderr)

    clips = load_clips(args.data, args.max_clips)
    utterances, refs = [], []
    for clip in clips:
        x = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float32) / 32768
        audio = np.concatenate([x, np.zeros(int(1.5 * RATE), dtype=np.float32)])
        found = utterance_audio(audio, vad, Segmenter(endpoint, detector_options(settings)))
        if found is not None:
            utterances.append((clip.name, audio[found[0]:found[1]]))
            refs.append(clip.ref)
    rows = {c: {"ms": [], "text": [], "loops": 0, "frames": []} for c in configs}
    looks_like_a_loop = whisper.looks_like_a_loop
    for i, (name, utt) in enumerate(utterances):
        for config in configs[i % len(configs):] + configs[:i % len(configs)]:  # none always runs first
            engine.margin_frames = round(config[0] * frames_per_s)
            engine.bucket_frames = round(config[1] * frames_per_s)
            caught = []
            def counted(text, *a, _caught=caught, **k):
                _caught.append(looks_like_a_loop(text, *a, **k))
                return _caught[-1]
            whisper.looks_like_a_loop = counted
            request = whisper.DecodeRequest(utt, beam_size=settings.streaming.final_beam_size, word_timestamps=True,
                                            final=True)
            times = []
            for _ in range(args.repeat):
                caught.clear()
                t = time.perf_counter()
                result = engine.decode_batch([request])[0]
                times.append((time.perf_counter() - t) * 1000)
            r = rows[config]
            r["ms"].append(min(times))
            r["text"].append(result.text.strip())
            r["loops"] += any(caught)
            r["frames"].append(engine.encoder_frames(utt.size))
        print(f"{name:28s} " + "  ".join(f"{c[0]:g}:{c[1]:g} {rows[c]['ms'][-1]:5.0f} ms" for c in configs),
              file=sys.stderr)
    whisper.looks_like_a_loop = looks_like_a_loop

    reference = rows[configs[0]]
    summary = []
    for config in configs:
        r = rows[config]
        wer = corpus_wer(refs, r["text"])["wer"]
        summary.append({"margin_s": config[0], "bucket_s": config[1], "decode_ms_total": round(sum(r["ms"]), 1),
                        "ratio": round(sum(r["ms"]) / sum(reference["ms"]), 3),
                        "encoder_s_total": round(sum(r["frames"]) / frames_per_s, 1),
                        "wer": round(wer, 4), "loops": r["loops"],
                        "differ": sum(a != b for a, b in zip(r["text"], reference["text"]))})
    report = {"config": {"started": started, "data": str(args.data), "repeat": args.repeat,
                         "compute_type": engine.compute_type, "final_beam_size": settings.streaming.final_beam_size,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "cpu_count": os.cpu_count()},
              "encoder_alone_ms": curve, "summary": summary,
              "clips": [{"clip": n, **{f"{c[0]:g}:{c[1]:g}": {"ms": rows[c]["ms"][i], "text": rows[c]["text"][i]}
                                       for c in configs}} for i, (n, _) in enumerate(utterances)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("| margin / bucket | encoder audio | decode time (ratio) | WER | differ | loops |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in summary:
        print(f"| {s['margin_s']:g} s / {s['bucket_s']:g} s | {s['encoder_s_total']:.0f} s "
              f"| {s['decode_ms_total']:.0f} ms ({s['ratio']:.2f}) | {s['wer']:.2%} | {s['differ']} | {s['loops']} |")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
