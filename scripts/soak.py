#!/usr/bin/env python
"""Soak test: the rated load against running ASR and TTS instances for a long time (not a test).

For ``--duration-s`` (default 600 s) it keeps ``--asr-sessions`` (default 8) ASR
streams of real speech going at real time (clip after clip, a new connection
per clip, each ended with ``end``; query ``--asr-query``, default
``turn_detection=smart_turn``) and ``--tts-sessions`` (default 4) TTS
conversations (a sentence + ``flush`` per turn, a pause, five turns, then a new
connection). Every ``--sample-s`` seconds it reads each service's resident
memory (VmRSS from /proc/PID/status; the pids are given with ``--asr-pid`` /
``--tts-pid`` or found from the listening port). It reports, as JSON and a
printed summary:

* RSS over time, and RSS growth after warm-up (%): the mean of the samples in
  the minute after ``--warmup-s`` against the mean of the last minute;
* protocol errors: any ``error`` event, close code other than 1000, missing
  ``ready``/``closed``/``done``, or a final out of order;
* latency drift: per minute, the p50 of ASR time-to-final (the finals'
  ``latency_ms``) and of TTS time to first audio (flush sent -> first audio).

The issue's bar: RSS growth <= 5 % after warm-up and zero protocol errors
(``--max-growth-pct``; the exit code is 1 when the bar is missed).

    scripts/start_asr.sh --port 8001 &   scripts/start_tts.sh --port 8002 &
    .venv/bin/python scripts/soak.py --asr-url http://127.0.0.1:8001 --tts-url http://127.0.0.1:8002
    # a one-minute smoke run:
    .venv/bin/python scripts/soak.py --duration-s 60 --warmup-s 20 --sample-s 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import websockets
from benchlib import RATE, rss_mb

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = [ROOT / "tests" / "data" / "asr", ROOT / "samples"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to water the plants before you leave.",
    "Our meeting has been moved to three o'clock on Thursday.",
    "She bought fresh bread and a bottle of milk at the corner shop.",
    "Could you send me the report by the end of the day?",
    "Thank you for calling, how can I help you today?",
]
FRAME_MS = 20


# -- what we measure -------------------------------------------------------------------------------

@dataclass
class Record:
    started: float
    asr_latency: list[tuple[float, float]] = field(default_factory=list)  # (t, ms)
    tts_first_audio: list[tuple[float, float]] = field(default_factory=list)  # (t, ms)
    errors: list[dict] = field(default_factory=list)
    rss: list[dict] = field(default_factory=list)
    asr_clips: int = 0
    asr_finals: int = 0
    asr_audio_s: float = 0.0
    tts_turns: int = 0
    tts_audio_bytes: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def error(self, service: str, what: str, **detail) -> None:
        self.errors.append({"t": round(self.now(), 1), "service": service, "what": what, **detail})


# -- process memory ----------------------------------------------------------------------------------

def pid_listening_on(port: int) -> int | None:
    """The pid of the process listening on a local TCP port (psutil; root sees every process)."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


async def sample_rss(record: Record, pids: dict[str, int], every_s: float, until: float) -> None:
    while time.monotonic() < until:
        sample = {"t": round(record.now(), 1)}
        for name, pid in pids.items():
            value = rss_mb(pid)
            sample[name] = None if value is None else round(value, 1)
            if value is None:
                record.error(name, "process gone", pid=pid)
        record.rss.append(sample)
        await asyncio.sleep(every_s)


# -- load ----------------------------------------------------------------------------------------------

def load_clips(dirs: list[Path]) -> list[bytes]:
    clips = []
    for d in dirs:
        for path in sorted(d.glob("*.wav")) if d.is_dir() else []:
            with wave.open(str(path)) as w:
                if w.getframerate() != RATE or w.getsampwidth() != 2:
                    continue
                samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
                if w.getnchannels() > 1:
                    samples = samples.reshape(-1, w.getnchannels()).mean(axis=1).astype("<i2")
            if samples.size >= RATE:
                clips.append(samples.tobytes())
    return clips


def ws_base(http_url: str) -> str:
    parts = urlsplit(http_url)
    return ("wss" if parts.scheme == "https" else "ws") + "://" + parts.netloc


