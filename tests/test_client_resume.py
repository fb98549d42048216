"""The client library (clients/python, ``voice_client``) against real services, and resuming across a cut.

Real ASR and TTS processes on loopback, real speech from tests/data/asr, and a
:class:`CutProxy` (scripts/cut_proxy.py) between the library and the service:
cutting it mid-utterance (ASR) or mid-reply (TTS) is a dropped connection the
library must ride through. Each test waits on events (the stream's own, the
proxy's new connection), never on a clock.
"""

from __future__ import annotations

import asyncio
import json
import sys
import wave

import pytest

from voice_client import (NO_RESUME, AsrStream, Audio, ConnectionLost, Done, ErrorEvent, Final, Partial, Reconnecting,
                          ResumePolicy, Resumed, Segment, SegmentEnd, ServiceError, SpeechStart, TtsStream)
from voice_client.tts import spoken_through

from conftest import DATA, ROOT, metric, normalise, read_wav, running, script_modules
from inprocess import InProcessServer

with script_modules("cut_proxy") as (cut_proxy,):
    CutProxy = cut_proxy.CutProxy

JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
TWO = ("Mr. Quilter is the apostle of the middle classes and we are glad to welcome his gospel. "
       "He began a confused complaint against the wizard, who had vanished behind the curtain on the left.")
FRAME_BYTES = 640  # 20 ms at 16 kHz PCM16
FAST = ResumePolicy(base_delay_s=0.05, max_delay_s=0.5)


@pytest.fixture(scope="module")
def jfk_pcm() -> bytes:
    return read_wav(DATA / "asr" / "jfk.wav")[0].tobytes()


@pytest.fixture(scope="module")
def two_pcm() -> bytes:
    """Two sentences (two utterances) with a second between them."""
    first, second = read_wav(DATA / "asr" / "quilter.wav")[0], read_wav(DATA / "asr" / "wizard.wav")[0]
    return first.tobytes() + bytes(16000) + second.tobytes()


@pytest.fixture(scope="module")
def tts_service(tmp_path_factory):
    env = {"TTS_VOICES__STORE_DIR": str(tmp_path_factory.mktemp("voices")), "TTS_ENGINE__CPU_THREADS": "2"}
    with running("services.tts", env, tmp_path_factory.mktemp("tts")) as service:
        yield service


