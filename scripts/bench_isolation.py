#!/usr/bin/env python3
"""Isolation of a RUNNING ASR service under hostile input and mixed load (a measurement tool, not a test).

    scripts/start_asr.sh --port 8001 &
    .venv/bin/python scripts/bench_isolation.py --url http://127.0.0.1:8001 --pid $(pgrep -n -f services.asr) \
        --out bench-results/isolation.json

Phases (``--phases``, default all), each with the service's resident memory sampled every 20 ms
(``/proc/PID/status``), reported as peak growth over the level just before the phase:

* ``bomb``: 10 hours of silence in a 13 MB Opus file (8 kHz, 6 kbps; made once, cached in ``--cache``) posted to
  ``POST /v1/transcribe``: status, seconds to the answer, peak RSS growth;
* ``long``: a legitimate 60-minute upload (the clips of ``--data`` one after another with pauses, Opus 32 kbps):
  status, processing time, WER against the clips' references, peak RSS growth;
* ``flood``: a WebSocket client that sends 200 frames ``{"type": "xxx...8 MB"}`` and never reads: when the
  server closes it, with which code, peak RSS growth;
* ``mixed``: 4 live streams of the clips at real time alone (bench_asr.py's client and time-to-final), then the
  same 4 while 8 clients upload 10-minute WAV files over and over (a 503 is retried after its Retry-After,
  backing off exponentially up to 30 s):
  live time-to-final p50/p95 and their ratio to the live-only run, live errors, live WER, upload outcomes
  (the file segments Whisper ran during the live phase, under ``where_time_goes`` ``whisper/bulk``; uploads
  admitted when the live phase ends are waited for, up to 300 s, and counted).

Only loopback URLs are accepted unless ``--allow-remote``; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench_asr import Clip, corpus_wer, load_clips, run_streaming
from benchlib import RATE, is_loopback_url, rss_mb, wav_bytes, ws_url
UPLOAD_DRAIN_S = 300.0  # after the live phase, how long admitted uploads may take to finish


# --------------------------------------------------------------------------- inputs

def silent_opus(seconds: float, path: Path) -> Path:
    """``seconds`` of digital silence as 8 kHz mono Opus at 6 kbps (cached: 10 h take a minute to encode)."""
    if path.exists():
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=8000)
        stream.layout = "mono"
        stream.bit_rate = 6000
        frame_samples = 8000 * 20 // 1000 * 50  # 1 s per frame
        zeros = np.zeros((1, frame_samples), dtype=np.int16)
        for i in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate = 8000
            frame.pts = i * frame_samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.rename(path)
    return path


def speech_track(clips: list[Clip], seconds: float, gap_s: float = 1.0) -> tuple[np.ndarray, str]:
    """The clips one after another (with ``gap_s`` of silence) until ``seconds``: int16 samples and the
    reference text of what it says."""
    parts, refs, total, i = [], [], 0, 0
    gap = np.zeros(int(gap_s * RATE), dtype=np.int16)
    while total < seconds * RATE:
        clip = clips[i % len(clips)]
        pcm = np.frombuffer(clip.pcm, dtype="<i2")
        parts += [pcm, gap]
        refs.append(clip.ref)
        total += pcm.size + gap.size
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)], " ".join(refs)


def opus_bytes(samples: np.ndarray, bit_rate: int = 32000) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=48000)
        step = RATE * 10
        for start in range(0, samples.size, step):
            frame = av.AudioFrame.from_ndarray(samples[start:start + step].reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = RATE
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    out.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# --------------------------------------------------------------------------- memory

class RssPeak:
    """Samples a process's resident memory every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02) and (now := rss_mb(self.pid)) is not None:
            self.peak = max(self.peak, now)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.after = rss_mb(self.pid)

    def report(self) -> dict:
        return {"rss_before_mb": round(self.before, 1), "rss_peak_mb": round(self.peak, 1),
                "rss_after_mb": round(self.after, 1), "peak_growth_mb": round(self.peak - self.before, 1)}


# --------------------------------------------------------------------------- phases

def post(url: str, name: str, data: bytes, timeout_s: float) -> tuple[int, dict, float]:
    import httpx

    started = time.monotonic()
    r = httpx.post(url + "/v1/transcribe", files={"file": (name, data)}, timeout=timeout_s, trust_env=False)
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:200]}
    return r.status_code, body, time.monotonic() - started


def phase_bomb(args) -> dict:
    path = silent_opus(36000, Path(args.cache) / "bomb-10h-silence.opus")
    data = path.read_bytes()
    with RssPeak(args.pid) as rss:
        status, body, seconds = post(args.url, "bomb.opus", data, 600)
    return {"file_mb": round(len(data) / 2**20, 1), "audio_s": 36000, "status": status,
            "code": body.get("error", {}).get("code"), "message": body.get("error", {}).get("message"),
            "answer_s": round(seconds, 2), **rss.report()}


def phase_long(args, clips: list[Clip]) -> dict:
    samples, ref = speech_track(clips, 3600)
    data = opus_bytes(samples)
    with RssPeak(args.pid) as rss:
        status, body, seconds = post(args.url, "hour.opus", data, 3600)
    out = {"file_mb": round(len(data) / 2**20, 1), "audio_s": 3600, "status": status, "answer_s": round(seconds, 1),
           **rss.report()}
    if status == 200:
        out["wer"] = corpus_wer([ref], [body["text"]])["wer"]
        out["segments"] = len(body["segments"])
        out["real_time_factor"] = round(seconds / 3600, 4)
    else:
        out["error"] = body
    return out


