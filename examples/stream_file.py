"""Stream a WAV file to the ASR service through the client library and print what it hears.

It reads a 16-bit PCM WAV file (any sample rate, mono or stereo; stereo is
downmixed), sends it in 20 ms frames at the file's own rate through
``voice_client.AsrStream``, paced at ``--speed`` times real time (0 = as fast
as possible), and prints the events as they arrive: ``ready``,
``speech_start``, partials (rewritten in place on a terminal), finals with
their reason and latency, and the library's ``reconnecting``/``resumed`` when
the connection drops and the stream resumes. At the end of the file it sends
``end`` and waits for ``closed``.

With ``--json`` it prints each final event as one JSON line on stdout (the
event's own fields: ``utterance``, ``text``, ``start``, ``end``, ``reason``,
``words``, ``latency_ms``) and nothing else there; the rest goes to stderr.

    python examples/stream_file.py speech.wav
    python examples/stream_file.py --json speech.wav --url ws://127.0.0.1:8080/v1/stream/asr

Exit status: 0 when the session ended cleanly (whatever reconnects it took),
1 if the server reported a fatal error or the stream could not be resumed, 2
on bad arguments or an unreadable file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave

from audio_io import read_wav  # examples/audio_io.py (the script's own folder is on sys.path)
from voice_client import (AsrStream, ConnectionLost, ErrorEvent, Final, Partial, Ready, Reconnecting, ResumePolicy,
                          Resumed, ServiceError, SpeechStart)

FRAME_S = 0.020


class Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty() and not as_json

    def info(self, line: str, partial: bool = False) -> None:
        """A human line: stdout normally, stderr with --json; on a terminal a partial overwrites the last one."""
        if self.as_json:
            print(line, file=sys.stderr, flush=True)
        elif self.tty:
            sys.stdout.write("\r\x1b[K" + line + ("" if partial else "\n"))
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def final(self, ev: Final) -> None:
        if self.as_json:
            print(json.dumps(ev.as_dict(), ensure_ascii=False), flush=True)
        else:
            self.info(f"[{ev.utterance}] FINAL {ev.start:.2f}-{ev.end:.2f}s ({ev.reason}, {ev.latency_ms:.0f} ms): "
                      f"{ev.text}")


async def send_file(stream: AsrStream, pcm: bytes, rate: int, speed: float) -> None:
    step = int(rate * FRAME_S) * 2  # bytes per 20 ms frame
    start = time.monotonic()
    for i, off in enumerate(range(0, len(pcm), step)):
        await stream.send_audio(pcm[off:off + step])
        if speed > 0:
            delay = start + (i + 1) * FRAME_S / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await stream.finish()


async def receive(stream: AsrStream, out: Printer) -> None:
    async for ev in stream:
        if isinstance(ev, Ready):
            out.info(f"ready: session {ev.session_id} model={ev.model} rate={ev.sample_rate} language={ev.language}")
        elif isinstance(ev, SpeechStart):
            out.info(f"[{ev.utterance}] speech_start at {ev.t:.2f}s")
        elif isinstance(ev, Partial):
            out.info(f"[{ev.utterance}] ... {ev.text}", partial=out.tty)
        elif isinstance(ev, Final):
            out.final(ev)
        elif isinstance(ev, ErrorEvent):
            out.info(f"warning {ev.code}: {ev.message}")
        elif isinstance(ev, Reconnecting):
            out.info(f"reconnecting (attempt {ev.attempt}, in {ev.delay_s:.2f} s): {ev.reason}")
        elif isinstance(ev, Resumed):
            out.info(f"resumed at {ev.at_s:.2f}s, utterance {ev.utterance}, replaying {ev.replay_s:.2f} s "
                     f"(after {ev.outage_s:.2f} s)")
    out.info("closed")


async def run(args: argparse.Namespace) -> int:
    out = Printer(args.json)
    try:
        pcm, rate = read_wav(args.file)
    except (OSError, wave.Error, ValueError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    policy = ResumePolicy(max_attempts=args.max_attempts)
    stream = AsrStream(args.url, sample_rate=rate, turn_detection=args.turn_detection, api_key=args.api_key,
                       resume=policy)
    audio_s = len(pcm) / 2 / rate
    budget = (audio_s / args.speed if args.speed > 0 else 0) + args.timeout
    try:
        async with stream:
            sender = asyncio.create_task(send_file(stream, pcm, rate, args.speed))
            try:
                await asyncio.wait_for(receive(stream, out), budget)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    except ServiceError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ConnectionLost as exc:
        print(f"connection lost: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"timed out after {budget:.0f} s without 'closed'", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"connection failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="16-bit PCM WAV file (mono or stereo, any rate)")
    p.add_argument("--url", default="ws://127.0.0.1:8001/v1/stream/asr")
    p.add_argument("--json", action="store_true", help="print each final as one JSON line on stdout, nothing else")
    p.add_argument("--speed", type=float, default=1.0, help="pace x real time; 0 = as fast as possible")
    p.add_argument("--turn-detection", default="smart_turn", choices=["smart_turn", "vad", "none"])
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--max-attempts", type=int, default=8, help="reconnect attempts after a drop before giving up")
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
