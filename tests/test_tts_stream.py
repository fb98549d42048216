"""End-to-end tests of WS /v1/stream/tts: the real service in a subprocess, real Piper, real sockets,
and the project's own ASR model checking that the words are spoken."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from conftest import loop_pass, metric, paced, running
from services.common.outbox import Outbox
from services.tts.formats import AudioEncoder
from services.tts.protocol import Done
from services.tts.serving import TtsRuntime
from services.tts.settings import load
from services.tts.speaker import Audio, Mark, Piece, Speaker, WorkQueue, audio_bytes, droppable
from services.tts.text import TextChunker
from tts_support import Received, Transcriber, mostly_heard, pcm_to_float, recv_until

SENTENCE = "The little cat sat quietly on the warm kitchen floor."
FAKE_CLONE_ID = "c0" * 16


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    store = tmp_path_factory.mktemp("voices")
    # A voice cloned by a chatterbox instance sharing the store: this piper instance must refuse it clearly.
    (store / FAKE_CLONE_ID).mkdir()
    (store / FAKE_CLONE_ID / "meta.json").write_text(json.dumps(
        {"id": FAKE_CLONE_ID, "name": "cloned-elsewhere", "engine": "chatterbox", "cloned": True,
         "duration": 5.0, "created_at": 1.0}))
    env = {"TTS_VOICES__STORE_DIR": str(store), "TTS_SERVER__MAX_CONNECTIONS": "12",
           "TTS_TEXT__FLUSH_AFTER_MS": "400", "TTS_SERVER__MAX_MESSAGE_BYTES": "65536",
           "TTS_ENGINE__CPU_THREADS": "2"}
    with running("services.tts", env, tmp_path_factory.mktemp("tts")) as service:
        yield service


@pytest.fixture(scope="module")
def transcribe():
    return Transcriber()


def run(coro):
    return asyncio.run(coro)


async def say(url: str, fragments: list[str], *, pace_s: float = 0.0, query: str = "") -> Received:
    async with websockets.connect(f"{url}/v1/stream/tts{query}") as ws:
        got = Received()
        await recv_until(ws, got, "ready")
        async for fragment in paced(fragments, pace_s):  # a client writing as an LLM does
            await ws.send(json.dumps({"type": "text", "text": fragment}))
        await ws.send(json.dumps({"type": "end"}))
        return await recv_until(ws, got, None, timeout_s=60)


def test_word_by_word_stream_is_spoken(tts, transcribe):
    words = [w + " " for w in (SENTENCE + " It was happy.").split()]
    got = run(say(tts.ws, words, pace_s=0.02))
    ready = got.events[0]
    assert ready["type"] == "ready" and ready["voice"] == "en_US-joe-medium"
    assert ready["sample_rate"] == 22050 and ready["encoding"] == "pcm_s16le" and ready["session_id"]
    assert got.types[-2:] == ["done", "closed"] and got.close_code == 1000
    segments = got.of("segment")
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert " ".join(s["text"] for s in segments) == SENTENCE + " It was happy."
    # each segment is announced before its audio
    assert got.types.index("segment") < got.types.index("audio")
    audio = pcm_to_float(got.audio)
    assert 2.0 < audio.size / 22050 < 8.0
    assert mostly_heard(SENTENCE + " It was happy.", transcribe(audio, 22050))


def test_mulaw_8k_telephony(tts, transcribe):
    got = run(say(tts.ws, [SENTENCE], query="?encoding=mulaw&sample_rate=8000"))
    assert got.events[0]["sample_rate"] == 8000 and got.events[0]["encoding"] == "mulaw"
    audio = pcm_to_float(got.audio, "mulaw")
    assert 1.5 < audio.size / 8000 < 6.0  # one byte per sample
    assert mostly_heard(SENTENCE, transcribe(audio, 8000))


def test_flush_done_and_timed_flush(tts):
    async def go():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": "an unfinished"}))
            await ws.send(json.dumps({"type": "flush"}))
            await recv_until(ws, got, "done")
            assert got.of("segment")[0]["text"] == "an unfinished" and got.audio
            # no punctuation, no flush: spoken after flush_after_ms (400 ms here), not at once: the two
            # fragments sent back to back make one segment
            n = len(got.audio)
            await ws.send(json.dumps({"type": "text", "text": "waiting for"}))
            await ws.send(json.dumps({"type": "text", "text": " more"}))
            await recv_until(ws, got, "segment", timeout_s=5)
            assert got.of("segment")[-1]["text"] == "waiting for more"
            await ws.send(json.dumps({"type": "flush"}))
            await recv_until(ws, got, "done")
            assert len(got.audio) > n
            # only punctuation / emoji: nothing to speak, but flush still answers done
            await ws.send(json.dumps({"type": "text", "text": "... 🙂🙂 !!"}))
            await ws.send(json.dumps({"type": "flush"}))
            await recv_until(ws, got, "done")
            await ws.send(json.dumps({"type": "flush"}))
            before = len(got.events)
            await recv_until(ws, got, "done")
            assert got.types[before:] in (["done"], ["audio", "done"], ["audio", "audio", "done"])

    run(go())


def test_barge_in_cancel(tts, transcribe):
    long_text = " ".join(["This is a long story about a very patient dog who waits for dinner every single day."] * 6)

    async def go():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": long_text}))
            while not got.audio:
                await recv_until(ws, got, "segment")
            await ws.send(json.dumps({"type": "cancel"}))
            await recv_until(ws, got, "cancelled")
            # acknowledged ahead of the reply's audio: well under half of its ~30 s had been sent
            assert len(got.audio) / (2 * 22050) < 15, len(got.audio)
            # nothing of the cancelled text may follow: the next thing is the new text's segment
            await ws.send(json.dumps({"type": "text", "text": "Hello again."}))
            await ws.send(json.dumps({"type": "flush"}))
            after = Received()
            await recv_until(ws, after, "done")
            assert after.types[0] == "segment" and after.events[0]["text"] == "Hello again."
            assert after.types[-1] == "done"
            assert mostly_heard("Hello again", transcribe(pcm_to_float(after.audio), 22050), 1.0)
            # the story was not spoken to its end
            assert len(got.audio) / 2 / 22050 < 10
            await ws.send(json.dumps({"type": "end"}))
            await recv_until(ws, after, "closed")

    run(go())


def test_concurrent_sessions_and_a_bad_client(tts, transcribe):
    texts = ["One bright morning the baker opened his shop.", "Green apples fell from the old tree.",
             "My brother plays the guitar every evening.", "The train to the city leaves at noon."]

    async def bad_client():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            for junk in ("not json", json.dumps({"type": "dance"}), json.dumps([1]), json.dumps({"type": "text"}),
                         json.dumps({"type": "text", "text": ""})):
                await ws.send(junk)
            await ws.send(b"\x00\x01\x02")  # binary frame: bad_message, not fatal
            await ws.send(json.dumps({"type": "text", "text": "Still alive."}))
            await ws.send(json.dumps({"type": "end"}))
            await recv_until(ws, got, None)
            return got

    async def go():
        return await asyncio.gather(*(say(tts.ws, [t]) for t in texts), bad_client())

    *results, bad = run(go())
    for text, got in zip(texts, results):
        assert got.types[-2:] == ["done", "closed"]
        assert mostly_heard(text, transcribe(pcm_to_float(got.audio), 22050)), text
    errors = bad.of("error")
    assert [e["code"] for e in errors] == ["bad_message"] * 6
    assert all(e["message"] for e in errors)
    assert bad.of("segment")[0]["text"] == "Still alive." and bad.types[-2:] == ["done", "closed"]
    assert bad.close_code == 1000


@pytest.mark.parametrize("query,code,close", [
    ("?voice=nobody", "not_found", 1003),  # 1008 is reserved for unauthorized
    ("?voice=../../etc", "not_found", 1003),
    (f"?voice={FAKE_CLONE_ID}", "not_supported", 1003),
    ("?encoding=opus", "bad_audio", 1003),
    ("?sample_rate=100", "bad_audio", 1003),
])
def test_refused_sessions(tts, query, code, close):
    async def go():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts{query}") as ws:
            return await recv_until(ws, Received(), None)

    got = run(go())
    assert got.events[0]["type"] == "error" and got.events[0]["code"] == code
    assert got.close_code == close
    if code == "not_supported":
        assert "chatterbox" in got.events[0]["message"]


def test_too_large_message_closes_1009(tts):
    async def go():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts", max_size=None) as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": "a" * 200_000}))
            return await recv_until(ws, got, None)

    got = run(go())
    assert got.of("error")[0]["code"] == "too_large" and got.close_code == 1009


def test_a_lone_surrogate_in_text_is_a_bad_message_and_the_session_goes_on(tts):
    """JSON may carry "\\ud800" (half a UTF-16 pair): Python parses it into a string nothing can encode. It
    used to end the session with no error event; it is refused like any bad message, and speech goes on."""
    async def go():
        async with websockets.connect(tts.ws + "/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send('{"type": "text", "text": "broken \\ud800 text. "}')
            await ws.send(json.dumps({"type": "text", "text": "Hello there."}))
            await ws.send(json.dumps({"type": "end"}))
            return await recv_until(ws, got, None)

    got = asyncio.run(go())
    errors = got.of("error")
    assert [e["code"] for e in errors] == ["bad_message"] and "surrogate" in errors[0]["message"]
    assert [s["text"] for s in got.of("segment")] == ["Hello there."] and len(got.audio) > 0
    assert got.types[-2:] == ["done", "closed"] and got.close_code == 1000


def test_ops_endpoints(tts):
    assert httpx.get(tts.http + "/health").status_code == 200
    ready = httpx.get(tts.http + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(tts.http + "/metrics").text
    for name in ("tts_sessions_active", "tts_queue_depth", "tts_time_to_first_audio_seconds",
                 "tts_real_time_factor", "tts_cancels_total", "tts_errors_total"):
        assert name in text, name
    assert 'tts_errors_total{code="bad_message"}' in text


def test_each_reply_after_done_is_a_new_turn_and_an_idle_session_then_times_out(tmp_path):
    """After a reply's ``done`` the session is idle again: the next reply's first piece is a first piece (cut
    short, served first, counted in time to first audio), and with nothing more sent the idle timeout closes it.
    (A regression: the queued ``done`` mark left the session 'speaking' for good, so later replies waited behind
    other sessions' later pieces and an idle session was never closed.)"""
    env = {"TTS_VOICES__STORE_DIR": str(tmp_path / "voices"), "TTS_SERVER__IDLE_TIMEOUT_S": "2",
           "TTS_ENGINE__CPU_THREADS": "2"}
    sentences = ["Our meeting has been moved to three o'clock on Thursday.",
                 "Please remember to water the plants before you leave."]

    async def go(service) -> Received:
        async with websockets.connect(f"{service.ws}/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            for text in sentences:
                await ws.send(json.dumps({"type": "text", "text": text}))
                last_sent = time.perf_counter()
                await ws.send(json.dumps({"type": "flush"}))
                await recv_until(ws, got, "done")
            await recv_until(ws, got, None, timeout_s=15)
            got.idle_s = time.perf_counter() - last_sent  # the idle timer runs from the last message received
            return got

    with running("services.tts", env, tmp_path) as service:
        got = run(go(service))
        first_audio = metric(service, "tts_time_to_first_audio_seconds_count")
    # each reply starts with a short first piece (first_piece_max_chars), then the rest of its sentence
    assert [s["text"] for s in got.of("segment")] == ["Our meeting has", "been moved to three o'clock on Thursday.",
                                                     "Please remember", "to water the plants before you leave."]
    assert first_audio == len(sentences)
    # the service's own 2 s timer, from the last message (a lower bound: a busy machine cannot make it fail)
    assert got.of("error")[-1]["code"] == "timeout" and got.idle_s > 1.9


def test_a_reply_waiting_for_room_in_a_full_audio_buffer_is_already_speaking(tmp_path):
    """The next reply's first piece waits for a slow reader to make room: the session counts as speaking from
    the moment the piece is taken, so a piece cut meanwhile is not another 'first' (URGENT, timed), and a drain
    then does not close the session with the taken piece unspoken. Real runtime (Piper), real outboxes."""
    async def go():
        runtime = TtsRuntime.load(load(voices={"store_dir": str(tmp_path)}, engine={"cpu_threads": 2}))
        await runtime.start()
        try:
            voice = await runtime.voices.resolve(None)
            out = Outbox(100, size_of=audio_bytes, droppable=droppable, limit_bytes=4000)
            work = WorkQueue(100)
            speaker = Speaker(runtime, voice, AudioEncoder("pcm", 22050), out, TextChunker(runtime.chunker_options))
            task = asyncio.create_task(speaker.speak(work, out.generation))
            work.put(Piece("Hello there.", time.perf_counter(), first=True))
            work.put(Mark(flushes=1))
            while not isinstance(await asyncio.wait_for(out.get(), 30), Done):  # the client reads the first reply
                pass
            idle_after_reply = not speaker.speaking
            out.put(Audio(b"\0" * 8000))  # then reads no more: the audio budget is spent
            work.put(Piece("Second reply.", time.perf_counter(), first=not speaker.speaking and work.empty()))
            for _ in range(1000):  # event-loop passes, no time: until the speaker has taken the piece
                if work.empty():
                    break
                await loop_pass()
            taken = work.empty()
            speaking_while_waiting = speaker.speaking and len(out) == 1  # waiting for room, the piece unspoken
            speaker.draining = True
            closed = speaker.leave_if_drained(work, out.generation)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return idle_after_reply, taken, speaking_while_waiting, closed
        finally:
            await runtime.stop()

    idle_after_reply, taken, speaking_while_waiting, closed = run(go())
    assert idle_after_reply  # done ended the reply
    assert taken
    assert speaking_while_waiting and not closed
