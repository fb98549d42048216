"""Resource bounds: what one client can make a process hold, and for how long.

* idle sessions end with ``timeout``/1000 and give back their slot;
* a peer that vanished without a close (no pong to the WebSocket pings) is
  dropped after ``ping_interval + ping_timeout`` and gives back its slot;
* a slow reader holds synthesis back: a TTS client that does not read gets
  about ``max_buffered_audio_s`` of audio made for it, not the whole text, and
  its session still works afterwards;
* the ASR outbox is bounded (partials of an utterance merge; past the limit the
  session is ended, finals/errors/closes are never refused);
* the cache of cloned voices' conditionals is an LRU of ``voices.cache_size``:
  evicted conditionals are freed, so memory does not grow with the number of voices;
* a finished ASR session (superseded partials, speculative finals and all) is
  freed by reference counting alone, with the cyclic collector off: garbage in
  reference cycles waits for a full collection, and a session's garbage holds
  seconds of audio and native codec state (the soak's memory growth).

The TTS checks run the real service (real Piper) in this process with small
limits (and pings every second where a test needs them); the engine is loaded once and shared by the apps.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import re
import socket
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from conftest import wait_until
from inprocess import InProcessServer
from services.asr.protocol import Partial, merge_partials
from services.common.outbox import CloseRequest, Outbox, OutboxFull
from services.common.errors import ErrorCode, ServiceError
from services.tts.voices import VoiceCatalog, VoiceStore

MAX_BUFFERED_AUDIO_S = 2.0
PING_S = 1.0
IDLE_S = 1.5


@pytest.fixture(scope="module")
def piper(tmp_path_factory):
    from services.tts.piper import PiperEngine
    from services.tts.settings import load

    return PiperEngine.from_settings(load(engine={"cpu_threads": 2}))


def tts_server(piper, store: Path, ping_s: float = 20.0, send_buffer_bytes: int | None = None,
               **server) -> InProcessServer:
    from services.tts.app import create_app
    from services.tts.settings import load

    settings = load(voices={"store_dir": str(store)}, server={"log_level": "warning", **server})
    return InProcessServer(create_app(settings, engine=piper), ping_interval_s=ping_s, ping_timeout_s=ping_s,
                          send_buffer_bytes=send_buffer_bytes)


@pytest.fixture(scope="module")
def tts_idle(piper, tmp_path_factory):
    with tts_server(piper, tmp_path_factory.mktemp("voices"), idle_timeout_s=IDLE_S) as server:
        yield server


@pytest.fixture(scope="module")
def tts_pinging(piper, tmp_path_factory):
    with tts_server(piper, tmp_path_factory.mktemp("voices"), ping_s=PING_S, idle_timeout_s=60) as server:
        yield server


@pytest.fixture(scope="module")
def tts_slow(piper, tmp_path_factory):
    with tts_server(piper, tmp_path_factory.mktemp("voices"), send_buffer_bytes=16384, idle_timeout_s=60,
                    max_buffered_audio_s=MAX_BUFFERED_AUDIO_S) as server:
        yield server


def sessions(server: InProcessServer) -> int:
    return httpx.get(server.http + "/ready", timeout=10).json()["sessions"]


def wait_for_no_sessions(server: InProcessServer, bound_s: float) -> None:
    wait_until(lambda: not sessions(server), bound_s, "the session's slot freed")


def server_frames(sock: socket.socket) -> list[int]:
    """The opcodes of the frames a server sent on a raw socket, read to its end (after the 101 response)."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    data = data[data.index(b"\r\n\r\n") + 4:]
    opcodes = []
    while len(data) >= 2:
        n, head = data[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[2:10], "big"), 10
        opcodes.append(data[0] & 0x0F)
        data = data[head + n:]
    return opcodes


def test_idle_tts_session_times_out_and_frees_its_slot(tts_idle):
    async def go():
        async with websockets.connect(tts_idle.ws + "/v1/stream/tts") as ws:
            events = []
            async for message in ws:
                events.append(json.loads(message))
            return events, ws.close_code
    events, code = asyncio.run(asyncio.wait_for(go(), 20))
    assert events[0]["type"] == "ready" and events[-1]["type"] == "error" and events[-1]["code"] == "timeout"
    assert code == 1000
    wait_for_no_sessions(tts_idle, 5)


