#!/usr/bin/env python3
"""What a dropped connection costs a live ASR stream that resumes by replay (no server state).

Streams two sentences of real speech (tests/data/asr: quilter.wav, half a second
of silence, wizard.wav) at real time through the client library and a TCP proxy
to a running ASR service, ``--runs`` times undisturbed and ``--runs`` times with
every connection cut in the middle of the second sentence (at its first
partial). For each cut run it records the outage (drop to ``resumed``), the
audio replayed, and how much later the second sentence's final arrived than in
the undisturbed runs: that delay is all a server-side grace period (holding the
session so a reconnect needs no replay) could save. Prints one JSON object.

    python scripts/measure_replay.py --url ws://127.0.0.1:8001/v1/stream/asr --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import wave
from pathlib import Path
from urllib.parse import urlsplit

from cut_proxy import CutProxy
from voice_client import AsrStream, Final, Partial, ResumePolicy, Resumed

ROOT = Path(__file__).resolve().parents[1]


def two_sentences() -> bytes:
    parts = []
    for name in ("quilter.wav", "wizard.wav"):
        with wave.open(str(ROOT / "tests" / "data" / "asr" / name)) as w:
            parts.append(w.readframes(w.getnframes()))
    return parts[0] + bytes(16000) + parts[1]


async def run_once(url: str, pcm: bytes, cut: bool) -> dict:
    port = urlsplit(url).port or 80
    async with CutProxy(port) as proxy:
        path = urlsplit(url).path
        stream = AsrStream(f"{proxy.ws}{path}", resume=ResumePolicy(base_delay_s=0.1))
        loop = asyncio.get_running_loop()
        result: dict = {}
        async with stream:
            start = loop.time()

            async def feed() -> None:
                for i, offset in enumerate(range(0, len(pcm), 640)):
                    await stream.send_audio(pcm[offset:offset + 640])
                    await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
                await stream.finish()

            sender = asyncio.create_task(feed())
            finals = 0
            async for event in stream:
                now = loop.time() - start
                if cut and not proxy.cuts and finals and isinstance(event, Partial):
                    proxy.cut()
                    result["drop_s"] = now
                elif isinstance(event, Resumed):
                    result.update(resumed_s=now, replay_s=event.replay_s)
                elif isinstance(event, Final):
                    finals += 1
                    if finals == 2:
                        result["second_final_s"] = now
                        result["text"] = event.text
            await sender
    return result


async def main(args: argparse.Namespace) -> dict:
    pcm = two_sentences()
    plain = [await run_once(args.url, pcm, False) for _ in range(args.runs)]
    cut = [await run_once(args.url, pcm, True) for _ in range(args.runs)]
    baseline = statistics.median(r["second_final_s"] for r in plain)
    delays = [r["second_final_s"] - baseline for r in cut]
    outages = [r["resumed_s"] - r["drop_s"] for r in cut]
    return {
        "runs": args.runs,
        "undisturbed_second_final_s": [round(r["second_final_s"], 3) for r in plain],
        "cut_second_final_s": [round(r["second_final_s"], 3) for r in cut],
        "replay_s": [r["replay_s"] for r in cut],
        "outage_s_median": round(statistics.median(outages), 3),
        "extra_delay_s_median": round(statistics.median(delays), 3),
        "extra_delay_s_max": round(max(delays), 3),
        "same_text": all(r.get("text") == plain[0].get("text") for r in cut),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8001/v1/stream/asr")
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
