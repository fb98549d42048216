"""Helpers of the TTS tests: a WebSocket client that records everything, and transcription with our ASR model."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass, field

import av
import numpy as np
import websockets

from services.common.audio import mulaw_to_pcm16, resample


@dataclass
class Received:
    events: list = field(default_factory=list)  # dicts, or ("audio", nbytes) markers in order
    audio: bytearray = field(default_factory=bytearray)
    close_code: int | None = None

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict) and e.get("type") == kind]

    @property
    def types(self) -> list[str]:
        return [e["type"] if isinstance(e, dict) else "audio" for e in self.events]


async def recv_until(ws, received: Received, stop: str | None = None, timeout_s: float = 20.0) -> Received:
    """Read into ``received`` until an event of type ``stop`` (None: until the socket closes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
        except websockets.ConnectionClosed as exc:
            received.close_code = exc.rcvd.code if exc.rcvd else None
            return received
        if isinstance(message, bytes):
            received.audio += message
            received.events.append(("audio", len(message)))
        else:
            event = json.loads(message)
            received.events.append(event)
            if stop is not None and event["type"] == stop:
                return received


async def speak(url: str, text: str, query: str = "") -> Received:
    """One session on ``url``'s ``/v1/stream/tts`` (``query`` appended): ``text``, ``end``, everything received."""
    async with websockets.connect(f"{url}/v1/stream/tts{query}") as ws:
        got = Received()
        await recv_until(ws, got, "ready")
        await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "end"}))
        return await recv_until(ws, got, None, timeout_s=60)


def pcm_to_float(data: bytes, encoding: str = "pcm_s16le") -> np.ndarray:
    samples = mulaw_to_pcm16(bytes(data)) if encoding == "mulaw" else np.frombuffer(bytes(data), dtype="<i2")
    return samples.astype(np.float32) / 32768.0


def decode_container(data: bytes) -> tuple[np.ndarray, int, str]:
    """Decode any container with PyAV: (mono float32 samples, rate, codec name)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate, codec = stream.rate, stream.codec_context.name
        chunks = [frame.to_ndarray().reshape(-1).astype(np.float32) for frame in container.decode(stream)]  # mono
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate, codec


class Transcriber:
    """The project's own ASR model, used to check that synthesized speech says the words."""

    def __init__(self) -> None:
        from services.asr.engine import WhisperEngine

        self.engine = WhisperEngine()

    def __call__(self, audio: np.ndarray, rate_hz: int) -> str:
        from services.asr.engine import DecodeRequest

        audio16k = resample(np.asarray(audio, dtype=np.float32), rate_hz, 16000)
        return self.engine.decode_batch([DecodeRequest(audio16k, beam_size=5)])[0].text


def words(text: str) -> list[str]:
    import re

    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def mostly_heard(expected: str, heard: str, at_least: float = 0.8) -> bool:
    want = words(expected)
    got = set(words(heard))
    return sum(w in got for w in want) >= at_least * len(want)
