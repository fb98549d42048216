"""examples/twilio_phone.py end to end: the real bridge program in a subprocess, the real ASR and TTS services,
a local OpenAI-compatible stand-in, and a simulated Twilio that speaks the Media Streams protocol with mu-law
8 kHz audio made from tests/data/asr. The answer must come back as valid mu-law media messages that say what the
transcript drove, and speech over the answer must make the bridge send `clear`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator

from conftest import DATA, ROOT, free_port, normalise, paced, read_wav, wait_until
from fake_openai import FakeOpenAI
from services.common.audio import mulaw_to_pcm16, pcm16_to_mulaw, resample
from tts_support import Transcriber

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC_URL = "https://voice-test.example.ngrok.app"
CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "2" * 32
MULAW_SILENCE = b"\xff" * 160  # 20 ms of digital silence (0x00 would be a loud negative level)


def mulaw_8k(name: str) -> bytes:
    samples, rate = read_wav(DATA / "asr" / name)
    audio = resample(samples.astype(np.float32) / 32768.0, rate, 8000)
    return pcm16_to_mulaw((np.clip(audio, -1, 1) * 32767).astype(np.int16))


@contextmanager
def bridge(asr_ws: str, tts_ws: str, llm_url: str, tmp_path):
    port = free_port()
    env = {**os.environ, "ASR_URL": f"{asr_ws}/v1/stream/asr", "TTS_URL": f"{tts_ws}/v1/stream/tts",
           "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LLM_BASE_URL": llm_url,
           "LLM_MODEL": "fake-model", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "bridge.log", "wb")
    proc = subprocess.Popen([sys.executable, "examples/twilio_phone.py", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "bridge.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(healthy, 30, "the bridge started")
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def webhook(port: int, signature: str | None) -> httpx.Response:
    params = {"CallSid": CALL_SID, "AccountSid": "AC" + "3" * 32, "From": "+15550001111", "To": "+15550002222"}
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    return httpx.post(f"http://127.0.0.1:{port}/twiml", data=params, headers=headers, timeout=10)


def twilio_signature(params: dict) -> str:
    return RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC_URL}/twiml", params)


def start_message(token: str) -> dict:
    return {"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
            "start": {"accountSid": "AC" + "3" * 32, "streamSid": STREAM_SID, "callSid": CALL_SID,
                      "tracks": ["inbound"], "customParameters": {"token": token},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


class SimulatedTwilio:
    """The Twilio side of one call: sends the documented message sequence, records what the bridge sends."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seq = 1
        self.chunk = 0
        self.received: list[dict] = []

    async def send_media(self, audio: bytes, realtime: bool) -> None:
        async for i in paced(range(0, len(audio), 160), 0.02 if realtime else 0):  # Twilio: 20 ms every 20 ms
            self.seq += 1
            self.chunk += 1
            await self.ws.send(json.dumps({
                "event": "media", "sequenceNumber": str(self.seq), "streamSid": STREAM_SID,
                "media": {"track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.chunk * 20),
                          "payload": base64.b64encode(audio[i:i + 160]).decode()}}))
            await self.drain()

    async def drain(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), 0.001)
            except TimeoutError:
                return
            self.received.append(json.loads(message))

    def events(self, kind: str) -> list[dict]:
        return [m for m in self.received if m.get("event") == kind]

    async def until(self, kind: str, timeout_s: float) -> bool:
        """Keep the call's audio flowing (silence, at real time) until the bridge sends ``kind``."""
        deadline = time.monotonic() + timeout_s
        while not self.events(kind) and time.monotonic() < deadline:
            await self.send_media(MULAW_SILENCE, realtime=True)
        return bool(self.events(kind))


