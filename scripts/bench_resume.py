#!/usr/bin/env python3
"""Zero data loss, measured: live streams ride through a SIGKILLed ASR instance and a cut connection (not a test).

It starts its own cluster with ``scripts/start_all.sh`` (2 ASR + 1 TTS instances behind nginx, free loopback
ports set through the script's environment variables) and stops it at the end:

    .venv/bin/python scripts/bench_resume.py --streams 1,8 --out docs/bench/resume.json --chart docs/img/resume.png
    .venv/bin/python scripts/bench_resume.py --data DIR     # DIR/*.wav with DIR/*.txt transcripts

Recordings: the clips of ``--data`` (default tests/data/asr, whose transcripts are in its README table) joined
with 0.8 s of silence into one recording per client of at least ``--min-s`` seconds, each client's in a
different order. For each N in ``--streams``, N clients (``voice_client.AsrStream``, resume on) each stream
their recording at real time through nginx, three times:

* ``none``: undisturbed; the client's Python heap (tracemalloc peak over the run, per stream) is measured here;
* ``kill``: ``--fault-at`` s in, the ASR instance holding the most streams gets SIGKILL; the bench then waits
  for start_all.sh to restart it and for nginx to send it a stream again (``restart_s``, ``back_s``);
* ``cut``: the clients connect through ``scripts/cut_proxy.py`` in front of nginx, which resets every client
  connection once ``--fault-at`` s in.

Per faulted stream: the outage (drop to ``resumed``), drop to the first final after the resume, and how much
later that final came than the same utterance's final (matched by stream time) in the undisturbed run. Per
recording: WER (Whisper's English normaliser, jiwer) undisturbed and with the fault, words repeated at the seam
(the last 1-3 words of the final before the drop opening the first final after it, where the undisturbed
transcript has no such repetition), utterance numbers lost or sent twice, and the replay buffer's peak. Every
wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sys
import time
import tracemalloc
import urllib.request
import wave
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench_asr import corpus_wer, normalize, summarize
from cut_proxy import CutProxy
from local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
BYTES_PER_S = 2 * RATE
FRAME_BYTES = 640  # 20 ms
GAP_S = 0.8
TAIL_S = 1.5


@dataclass
class Recording:
    name: str
    clips: list[str]
    reference: str
    pcm: bytes

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / BYTES_PER_S


@dataclass
class StreamRun:
    """What one client saw: (wall time, event) in order, and the replay buffer's peak."""
    recording: str
    started: float = 0.0
    events: list = field(default_factory=list)
    peak_kept_bytes: int = 0
    error: str | None = None

    def finals(self) -> list:
        return [e for _, e in self.events if e.type == "final"]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals()).strip()


def references(data: Path) -> dict[str, str]:
    """Transcripts: ``NAME.txt`` next to ``NAME.wav``, else the ``| NAME.wav | ... | text |`` rows of README.md."""
    refs = {w.stem: w.with_suffix(".txt").read_text().strip() for w in data.glob("*.wav")
            if w.with_suffix(".txt").exists()}
    readme = data / "README.md"
    if readme.exists():
        for line in readme.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 2 and cells[0].endswith(".wav"):
                refs.setdefault(cells[0][:-4], cells[-1])
    return refs


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: 16 kHz mono 16-bit PCM expected")
        return w.readframes(w.getnframes())


def recordings(data: Path, n: int, min_s: float, names: list[str] | None = None) -> list[Recording]:
    """``n`` recordings of at least ``min_s`` s (of the clips ``names``, default all): recording i is the clips in
    an order of its own, unless there are fewer orders than recordings."""
    refs = references(data)
    clips = sorted(w.stem for w in data.glob("*.wav") if w.stem in refs and (names is None or w.stem in names))
    if not clips:
        raise SystemExit(f"no clip with a transcript in {data}")
    pcm = {c: read_pcm(data / f"{c}.wav") for c in clips}
    gap, tail = bytes(int(GAP_S * BYTES_PER_S)), bytes(int(TAIL_S * BYTES_PER_S))
    out, seen = [], set()
    for i in range(n):
        for seed in range(i * 100, i * 100 + 100):  # the first order not taken yet (bounded)
            rng, order, size = random.Random(seed), [], 0
            while size < min_s * BYTES_PER_S:
                batch = list(clips)
                rng.shuffle(batch)
                for c in batch:
                    if size < min_s * BYTES_PER_S:
                        order.append(c)
                        size += len(pcm[c]) + len(gap)
            if tuple(order) not in seen:
                break
        seen.add(tuple(order))
        out.append(Recording(f"rec{i}", order, " ".join(refs[c] for c in order),
                             b"".join(pcm[c] + gap for c in order) + tail))
    return out


