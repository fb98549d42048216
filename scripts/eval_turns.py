"""Evaluate Smart Turn v3 + TurnPolicy on the labelled human end-of-turn clips.

For every complete/incomplete clip in LABELS.tsv the speech is cut at its
``last_word_end_s`` and a pause of each checkpoint length (default 200, 500,
1000 ms) is appended, as the ASR service would pass it (utterance including the
trailing silence). The pause is simulated with one of several fills:

- ``room``: the recording's own room tone, i.e. the tail of the *complete* clip
  of the same recording after its last word (+50 ms to skip the word's decay),
  mirrored back and forth to the needed length. The most realistic; the policy
  and the tests use this one.
- ``zeros``: digital silence.
- ``noise50`` / ``noise60``: seeded white noise at -50 / -60 dBFS RMS.

Prints a table (probability and decision per clip and checkpoint, where the
turn would end, correct or not) and writes the figures as JSON (``--out``).

    .venv/bin/python scripts/eval_turns.py --out bench-results/eval_turns.json
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from benchlib import mirror_tile, read_wav

from services.asr.turn import SmartTurnModel, TurnDecision, TurnPolicy

SAMPLE_RATE_HZ = 16000
DEFAULT_DATA = Path("tests/data/turns")
DEFAULT_CHECKPOINTS_MS = (200, 500, 1000)
FILLS = ("room", "zeros", "noise50", "noise60")
ROOM_TONE_SKIP_MS = 50
THRESHOLD_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97)


@dataclass(frozen=True)
class TurnClip:
    name: str  # file stem, e.g. "austen_0870_incomplete"
    label: str  # "complete" | "incomplete"
    speech: np.ndarray  # float32, cut at last_word_end_s
    room_tone: np.ndarray  # float32, silence of the same recording


def load_clips(data_dir: Path) -> list[TurnClip]:
    """The complete/incomplete clips of ``data_dir/LABELS.tsv`` (file order)."""
    with open(data_dir / "LABELS.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["label"] in ("complete", "incomplete")]
    by_name = {Path(r["file"]).stem: r for r in rows}
    clips = []
    for name, row in by_name.items():
        audio = read_wav(data_dir / Path(row["file"]).name)
        end = round(float(row["last_word_end_s"]) * SAMPLE_RATE_HZ)
        recording = name.rsplit("_", 1)[0]  # "austen_0870"
        complete = by_name[f"{recording}_complete"]
        full = audio if complete is row else read_wav(data_dir / Path(complete["file"]).name)
        tone_from = round(float(complete["last_word_end_s"]) * SAMPLE_RATE_HZ) + ROOM_TONE_SKIP_MS * 16
        room_tone = full[tone_from:]
        if room_tone.size < 800:
            raise ValueError(f"{recording}: less than 50 ms of room tone after the last word")
        clips.append(TurnClip(name, row["label"], audio[:end], room_tone))
    return clips


def pause(clip: TurnClip, silence_ms: int, fill: str = "room") -> np.ndarray:
    """``silence_ms`` of simulated pause for ``clip``."""
    n = silence_ms * SAMPLE_RATE_HZ // 1000
    if fill == "room":
        return mirror_tile(clip.room_tone, n)
    if fill == "zeros":
        return np.zeros(n, np.float32)
    if fill in ("noise50", "noise60"):
        rms = 10.0 ** (-int(fill[5:]) / 20.0)
        return (np.random.default_rng(silence_ms).standard_normal(n) * rms).astype(np.float32)
    raise ValueError(f"unknown fill {fill!r}; one of {FILLS}")


def with_pause(clip: TurnClip, silence_ms: int, fill: str = "room") -> np.ndarray:
    """The utterance as the service passes it at ``silence_ms`` of silence."""
    return np.concatenate([clip.speech, pause(clip, silence_ms, fill)])


@dataclass
class ClipResult:
    clip: str
    label: str
    speech_s: float
    raw_probability: float  # speech only, cut at the last word, no pause
    probabilities: dict[str, float]  # checkpoint ms -> P(complete)
    decisions: dict[str, str]
    ends_at_ms: int | None  # first COMPLETE checkpoint; None = left to the service timeout
    correct: bool  # complete: ended before the timeout; incomplete: never ended


def evaluate(
    model: SmartTurnModel,
    policy: TurnPolicy,
    clips: list[TurnClip],
    checkpoints_ms: tuple[int, ...],
    fill: str,
) -> dict:
    results = []
    for clip in clips:
        probs = model.predict([clip.speech] + [with_pause(clip, ms, fill) for ms in checkpoints_ms])
        raw, at = probs[0], dict(zip(checkpoints_ms, probs[1:]))
        decisions = {ms: policy.decide(p, ms) for ms, p in at.items()}
        ends = next((ms for ms in checkpoints_ms if decisions[ms] is TurnDecision.COMPLETE), None)
        correct = (ends is not None) if clip.label == "complete" else (ends is None)
        results.append(
            ClipResult(
                clip=clip.name,
                label=clip.label,
                speech_s=round(clip.speech.size / SAMPLE_RATE_HZ, 3),
                raw_probability=raw,
                probabilities={str(ms): p for ms, p in at.items()},
                decisions={str(ms): d.value for ms, d in decisions.items()},
                ends_at_ms=ends,
                correct=correct,
            )
        )
    n_dec = sum(len(r.decisions) for r in results)
    dec_ok = sum(d == r.label for r in results for d in r.decisions.values())
    complete = [r for r in results if r.label == "complete"]
    incomplete = [r for r in results if r.label == "incomplete"]
    pipecat_default = [  # threshold 0.5 at the first checkpoint, as pipecat does
        (r.probabilities[str(checkpoints_ms[0])] > 0.5) == (r.label == "complete") for r in results
    ]
    raw_05 = [(r.raw_probability > 0.5) == (r.label == "complete") for r in results]
    sweep = {}  # flat threshold at every checkpoint: completes ended early / incompletes cut off
    for t in THRESHOLD_SWEEP:
        ended = [any(p >= t for p in r.probabilities.values()) for r in results]
        sweep[str(t)] = {
            "completes_ended_early": sum(e for e, r in zip(ended, results) if r.label == "complete"),
            "incompletes_cut_off": sum(e for e, r in zip(ended, results) if r.label == "incomplete"),
        }
    return {
        "fill": fill,
        "checkpoints_ms": list(checkpoints_ms),
        "clips": [asdict(r) for r in results],
        "accuracy": {
            "turn_outcome": sum(r.correct for r in results) / len(results),
            "decisions": dec_ok / n_dec,
            "completes_ended_early": f"{sum(r.correct for r in complete)}/{len(complete)}",
            "incompletes_cut_off": f"{sum(not r.correct for r in incomplete)}/{len(incomplete)}",
            "raw_no_pause_threshold_0.5": sum(raw_05) / len(raw_05),
            f"pipecat_default_0.5_at_{checkpoints_ms[0]}ms": sum(pipecat_default) / len(results),
        },
        "flat_threshold_sweep": sweep,
    }


def print_table(report: dict, policy: TurnPolicy) -> None:
    cps = report["checkpoints_ms"]
    print(f"\nfill={report['fill']}  policy={policy}")
    head = f"{'clip':24s} {'label':10s} {'nopause':>7s} " + " ".join(f"{str(ms) + 'ms':>10s}" for ms in cps)
    print(head + f" {'ends at':>8s}  ok")
    for r in report["clips"]:
        cells = " ".join(
            f"{r['probabilities'][str(ms)]:.3f} {'C' if r['decisions'][str(ms)] == 'complete' else 'i'}   "
            for ms in cps
        )
        ends = f"{r['ends_at_ms']}ms" if r["ends_at_ms"] is not None else "timeout"
        print(f"{r['clip']:24s} {r['label']:10s} {r['raw_probability']:7.3f} {cells} {ends:>8s}  {'yes' if r['correct'] else 'NO'}")
    print("accuracy:", json.dumps(report["accuracy"]))
    print("flat threshold at every checkpoint -> completes ended early / incompletes cut off (of 5/5):")
    print("  " + "  ".join(f"{t}: {v['completes_ended_early']}/{v['incompletes_cut_off']}" for t, v in report["flat_threshold_sweep"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with LABELS.tsv and the wavs")
    ap.add_argument("--out", type=Path, default=Path("bench-results/eval_turns.json"))
    ap.add_argument("--fills", default=",".join(FILLS), help=f"comma list of {FILLS}; the first is the primary")
    ap.add_argument("--checkpoints-ms", default=",".join(map(str, DEFAULT_CHECKPOINTS_MS)))
    ap.add_argument("--threshold", type=float, default=None,
                    help="a flat curve at this P(complete) over the checkpoints instead of TurnPolicy()'s")
    ap.add_argument("--model", default=None, help="ONNX path (default: pipecat's bundled file)")
    args = ap.parse_args(argv)

    checkpoints = tuple(int(x) for x in args.checkpoints_ms.split(","))
    policy = TurnPolicy() if args.threshold is None else TurnPolicy(
        curve=((checkpoints[0], args.threshold), (checkpoints[-1], args.threshold)))
    model = SmartTurnModel(args.model)
    clips = load_clips(args.data)
    reports = []
    for fill in args.fills.split(","):
        report = evaluate(model, policy, clips, checkpoints, fill)
        print_table(report, policy)
        reports.append(report)
    out = {"model": str(model.path), "policy": asdict(policy), "data": str(args.data), "by_fill": reports}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