async def feed(stream: AsrStream, pcm: bytes, paced: bool = True) -> None:
    """Send ``pcm`` in 20 ms frames (at real time when ``paced``), then ``end``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
        await stream.send_audio(pcm[offset:offset + FRAME_BYTES])
        if paced:
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))  # the audio's own pace
    await stream.finish()


def check_finals(finals: list[Final]) -> list[str]:
    """Finals numbered 0, 1, 2, ... with no gap or repeat, in stream order; their words."""
    assert [f.utterance for f in finals] == list(range(len(finals)))
    assert all(a.end <= b.start + 0.05 for a, b in zip(finals, finals[1:])), [(f.start, f.end) for f in finals]
    return normalise(" ".join(f.text for f in finals))


@pytest.mark.asyncio
async def test_asr_stream_matches_the_transcript(asr_service, jfk_pcm):
    events = []
    async with AsrStream(asr_service.ws + "/v1/stream/asr", resume=NO_RESUME) as stream:
        sender = asyncio.create_task(feed(stream, jfk_pcm, paced=False))
        events = [event async for event in stream]
        await sender
    finals = [e for e in events if isinstance(e, Final)]
    assert check_finals(finals) == normalise(JFK)
    assert stream.reconnects == 0
    assert stream.kept_bytes == len(jfk_pcm) - int(finals[-1].end * 16000) * 2  # only the audio after the last final


@pytest.mark.asyncio
async def test_asr_stream_resumes_after_a_cut_mid_utterance(asr_service, two_pcm):
    async with CutProxy(asr_service.port) as proxy:
        stream = AsrStream(proxy.ws + "/v1/stream/asr", resume=FAST)
        events = []
        async with stream:
            sender = asyncio.create_task(feed(stream, two_pcm))
            cut = False
            async for event in stream:
                events.append(event)
                # mid-utterance: a final is out (so the cut is not at the start) and the next utterance has a partial
                if not cut and isinstance(event, Partial) and any(isinstance(e, Final) for e in events):
                    proxy.connected.clear()
                    proxy.cut()
                    cut = True
            await sender
    assert cut and proxy.cuts >= 1 and stream.reconnects == 1
    kinds = [type(e) for e in events]
    assert Reconnecting in kinds and Resumed in kinds and kinds.index(Reconnecting) < kinds.index(Resumed)
    resumed = next(e for e in events if isinstance(e, Resumed))
    finals = [e for e in events if isinstance(e, Final)]
    before = [f for f in finals if events.index(f) < events.index(resumed)]
    assert resumed.utterance == len(before) and resumed.replay_s > 0  # it replays the utterance that was cut
    assert resumed.at_s == pytest.approx(before[-1].end, abs=0.001)
    assert check_finals(finals) == normalise(TWO)  # same words: none lost, none repeated at the seam


@pytest.mark.asyncio
async def test_stream_file_json_prints_finals_only_and_rides_through_a_cut(asr_service, two_pcm, tmp_path):
    """examples/stream_file.py --json: one JSON final a line on stdout, nothing else; exit 0 despite a cut."""
    path = tmp_path / "two.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(two_pcm)
    async with CutProxy(asr_service.port) as proxy:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "examples/stream_file.py", "--json", str(path), "--url", proxy.ws + "/v1/stream/asr",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[dict] = []
        log: list[str] = []

        async def watch_stderr() -> None:
            assert proc.stderr is not None
            while line := (await proc.stderr.readline()).decode():
                log.append(line)
                if proxy.cuts == 0 and lines and line.startswith("[1] ..."):
                    proxy.cut()  # a partial of the second utterance: the cut is mid-utterance

        watcher = asyncio.create_task(watch_stderr())
        while line := await proc.stdout.readline():
            lines.append(json.loads(line))
        await watcher
        assert await proc.wait() == 0, "".join(log)
    assert proxy.cuts == 1 and proxy.accepted == 2 and any(line.startswith("resumed at") for line in log)
    assert all(line["type"] == "final" and {"text", "start", "end", "reason", "words"} <= line.keys() for line in lines)
    assert [line["utterance"] for line in lines] == list(range(len(lines)))
    assert normalise(" ".join(line["text"] for line in lines)) == normalise(TWO)


@pytest.mark.asyncio
async def test_asr_stream_gives_up_with_a_clear_error(asr_service, jfk_pcm):
    async with CutProxy(asr_service.port) as proxy:
        policy = ResumePolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
        async with AsrStream(proxy.ws + "/v1/stream/asr", resume=policy) as stream:
            await stream.send_audio(jfk_pcm[:16000])
            proxy.target = ("127.0.0.1", 1)  # the service is gone: every new connection fails
            proxy.cut()
            attempts = []
            with pytest.raises(ConnectionLost) as err:
                async for event in stream:
                    if isinstance(event, Reconnecting):
                        attempts.append(event.attempt)
    assert attempts == [1, 2, 3] and err.value.attempts == 3
    assert "could not resume after 3 attempts" in str(err.value)


@pytest.mark.asyncio
async def test_asr_drop_with_resume_off_raises_connection_lost(asr_service, jfk_pcm):
    async with CutProxy(asr_service.port) as proxy:
        async with AsrStream(proxy.ws + "/v1/stream/asr", resume=NO_RESUME) as stream:
            await stream.send_audio(jfk_pcm[:16000])
            proxy.cut()
            with pytest.raises(ConnectionLost):
                async for _ in stream:
                    pass


@pytest.mark.asyncio
async def test_kept_audio_is_bounded_in_silence(asr_service):
    """Silence with no utterance open is let go past max_replay_s: memory stays bounded, resuming stays possible."""
    policy = ResumePolicy(max_replay_s=1.0)
    async with AsrStream(asr_service.ws + "/v1/stream/asr", resume=policy) as stream:
        for _ in range(150):  # 3 s of silence
            await stream.send_audio(bytes(640))
        assert stream.kept_bytes <= 32000
        await stream.finish()
        assert [e async for e in stream if isinstance(e, Final)] == []


@pytest.mark.asyncio
async def test_an_utterance_longer_than_the_replay_bound_cannot_resume(asr_service, two_pcm):
    """A drop while the open utterance needs more kept audio than max_replay_s is a clear error, not a hole."""
    async with CutProxy(asr_service.port) as proxy:
        async with AsrStream(proxy.ws + "/v1/stream/asr", resume=ResumePolicy(max_replay_s=1.0)) as stream:
            sender = asyncio.create_task(feed(stream, two_pcm))
            start = None
            with pytest.raises(ConnectionLost) as err:
                async for event in stream:
                    if isinstance(event, SpeechStart) and event.utterance == 1:
                        start = event.t
                    elif isinstance(event, Partial) and start is not None and event.t - start > 2.0:
                        proxy.cut()  # two seconds into the second sentence, with one second kept
            sender.cancel()
    assert "max_replay_s=1" in str(err.value)


@pytest.mark.parametrize("params, code", [
    ({"resume_at_s": "-1", "resume_utterance": "2"}, "invalid_parameter"),
    ({"resume_at_s": "nan", "resume_utterance": "2"}, "invalid_parameter"),
    ({"resume_at_s": "3.5"}, "invalid_parameter"),  # no utterance number
    ({"resume_at_s": "3.5", "resume_utterance": "x"}, "invalid_parameter"),
    ({"resume_at_s": "3.5", "resume_utterance": "2", "resume_replay_s": "100000"}, "too_large"),
    ({"resume_segment": "1"}, "not_supported"),  # a TTS parameter on the ASR socket
    ({"resume_vad_state": "AQ"}, "invalid_parameter"),  # a detector state, but no resume point
    ({"resume_at_s": "3.5", "resume_utterance": "2", "resume_vad_state": "AQID"}, "invalid_parameter"),  # not one
])
@pytest.mark.asyncio
async def test_asr_bad_resume_is_refused(asr_service, params, code):
    with pytest.raises(ServiceError) as err:
        await AsrStream(asr_service.ws + "/v1/stream/asr", params=params).open()
    assert err.value.code == code


@pytest.mark.parametrize("route", ["/v1/listen", "/v1/realtime?intent=transcription"])
@pytest.mark.asyncio
async def test_resume_on_a_compatible_route_is_not_supported(asr_service, route):
    with pytest.raises(ServiceError) as err:
        await AsrStream(asr_service.ws + route, params={"resume_at_s": "1", "resume_utterance": "1"}).open()
    assert err.value.code == "not_supported"


@pytest.mark.asyncio
async def test_asr_resumed_stream_carries_time_and_numbering_on(asr_service, jfk_pcm):
    """What a resume asks of the server alone: the events of a stream that starts at 100 s, utterance 7."""
    params = {"resume_at_s": "100", "resume_utterance": "7", "resume_replay_s": "11"}
    async with AsrStream(asr_service.ws + "/v1/stream/asr", params=params) as stream:
        sender = asyncio.create_task(feed(stream, jfk_pcm, paced=False))
        finals = [e for e in [event async for event in stream] if isinstance(e, Final)]
        await sender
    assert [f.utterance for f in finals] == list(range(7, 7 + len(finals)))
    assert finals[0].start >= 100 and finals[-1].end <= 100 + len(jfk_pcm) / 32000
    assert all(w["start"] >= 100 for f in finals for w in f.words)


@pytest.mark.asyncio
async def test_asr_resume_right_after_a_final_keeps_the_faint_word_that_follows(asr_service, jfk_pcm):
    """Cut as the final of "And so my fellow Americans." arrives: the resumed session's voice detector goes on
    from the state that final carried, so the faint "Ask" 0.8 s after it is heard (a fresh detector misses it)."""
    async with CutProxy(asr_service.port) as proxy:
        stream = AsrStream(proxy.ws + "/v1/stream/asr", resume=FAST)
        events = []
        async with stream:
            sender = asyncio.create_task(feed(stream, jfk_pcm, paced=False))
            async for event in stream:
                events.append(event)
                if isinstance(event, Final) and event.utterance == 0:
                    assert event.vad_state  # the library asks for it (vad_state=true) when it resumes
                    proxy.cut()
            await sender
    assert stream.reconnects == 1
    finals = [e for e in events if isinstance(e, Final)]
    assert next(e for e in events if isinstance(e, Resumed)).at_s == pytest.approx(finals[0].end, abs=0.001)
    assert check_finals(finals) == normalise(JFK)


@pytest.mark.asyncio
async def test_asr_vad_state_from_another_model_is_a_warning(asr_service, jfk_pcm):
    """A state another VAD model wrote (an upgrade between drop and resume) is not refused: the detector starts
    afresh, with a non-fatal warning, and the stream goes on."""
    import base64
    import struct
    foreign = base64.urlsafe_b64encode(struct.pack("<B8s", 1, b"othermdl") + bytes(4 * 320)).rstrip(b"=").decode()
    params = {"resume_at_s": "0", "resume_utterance": "0", "resume_vad_state": foreign}
    async with AsrStream(asr_service.ws + "/v1/stream/asr", params=params, resume=NO_RESUME) as stream:
        sender = asyncio.create_task(feed(stream, jfk_pcm, paced=False))
        events = [event async for event in stream]
        await sender
    warnings = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(warnings) == 1 and "another VAD model" in warnings[0].message
    assert check_finals([e for e in events if isinstance(e, Final)]) == normalise(JFK)


@pytest.fixture(scope="module")
def backlogged_asr():
    """An ASR service whose turn model always has work waiting: the state in which live streams shed
    intermediate turn checks."""
    from services.asr.app import create_app
    from services.asr.settings import load

    with InProcessServer(create_app(load(server={"log_level": "warning"}, model={"cpu_threads": 2}))) as server:
        server.runtime.turn_backlogged = lambda *_: True
        yield server


@pytest.mark.asyncio
async def test_replayed_audio_is_cut_as_before_the_drop_whatever_the_load(backlogged_asr, two_pcm):
    """Turn checks are shed under load only in live audio: in the audio a resumed stream replays, every check
    runs, as it did before the drop (so a burst of replays cannot merge utterances that had ended)."""
    async def checks(replay_s: float) -> float:
        before = metric(backlogged_asr, "asr_turn_checks_total")
        params = {"resume_at_s": "0", "resume_utterance": "0", "resume_replay_s": f"{replay_s:.3f}"}
        async with AsrStream(backlogged_asr.ws + "/v1/stream/asr", params=params, resume=NO_RESUME) as stream:
            sender = asyncio.create_task(feed(stream, two_pcm, paced=False))
            finals = [e for e in [event async for event in stream] if isinstance(e, Final)]
            await sender
        assert check_finals(finals) == normalise(TWO)
        return metric(backlogged_asr, "asr_turn_checks_total") - before

    live, replayed = await checks(0.0), await checks(len(two_pcm) / 32000)
    assert replayed > live, (live, replayed)


# -- TTS ------------------------------------------------------------------------------------------

REPLY = ("The library keeps the text that was not yet spoken. When the connection drops, it reconnects. "
         "It sends that text again, and the new session numbers its pieces from where the old one stopped. "
         "Every piece is spoken exactly once. Nothing is skipped and nothing is repeated. "
         "That is the whole promise of resuming a reply.")


def complete_segments(events: list) -> list[Segment]:
    """The segments whose audio ended, in order (a segment cut by a drop is not among them)."""
    texts = {}
    done = []
    for event in events:
        if isinstance(event, Segment):
            texts[event.index] = event
        elif isinstance(event, SegmentEnd):
            done.append(texts[event.index])
    return done


@pytest.mark.asyncio
async def test_tts_reply_cut_midway_is_spoken_whole_once(tts_service):
    async with CutProxy(tts_service.port) as proxy:
        # the cut comes after the third piece's audio has begun and before that piece is complete
        proxy.cut_before(b'{"type": "segment_end", "index": 2}')
        stream = TtsStream(proxy.ws + "/v1/stream/tts", resume=FAST)
        async with stream:
            for word in REPLY.split(" "):  # as an LLM streams it
                await stream.send_text(word + " ")
            await stream.finish()
            events = [event async for event in stream]
        assert proxy.cuts == 1 and stream.reconnects == 1
    resumed = next(e for e in events if isinstance(e, Resumed))
    assert resumed.segment == 2 and resumed.restarted
    assert any(isinstance(e, Audio) and e.segment == 2 for e in events[:events.index(resumed)])
    done = complete_segments(events)
    assert [s.index for s in done] == list(range(len(done)))  # numbered on, no gap, no repeat
    assert normalise(" ".join(s.text for s in done)) == normalise(REPLY)  # whole, once
    after = events.index(resumed)
    assert all(e.segment != 1 for e in events[after:] if isinstance(e, Audio))  # a complete piece is not heard again
    assert stream.pending_text.strip() == ""


@pytest.mark.asyncio
async def test_tts_flushed_reply_is_not_spoken_again_after_a_cut(tts_service):
    """Two replies, the first answered with ``done``; a cut in the second re-sends only the second's rest."""
    first, second = "A short first answer. It ends here.", REPLY
    async with CutProxy(tts_service.port) as proxy:
        stream = TtsStream(proxy.ws + "/v1/stream/tts", resume=FAST)
        events = []
        async with stream:
            await stream.send_text(first)
            await stream.flush()
            async for event in stream:
                events.append(event)
                if isinstance(event, Done):
                    break
            assert stream.pending_text == ""  # the done answered all of it
            cut_at = max(e.index for e in events if isinstance(e, SegmentEnd)) + 2
            proxy.cut_before(b'{"type": "segment_end", "index": %d}' % cut_at)
            await stream.send_text(second)
            await stream.finish()
            events += [event async for event in stream]
        assert proxy.cuts == 1 and stream.reconnects == 1
    done = complete_segments(events)
    assert [s.index for s in done] == list(range(len(done)))
    assert normalise(" ".join(s.text for s in done)) == normalise(first + " " + second)