async def asr_stream(record: Record, url: str, clip: bytes, headers: dict) -> None:
    audio = clip + bytes(RATE * 2)  # 1 s of silence: the turn ends before `end`
    frame = RATE * 2 * FRAME_MS // 1000
    events: list[dict] = []
    async with websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        async def receive() -> None:
            async for message in ws:
                if isinstance(message, str):
                    event = json.loads(message)
                    events.append(event)
                    if event["type"] == "final":
                        record.asr_latency.append((record.now(), float(event["latency_ms"])))
                        record.asr_finals += 1
                    elif event["type"] == "error":
                        record.error("asr", "error event", event=event)

        reader = asyncio.create_task(receive())
        start = time.monotonic()
        try:
            for i in range(0, len(audio), frame):
                await ws.send(audio[i:i + frame])
                ahead = start + (i + frame) / (RATE * 2) - time.monotonic()  # real time, no drift
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(reader, 60)
        except websockets.ConnectionClosed:
            pass
        code = ws.close_code
    record.asr_clips += 1
    record.asr_audio_s += len(clip) / (RATE * 2)
    finals = [e["utterance"] for e in events if e["type"] == "final"]
    if not events or events[0]["type"] != "ready":
        record.error("asr", "no ready event", first=events[:1])
    if events and events[-1] != {"type": "closed"}:
        record.error("asr", "did not end with closed", last=events[-1:])
    if code != 1000:
        record.error("asr", "close code", code=code)
    if finals != list(range(len(finals))) or not finals:
        record.error("asr", "finals missing or out of order", utterances=finals)


async def asr_worker(record: Record, url: str, clips: list[bytes], until: float, headers: dict, offset: int) -> None:
    for clip in itertools.islice(itertools.cycle(clips), offset, None):
        if time.monotonic() + len(clip) / (RATE * 2) + 2 > until:
            return
        try:
            await asr_stream(record, url, clip, headers)
        except Exception as exc:  # noqa: BLE001 - counted, and the soak goes on
            record.error("asr", "connection failed", exc=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1)


async def tts_conversation(record: Record, url: str, rng: random.Random, until: float, headers: dict,
                           turns: int = 5) -> None:
    async with websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            record.error("tts", "no ready event", first=ready)
            return
        for _ in range(turns):
            if time.monotonic() + 10 > until:
                break
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "text", "text": rng.choice(SENTENCES)}))
            await ws.send(json.dumps({"type": "flush"}))
            first = None
            while True:
                message = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(message, bytes):
                    record.tts_audio_bytes += len(message)
                    if first is None:
                        first = time.monotonic()
                        record.tts_first_audio.append((record.now(), (first - sent) * 1000))
                    continue
                event = json.loads(message)
                if event["type"] == "error":
                    record.error("tts", "error event", event=event)
                    return
                if event["type"] == "done":
                    break
            if first is None:
                record.error("tts", "done without audio")
            record.tts_turns += 1
            await asyncio.sleep(1.0 + rng.random())  # the caller speaks
        await ws.send(json.dumps({"type": "end"}))
        rest = []
        async for message in ws:
            if isinstance(message, str):
                rest.append(json.loads(message))
        if not rest or rest[-1] != {"type": "closed"} or ws.close_code != 1000:
            record.error("tts", "did not end with closed/1000", last=rest[-1:], code=ws.close_code)


