"""File transcription and speech synthesis over HTTP (``POST /v1/transcribe``, ``POST /v1/synthesize``).

Plain request/response calls with :mod:`httpx`; an error body from the server
(``{"error": {"code", "message"}}``) is raised as :class:`~.errors.ServiceError`
with its HTTP status. These calls are not resumed: a failed one is simply made
again (``overloaded`` answers carry ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .errors import ServiceError


@dataclass(frozen=True)
class Transcript:
    """``POST /v1/transcribe``'s answer."""

    text: str
    language: str = ""
    duration: float = 0.0
    segments: list[dict] = field(default_factory=list)
    processing_ms: float = 0.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for(response: httpx.Response, body: bytes | None = None) -> None:
    if response.status_code < 400:
        return
    try:
        error = json.loads(body if body is not None else response.content)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    raise ServiceError(code, message, response.status_code)


async def transcribe_file(base_url: str, audio: str | os.PathLike | bytes, *, language: str | None = None,
                          word_timestamps: bool = False, api_key: str | None = None,
                          timeout_s: float = 600.0) -> Transcript:
    """Transcribe a whole file (any format the server's FFmpeg decodes); ``base_url`` like
    ``http://127.0.0.1:8001``."""
    data = audio if isinstance(audio, bytes) else await asyncio.to_thread(Path(audio).read_bytes)  # off the loop
    name = "audio" if isinstance(audio, bytes) else Path(audio).name
    form: dict[str, Any] = {"word_timestamps": "true" if word_timestamps else "false"}
    if language:
        form["language"] = language
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        response = await client.post(base_url.rstrip("/") + "/v1/transcribe", files={"file": (name, data)},
                                     data=form, headers=_headers(api_key))
    _raise_for(response)
    body = response.json()
    return Transcript(body.get("text", ""), body.get("language", ""), body.get("duration", 0.0),
                      body.get("segments", []), body.get("processing_ms", 0.0))


async def stream_synthesis(base_url: str, text: str, *, voice: str | None = None, format: str = "pcm",
                           sample_rate: int | None = None, speed: float = 1.0, api_key: str | None = None,
                           timeout_s: float = 300.0) -> AsyncIterator[bytes]:
    """Synthesize ``text``, yielding the audio as the server makes it (``format``: ``wav``, ``pcm``, ``mulaw``)."""
    request: dict[str, Any] = {"text": text, "format": format, "speed": speed}
    if voice:
        request["voice"] = voice
    if sample_rate:
        request["sample_rate"] = sample_rate
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        async with client.stream("POST", base_url.rstrip("/") + "/v1/synthesize", json=request,
                                 headers=_headers(api_key)) as response:
            if response.status_code >= 400:
                _raise_for(response, await response.aread())
            async for chunk in response.aiter_bytes():
                yield chunk


async def synthesize(base_url: str, text: str, **options: Any) -> bytes:
    """Synthesize ``text`` whole (see :func:`stream_synthesis` for the options); ``format`` defaults to ``wav``."""
    options.setdefault("format", "wav")
    return b"".join([chunk async for chunk in stream_synthesis(base_url, text, **options)])