async def stream_recording(url: str, rec: Recording, *, speed: float = 1.0, timeout_s: float = 300,
                           on_event=None) -> StreamRun:
    """Stream ``rec`` at ``speed`` x real time through the library (resume on) and collect every event until
    ``closed``; ``on_event(event)`` is called as each arrives."""
    from voice_client import AsrStream, ResumePolicy

    run = StreamRun(rec.name)
    loop = asyncio.get_running_loop()
    try:
        async with AsrStream(url, sample_rate=RATE, resume=ResumePolicy(max_attempts=12)) as s:
            async def send() -> None:
                start = loop.time()
                for i in range(0, len(rec.pcm), FRAME_BYTES):
                    await s.send_audio(rec.pcm[i:i + FRAME_BYTES])
                    run.peak_kept_bytes = max(run.peak_kept_bytes, s.kept_bytes)
                    await asyncio.sleep(max(0.0, start + (i + FRAME_BYTES) / BYTES_PER_S / speed - loop.time()))
                await s.finish()

            run.started = time.time()
            sender = asyncio.create_task(send())
            try:
                async with asyncio.timeout(timeout_s):
                    async for event in s:
                        run.events.append((time.time(), event))
                        if on_event is not None:
                            on_event(event)
                await sender
            finally:
                sender.cancel()
    except Exception as exc:  # noqa: BLE001 - reported per stream, the other streams go on
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def seam_repeats(run: StreamRun, undisturbed_text: str) -> int:
    """Words repeated across each resume: the final before the drop ends with the words the first final after it
    begins with (1-3 words), where the undisturbed transcript does not have that repetition."""
    count, before = 0, None
    base = f" {normalize(undisturbed_text)} "
    pending = False
    for _, e in run.events:
        if e.type == "final":
            if pending and before is not None:
                a, b = normalize(before.text).split(), normalize(e.text).split()
                for k in range(1, 4):
                    if len(a) >= k and len(b) >= k and a[-k:] == b[:k]:
                        if f" {' '.join(a[-k:] + b[:k])} " not in base:
                            count += 1
                            break
            pending = False
            before = e
        elif e.type == "reconnecting":
            pending = True
    return count


def numbering(run: StreamRun) -> tuple[int, int]:
    """Utterance numbers missing (below the highest) and numbers finalised twice."""
    seen = [f.utterance for f in run.finals()]
    return len(set(range(max(seen) + 1)) - set(seen)) if seen else 0, len(seen) - len(set(seen))


def resume_timings(run: StreamRun, drop_at: float, undisturbed: StreamRun | None) -> dict | None:
    """Outage, drop to the first final after the resume, and that final's delay over the undisturbed run's."""
    resumed = next(((t, e) for t, e in run.events if e.type == "resumed" and t >= drop_at - 1), None)
    if resumed is None:
        return None
    first = next(((t, e) for t, e in run.events if e.type == "final" and t >= resumed[0]), None)
    out = {"outage_ms": resumed[1].outage_s * 1000, "replay_s": resumed[1].replay_s,
           "drop_to_first_final_ms": (first[0] - drop_at) * 1000 if first else None, "extra_ms": None}
    if first and undisturbed:
        match = min(((t, e) for t, e in undisturbed.events if e.type == "final"),
                    key=lambda te: abs(te[1].end - first[1].end), default=None)
        if match and abs(match[1].end - first[1].end) < 0.5:
            out["extra_ms"] = ((first[0] - run.started) - (match[0] - undisturbed.started)) * 1000
    return out


def timeline(run: StreamRun) -> list:
    """The finals and resumes, as [s since the stream started, type, utterance, start, end, text/outage]."""
    out = []
    for t, e in run.events:
        at = round(t - run.started, 3)
        if e.type == "final":
            out.append([at, "final", e.utterance, e.start, e.end, e.text])
        elif e.type == "reconnecting":
            out.append([at, "reconnecting", e.attempt, e.reason])
        elif e.type == "resumed":
            out.append([at, "resumed", e.utterance, e.at_s, e.replay_s, e.outage_s])
    return out


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


