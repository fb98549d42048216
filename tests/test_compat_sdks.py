"""The cloud speech APIs' own client libraries (deepgram-sdk, openai) against our compatible routes, on loopback
with the real models: ``/v1/listen``, ``/v1/speak`` (WebSocket and REST), ``/v1/realtime``, SSE speech."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json

import httpx
import numpy as np
import pytest
import soxr
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.listen.v1.types import (ListenV1Configure, ListenV1ConfigureFailure, ListenV1ConfigureSuccess,
                                      ListenV1Metadata, ListenV1Results, ListenV1SpeechStarted, ListenV1UtteranceEnd)
from deepgram.speak.v1.types import SpeakV1Metadata, SpeakV1Text
from openai import AsyncOpenAI

from conftest import ROOT, normalise, paced, running, stream_asr as stream
from tts_support import Transcriber, mostly_heard

pytestmark = pytest.mark.asyncio

KEY = "deepgram-test-key-0123456789"
SILENCE_1S = np.zeros(16000, dtype="<i2")
LONG_TEXT = ("The quick brown fox jumps over the lazy dog near the bank of the river. "
             "It was a bright cold day in April, and the clocks were striking thirteen. "
             "Far out in the uncharted backwaters of the unfashionable end of the western spiral arm of the galaxy "
             "lies a small unregarded yellow sun.")


class Inbox(list):
    """What an SDK connection delivered (its on-message callback appends here), awaitable by content."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def append(self, message) -> None:
        super().append(message)
        self._changed.set()

    async def until(self, condition, timeout_s: float = 20) -> None:
        async def wait() -> None:
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout_s)


@contextlib.asynccontextmanager
async def kept_alive(conn):
    """What a Deepgram client does while it sends no audio and waits for results: a KeepAlive every second (the
    service's idle timer, 4 s in the tests, would otherwise close it while a busy machine still decodes)."""
    async def beat() -> None:
        async for _ in paced(itertools.repeat(None), 1.0):
            await conn.send_keep_alive()
    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def deepgram(service, key: str = KEY) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(base=service.http, production=service.ws, agent=service.ws, agent_rest=service.http)
    return AsyncDeepgramClient(api_key=key, environment=env)


@pytest.fixture(scope="module")
def native_jfk_text(asr_service, jfk) -> str:
    audio = np.concatenate([jfk, SILENCE_1S]).tobytes()
    result = asyncio.run(stream(f"{asr_service.ws}/v1/stream/asr", audio))
    text = " ".join(f["text"] for f in result.of("final"))
    assert "ask not" in text.lower()
    return text


async def test_deepgram_sdk_live_transcription_matches_the_native_stream(asr_service, jfk, native_jfk_text):
    got = Inbox()
    async with deepgram(asr_service).listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate="16000", channels="1", interim_results="true",
            punctuate="true", smart_format="true", language="en", vad_events="true", utterance_end_ms="1000") as conn:
        conn.on(EventType.MESSAGE, got.append)
        listening = asyncio.create_task(conn.start_listening())
        audio = np.concatenate([jfk, SILENCE_1S, SILENCE_1S]).tobytes()
        async for i in paced(range(0, len(audio), 640), 0.005):  # 20 ms frames at 4x real time
            await conn.send_media(audio[i:i + 640])
        async with kept_alive(conn):
            # the turn ends in the trailing silence: its final arrives unasked
            await got.until(lambda got: any(isinstance(m, ListenV1Results) and m.speech_final for m in got))
            await conn.send_finalize()  # nothing is open any more: an empty final that answers the Finalize
            await got.until(lambda got: any(isinstance(m, ListenV1Results) and m.from_finalize for m in got))
        await conn.send_close_stream()
        await asyncio.wait_for(listening, 30)

    results = [m for m in got if isinstance(m, ListenV1Results)]
    interims = [r for r in results if not r.is_final and r.channel.alternatives[0].transcript]
    finals = [r for r in results if r.is_final and r.channel.alternatives[0].transcript]
    assert interims, "interim_results=true gave no interim Results"
    assert finals and any(r.speech_final for r in finals)
    text = " ".join(r.channel.alternatives[0].transcript for r in finals)
    assert normalise(text) == normalise(native_jfk_text)
    words = [w for r in finals for w in r.channel.alternatives[0].words]
    assert words and all(0 <= w.start <= w.end for w in words) and all(0 < w.confidence <= 1 for w in words)
    assert any(w.punctuated_word != w.word for w in words)  # "country." vs "country"
    for earlier, later in zip(finals, finals[1:]):  # finals tile the stream
        assert later.start == pytest.approx(earlier.start + earlier.duration, abs=0.002)
    assert any(isinstance(m, ListenV1SpeechStarted) for m in got)
    assert any(isinstance(m, ListenV1UtteranceEnd) for m in got)
    finalized = [r for r in results if r.from_finalize]
    assert len(finalized) == 1 and finalized[0].is_final and finalized[0].channel.alternatives[0].transcript == ""
    assert isinstance(got[-1], ListenV1Metadata) and got[-1].duration == pytest.approx(len(audio) / 32000, abs=0.01)


