#!/usr/bin/env python3
"""Speak text through WS /v1/stream/tts and save the audio as a wav file.

    python examples/speak.py "Hello there. How can I help you today?" [-o out.wav]
        [--url ws://127.0.0.1:8002/v1/stream/tts] [--voice ID] [--sample-rate 16000]
        [--word-by-word] [--cancel-after-ms 800] [--api-key KEY]

``--word-by-word`` sends the text a word at a time, as an LLM would produce it.
``--cancel-after-ms`` barges in: it sends ``cancel`` that long after the first audio
and shows that nothing of the cancelled text arrives after ``cancelled``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from urllib.parse import urlencode

import websockets


async def speak(args: argparse.Namespace) -> int:
    query = {k: v for k, v in {"voice": args.voice, "sample_rate": args.sample_rate}.items() if v}
    url = args.url + ("?" + urlencode(query) if query else "")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    audio = bytearray()
    after_cancel = 0
    cancelled_at = None
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            print(f"error: {ready}", file=sys.stderr)
            return 1
        rate = ready["sample_rate"]
        print(f"ready: voice={ready['voice']} rate={rate} encoding={ready['encoding']}")
        started = time.perf_counter()
        if args.word_by_word:
            for word in args.text.split(" "):
                await ws.send(json.dumps({"type": "text", "text": word + " "}))
                await asyncio.sleep(0.06)
        else:
            await ws.send(json.dumps({"type": "text", "text": args.text}))
        if not args.cancel_after_ms:
            await ws.send(json.dumps({"type": "end"}))  # with a barge-in, `end` follows `cancelled`
        first_audio = None
        async for message in ws:
            if isinstance(message, bytes):
                if first_audio is None:
                    first_audio = time.perf_counter() - started
                    print(f"first audio after {first_audio * 1000:.0f} ms")
                if cancelled_at is not None:
                    after_cancel += len(message)
                audio.extend(message)
                if args.cancel_after_ms and cancelled_at is None and time.perf_counter() - started - first_audio > args.cancel_after_ms / 1000:
                    cancelled_at = time.perf_counter()
                    await ws.send(json.dumps({"type": "cancel"}))
                continue
            event = json.loads(message)
            kind = event["type"]
            if kind == "segment":
                print(f"segment {event['index']}: {event['text']}")
            elif kind == "cancelled":
                print(f"cancelled: acknowledged after {(time.perf_counter() - cancelled_at) * 1000:.1f} ms; "
                      f"{after_cancel} bytes of audio after the ack will be counted")
                after_cancel = 0
                await ws.send(json.dumps({"type": "end"}))
            elif kind == "error":
                print(f"error {event['code']}: {event['message']}", file=sys.stderr)
                return 1
            elif kind in ("done", "closed"):
                print(kind)
    if cancelled_at is not None:
        print(f"audio bytes received after 'cancelled': {after_cancel}")
    with wave.open(args.output, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(audio))
    print(f"wrote {args.output}: {len(audio) / 2 / rate:.2f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text")
    parser.add_argument("-o", "--output", default="speech.wav")
    parser.add_argument("--url", default="ws://127.0.0.1:8002/v1/stream/tts")
    parser.add_argument("--voice")
    parser.add_argument("--sample-rate", type=int)
    parser.add_argument("--word-by-word", action="store_true")
    parser.add_argument("--cancel-after-ms", type=float, default=0)
    parser.add_argument("--api-key")
    return asyncio.run(speak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
