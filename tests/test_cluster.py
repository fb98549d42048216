"""A real cluster on loopback: nginx (rendered by deploy/nginx/render.py, run in the foreground) in front of
two ASR instances (``python -m services.asr``) and two TTS instances sharing one voice store. The TTS instances
are the real TTS service served exactly like ``python -m services.tts``, with the cloning-capable engine around a
torch-free stand-in model (tests/cloning_tts.py), because the default Piper engine cannot clone voices.

The tests run in file order and the last two take instances away: one ASR instance is killed while streams run,
then the other is drained with SIGTERM in the middle of an utterance."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from conftest import (DATA, ROOT, Loopback, ServiceProcess, await_until, free_port, metric, normalise, read_wav,
                      stream_asr as stream, wait_until)
from test_tts_cloning import wav_bytes
from tts_support import Received, recv_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/install.sh installs it)")

ASR_ENV = {
    "ASR_SERVER__MAX_CONNECTIONS": "3",
    "ASR_SERVER__IDLE_TIMEOUT_S": "30",
    "ASR_SERVER__DRAIN_TIMEOUT_S": "25",
    "ASR_MODEL__CPU_THREADS": "1",
}


class Cluster(Loopback):
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        store = tmp / "voices"
        store.mkdir()
        tts_env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
                   "TTS_VOICES__STORE_DIR": str(store), "TTS_SERVER__DRAIN_TIMEOUT_S": "10"}
        self.asr = [ServiceProcess("services.asr", ASR_ENV, tmp / f"asr{i}.log") for i in range(2)]
        self.tts = [ServiceProcess("cloning_tts", tts_env, tmp / f"tts{i}.log") for i in range(2)]
        self.port = free_port()
        self.nginx: subprocess.Popen | None = None

    def start(self) -> "Cluster":
        errors: list[BaseException] = []

        def start(service: ServiceProcess) -> None:
            try:
                service.start(timeout_s=180)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in self.asr + self.tts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        run = self.tmp / "nginx"
        run.mkdir()
        ports = lambda services: ",".join(str(s.port) for s in services)  # noqa: E731
        conf = subprocess.run([sys.executable, str(ROOT / "deploy/nginx/render.py"), "--listen",
                               f"127.0.0.1:{self.port}", "--asr", ports(self.asr), "--tts", ports(self.tts),
                               "--standalone", str(run)] + (["--user", "root"] if os.geteuid() == 0 else []),
                              capture_output=True, text=True, check=True).stdout
        (run / "nginx.conf").write_text(conf)
        self.nginx = subprocess.Popen([NGINX, "-p", str(run), "-c", str(run / "nginx.conf"), "-e",
                                       str(run / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        def healthy() -> bool:
            try:
                return httpx.get(self.http + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            wait_until(healthy, 20, "nginx healthy")
        except AssertionError:
            raise TimeoutError("nginx did not start: " + (run / "error.log").read_text(errors="replace")) from None
        return self

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(10)
        for service in self.asr + self.tts:
            if service.proc is not None and service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    return {name: read_wav(DATA / "asr" / f"{name}.wav")[0].tobytes() for name in ("jfk", "wizard", "quilter")}


def test_streams_and_posts_spread_over_both_instances(cluster, speech):
    async def streams():
        clips = [speech["wizard"], speech["quilter"], speech["wizard"], speech["quilter"]]
        return await asyncio.gather(*(stream(cluster.ws + "/v1/stream/asr", a, speed=4.0, timeout_s=90)
                                      for a in clips))

    for result in asyncio.run(streams()):
        assert result.close_code == 1000 and result.of("closed"), result.events[-3:]
        assert result.final_text, result.events
    for _ in range(4):
        r = httpx.post(cluster.http + "/v1/transcribe", timeout=120,
                       files={"file": ("wizard.wav", wav_bytes(np.frombuffer(speech["wizard"], "<i2"), 16000))})
        assert r.status_code == 200 and normalise(r.json()["text"]), r.text

    async def tts_session(i: int) -> Received:
        async with websockets.connect(cluster.ws + "/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": f"Sentence number {i}. Another one. "}))
            await ws.send(json.dumps({"type": "end"}))
            return await recv_until(ws, got, None)

    async def tts_sessions():
        return await asyncio.gather(*(tts_session(i) for i in range(4)))

    for got in asyncio.run(tts_sessions()):
        assert got.types[-2:] == ["done", "closed"] and got.close_code == 1000 and len(got.audio) > 0
    for _ in range(4):
        r = httpx.post(cluster.http + "/v1/synthesize", json={"text": "Hello there.", "format": "pcm"}, timeout=60)
        assert r.status_code == 200 and len(r.content) > 0

    for asr in cluster.asr:  # every instance took streams and uploads
        assert metric(asr, "asr_sessions_total") >= 1 and metric(asr, "asr_file_audio_seconds_total") > 0
    for tts in cluster.tts:
        assert metric(tts, "tts_sessions_total") >= 1 and metric(tts, "tts_http_synthesis_total") >= 1
    assert sum(metric(a, "asr_sessions_total") for a in cluster.asr) == 4


def test_a_voice_registered_through_nginx_is_everywhere_and_deleted_everywhere(cluster):
    jfk, rate = read_wav(DATA / "asr" / "jfk.wav")
    loud = (jfk.astype(np.float32) * (0.95 * 32767 / np.abs(jfk).max())).astype(np.int16)
    r = httpx.post(cluster.http + "/v1/voices", files={"file": ("ref.wav", wav_bytes(loud, rate), "audio/wav")},
                   data={"name": "cluster-voice"}, timeout=60)
    assert r.status_code == 201, r.text
    voice = r.json()["id"]
    level = {round(0.3 * 32767)}  # the stand-in model speaks a loud reference at 0.3
    for tts in cluster.tts:
        assert httpx.get(tts.http + f"/v1/voices/{voice}").json()["name"] == "cluster-voice"
        s = httpx.post(tts.http + "/v1/synthesize", json={"text": "Hello.", "voice": voice, "format": "pcm"},
                       timeout=60)
        assert s.status_code == 200 and set(np.frombuffer(s.content, "<i2").tolist()) == level
    assert httpx.delete(cluster.http + f"/v1/voices/{voice}", timeout=30).status_code == 204
    for tts in cluster.tts:
        assert httpx.get(tts.http + f"/v1/voices/{voice}").status_code == 404
        s = httpx.post(tts.http + "/v1/synthesize", json={"text": "Hello.", "voice": voice}, timeout=60)
        assert s.status_code == 404 and s.json()["error"]["code"] == "not_found"


def test_a_full_instance_says_503_and_new_streams_land_on_the_other(cluster, speech):
    full, other = cluster.asr

    async def scenario():
        held = [await websockets.connect(full.ws + "/v1/stream/asr") for _ in range(3)]  # max_connections = 3
        try:
            for ws in held:
                assert json.loads(await ws.recv())["type"] == "ready"
            ready = httpx.get(full.http + "/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "full"
            before = metric(full, "asr_sessions_total"), metric(other, "asr_sessions_total")
            results = await asyncio.gather(*(stream(cluster.ws + "/v1/stream/asr", speech["wizard"], speed=4.0,
                                                    timeout_s=90) for _ in range(2)))
            for result in results:
                assert result.close_code == 1000 and result.final_text, result.events[-3:]
            assert metric(full, "asr_sessions_total") == before[0]
            assert metric(other, "asr_sessions_total") == before[1] + 2
        finally:
            for ws in held:
                await ws.close()

    asyncio.run(scenario())


def test_locust_smoke_run_through_nginx_has_no_failures(cluster, tmp_path):
    """The documented load test, bounded: 4 users for 10 s against the nginx front. The figures are read from
    ``--json-file``, written once every user has stopped; the CSV, rewritten once a second while the run goes on,
    misses the sessions that end while ``--stop-timeout`` lets them finish."""
    locust = Path(sys.executable).with_name("locust")
    run = subprocess.run([str(locust), "-f", str(ROOT / "loadtest/locustfile.py"), "--headless", "-u", "4", "-r", "4",
                          "-t", "10s", "--stop-timeout", "40", "--only-summary", "--host", cluster.http,
                          "--json-file", str(tmp_path / "smoke")], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "LOADTEST_CLIPS": str(DATA / "asr" / "*.wav")})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {(r["method"], r["name"]): r for r in json.loads((tmp_path / "smoke.json").read_text())}
    assert all(r["num_failures"] == 0 for r in rows.values()), rows
    for row in (("ASR-WS", "session"), ("ASR-WS", "time_to_final"), ("TTS-WS", "time_to_first_audio")):
        assert row in rows and rows[row]["num_requests"] >= 1, (row, sorted(rows), run.stderr[-2000:])


def test_no_key_reaches_nginx_access_log(cluster, speech):
    """Browsers put their key in the WebSocket URL (?api_key=...): nginx's access log records the path only."""
    secret = "not-a-real-key-but-logged-if-leaky"

    async def go():
        return await stream(f"{cluster.ws}/v1/stream/asr?api_key={secret}", speech["wizard"], speed=0,
                            timeout_s=60)

    assert asyncio.run(go()).close_code == 1000
    log = cluster.tmp / "nginx" / "access.log"
    wait_until(lambda: "/v1/stream/asr" in (log.read_text() if log.exists() else ""), 10, "the request logged")
    text = log.read_text()
    assert secret not in text and "api_key" not in text


