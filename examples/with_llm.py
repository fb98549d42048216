#!/usr/bin/env python3
"""A voice agent: your speech -> ASR -> an OpenAI-compatible LLM (streamed) -> TTS -> audio, with barge-in.

    # an LLM (llama.cpp server, vLLM, Ollama, OpenAI: see INTEGRATION.md)
    export LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_MODEL=any LLM_API_KEY=
    python examples/with_llm.py --input question.wav --output answer.wav
    python examples/with_llm.py              # microphone and speakers, if `sounddevice` is installed

With no LLM configured it says so and echoes what it hears. Each turn prints
its latency: end of speech -> final transcript -> first LLM token -> first
audio. Speaking while the agent talks interrupts it (barge-in): the LLM
stream and the TTS are cancelled at once. With microphone and speakers use
headphones, or the agent hears itself and interrupts its own answers.
The conversation logic is in ``agent.py`` (shared with ``twilio_phone.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent import AgentSettings, LlmConfig, VoiceAgent, make_replier
from audio_io import SpeakerOut, WavOut, have_sounddevice, microphone_frames, read_wav, wav_frames


async def converse(args: argparse.Namespace) -> int:
    if args.input:
        pcm, rate = read_wav(args.input)
        frames = wav_frames(pcm, rate, speed=args.speed, tail_silence_s=2.0)
    elif have_sounddevice():
        rate = 16000
        frames = microphone_frames(rate)
        print("listening on the default microphone; Ctrl-C ends")
    else:
        print("no --input file and no microphone (`pip install sounddevice` for one)", file=sys.stderr)
        return 2
    if args.output or not have_sounddevice():
        out = WavOut(args.output or "agent.wav")
    else:
        out = SpeakerOut()
    settings = AgentSettings(asr_url=args.asr_url, tts_url=args.tts_url, in_sample_rate_hz=rate,
                             voice=args.voice, api_key=args.api_key, max_history_turns=args.max_turns,
                             max_history_chars=args.max_chars)
    agent = VoiceAgent(settings, make_replier(LlmConfig.from_env()), out)
    turns = await agent.run(frames)
    if isinstance(out, WavOut):
        print(f"wrote {out.path}: {len(out.audio) / 2 / max(1, out.rate_hz):.2f} s of agent speech")
    for stats in turns:
        print(stats.line())
    return 1 if agent.counters.errors else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="16-bit WAV file to speak to the agent (default: the microphone)")
    p.add_argument("--output", help="write the agent's speech here (default: speakers, or agent.wav)")
    p.add_argument("--speed", type=float, default=1.0, help="pace of --input, x real time")
    p.add_argument("--asr-url", default="ws://127.0.0.1:8001/v1/stream/asr")
    p.add_argument("--tts-url", default="ws://127.0.0.1:8002/v1/stream/tts")
    p.add_argument("--voice")
    p.add_argument("--api-key", help="key of the speech services, if they require one")
    p.add_argument("--max-turns", type=int, default=8, help="exchanges of history sent to the LLM")
    p.add_argument("--max-chars", type=int, default=6000, help="characters of history sent to the LLM")
    try:
        return asyncio.run(converse(p.parse_args()))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