def test_vanished_peer_is_dropped_by_the_ping_timeout(tts_pinging):
    """A raw client completes the handshake, then neither reads nor answers pings (a dead peer whose
    TCP connection stays open): the server drops it after ping interval + timeout, long before idle."""
    tts_slow = tts_pinging
    sock = socket.create_connection(("127.0.0.1", tts_slow.port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET /v1/stream/tts HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 101"
        wait_until(lambda: sessions(tts_slow), 10, "the session open")
        wait_for_no_sessions(tts_slow, 20)  # idle timeout is 60 s: only the pings can end it
        frames = server_frames(sock)  # read only now: while it ran, the client read nothing
        assert 0x9 in frames, frames  # a ping went unanswered before the server dropped the peer
    finally:
        sock.close()


def test_slow_reader_holds_synthesis_back(tts_slow):
    sentences = " ".join(f"This is sentence number {i} of a long answer." for i in range(40))  # ~100 s of speech

    def produced_s() -> float:
        text = httpx.get(tts_slow.http + "/metrics", timeout=10).text
        found = re.search(r"^tts_audio_seconds_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    async def go():
        before = produced_s()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", tts_slow.port))
        async with websockets.connect(tts_slow.ws + "/v1/stream/tts?sample_rate=48000", sock=sock, max_queue=1,
                                      ping_interval=None) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "text", "text": sentences}))
            await ws.send(json.dumps({"type": "flush"}))
            # not reading: the bound shows in what was not produced meanwhile, so the test must give it time
            await asyncio.sleep(5.0)
            held = produced_s() - before
            await ws.send(json.dumps({"type": "cancel"}))
            kinds = []
            while "cancelled" not in kinds:
                message = await asyncio.wait_for(ws.recv(), 30)
                kinds.append("audio" if isinstance(message, bytes) else json.loads(message)["type"])
            await ws.send(json.dumps({"type": "text", "text": "Still here."}))
            await ws.send(json.dumps({"type": "end"}))
            rest = []
            async for message in ws:
                rest.append("audio" if isinstance(message, bytes) else json.loads(message)["type"])
            return held, rest, ws.close_code
    held, rest, code = asyncio.run(asyncio.wait_for(go(), 90))
    # the buffer (filled past its limit by up to one piece), the piece the writer is sending, the transports'
    # write buffers (~1 s at 48 kHz),
    # not the 100 s of text (Piper makes that much in a few seconds when nothing holds it back)
    assert 0 < held <= MAX_BUFFERED_AUDIO_S + 10, held
    assert "audio" in rest and rest[-2:] == ["done", "closed"] and code == 1000


# -- ASR outbox -------------------------------------------------------------------------------

def test_asr_outbox_merges_partials_and_is_bounded():
    async def go():
        box = Outbox(limit=8, merge=merge_partials)
        for i in range(100):  # a client that does not read: the utterance's partials replace each other
            box.put(Partial(0, f"text {i}", "", i / 10))
        assert len(box) == 1 and (await box.get()).text == "text 99"
        for i in range(8):
            box.put(Partial(i, "x", "", 0.0))  # different utterances do not merge
        with pytest.raises(OutboxFull):
            box.put(Partial(99, "x", "", 0.0))
        box.put(ServiceError(ErrorCode.OVERLOADED, "slow"), force=True)  # errors and closes still go out
        box.put(CloseRequest(1013), force=True)
        assert len(box) == 10
    asyncio.run(go())


# -- voice conditionals LRU ----------------------------------------------------------------------

class Conditionals:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.weights = np.zeros(50_000, np.float32)  # stands in for a voice's tensors


class LoadingEngine:
    name = "chatterbox"
    can_clone = True
    lanes = 1
    first_lanes = 0

    def __init__(self) -> None:
        self.loads = 0
        self.alive: list[weakref.ref] = []

    def builtin_voices(self):
        return {"builtin": 24000}

    def sample_rate_hz(self, voice_id):
        return 24000

    def load_conditionals(self, path):
        self.loads += 1
        conds = Conditionals(Path(path).read_bytes())
        self.alive.append(weakref.ref(conds))
        return conds


