#!/usr/bin/env python3
"""Latency against load, as PNG charts, from the JSON that bench_asr.py and bench_tts.py write (not a test).

    .venv/bin/python scripts/plot_bench.py --asr bench-results/asr.json --tts bench-results/tts.json \
        --out docs/img

Writes ``asr-latency.png`` (time-to-final p50 and p95 from the end of the last word, against concurrent
streams, with the targets) and ``tts-latency.png`` (time to first audio of a whole sentence, p50 and p95,
against concurrent sessions). Several JSON files per service may be given (``--asr a.json --asr b.json``) to
draw runs side by side; ``--label`` names them in the same order. ``--resume FILE`` (bench_resume.py's JSON)
writes ``resume.png``: the time from a drop to the resume and to the first final after it, and the WER with
and without the fault. ``--wyoming FILE`` (bench_wyoming.py's JSON) writes ``wyoming.png``: ours beside
wyoming-faster-whisper and wyoming-piper. ``--words FILE`` (bench_word_timings.py's JSON) writes
``word-timings.png``: how far each word's start and end are from where the ASR puts them, Piper's aligned
timings against the fallback's estimate. ``--floor FILE`` (bench_floor.py's JSON; ``--floor-burst``, one with
``--burst``; ``--encoder``, bench_encoder.py's) writes ``floor.png``. ``--turns FILE`` (bench_turns.py's JSON
of a run with ``--baseline-url``) writes ``turns.png``: per set, the share of complete utterances ended by
``turn`` (and within 650 ms of the last word) and of paused ones ended prematurely, for the baseline and the
service under test, with the targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ASR_TARGETS = {1: (350, 800), 8: (500, 1200)}  # sessions: (p50, p95) in ms
TTS_TARGETS = {1: (100, None), 8: (300, 600)}


def asr_points(path: Path) -> tuple[list[int], list[float], list[float]]:
    rows = json.loads(path.read_text())["streaming"]
    return ([r["sessions"] for r in rows], [r["time_to_final_ms"]["p50"] for r in rows],
            [r["time_to_final_ms"]["p95"] for r in rows])


def tts_points(path: Path) -> tuple[list[int], list[float], list[float]]:
    rows = json.loads(path.read_text())
    return ([r["sessions"] for r in rows], [r["ttfa_sentence_p50_ms"] for r in rows],
            [r["ttfa_sentence_p95_ms"] for r in rows])


def chart(out: Path, title: str, xlabel: str, ylabel: str, series: list, targets: dict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, (xs, p50, p95) in series:
        line, = ax.plot(xs, p50, marker="o", label=f"{label} p50")
        ax.plot(xs, p95, marker="s", linestyle="--", color=line.get_color(), label=f"{label} p95")
    for sessions, (t50, t95) in targets.items():
        ax.scatter([sessions], [t50], marker="_", s=400, color="green", zorder=5)
        if t95 is not None:
            ax.scatter([sessions], [t95], marker="_", s=400, color="red", zorder=5)
    ax.scatter([], [], marker="_", s=200, color="green", label="target p50")
    ax.scatter([], [], marker="_", s=200, color="red", label="target p95")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def resume_chart(report: dict, path: Path) -> None:
    """bench_resume.py's figures: the time after a drop, and the WER with and without the fault."""
    runs = report["runs"]
    faulted = [r for r in runs if r["fault"] != "none"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    labels = [f"{r['fault']}\n{r['streams']} stream{'s' if r['streams'] > 1 else ''}" for r in faulted]
    xs = range(len(faulted))
    for offset, q, hatch in ((-0.2, "p50", None), (0.2, "p95", "//")):
        ax1.bar([x + offset for x in xs], [r["drop_to_first_final_ms"][q] or 0 for r in faulted], 0.4,
                label=f"drop -> first final {q}", hatch=hatch, color="tab:blue", alpha=0.6 if hatch else 1.0)
        ax1.scatter([x + offset for x in xs], [r["outage_ms"][q] or 0 for r in faulted], color="black", zorder=5,
                    marker="_" if hatch else "x", s=120, label=f"outage (drop -> resumed) {q}")
    ax1.set_xticks(list(xs), labels, fontsize=8)
    ax1.set_ylabel("ms")
    ax1.set_title("After the drop")
    ax1.legend(fontsize=7)
    levels = sorted({r["streams"] for r in runs})
    width = 0.8 / 3
    for i, fault in enumerate(("none", "kill", "cut")):
        vals = [next((r["wer"] * 100 for r in runs if r["streams"] == n and r["fault"] == fault), 0) for n in levels]
        ax2.bar([j + (i - 1) * width for j in range(len(levels))], vals, width, label=fault)
    ax2.set_xticks(range(len(levels)), [f"{n} stream{'s' if n > 1 else ''}" for n in levels])
    ax2.set_ylabel("WER %")
    ax2.set_title("Word error rate, with and without the fault")
    ax2.legend(fontsize=8)
    _save(fig, path)


TURN_TARGETS = {"turn_within_650ms": 80, "premature_turn": 10}  # % of complete (at least) / of paused (at most)


def turns_chart(report: dict, path: Path, labels: tuple[str, str]) -> None:
    """bench_turns.py --baseline-url: the turn figures of both services, set by set."""
    runs = [(labels[0], report["baseline"]["summary"]), (labels[1], report["summary"])]
    sets = [name for name in report["summary"]]
    metrics = [("complete", "ended_by_turn", "complete:\nended by turn"),
               ("complete", "turn_within_650ms", "complete: turn\nwithin 650 ms"),
               ("paused", "premature_turn", "paused:\npremature turn")]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], sets):
        width = 0.8 / len(runs)
        for i, (label, summary) in enumerate(runs):
            vals = [100 * (summary[name][kind].get(key) or 0) for kind, key, _ in metrics]
            bars = ax.bar([j + (i - (len(runs) - 1) / 2) * width for j in range(len(metrics))], vals, width,
                          label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        for j, (_, key, _) in enumerate(metrics):
            if key in TURN_TARGETS:
                ax.hlines(TURN_TARGETS[key], j - 0.45, j + 0.45, colors="red", linestyles="dashed")
        ax.set_xticks(range(len(metrics)), [m[2] for m in metrics], fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of utterances")
        ax.set_title({"heldout": "held out"}.get(name, name.replace("_", " ")) + " (targets dashed)")
        ax.legend(fontsize=7)
    _save(fig, path)


def wyoming_chart(report: dict, path: Path) -> None:
    """bench_wyoming.py's figures: ASR time to the transcript (and ours to its streamed text) from the end of the
    last word, and TTS time to first audio, p50 bars with p95 marks, ours beside the peers, by clients."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, rows, series, title in (
            (ax1, report["asr"], [("ours", "time_to_text_ms", "ours: streamed text"),
                                  ("ours", "time_to_transcript_ms", "ours: transcript"),
                                  ("wyoming-faster-whisper", "time_to_transcript_ms", "wyoming-faster-whisper")],
             f"Speech to text: from the end of the last word\n(audio-stop {report['conditions']['stop_after_ms']:.0f} "
             f"ms after it)"),
            (ax2, report["tts"], [("ours", "time_to_first_audio_ms", "ours"),
                                  ("wyoming-piper", "time_to_first_audio_ms", "wyoming-piper")],
             "Text to speech: first audio from sending the text")):
        levels = sorted({r["clients"] for r in rows})
        width = 0.8 / len(series)
        for i, (server, key, label) in enumerate(series):
            stats = [next(r[key] for r in rows if r["server"] == server and r["clients"] == n) for n in levels]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(levels))]
            ax.bar(xs, [s["p50"] for s in stats], width, label=f"{label} (p50; p95 marked)")
            ax.scatter(xs, [s["p95"] for s in stats], marker="_", s=300, color="black", zorder=5)
        ax.set_xticks(range(len(levels)), [f"{n} client{'s' if n > 1 else ''}" for n in levels])
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def word_timings_chart(report: dict, path: Path) -> None:
    """bench_word_timings.py's figures: the distribution of |our start - the ASR's start| (and of the ends)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, title in ((ax1, "start_errors_ms", "Word start"), (ax2, "end_errors_ms", "Word end")):
        for name, color in (("aligned", "tab:blue"), ("estimated", "tab:orange")):
            values = sorted(report[name][key])
            ax.plot(values, [(i + 1) / len(values) * 100 for i in range(len(values))], color=color,
                    label=f"{name} (p50 {report[name][key.replace('errors_ms', 'ms_p50')]:.0f} ms)")
        ax.set_xlabel("|ours - tiny.en's word timestamp| (ms)")
        ax.set_ylabel("% of words")
        ax.set_xlim(0, 1000)
        ax.set_title(f"{title}: {report['aligned']['matched']} words, {report['sentences']} held-out sentences")
        ax.legend(fontsize=8)
    _save(fig, path)


def floor_chart(floor: dict, burst: dict | None, encoder: dict | None, path: Path) -> None:
    """bench_floor.py's stages (the final after the whole pad vs from the first silent window; N finals as one
    batch vs one at a time) and bench_encoder.py's encoder lengths (decode time ratio and WER)."""
    panels = 1 + (burst is not None) + (encoder is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=110)
    axes = list(axes) if panels > 1 else [axes]
    ax = axes.pop(0)
    s = floor["summary"]
    names = [("audio complete", "audio_ms", "early_ms"), ("final decode", "final_ms", "final_early_ms"),
             ("floor (1 stream)", "floor_ms", "floor_early_ms")]
    for i, (label, key) in enumerate((("after the whole pad (old)", 1), ("from the first silent window", 2))):
        for q, hatch in (("p50", None), ("p95", "//")):
            ax.bar([j + (i - 0.5) * 0.4 + (0.1 if q == "p95" else -0.1) for j in range(len(names))],
                   [s[n[key]][q] for n in names], 0.2, hatch=hatch, color=f"C{i}", alpha=0.6 if hatch else 1.0,
                   label=f"{label} {q}")
    ax.set_xticks(range(len(names)), [n[0] for n in names], fontsize=8)
    ax.set_ylabel("ms after the last word")
    ax.set_title("One stream, in-process: the final after the pad vs early", fontsize=9)
    ax.legend(fontsize=7)
    if burst is not None:
        ax = axes.pop(0)
        b, n = burst["summary"], burst["config"]["burst"]
        keys = [("one batch (old):\nall done", "burst_final_ms"),
                ("one at a time:\nmedian done", "burst_serial_median_ms"),
                ("one at a time:\nlast done", "burst_serial_last_ms")]
        for q, offset, hatch in (("p50", -0.2, None), ("p95", 0.2, "//")):
            ax.bar([j + offset for j in range(len(keys))], [b[k][q] for _, k in keys], 0.4, hatch=hatch,
                   color="C2", alpha=0.6 if hatch else 1.0, label=q)
        ax.set_xticks(range(len(keys)), [k[0] for k in keys], fontsize=8)
        ax.set_ylabel("ms after the audio is complete")
        ax.set_title(f"{n} finals at the same moment", fontsize=9)
        ax.legend(fontsize=7)
    if encoder is not None:
        ax = axes.pop(0)
        rows = encoder["summary"]
        labels = [f"{r['margin_s']:g} s +\n{r['bucket_s']:g} s" for r in rows]
        ax.bar(range(len(rows)), [r["ratio"] for r in rows], 0.6, color="C4", label="decode time (ratio)")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("decode time / 5 s + 5 s")
        ax2 = ax.twinx()
        ax2.plot(range(len(rows)), [r["wer"] * 100 for r in rows], "ko-", label="WER %")
        ax2.set_ylabel("WER %")
        ax2.set_ylim(bottom=0)
        ax.set_title("Encoder length: margin of silence + bucket", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
    _save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--asr", type=Path, action="append", default=[])
    p.add_argument("--tts", type=Path, action="append", default=[])
    p.add_argument("--resume", type=Path, help="a bench_resume.py JSON: writes resume.png")
    p.add_argument("--turns", type=Path, help="a bench_turns.py JSON with a baseline run: writes turns.png")
    p.add_argument("--turn-labels", default="audio only,words", help="the baseline's and the service's names")
    p.add_argument("--wyoming", type=Path, help="a bench_wyoming.py JSON: writes wyoming.png")
    p.add_argument("--words", type=Path, help="a bench_word_timings.py JSON: writes word-timings.png")
    p.add_argument("--floor", type=Path, help="a bench_floor.py JSON: writes floor.png")
    p.add_argument("--floor-burst", type=Path, help="a bench_floor.py JSON with --burst, for floor.png")
    p.add_argument("--encoder", type=Path, help="a bench_encoder.py JSON, for floor.png")
    p.add_argument("--label", action="append", default=[], help="one per run, ASR runs first then TTS runs")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    args = p.parse_args(argv)
    labels = iter(args.label)
    if args.asr:
        chart(args.out / "asr-latency.png", "ASR time-to-final (from the end of the last word)",
              "concurrent streams (real speech at real time)", "ms",
              [(next(labels, path.stem), asr_points(path)) for path in args.asr], ASR_TARGETS)
    if args.tts:
        chart(args.out / "tts-latency.png", "TTS time to first audio (a whole sentence)", "concurrent sessions",
              "ms", [(next(labels, path.stem), tts_points(path)) for path in args.tts], TTS_TARGETS)
    if args.turns:
        turns_chart(json.loads(args.turns.read_text()), args.out / "turns.png", tuple(args.turn_labels.split(",", 1)))
    if args.resume:
        resume_chart(json.loads(args.resume.read_text()), args.out / "resume.png")
    if args.wyoming:
        wyoming_chart(json.loads(args.wyoming.read_text()), args.out / "wyoming.png")
    if args.words:
        word_timings_chart(json.loads(args.words.read_text()), args.out / "word-timings.png")
    if args.floor:
        read = lambda f: json.loads(f.read_text()) if f else None  # noqa: E731
        floor_chart(read(args.floor), read(args.floor_burst), read(args.encoder), args.out / "floor.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
