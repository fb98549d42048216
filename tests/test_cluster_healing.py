"""Zero data loss on the local cluster: ``scripts/start_all.sh`` (2 ASR + 1 TTS instances behind nginx, its ports
set through its environment variables) restarts a SIGKILLed ASR instance while nginx sends new sessions to the
other; live streams through the client library ride through that kill and through every connection cut once
by scripts/cut_proxy.py without losing or repeating a word (nor the faint word right after a seam); a
long TTS reply cut half-way is spoken whole, once; and Ctrl-C drains and stops everything.

The tests run in file order on one cluster; the last one stops it. Everything waits on events (a final, a
``start_all:`` log line, ``/ready``), bounded in time."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from pathlib import Path

import pytest
from voice_client import TtsStream

from conftest import (DATA, DETERMINISTIC_TTS, Loopback, await_until, metric, normalise, read_wav, script_modules,
                      stream_asr as stream, wait_until)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/install.sh installs it)"),
              pytest.mark.slow, pytest.mark.timeout(420)]

# bench_resume's helpers: the start_all.sh driver, the cutting proxy, the stream and seam checks
with script_modules("bench_resume", "local_cluster") as (bench, local_cluster):
    ready = local_cluster.ready

SPEED = 2.0  # the recordings stream at twice real time (stream time, not wall time, drives the service)


class Port(Loopback):
    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("start_all")
    env = {"ASR_MODEL__CPU_THREADS": "1", "TTS_ENGINE__CPU_THREADS": "1", "VOICE_STORE": str(tmp / "voices"),
           "TMPDIR": str(tmp), **DETERMINISTIC_TTS}
    c = bench.LocalCluster(asr=2, tts=1, env=env, log_path=tmp / "start_all.log")
    try:
        yield c.start(timeout_s=300)
    finally:
        c.stop()


def test_an_instance_that_cannot_start_stops_the_script_with_status_1(tmp_path):
    """A bad setting (or a port in use) must not restart in a loop: start-up fails as a whole, nothing is left."""
    c = bench.LocalCluster(asr=1, tts=1, env={"ASR_SERVER__MAX_CONNECTIONS": "0", "TMPDIR": str(tmp_path),
                                              "VOICE_STORE": str(tmp_path / "voices")})
    with pytest.raises(RuntimeError, match="exited"):
        c.start(timeout_s=120)
    assert c.proc.wait(60) == 1
    assert c.wait_line(rf"^start_all: asr :{c.asr_ports[0]} exited with status 2 during start-up")  # bad setting
    assert not Path(f"/proc/{c.pid(f'tts :{c.tts_ports[0]}')}").exists()  # the script waited for it to stop


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    return {name: read_wav(DATA / "asr" / f"{name}.wav")[0].tobytes() for name in ("jfk", "wizard", "quilter")}


@pytest.fixture(scope="module")
def recordings():
    # quilter and wizard in both orders, 14 s each; jfk's seam has its own test below
    return bench.recordings(DATA / "asr", 3, min_s=10.0, names=["quilter", "wizard"])


async def _streams(url: str, recs, fault=None) -> list:
    """Stream every recording through the library at once; ``fault()`` runs when each has had its first final."""
    firsts: set[str] = set()
    all_started = asyncio.Event()

    def seen(name: str):
        def on_event(event) -> None:
            if event.type == "final":
                firsts.add(name)
                if len(firsts) == len(recs):
                    all_started.set()
        return on_event

    tasks = [asyncio.create_task(bench.stream_recording(url, r, speed=SPEED, timeout_s=150, on_event=seen(r.name)))
             for r in recs]
    if fault is not None:
        waiter = asyncio.create_task(all_started.wait())
        await asyncio.wait([waiter, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert all_started.is_set(), "the streams did not all get a final"
        await fault()
    return await asyncio.gather(*tasks)


@pytest.fixture(scope="module")
def undisturbed(cluster, recordings) -> dict:
    runs = asyncio.run(_streams(cluster.ws + "/v1/stream/asr", recordings))
    for run in runs:
        assert run.error is None and run.text, run.events[-3:]
    return {run.recording: run for run in runs}


def _assert_nothing_lost_or_repeated(runs, recordings, undisturbed) -> None:
    refs = {r.name: r.reference for r in recordings}
    for run in runs:
        base = undisturbed[run.recording]
        assert run.error is None and run.events[-1][1].type == "closed", (run.recording, run.error)
        assert bench.numbering(run) == (0, 0), [(f.utterance, f.text) for f in run.finals()]  # none lost, none twice
        assert bench.seam_repeats(run, base.text) == 0, bench.timeline(run)
        wer, base_wer = (bench.corpus_wer([refs[run.recording]], [t])["wer"] for t in (run.text, base.text))
        assert wer <= base_wer + 0.01, (run.recording, run.text, base.text, bench.timeline(run))


def test_streams_ride_through_a_sigkilled_instance_that_comes_back(cluster, recordings, undisturbed, speech):
    killed: dict = {}

    async def kill() -> None:
        port = max(cluster.asr_ports, key=lambda p: metric(Port(p), "asr_sessions_active"))
        assert metric(Port(port), "asr_sessions_active") >= 1
        killed["name"] = f"asr :{port}"
        killed["pid"], killed["mark"] = cluster.kill(killed["name"], signal.SIGKILL)
        # new sessions meanwhile (its port refuses until its models are loaded again) land on the other instance
        killed["fresh"] = [asyncio.create_task(stream(cluster.ws + "/v1/stream/asr", speech["wizard"], speed=0,
                                                      timeout_s=90)) for _ in range(2)]

    async def scenario():
        runs = await _streams(cluster.ws + "/v1/stream/asr", recordings, fault=kill)
        return runs, await asyncio.gather(*killed["fresh"])

    runs, fresh = asyncio.run(scenario())
    for result in fresh:
        assert result.close_code == 1000 and "wizard" in normalise(result.final_text), result.events[-3:]
    assert sum(1 for run in runs for _, e in run.events if e.type == "resumed") >= 1  # the victim's streams resumed
    _assert_nothing_lost_or_repeated(runs, recordings, undisturbed)
    why, new = cluster.wait_restarted(killed["name"], killed["pid"], start=killed["mark"])
    assert f"(pid {killed['pid']}) was killed by SIGKILL" in why and new != killed["pid"]
    restarted = Port(int(killed["name"].rsplit(":", 1)[1]))
    asyncio.run(bench.back_in_rotation(cluster, restarted.port, recordings[0], timeout_s=90))  # serves again


def test_every_client_connection_cut_once_by_a_proxy_loses_and_repeats_nothing(cluster, recordings, undisturbed):
    async def scenario():
        async with bench.CutProxy(cluster.front) as proxy:
            async def cut() -> None:
                assert proxy.cut() == len(recordings)

            runs = await _streams(f"ws://127.0.0.1:{proxy.port}/v1/stream/asr", recordings, fault=cut)
            return runs, proxy.accepted

    runs, accepted = asyncio.run(scenario())
    assert accepted >= 2 * len(recordings)  # every client came back, through the same URL
    for run in runs:
        assert [e.type for _, e in run.events].count("resumed") == 1, bench.timeline(run)
    _assert_nothing_lost_or_repeated(runs, recordings, undisturbed)


def test_a_resume_right_after_a_final_keeps_the_faint_word_that_follows(cluster):
    jfk = bench.recordings(DATA / "asr", 1, min_s=1.0, names=["jfk"])[0]

    async def scenario():
        async with bench.CutProxy(cluster.front) as proxy:
            def cut(event) -> None:
                if event.type == "final" and event.utterance == 0:  # before "Ask not!" has its final
                    proxy.cut()
            return await bench.stream_recording(f"ws://127.0.0.1:{proxy.port}/v1/stream/asr", jfk, speed=SPEED,
                                                timeout_s=90, on_event=cut)

    run = asyncio.run(scenario())
    assert run.error is None and [e.type for _, e in run.events].count("resumed") == 1, bench.timeline(run)
    assert bench.numbering(run) == (0, 0)
    assert "ask not" in bench.normalize(run.text), bench.timeline(run)


LONG_REPLY = ("Thanks for calling the support line. I have looked at your account and found the problem. "
              "Your last payment was applied to the wrong invoice. I have moved it to the right one. "
              "You will get a confirmation email within the hour. Is there anything else I can help with today?")


async def _speak(url: str) -> tuple[list, int]:
    """Speak LONG_REPLY through the library; every event until ``closed``, and how often it resumed."""
    events = []
    async with TtsStream(url) as tts:
        await tts.send_text(LONG_REPLY)
        await tts.finish()
        async with asyncio.timeout(120):
            async for event in tts:
                events.append(event)
        return events, tts.reconnects


def _spoken(events: list) -> dict[int, tuple[str, int]]:
    """Each segment's text and the audio bytes of its last (complete) rendition; asserts each completed once."""
    out: dict[int, tuple[str, int]] = {}
    current: dict[int, list] = {}
    for e in events:
        if e.type == "segment":
            current[e.index] = [e.text, 0]  # a restarted piece starts over
        elif e.type == "audio" and e.segment is not None:
            current[e.segment][1] += len(e.data)
        elif e.type == "segment_end":
            assert e.index not in out, f"segment {e.index} completed twice"
            out[e.index] = tuple(current.pop(e.index))
    return out