def test_voice_conditionals_cache_is_a_bounded_lru(tmp_path):
    store = VoiceStore(tmp_path)
    engine = LoadingEngine()
    catalog = VoiceCatalog(engine, store, default=None, aliases=[], cache_size=4)
    ids = [store.create(f"v{i}", "chatterbox", 5.0, np.full(24000 * 3, 0.1, np.float32), 24000,
                        lambda path, i=i: Path(path).write_bytes(f"voice-{i}".encode())).id for i in range(40)]

    async def go():
        for voice_id in ids:  # 40 voices through a cache of 4
            resolved = await catalog.resolve(voice_id)
            assert resolved.conditionals.payload.decode() == f"voice-{ids.index(voice_id)}"
            del resolved
        assert catalog.cached == 4 and engine.loads == 40
        gc.collect()
        assert sum(ref() is not None for ref in engine.alive) == 4  # evicted conditionals are freed
        # least recently used goes first: touch the oldest cached, add a new one, the touched one stays
        oldest = ids[-4]
        await catalog.resolve(oldest)
        assert engine.loads == 40
        await catalog.resolve(ids[0])
        await catalog.resolve(oldest)
        assert engine.loads == 41
        await catalog.resolve(ids[-3])  # the one evicted instead
        assert engine.loads == 42
    asyncio.run(go())


def test_finished_asr_sessions_are_freed_without_the_cyclic_collector(jfk):
    from conftest import stream_asr as stream
    from services.asr.app import create_app
    from services.asr.settings import load

    with InProcessServer(create_app(load(server={"log_level": "warning"}))) as server:
        url = server.ws + "/v1/stream/asr"
        audio = jfk.tobytes() + bytes(32000)

        async def two_streams():
            # two at real time with partials on: partials supersede each other in the Whisper queue
            return await asyncio.gather(*(stream(url, audio, speed=1.0) for _ in range(2)))

        gc.collect()
        gc.disable()
        try:
            results = asyncio.run(two_streams())
            wait_for_no_sessions(server, 10)

            def left() -> list[str]:
                return sorted(type(o).__name__ for o in gc.get_objects()
                              if type(o).__name__ in ("AsrSession", "DecodeRequest", "SampleBuffer"))

            # A batch still running, or a server thread finishing a session, holds them until it returns; with
            # the collector off, what sits in a cycle is never freed, and the wait fails with what is left.
            try:
                wait_until(lambda: not left(), 10, "sessions and requests freed by reference counting")
                alive = []
            except AssertionError:
                alive = left()
        finally:
            gc.enable()
        assert all(r.close_code == 1000 and r.of("final") for r in results)
        # the partial path ran (partials take at most half of Whisper's time: fewer than the audio would allow; on a
        # busy CPU one of the two streams may get none, as partials are the first work to give way)
        assert any(r.of("partial") for r in results)
        assert server.runtime.metrics.registry.get_sample_value(
            "asr_sessions_total") == 2
        assert not alive, f"left for the cyclic collector: {sorted(type(o).__name__ for o in alive)}"


def _masked_text_frame(payload: bytes) -> bytes:
    """One client->server WebSocket text frame (clients must mask), built by hand: no library reads for us."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_flooding_bad_frames_without_reading_is_closed_within_the_outbox_bound(caplog):
    """Each bad frame is answered with a bad_message error. A client that sends thousands and reads nothing
    used to get every error queued past the outbox bound (they were forced), and its session lived on; now
    they count against server.outbound_queue and the session fails with overloaded."""
    from services.asr.app import create_app
    from services.asr.settings import load

    bound = 32
    caplog.set_level("INFO", logger="services.common.session")
    app = create_app(load(server={"log_level": "warning", "outbound_queue": bound, "idle_timeout_s": 60}))
    with InProcessServer(app, send_buffer_bytes=4096) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        try:
            key = base64.b64encode(os.urandom(16))
            sock.sendall(b"GET /v1/stream/asr HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 101"
            frame = _masked_text_frame(json.dumps({"type": "x" * 2000}).encode())
            sent = 0
            try:
                for _ in range(3000):  # ~6 MB of bad frames; the answers would be ~250 KB of errors
                    sock.sendall(frame)
                    sent += 1
            except (socket.timeout, OSError):
                pass  # the server stopped reading us: fine
            wait_for_no_sessions(server, 25)  # the client still holds its end open and reads nothing
        finally:
            sock.close()
    assert sent > bound
    failures = [r for r in caplog.records if r.getMessage() == "session failed"]
    assert failures and failures[0].code == "overloaded", [r.getMessage() for r in caplog.records]
