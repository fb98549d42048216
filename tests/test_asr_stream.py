"""End-to-end tests of WS /v1/stream/asr: a real service process, the real tiny model, real speech, real sockets."""

from __future__ import annotations

import asyncio
import audioop  # stdlib reference G.711 encoder, independent of ours
import itertools
import json

import httpx
import numpy as np
import pytest
import soxr
import websockets

from conftest import DATA, await_until, metric, normalise, paced, read_wav, wait_until, stream_asr as stream

JFK_WORDS = normalise("And so my fellow Americans, ask not what your country can do for you, "
                      "ask what you can do for your country.")
SILENCE_2S = bytes(64000)


def run(coro):
    return asyncio.run(coro)


def test_live_stream_partials_and_turn_finals(asr_service, jfk):
    """A stream at real time: ready, speech_start, partials with a stable prefix, finals ended by Smart Turn.
    (Real time, as a microphone or a phone line delivers audio: at 2x on a slower CPU the partials of JFK's short
    phrases were too few to agree on a stable prefix.)"""
    result = run(stream(asr_service.ws + "/v1/stream/asr", jfk.tobytes() + SILENCE_2S, speed=1.0))
    events = result.events
    assert events[0]["type"] == "ready"
    assert {"session_id", "sample_rate", "encoding", "language", "model"} <= set(events[0])
    assert events[0]["sample_rate"] == 16000 and events[0]["encoding"] == "pcm_s16le"
    assert events[-1] == {"type": "closed"} and result.close_code == 1000
    finals = result.of("final")
    assert [f["utterance"] for f in finals] == list(range(len(finals)))  # exactly once each, in order
    assert [s["utterance"] for s in result.of("speech_start")] == [f["utterance"] for f in finals]
    assert normalise(result.final_text) == JFK_WORDS
    assert any(f["reason"] == "turn" for f in finals)
    assert all(f["reason"] in ("turn", "silence") for f in finals)  # 2 s of silence ends every turn before `end`
    partials = result.of("partial")
    assert partials, "no partial hypotheses while speaking"
    for p in partials:
        assert p["text"].startswith(p["stable"])
    assert any(p["stable"] for p in partials)
    for f in finals:
        assert f["start"] < f["end"] and isinstance(f["latency_ms"], (int, float))
        assert f["words"] and all({"word", "start", "end", "probability"} <= set(w) for w in f["words"])
        assert f["start"] - 0.05 <= f["words"][0]["start"] <= f["words"][-1]["end"] <= f["end"] + 0.05
    # within an utterance, the stable prefix only grows
    for k in {p["utterance"] for p in partials}:
        stables = [p["stable"] for p in partials if p["utterance"] == k]
        assert all(b.startswith(a) for a, b in zip(stables, stables[1:]))
    # events of one utterance come before the next utterance starts
    order = [(e["type"], e.get("utterance")) for e in events if e["type"] in ("speech_start", "final")]
    assert order == [(kind, k) for k in range(len(finals)) for kind in ("speech_start", "final")]


def test_burst_stream_equals_upload(asr_service, jfk):
    """Audio sent in bursts of odd sizes, far faster than real time: nothing is dropped, and the
    stream's finals (vad mode) equal what POST /v1/transcribe gives for the same file."""
    audio = jfk.tobytes() + SILENCE_2S
    result = run(stream(asr_service.ws + "/v1/stream/asr", audio, frame_bytes=12345, speed=0,
                        params={"turn_detection": "vad", "partials": "false"}))
    assert not result.of("error") and not result.of("partial")
    with open(DATA / "asr" / "jfk.wav", "rb") as f:
        upload = httpx.post(asr_service.http + "/v1/transcribe", files={"file": f}, timeout=60).json()
    assert result.final_text == upload["text"]
    assert [(f["start"], f["end"]) for f in result.of("final")] == [(s["start"], s["end"]) for s in upload["segments"]]
    assert normalise(upload["text"]) == JFK_WORDS


