"""Whole-text synthesis for the HTTP routes, streamed as it is made.

:func:`prepare` checks a request's text and voice before any response is
started (so errors get a proper status) and returns its :class:`SynthesisPlan`;
:func:`stream_audio` then yields the
encoded bytes piece by piece, pulling each piece from ``runtime.stream`` as the
WebSocket session does. Resampling and container encoding (PyAV for
mp3/flac/opus/aac) run on the model's worker thread as each chunk is made, and
the container's last bytes in a worker thread, never on the event loop. If the
client goes away, the generator is closed, the pending piece is withdrawn, the
running one stops at its next chunk, and the encoder is closed (safely, even
while a chunk is being encoded).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..common.errors import ErrorCode, ServiceError
from .formats import AudioEncoder
from .serving import TtsRuntime
from .text import TextChunker
from .voices import ResolvedVoice


@dataclass
class SynthesisPlan:
    """A checked request: the voice it resolved to and its text cut into pieces."""

    voice: ResolvedVoice
    pieces: list[str]


async def prepare(runtime: TtsRuntime, text: str, voice: str | None) -> SynthesisPlan:
    limit = runtime.settings.text.max_text_chars
    if len(text) > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"text of {len(text)} characters exceeds the limit of {limit}")
    if not text.strip():
        raise ServiceError(ErrorCode.BAD_REQUEST, "text is empty")
    chunker = TextChunker(runtime.chunker_options)
    pieces = chunker.push(text) + chunker.flush()
    if not pieces:
        raise ServiceError(ErrorCode.BAD_REQUEST, "text has nothing to speak (no letters or digits)")
    return SynthesisPlan(await runtime.voices.resolve(voice), pieces)


async def stream_audio(runtime: TtsRuntime, plan: SynthesisPlan, encoder: AudioEncoder,
                       speed: float = 1.0) -> AsyncIterator[bytes]:
    """Yields the container's start together with the first audio, then the rest as it is made."""
    pending = encoder.start()
    try:
        for piece in plan.pieces:
            async with contextlib.aclosing(runtime.stream(plan.voice, piece, encoder, speed=speed)) as audio:
                async for data in audio:
                    yield pending + data
                    pending = b""
        tail = pending + await asyncio.to_thread(encoder.finish)
        if tail:
            yield tail
    finally:
        encoder.close()
