#!/usr/bin/env python3
"""A LiveKit Agents voice agent on our services, through LiveKit's own Deepgram or OpenAI plugins: only the URLs change.

    python -m services.asr & python -m services.tts &           # the services, embedded models
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_MODEL=any   # any OpenAI-compatible LLM (llama.cpp, vLLM, ...)
    python examples/livekit_agent.py dev                         # LiveKit's CLI: dev, start, console, ...
    python examples/livekit_agent.py file --input question.wav --output answer.wav   # no LiveKit server at all

``AgentSession`` gets ``deepgram.STT(base_url=ASR_URL/v1/listen)`` and ``deepgram.TTS(base_url=TTS_URL/v1/speak)``
(``SPEECH_PLUGINS=openai``: ``openai.STT(use_realtime=True)`` on ``ASR_URL/v1/realtime`` and ``openai.TTS`` on
``TTS_URL/v1/audio/speech``), and ``openai.LLM`` on the LLM of your choice. Turns end on the STT's end of speech
(Smart Turn on the ASR service: no VAD or turn-detector plugin is needed in the agent). ``SPEECH_API_KEY`` is the
services' API key when they have ``server.api_keys`` (the plugins send it as ``Authorization: Token``/``Bearer``).
``ASR_URL`` and ``TTS_URL`` default to http://127.0.0.1:8001 and :8002.

``file`` runs the same ``AgentSession`` without a LiveKit server or room: :class:`WavMicrophone` plays the input WAV
into the session as 20 ms ``rtc.AudioFrame``s at real time (then silence), :class:`WavSpeaker` records the agent's
audio as a LiveKit audio output does (reporting each reply played out at once), and the first reply is written to
``--output`` (24 kHz WAV). The plugins run inside ``utils.http_context``, as in an agent job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping

import numpy as np
from livekit import rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, utils
from livekit.agents.voice import io
from livekit.plugins import deepgram, openai

from audio_io import read_wav, write_wav  # examples/audio_io.py (the script's own folder is on sys.path)

INSTRUCTIONS = ("You are a helpful voice assistant. Answer in one to three short spoken sentences, plain text only: "
                "no lists, no markdown, no emoji.")
UNUSED_KEY = "unused"  # the plugins insist on a key; the services ignore it unless they have API keys configured


def build_stt(env: Mapping[str, str]):
    asr_url = (env.get("ASR_URL") or "http://127.0.0.1:8001").rstrip("/")
    key = env.get("SPEECH_API_KEY") or UNUSED_KEY
    if env.get("SPEECH_PLUGINS", "deepgram") == "openai":
        return openai.STT(base_url=f"{asr_url}/v1", api_key=key, use_realtime=True)
    return deepgram.STT(base_url=f"{asr_url}/v1/listen", api_key=key)


def build_tts(env: Mapping[str, str]):
    tts_url = (env.get("TTS_URL") or "http://127.0.0.1:8002").rstrip("/")
    key = env.get("SPEECH_API_KEY") or UNUSED_KEY
    voice = env.get("TTS_VOICE")  # one of the TTS service's voices (GET /v1/voices); default: its default voice
    if env.get("SPEECH_PLUGINS", "deepgram") == "openai":
        return openai.TTS(base_url=f"{tts_url}/v1", api_key=key, response_format="pcm",
                          **({"voice": voice} if voice else {}))
    return deepgram.TTS(base_url=f"{tts_url}/v1/speak", api_key=key, **({"model": voice} if voice else {}))


def build_llm(env: Mapping[str, str]):
    """``LLM_BASE_URL`` / ``LLM_MODEL`` / ``LLM_API_KEY`` (the names examples/with_llm.py uses); OpenAI's own API when
    only ``LLM_API_KEY`` is set."""
    key = env.get("LLM_API_KEY") or UNUSED_KEY
    base = env.get("LLM_BASE_URL") or ("https://api.openai.com/v1" if env.get("LLM_API_KEY") else None)
    if base is None:
        raise SystemExit("set LLM_BASE_URL (and LLM_MODEL, LLM_API_KEY as needed) to an OpenAI-compatible LLM")
    return openai.LLM(base_url=base, model=env.get("LLM_MODEL") or "gpt-4o-mini", api_key=key)


def build_session(env: Mapping[str, str] | None = None) -> AgentSession:
    env = os.environ if env is None else env
    # vad=None: speech starts and turn ends come from the ASR service (its Silero VAD and Smart Turn), so the agent
    # runs no VAD of its own
    return AgentSession(stt=build_stt(env), tts=build_tts(env), llm=build_llm(env), vad=None,
                        turn_handling={"turn_detection": "stt"})


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(instructions=INSTRUCTIONS)


server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session = build_session()
    await session.start(agent=Assistant(), room=ctx.room)
    await session.generate_reply(instructions="Greet the user in one short sentence.")


# -- file mode: the session without LiveKit -------------------------------------------------------------------------


class WavMicrophone(io.AudioInput):
    """A WAV file as the user's microphone: 20 ms frames at real time, then silence until :meth:`stop`."""

    def __init__(self, pcm: bytes, rate_hz: int) -> None:
        super().__init__(label="wav-microphone")
        self.samples = np.frombuffer(pcm, dtype="<i2")
        self.rate_hz = rate_hz
        self.step = rate_hz // 50
        self.position = 0
        self.started: float | None = None
        self.stopped = False

    async def __anext__(self) -> rtc.AudioFrame:
        if self.stopped:
            raise StopAsyncIteration
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self.position / self.rate_hz
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # a microphone's pace: one frame per 20 ms
        chunk = self.samples[self.position:self.position + self.step]
        if len(chunk) < self.step:
            chunk = np.concatenate([chunk, np.zeros(self.step - len(chunk), dtype="<i2")])
        self.position += self.step
        return rtc.AudioFrame(chunk.tobytes(), self.rate_hz, 1, self.step)

    def stop(self) -> None:
        self.stopped = True