def test_killing_an_asr_instance_leaves_the_other_sessions_and_new_ones_working(cluster, speech):
    victim, survivor = cluster.asr

    async def scenario():
        url = cluster.ws + "/v1/stream/asr"
        active = lambda: [metric(s, "asr_sessions_active") for s in (victim, survivor)]  # noqa: E731
        first = asyncio.create_task(stream(url, speech["jfk"], speed=2.0, timeout_s=90))
        await await_until(lambda: sum(active()) == 1, 20, "the first stream open")  # least_conn sends the next
        second = asyncio.create_task(stream(url, speech["jfk"], speed=2.0, timeout_s=90))
        await await_until(lambda: active() == [1, 1], 20, "the two streams on both instances")
        victim.proc.kill()
        victim.proc.wait(10)
        results = await asyncio.gather(first, second, return_exceptions=True)
        completed = [r for r in results if not isinstance(r, BaseException) and r.close_code == 1000]
        assert len(completed) == 1, results  # the survivor's session finished normally
        assert normalise(completed[0].final_text)[:4] == ["and", "so", "my", "fellow"]
        fresh = await stream(url, speech["wizard"], speed=4.0, timeout_s=90)  # new sessions still succeed
        assert fresh.close_code == 1000 and fresh.final_text

    asyncio.run(scenario())


