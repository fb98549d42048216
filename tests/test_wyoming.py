"""The Wyoming servers (Home Assistant's protocol), driven by the ``wyoming`` client library over real TCP.

Both services run as real processes with their Wyoming ports on, the real tiny
models behind them: ``info`` from both ports; real speech transcribed, with the
first utterance's transcript events arriving while the audio still streams at
real time; audio in another rate, width and channel count; speech from the TTS
port (whole and streamed text) that our ASR transcribes back; ``transcribe``'s names as
hotwords; bad input answered
with ``error`` events while the servers keep serving; admission as on the sockets.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soxr
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from conftest import (DETERMINISTIC_TTS, ROOT, ServiceProcess, await_until, free_port, metric, normalise, paced,
                      read_wav, wait_until)

SAMPLES = ROOT / "samples"
FRAME_MS = 20
EVENT_TIMEOUT_S = 60


def reference(name: str) -> list[str]:
    return normalise((SAMPLES / f"{name}.txt").read_text())


def word_errors(heard: str, expected: list[str]) -> float:
    import jiwer

    return jiwer.wer(" ".join(expected), " ".join(normalise(heard)))


@pytest.fixture(scope="module")
def wyoming_services(tmp_path_factory):
    """Both services, started side by side (loading the models is most of this file's time)."""
    tmp = tmp_path_factory.mktemp("wyoming")
    asr_port, tts_port = free_port(), free_port()
    asr = ServiceProcess("services.asr", {"ASR_WYOMING__PORT": str(asr_port), "ASR_SERVER__MAX_CONNECTIONS": "3",
                                          "ASR_MODEL__CPU_THREADS": "2", "ASR_SERVER__MAX_FRAME_BYTES": "65536"},
                         tmp / "asr.log")
    tts = ServiceProcess("services.tts", {**DETERMINISTIC_TTS, "TTS_WYOMING__PORT": str(tts_port),
                                          "TTS_ENGINE__CPU_THREADS": "2"}, tmp / "tts.log")
    asr.wyoming, tts.wyoming = asr_port, tts_port
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(service.start, 240) for service in (asr, tts)]:  # a loaded machine is slow
                started.result()
        yield asr, tts
    finally:
        asr.stop()
        tts.stop()


@pytest.fixture(scope="module")
def asr(wyoming_services):
    return wyoming_services[0]


@pytest.fixture(scope="module")
def tts(wyoming_services):
    return wyoming_services[1]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def next_event(client: AsyncTcpClient) -> Event | None:
    return await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT_S)


async def events_until(client: AsyncTcpClient, last: str) -> list[Event]:
    """Events up to and including the first of type ``last`` (or the end of the connection)."""
    events = []
    while (event := await next_event(client)) is not None:
        events.append(event)
        if event.type == last:
            break
    return events


async def describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        return Info.from_event(await next_event(client))


def chunks(pcm: bytes, rate: int, width: int = 2, channels: int = 1):
    step = rate * width * channels * FRAME_MS // 1000
    for start in range(0, len(pcm), step):
        yield AudioChunk(rate, width, channels, pcm[start:start + step]).event()