class WavSpeaker(io.AudioOutput):
    """Records the agent's audio; a reply counts as played out as soon as it is flushed (no real-time playback)."""

    def __init__(self, rate_hz: int = 24000) -> None:
        super().__init__(label="wav-speaker", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=rate_hz)
        self.rate_hz = rate_hz
        self.replies: list[bytes] = []
        self._current = bytearray()
        self.first_audio_at: float | None = None
        self.reply_done = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self._current += frame.data.tobytes()

    def flush(self) -> None:
        super().flush()
        played_s = len(self._current) / 2 / self.rate_hz
        self.replies.append(bytes(self._current))
        self._current.clear()
        self.on_playback_finished(playback_position=played_s, interrupted=False)
        self.reply_done.set()

    def clear_buffer(self) -> None:
        self._current.clear()


async def run_file(input_path: str, output_path: str, timeout_s: float) -> int:
    pcm, rate = read_wav(input_path)
    async with utils.http_context.open():
        session = build_session()
        microphone, speaker = WavMicrophone(pcm, rate), WavSpeaker()
        session.input.audio, session.output.audio = microphone, speaker
        session.on("user_input_transcribed",
                   lambda ev: ev.is_final and print(f"heard: {ev.transcript}", flush=True))
        session.on("conversation_item_added", lambda ev: getattr(ev.item, "role", None) == "assistant"
                   and print(f"reply: {ev.item.text_content}", flush=True))
        await session.start(agent=Assistant())
        try:
            await asyncio.wait_for(speaker.reply_done.wait(), timeout_s)
        except asyncio.TimeoutError:
            print(f"no reply within {timeout_s:g} s", file=sys.stderr)
            return 1
        finally:
            microphone.stop()
            await session.aclose()
    spoken = microphone.started and speaker.first_audio_at and speaker.first_audio_at - microphone.started
    print(f"first reply audio {spoken:.2f} s after the input began; wrote {output_path}", flush=True)
    write_wav(output_path, speaker.replies[0], speaker.rate_hz)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["file"]:
        parser = argparse.ArgumentParser(description="the agent on a WAV file, without LiveKit")
        parser.add_argument("--input", required=True, help="the user's question (16-bit PCM WAV)")
        parser.add_argument("--output", required=True, help="where to write the agent's first reply")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
        args = parser.parse_args(sys.argv[2:])
        sys.exit(asyncio.run(run_file(args.input, args.output, args.timeout)))
    cli.run_app(server)