def test_a_long_tts_reply_cut_midway_is_spoken_whole_once(cluster):
    whole, _ = asyncio.run(_speak(cluster.ws + "/v1/stream/tts"))
    reference = _spoken(whole)
    assert len(reference) >= 4 and "".join("".join(t.split()) for t, _ in reference.values()) == \
        "".join(LONG_REPLY.split())

    audio_bytes = sum(n for _, n in reference.values())

    async def scenario():
        async with bench.CutProxy(cluster.front) as proxy:
            proxy.cut_after(audio_bytes // 2)  # half-way through the reply's audio
            return await _speak(f"ws://127.0.0.1:{proxy.port}/v1/stream/tts")

    events, reconnects = asyncio.run(scenario())
    resumed = [e for e in events if e.type == "resumed"]
    assert reconnects == 1 and len(resumed) == 1 and 0 < resumed[0].segment < len(reference), resumed
    spoken = _spoken(events)
    assert sorted(spoken) == list(range(len(spoken))), sorted(spoken)  # numbered on across the resume
    texts = [spoken[i][0] for i in sorted(spoken)]
    assert "".join("".join(t.split()) for t in texts) == "".join(LONG_REPLY.split()), texts  # whole, once, in order
    by_text = {text: n for text, n in reference.values()}
    for text, n in spoken.values():  # a piece is spoken whole: as long as the same piece undisturbed
        assert n == by_text.get(text, n), (text, n, by_text)
    assert abs(sum(n for _, n in spoken.values()) - audio_bytes) < 0.1 * audio_bytes, (spoken, reference)
    assert events[-1].type == "closed" and [e.type for e in events].count("done") == 1


def test_a_killed_nginx_comes_back_on_its_port(cluster, speech):
    """A SIGKILLed nginx master leaves its workers holding the port: start_all.sh clears them and restarts it."""
    old, mark = cluster.kill("nginx", signal.SIGKILL)
    assert "was killed by SIGKILL" in cluster.wait_line(rf"^start_all: nginx \(pid {old}\) .*", start=mark).group(0)
    cluster.wait_line(r"^start_all: nginx started", start=mark)
    assert not any("could not bind" in line for line in cluster.lines[mark:])
    wait_until(lambda: ready(cluster.front, "/health"), 30, "the front came back")
    result = asyncio.run(stream(cluster.ws + "/v1/stream/asr", speech["wizard"], speed=0, timeout_s=60))
    assert result.close_code == 1000 and "wizard" in normalise(result.final_text)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_drains_open_streams_through_nginx_and_stops_everything(cluster, speech):
    instances = [Port(p) for p in cluster.asr_ports]

    async def scenario():
        heard = sum(metric(i, "asr_audio_seconds_total") for i in instances)
        task = asyncio.create_task(stream(cluster.ws + "/v1/stream/asr", speech["jfk"], speed=1.0, timeout_s=90))
        await await_until(lambda: task.done() or sum(metric(i, "asr_audio_seconds_total") for i in instances)
                          >= heard + 1.2, 30, "the first words heard")  # "And so my fellow"
        assert not task.done()
        stopper = asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        result = await task
        return result, await stopper

    result, code = asyncio.run(scenario())
    assert normalise(result.of("final")[0]["text"])[:3] == ["and", "so", "my"], result.events
    assert result.close_code in (1000, 1001), result.close_code  # the drain's 1001 passed through nginx
    assert code == 0 and cluster.wait_line(r"^start_all: stopping")
    for port in [cluster.front, *cluster.asr_ports, *cluster.tts_ports]:
        assert not _listening(port), port