async def send_then_finalize(conn, got: Inbox, listening: asyncio.Task, audio: bytes) -> None:
    """``audio`` at once, ``Finalize``, the final that answers it (the socket kept alive meanwhile), then
    ``CloseStream`` and the end of the SDK's listener."""
    for i in range(0, len(audio), 3200):
        await conn.send_media(audio[i:i + 3200])
    await conn.send_finalize()
    async with kept_alive(conn):
        await got.until(lambda got: any(isinstance(m, ListenV1Results) and m.from_finalize for m in got))
    await conn.send_close_stream()
    await asyncio.wait_for(listening, 30)


async def test_deepgram_finalize_ends_the_open_utterance_at_once(asr_service, jfk):
    """Finalize mid-speech (as Pipecat sends it when its own VAD stops): the open utterance's final comes back
    at once, with from_finalize and without speech_final."""
    got = Inbox()
    async with deepgram(asr_service).listen.v1.connect(model="nova-3", encoding="linear16",
                                                       sample_rate="16000") as conn:
        conn.on(EventType.MESSAGE, got.append)
        listening = asyncio.create_task(conn.start_listening())
        audio = jfk[: int(16000 * 6.4)].tobytes()  # "... ask not ... what your country" cut mid-sentence
        await send_then_finalize(conn, got, listening, audio)
    finalized = [m for m in got if isinstance(m, ListenV1Results) and m.from_finalize]
    assert finalized and finalized[0].is_final and not finalized[0].speech_final
    assert "country" in normalise(finalized[0].channel.alternatives[0].transcript)
    # speech went on at the cut: a new utterance opened there, and CloseStream ended it (no audio: no words)
    assert not [m for m in got if getattr(m, "type", None) == "Error"]
    assert not [m for m in got if isinstance(m, ListenV1Results) and not m.is_final]  # interim_results defaults off


