"""POST /v1/transcribe and the OpenAI-compatible POST /v1/audio/transcriptions, over real HTTP."""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
import openai
import pytest

from conftest import DATA, normalise

JFK = DATA / "asr" / "jfk.wav"
JFK_WORDS = normalise("And so my fellow Americans, ask not what your country can do for you, "
                      "ask what you can do for your country.")


def encode(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode int16 mono audio with FFmpeg (PyAV) into another format, as a user's file would be."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as c:
        stream = c.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return out.getvalue()


def test_transcribe_wav_with_words(asr_service):
    with open(JFK, "rb") as f:
        r = httpx.post(asr_service.http + "/v1/transcribe", files={"file": ("jfk.wav", f, "audio/wav")},
                       data={"word_timestamps": "true"}, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"text", "language", "duration", "segments", "processing_ms"}
    assert normalise(body["text"]) == JFK_WORDS and body["language"] == "en"
    assert body["duration"] == pytest.approx(11.0, abs=0.01)
    words = [w for s in body["segments"] for w in s["words"]]
    assert [normalise(w["word"])[0] for w in words if normalise(w["word"])] == JFK_WORDS
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(0 <= w["probability"] <= 1 for w in words)
    assert [s["id"] for s in body["segments"]] == list(range(len(body["segments"])))


@pytest.mark.parametrize("container,codec", [("mp3", "libmp3lame"), ("ogg", "libopus"), ("flac", "flac")])
def test_transcribe_compressed_formats(asr_service, jfk, container, codec):
    data = encode(jfk, 16000, container, codec)
    r = httpx.post(asr_service.http + "/v1/transcribe", files={"file": (f"jfk.{container}", data)}, timeout=60)
    assert r.status_code == 200, r.text
    words = normalise(r.json()["text"])
    assert len(set(words) & set(JFK_WORDS)) >= 0.9 * len(set(JFK_WORDS))


def test_openai_client_verbose_json_with_words(asr_service):
    client = openai.OpenAI(base_url=asr_service.http + "/v1", api_key="unused")
    with open(JFK, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"])
    assert normalise(result.text) == JFK_WORDS
    assert result.duration == pytest.approx(11.0, abs=0.01)
    assert result.segments and result.words and normalise(result.words[0].word) == ["and"]


def test_openai_client_json_text_srt_vtt(asr_service):
    client = openai.OpenAI(base_url=asr_service.http + "/v1", api_key="unused")
    with open(DATA / "asr" / "quilter.wav", "rb") as f:
        data = f.read()
    plain = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data))
    assert {"quilter", "apostle", "gospel"} <= set(normalise(plain.text))
    text = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data), response_format="text")
    assert normalise(text) == normalise(plain.text)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data), response_format="srt")
    assert srt.startswith("1\n00:00:00,") and " --> " in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:") and " --> " in vtt


# -- bad input --------------------------------------------------------------------------------

def _post(service, path="/v1/transcribe", **kwargs):
    return httpx.post(service.http + path, timeout=60, **kwargs)


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def test_empty_upload(asr_service):
    _error(_post(asr_service, files={"file": ("a.wav", b"")}), 400, "bad_audio")


def test_corrupt_and_non_audio_uploads(asr_service):
    _error(_post(asr_service, files={"file": ("a.wav", b"RIFF\x00\x00garbage" * 50)}), 415, "unsupported_media")
    _error(_post(asr_service, files={"file": ("a.txt", b"hello, this is text not audio\n" * 20)}), 415,
           "unsupported_media")


def test_missing_file_field(asr_service):
    _error(_post(asr_service, data={"language": "en"}), 400, "bad_request")


def test_upload_over_the_limit(asr_service):
    _error(_post(asr_service, files={"file": ("big.wav", bytes(4_200_000))}), 413, "too_large")


def test_a_chunked_upload_over_the_limit_is_413_too(asr_service):
    """No Content-Length (chunked transfer): the body is counted as it arrives. The multipart parser used to
    report the cut-off body as its own 400."""
    boundary = "voiceboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(80):  # 5.2 MB, over the test instance's 4 MB
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(asr_service.http + "/v1/transcribe", content=body(), timeout=60,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    _error(r, 413, "too_large")


def test_invalid_parameters(asr_service):
    with open(JFK, "rb") as f:
        data = f.read()
    msg = _error(_post(asr_service, "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                       data={"model": "whisper-1", "response_format": "docx"}), 422, "invalid_parameter")
    assert "response_format" in msg
    _error(_post(asr_service, "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                 data={"model": "whisper-1", "temperature": "7"}), 422, "invalid_parameter")
    msg = _error(_post(asr_service, files={"file": ("a.wav", data)}, data={"language": "de"}), 422,
                 "invalid_parameter")
    assert "English-only" in msg


def test_silence_gives_empty_text(asr_service):
    silence = encode(np.zeros(16000 * 3, dtype=np.int16), 16000, "wav", "pcm_s16le")
    r = _post(asr_service, files={"file": ("s.wav", silence)})
    assert r.status_code == 200 and r.json()["text"] == "" and r.json()["segments"] == []


def test_health_ready_metrics(asr_service):
    assert httpx.get(asr_service.http + "/health").json() == {"status": "ok"}
    assert httpx.get(asr_service.http + "/ready").status_code == 200
    metrics = httpx.get(asr_service.http + "/metrics").text
    for name in ("asr_sessions_active", "asr_queue_depth", "asr_batch_size_bucket", "asr_inference_seconds_bucket",
                 "asr_time_to_final_seconds_bucket", "asr_refusals_total", "asr_errors_total"):
        assert name in metrics
