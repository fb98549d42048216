"""Fault isolation: a failure inside the real engine path fails one session with ``internal``, nobody else.

The real services run in this process (``inprocess.InProcessServer``) on their
real models. The faults are injected into the *third-party* objects our engines
call, never into our own code:

* ASR: faster-whisper's ``FeatureExtractor`` and the CTranslate2 Whisper model
  (``engine._model.model``) are wrapped by proxies that fail for audio carrying
  a marker - a 64-sample alternating pattern at an exact int16 amplitude, which
  survives the 16 kHz pcm_s16le path bit for bit. One marker makes feature
  extraction raise (a decode failure), one makes ``encode`` raise
  ``RuntimeError`` (an engine exception), one ``TimeoutError``. CTranslate2 sees
  these rows inside batches with good sessions' rows, so the scheduler's
  one-by-one retry is what keeps the good sessions alive.
* TTS: the ``PiperVoice`` object of the embedded voice is wrapped so that its
  ``synthesize`` generator raises after the first chunk of any text with a
  marker word.

Each test proves: the poisoned session gets ``{"type":"error","code":"internal"}``
and close 1011; concurrent good sessions get correct results; a later session
works; the process is still up.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import normalise, wait_until, stream_asr as stream
from inprocess import InProcessServer
from tts_support import Transcriber, mostly_heard, pcm_to_float, speak

JFK_WORDS = normalise("And so my fellow Americans, ask not what your country can do for you, "
                      "ask what you can do for your country.")
MARKERS = {"feature": 12345, "encode": 11111, "timeout": 10101}  # int16 amplitude of each marker
HANG = 20202  # a marker that makes ``encode`` hang until the test releases it
MARK_AT_S = 2.0
MARK_LEN = 64
# An injected failure takes this long, as a failing device call does, rather than failing at once: the other streams'
# finals, due within milliseconds, then queue behind it and share the next batch. (Failing at once, marked requests
# that came first could each run alone before the good ones arrived: no batch mixed the two in ~1 run of 10.)
FAILURE_S = 0.3


def mark(samples: np.ndarray, amplitude: int) -> np.ndarray:
    out = samples.copy()
    at = int(MARK_AT_S * 16000)
    out[at:at + MARK_LEN] = np.tile(np.array([amplitude, -amplitude], np.int16), MARK_LEN // 2)
    return out


def marker_in(audio: np.ndarray) -> str | None:
    """Which marker the float32 audio carries (exactly), if any."""
    audio = np.asarray(audio, dtype=np.float32)
    for kind, amplitude in {**MARKERS, "hang": HANG}.items():
        value = np.float32(amplitude / 32768.0)
        for i in np.flatnonzero(audio[: max(0, audio.size - MARK_LEN)] == value)[:64]:
            window = audio[i:i + MARK_LEN]
            if np.all(window[0::2] == value) and np.all(window[1::2] == -value):
                return kind
    return None


def fingerprint(feats: np.ndarray, width: int) -> tuple[int, bytes]:
    """The first ``width`` frames of a log-mel matrix (the engine pads features after them)."""
    import hashlib

    return width, hashlib.sha1(np.ascontiguousarray(feats[:, :width]).tobytes()).digest()


class FaultyFeatures:
    """faster-whisper's FeatureExtractor, failing (or fingerprinting) marked audio."""

    def __init__(self, real, poisoned: dict[tuple[int, bytes], str]) -> None:
        self.real = real
        self.poisoned = poisoned
        self.lock = threading.Lock()

    def __call__(self, audio, *args, **kwargs):
        kind = marker_in(audio)
        if kind == "feature":
            time.sleep(FAILURE_S)  # a failing device call takes time (see FAILURE_S)
            raise ValueError("feature extraction failed (injected)")
        feats = self.real(audio, *args, **kwargs)
        if kind is not None:
            with self.lock:
                self.poisoned[fingerprint(feats, feats.shape[1])] = kind
        return feats

    def __getattr__(self, name):
        return getattr(self.real, name)


