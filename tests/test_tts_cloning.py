"""Voice cloning without torch: the real ChatterboxEngine wrapper around a stand-in model with the
library's interface (``conds`` on the model object, ``prepare_conditionals``, ``generate_stream`` reading
``self.conds`` at every chunk). Checks that a request's voice never leaks into another's, that the
stored conditionals are never mutated, and, through a real server on a free port, the whole cloning
API: reference validation (Silero VAD), the store, concurrent sessions in different cloned voices,
persistence across a restart, deletion."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
import websockets

from conftest import DATA, ThreadedServer, free_port, read_wav
from services.tts.app import create_app
from services.tts.chatterbox import ChatterboxEngine
from services.tts.engine import CloneJob, SynthesisJob
from services.tts.settings import load
from tts_support import Received, recv_until

RATE = 24000
CHUNK = 2400


class FakeConds:
    """Shaped like chatterbox.tts.Conditionals(t3, gen); the voice's loudness ("level") lives in gen.
    ``FakeConds(0.3)`` is a voice at level 0.3; ``FakeConds(t3, gen)`` is how the engine copies one."""

    def __init__(self, t3: float | str, gen: dict | None = None) -> None:
        if gen is None:
            t3, gen = "original", {"level": float(t3)}
        self.t3 = t3
        self.gen = gen

    @property
    def level(self) -> float:
        return self.gen["level"]

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"level": self.level}))

    @classmethod
    def load(cls, path, map_location="cpu") -> "FakeConds":
        return cls(json.loads(Path(path).read_text())["level"])  # a damaged file raises JSONDecodeError

    def to(self, device) -> "FakeConds":
        return self


class FakeChatterbox:
    """Mimics ChatterboxTTS's stateful voice handling; its audio is a constant at the voice's level."""

    sr = RATE

    def __init__(self, builtin: FakeConds | None = None, chunks: int = 4, fail_on: str | None = None) -> None:
        self.conds = builtin
        self.chunks = chunks
        self.fail_on = fail_on

    def prepare_conditionals(self, wav_fpath, exaggeration=0.5) -> None:
        with wave.open(str(wav_fpath)) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        peak = np.abs(samples).max() / 32768
        self.conds = FakeConds(0.3 if peak > 0.5 else 0.1)

    def generate_stream(self, text, exaggeration=0.5, cfg_weight=0.5, temperature=0.8, chunk_size=25,
                        context_window=50, print_metrics=True):
        assert self.conds is not None, "Please `prepare_conditionals` first"
        self.conds.t3 = "mutated"  # what the library does when exaggeration differs
        self.conds.gen["touched"] = True  # and what a future version might do to gen
        for i in range(self.chunks):
            time.sleep(0.003)  # a chunk's compute, off the GIL as the real model's: concurrent voices interleave
            if self.fail_on and self.fail_on in text and i == 1:
                raise RuntimeError("boom")
            yield np.full((1, CHUNK), self.conds.level, np.float32), None  # reads self.conds every chunk


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return buf.getvalue()


# -- the wrapper on its own -----------------------------------------------------------------

def test_each_request_speaks_its_own_voice_and_nothing_stays_on_the_model():
    model = FakeChatterbox(builtin=FakeConds(0.5))
    engine = ChatterboxEngine(model, FakeConds)
    assert model.conds is None and list(engine.builtin_voices()) == ["chatterbox-default"]
    a, b = FakeConds(0.1), FakeConds(0.3)
    heard: dict[str, list[float]] = {"a": [], "b": [], "builtin": []}

    def speak(key, conds, voice="cloned"):
        for _ in range(10):
            job = SynthesisJob("hello", voice, conds, sink=lambda s, r: heard[key].extend(np.unique(s).tolist()))
            engine.synthesize(job)

    threads = [threading.Thread(target=speak, args=("a", a)), threading.Thread(target=speak, args=("b", b)),
               threading.Thread(target=speak, args=("builtin", None, "chatterbox-default"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.allclose(heard["a"], 0.1) and np.allclose(heard["b"], 0.3) and np.allclose(heard["builtin"], 0.5)
    assert len(heard["a"]) == len(heard["b"]) == 40  # 10 requests x 4 chunks
    assert model.conds is None
    assert a.t3 == b.t3 == "original"  # the stored voice was not mutated by generate_stream
    assert a.gen == {"level": 0.1} and b.gen == {"level": 0.3}


def test_failure_and_cancel_leave_the_model_clean():
    model = FakeChatterbox(fail_on="bad")
    engine = ChatterboxEngine(model, FakeConds)
    with pytest.raises(RuntimeError):
        engine.synthesize(SynthesisJob("bad text", "x", FakeConds(0.1)))
    assert model.conds is None
    job = SynthesisJob("good", "x", FakeConds(0.1))
    got = []
    job.sink = lambda s, r: (got.append(s), job.cancelled.set())
    result = engine.synthesize(job)
    assert result.cancelled and len(got) == 1 and model.conds is None
    conds = engine.clone(CloneJob(np.full(RATE * 4, 0.9, np.float32), RATE))
    assert conds.level == 0.3 and model.conds is None


# -- the cloning API over a real server -------------------------------------------------------

class Server:
    def __init__(self, store: Path, **voices) -> None:
        settings = load(voices={"store_dir": str(store), "min_speech_s": 1.0, **voices},
                        server={"log_level": "warning"})
        self.app = create_app(settings, engine=ChatterboxEngine(FakeChatterbox(), FakeConds))
        self.port = free_port()
        self.server = ThreadedServer(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning"), start_timeout_s=20)

    def __enter__(self) -> "Server":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def upload(server: Server, data: bytes, name: str = "voice") -> httpx.Response:
    return httpx.post(server.http + "/v1/voices", files={"file": ("ref.wav", data, "audio/wav")},
                      data={"name": name}, timeout=30)


def test_cloning_api_end_to_end(tmp_path):
    jfk, rate = read_wav(DATA / "asr" / "jfk.wav")  # 11 s of speech
    loud = (jfk.astype(np.float32) * (0.95 * 32767 / np.abs(jfk).max())).astype(np.int16)
    quiet = (jfk.astype(np.float32) * (0.3 * 32767 / np.abs(jfk).max())).astype(np.int16)
    store = tmp_path / "voices"
    with Server(store) as server:
        a = upload(server, wav_bytes(loud, rate), "loud")
        b = upload(server, wav_bytes(quiet, rate), "quiet")
        assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
        assert set(a.json()) == {"id", "name", "engine", "duration"}
        assert a.json()["engine"] == "chatterbox" and a.json()["duration"] == pytest.approx(11.0, abs=0.1)
        ida, idb = a.json()["id"], b.json()["id"]
        before = sorted(p.name for p in store.rglob("*"))

        rng = np.random.default_rng(0)
        bad_uploads = {
            "corrupt": (b"RIFF\x00\x00garbage" * 50, {400, 415}, None),
            "empty": (b"", {400}, "bad_audio"),
            "one second": (wav_bytes(loud[:rate], rate), {400}, "bad_audio"),
            "silent": (wav_bytes(np.zeros(rate * 5), rate), {400}, "bad_audio"),
            "noise": (wav_bytes(rng.normal(0, 300, rate * 5), rate), {400}, "bad_audio"),
            "too long": (wav_bytes(np.tile(loud, 3), rate), {400}, "bad_audio"),
        }
        for what, (data, statuses, code) in bad_uploads.items():
            r = upload(server, data)
            assert r.status_code in statuses, (what, r.text)
            assert r.json()["error"]["message"], what
            if code:
                assert r.json()["error"]["code"] == code, what
        assert upload(server, wav_bytes(loud, rate), name="").status_code in (400, 422)
        assert sorted(p.name for p in store.rglob("*")) == before  # nothing in the store was damaged

        listed = httpx.get(server.http + "/v1/voices").json()
        assert {v["id"] for v in listed if v["cloned"]} == {ida, idb}
        assert httpx.get(server.http + f"/v1/voices/{ida}").json()["name"] == "loud"

        async def session(voice: str) -> Received:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/stream/tts?voice={voice}") as ws:
                got = Received()
                await recv_until(ws, got, "ready")
                for i in range(4):
                    await ws.send(json.dumps({"type": "text", "text": f"Sentence number {i}. "}))
                await ws.send(json.dumps({"type": "end"}))
                return await recv_until(ws, got, None)

        async def both():
            return await asyncio.gather(*(session(v) for v in (ida, idb, "quiet", ida, idb)))

        results = asyncio.run(both())
        for got, level in zip(results, (0.3, 0.1, 0.1, 0.3, 0.1)):
            assert got.events[0]["sample_rate"] == RATE and got.types[-2:] == ["done", "closed"]
            values = set(np.frombuffer(bytes(got.audio), dtype="<i2").tolist())
            assert values == {round(level * 32767)}  # only this session's voice, ever

        r = httpx.post(server.http + "/v1/synthesize", json={"text": "Hello there.", "voice": "loud",
                                                             "format": "pcm"})
        assert set(np.frombuffer(r.content, dtype="<i2").tolist()) == {round(0.3 * 32767)}

    with Server(store) as server:  # a restart (or another instance on the same store)
        assert {v["id"] for v in httpx.get(server.http + "/v1/voices").json() if v["cloned"]} == {ida, idb}
        assert httpx.delete(server.http + f"/v1/voices/{ida}").status_code == 204
        assert httpx.get(server.http + f"/v1/voices/{ida}").status_code == 404
        r = httpx.post(server.http + "/v1/synthesize", json={"text": "Hello.", "voice": ida})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert httpx.get(server.http + "/v1/voices/..%2F..%2Fetc").status_code == 404


def test_max_voices_holds_when_clone_requests_race(tmp_path):
    """Eight clone requests at once against a store that takes three: the count used to be checked before
    the request's first await, so every one of them passed it."""
    jfk, rate = read_wav(DATA / "asr" / "jfk.wav")
    data = wav_bytes(jfk, rate)

    async def race(server: Server) -> list[int]:
        async with httpx.AsyncClient(base_url=server.http, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/v1/voices", files={"file": ("ref.wav", data)},
                                                           data={"name": f"v{i}"}) for i in range(8)))
        return sorted(r.status_code for r in responses)

    with Server(tmp_path / "voices", max_voices=3) as server:
        statuses = asyncio.run(race(server))
        assert statuses == [201] * 3 + [422] * 5, statuses
        assert len(httpx.get(server.http + "/v1/voices", timeout=10).json()) == 3  # the fake has no built-in voice