def test_turn_finals_decoded_ahead_of_the_decision(asr_service, jfk):
    """At real time (smart_turn) a pause's final starts at the first silent VAD window, the end pad not heard yet
    decoded as silence; where the pause ends the turn, that decode is the final and none runs after the decision
    (asr_final_decodes_total by source), and its words are a fresh decode's of the heard audio."""
    from services.asr.engine import DecodeRequest, WhisperEngine

    def decodes(source: str) -> float:
        return metric(asr_service, f'asr_final_decodes_total{{source="{source}"}}')

    before = {s: decodes(s) for s in ("decoded_ahead", "started_ahead", "decoded_after")}
    result = run(stream(asr_service.ws + "/v1/stream/asr", jfk.tobytes() + SILENCE_2S, speed=1.0,
                        params={"partials": "false"}))
    finals = result.of("final")
    assert finals and not result.of("error") and normalise(result.final_text) == JFK_WORDS
    after = {s: decodes(s) for s in before}
    assert after["decoded_after"] == before["decoded_after"]
    ahead = sum(after[s] - before[s] for s in ("decoded_ahead", "started_ahead"))
    assert ahead == len(finals)
    engine = WhisperEngine(cpu_threads=1)  # what the final would be, decoded after the decision (test env: beam 5)
    audio = jfk.astype(np.float32) / 32768
    for f in finals:
        request = DecodeRequest(audio[round(f["start"] * 16000):round(f["end"] * 16000)], beam_size=5,
                                word_timestamps=True, final=True)
        assert normalise(engine.decode_batch([request])[0].text) == normalise(f["text"])


def test_mulaw_8khz_telephony(asr_service, jfk):
    pcm8k = (soxr.resample(jfk.astype(np.float32) / 32768, 16000, 8000) * 32767).astype(np.int16)
    ulaw = audioop.lin2ulaw(pcm8k.tobytes(), 2)
    result = run(stream(asr_service.ws + "/v1/stream/asr", ulaw + bytes([0xFF]) * 16000, frame_bytes=160,
                        bytes_per_second=8000, params={"encoding": "mulaw", "sample_rate": "8000"}))
    assert result.events[0]["sample_rate"] == 8000 and result.events[0]["encoding"] == "mulaw"
    words = normalise(result.final_text)
    assert {"fellow", "americans", "country"} <= set(words)
    assert len(set(words) & set(JFK_WORDS)) >= 0.8 * len(set(JFK_WORDS))


def test_commit_and_end_reasons(asr_service, jfk):
    """turn_detection=none: only commit and end close utterances."""
    first, rest = jfk[: 16000 * 4].tobytes(), jfk[16000 * 4:].tobytes()
    result = run(stream(asr_service.ws + "/v1/stream/asr", first, speed=0, params={"turn_detection": "none"},
                        before_end=[{"type": "commit"}] + [rest[i:i + 32000] for i in range(0, len(rest), 32000)]))
    finals = result.of("final")
    assert [f["reason"] for f in finals] == ["commit", "end"]
    assert normalise(" ".join(f["text"] for f in finals))[:4] == ["and", "so", "my", "fellow"]
    assert finals[0]["end"] <= finals[1]["start"] + 1e-6
    assert result.events[-1]["type"] == "closed"


def test_resampled_44k_stereo_downmix_input(asr_service):
    wizard, rate = read_wav(DATA / "asr" / "wizard.wav")
    up = (soxr.resample(wizard.astype(np.float32) / 32768, rate, 44100) * 32767).astype(np.int16)
    result = run(stream(asr_service.ws + "/v1/stream/asr", up.tobytes() + bytes(44100 * 4), frame_bytes=4410 * 2 + 1,
                        bytes_per_second=88200, params={"sample_rate": "44100"}))
    assert "wizard" in normalise(result.final_text) and "curtain" in normalise(result.final_text)


# -- bad input ---------------------------------------------------------------------------

async def _collect(ws) -> list[dict]:
    out = []
    try:
        async for message in ws:
            if isinstance(message, str):
                out.append(json.loads(message))
    except websockets.ConnectionClosed:
        pass
    return out


@pytest.mark.parametrize("query,detail", [("sample_rate=4000", "sample_rate"), ("encoding=opus", "encoding"),
                                          ("sample_rate=abc", "sample_rate")])
def test_bad_audio_parameters_are_refused(asr_service, query, detail):
    async def go():
        async with websockets.connect(f"{asr_service.ws}/v1/stream/asr?{query}") as ws:
            events = await _collect(ws)
            return events, ws.close_code
    events, code = run(go())
    assert events[0]["type"] == "error" and events[0]["code"] == "bad_audio" and detail in events[0]["message"]
    assert code == 1003


def test_bad_messages_are_not_fatal(asr_service, jfk):
    result = run(stream(asr_service.ws + "/v1/stream/asr", jfk.tobytes() + SILENCE_2S, frame_bytes=3333, speed=0,
                        params={"turn_detection": "vad", "partials": "maybe"},
                        before_end=["not json", {"type": "dance"}, "[1, 2]"]))
    errors = result.of("error")
    assert [e["code"] for e in errors] == ["bad_message"] * 4  # partials=maybe, non-JSON, unknown type, not an object
    assert normalise(result.final_text) == JFK_WORDS and result.close_code == 1000


