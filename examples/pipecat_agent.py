#!/usr/bin/env python3
"""A Pipecat voice agent on our services: Pipecat's own Deepgram STT, and our TTS with word timestamps.

    python -m services.asr & python -m services.tts &          # the services, embedded models
    export LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_MODEL=any  # optional: any OpenAI-compatible LLM
    python examples/pipecat_agent.py --input question.wav --output answer.wav

The pipeline is ``DeepgramSTTService -> Replier -> VoiceTTSService -> recorder``, with
``base_url="ws://127.0.0.1:8001"`` and ``"ws://127.0.0.1:8002"``: the STT is the service an agent
written for Deepgram's cloud uses, pointed at ``/v1/listen`` here; the TTS (``pipecat_tts.py``)
speaks on the native ``/v1/stream/tts`` with word timings, so Pipecat pushes each word as a
``TTSTextFrame`` when it is played and, at a barge-in, the assistant's context keeps only the words
the user heard (``--deepgram-tts`` uses Pipecat's own ``DeepgramTTSService`` on ``/v1/speak``
instead, which has no word timings: the context then keeps the whole reply). No audio
hardware is needed: the input WAV is played into the pipeline at real time as 20 ms frames,
bracketed by the VAD start and stop frames a Pipecat transport's local VAD would send (the stop
makes Deepgram's service send ``Finalize``), and the reply's audio is written to ``--output``.
The replier streams the answer of an OpenAI-compatible LLM (``LLM_BASE_URL``, ``LLM_MODEL``,
``LLM_API_KEY``, as for ``with_llm.py``) into the TTS as LLM text frames, so speech starts with
the first sentence; with no LLM configured it echoes what it heard.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import wave

from agent import History, make_replier  # examples/agent.py (the script's own folder is on sys.path)
from audio_io import read_wav
from pipecat.frames.frames import (EndFrame, Frame, InputAudioRawFrame, LLMFullResponseEndFrame,
                                   LLMFullResponseStartFrame, LLMTextFrame, TranscriptionFrame, TTSAudioRawFrame,
                                   TTSStoppedFrame, TTSTextFrame, VADUserStartedSpeakingFrame,
                                   VADUserStoppedSpeakingFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.workers.runner import WorkerRunner
from pipecat_tts import VoiceTTSService  # examples/pipecat_tts.py

FRAME_MS = 20
OUT_RATE_HZ = 24000


class Replier(FrameProcessor):
    """A final transcript in, the reply out as the frames an LLM service emits (start, text deltas, end)."""

    def __init__(self) -> None:
        super().__init__()
        self.replier = make_replier(log=lambda line: print(line, flush=True))
        self.history = History()
        self.replies: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and frame.text.strip():
            print(f"heard: {frame.text}", flush=True)
            self.history.add("user", frame.text)
            await self.push_frame(LLMFullResponseStartFrame())
            reply = []
            async for delta in self.replier.reply(self.history):
                reply.append(delta)
                await self.push_frame(LLMTextFrame(delta))
            await self.push_frame(LLMFullResponseEndFrame())
            self.history.add("assistant", "".join(reply))
            self.replies.append("".join(reply).strip())
            print(f"reply: {self.replies[-1]}", flush=True)


class Recorder(FrameProcessor):
    """Keeps the reply's audio and the words the TTS timed; notes when the first audio and the end of each reply
    arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()
        self.words: list[str] = []
        self.first_audio_at: float | None = None
        self.replies_spoken = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if self.first_audio_at is None:
                self.first_audio_at = time.monotonic()
            self.audio += frame.audio
        elif isinstance(frame, TTSTextFrame):
            self.words.append(frame.text)  # a word, pushed with the time it is played at (its pts)
        elif isinstance(frame, TTSStoppedFrame):
            self.replies_spoken += 1
        await self.push_frame(frame, direction)


async def run(args: argparse.Namespace) -> int:
    pcm, rate = read_wav(args.input)
    stt = DeepgramSTTService(api_key=args.api_key, base_url=args.asr_url, sample_rate=rate)
    if args.deepgram_tts:
        tts = DeepgramTTSService(api_key=args.api_key, base_url=args.tts_url, sample_rate=OUT_RATE_HZ)
    else:
        api_key = None if args.api_key == "none" else args.api_key
        tts = VoiceTTSService(base_url=args.tts_url, api_key=api_key, sample_rate=OUT_RATE_HZ)
    replier, recorder = Replier(), Recorder()
    worker = PipelineWorker(Pipeline([stt, replier, tts, recorder]), cancel_on_idle_timeout=False,
                            params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=OUT_RATE_HZ))
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)  # the services connect in setup, before the first frame

    step = rate * FRAME_MS // 1000 * 2
    await worker.queue_frame(VADUserStartedSpeakingFrame())
    for i in range(0, len(pcm), step):
        await worker.queue_frame(InputAudioRawFrame(audio=pcm[i:i + step], sample_rate=rate, num_channels=1))
        if args.speed > 0:
            await asyncio.sleep(FRAME_MS / 1000 / args.speed)
    stopped_at = time.monotonic()
    await worker.queue_frame(VADUserStoppedSpeakingFrame())  # Pipecat's Deepgram service sends Finalize
    deadline = stopped_at + args.timeout_s
    while recorder.replies_spoken < 1 and time.monotonic() < deadline:
        await worker.queue_frame(InputAudioRawFrame(audio=bytes(step), sample_rate=rate, num_channels=1))
        await asyncio.sleep(FRAME_MS / 1000)
    await worker.queue_frame(EndFrame())
    await running
    if not recorder.audio:
        print("no reply audio arrived (is the ASR hearing speech, and are both services up?)", file=sys.stderr)
        return 1
    first_ms = (recorder.first_audio_at - stopped_at) * 1000 if recorder.first_audio_at else float("nan")
    print(f"first reply audio {first_ms:.0f} ms after the end of the input; "
          f"{len(recorder.audio) / 2 / OUT_RATE_HZ:.1f} s of speech", flush=True)
    if recorder.words:
        print(f"timed words: {' '.join(recorder.words)}", flush=True)
    if args.output:
        with wave.open(str(args.output), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(OUT_RATE_HZ)
            w.writeframes(bytes(recorder.audio))
        print(f"wrote {args.output}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a 16-bit PCM WAV file with the user's speech")
    parser.add_argument("--output", help="where to write the reply (WAV, 24 kHz)")
    parser.add_argument("--asr-url", default="ws://127.0.0.1:8001", help="the ASR service (Deepgram base_url)")
    parser.add_argument("--tts-url", default="ws://127.0.0.1:8002", help="the TTS service (base URL)")
    parser.add_argument("--deepgram-tts", action="store_true",
                        help="speak through Pipecat's DeepgramTTSService on /v1/speak (no word timestamps)")
    parser.add_argument("--api-key", default="none", help="the services' API key, if they require one")
    parser.add_argument("--speed", type=float, default=1.0, help="input pace, x real time (0: as fast as possible)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="how long to wait for the spoken reply")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