async def back_in_rotation(cluster: LocalCluster, port: int, rec: Recording, timeout_s: float = 120) -> None:
    """Short streams through nginx until the instance on ``port`` has taken one (bounded in time and count)."""
    short = Recording("probe", rec.clips[:1], "", rec.pcm[:3 * BYTES_PER_S] + bytes(BYTES_PER_S))
    before = metric(port, "asr_sessions_total")
    deadline = time.monotonic() + timeout_s
    for _ in range(200):
        if metric(port, "asr_sessions_total") > before:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.gather(*(stream_recording(cluster.ws + "/v1/stream/asr", short, timeout_s=60)
                               for _ in range(2)))
    raise TimeoutError(f"nginx sent no stream to :{port} in {timeout_s} s")


async def one_run(cluster: LocalCluster, recs: list[Recording], fault: str, fault_at_s: float) -> dict:
    proxy = await CutProxy(cluster.front).start() if fault == "cut" else None
    url = f"ws://127.0.0.1:{proxy.port if proxy else cluster.front}/v1/stream/asr"
    info: dict = {"fault": fault, "streams": len(recs)}
    if fault == "none":
        import voice_client  # noqa: F401 - imported before tracing: the heap counts the streams, not the imports
        tracemalloc.start()
        base_mem = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(stream_recording(url, r)) for r in recs]
    drop_at = None
    if fault != "none":
        await asyncio.sleep(fault_at_s)
        drop_at = time.time()
        if proxy:
            info["connections_cut"] = proxy.cut()
        else:
            port = max(cluster.asr_ports, key=lambda p: metric(p, "asr_sessions_active"))
            info["killed"] = name = f"asr :{port}"
            old, mark = cluster.kill(name, signal.SIGKILL)
    runs = await asyncio.gather(*tasks)
    if fault == "none":
        info["client_heap_per_stream_kb"] = (tracemalloc.get_traced_memory()[1] - base_mem) / len(recs) / 1024
        tracemalloc.stop()
    if proxy:
        await proxy.close()
    if fault == "kill":
        why, _ = await asyncio.to_thread(cluster.wait_restarted, name, old, start=mark, timeout_s=300)
        info["restart_log"] = why
        info["restart_s"] = time.time() - drop_at
        await back_in_rotation(cluster, int(name.rsplit(":", 1)[1]), recs[0])
        info["back_s"] = time.time() - drop_at
    info["drop_at"] = drop_at
    info["runs"] = runs
    return info


def score(info: dict, recs: list[Recording], undisturbed: dict | None) -> dict:
    by_name = {r.name: r for r in recs}
    base_runs = {r.recording: r for r in undisturbed["runs"]} if undisturbed else {}
    rows, timings = [], []
    for run in info["runs"]:
        rec, base = by_name[run.recording], base_runs.get(run.recording)
        w = corpus_wer([rec.reference], [run.text])["wer"]
        lost, twice = numbering(run)
        row = {"recording": rec.name, "clips": rec.clips, "duration_s": round(rec.duration_s, 1),
               "error": run.error, "wer": w, "utterances": len(run.finals()), "lost": lost, "twice": twice,
               "reconnects": sum(1 for _, e in run.events if e.type == "resumed"),
               "peak_replay_kb": run.peak_kept_bytes / 1024, "text": run.text, "timeline": timeline(run)}
        if base is not None:
            bw = corpus_wer([rec.reference], [base.text])["wer"]
            row.update(wer_undisturbed=bw, wer_delta_pts=(w - bw) * 100 if w is not None and bw is not None else None,
                       seam_repeats=seam_repeats(run, base.text))
        if info["drop_at"] is not None:
            t = resume_timings(run, info["drop_at"], base)
            row["resume"] = t
            timings.append(t)
        rows.append(row)
    out = {k: v for k, v in info.items() if k not in ("runs", "drop_at")}
    out["wer"] = corpus_wer([by_name[r.recording].reference for r in info["runs"]],
                            [r.text for r in info["runs"]])["wer"]
    if timings:
        got = [t for t in timings if t]
        out["resumed_streams"] = len(got)
        for key in ("outage_ms", "drop_to_first_final_ms", "extra_ms"):
            out[key] = summarize([t[key] for t in got if t[key] is not None])
    # how late finals came at all in this run (arrival after the utterance's end; audio is paced at real time):
    # what a drop's figures compare with on a loaded machine
    out["final_latency_ms"] = summarize([(t - run.started - e.end) * 1000 for run in info["runs"]
                                         for t, e in run.events if e.type == "final"])
    out["peak_replay_kb"] = summarize([r["peak_replay_kb"] for r in rows])
    out["wer_delta_pts_max"] = max((r["wer_delta_pts"] for r in rows if r.get("wer_delta_pts") is not None),
                                   default=None)
    out["seam_repeats"] = sum(r.get("seam_repeats", 0) for r in rows)
    out["lost"], out["twice"] = sum(r["lost"] for r in rows), sum(r["twice"] for r in rows)
    out["ok"] = all(not r["error"] and r["lost"] == 0 and r["twice"] == 0 and r.get("seam_repeats", 0) == 0
                    and (r.get("wer_delta_pts") is None or r["wer_delta_pts"] <= 1.0) for r in rows)
    out["recordings"] = rows
    return out