@pytest.mark.asyncio
async def test_tts_bad_resume_is_refused(tts_service):
    for params, code in [({"resume_segment": "-1"}, "invalid_parameter"), ({"segment_end": "maybe"},
                                                                          "invalid_parameter"),
                         ({"resume_at_s": "1"}, "not_supported")]:
        with pytest.raises(ServiceError) as err:
            await TtsStream(tts_service.ws + "/v1/stream/tts", params=params).open()
        assert err.value.code == code, params


def test_spoken_through_ignores_whitespace_and_unspoken_text():
    assert spoken_through("Hello   there.  Next", "Hello there.") == len("Hello   there.")
    assert spoken_through("... Hi,\nyou. x", "Hi, you.") == len("... Hi,\nyou.")
    assert spoken_through("abc", "xyz") is None


@pytest.mark.asyncio
async def test_iteration_ends_after_closed_when_the_event_queue_was_full():
    """The end of the events is queued behind a full queue (an application that reads slowly), not dropped."""
    from voice_client._stream import EVENT_QUEUE, ResumableStream

    core = ResumableStream("ws://127.0.0.1:9/", {}, None, FAST)
    for i in range(EVENT_QUEUE):
        core._events.put_nowait(i)

    async def session_closed(ws):
        return None  # the socket ended after ``closed``

    core._pump = session_closed
    core._runner = asyncio.create_task(core._run())
    for _ in range(10):
        await asyncio.sleep(0)  # the runner sees the end before the application reads anything
    async with asyncio.timeout(10):
        events = [event async for event in core]
    assert events == list(range(EVENT_QUEUE))
    await core._runner


