"""Hotwords and prompt on every ASR entry point, with real speech whose rare names tiny.en gets wrong unaided.

``lj_subiaco.wav`` says "Sweynheim and Pannartz ... Subiaco" (tiny.en alone: "Swainheim", "Panerts",
"Subiakul"); ``lj_schoeffer.wav`` "Maintz by Peter Schoeffer" ("mains", "Schofer"). Each entry point is shown
to get the names right with them and wrong without; the length limit is refused at each edge; a session
without hotwords decodes exactly as it does alone while one with them runs beside it; and requests with
different hotwords share the scheduler's batch (one encoder pass) and, at equal length, one generate call.
"""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
import soxr
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.listen.v1.types import ListenV1Results
from openai import AsyncOpenAI
from starlette.datastructures import QueryParams

from conftest import DATA, read_wav, stream_asr as stream
from services.asr.context import checked_context, join_terms
from services.asr.deepgram import keyword, parse_listen_query
from services.asr.engine import DecodeRequest, WhisperEngine
from services.asr.protocol import parse_stream_params
from services.common.errors import ErrorCode, ServiceError
from services.common.scheduler import Scheduler, SchedulerOptions
from test_compat_sdks import Inbox, deepgram, kept_alive
from test_tts_cloning import wav_bytes

SUBIACO_NAMES = ("Sweynheim", "Pannartz", "Subiaco")
SUBIACO_HOTWORDS = "Sweynheim, Pannartz, Subiaco"
SCHOEFFER_NAMES = ("Maintz", "Schoeffer")
SCHOEFFER_HOTWORDS = "Maintz, Peter Schoeffer"
SILENCE_1S = np.zeros(16000, dtype="<i2")


def named(text: str, names) -> int:
    """How many of ``names`` the text spells right."""
    return sum(name.lower() in text.lower() for name in names)


@pytest.fixture(scope="module")
def subiaco() -> bytes:
    return np.concatenate([read_wav(DATA / "asr" / "lj_subiaco.wav")[0], SILENCE_1S]).tobytes()


@pytest.fixture(scope="module")
def schoeffer() -> bytes:
    return np.concatenate([read_wav(DATA / "asr" / "lj_schoeffer.wav")[0], SILENCE_1S]).tobytes()


# -- parsing and limits (no model) --------------------------------------------------------------------------

def test_terms_join_and_the_limit_counts_hotwords_and_prompt_together():
    assert join_terms(["Sweynheim", " Pannartz "], ["sweynheim", "", "Subiaco  Abbey"]) == \
        "Sweynheim, Pannartz, Subiaco Abbey"
    assert checked_context("a" * 300, "b" * 200, 500).chars == 500
    with pytest.raises(ServiceError) as over:
        checked_context("a" * 300, "b" * 201, 500)
    assert over.value.code is ErrorCode.TOO_LARGE and "501 characters" in over.value.message


def test_native_query_and_deepgram_keywords():
    params, warnings = parse_stream_params({"hotwords": " Sweynheim,Pannartz ,, sweynheim", "prompt": "Printing."})
    assert (params.hotwords, params.prompt, warnings) == ("Sweynheim, Pannartz", "Printing.", [])
    with pytest.raises(ServiceError) as over:
        parse_stream_params({"hotwords": "x" * 501})
    assert over.value.code is ErrorCode.TOO_LARGE
    assert [keyword(k) for k in ("Subiaco", "Subiaco:2", "Pannartz:-5", "Pannartz:0", "ratio 3:2x")] == \
        ["Subiaco", "Subiaco", None, None, "ratio 3:2x"]
    query = QueryParams([("keyterm", "Sweynheim"), ("keyterm", "Pannartz"), ("keywords", "Subiaco:3"),
                               ("keywords", "Rome:-2")])
    params, _ = parse_listen_query(query)
    assert params.hotwords == "Sweynheim, Pannartz, Subiaco"


# -- the engine and the scheduler --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    return WhisperEngine(cpu_threads=2)


