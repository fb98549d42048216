#!/usr/bin/env python
"""Benchmark a running TTS service over WS /v1/stream/tts (not a test).

For each concurrency level N, N sessions run at once; each session:
  * speaks whole sentences sent at once (``text`` + ``flush``): time to first audio (from the send),
    real-time factor (time to ``done`` / seconds of audio received);
  * speaks a sentence arriving word by word at LLM pace (``--word-ms``): time to first audio from the
    first word;
  * barges in: a long text, ``cancel`` after its first audio: time to ``cancelled``, and the bytes of
    audio that arrive after ``cancelled`` (must be 0).
Prints JSON and a markdown table.

    scripts/start_tts.sh --port 8002 &
    .venv/bin/python scripts/bench_tts.py --url ws://127.0.0.1:8002 --sessions 1,2,4,8,12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import websockets

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to water the plants before you leave.",
    "Our meeting has been moved to three o'clock on Thursday.",
    "She bought fresh bread and a bottle of milk at the corner shop.",
    "The train was late because of the heavy snow.",
    "Could you send me the report by the end of the day?",
]
LONG = " ".join(["This is a long answer that keeps going, sentence after sentence, so that we can interrupt it."] * 8)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def _until(ws, kind: str, audio: list[int], first: list[float | None]) -> dict:
    while True:
        message = await ws.recv()
        if isinstance(message, bytes):
            audio[0] += len(message)
            if first[0] is None:
                first[0] = time.perf_counter()
            continue
        event = json.loads(message)
        if event["type"] == "error":
            raise RuntimeError(f"server error: {event}")
        if event["type"] == kind:
            return event


async def session(url: str, index: int, sentences: int, word_ms: float) -> dict:
    out = {"ttfa_sentence_ms": [], "rtf": [], "ttfa_llm_ms": [], "cancel_ack_ms": [], "bytes_after_cancel": 0}
    async with websockets.connect(f"{url}/v1/stream/tts", max_size=None) as ws:
        ready = json.loads(await ws.recv())
        bytes_per_s = ready["sample_rate"] * 2
        for k in range(sentences):
            text = SENTENCES[(index + k) % len(SENTENCES)]
            audio, first = [0], [None]
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "text", "text": text}))
            await ws.send(json.dumps({"type": "flush"}))
            await _until(ws, "done", audio, first)
            wall = time.perf_counter() - t0
            out["ttfa_sentence_ms"].append((first[0] - t0) * 1000)
            out["rtf"].append(wall / (audio[0] / bytes_per_s))
        # word by word at LLM pace
        text = SENTENCES[(index + 1) % len(SENTENCES)] + " " + SENTENCES[(index + 2) % len(SENTENCES)]
        audio, first = [0], [None]
        reader = asyncio.ensure_future(_until(ws, "done", audio, first))
        t0 = time.perf_counter()
        for word in text.split():
            await ws.send(json.dumps({"type": "text", "text": word + " "}))
            await asyncio.sleep(word_ms / 1000)
        await ws.send(json.dumps({"type": "flush"}))
        await reader
        out["ttfa_llm_ms"].append((first[0] - t0) * 1000)
        # barge-in
        audio, first = [0], [None]
        await ws.send(json.dumps({"type": "text", "text": LONG}))
        while first[0] is None:
            await _until(ws, "segment", audio, first)
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "cancel"}))
        await _until(ws, "cancelled", audio, first)
        out["cancel_ack_ms"].append((time.perf_counter() - t0) * 1000)
        after, first_after = [0], [None]
        await ws.send(json.dumps({"type": "flush"}))  # nothing buffered: answered with done at once
        await _until(ws, "done", after, first_after)
        await asyncio.sleep(0.3)
        out["bytes_after_cancel"] = after[0]
        await ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(message, bytes):
                    out["bytes_after_cancel"] += len(message)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
    return out


async def level(url: str, n: int, sentences: int, word_ms: float) -> dict:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(session(url, i, sentences, word_ms) for i in range(n)))
    merged = {k: [v for r in results for v in r[k]] for k in ("ttfa_sentence_ms", "rtf", "ttfa_llm_ms", "cancel_ack_ms")}
    per_session_rtf = [statistics.mean(r["rtf"]) for r in results]
    return {
        "sessions": n,
        "ttfa_sentence_p50_ms": pct(merged["ttfa_sentence_ms"], 0.5),
        "ttfa_sentence_p95_ms": pct(merged["ttfa_sentence_ms"], 0.95),
        "ttfa_llm_p50_ms": pct(merged["ttfa_llm_ms"], 0.5),
        "ttfa_llm_p95_ms": pct(merged["ttfa_llm_ms"], 0.95),
        "rtf_p50": pct(merged["rtf"], 0.5),
        "rtf_worst_session": max(per_session_rtf),
        "sessions_faster_than_real_time": sum(r < 1.0 for r in per_session_rtf),
        "cancel_ack_p50_ms": pct(merged["cancel_ack_ms"], 0.5),
        "cancel_ack_max_ms": max(merged["cancel_ack_ms"]),
        "bytes_after_cancel": sum(r["bytes_after_cancel"] for r in results),
        "wall_s": time.perf_counter() - t0,
    }


def table(rows: list[dict]) -> str:
    head = ("| sessions | first audio p50 / p95 (sentence) | first audio p50 / p95 (word by word) | RTF p50 | "
            "worst session RTF | faster than real time | cancel ack p50 / max | bytes after cancelled |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['sessions']} | {r['ttfa_sentence_p50_ms']:.0f} / {r['ttfa_sentence_p95_ms']:.0f} ms "
            f"| {r['ttfa_llm_p50_ms']:.0f} / {r['ttfa_llm_p95_ms']:.0f} ms | {r['rtf_p50']:.3f} "
            f"| {r['rtf_worst_session']:.3f} | {r['sessions_faster_than_real_time']}/{r['sessions']} "
            f"| {r['cancel_ack_p50_ms']:.1f} / {r['cancel_ack_max_ms']:.1f} ms | {r['bytes_after_cancel']} |")
    return "\n".join(lines)


async def main_async(args) -> list[dict]:
    rows = []
    await level(args.url, 1, 1, args.word_ms)  # warm-up
    for n in [int(x) for x in args.sessions.split(",")]:
        rows.append(await level(args.url, n, args.sentences, args.word_ms))
        print(f"N={n} done", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8002")
    parser.add_argument("--sessions", default="1,2,4,8,12")
    parser.add_argument("--sentences", type=int, default=6, help="whole sentences per session")
    parser.add_argument("--word-ms", type=float, default=60.0, help="gap between words (LLM pace)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    blob = json.dumps(rows, indent=2)
    print(blob)
    if args.json:
        with open(args.json, "w") as f:
            f.write(blob)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