async def test_deepgram_configure_is_answered_once_each_in_order_with_the_audio(asr_service, jfk):
    """Configure mid-stream: what the transcripts already are succeeds, and so do keyterms (they replace the
    stream's hotwords; the success names them); other features fail with Deepgram's shape (a code and a
    description) and change nothing: the stream goes on transcribing."""
    got = Inbox()
    async with deepgram(asr_service).listen.v1.connect(model="nova-3", encoding="linear16",
                                                       sample_rate="16000") as conn:
        conn.on(EventType.MESSAGE, got.append)
        listening = asyncio.create_task(conn.start_listening())
        await conn.send_configure(ListenV1Configure(features={"punctuate": True}))
        await conn.send_configure(ListenV1Configure(keyterms=["Kennedy", "Americans"]))
        await conn.send_configure(ListenV1Configure(features={"numerals": True, "punctuate": True}))
        audio = jfk[: int(16000 * 3.0)].tobytes()  # "And so my fellow Americans"
        await send_then_finalize(conn, got, listening, audio)
    answers = [m for m in got if isinstance(m, (ListenV1ConfigureSuccess, ListenV1ConfigureFailure))]
    assert [type(m) for m in answers] == [ListenV1ConfigureSuccess, ListenV1ConfigureSuccess, ListenV1ConfigureFailure]
    assert answers[0].keyterms is None and answers[0].request_id == answers[1].request_id
    assert answers[1].keyterms == ["Kennedy", "Americans"]
    assert answers[2].code == "CONFIGURE_FEATURES_NOT_SUPPORTED" and "numerals" in answers[2].description
    assert got.index(answers[-1]) < next(i for i, m in enumerate(got) if isinstance(m, ListenV1Results))
    finals = [m for m in got if isinstance(m, ListenV1Results) and m.is_final]
    assert "americans" in normalise(" ".join(r.channel.alternatives[0].transcript for r in finals))


async def test_deepgram_malformed_configure_is_a_non_fatal_error(asr_service):
    async with websockets.connect(f"{asr_service.ws}/v1/listen") as ws:
        await ws.send(json.dumps({"type": "Configure", "keyterms": "Kennedy"}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 20))
        await ws.send(json.dumps({"type": "Configure"}))  # still open: an empty Configure changes nothing
        success = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert error["type"] == "Error" and error["variant"] == "bad_message" and "keyterms" in error["description"]
    assert success["type"] == "ConfigureSuccess"


async def test_deepgram_sdk_prerecorded_transcription_of_a_file_body(asr_service):
    """POST /v1/listen: the file as the body, Deepgram's pre-recorded response (parsed by the SDK's own types);
    a remote url is refused, nothing is fetched."""
    audio = (ROOT / "samples" / "timit.wav").read_bytes()
    response = await deepgram(asr_service).listen.v1.media.transcribe_file(request=audio, model="nova-3",
                                                                          language="en", punctuate=True)
    alternative = response.results.channels[0].alternatives[0]
    assert mostly_heard("She had your dark suit in greasy wash water all year.", alternative.transcript, 0.7)
    assert alternative.words and alternative.words[-1].end <= response.metadata.duration + 0.1
    assert response.metadata.duration == pytest.approx(2.925, abs=0.01)
    refused = httpx.post(f"{asr_service.http}/v1/listen", json={"url": "https://example.com/a.wav"})
    assert refused.status_code == 501 and refused.json()["error"]["code"] == "not_supported"


def kind(message) -> str:
    """What a speak-socket message is by its ``type`` (the SDK parses ``Cleared`` into its ``Flushed`` class)."""
    return "audio" if isinstance(message, bytes) else message.type


