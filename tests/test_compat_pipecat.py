"""Pipecat's own cloud services, constructed with our ``base_url`` and nothing else changed, in Pipecat
pipelines on loopback with the real models: Deepgram STT and TTS, OpenAI Realtime STT."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (InputAudioRawFrame, InterimTranscriptionFrame, InterruptionFrame, TranscriptionFrame,
                                   TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame, VADUserStartedSpeakingFrame,
                                   VADUserStoppedSpeakingFrame)
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.tests.utils import SleepFrame, run_test

from conftest import normalise
from tts_support import Transcriber, mostly_heard

pytestmark = pytest.mark.asyncio

RATE = 16000
JFK_WORDS = {"ask", "not", "what", "your", "country", "can", "do", "for", "you"}


def frames(samples: np.ndarray, chunk_ms: int = 20, speed: float = 4.0) -> list:
    """20 ms audio frames, paced at ``speed`` x real time by a pause after every 100 ms (as a transport would
    deliver them, only faster)."""
    step = RATE * chunk_ms // 1000
    out: list = []
    for n, i in enumerate(range(0, len(samples), step), 1):
        out.append(InputAudioRawFrame(audio=samples[i:i + step].tobytes(), sample_rate=RATE, num_channels=1))
        if n % 5 == 0:
            out.append(SleepFrame(0.1 / speed))
    return out


def a_user_turn(jfk: np.ndarray, speed: float = 4.0) -> list:
    """What a Pipecat transport with a local VAD sends an STT service: the VAD start, 20 ms audio frames, the VAD
    stop after the last word, then quiet audio while the reply is awaited."""
    quiet = np.zeros(RATE // 2, dtype="<i2")
    return [VADUserStartedSpeakingFrame(), *frames(jfk, speed=speed), *frames(quiet, speed=speed),
            VADUserStoppedSpeakingFrame(),
            *frames(np.zeros(RATE * 3, dtype="<i2"), speed=1.0)]


async def test_pipecat_deepgram_stt(asr_service, jfk):
    stt = DeepgramSTTService(api_key="unused", base_url=asr_service.ws)
    # In real time, as a transport delivers it: faster, a partial of JFK's short first phrase can still be decoding
    # when its pause begins, and is then dropped for the final (CI once got no interim at 4x).
    down, _ = await run_test(stt, frames_to_send=a_user_turn(jfk, speed=1.0), pipeline_params=PipelineParams(audio_in_sample_rate=RATE))
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert finals, [type(f).__name__ for f in down if not isinstance(f, InputAudioRawFrame)]
    assert JFK_WORDS <= set(normalise(" ".join(f.text for f in finals)))
    assert any(isinstance(f, InterimTranscriptionFrame) for f in down)


async def test_pipecat_openai_realtime_stt(asr_service, jfk):
    stt = OpenAIRealtimeSTTService(api_key="unused", base_url=f"{asr_service.ws}/v1/realtime")
    down, _ = await run_test(stt, frames_to_send=[SleepFrame(0.3), *a_user_turn(jfk)],
                             pipeline_params=PipelineParams(audio_in_sample_rate=RATE))
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(finals) == 1, [(type(f).__name__, getattr(f, "text", "")) for f in down
                              if not isinstance(f, InputAudioRawFrame)]
    assert JFK_WORDS <= set(normalise(finals[0].text))


async def test_pipecat_deepgram_tts_speaks(examples_tts):
    tts = DeepgramTTSService(api_key="unused", base_url=examples_tts.ws, sample_rate=24000)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Welcome to the self hosted voice service."),
                                                  SleepFrame(4.0)])
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert any(isinstance(f, TTSStoppedFrame) for f in down)  # Flushed closed the turn's audio context
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    assert mostly_heard("Welcome to the self hosted voice service.", Transcriber()(samples, 24000))


async def test_pipecat_deepgram_tts_interruption_stops_the_audio(examples_tts):
    long = ("This is a long answer that keeps going for quite a while, sentence after sentence, so that there "
            "is plenty of audio left to stop when the user interrupts it. It goes on about the weather, the "
            "news, and everything else that could possibly be said in a very long reply.")
    tts = DeepgramTTSService(api_key="unused", base_url=examples_tts.ws, sample_rate=24000)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(long), SleepFrame(1.0), InterruptionFrame(),
                                                  SleepFrame(0.5), TTSSpeakFrame("Okay, I will stop."),
                                                  SleepFrame(3.0)])
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before = b"".join(f.audio for f in down[:cut] if isinstance(f, TTSAudioRawFrame))
    after = b"".join(f.audio for f in down[cut:] if isinstance(f, TTSAudioRawFrame))
    assert before, "no audio before the interruption"
    # after it, only the new reply: the server sent nothing more of the interrupted one (Clear -> Cleared)
    heard = Transcriber()(np.frombuffer(after, dtype="<i2").astype(np.float32) / 32768, 24000)
    assert mostly_heard("Okay, I will stop.", heard), heard
    assert not {"weather", "news", "sentence", "reply"} & set(normalise(heard)), heard
    assert len(after) / 2 / 24000 < 3.0