def test_sigterm_mid_utterance_sends_its_final_then_1001_and_exits_0(cluster, speech):
    instance = [s for s in cluster.asr if s.proc.poll() is None][0]

    async def scenario():
        heard = metric(instance, "asr_audio_seconds_total")
        task = asyncio.create_task(stream(cluster.ws + "/v1/stream/asr", speech["jfk"], speed=1.0, timeout_s=60))
        # "And so my fellow Americans" under way
        await await_until(lambda: metric(instance, "asr_audio_seconds_total") >= heard + 1.2, 20, "speech heard")
        instance.proc.send_signal(signal.SIGTERM)

        def draining() -> bool:
            ready = httpx.get(instance.http + "/ready", timeout=5)
            return ready.status_code == 503 and ready.json()["status"] == "draining"
        await await_until(draining, 10, "/ready says draining")
        return await task

    result = asyncio.run(scenario())
    starts, finals = result.of("speech_start"), result.of("final")
    assert starts and finals, result.events
    assert finals[-1]["utterance"] == starts[-1]["utterance"] == 0  # the utterance in progress got its final
    assert normalise(finals[-1]["text"])[:3] == ["and", "so", "my"]
    assert result.close_code == 1001 and not result.of("closed")  # going away, not a normal end
    assert instance.proc.wait(40) == 0


def test_sigterm_lets_a_tts_session_finish_its_text_then_1001_and_exits_0(cluster):
    instance = cluster.tts[0]

    async def scenario():
        async with websockets.connect(instance.ws + "/v1/stream/tts") as ws:
            got = Received()
            await recv_until(ws, got, "ready")
            await ws.send(json.dumps({"type": "text", "text": "One sentence here. And a second one"}))
            instance.proc.send_signal(signal.SIGTERM)
            return await recv_until(ws, got, None, timeout_s=30)

    got = asyncio.run(scenario())
    spoken = " ".join(e["text"] for e in got.of("segment"))
    assert "One sentence here." in spoken and "And a second one" in spoken  # the buffered fragment was spoken too
    assert len(got.audio) > 0 and got.close_code == 1001 and not got.of("closed")
    assert instance.proc.wait(30) == 0