async def until_done(stream: TtsStream, events: list) -> None:
    async with asyncio.timeout(60):
        async for event in stream:
            events.append(event)
            if isinstance(event, Done):
                return


@pytest.mark.asyncio
async def test_tts_flush_after_everything_was_spoken_gets_its_done(tts_service):
    """All the text sent was already spoken (and its segment_end came): a flush still goes out and gets a done."""
    async with TtsStream(tts_service.ws + "/v1/stream/tts", resume=FAST) as stream:
        events: list = []
        await stream.send_text("Hello there.")
        await stream.flush()
        await until_done(stream, events)
        assert stream.pending_text == "" and not stream._core.ops  # what a spoken-by-timer fragment leaves too
        await stream.flush()
        await until_done(stream, events)
        assert sum(isinstance(e, Done) for e in events) == 2
        await stream.finish()
        events += [event async for event in stream]


@pytest.mark.asyncio
async def test_tts_flushes_the_server_would_merge_keep_the_client_in_step(tts_service):
    """A flush with only unspeakable text since an unanswered flush is merged by the server (one done for both):
    the client does not send it, so each done it gets answers exactly one kept flush and nothing stale stays."""
    async with TtsStream(tts_service.ws + "/v1/stream/tts", resume=FAST) as stream:
        await stream.send_text("Hi there.")
        await stream.flush()
        await stream.send_text(" ... ")
        await stream.flush()
        await stream.flush()
        await stream.send_text("Bye now.")
        await stream.flush()
        assert [op[0] for op in stream._core.ops] == ["text", "flush", "text", "text", "flush"]
        events: list = []
        await until_done(stream, events)
        await until_done(stream, events)
        assert stream.pending_text == "" and not stream._core.ops
        await stream.finish()
        events += [event async for event in stream]
    assert sum(isinstance(e, Done) for e in events) == 3  # two flushes and the end
    assert normalise(" ".join(s.text for s in complete_segments(events))) == normalise("Hi there. Bye now.")


