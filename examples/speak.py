#!/usr/bin/env python3
"""Speak text through WS /v1/stream/tts (with the client library, voice_client) and save the audio as a wav file.

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
import sys
import time
import wave

from voice_client import (Audio, Cancelled, Closed, ConnectionLost, Done, ErrorEvent, Reconnecting, Resumed, Segment,
                          ServiceError, TtsReady, TtsStream)


async def speak(args: argparse.Namespace) -> int:
    audio = bytearray()
    after_cancel = 0
    cancelled_at = None
    rate = 0
    stream = TtsStream(args.url, voice=args.voice, sample_rate=args.sample_rate, api_key=args.api_key)
    try:
        async with stream:
            started = time.perf_counter()
            if args.word_by_word:
                for word in args.text.split(" "):
                    await stream.send_text(word + " ")
                    await asyncio.sleep(0.06)  # the pace of an LLM's tokens
            else:
                await stream.send_text(args.text)
            if not args.cancel_after_ms:
                await stream.finish()  # with a barge-in, `end` follows `cancelled`
            first_audio = None
            async for event in stream:
                if isinstance(event, Audio):
                    if first_audio is None:
                        first_audio = time.perf_counter() - started
                        print(f"first audio after {first_audio * 1000:.0f} ms")
                    if cancelled_at is not None:
                        after_cancel += len(event.data)
                    audio.extend(event.data)
                    if (args.cancel_after_ms and cancelled_at is None
                            and time.perf_counter() - started - first_audio > args.cancel_after_ms / 1000):
                        cancelled_at = time.perf_counter()
                        await stream.cancel()
                elif isinstance(event, TtsReady):
                    rate = event.sample_rate
                    print(f"ready: voice={event.voice} rate={rate} encoding={event.encoding}")
                elif isinstance(event, Segment):
                    print(f"segment {event.index}: {event.text}")
                elif isinstance(event, Cancelled):
                    print(f"cancelled: acknowledged after {(time.perf_counter() - cancelled_at) * 1000:.1f} ms; "
                          f"{after_cancel} bytes of audio after the ack will be counted")
                    after_cancel = 0
                    await stream.finish()
                elif isinstance(event, ErrorEvent):
                    print(f"warning {event.code}: {event.message}", file=sys.stderr)
                elif isinstance(event, Reconnecting):
                    print(f"reconnecting (attempt {event.attempt}): {event.reason}")
                elif isinstance(event, Resumed):
                    print(f"resumed from segment {event.segment}" + (" (it starts again)" if event.restarted else ""))
                elif isinstance(event, (Done, Closed)):
                    print(event.type)
    except (ServiceError, ConnectionLost, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