async def call(port: int, token: str) -> SimulatedTwilio:
    async with websockets.connect(f"ws://127.0.0.1:{port}/media", open_timeout=10, max_size=None) as ws:
        twilio = SimulatedTwilio(ws)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps(start_message(token)))
        await twilio.send_media(mulaw_8k("quilter.wav") + MULAW_SILENCE * 50, realtime=False)  # + 1 s silence
        assert await twilio.until("mark", 40), "no complete answer (media + mark) came back"
        answer_messages = len(twilio.received)
        # Twilio is still playing the answer (we hold the mark back): the caller talks over it.
        await twilio.send_media(mulaw_8k("wizard.wav")[:8000], realtime=True)
        assert await twilio.until("clear", 20), "no clear on barge-in"
        twilio.answer = twilio.received[:answer_messages]
        for mark in twilio.events("mark"):  # after a clear Twilio returns the marks it dropped
            await ws.send(json.dumps({"event": "mark", "sequenceNumber": str(twilio.seq + 1),
                                      "streamSid": STREAM_SID, "mark": mark["mark"]}))
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(twilio.seq + 2), "streamSid": STREAM_SID,
                                  "stop": {"accountSid": "AC" + "3" * 32, "callSid": CALL_SID}}))
        await asyncio.wait_for(ws.wait_closed(), 20)  # the bridge ends the call
    return twilio


def test_phone_call_gets_a_spoken_answer_and_barge_in_clears(asr_service, examples_tts, tmp_path):
    with FakeOpenAI(lambda messages: "I heard you say " + messages[-1]["content"], 0.01) as llm, \
            bridge(asr_service.ws, examples_tts.ws, llm.base_url, tmp_path) as port:
        # the webhook: refused without a valid signature, TwiML with a per-call token with one
        assert webhook(port, None).status_code == 403
        assert webhook(port, "bm90IGEgc2lnbmF0dXJl").status_code == 403
        params = {"CallSid": CALL_SID, "AccountSid": "AC" + "3" * 32, "From": "+15550001111", "To": "+15550002222"}
        reply = webhook(port, twilio_signature(params))
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/xml")
        assert '<Connect><Stream url="wss://voice-test.example.ngrok.app/media">' in reply.text
        token = re.search(r'<Parameter name="token" value="([0-9a-f]+)"/>', reply.text).group(1)

        twilio = asyncio.run(call(port, token))
        heard_by_llm = llm.requests[0].body["messages"][-1]["content"]

    assert {"quilter", "apostle", "gospel"} & set(normalise(heard_by_llm)), heard_by_llm
    media = [m for m in twilio.answer if m["event"] == "media"]
    assert media and all(m["streamSid"] == STREAM_SID for m in twilio.received)
    payloads = [base64.b64decode(m["media"]["payload"], validate=True) for m in media]
    assert all(0 < len(p) <= 160 for p in payloads)  # 20 ms of 8 kHz mu-law at most per message
    audio = b"".join(payloads)
    assert len(audio) / 8000 > 2.0
    pcm = mulaw_to_pcm16(audio).astype(np.float32) / 32768.0
    assert np.abs(pcm).max() > 0.05  # speech, not silence
    heard = set(normalise(Transcriber()(pcm, 8000)))
    assert {"heard", "say"} <= heard and {"quilter", "apostle", "classes", "gospel"} & heard, heard
    # the answer's media, then its mark (nothing of the answer after it); the barge-in's clear comes later
    kinds = [m["event"] for m in twilio.received]
    first_mark = kinds.index("mark")
    assert kinds[first_mark - 1] == "media" and "media" not in kinds[first_mark + 1:len(twilio.answer)]
    assert kinds.index("clear") > first_mark


def test_media_stream_without_the_call_token_is_refused(asr_service, examples_tts, tmp_path):
    async def attempt(port: int) -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/media", open_timeout=10) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps(start_message("f" * 64)))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    with bridge(asr_service.ws, examples_tts.ws, "http://127.0.0.1:9/v1", tmp_path) as port:
        assert asyncio.run(attempt(port)) == 1008