@pytest.mark.asyncio
async def test_different_hotwords_share_one_batch_and_a_neighbour_without_is_unchanged(engine):
    """Three requests submitted together: one scheduler batch (one encoder pass); the two with different hotwords
    of the same length in tokens share one generate call; the one without decodes exactly as it does alone."""
    tokens = engine._tokenizer("en").encode
    other_hotwords = "Gutenberg, Strasburg, Basle, Lubeck"
    assert len(tokens(" " + other_hotwords)) == len(tokens(" " + SUBIACO_HOTWORDS))  # one start position
    subiaco = read_wav(DATA / "asr" / "lj_subiaco.wav")[0].astype(np.float32) / 32768
    schoeffer = read_wav(DATA / "asr" / "lj_schoeffer.wav")[0].astype(np.float32) / 32768
    requests = [DecodeRequest(subiaco, beam_size=5, final=True, hotwords=SUBIACO_HOTWORDS),
                DecodeRequest(subiaco, beam_size=5, final=True, hotwords=other_hotwords),
                DecodeRequest(schoeffer, beam_size=5, final=True, word_timestamps=True)]
    [neighbour_alone] = engine.decode_batch([requests[2]])
    scheduler = Scheduler("whisper", engine.decode_batch, SchedulerOptions(max_batch=8, max_pending=8))
    await scheduler.start()
    try:
        results = await asyncio.gather(*(scheduler.submit(r, batch_key="final") for r in requests))
    finally:
        await scheduler.stop()
    assert scheduler.batches_run == 1
    assert [r.generated_with for r in results] == [2, 2, 1]
    assert named(results[0].text, SUBIACO_NAMES) == 3
    assert named(results[2].text, SCHOEFFER_NAMES) == 0  # no hotwords: the names stay wrong
    assert results[2].text == neighbour_alone.text and results[2].words == neighbour_alone.words


def test_a_partial_decode_takes_the_hotwords_too(engine):
    """What a stream's partial is (greedy, a prefix of confirmed words forced): with the hotwords the names come
    out, without them not. (How many partials a stream gets depends on the load, so this is not asserted there.)"""
    audio = read_wav(DATA / "asr" / "lj_subiaco.wav")[0].astype(np.float32) / 32768
    plain, biased = engine.decode_batch([DecodeRequest(audio, prefix="In"),
                                         DecodeRequest(audio, prefix="In", hotwords=SUBIACO_HOTWORDS)])
    assert named(plain.text, SUBIACO_NAMES) == 0, plain.text
    assert named(biased.text, SUBIACO_NAMES) >= 2, biased.text


def test_a_long_context_leaves_a_greedy_decode_its_whole_length(engine):
    """CTranslate2 counts the context in the decode's length budget: a 60-token glossary must not cut the text."""
    quilter = read_wav(DATA / "asr" / "quilter.wav")[0].astype(np.float32) / 32768
    glossary = ("Gutenberg, Maintz, Schoeffer, Strasburg, Basle, Lubeck, Sweynheim, Pannartz, Subiaco, Abigail, "
                "Claflin, Abbie, Dashwood, Quilter, Pocketsphinx, Kubernetes")
    assert len(engine._tokenizer("en").encode(" " + glossary)) > 50
    [r] = engine.decode_batch([DecodeRequest(quilter, beam_size=1, final=True, hotwords=glossary)])
    assert r.text.rstrip(" .").lower().endswith("welcome his gospel"), r.text


# -- the native socket -------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_stream_hotwords_fix_partials_and_finals_and_leave_a_neighbour_alone(asr_service, subiaco):
    """Both streams at twice real time (partials come every 480 ms of audio), side by side: their finals are
    decided at the same moment of the same audio."""
    url = f"{asr_service.ws}/v1/stream/asr"
    alone = await stream(url, subiaco, params={"turn_detection": "vad"})
    assert named(alone.final_text, SUBIACO_NAMES) == 0, alone.final_text
    biased, neighbour = await asyncio.gather(
        stream(url, subiaco, params={"turn_detection": "vad", "hotwords": SUBIACO_HOTWORDS}, speed=2),
        stream(url, subiaco, params={"turn_detection": "vad"}, speed=2))
    assert named(biased.final_text, SUBIACO_NAMES) == 3, biased.final_text
    assert [(f["text"], f["words"]) for f in neighbour.of("final")] == [(f["text"], f["words"])
                                                                        for f in alone.of("final")]


@pytest.mark.asyncio
async def test_stream_prompt_over_the_limit_is_refused(asr_service, subiaco):
    result = await stream(f"{asr_service.ws}/v1/stream/asr", subiaco[:3200],
                          params={"hotwords": SUBIACO_HOTWORDS, "prompt": "p" * 500})
    assert [e["type"] for e in result.events] == ["error"] and result.events[0]["code"] == "too_large"
    assert result.close_code == 1009


# -- the file routes ---------------------------------------------------------------------------------------