class FaultyWhisper:
    """The CTranslate2 Whisper model; ``encode`` fails for batches holding a fingerprinted row."""

    def __init__(self, real, poisoned: dict[tuple[int, bytes], str]) -> None:
        self.real = real
        self.poisoned = poisoned
        self.encodes = 0
        self.mixed_batches = 0  # batches with good and poisoned rows together (the retry path)
        self.release = threading.Event()  # a "hang" batch returns once this is set
        self.hanging = threading.Event()

    def encode(self, features, *args, **kwargs):
        arr = np.asarray(features)
        widths = {width for width, _ in list(self.poisoned)}
        kinds = [next((self.poisoned[fp] for fp in (fingerprint(row, w) for w in widths) if fp in self.poisoned), None)
                 for row in arr]
        self.encodes += 1
        bad = [k for k in kinds if k is not None]
        if "hang" in bad:  # a native call that does not return (a wedged device, a deadlock)
            self.hanging.set()
            self.release.wait(120)
            return self.real.encode(features, *args, **kwargs)
        if bad:
            if len(bad) < len(kinds):
                self.mixed_batches += 1
            time.sleep(FAILURE_S)  # a failing device call takes time (see FAILURE_S)
            if "timeout" in bad:
                raise TimeoutError("device timed out (injected)")
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return self.real.encode(features, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _faulty_asr_server(**scheduler):
    from services.asr.app import create_app
    from services.asr.settings import load

    settings = load(server={"max_connections": 8, "idle_timeout_s": 10, "log_level": "warning"},
                    model={"cpu_threads": 2}, scheduler=scheduler)
    server = InProcessServer(create_app(settings)).__enter__()
    engine = server.runtime.engine
    poisoned: dict[tuple[int, bytes], str] = {}
    engine._feature_extractor = FaultyFeatures(engine._feature_extractor, poisoned)
    engine._model.model = FaultyWhisper(engine._model.model, poisoned)
    return server


@pytest.fixture(scope="module")
def faulty_asr():
    server = _faulty_asr_server(final_max_batch=8)  # finals batched (as by default; 1 would decode them one at a
    # time): one batch can then mix good and poisoned requests, the case the scheduler's retry path is for
    yield server
    server.__exit__(None, None, None)


def run(coro):
    return asyncio.run(coro)


def test_asr_engine_failures_fail_only_their_session(faulty_asr, jfk, caplog):
    url = faulty_asr.ws + "/v1/stream/asr"
    params = {"turn_detection": "vad"}
    tail = bytes(32000)  # 1 s of silence ends the utterance

    async def go():
        good = [stream(url, jfk.tobytes() + tail, speed=4.0, params=params) for _ in range(2)]
        bad = [stream(url, mark(jfk, amplitude).tobytes() + tail, speed=4.0, params=params)
               for amplitude in MARKERS.values()]
        return await asyncio.wait_for(asyncio.gather(*good, *bad), 120)

    *good, bad_feature, bad_encode, bad_timeout = run(go())
    for result in good:
        assert not result.of("error"), result.of("error")
        assert normalise(result.final_text) == JFK_WORDS and result.close_code == 1000
    for result in (bad_feature, bad_encode, bad_timeout):
        errors = result.of("error")
        assert [e["code"] for e in errors] == ["internal"], result.events
        assert result.events[-1] == errors[0] and result.close_code == 1011
        assert not result.of("final")
    retried = [r for r in caplog.records if "retrying one by one" in r.getMessage()]
    assert retried, "no batch mixed good and poisoned requests: the scheduler's retry path was not exercised"

    # the shared model and scheduler carry on: a later session and an upload are transcribed
    later = run(stream(url, jfk.tobytes() + tail, params=params))
    assert normalise(later.final_text) == JFK_WORDS and later.close_code == 1000
    assert faulty_asr.alive
    assert httpx.get(faulty_asr.http + "/health", timeout=10).status_code == 200
    metrics = httpx.get(faulty_asr.http + "/metrics", timeout=10).text
    assert 'asr_errors_total{code="internal"}' in metrics


def wav(samples: np.ndarray) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_asr_upload_failure_is_internal_and_the_next_upload_works(faulty_asr, jfk):
    bad = httpx.post(faulty_asr.http + "/v1/transcribe", files={"file": ("a.wav", wav(mark(jfk, MARKERS["encode"])))},
                     timeout=60)
    assert bad.status_code == 500 and bad.json()["error"]["code"] == "internal"
    good = httpx.post(faulty_asr.http + "/v1/transcribe", files={"file": ("a.wav", wav(jfk))}, timeout=60)
    assert good.status_code == 200 and normalise(good.json()["text"]) == JFK_WORDS


def test_asr_hung_model_call_is_cut_off_and_the_instance_recovers(jfk):
    """A CTranslate2 call that does not return: its session gets ``internal`` after ``call_timeout_s``, the
    instance refuses new work clearly (WS overloaded/1013, HTTP 503, /ready 503 "stalled") instead of letting
    clients wait, stays alive, and serves again once the call returns."""
    server = _faulty_asr_server(call_timeout_s=1.5)
    whisper = server.runtime.engine._model.model
    try:
        url = server.ws + "/v1/stream/asr"
        params = {"turn_detection": "vad"}
        tail = bytes(32000)
        hung = run(stream(url, mark(jfk, HANG).tobytes() + tail, speed=4.0, params=params, timeout_s=60))
        assert whisper.hanging.is_set() and not whisper.release.is_set()
        assert [e["code"] for e in hung.of("error")] == ["internal"], hung.events
        # its hung request "did not answer within 1.5 s"; its queued ones: the model "is not answering"
        assert "whisper model" in hung.of("error")[0]["message"] and hung.close_code == 1011

        # still hung: nobody is left waiting, everything new is refused at once and says why
        ready = httpx.get(server.http + "/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "stalled"
        assert ready.json()["stalled"] == ["whisper"]
        assert httpx.get(server.http + "/health", timeout=10).status_code == 200
        refused = run(stream(url, jfk.tobytes()[:32000], params=params, timeout_s=10))
        assert [e["code"] for e in refused.of("error")] == ["overloaded"] and refused.close_code == 1013
        upload = httpx.post(server.http + "/v1/transcribe", files={"file": ("a.wav", wav(jfk))}, timeout=10)
        assert upload.status_code == 503 and upload.json()["error"]["code"] == "overloaded"

        whisper.release.set()  # the call returns at last: the instance serves again
        wait_until(lambda: httpx.get(server.http + "/ready", timeout=10).status_code == 200, 10, "serving again")
        assert httpx.get(server.http + "/ready", timeout=10).json()["status"] == "ready"
        later = run(stream(url, jfk.tobytes() + tail, params=params))
        assert normalise(later.final_text) == JFK_WORDS and later.close_code == 1000
        metrics = httpx.get(server.http + "/metrics", timeout=10).text
        assert 'asr_model_stalls_total{model="whisper"} 1.0' in metrics
        assert "process_resident_memory_bytes" in metrics
    finally:
        whisper.release.set()
        server.__exit__(None, None, None)


# -- TTS ---------------------------------------------------------------------------------------

POISON_WORD = "Zanzibar"
GOOD_TEXT = "The little cat sat quietly on the warm kitchen floor."


class FaultyVoice:
    """piper's PiperVoice; ``synthesize`` raises, once the model has run, for a text naming the poison word."""

    def __init__(self, real) -> None:
        self.real = real
        self.failures = 0

    def synthesize(self, text, *args, **kwargs):
        for chunk in self.real.synthesize(text, *args, **kwargs):
            if POISON_WORD in text:
                self.failures += 1
                raise RuntimeError("onnxruntime: Non-zero status code returned while running node (injected)")
            yield chunk

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def faulty_tts(tmp_path_factory):
    from services.tts.app import create_app
    from services.tts.piper import EMBEDDED_VOICE, PiperEngine
    from services.tts.settings import load

    settings = load(voices={"store_dir": str(tmp_path_factory.mktemp("voices"))},
                    server={"log_level": "warning"}, engine={"cpu_threads": 2},
                    piper={"noise_scale": 0, "noise_w_scale": 0})  # deterministic: see conftest.DETERMINISTIC_TTS
    engine = PiperEngine.from_settings(settings)
    engine._voices[EMBEDDED_VOICE] = FaultyVoice(engine._voices[EMBEDDED_VOICE])
    lanes = engine._lane_voices[EMBEDDED_VOICE]  # pieces of concurrent sessions run on the lanes' copies
    for lane, voice in lanes.items():
        lanes[lane] = FaultyVoice(voice)
    with InProcessServer(create_app(settings, engine=engine)) as server:
        yield server


def test_tts_engine_failure_fails_only_its_session(faulty_tts):
    # the first piece speaks; the second piece's synthesis fails inside Piper
    poisoned_text = f"The boat is ready to go. Tomorrow we sail to {POISON_WORD} with friends."

    async def go():
        return await asyncio.wait_for(asyncio.gather(
            speak(faulty_tts.ws, GOOD_TEXT), speak(faulty_tts.ws, poisoned_text),
            speak(faulty_tts.ws, GOOD_TEXT)), 120)

    good_a, bad, good_b = run(go())
    engine = faulty_tts.runtime.engine
    voices = [engine._voices["en_US-joe-medium"], *engine._lane_voices["en_US-joe-medium"].values()]
    assert sum(voice.failures for voice in voices) >= 1
    errors = bad.of("error")
    assert [e["code"] for e in errors] == ["internal"] and bad.close_code == 1011, bad.events
    assert bad.events[-1] == errors[0]
    transcribe = Transcriber()
    for got in (good_a, good_b):
        assert not got.of("error") and got.close_code == 1000 and got.types[-2:] == ["done", "closed"]
        rate = got.of("ready")[0]["sample_rate"]
        assert mostly_heard(GOOD_TEXT, transcribe(pcm_to_float(got.audio), rate)), "good session's audio is not the text"
    later = run(speak(faulty_tts.ws, GOOD_TEXT))
    assert not later.of("error") and later.close_code == 1000 and len(later.audio) > later.of("ready")[0]["sample_rate"]
    assert faulty_tts.alive and httpx.get(faulty_tts.http + "/health", timeout=10).status_code == 200