async def _flood(args) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    frame = json.dumps({"type": "x" * (8 << 20)})
    sent, started = 0, time.monotonic()
    async with connect(ws_url(args.url), max_size=None, max_queue=1, write_limit=1 << 16, open_timeout=15,
                       close_timeout=5) as ws:
        try:
            for _ in range(200):
                await asyncio.wait_for(ws.send(frame), 30)
                sent += 1
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        try:
            await asyncio.wait_for(ws.wait_closed(), 30)
        except asyncio.TimeoutError:
            pass
        return {"frames_sent": sent, "closed_after_s": round(time.monotonic() - started, 2),
                "close_code": ws.close_code}


def phase_flood(args) -> dict:
    with RssPeak(args.pid) as rss:
        out = asyncio.run(_flood(args))
    return {**out, **rss.report()}


async def _uploads(args, data: bytes, stop: asyncio.Event, outcomes: dict) -> None:
    import httpx

    async def client(i: int) -> None:
        backoff = 1.0
        async with httpx.AsyncClient(base_url=args.url, timeout=3600, trust_env=False) as http:
            while not stop.is_set():
                try:
                    r = await http.post("/v1/transcribe", files={"file": (f"u{i}.wav", data)})
                except httpx.HTTPError as exc:
                    outcomes["errors"].append(type(exc).__name__)
                    return
                if r.status_code == 200:
                    outcomes["ok"] += 1
                    if stop.is_set():
                        return
                    backoff = 1.0
                elif r.status_code == 503 and "retry-after" in r.headers:
                    outcomes["refused_503"] += 1  # a client's usual answer: Retry-After, then exponential backoff
                    await asyncio.sleep(max(float(r.headers["retry-after"]), backoff) * (1 + random.random() / 4))
                    backoff = min(backoff * 2, 30.0)
                else:
                    outcomes["errors"].append(f"HTTP {r.status_code}")

    tasks = [asyncio.create_task(client(i)) for i in range(args.uploads)]
    await stop.wait()
    outcomes["ok_during_live"] = outcomes["ok"]
    # Uploads already admitted finish (no new ones start): an admitted upload must not be lost. Bounded.
    started = time.monotonic()
    _, late = await asyncio.wait(tasks, timeout=UPLOAD_DRAIN_S)
    outcomes["drain_s"] = round(time.monotonic() - started, 1)
    outcomes["unfinished"] = len(late)
    for t in late:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _mixed(args, clips: list[Clip], upload: bytes) -> dict:
    stream_args = argparse.Namespace(url=args.url, silence=1.5, final_timeout=15.0, pid=args.pid)
    alone = await run_streaming(args.streams, stream_args, clips, None, random.Random(0))
    outcomes = {"ok": 0, "refused_503": 0, "errors": []}
    stop = asyncio.Event()
    loaders = asyncio.create_task(_uploads(args, upload, stop, outcomes))
    await asyncio.sleep(3.0)  # the uploads are running when the streams start
    with_uploads = await run_streaming(args.streams, stream_args, clips, None, random.Random(0))
    stop.set()
    await loaders
    a, b = alone["time_to_final_ms"], with_uploads["time_to_final_ms"]
    keep = ("time_to_final_ms", "streaming_wer", "dropped_sessions", "errors", "final_reasons", "forced_commits",
            "where_time_goes")
    return {"live_only": {k: alone[k] for k in keep}, "live_with_uploads": {k: with_uploads[k] for k in keep},
            "ttf_p50_ratio": b["p50"] / a["p50"] if a["p50"] else None,
            "ttf_p95_ratio": b["p95"] / a["p95"] if a["p95"] else None, "uploads": outcomes}


def phase_mixed(args, clips: list[Clip]) -> dict:
    samples, _ = speech_track(clips, 600)
    return asyncio.run(_mixed(args, clips, wav_bytes(samples)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8001")
    p.add_argument("--pid", type=int, required=True, help="the service's pid (its memory is sampled)")
    p.add_argument("--data", default="samples", type=Path)
    p.add_argument("--phases", default="bomb,long,flood,mixed")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--uploads", type=int, default=8)
    p.add_argument("--cache", default="bench-results/cache")
    p.add_argument("--out", default="bench-results/isolation.json", type=Path)
    p.add_argument("--allow-remote", action="store_true")
    args = p.parse_args(argv)
    if not is_loopback_url(args.url) and not args.allow_remote:
        p.error(f"{args.url} is not a loopback URL (use --allow-remote)")
    clips = load_clips(args.data, None)
    report: dict = {"url": args.url, "cpu_count": os.cpu_count(), "phases": {}}
    for phase in args.phases.split(","):
        print(f"{phase}...", file=sys.stderr)
        if phase == "bomb":
            report["phases"][phase] = phase_bomb(args)
        elif phase == "long":
            report["phases"][phase] = phase_long(args, clips)
        elif phase == "flood":
            report["phases"][phase] = phase_flood(args)
        elif phase == "mixed":
            report["phases"][phase] = phase_mixed(args, clips)
        else:
            p.error(f"unknown phase {phase!r}")
        print(json.dumps(report["phases"][phase], indent=2), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