async def transcribe(port: int, pcm: bytes, rate: int, width: int = 2, channels: int = 1) -> str:
    """Send ``pcm`` as fast as it is taken; the final transcript."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate, width, channels).event())
        for event in chunks(pcm, rate, width, channels):
            await client.write_event(event)
        await client.write_event(AudioStop().event())
        events = await events_until(client, "transcript-stop")
    transcripts = [Transcript.from_event(e).text for e in events if Transcript.is_type(e.type)]
    assert len(transcripts) == 1, [e.type for e in events]
    return transcripts[0]


# -- describe ---------------------------------------------------------------------------------------------------


def test_info_from_both_ports(asr, tts):
    asr_info, tts_info = run(describe(asr.wyoming)), run(describe(tts.wyoming))
    (program,) = asr_info.asr
    assert program.supports_transcript_streaming and program.models[0].name == "embedded:tiny.en"
    assert program.models[0].languages == ["en"] and not asr_info.tts
    (program,) = tts_info.tts
    assert program.supports_synthesize_streaming and not tts_info.asr
    assert [(v.name, v.languages) for v in program.voices] == [("en_US-joe-medium", ["en_US"])]


# -- speech to text -------------------------------------------------------------------------------------------


def test_two_utterances_at_real_time_stream_the_first_transcript_before_audio_stop(asr):
    """timit, then silence at real time until the first utterance's text has come back (waited on as events), then
    austen, then audio-stop: the first utterance's events arrived while the audio was still streaming."""
    first, rate = read_wav(SAMPLES / "timit.wav")
    second, _ = read_wav(SAMPLES / "austen.wav")
    silence = bytes(rate * 2 * FRAME_MS // 1000)
    first_heard = asyncio.Event()
    received: list[Event] = []
    sent_stop = asyncio.Event()

    async def read(client: AsyncTcpClient) -> None:
        while (event := await next_event(client)) is not None:
            received.append((event, sent_stop.is_set()))
            chunks_so_far = "".join(TranscriptChunk.from_event(e).text for e, _ in received
                                    if TranscriptChunk.is_type(e.type))
            if "year" in normalise(chunks_so_far):
                first_heard.set()
            if event.type == "transcript-stop":
                return

    async def go() -> None:
        async with AsyncTcpClient("127.0.0.1", asr.wyoming) as client:
            reader = asyncio.create_task(read(client))
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate, 2, 1).event())
            async for event in paced(chunks(first.tobytes(), rate), FRAME_MS / 1000):
                await client.write_event(event)
            for _ in range(30 * 1000 // FRAME_MS):  # silence, as a live microphone sends it, until the text is back
                if first_heard.is_set():
                    break
                await client.write_event(AudioChunk(rate, 2, 1, silence).event())
                await asyncio.wait({asyncio.ensure_future(first_heard.wait())}, timeout=FRAME_MS / 1000)
            assert first_heard.is_set(), f"no transcript of the first utterance while streaming: {received}"
            async for event in paced(chunks(second.tobytes(), rate), FRAME_MS / 1000):
                await client.write_event(event)
            sent_stop.set()
            await client.write_event(AudioStop().event())
            await asyncio.wait_for(reader, EVENT_TIMEOUT_S)

    run(go())
    types = [e.type for e, _ in received]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"], types
    assert set(types[1:-2]) == {"transcript-chunk"}, types
    before_stop = [e for e, after in received if not after and TranscriptChunk.is_type(e.type)]
    assert "year" in normalise("".join(TranscriptChunk.from_event(e).text for e in before_stop))
    text = Transcript.from_event(received[-2][0]).text
    assert word_errors(text, reference("timit") + reference("austen")) <= 0.2, text
    assert "".join(TranscriptChunk.from_event(e).text for e, _ in received[1:-2]) == text  # deltas add up


def test_audio_in_another_rate_width_and_channel_count_is_converted(asr):
    samples, rate = read_wav(SAMPLES / "timit.wav")
    resampled = soxr.resample(samples.astype(np.float32) / 32768, rate, 44100)
    stereo32 = (np.repeat(resampled[:, None], 2, axis=1) * 2**31 * 0.9).astype("<i4")
    text = run(transcribe(asr.wyoming, stereo32.tobytes(), 44100, width=4, channels=2))
    assert word_errors(text, reference("timit")) <= 0.2, text


def test_transcribe_names_are_the_streams_hotwords(asr):
    """AMI's "I'm Abigail Claflin. You can call me Abbie." (tiny.en alone writes "Claphlin"): with the names in
    ``transcribe`` the transcript has them; a name list longer than ``model.max_context_chars`` is cut, not
    refused."""
    samples, rate = read_wav(SAMPLES / "names" / "ami_claflin.wav")

    async def go(names: list[str]) -> str:
        async with AsyncTcpClient("127.0.0.1", asr.wyoming) as client:
            await client.write_event(Transcribe(language="en", transcript_names=names).event())
            await client.write_event(AudioStart(rate, 2, 1).event())
            for event in chunks(samples.tobytes(), rate):
                await client.write_event(event)
            await client.write_event(AudioStop().event())
            events = await events_until(client, "transcript-stop")
        assert [e.type for e in events if e.type == "error"] == []
        return Transcript.from_event(next(e for e in events if e.type == "transcript")).text

    with_names = run(go(["Abigail", "Claflin", "Abbie"] + [f"Entity number {n}" for n in range(300)]))
    assert "claflin" in normalise(with_names), with_names


# -- text to speech, heard back by our ASR --------------------------------------------------------------------


async def audio_of(client: AsyncTcpClient, last: str) -> tuple[bytes, int, list[str]]:
    events = await events_until(client, last)
    types = [e.type for e in events]
    starts = [e for e in events if AudioStart.is_type(e.type)]
    assert starts and types[0] == "audio-start" and "audio-stop" in types, types
    pcm = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return pcm, AudioStart.from_event(starts[0]).rate, types


SENTENCE = "The weather is sunny today. Please turn on the kitchen lights."


def test_speech_from_the_tts_port_is_transcribed_back(asr, tts):
    async def go():
        async with AsyncTcpClient("127.0.0.1", tts.wyoming) as client:
            await client.write_event(Synthesize(SENTENCE, voice=SynthesizeVoice("en_US-joe-medium")).event())
            whole = await audio_of(client, "audio-stop")
            # streamed: word by word, then the whole text for servers that do not stream (ignored), then the stop
            await client.write_event(SynthesizeStart().event())
            for word in SENTENCE.split(" "):
                await client.write_event(SynthesizeChunk(word + " ").event())
            await client.write_event(Synthesize(SENTENCE).event())
            await client.write_event(SynthesizeStop().event())
            streamed = await audio_of(client, "synthesize-stopped")
        return whole, streamed

    (whole, rate, types), (streamed, streamed_rate, streamed_types) = run(go())
    assert rate == streamed_rate == 22050 and types[-1] == "audio-stop"
    assert streamed_types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert streamed_types.count("audio-start") == streamed_types.count("audio-stop") == 1
    assert 0.7 < len(streamed) / len(whole) < 1.4  # the full synthesize inside the stream was not spoken again
    for pcm in (whole, streamed):
        text = run(transcribe(asr.wyoming, pcm, rate))
        assert word_errors(text, normalise(SENTENCE)) <= 0.2, text


# -- bad input, limits ------------------------------------------------------------------------------------------


def test_bad_input_gets_an_error_event_and_the_servers_keep_serving(asr, tts):
    samples, rate = read_wav(SAMPLES / "timit.wav")

    async def go():
        out = {}
        async with AsyncTcpClient("127.0.0.1", asr.wyoming) as client:  # a chunk before audio-start, then fine
            await client.write_event(AudioChunk(rate, 2, 1, bytes(640)).event())
            out["early_chunk"] = Error.from_event(await next_event(client))
            await client.write_event(Ping(text="hi").event())
            out["pong"] = await next_event(client)
            await client.write_event(AudioStart(rate, 2, 1).event())
            for event in chunks(samples.tobytes(), rate):
                await client.write_event(event)
            await client.write_event(AudioStop().event())
            events = await events_until(client, "transcript-stop")
            out["transcript"] = [Transcript.from_event(e).text for e in events if e.type == "transcript"]
        async with AsyncTcpClient("127.0.0.1", asr.wyoming) as client:  # a format we cannot take ends the session
            await client.write_event(AudioStart(rate, 3, 1).event())
            out["bad_width"] = [e.type for e in await events_until(client, "never")], None
        # A payload over server.max_frame_bytes is refused from its header: only the header is sent (the server closes
        # without reading the rest, so a client still writing it could see the connection reset before the error).
        reader, writer = await asyncio.open_connection("127.0.0.1", asr.wyoming)
        await async_write_event(AudioStart(rate, 2, 1).event(), writer)
        writer.write(json.dumps({"type": "audio-chunk", "data": {"rate": rate, "width": 2, "channels": 1},
                                 "payload_length": 70000}).encode() + b"\n")
        out["too_large"] = Error.from_event(await asyncio.wait_for(async_read_event(reader), EVENT_TIMEOUT_S))
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", asr.wyoming)  # not a Wyoming stream at all
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        refusal = Error.from_event(await asyncio.wait_for(async_read_event(reader), EVENT_TIMEOUT_S))
        out["garbage"] = refusal.code, await asyncio.wait_for(reader.read(), EVENT_TIMEOUT_S)
        writer.close()
        async with AsyncTcpClient("127.0.0.1", tts.wyoming) as client:
            await client.write_event(SynthesizeChunk("hello").event())
            out["chunk_outside"] = Error.from_event(await next_event(client))
            await client.write_event(Synthesize("Still here.", voice=SynthesizeVoice("nobody-like-me")).event())
            out["unknown_voice"] = Error.from_event(await next_event(client))
            out["after_unknown"] = await next_event(client)
        async with AsyncTcpClient("127.0.0.1", tts.wyoming) as client:
            await client.write_event(Synthesize("Still here.").event())
            out["tts_after"] = (await audio_of(client, "audio-stop"))[0]
        return out

    out = run(go())
    assert out["early_chunk"].code == "bad_message" and "audio-start" in out["early_chunk"].text
    assert out["pong"].type == "pong" and out["pong"].data["text"] == "hi"
    assert len(out["transcript"]) == 1 and word_errors(out["transcript"][0], reference("timit")) <= 0.2
    assert out["bad_width"][0] == ["error"]  # then the connection closed
    assert out["too_large"].code == "too_large"
    assert out["garbage"] == ("bad_request", b"")  # the error, then the close
    assert out["chunk_outside"].code == "bad_message"
    assert out["unknown_voice"].code == "not_found" and out["after_unknown"] is None
    assert len(out["tts_after"]) > 22050  # more than half a second of speech
    assert metric(asr, "asr_errors_total") >= 4 and metric(asr, "asr_wyoming_connections_total") >= 4


def test_a_client_that_never_reads_does_not_hold_up_another(tts):
    """One client asks for a long reply and reads none of it; another is answered meanwhile."""
    long_text = " ".join(f"This is sentence number {n} of a long answer nobody reads." for n in range(12))

    async def go():
        stuck = AsyncTcpClient("127.0.0.1", tts.wyoming)
        await stuck.connect()
        try:
            await stuck.write_event(Synthesize(long_text).event())
            await await_until(lambda: metric(tts, "tts_pieces_total") >= 2, 60, "the unread reply is being spoken")
            async with AsyncTcpClient("127.0.0.1", tts.wyoming) as client:
                await client.write_event(Synthesize("Still here.").event())
                return (await audio_of(client, "audio-stop"))[0]
        finally:
            await stuck.disconnect()

    assert len(run(go())) > 22050


def test_sessions_are_admitted_as_on_the_sockets_and_describe_needs_no_slot(asr):
    """ASR_SERVER__MAX_CONNECTIONS=3: a fourth session is refused with overloaded while three stream; describe is
    answered all the same; a client that sends audio and never reads holds its own slot only."""

    async def go():
        clients = [AsyncTcpClient("127.0.0.1", asr.wyoming) for _ in range(3)]
        for client in clients:
            await client.connect()
            await client.write_event(AudioStart(16000, 2, 1).event())
        try:
            await asyncio.to_thread(wait_until, lambda: metric(asr, "asr_sessions_active") == 3, 30,
                                    "three Wyoming sessions open")
            async with AsyncTcpClient("127.0.0.1", asr.wyoming) as extra:
                await extra.write_event(AudioStart(16000, 2, 1).event())
                refused = Error.from_event(await next_event(extra))
                closed = await next_event(extra)
            info = await describe(asr.wyoming)
        finally:
            for client in clients:
                await client.disconnect()
        return refused, closed, info

    refused, closed, info = run(go())
    assert refused.code == "overloaded" and closed is None and info.asr


def test_sigterm_drains_a_wyoming_stream_with_its_transcript(asr):
    """Last in this file: it stops the ASR process. A stream whose utterance has ended gets its transcript and
    transcript-stop on SIGTERM, then the connection closes and the process exits 0."""
    samples, rate = read_wav(SAMPLES / "timit.wav")

    async def go():
        async with AsyncTcpClient("127.0.0.1", asr.wyoming) as client:
            await client.write_event(AudioStart(rate, 2, 1).event())
            for event in chunks(np.concatenate([samples, np.zeros(rate * 2, np.int16)]).tobytes(), rate):
                await client.write_event(event)
            first = [await next_event(client), await next_event(client)]  # transcript-start, the final's chunk
            asr.proc.terminate()  # SIGTERM: drain
            return first, await events_until(client, "never")

    first, rest = run(go())
    assert [e.type for e in first] == ["transcript-start", "transcript-chunk"]
    assert [e.type for e in rest] == ["transcript", "transcript-stop"]  # then the close
    assert Transcript.from_event(rest[0]).text == TranscriptChunk.from_event(first[1]).text
    assert asr.proc.wait(30) == 0
