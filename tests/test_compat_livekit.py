"""LiveKit Agents' own Deepgram and OpenAI plugins, constructed with our base URLs and nothing else changed, used the
way an agent uses them (``stt.stream()`` fed ``rtc.AudioFrame``s, ``tts.synthesize()`` and ``tts.stream()`` read as
audio frames), on loopback with the real models and no LiveKit server: the plugins run inside
``livekit.agents.utils.http_context``."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt as lk_stt, utils
from livekit.plugins import deepgram, openai

from conftest import ROOT, normalise, paced, read_wav
from tts_support import Transcriber, mostly_heard

pytestmark = pytest.mark.asyncio

FRAME_MS = 20
AUSTEN = "unless to be rather cold hearted and rather selfish is to be ill disposed"
SENTENCE = "Welcome to the self hosted voice service. It speaks as soon as the words arrive."
EVENT_TIMEOUT_S = 60.0


def audio_frames(samples: np.ndarray, rate: int) -> list[rtc.AudioFrame]:
    """20 ms frames, as a LiveKit room's audio track delivers them."""
    step = rate * FRAME_MS // 1000
    return [rtc.AudioFrame(samples[i:i + step].tobytes(), rate, 1, len(samples[i:i + step]))
            for i in range(0, len(samples), step)]


@pytest.fixture(scope="module")
def austen() -> tuple[np.ndarray, int]:
    return read_wav(ROOT / "samples" / "austen.wav")


@contextlib.asynccontextmanager
async def plugin_context():
    """What an agent job gives its plugins: a shared aiohttp session (no LiveKit server involved)."""
    async with utils.http_context.open():
        yield


async def events_until_final(stream, feed) -> list[lk_stt.SpeechEvent]:
    """Run ``feed`` (the microphone) beside the stream and collect its events up to the first final transcript."""
    task = asyncio.create_task(feed)
    events: list[lk_stt.SpeechEvent] = []
    try:
        async def read() -> None:
            async for event in stream:
                events.append(event)
                if event.type is lk_stt.SpeechEventType.FINAL_TRANSCRIPT:
                    return
        await asyncio.wait_for(read(), EVENT_TIMEOUT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return events


def texts(events, kind: lk_stt.SpeechEventType) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type is kind and e.alternatives]


def frames_pcm(frames: list[rtc.AudioFrame]) -> tuple[np.ndarray, int]:
    assert frames, "no audio frames"
    rates = {f.sample_rate for f in frames}
    assert len(rates) == 1, rates
    pcm = b"".join(f.data.tobytes() for f in frames)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768, rates.pop()


async def test_deepgram_stt_streams_interims_and_finals_then_closes_on_close_stream(asr_service, austen):
    samples, rate = austen
    quiet = np.zeros(rate * 2, dtype="<i2")
    async with plugin_context():
        stt = deepgram.STT(api_key="unused", base_url=f"{asr_service.http}/v1/listen")  # model=nova-3 and all
        stream = stt.stream()

        async def microphone() -> None:  # real time, as the room's track delivers it; then the room stays quiet
            async for frame in paced(audio_frames(np.concatenate([samples, quiet]), rate), FRAME_MS / 1000):
                stream.push_frame(frame)
            async for frame in paced(audio_frames(np.zeros(rate * 30, dtype="<i2"), rate), FRAME_MS / 1000):
                stream.push_frame(frame)

        events = await events_until_final(stream, microphone())
        kinds = [e.type for e in events]
        assert lk_stt.SpeechEventType.START_OF_SPEECH in kinds
        interims = texts(events, lk_stt.SpeechEventType.INTERIM_TRANSCRIPT)
        assert interims and interims[0].strip(), kinds  # interim results came before the final
        final = events[-1].alternatives[0]
        assert mostly_heard(AUSTEN, final.text, 0.9), final.text
        assert final.words and final.words[0].start_time < final.words[-1].end_time  # word timings
        # the agent's end of the stream: Finalize, then CloseStream; the service closes, so the stream ends
        stream.flush()
        stream.end_input()
        rest = await asyncio.wait_for(_drain(stream), EVENT_TIMEOUT_S)
        assert lk_stt.SpeechEventType.END_OF_SPEECH in kinds + [e.type for e in rest]
        await stream.aclose()
        await stt.aclose()


async def _drain(stream) -> list:
    return [event async for event in stream]


