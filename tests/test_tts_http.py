"""End-to-end tests of the TTS HTTP API: /v1/synthesize, OpenAI /v1/audio/speech (with the official
client), /v1/voices on the Piper engine, and the contract's error bodies. Real service, real Piper."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import running
from tts_support import Transcriber, decode_container, mostly_heard, pcm_to_float

SENTENCE = "Please bring the blue umbrella to the station tomorrow."


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    store = tmp_path_factory.mktemp("voices")
    env = {"TTS_VOICES__STORE_DIR": str(store), "TTS_TEXT__MAX_TEXT_CHARS": "5000", "TTS_ENGINE__CPU_THREADS": "2"}
    with running("services.tts", env, tmp_path_factory.mktemp("tts")) as service:
        yield service


@pytest.fixture(scope="module")
def transcribe():
    return Transcriber()


def post(tts, path: str, **body) -> httpx.Response:
    return httpx.post(tts.http + path, json=body, timeout=30)


def test_synthesize_wav_streams_and_is_intelligible(tts, transcribe):
    text = SENTENCE + " The weather will be cold and windy. " + "We will meet at the north entrance."
    chunks = []
    with httpx.stream("POST", tts.http + "/v1/synthesize", json={"text": text}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.headers.get("transfer-encoding") == "chunked"  # streamed, not buffered
        chunks = list(r.iter_raw())
    assert len(chunks) > 1
    audio, rate, codec = decode_container(b"".join(chunks))
    assert rate == 22050 and codec == "pcm_s16le" and audio.size / rate > 3.0
    assert mostly_heard(text, transcribe(audio / 32768.0, rate))


@pytest.mark.parametrize("fmt,rate", [("pcm", 16000), ("mulaw", 8000), ("wav", 44100), ("pcm", None)])
def test_synthesize_raw_formats_and_rates(tts, transcribe, fmt, rate):
    body = {"text": SENTENCE, "format": fmt}
    if rate:
        body["sample_rate"] = rate
    r = post(tts, "/v1/synthesize", **body)
    assert r.status_code == 200
    assert r.headers["content-type"] == {"pcm": "audio/pcm", "mulaw": "audio/basic", "wav": "audio/wav"}[fmt]
    rate = rate or 22050
    if fmt == "wav":
        audio, got_rate, _ = decode_container(r.content)
        assert got_rate == rate
        audio = audio / 32768.0
    else:
        audio = pcm_to_float(r.content, "mulaw" if fmt == "mulaw" else "pcm_s16le")
    assert 2.0 < audio.size / rate < 7.0
    assert mostly_heard(SENTENCE, transcribe(audio, rate))


@pytest.mark.parametrize("fmt,codec", [("mp3", "mp3"), ("flac", "flac"), ("opus", "opus"), ("aac", "aac"),
                                       ("wav", "pcm_s16le")])
def test_openai_speech_formats_decode(tts, fmt, codec):
    r = post(tts, "/v1/audio/speech", model="tts-1", input=SENTENCE, voice="alloy", response_format=fmt)
    assert r.status_code == 200, r.text
    audio, rate, got_codec = decode_container(r.content)
    assert got_codec.startswith(codec) or codec in got_codec
    assert rate == (48000 if fmt == "opus" else 22050)
    assert audio.size / rate > 1.5


def test_openai_client(tts, transcribe, tmp_path):
    client = openai.OpenAI(base_url=tts.http + "/v1", api_key="unused")
    response = client.audio.speech.create(model="tts-1", voice="nova", input=SENTENCE, response_format="pcm")
    audio = pcm_to_float(response.content)
    assert mostly_heard(SENTENCE, transcribe(audio, 24000))  # OpenAI's pcm is 24 kHz
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Short and sweet.", response_format="mp3", speed=1.5) as streamed:
        path = tmp_path / "out.mp3"
        streamed.stream_to_file(path)
    audio, rate, codec = decode_container(path.read_bytes())
    assert codec.startswith("mp3") and audio.size / rate > 0.3
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")


def test_speed_changes_duration(tts):
    def seconds(speed):
        r = post(tts, "/v1/audio/speech", input=SENTENCE, response_format="pcm", speed=speed)
        return len(r.content) / 2 / 24000

    assert seconds(2.0) < 0.7 * seconds(1.0)


@pytest.mark.parametrize("path,body,status,code", [
    ("/v1/synthesize", {"text": ""}, 400, "bad_request"),
    ("/v1/synthesize", {"text": "   "}, 400, "bad_request"),
    ("/v1/synthesize", {"text": "🙂🙂 ... !!!"}, 400, "bad_request"),
    ("/v1/synthesize", {"text": "a" * 1_000_000}, 413, "too_large"),
    ("/v1/synthesize", {"text": "hi", "voice": "nobody"}, 404, "not_found"),
    ("/v1/synthesize", {"text": "hi", "voice": "../../etc/passwd"}, 404, "not_found"),
    ("/v1/synthesize", {"text": "hi", "format": "ogg"}, 422, "invalid_parameter"),
    ("/v1/synthesize", {"text": "hi", "sample_rate": 100}, 422, "invalid_parameter"),
    ("/v1/synthesize", {}, 422, "invalid_parameter"),
    ("/v1/audio/speech", {"input": "hi", "response_format": "wma"}, 422, "invalid_parameter"),
    ("/v1/audio/speech", {"input": "hi", "speed": 10}, 422, "invalid_parameter"),
])
def test_bad_requests(tts, path, body, status, code):
    r = post(tts, path, **body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_invalid_json(tts):
    for raw in (b"{bad", b"[1,2]", b"\xff\xfe"):
        r = httpx.post(tts.http + "/v1/synthesize", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_voices_on_piper(tts, tmp_path):
    voices = httpx.get(tts.http + "/v1/voices").json()
    assert voices == [{"id": "en_US-joe-medium", "name": "en_US-joe-medium", "engine": "piper", "cloned": False}]
    assert httpx.get(tts.http + "/v1/voices/en_US-joe-medium").json()["engine"] == "piper"
    wav = httpx.post(tts.http + "/v1/synthesize", json={"text": SENTENCE * 2}).content
    r = httpx.post(tts.http + "/v1/voices", files={"file": ("ref.wav", wav, "audio/wav")}, data={"name": "me"})
    assert r.status_code == 501 and r.json()["error"]["code"] == "not_supported"
    assert "chatterbox" in r.json()["error"]["message"]
    for bad in ("..%2F..%2Fetc", "nobody", "a" * 32):
        assert httpx.get(tts.http + f"/v1/voices/{bad}").status_code == 404
        assert httpx.delete(tts.http + f"/v1/voices/{bad}").status_code == 404
    assert httpx.delete(tts.http + "/v1/voices/en_US-joe-medium").status_code == 400