def test_uploads_take_hotwords_and_prompt(asr_service, schoeffer):
    files = {"file": ("schoeffer.wav", wav_bytes(np.frombuffer(schoeffer, "<i2"), 16000), "audio/wav")}
    plain = httpx.post(f"{asr_service.http}/v1/transcribe", files=files, timeout=120).json()
    biased = httpx.post(f"{asr_service.http}/v1/transcribe", files=files, data={"hotwords": SCHOEFFER_HOTWORDS},
                        timeout=120).json()
    assert named(plain["text"], SCHOEFFER_NAMES) == 0, plain["text"]
    assert named(biased["text"], SCHOEFFER_NAMES) == 2, biased["text"]
    over = httpx.post(f"{asr_service.http}/v1/transcribe", files=files, data={"hotwords": "x" * 501}, timeout=120)
    assert over.status_code == 413 and over.json()["error"]["code"] == "too_large"


@pytest.mark.asyncio
async def test_openai_transcriptions_prompt(asr_service, schoeffer):
    client = AsyncOpenAI(base_url=f"{asr_service.http}/v1", api_key="sk-local")
    text = (await client.audio.transcriptions.create(
        model="whisper-1", file=("schoeffer.wav", wav_bytes(np.frombuffer(schoeffer, "<i2"), 16000)),
        prompt="Printed at Maintz by Peter Schoeffer.")).text
    assert named(text, SCHOEFFER_NAMES) == 2, text


# -- the dialects ------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_deepgram_keyterm(asr_service, subiaco):
    got = Inbox()
    async with deepgram(asr_service).listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate="16000", keyterm=list(SUBIACO_NAMES)) as conn:
        conn.on(EventType.MESSAGE, got.append)
        listening = asyncio.create_task(conn.start_listening())
        for i in range(0, len(subiaco), 3200):
            await conn.send_media(subiaco[i:i + 3200])
        async with kept_alive(conn):
            await conn.send_finalize()
            await got.until(lambda got: any(isinstance(m, ListenV1Results) and m.from_finalize for m in got), 60)
        await conn.send_close_stream()
        await asyncio.wait_for(listening, 30)
    text = " ".join(m.channel.alternatives[0].transcript for m in got if isinstance(m, ListenV1Results) and m.is_final)
    assert named(text, SUBIACO_NAMES) == 3, text


def test_deepgram_prerecorded_keyterm(asr_service, schoeffer):
    """POST /v1/listen (Deepgram's pre-recorded API, LiveKit's recognize()) takes keyterm / keywords too."""
    body = wav_bytes(np.frombuffer(schoeffer, "<i2"), 16000)
    url = f"{asr_service.http}/v1/listen?model=nova-3&keyterm=Maintz&keywords=Peter%20Schoeffer:2"
    got = httpx.post(url, content=body, headers={"Content-Type": "audio/wav"}, timeout=120).json()
    text = got["results"]["channels"][0]["alternatives"][0]["transcript"]
    assert named(text, SCHOEFFER_NAMES) == 2, text


@pytest.mark.asyncio
async def test_deepgram_keywords_over_the_limit_refuse_the_handshake(asr_service):
    with pytest.raises(ApiError) as refused:
        async with deepgram(asr_service).listen.v1.connect(model="nova-3", keywords=["x" * 300, "y" * 300]):
            pass
    assert refused.value.status_code == 413


@pytest.mark.asyncio
async def test_openai_realtime_prompt(asr_service, schoeffer):
    pcm24 = (soxr.resample(np.frombuffer(schoeffer, "<i2").astype(np.float32) / 32768, 16000, 24000)
             * 32767).astype("<i2").tobytes()
    client = AsyncOpenAI(base_url=f"{asr_service.http}/v1", api_key="sk-local")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "gpt-4o-transcribe", "prompt": "Printed at Maintz by Peter Schoeffer."},
            "turn_detection": None}}})
        updated = await conn.recv()
        assert updated.session.audio.input.transcription.prompt == "Printed at Maintz by Peter Schoeffer."
        for i in range(0, len(pcm24), 48000):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i:i + 48000]).decode())
        await conn.input_audio_buffer.commit()
        events = [await asyncio.wait_for(conn.recv(), 60)]
        while events[-1].type != "conversation.item.input_audio_transcription.completed":
            events.append(await asyncio.wait_for(conn.recv(), 60))
        assert named(events[-1].transcript, SCHOEFFER_NAMES) == 2, events[-1].transcript
        await conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"prompt": "p" * 501}}}}})
        error = await asyncio.wait_for(conn.recv(), 10)
    assert error.type == "error" and error.error.code == "too_large"
