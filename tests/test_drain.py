"""SIGTERM drains everything an instance has accepted, on a real ASR process: a stream whose utterance only a
commit would end (turn_detection=none) gets that utterance's final before 1001, and an upload in flight
finishes with its transcript; then the process exits 0. (The stream cases of smart_turn mode and TTS are in
tests/test_cluster.py.)"""

from __future__ import annotations

import asyncio
import signal
import threading

import httpx
import numpy as np

from conftest import DATA, ServiceProcess, await_until, metric, normalise, read_wav, wait_until, stream_asr as stream
from test_tts_cloning import wav_bytes

ENV = {"ASR_SERVER__DRAIN_TIMEOUT_S": "20", "ASR_MODEL__CPU_THREADS": "2", "ASR_SERVER__IDLE_TIMEOUT_S": "30"}


def test_sigterm_gives_an_open_utterance_of_a_commit_only_stream_its_final(tmp_path):
    jfk = read_wav(DATA / "asr" / "jfk.wav")[0]
    service = ServiceProcess("services.asr", ENV, tmp_path / "asr.log").start()
    try:
        async def scenario():
            task = asyncio.create_task(stream(service.ws + "/v1/stream/asr", jfk.tobytes(), speed=1.0,
                                              params={"turn_detection": "none"}, timeout_s=60))
            await await_until(lambda: metric(service, "asr_audio_seconds_total") >= 4.0, 20,
                              "...ask not what your country' under way")
            service.proc.send_signal(signal.SIGTERM)
            return await task

        result = asyncio.run(scenario())
        finals = result.of("final")
        # nothing but commit/end would have ended this utterance: the drain ends it (reason end), final first
        assert [f["reason"] for f in finals] == ["end"], result.events[-5:]
        assert normalise(finals[0]["text"])[:4] == ["and", "so", "my", "fellow"]
        assert result.close_code == 1001
        assert service.proc.wait(30) == 0
    finally:
        service.stop()


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path):
    clips = [read_wav(DATA / "asr" / f"{n}.wav")[0] for n in ("jfk", "quilter", "wizard")]
    audio = np.concatenate([np.concatenate([c, np.zeros(8000, np.int16)]) for c in clips] * 3)  # ~80 s
    service = ServiceProcess("services.asr", ENV, tmp_path / "asr.log").start()
    try:
        answer: dict = {}

        def upload() -> None:
            r = httpx.post(service.http + "/v1/transcribe", files={"file": ("a.wav", wav_bytes(audio, 16000))},
                           timeout=90)
            answer.update(status=r.status_code, body=r.json())

        thread = threading.Thread(target=upload)
        thread.start()
        wait_until(lambda: metric(service, "asr_file_audio_seconds_total") or metric(
            service, "asr_batch_size_count") >= 3, 20, "the upload's audio being cut and decoded")
        service.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(service.http + "/ready", timeout=5).json()["status"] == "draining", 10,
                   "/ready says draining")
        refused = httpx.post(service.http + "/v1/transcribe", files={"file": ("b.wav", wav_bytes(clips[0], 16000))},
                             timeout=10)
        assert refused.status_code == 503 and "retry-after" in refused.headers  # new work goes elsewhere
        thread.join(90)
        assert answer["status"] == 200, answer
        words = normalise(answer["body"]["text"])
        assert words.count("fellow") == 3 and words.count("wizard") == 3  # all of it, not a cut-off
        assert service.proc.wait(30) == 0
        assert "drained" in service.log()
    finally:
        service.stop()
