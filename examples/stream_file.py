"""Stream a WAV file to the ASR service and print what it hears.

A minimal client for ``WS /v1/stream/asr`` (see the ASR part of the API
contract). It reads a 16-bit PCM WAV file (any sample rate, mono or stereo;
stereo is downmixed), sends it in 20 ms frames at the file's own rate, paced
at ``--speed`` times real time (0 = as fast as possible), and prints the
events as they arrive: ``ready``, ``speech_start``, partials (rewritten in
place on a terminal) and finals with their reason and latency. At the end of
the file it sends ``{"type":"end"}`` and waits for ``closed``.

    python examples/stream_file.py speech.wav
    python examples/stream_file.py speech.wav --speed 0 --turn-detection vad

Exit status: 0 on a clean session, 1 if the server sent an ``error`` event or
the connection ended before ``closed``, 2 on bad arguments or an unreadable file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
import wave

from audio_io import read_wav  # examples/audio_io.py (the script's own folder is on sys.path)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FRAME_S = 0.020
TTY = sys.stdout.isatty()


def show(line: str, partial: bool = False) -> None:
    """Print one line; on a terminal a partial overwrites the previous partial."""
    if TTY:
        sys.stdout.write("\r\x1b[K" + line + ("" if partial else "\n"))
        sys.stdout.flush()
    else:
        print(line, flush=True)


async def send_audio(ws, pcm: bytes, rate: int, speed: float) -> None:
    step = int(rate * FRAME_S) * 2  # bytes per 20 ms frame
    start = time.monotonic()
    for i, off in enumerate(range(0, len(pcm), step)):
        await ws.send(pcm[off:off + step])
        if speed > 0:
            delay = start + (i + 1) * FRAME_S / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await ws.send(json.dumps({"type": "end"}))


async def receive(ws) -> int:
    """Print events until ``closed``; return the exit status."""
    status = 0
    async for message in ws:
        if isinstance(message, bytes):
            continue
        ev = json.loads(message)
        kind = ev.get("type")
        if kind == "ready":
            show(f"ready: session {ev.get('session_id')} model={ev.get('model')} "
                 f"rate={ev.get('sample_rate')} language={ev.get('language')}")
        elif kind == "speech_start":
            show(f"[{ev.get('utterance')}] speech_start at {ev.get('t', 0):.2f}s")
        elif kind == "partial":
            show(f"[{ev.get('utterance')}] ... {ev.get('text', '')}", partial=TTY)
        elif kind == "final":
            show(f"[{ev.get('utterance')}] FINAL {ev.get('start', 0):.2f}-{ev.get('end', 0):.2f}s "
                 f"({ev.get('reason')}, {ev.get('latency_ms', 0):.0f} ms): {ev.get('text', '')}")
        elif kind == "error":
            show(f"error {ev.get('code')}: {ev.get('message')}")
            status = 1
        elif kind == "closed":
            show("closed")
            return status
    show(f"connection closed before 'closed' (code {ws.close_code})")
    return 1


async def run(args: argparse.Namespace) -> int:
    try:
        pcm, rate = read_wav(args.file)
    except (OSError, wave.Error, ValueError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    query = {"sample_rate": rate, "encoding": "pcm_s16le", "turn_detection": args.turn_detection}
    url = f"{args.url}?{urllib.parse.urlencode(query)}"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    try:
        async with connect(url, additional_headers=headers, proxy=None, open_timeout=15) as ws:
            sender = asyncio.create_task(send_audio(ws, pcm, rate, args.speed))
            audio_s = len(pcm) / 2 / rate
            budget = (audio_s / args.speed if args.speed > 0 else 0) + args.timeout
            try:
                status = await asyncio.wait_for(receive(ws), budget)
            except TimeoutError:
                show(f"timed out after {budget:.0f} s without 'closed'")
                status = 1
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionClosed):
                pass
            return status
    except InvalidStatus as exc:
        print(f"handshake refused: HTTP {exc.response.status_code}", file=sys.stderr)
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        print(f"connection failed: {exc!r}", file=sys.stderr)
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="16-bit PCM WAV file (mono or stereo, any rate)")
    p.add_argument("--url", default="ws://127.0.0.1:8001/v1/stream/asr")
    p.add_argument("--speed", type=float, default=1.0, help="pace x real time; 0 = as fast as possible")
    p.add_argument("--turn-detection", default="smart_turn", choices=["smart_turn", "vad", "none"])
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait after the audio for 'closed'")
    args = p.parse_args()
    if args.speed < 0:
        p.error("--speed must be >= 0")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
