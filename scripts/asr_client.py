"""A minimal asyncio client of WS /v1/stream/asr (speaks the contract, nothing more): the tests use it, loaded
through tests/conftest.py, and so does scripts/deploy_checks.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

import websockets


@dataclass
class StreamResult:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    binary_frames: int = 0

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def final_text(self) -> str:
        return " ".join(e["text"] for e in self.of("final")).strip()


async def stream(url: str, audio: bytes, *, params: dict | None = None, frame_bytes: int = 640, speed: float = 0.0,
                 bytes_per_second: int = 32000, end: bool = True, before_end: list | None = None,
                 timeout_s: float = 120.0) -> StreamResult:
    """Send ``audio`` in frames (paced at ``speed`` x real time; 0 = as fast as the server accepts),
    then the optional messages in ``before_end`` and ``{"type":"end"}``; collect every event until close."""
    result = StreamResult()
    full = url + ("?" + urlencode(params) if params else "")
    async with websockets.connect(full, max_size=None, open_timeout=20) as ws:
        async def send() -> None:
            period_s = frame_bytes / bytes_per_second / speed if speed > 0 else 0.0
            for i in range(0, len(audio), frame_bytes):
                await ws.send(audio[i:i + frame_bytes])
                if period_s:
                    await asyncio.sleep(period_s)  # the pace of a live source is the input, not a wait for an event
            for message in before_end or []:
                await ws.send(message if isinstance(message, (bytes, str)) else json.dumps(message))
            if end:
                await ws.send(json.dumps({"type": "end"}))

        async def receive() -> None:
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        result.binary_frames += 1
                    else:
                        result.events.append(json.loads(message))
            except websockets.ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        try:
            await asyncio.wait_for(send(), timeout_s)
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(receiver, timeout_s)
        result.close_code = ws.close_code
    return result
