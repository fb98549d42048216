#!/usr/bin/env python3
"""An echo bot: audio -> ASR stream -> each final -> TTS stream -> a WAV file (or the speakers).

    python examples/simple_pipeline.py speech.wav -o echo.wav
    python examples/simple_pipeline.py              # microphone and speakers, if `sounddevice` is installed

The smallest complete pipeline over the two sockets (through the client library,
``voice_client``, so both ride through a dropped connection), on the embedded defaults:
the file (16-bit WAV, any rate) is streamed to ``WS /v1/stream/asr`` at real
time (``--speed``); every ``final`` transcript is sent to ``WS /v1/stream/tts``
as ``text`` + ``flush``, and the audio that comes back is written to the
output file (or played). At the end of the file it sends ``end`` to both and
waits for their ``closed``. No LLM, no barge-in: see ``with_llm.py`` for those.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from audio_io import SpeakerOut, WavOut, have_sounddevice, microphone_frames, read_wav, wav_frames
from voice_client import (AsrStream, Audio, ConnectionLost, ErrorEvent, Final, Reconnecting, Segment, ServiceError,
                          TtsReady, TtsStream)


async def echo(args: argparse.Namespace) -> int:
    if args.input:
        pcm, rate = read_wav(args.input)
        frames = wav_frames(pcm, rate, speed=args.speed)
    elif have_sounddevice():
        rate, frames = 16000, microphone_frames(16000)
        print("listening on the default microphone; Ctrl-C ends")
    else:
        print("give a WAV file (no microphone: `pip install sounddevice` for one)", file=sys.stderr)
        return 2
    out = WavOut(args.output) if args.output or not have_sounddevice() else SpeakerOut()
    errors = 0
    asr = AsrStream(args.asr_url, sample_rate=rate, api_key=args.api_key)
    tts = TtsStream(args.tts_url, voice=args.voice, api_key=args.api_key)
    try:
        async with asr, tts:
            async def send_audio() -> None:
                async for frame in frames:
                    await asr.send_audio(frame)
                await asr.finish()

            async def transcripts_to_speech() -> None:
                nonlocal errors
                async for event in asr:
                    if isinstance(event, Final) and event.text.strip():
                        print(f"heard ({event.reason}, {event.latency_ms:.0f} ms): {event.text}")
                        await tts.send_text(event.text)
                        await tts.flush()
                    elif isinstance(event, ErrorEvent):
                        errors += 1
                        print(f"ASR error {event.code}: {event.message}", file=sys.stderr)
                    elif isinstance(event, Reconnecting):
                        print(f"ASR reconnecting: {event.reason}", file=sys.stderr)
                await tts.finish()  # speak what is left, then `closed`

            async def speech_out() -> None:
                nonlocal errors
                async for event in tts:
                    if isinstance(event, Audio):
                        await out.play(event.data)
                    elif isinstance(event, TtsReady):
                        out.configure(event.sample_rate, event.encoding)
                    elif isinstance(event, Segment):
                        print(f"speaking: {event.text}")
                    elif isinstance(event, ErrorEvent):
                        errors += 1
                        print(f"TTS error {event.code}: {event.message}", file=sys.stderr)

            sender = asyncio.create_task(send_audio())
            await asyncio.gather(transcripts_to_speech(), speech_out())
            sender.cancel()
    except (ServiceError, ConnectionLost, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    await out.close()
    if isinstance(out, WavOut):
        print(f"wrote {out.path}: {len(out.audio) / 2 / max(1, out.rate_hz):.2f} s")
    return 1 if errors else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="16-bit WAV file (default: the microphone)")
    p.add_argument("-o", "--output", help="WAV file for the echo (default: speakers, or echo.wav)")
    p.add_argument("--speed", type=float, default=1.0, help="pace of the file, x real time; 0 = at once")
    p.add_argument("--asr-url", default="ws://127.0.0.1:8001/v1/stream/asr")
    p.add_argument("--tts-url", default="ws://127.0.0.1:8002/v1/stream/tts")
    p.add_argument("--voice")
    p.add_argument("--api-key", help="key of the speech services, if they require one")
    args = p.parse_args()
    if args.input and not args.output and not have_sounddevice():
        args.output = "echo.wav"
    try:
        return asyncio.run(echo(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
