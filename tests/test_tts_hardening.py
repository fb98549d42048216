"""Regression tests of the TTS review findings: bounded per-session queues, reader failures, HTTP load next
to live sessions, admission before the voice lookup, message size in bytes, damaged voice files, capped
reference decoding, thread-safe encoders, and a scheduler that is not filled by callers who left.

The real service runs in a subprocess on a free port with small limits (real Piper, real sockets); the
cases that need a cloning engine or an injected fault use the in-process server of test_tts_cloning.py
(the real ChatterboxEngine wrapper around its torch-free stand-in model)."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest
import websockets

from conftest import DATA, await_until, loop_pass, paced, read_wav, running, wait_until
from services.common.audio import decode_file
from services.common.errors import ErrorCode, ServiceError
from services.common.scheduler import Scheduler, SchedulerOptions
from services.tts.formats import AudioEncoder
from services.tts.text import ChunkerOptions
from services.tts.voices import VoiceStore
from test_tts_cloning import Server, wav_bytes
from tts_support import Received, pcm_to_float, recv_until

SENTENCE = "The little cat sat quietly on the warm kitchen floor."
STORY = " ".join(["The old clock in the hall struck nine, and the house was quiet."] * 3)


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    env = {"TTS_VOICES__STORE_DIR": str(tmp_path_factory.mktemp("voices")),
           "TTS_SERVER__MAX_CONNECTIONS": "2", "TTS_SERVER__MAX_HTTP_SYNTHESIS": "2",
           "TTS_SCHEDULER__MAX_PENDING": "4", "TTS_SERVER__SESSION_QUEUE_ITEMS": "16",
           "TTS_SERVER__MAX_MESSAGE_BYTES": "4096", "TTS_TEXT__FLUSH_AFTER_MS": "0",
           "TTS_ENGINE__CPU_THREADS": "1"}
    with running("services.tts", env, tmp_path_factory.mktemp("tts")) as service:
        yield service


def run(coro, timeout_s: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def sessions_active(service) -> int:
    return httpx.get(service.http + "/ready", timeout=10).json()["sessions"]


async def wait_sessions(service, n: int, timeout_s: float = 15) -> int:
    await await_until(lambda: sessions_active(service) == n, timeout_s, f"{n} sessions active")
    return n


def test_http_load_does_not_kill_a_live_session(tts):
    """Eight HTTP clients at once against two HTTP slots and a queue of four: the extra ones get 503 at once,
    and the live session (which waits for one piece at a time) is never refused by the scheduler."""

    async def session() -> Received:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            async for sentence in paced(STORY.split(", "), 0.05):  # a reply streamed as an LLM writes it
                await ws.send(json.dumps({"type": "text", "text": sentence + ", "}))
            await ws.send(json.dumps({"type": "end"}))
            return await recv_until(ws, got, None, timeout_s=60)

    async def http(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(tts.http + "/v1/synthesize", json={"text": STORY, "format": "pcm"}, timeout=60)

    async def go():
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(session(), *(http(client) for _ in range(8)))

    got, *responses = run(go(), 90)
    assert not got.of("error"), got.of("error")
    assert got.types[-2:] == ["done", "closed"] and got.close_code == 1000
    assert len(got.audio) / 2 / 22050 > 3.0
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]
        else:
            assert r.status_code == 200 and len(r.content) / 2 / 22050 > 3.0
    assert httpx.post(tts.http + "/v1/synthesize", json={"text": "Hello."}, timeout=30).status_code == 200


def test_flush_flood_is_merged_and_a_piece_flood_ends_with_overloaded(tts):
    async def flushes() -> Received:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": "Hello there."}))
            for _ in range(300):
                await ws.send(json.dumps({"type": "flush"}))
            await ws.send(json.dumps({"type": "end"}))
            return await recv_until(ws, got, None, timeout_s=30)

    got = run(flushes())
    assert not got.of("error") and got.types[-1] == "closed" and got.close_code == 1000
    assert 1 <= len(got.of("done")) < 50  # consecutive flushes waiting in the queue are merged
    assert got.of("segment")[0]["text"] == "Hello there."

    async def pieces() -> Received:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            try:
                for i in range(200):  # far more pieces than session_queue_items=16 waiting to be spoken
                    await ws.send(json.dumps({"type": "text", "text": f"Number {i}."}))
                    await ws.send(json.dumps({"type": "flush"}))
            except websockets.ConnectionClosed:
                pass
            return await recv_until(ws, got, None, timeout_s=30)

    got = run(pieces())
    assert [e["code"] for e in got.of("error")] == ["overloaded"]
    assert got.close_code == 1013
    assert run(wait_sessions(tts, 0)) == 0  # the slot came back
    assert httpx.get(tts.http + "/health").status_code == 200


def test_message_size_is_counted_in_bytes(tts):
    async def go(text: str) -> Received:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": text}, ensure_ascii=False))
            await ws.send(json.dumps({"type": "cancel"}))
            await ws.send(json.dumps({"type": "end"}))
            return await recv_until(ws, got, None, timeout_s=30)

    got = run(go("é" * 3000))  # 3 000 characters, 6 000 bytes: over max_message_bytes=4096
    assert got.of("error")[0]["code"] == "too_large" and got.close_code == 1009
    assert "6" in got.of("error")[0]["message"] and "bytes" in got.of("error")[0]["message"]
    got = run(go("e" * 3000))  # 3 000 bytes: accepted
    assert not got.of("error") and got.close_code == 1000


def test_admission_comes_before_the_voice_lookup(tts):
    async def refused(query: str) -> Received:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts{query}") as ws:
            return await recv_until(ws, Received(), None, timeout_s=20)

    async def go():
        assert await wait_sessions(tts, 0) == 0
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as a, \
                websockets.connect(f"{tts.ws}/v1/stream/tts") as b:
            await recv_until(a, Received(), "ready")
            await recv_until(b, Received(), "ready")
            full = await refused("?voice=nobody")  # full: refused before any voice lookup
        await wait_sessions(tts, 0)
        unknown = await refused("?voice=nobody")
        return full, unknown

    full, unknown = run(go())
    assert full.events[0]["code"] == "overloaded" and full.close_code == 1013
    assert unknown.events[0]["code"] == "not_found" and unknown.close_code == 1003  # 1008 is unauthorized's


def test_synthesize_mulaw_defaults_to_8k(tts):
    r = httpx.post(tts.http + "/v1/synthesize", json={"text": SENTENCE, "format": "mulaw"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/basic"
    assert r.headers["x-sample-rate"] == "8000"
    assert 2.0 < len(r.content) / 8000 < 7.0  # one byte per sample at 8 kHz
    assert np.abs(pcm_to_float(r.content, "mulaw")).max() > 0.1


def test_voice_upload_on_piper_is_501_even_without_fields(tts):
    for kwargs in ({}, {"data": {"name": "me"}}, {"files": {"file": ("a.wav", b"RIFF", "audio/wav")}}):
        r = httpx.post(tts.http + "/v1/voices", timeout=10, **kwargs)
        assert r.status_code == 501 and r.json()["error"]["code"] == "not_supported", (kwargs, r.text)


# -- in-process, with the cloning engine's stand-in model ------------------------------------------------

def slots_free(admission, timeout_s: float = 10) -> bool:
    """The server releases a slot just after the client sees the close."""
    wait_until(lambda: not admission.active, timeout_s, "the slots freed")
    return True


def make_voice(store: VoiceStore, conditionals: bytes, name: str = "voice"):
    """A cloned voice written straight into the store (what POST /v1/voices leaves there)."""
    jfk, rate = read_wav(DATA / "asr" / "jfk.wav")
    return store.create(name, "chatterbox", 5.0, jfk[: rate * 5].astype(np.float32) / 32768, rate,
                        lambda path: path.write_bytes(conditionals))

def test_reader_failure_ends_the_session_and_frees_its_slot(tmp_path):
    """Any exception in the reader (here an injected fault: chunker options that make push() raise
    TypeError) must give an internal error and a close, not a session that hangs holding its slot."""
    store = VoiceStore(tmp_path / "voices")
    info = make_voice(store, b'{"level": 0.3}')
    with Server(store.root) as server:
        runtime = server.app.state.runtime
        healthy = runtime.chunker_options
        runtime.chunker_options = ChunkerOptions(first_piece_max_chars=None)  # type: ignore[arg-type]

        async def go() -> Received:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/stream/tts?voice={info.id}") as ws:
                got = Received()
                await recv_until(ws, got, "ready")
                await ws.send(json.dumps({"type": "text", "text": "Hello there"}))
                return await recv_until(ws, got, None, timeout_s=15)

        got = run(go())
        assert [e["code"] for e in got.of("error")] == ["internal"] and got.close_code == 1011
        assert slots_free(runtime.admission)  # the slot came back (the old reader hung holding it)
        runtime.chunker_options = healthy
        r = httpx.post(server.http + "/v1/synthesize", json={"text": "Hello.", "voice": info.id, "format": "pcm"},
                       timeout=30)
        assert r.status_code == 200 and set(np.frombuffer(r.content, "<i2").tolist()) == {round(0.3 * 32767)}


def test_damaged_conditionals_give_a_clear_error(tmp_path):
    store = VoiceStore(tmp_path / "voices")
    info = make_voice(store, b"\x80\x04not a torch file", name="broken")
    with Server(store.root) as server:
        async def go() -> Received:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/stream/tts?voice={info.id}") as ws:
                return await recv_until(ws, Received(), None, timeout_s=15)

        got = run(go())
        assert got.events[0]["type"] == "error" and got.events[0]["code"] == "internal"
        assert info.id in got.events[0]["message"] and "damaged" in got.events[0]["message"]
        assert got.close_code == 1011
        r = httpx.post(server.http + "/v1/synthesize", json={"text": "Hello.", "voice": "broken"}, timeout=30)
        assert r.status_code == 500 and "damaged" in r.json()["error"]["message"]
        assert slots_free(server.app.state.runtime.admission)


# -- units -----------------------------------------------------------------------------------------------

def test_session_queues_are_bounded_by_count():
    """The outbox and the work queue refuse past their limit (the session then ends with overloaded; an
    end-to-end flood of bad frames would need megabytes of loopback socket buffers filled first)."""
    from services.common.outbox import CloseRequest, Outbox, OutboxFull, QueueFull
    from services.tts.protocol import Closed, Done
    from services.tts.speaker import Audio, Mark, Piece, WorkQueue, audio_bytes, droppable

    async def go():
        outbox = Outbox(4, size_of=audio_bytes, droppable=droppable)
        for _ in range(4):
            outbox.put(ServiceError(ErrorCode.BAD_MESSAGE, "bad frame"))
        for item in (ServiceError(ErrorCode.BAD_MESSAGE, "bad frame"), Done(), Audio(b"xx")):
            with pytest.raises(OutboxFull):
                outbox.put(item)
        for item in (ServiceError(ErrorCode.OVERLOADED, "full"), CloseRequest(1013), Closed()):
            outbox.put(item)  # what ends the session is never refused
        assert len(outbox) == 7
        outbox.clear()
        assert len(outbox) == 0 and outbox.bytes == 0

        work = WorkQueue(3)
        for _ in range(100):
            work.put(Mark())  # a burst of flushes: one mark
        assert len(work) == 1
        work.put(Piece("Hello.", 0.0, True))
        work.put(Mark())
        work.put(Mark(end=True))  # merged into the waiting mark, keeping end
        assert len(work) == 3
        with pytest.raises(QueueFull):
            work.put(Piece("More.", 0.0, False))
        assert isinstance(await work.get(), Mark) and isinstance(await work.get(), Piece)
        assert await work.get() == Mark(end=True) and work.empty()

    run(go(), 10)


def test_decode_file_stops_past_max_duration():
    jfk, rate = read_wav(DATA / "asr" / "jfk.wav")  # 11 s
    data = wav_bytes(np.tile(jfk, 30), rate)  # 5.5 minutes
    with pytest.raises(ServiceError) as err:
        decode_file(data, 24000, max_duration_s=31.0)
    assert err.value.code is ErrorCode.BAD_AUDIO and "31 s" in err.value.message
    audio = decode_file(wav_bytes(jfk, rate), 24000, max_duration_s=31.0)
    assert abs(audio.size / 24000 - jfk.size / rate) < 0.05


def test_file_encoder_close_while_encoding_is_safe():
    encoder = AudioEncoder("mp3", 22050)
    chunk = (np.sin(np.arange(2205) / 10) * 0.3).astype(np.float32)
    stop = threading.Event()
    out = []

    def worker():
        while not stop.is_set():
            out.append(encoder.encode(chunk))

    thread = threading.Thread(target=worker)
    thread.start()
    while not any(out):
        pass
    encoder.close()  # the loop closes the response while the worker thread encodes
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert encoder.encode(chunk) == b"" and encoder.finish() == b""


def test_scheduler_does_not_count_callers_that_left():
    release, entered = threading.Event(), threading.Event()

    def slow(batch):
        entered.set()
        release.wait(10)
        return batch

    async def go():
        scheduler = Scheduler("t", slow, SchedulerOptions(max_batch=1, max_pending=2))
        await scheduler.start()
        try:
            running = asyncio.ensure_future(scheduler.submit("running"))
            assert await asyncio.to_thread(entered.wait, 10)  # the model holds "running"
            waiting = [asyncio.ensure_future(scheduler.submit(f"w{i}")) for i in range(2)]
            await loop_pass()  # the two submits queue their requests
            assert scheduler.depth == 2
            with pytest.raises(ServiceError):
                await scheduler.submit("refused")  # full: two wait
            for task in waiting:
                task.cancel()  # their callers left (a barge-in, a closed response)
            await loop_pass()
            later = asyncio.ensure_future(scheduler.submit("later"))
            await loop_pass()
            release.set()
            assert await later == "later" and await running == "running"
        finally:
            release.set()
            await scheduler.stop()

    run(go(), 20)