def markdown(report: dict) -> str:
    """One row per run: the figures docs/benchmarks.md quotes."""
    def ms(d: dict | None, q: str) -> str:
        return f"{d[q]:.0f}" if d and d.get(q) is not None else "-"

    lines = ["| streams | fault | WER % | worst WER change (pts) | seam repeats | lost / twice | resumed | "
             "outage p50 / p95 ms | drop -> first final p50 / p95 ms | any final's latency p50 / p95 ms | "
             "peak replay kB | heap / stream kB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        delta = "-" if r.get("wer_delta_pts_max") is None else f"{r['wer_delta_pts_max']:+.1f}"
        heap = f"{r['client_heap_per_stream_kb']:.0f}" if "client_heap_per_stream_kb" in r else "-"
        lines.append(f"| {r['streams']} | {r['fault']} | {r['wer'] * 100:.1f} | {delta} | {r['seam_repeats']} | "
                     f"{r['lost']} / {r['twice']} | {r.get('resumed_streams', '-')} | "
                     f"{ms(r.get('outage_ms'), 'p50')} / {ms(r.get('outage_ms'), 'p95')} | "
                     f"{ms(r.get('drop_to_first_final_ms'), 'p50')} / {ms(r.get('drop_to_first_final_ms'), 'p95')} | "
                     f"{ms(r['final_latency_ms'], 'p50')} / {ms(r['final_latency_ms'], 'p95')} | "
                     f"{r['peak_replay_kb']['max']:.0f} | {heap} |")
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict:
    levels = [int(n) for n in args.streams.split(",")]
    recs = recordings(args.data, max(levels), args.min_s)
    env = {"ASR_MODEL__CPU_THREADS": "1", "TTS_ENGINE__CPU_THREADS": "1",
           "VOICE_STORE": str(args.workdir / "voices"), "TMPDIR": str(args.workdir)}
    cluster = LocalCluster(asr=2, tts=1, env=env, log_path=args.workdir / "start_all.log")
    await asyncio.to_thread(cluster.start, 600)
    report: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT) else args.data.name,
                    "fault_at_s": args.fault_at, "runs": []}
    try:
        for n in levels:
            undisturbed = None
            for fault in ("none", "kill", "cut"):
                info = await one_run(cluster, recs[:n], fault, args.fault_at)
                scored = score(info, recs[:n], undisturbed)
                undisturbed = undisturbed or info
                report["runs"].append(scored)
                print(json.dumps({k: v for k, v in scored.items() if k != "recordings"}), file=sys.stderr)
    finally:
        report["cluster_exit"] = await asyncio.to_thread(cluster.stop)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "asr")
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--min-s", type=float, default=30.0, help="each recording's least length")
    parser.add_argument("--fault-at", type=float, default=12.0, help="seconds into a run the fault comes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "resume.json")
    parser.add_argument("--chart", type=Path)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-results" / "resume-run")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.chart:
        from plot_bench import resume_chart
        resume_chart(report, args.chart)
    print(markdown(report))
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
