#!/usr/bin/env python3
"""Latency floor of live time-to-final on this machine: what no turn policy or scheduling can remove.

    .venv/bin/python scripts/bench_floor.py --out bench-results/floor.json

In-process, no service: the service's own VAD, endpointer, Smart Turn model and Whisper engine with their
default settings (and the service's ``OMP_WAIT_POLICY=PASSIVE``), each clip of ``--data`` followed by
``--silence`` s of zeros as ``scripts/bench_asr.py`` streams it. For every clip, from the end of its last word
(the last 20 ms frame within 30 dB of its loudest frame, or the VAD's end of speech where that comes first:
bench_asr's time-to-final clock):

* ``audio_ms``: until the endpointer has the utterance's whole audio - the pause has reached ``vad.end_pad_ms``
  (the final is decoded from the speech plus that pad; less costs words: docs/benchmarks.md) - counted on the
  audio clock, i.e. when that audio has arrived at real time;
* ``final_ms``: the greedy final of that audio (word timestamps, as a stream's final), decoded alone;
* ``check_ms``: one Smart Turn check of it, alone;
* ``floor_ms`` = ``audio_ms`` + max(``final_ms``, ``check_ms``): the time-to-final of a perfect turn detector that
  is sure at its first check, on an otherwise idle machine, with the two models never slowing each other down,
  when the final waits for the whole pad (``vad.speculate_ms`` = ``vad.end_pad_ms``: the old path);
* ``early_ms``, ``final_early_ms``, ``floor_early_ms``: the same with the final started at ``vad.speculate_ms`` of
  the pause (the default: one VAD window), the pad not heard yet decoded as digital silence:
  ``early_ms`` + ``final_early_ms``, or ``audio_ms`` + ``check_ms`` where the turn check comes later. The two
  finals of a clip are timed alternately (``*_ratio``: early / pad), and both transcripts are scored (WER).

``--burst N`` (default 8) adds what N streams that end an utterance at exactly the same moment need (a worst
case, not a floor of bench_asr's ``--order same``, whose sessions start up to 1 s apart and drift): the N finals
decoded as one batch (the default, ``scheduler.final_max_batch`` unset: all are done at ``burst_final_ms``) and the
N Smart Turn checks as one batch; ``burst_floor_ms`` = ``audio_ms`` + max of the two. Alternating with the batch,
the N finals decoded one after another (``final_max_batch`` 1): ``burst_serial_median_ms`` / ``burst_serial_last_ms``,
when the median / the last of them is done.
Percentiles are over clips; each timing is the median of ``--repeat`` runs. A measurement tool, not a test.
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
from benchlib import RATE, summarize  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` in ms over ``repeat`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


def timed_pair(fa, fb, repeat: int) -> tuple[float, object, float, object]:
    """:func:`timed` of two functions whose runs alternate (a, b, b, a, a, b, ...), so both see the same load and
    neither always runs first."""
    ta, tb, ra, rb = [], [], None, None
    for i in range(repeat):
        for times, fn in ((ta, fa), (tb, fb))[::-1 if i % 2 else 1]:
            t = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - t) * 1000)
            if fn is fa:
                ra = result
            else:
                rb = result
    return statistics.median(ta), ra, statistics.median(tb), rb


def decode_one_at_a_time(engine, requests) -> list[float]:
    """The requests decoded one after another (the service's finals on CPU): when each is done, in ms."""
    t, done = time.perf_counter(), []
    for request in requests:
        engine.decode_batch([request])
        done.append((time.perf_counter() - t) * 1000)
    return done


def utterance_audio(audio: np.ndarray, vad, segmenter) -> tuple[int, int, int] | None:
    """(start, end, early) samples: the final the service's segmenter would decode for the clip's last utterance
    (its speech and ``end_pad_ms``; complete at ``end``), and the sample at which its speculative final starts
    (``vad.speculate_ms`` of the pause)."""
    from services.asr.endpointing import Speculate, Started

    segmenter.append(audio)
    start, found = None, None
    for action in segmenter.detect(vad.probabilities):
        if isinstance(action, Started):
            start = action.start_sample
        elif isinstance(action, Speculate) and start is not None:  # the last one is the pause after the clip
            found = start, action.end_sample, min(action.end_sample, segmenter.position_sample)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="samples", type=Path)
    p.add_argument("--out", default="bench-results/floor.json", type=Path)
    p.add_argument("--silence", type=float, default=1.5, help="seconds of zeros after each clip (as bench_asr)")
    p.add_argument("--burst", type=int, default=8, help="streams ending an utterance at once (0 = skip)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-clips", type=int, default=None)
    args = p.parse_args(argv)

    from services.asr.engine import DecodeRequest, WhisperEngine
    from services.asr.endpointing import TurnMode
    from services.asr.segmenter import Segmenter
    from services.asr.serving import detector_options, endpoint_options, turn_policy
    from services.asr.settings import load
    from services.asr.turn import SmartTurnModel
    from services.common.vad import SileroVad

    settings = load()
    endpoint = endpoint_options(settings, turn_policy(settings), TurnMode.SMART_TURN)
    detector = detector_options(settings)

    m = settings.model
    engine = WhisperEngine(m.name, device=m.device, compute_type=m.compute_type, cpu_threads=m.cpu_threads,
                           encoder_bucket_s=m.encoder_bucket_s)
    turn = SmartTurnModel(settings.turn.model_path, threads=settings.turn.threads)
    vad = SileroVad(settings.vad.model_path)
    clips = load_clips(args.data, args.max_clips)
    if not clips:
        p.error(f"no *.wav with a .txt transcript in {args.data}")
    warm = np.frombuffer(clips[0].pcm, dtype="<i2").astype(np.float32) / 32768
    engine.decode_batch([DecodeRequest(warm, beam_size=1, word_timestamps=True, final=True)])
    turn.predict([warm])

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows, refs = [], []
    for clip in clips:
        x = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float32) / 32768
        audio = np.concatenate([x, np.zeros(int(args.silence * RATE), dtype=np.float32)])
        # From where bench_asr starts its clock: the end of the last word, or the VAD's end of speech if earlier.
        word_end = round(min(clip.word_end, clip.speech_end) * RATE)
        found = utterance_audio(audio, vad, Segmenter(endpoint, detector))
        if found is None:
            print(f"{clip.name}: no pause after the last word within {args.silence} s", file=sys.stderr)
            continue
        start, end, early = found
        utt = audio[start:end]
        heard = np.concatenate([audio[start:early], np.zeros(end - early, dtype=np.float32)])
        beam = settings.streaming.final_beam_size
        request = DecodeRequest(utt, beam_size=beam, word_timestamps=True, final=True)
        request_early = DecodeRequest(heard, beam_size=beam, word_timestamps=True, final=True)
        final_ms, result, final_early_ms, result_early = timed_pair(
            lambda: engine.decode_batch([request]), lambda: engine.decode_batch([request_early]), args.repeat)
        check_ms, _ = timed(lambda: turn.predict([audio[start:end]]), args.repeat)
        row = {"clip": clip.name, "utterance_s": round(utt.size / RATE, 2),
               "audio_ms": round((end - word_end) * 1000 / RATE, 1),
               "early_ms": round((early - word_end) * 1000 / RATE, 1),
               "final_ms": round(final_ms, 1), "final_early_ms": round(final_early_ms, 1),
               "check_ms": round(check_ms, 1), "text": result[0].text.strip(),
               "text_early": result_early[0].text.strip()}
        row["floor_ms"] = round(row["audio_ms"] + max(final_ms, check_ms), 1)
        row["floor_early_ms"] = round(max(row["early_ms"] + final_early_ms, row["audio_ms"] + check_ms), 1)
        row["final_ratio"] = round(final_early_ms / final_ms, 3)
        row["floor_ratio"] = round(row["floor_early_ms"] / row["floor_ms"], 3)
        refs.append(clip.ref)
        if args.burst > 1:
            burst_final, _, _, serial = timed_pair(lambda: engine.decode_batch([request] * args.burst),
                                                   lambda: decode_one_at_a_time(engine, [request] * args.burst),
                                                   args.repeat)
            row.update(burst_serial_median_ms=round(statistics.median(serial), 1),
                       burst_serial_last_ms=round(serial[-1], 1))
            burst_check, _ = timed(lambda: turn.predict([audio[start:end]] * args.burst), args.repeat)
            row.update(burst_final_ms=round(burst_final, 1), burst_check_ms=round(burst_check, 1),
                       burst_floor_ms=round(row["audio_ms"] + max(burst_final, burst_check), 1))
        rows.append(row)
        print(f"{clip.name:28s} {row['utterance_s']:5.1f} s  audio {row['audio_ms']:6.0f}  final {final_ms:5.0f}  "
              f"check {check_ms:4.0f}  floor {row['floor_ms']:6.0f}  early: audio {row['early_ms']:6.0f} "
              f"final {final_early_ms:5.0f} floor {row['floor_early_ms']:6.0f}"
              + (f"  burst floor {row['burst_floor_ms']:6.0f}" if args.burst > 1 else "") + " ms", file=sys.stderr)

    keys = ["audio_ms", "final_ms", "check_ms", "floor_ms", "early_ms", "final_early_ms", "floor_early_ms",
            "final_ratio", "floor_ratio"]
    if args.burst > 1:
        keys += ["burst_final_ms", "burst_check_ms", "burst_floor_ms", "burst_serial_median_ms", "burst_serial_last_ms"]
    summary = {k: summarize([r[k] for r in rows]) for k in keys}
    summary["wer_pad"] = corpus_wer(refs, [r["text"] for r in rows])
    summary["wer_early"] = corpus_wer(refs, [r["text_early"] for r in rows])
    summary["same_text"] = sum(r["text"] == r["text_early"] for r in rows)
    report = {"config": {"started": started, "data": str(args.data), "silence_s": args.silence, "burst": args.burst,
                         "repeat": args.repeat, "compute_type": engine.compute_type,
                         "end_pad_ms": settings.vad.end_pad_ms, "speculate_ms": settings.vad.speculate_ms,
                         "final_beam_size": settings.streaming.final_beam_size,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "cpu_count": os.cpu_count()},
              "summary": summary, "clips": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("| stage | p50 | p95 |\n|---|---:|---:|")
    for k in keys:
        digits = 3 if "ratio" in k else 0
        print(f"| {k} | {summary[k]['p50']:.{digits}f} | {summary[k]['p95']:.{digits}f} |")
    print(f"WER pad {summary['wer_pad']['wer']:.2%}, early {summary['wer_early']['wer']:.2%}; "
          f"same text {summary['same_text']} of {len(rows)}")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