async def test_deepgram_sdk_speak_streams_audio_and_clear_stops_it(examples_tts):
    got = Inbox()
    client = deepgram(examples_tts)
    async with client.speak.v1.connect(model="aura-2-helena-en", encoding="linear16", sample_rate="24000") as conn:
        conn.on(EventType.MESSAGE, got.append)
        listening = asyncio.create_task(conn.start_listening())
        await conn.send_text(SpeakV1Text(text=LONG_TEXT))
        await conn.send_flush()
        await got.until(lambda got: "audio" in map(kind, got))
        await conn.send_clear()
        await got.until(lambda got: "Cleared" in map(kind, got))
        # No event says that nothing more of the cleared text will come: the test gives it the time it would
        # take to arrive, so that it would show before the next reply rather than be taken for its audio.
        await asyncio.sleep(1.0)
        cleared_at = len(got)
        await conn.send_text(SpeakV1Text(text="Hello there, how are you?"))
        await conn.send_flush()
        await got.until(lambda got: "Flushed" in map(kind, got[cleared_at:]))
        await conn.send_close()
        await asyncio.wait_for(listening, 20)

    kinds = [kind(m) for m in got]
    assert isinstance(got[0], SpeakV1Metadata) and got[0].request_id
    cleared = kinds.index("Cleared")
    assert 0 < kinds.index("audio") < cleared
    before = sum(len(m) for m in got[:cleared] if isinstance(m, bytes))
    assert before < 24000 * 2 * 8, "Clear came after most of the long text had been spoken"
    assert "audio" not in kinds[cleared + 1:cleared_at], f"audio after Cleared: {kinds}"
    assert "Flushed" not in kinds[:cleared_at], f"Flushed for cleared text: {kinds}"
    assert got[cleared].sequence_id == 1  # the Flush was 0
    reply, reply_kinds = got[cleared_at:], kinds[cleared_at:]
    assert reply_kinds.count("Flushed") == 1 and reply[reply_kinds.index("Flushed")].sequence_id == 2
    assert "audio" not in reply_kinds[reply_kinds.index("Flushed"):]  # Flushed follows the last audio byte
    audio = b"".join(m for m in reply if isinstance(m, bytes))
    assert max(len(m) for m in got if isinstance(m, bytes)) <= 64 * 1024
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    assert len(samples) / 24000 > 0.8
    assert mostly_heard("Hello there, how are you?", Transcriber()(samples, 24000))


async def test_deepgram_rest_speak_and_refused_key(tmp_path):
    key = "dg:" + KEY
    env = {"TTS_SERVER__API_KEYS": json.dumps([key]), "TTS_VOICES__STORE_DIR": str(tmp_path / "voices")}
    with running("services.tts", env, tmp_path) as tts:
        async with deepgram(tts).speak.v1.audio.with_raw_response.generate(
                text="Good morning.", model="aura-2-helena-en", encoding="linear16", sample_rate=16000,
                container="none") as response:
            audio = b"".join([chunk async for chunk in response.data])
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
        assert mostly_heard("Good morning.", Transcriber()(samples, 16000))
        wav = httpx.post(f"{tts.http}/v1/speak?encoding=linear16", json={"text": "Good morning."},
                         headers={"Authorization": f"Token {KEY}"})
        assert wav.status_code == 200 and wav.content[:4] == b"RIFF"  # linear16 without a container is WAV
        with pytest.raises(ApiError) as refused:
            async with deepgram(tts, key="wrong-key-0123456789abcdef").speak.v1.connect(model="aura-2-helena-en"):
                pass
        assert refused.value.status_code == 401


async def test_openai_sdk_realtime_transcription_with_server_vad(asr_service, jfk, native_jfk_text):
    client = AsyncOpenAI(base_url=f"{asr_service.http}/v1", api_key="sk-local")
    audio24 = soxr.resample(np.concatenate([SILENCE_1S, jfk, SILENCE_1S]).astype(np.float32) / 32768, 16000, 24000)
    pcm24 = (np.clip(audio24, -1, 1) * 32767).astype("<i2").tobytes()
    events: list = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        updated = await conn.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        async for i in paced(range(0, len(pcm24), 9600), 0.05):  # 200 ms appends at 4x real time
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i:i + 9600]).decode())
        await conn.input_audio_buffer.commit()  # whatever is still open ends now
        while True:  # until the service has said everything (3 s of quiet), at most 60 s
            try:
                events.append(await asyncio.wait_for(conn.recv(), 3 if events else 60))
            except asyncio.TimeoutError:
                break
        await conn.input_audio_buffer.clear()
        cleared = await asyncio.wait_for(conn.recv(), 10)
        assert cleared.type == "input_audio_buffer.cleared"
    kinds = [e.type for e in events]
    assert kinds[0] == "input_audio_buffer.speech_started"
    assert "input_audio_buffer.speech_stopped" in kinds
    assert kinds.index("input_audio_buffer.committed") < kinds.index(
        "conversation.item.input_audio_transcription.completed")
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    text = " ".join(e.transcript for e in completed if e.transcript)
    # 24 kHz audio and silence endpointing (500 ms): the cuts may differ from the native stream's, the words not
    assert mostly_heard(native_jfk_text, text, at_least=0.85), (text, native_jfk_text)
    # Each item's deltas are never revised: they add up to (a prefix of) its transcript whenever the final agrees
    # with the words LocalAgreement confirmed; a final decode may still correct one ("Like your" -> "What your"),
    # more often when the machine is loaded (fewer partials confirm words on less audio).
    agreeing = 0
    for item in completed:
        deltas = "".join(e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta"
                         and e.item_id == item.item_id)
        assert deltas or not item.transcript
        agreeing += item.transcript.strip().startswith(deltas)
    assert 2 * agreeing >= len(completed), [(e.type, getattr(e, "delta", getattr(e, "transcript", "")))
                                            for e in events]
    assert all(e.event_id for e in events)


