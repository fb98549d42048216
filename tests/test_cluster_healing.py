"""Zero data loss on the local cluster: ``scripts/start_all.sh`` (2 ASR + 1 TTS instances behind nginx, its ports
set through its environment variables) heals a killed instance while nginx routes around it, streams through
the client library ride through a SIGKILLed instance and through a cut connection without losing or repeating a
word, and Ctrl-C drains and stops everything.

The tests run in file order on one cluster; the last one stops it. Everything waits on events (a final, a
``start_all:`` log line, ``/ready``), bounded in time."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from asr_client import stream
from conftest import DATA, DETERMINISTIC_TTS, ROOT, Loopback, metric, normalise, read_wav

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/install.sh installs it)"),
              pytest.mark.slow, pytest.mark.timeout(420)]

_spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
local_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_cluster)


class Port(Loopback):
    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("start_all")
    env = {"ASR_MODEL__CPU_THREADS": "1", "TTS_ENGINE__CPU_THREADS": "1", "VOICE_STORE": str(tmp / "voices"),
           "TMPDIR": str(tmp), **DETERMINISTIC_TTS}
    c = local_cluster.LocalCluster(asr=2, tts=1, env=env, log_path=tmp / "start_all.log")
    try:
        yield c.start(timeout_s=300)
    finally:
        c.stop()


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    return {name: read_wav(DATA / "asr" / f"{name}.wav")[0].tobytes() for name in ("jfk", "wizard", "quilter")}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_instance_comes_back_and_nginx_serves_from_the_other_meanwhile(cluster, speech):
    victim, survivor = (f"asr :{p}" for p in cluster.asr_ports)
    old, mark = cluster.kill(victim, signal.SIGKILL)

    async def streams(n: int):
        return await asyncio.gather(*(stream(cluster.ws + "/v1/stream/asr", speech["wizard"], speed=0, timeout_s=90)
                                      for _ in range(n)))

    # right after the kill (its port refuses: models take seconds to load), new streams all land on the survivor
    for result in asyncio.run(streams(3)):
        assert result.close_code == 1000 and "wizard" in normalise(result.final_text), result.events[-3:]
    why, new = cluster.wait_restarted(victim, old, start=mark)
    assert f"(pid {old}) was killed by SIGKILL" in why and new != old
    assert not any(line.startswith(f"start_all: {survivor} (pid") for line in cluster.lines)  # untouched
    restarted = Port(cluster.asr_ports[0])
    # nginx takes the restarted instance back (at the latest fail_timeout, 10 s, after its last refusal)
    deadline = time.monotonic() + 60
    for _ in range(30):
        if metric(restarted, "asr_sessions_total") >= 1:
            break
        assert time.monotonic() < deadline, "nginx sent nothing to the restarted instance"
        for result in asyncio.run(streams(2)):
            assert result.close_code == 1000 and result.final_text
    assert metric(restarted, "asr_sessions_total") >= 1


def test_ctrl_c_drains_open_streams_through_nginx_and_stops_everything(cluster, speech):
    instances = [Port(p) for p in cluster.asr_ports]

    async def scenario():
        heard = sum(metric(i, "asr_audio_seconds_total") for i in instances)
        task = asyncio.create_task(stream(cluster.ws + "/v1/stream/asr", speech["jfk"], speed=1.0, timeout_s=90))
        deadline = time.monotonic() + 30
        while sum(metric(i, "asr_audio_seconds_total") for i in instances) < heard + 1.2:  # "And so my fellow"
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        stopper = asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        result = await task
        return result, await stopper

    result, code = asyncio.run(scenario())
    assert normalise(result.of("final")[0]["text"])[:3] == ["and", "so", "my"], result.events
    assert result.close_code in (1000, 1001), result.close_code  # the drain's 1001 passed through nginx
    assert code == 0 and cluster.wait_line(r"^start_all: stopping")
    for port in [cluster.front, *cluster.asr_ports, *cluster.tts_ports]:
        assert not _listening(port), port