@pytest.mark.asyncio
async def test_asr_audio_sent_while_reconnecting_keeps_the_open_utterance_whole():
    """max_replay_s=1: 0.5 s sent, speech_start at 0.2 s, then the socket drops and the application sends 1 s
    more. The open utterance's start is never let go (a resume would start mid-utterance without a word):
    send_audio waits for the reconnect instead once 1 s is kept."""
    from voice_client.asr import _AsrCore

    core = _AsrCore("ws://127.0.0.1:9/", {}, None, ResumePolicy(max_replay_s=1.0), 32000, 2)
    core.kept += bytes(16000)
    core.total = core.cursor = 16000  # 0.5 s went out on the socket
    core._on_event(SpeechStart(utterance=0, t=0.2))
    assert core.open_start == 6400 and not core.live  # dropped: reconnecting
    blocked = False
    for _ in range(10):  # 1 s more, 0.1 s at a time
        try:
            await asyncio.wait_for(core.send_audio(bytes(3200)), 0.2)
        except TimeoutError:
            blocked = True
            break
    assert blocked  # backpressure, not a silent let-go
    assert core.kept_start <= core.open_start and core.lost_before == 0
    core._check_resumable("test")  # still resumable


def test_asr_announced_replay_never_exceeds_max_replay_s():
    """send_audio takes a chunk before it waits for room, so the kept audio may pass max_replay_s by one chunk;
    the announced resume_replay_s does not (a server whose max_replay_s equals it would refuse: too_large)."""
    from voice_client.asr import _AsrCore

    core = _AsrCore("ws://127.0.0.1:9/", {}, None, ResumePolicy(max_replay_s=1.0), 32000, 2)
    core.kept += bytes(32000 + 3200)  # 1 s kept and one 0.1 s chunk more
    core.total = len(core.kept)
    assert float(core._resume_params()["resume_replay_s"]) <= 1.0


@pytest.mark.asyncio
async def test_tts_text_kept_while_reconnecting_is_bounded():
    """While reconnecting, send_text waits rather than keep more than the server's max_buffered_chars (a replay
    of more would be refused with too_large)."""
    from voice_client.tts import MAX_KEPT_CHARS, _TtsCore

    core = _TtsCore("ws://127.0.0.1:9/", {}, None, FAST)
    assert not core.live  # dropped: reconnecting
    await asyncio.wait_for(core.add("text", "x" * (MAX_KEPT_CHARS - 10)), 1)
    await asyncio.wait_for(core.add("text", "y" * 10), 1)  # up to the bound: at once
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(core.add("text", "z"), 0.2)  # past it: waits
    assert core._kept_chars() == MAX_KEPT_CHARS