async def test_openai_realtime_manual_commits_and_errors(asr_service, jfk):
    """turn_detection null (Pipecat's default): nothing ends an utterance but commit; a commit of nothing is
    answered (not an error, which would make clients reconnect); unknown events are error events."""
    client = AsyncOpenAI(base_url=f"{asr_service.http}/v1", api_key="sk-local")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.input_audio_buffer.commit()
        first = [await asyncio.wait_for(conn.recv(), 10) for _ in range(2)]
        assert [e.type for e in first] == ["input_audio_buffer.committed",
                                           "conversation.item.input_audio_transcription.completed"]
        assert first[1].transcript == ""
        await conn.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": None}}})
        assert (await conn.recv()).session.audio.input.turn_detection is None
        pcm24 = (soxr.resample(jfk.astype(np.float32) / 32768, 16000, 24000) * 32767).astype("<i2").tobytes()
        for i in range(0, len(pcm24), 48000):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i:i + 48000]).decode())
        for _ in range(2):  # 2 s of quiet: in turn_detection null, nothing ends the utterance on its own
            await conn.input_audio_buffer.append(audio=base64.b64encode(bytes(48000)).decode())
        await conn.send({"type": "response.create"})
        events = [await asyncio.wait_for(conn.recv(), 10)]  # its error: the service has read all the audio before it
        await conn.input_audio_buffer.commit()  # handled after that audio (one ordered inbound queue)
        while not events or events[-1].type != "conversation.item.input_audio_transcription.completed":
            events.append(await asyncio.wait_for(conn.recv(), 60))
    kinds = [e.type for e in events]
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and "not supported" in errors[0].error.message  # and the session went on
    assert "input_audio_buffer.speech_started" not in kinds and "input_audio_buffer.speech_stopped" not in kinds
    assert kinds.count("input_audio_buffer.committed") == 1  # one utterance: only the commit ended it
    assert "ask not what your country can do for you" in " ".join(normalise(events[-1].transcript))
    assert events[-1].usage.seconds > 8


async def test_openai_realtime_refuses_conversation_sessions(asr_service):
    client = AsyncOpenAI(base_url=f"{asr_service.http}/v1", api_key="sk-local")
    with pytest.raises(Exception) as refused:
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    assert "501" in str(refused.value)


async def test_openai_sdk_reads_speech_as_sse(examples_tts):
    client = AsyncOpenAI(base_url=f"{examples_tts.http}/v1", api_key="sk-local")
    text = "The weather is lovely today, and the sun is shining."
    async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm") as raw:
        plain = b"".join([chunk async for chunk in raw.iter_bytes()])
    async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm", stream_format="sse") as sse:
        assert sse.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in sse.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1 and events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["total_tokens"] == events[-1]["usage"]["input_tokens"] + events[-1]["usage"]["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert audio == plain  # the same synthesis (deterministic in tests), only framed as events
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    assert mostly_heard(text, Transcriber()(samples, 24000))