async def tts_worker(record: Record, url: str, until: float, headers: dict, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() + 10 < until:
        try:
            await tts_conversation(record, url, rng, until, headers)
        except Exception as exc:  # noqa: BLE001 - counted, and the soak goes on
            record.error("tts", "connection failed", exc=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1)


# -- the report -------------------------------------------------------------------------------------

def per_minute_p50(points: list[tuple[float, float]], warmup_s: float) -> list[dict]:
    buckets: dict[int, list[float]] = {}
    for t, ms in points:
        buckets.setdefault(int(t // 60), []).append(ms)
    return [{"minute": m, "after_warmup": m * 60 >= warmup_s, "n": len(v), "p50_ms": round(statistics.median(v), 1)}
            for m, v in sorted(buckets.items())]


def growth(rss: list[dict], name: str, warmup_s: float, window_s: float) -> dict:
    series = [(s["t"], s[name]) for s in rss if s.get(name) is not None]
    if not series:
        return {}
    after = [v for t, v in series if warmup_s <= t < warmup_s + window_s]
    end_t = series[-1][0]
    last = [v for t, v in series if t >= max(warmup_s + window_s, end_t - window_s)]
    out = {"start_mb": series[0][1], "max_mb": max(v for _, v in series), "end_mb": series[-1][1]}
    if after and last:
        warm, final = statistics.fmean(after), statistics.fmean(last)
        out.update(warm_mb=round(warm, 1), final_mb=round(final, 1), growth_pct=round((final - warm) / warm * 100, 2))
    return out


def drift(minutes: list[dict]) -> float | None:
    after = [m for m in minutes if m["after_warmup"] and m["n"] >= 3]
    if len(after) < 2:
        return None
    return round(after[-1]["p50_ms"] / after[0]["p50_ms"], 3) if after[0]["p50_ms"] else None


def report(record: Record, args, pids: dict[str, int]) -> dict:
    window = min(60.0, max(args.sample_s * 3, (args.duration_s - args.warmup_s) / 3))
    asr_minutes = per_minute_p50(record.asr_latency, args.warmup_s)
    tts_minutes = per_minute_p50(record.tts_first_audio, args.warmup_s)
    memory = {name: growth(record.rss, name, args.warmup_s, window) for name in pids}
    worst = max((m.get("growth_pct", 0.0) for m in memory.values()), default=0.0)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "api_key"},
        "pids": pids,
        "counts": {"asr_clips": record.asr_clips, "asr_finals": record.asr_finals,
                   "asr_audio_s": round(record.asr_audio_s, 1), "tts_turns": record.tts_turns,
                   "tts_audio_mb": round(record.tts_audio_bytes / 1e6, 1)},
        "memory": memory,
        "protocol_errors": len(record.errors),
        "errors": record.errors[:50],
        "latency": {"asr_time_to_final": asr_minutes, "asr_drift_last_over_first": drift(asr_minutes),
                    "tts_first_audio": tts_minutes, "tts_drift_last_over_first": drift(tts_minutes)},
        "rss_mb": record.rss,
        "pass": not record.errors and worst <= args.max_growth_pct,
    }


def summary(rep: dict) -> str:
    lines = [f"soak: {rep['config']['duration_s']:g} s, {rep['config']['asr_sessions']} ASR streams + "
             f"{rep['config']['tts_sessions']} TTS sessions; {rep['counts']}"]
    for name, m in rep["memory"].items():
        lines.append(f"  {name} RSS: start {m.get('start_mb')} MB, after warm-up {m.get('warm_mb')} MB, "
                     f"end {m.get('final_mb')} MB, max {m.get('max_mb')} MB -> growth {m.get('growth_pct')} %")
    for key, label in (("asr_time_to_final", "ASR time-to-final p50/min"), ("tts_first_audio", "TTS first audio p50/min")):
        per_min = ", ".join(f"{m['p50_ms']:.0f}" for m in rep["latency"][key])
        lines.append(f"  {label} (ms): {per_min or '-'}")
    lines.append(f"  drift (last/first minute after warm-up): ASR {rep['latency']['asr_drift_last_over_first']}, "
                 f"TTS {rep['latency']['tts_drift_last_over_first']}")
    lines.append(f"  protocol errors: {rep['protocol_errors']}")
    for err in rep["errors"][:5]:
        lines.append(f"    {err}")
    lines.append("PASS" if rep["pass"] else "FAIL")
    return "\n".join(lines)


async def soak(args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    pids: dict[str, int] = {}
    for name, url, pid in (("asr", args.asr_url, args.asr_pid), ("tts", args.tts_url, args.tts_pid)):
        if not url:
            continue
        pid = pid or pid_listening_on(urlsplit(url).port or 80)
        if pid is None:
            raise SystemExit(f"soak: cannot find the {name} process listening on {url}; pass --{name}-pid")
        pids[name] = pid
    clips = load_clips([Path(p) for p in args.clips] if args.clips else DEFAULT_CLIPS)
    if args.asr_url and not clips:
        raise SystemExit("soak: no 16 kHz 16-bit wav clips found (--clips DIR)")
    record = Record(started=time.monotonic())
    until = record.started + args.duration_s
    tasks = [asyncio.create_task(sample_rss(record, pids, args.sample_s, until))]
    if args.asr_url:
        url = ws_base(args.asr_url) + "/v1/stream/asr?" + args.asr_query
        tasks += [asyncio.create_task(asr_worker(record, url, clips, until, headers, offset=i * 3))
                  for i in range(args.asr_sessions)]
    if args.tts_url:
        url = ws_base(args.tts_url) + "/v1/stream/tts"
        tasks += [asyncio.create_task(tts_worker(record, url, until, headers, seed=i))
                  for i in range(args.tts_sessions)]
    await asyncio.gather(*tasks)
    return report(record, args, pids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-url", default="http://127.0.0.1:8001", help="'' to leave ASR out")
    p.add_argument("--tts-url", default="http://127.0.0.1:8002", help="'' to leave TTS out")
    p.add_argument("--asr-pid", type=int, help="default: the process listening on the ASR port")
    p.add_argument("--tts-pid", type=int, help="default: the process listening on the TTS port")
    p.add_argument("--asr-sessions", type=int, default=8)
    p.add_argument("--asr-query", default="turn_detection=smart_turn",
                   help="query string of the ASR streams (e.g. 'turn_detection=vad&partials=false')")
    p.add_argument("--tts-sessions", type=int, default=4)
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--warmup-s", type=float, default=120.0, help="RSS growth is measured from here")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--clips", nargs="*", help="dirs of 16 kHz wav clips (default: tests/data/asr, samples)")
    p.add_argument("--api-key", default=os.environ.get("VOICE_API_KEY"), help="when the services require keys")
    p.add_argument("--max-growth-pct", type=float, default=5.0)
    p.add_argument("--out", help="JSON report path (default: bench-results/soak-<time>.json)")
    args = p.parse_args(argv)
    if args.warmup_s >= args.duration_s:
        p.error("--warmup-s must be shorter than --duration-s")
    rep = asyncio.run(soak(args))
    out = Path(args.out) if args.out else ROOT / "bench-results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    print(summary(rep))
    print(f"report: {out}")
    return 0 if rep["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