async def test_openai_realtime_stt_streams_deltas_and_completed_transcripts(asr_service, austen):
    samples, rate = austen
    async with plugin_context():
        stt = openai.STT(api_key="unused", base_url=f"{asr_service.http}/v1", use_realtime=True)
        stream = stt.stream()  # resampled to 24 kHz by the plugin; server VAD, 350 ms of silence ends a turn

        async def microphone() -> None:
            for frames in (audio_frames(samples, rate), audio_frames(np.zeros(rate * 30, dtype="<i2"), rate)):
                async for frame in paced(frames, FRAME_MS / 1000):
                    stream.push_frame(frame)

        events = await events_until_final(stream, microphone())
        await stream.aclose()
        await stt.aclose()
    interims = texts(events, lk_stt.SpeechEventType.INTERIM_TRANSCRIPT)
    finals = texts(events, lk_stt.SpeechEventType.FINAL_TRANSCRIPT)
    assert interims, [e.type for e in events]
    said = normalise(interims[0])  # the confirmed words so far (a greedy partial's, the final may differ a little)
    assert sum(w in normalise(AUSTEN) for w in said) >= len(said) / 2, interims
    # the plugin's 350 ms turns may cut the sentence at a pause: the first turn is the start of it
    assert normalise(finals[0])[:3] == normalise(AUSTEN)[:3], finals


async def test_both_stts_transcribe_a_buffered_turn_over_http(asr_service, austen):
    """``recognize()`` (what LiveKit's StreamAdapter and FallbackAdapter call): OpenAI's posts the turn as a WAV to
    ``/audio/transcriptions``, Deepgram's as the raw body of ``POST /v1/listen`` (its pre-recorded API)."""
    samples, rate = austen
    async with plugin_context():
        stts = [openai.STT(api_key="unused", base_url=f"{asr_service.http}/v1"),
                deepgram.STT(api_key="unused", base_url=f"{asr_service.http}/v1/listen")]
        events = [await stt.recognize(audio_frames(samples, rate)) for stt in stts]
        for stt in stts:
            await stt.aclose()
    for event in events:
        assert event.type is lk_stt.SpeechEventType.FINAL_TRANSCRIPT
        assert mostly_heard(AUSTEN, event.alternatives[0].text, 0.9), event.alternatives[0].text
    words = events[1].alternatives[0].words  # Deepgram's carry word timings
    assert words and 0 <= words[0].start_time < words[-1].end_time <= len(samples) / rate + 0.1


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


async def test_deepgram_tts_chunked_and_streamed_synthesis_is_heard(examples_tts, transcriber):
    async with plugin_context():
        tts = deepgram.TTS(api_key="unused", base_url=f"{examples_tts.http}/v1/speak")  # linear16, 24 kHz
        # ChunkedStream: POST /v1/speak?container=none
        chunked = [event.frame async for event in tts.synthesize(SENTENCE)]
        # SynthesizeStream: WS /v1/speak, one Speak per word as an LLM writes, Flush; twice on the pooled socket
        streamed = []
        for reply in (SENTENCE, "Is there anything else I can help you with?"):
            stream = tts.stream()

            async def llm(stream=stream, reply=reply) -> None:
                async for word in paced(reply.split(), 0.02):
                    stream.push_text(word + " ")
                stream.flush()
                stream.end_input()
            writer = asyncio.create_task(llm())
            frames = await asyncio.wait_for(_frames(stream), EVENT_TIMEOUT_S)
            await writer
            await stream.aclose()
            streamed.append(frames)
        await tts.aclose()
    for frames, text in ((chunked, SENTENCE), (streamed[0], SENTENCE),
                         (streamed[1], "Is there anything else I can help you with?")):
        audio, rate = frames_pcm(frames)
        assert rate == 24000
        heard = transcriber(audio, rate)
        assert mostly_heard(text, heard), heard


async def _frames(stream) -> list[rtc.AudioFrame]:
    return [event.frame async for event in stream]


async def _events(stream) -> list:
    return [event async for event in stream]


async def test_openai_tts_speech_is_heard_in_mp3_over_sse_and_in_24khz_pcm(examples_tts, transcriber):
    durations = {}
    for response_format in ("mp3", "pcm"):
        async with plugin_context():
            # the default model asks for SSE (base64 mp3 in speech.audio.delta events); pcm is taken as 24 kHz
            tts = openai.TTS(api_key="unused", base_url=f"{examples_tts.http}/v1", response_format=response_format)
            events = await asyncio.wait_for(_events(tts.synthesize(SENTENCE)), EVENT_TIMEOUT_S)
            await tts.aclose()
        assert events[0].request_id.startswith("req_")  # from x-request-id, as OpenAI sends it
        audio, rate = frames_pcm([event.frame for event in events])
        assert rate == 24000
        durations[response_format] = len(audio) / rate
        heard = transcriber(audio, rate)
        assert mostly_heard(SENTENCE, heard), (response_format, heard)
    # pcm read at the wrong rate (the voice's own 22.05 kHz) would last 8% less than the decoded mp3
    assert abs(durations["pcm"] - durations["mp3"]) < 0.03 * durations["mp3"], durations