def test_oversized_frame_is_fatal_but_keeps_accepted_audio(asr_service, jfk):
    async def go():
        async with websockets.connect(f"{asr_service.ws}/v1/stream/asr?turn_detection=none", max_size=None) as ws:
            for i in range(0, jfk.size * 2, 32000):
                await ws.send(jfk.tobytes()[i:i + 32000])
            await ws.send(bytes(65537))
            events = await _collect(ws)
            return events, ws.close_code
    events, code = run(go())
    kinds = [e["type"] for e in events]
    assert "final" in kinds and kinds.index("final") < kinds.index("error")  # accepted audio is still transcribed
    final = next(e for e in events if e["type"] == "final")
    assert final["reason"] == "end" and normalise(final["text"]) == JFK_WORDS
    assert events[-1]["code"] == "too_large" and code == 1009


def test_idle_timeout(asr_service):
    async def go():
        async with websockets.connect(f"{asr_service.ws}/v1/stream/asr") as ws:
            events = await asyncio.wait_for(_collect(ws), 15)
            return events, ws.close_code
    events, code = run(go())
    assert events[-1]["type"] == "error" and events[-1]["code"] == "timeout" and code == 1000


def test_unsupported_language_falls_back_with_a_warning(asr_service):
    async def go():
        async with websockets.connect(f"{asr_service.ws}/v1/stream/asr?language=de") as ws:
            ready = json.loads(await ws.recv())
            warning = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "end"}))
            rest = await _collect(ws)
            return ready, warning, rest
    ready, warning, rest = run(go())
    assert ready["language"] == "en" and warning["code"] == "bad_message" and "English-only" in warning["message"]
    assert rest[-1] == {"type": "closed"}


def _no_sessions_left(service, bound_s: float = 10.0) -> None:
    """The previous test's sessions have released their slots (the server frees one just after its close frame):
    a test that opens all ``max_connections`` (4) at once must not race them."""
    wait_until(lambda: not httpx.get(service.http + "/ready", timeout=10).json()["sessions"], bound_s,
               "the previous sessions' slots freed")


def test_bad_clients_do_not_hurt_a_good_one(asr_service, jfk):
    """While misbehaving clients garble, overflow and vanish, a concurrent good stream is transcribed exactly."""
    _no_sessions_left(asr_service)
    async def vanisher():
        ws = await websockets.connect(f"{asr_service.ws}/v1/stream/asr")
        await ws.send(jfk.tobytes()[:64000])
        ws.transport.abort()  # drops mid-utterance without a close frame

    async def garbler():
        async with websockets.connect(f"{asr_service.ws}/v1/stream/asr") as ws:
            for blob in (b"\x01", "{", bytes(65537)):
                await ws.send(blob)
            return await _collect(ws)

    async def go():
        good = asyncio.create_task(stream(asr_service.ws + "/v1/stream/asr", jfk.tobytes() + SILENCE_2S,
                                          speed=4.0, params={"turn_detection": "vad"}))
        await asyncio.gather(vanisher(), garbler(), vanisher())
        return await good
    result = run(go())
    assert normalise(result.final_text) == JFK_WORDS and result.close_code == 1000
    assert httpx.get(asr_service.http + "/health").status_code == 200


def test_max_connections_refused_at_once_and_ready_503(asr_service):
    _no_sessions_left(asr_service)

    async def go():
        held = [await websockets.connect(f"{asr_service.ws}/v1/stream/asr") for _ in range(4)]
        for ws in held:
            assert json.loads(await ws.recv())["type"] == "ready"
        async with httpx.AsyncClient() as client:
            full = (await client.get(asr_service.http + "/ready")).status_code
            async with websockets.connect(f"{asr_service.ws}/v1/stream/asr") as extra:
                refused = await _collect(extra)  # while all four are held: refused, not queued for a slot
                refused_code = extra.close_code
            for ws in held:
                await ws.close()
        await await_until(lambda: httpx.get(asr_service.http + "/ready", timeout=10).status_code == 200, 5,
                          "ready again")
        metrics = httpx.get(asr_service.http + "/metrics", timeout=10).text
        return full, refused, refused_code, metrics
    full, refused, code, metrics = run(go())
    assert full == 503
    # at once: the only event, before any session ("ready") was set up for it
    assert refused == [{"type": "error", "code": "overloaded", "message": refused[0]["message"]}] and code == 1013
    assert 'asr_refusals_total{reason="max_connections"}' in metrics


def test_max_length_cuts_a_long_utterance_and_goes_on(tmp_path, jfk):
    """With a 3 s utterance cap, continuous speech is cut at the cap (reason max_length), the next
    utterance starts exactly at the cut, and no word is lost across the cuts."""
    from conftest import ASR_TEST_ENV, running

    env = {**ASR_TEST_ENV, "ASR_STREAMING__MAX_UTTERANCE_S": "3", "ASR_SERVER__MAX_CONNECTIONS": "1"}
    with running("services.asr", env, tmp_path) as short:
        result = run(stream(short.ws + "/v1/stream/asr", jfk.tobytes(), speed=0, params={"turn_detection": "none"}))
    finals = result.of("final")
    cut = [f for f in finals if f["reason"] == "max_length"]
    assert cut and all(f["end"] - f["start"] <= 3.0 + 1e-3 for f in finals)
    # a cut in mid-speech is exactly at the cap and the next utterance starts right there;
    # a cap reached during a pause ends the utterance at the pause instead
    mid_speech = [(a, b) for a, b in zip(finals, finals[1:])
                  if a["reason"] == "max_length" and a["end"] - a["start"] == pytest.approx(3.0, abs=1e-3)]
    assert mid_speech and all(b["start"] == pytest.approx(a["end"], abs=1e-3) for a, b in mid_speech)
    assert finals[-1]["reason"] == "end"
    words = normalise(result.final_text)
    assert len(set(words) & set(JFK_WORDS)) >= 0.85 * len(set(JFK_WORDS))


def test_a_byte_now_and_then_does_not_keep_a_session_alive(asr_service):
    """Idle means no audio, not no frames: one byte every second is 1/32000 of real time, and used to reset the
    idle timer forever (a cheap way to hold every slot). The test instance's idle timeout is 4 s."""
    async def go():
        async with websockets.connect(asr_service.ws + "/v1/stream/asr") as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            events, sent = [], []

            async def trickle():
                async for byte in paced(itertools.repeat(b"\x00"), 1.0):  # a byte every second
                    await ws.send(byte)
                    sent.append(1)

            sender = asyncio.create_task(trickle())
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except websockets.ConnectionClosed:
                pass
            finally:
                sender.cancel()
            return events, ws.close_code, len(sent)

    # bytes that reset the idle timer would hold the session past the 30 s bound: wait_for fails the test
    events, code, sent = asyncio.run(asyncio.wait_for(go(), 30))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "timeout" and code == 1000
    assert sent >= 2  # the bytes kept coming and did not keep it alive


def test_a_clause_end_whisper_doubts_gets_no_turn_final(tmp_path):
    """A read clause that ends the clip ("... composed to form letterpress," in the book) sounds finished: Smart
    Turn scores its pause 0.94-0.98 and tiny.en closes it with a full stop, so the audio-only policy (here with a
    bar of 0.9, clear of those scores) ends the turn. Whisper gives that stop a probability of about 0.5, below
    ``turn.closing_min``: with the policy that reads the words (``turn.words``), only the silence timeout ends it.
    Streamed as fast as the socket takes it, so every check of the pause decides whatever the machine's load (at
    real time a check that comes back after the silence timeout is too late to matter)."""
    from conftest import ASR_TEST_ENV, running

    speech, _ = read_wav(DATA / "turns" / "ljspeech_LJ001-0010.wav")
    x = speech.astype(np.float32) / 32768
    level = np.percentile(np.sqrt((x[: x.size // 320 * 320].reshape(-1, 320) ** 2).mean(axis=1)), 10)
    tone = np.random.default_rng(0).standard_normal(24000) * level  # 1.5 s of the recording's noise floor
    audio = (np.clip(np.concatenate([x, tone]), -1, 1) * 32767).astype("<i2").tobytes()
    curve = {"ASR_TURN__CURVE": "[[96, 0.9], [576, 0.9]]"}
    with running("services.asr", {**ASR_TEST_ENV, **curve}, tmp_path) as audio_only, \
            running("services.asr", {**ASR_TEST_ENV, "ASR_TURN__WORDS": "true"}, tmp_path) as reading:
        async def both():
            return await asyncio.gather(*(stream(url + "/v1/stream/asr", audio, speed=0)
                                          for url in (reading.ws, audio_only.ws)))
        words, baseline = run(both())
    for result in (words, baseline):
        assert result.of("final")[-1]["text"].endswith("letterpress.")
    assert baseline.of("final")[-1]["reason"] == "turn"
    assert words.of("final")[-1]["reason"] == "silence"
