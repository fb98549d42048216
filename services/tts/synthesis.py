"""Whole-text synthesis for the HTTP routes, streamed as it is made.

:func:`prepare` checks a request's text and voice before any response is
started (so errors get a proper status); :func:`stream_audio` then yields the
encoded bytes piece by piece through the shared scheduler. If the client goes
away, the generator is closed, the pending piece is withdrawn and the running
one stops at its next chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from ..common.audio import StreamResampler
from ..common.errors import ErrorCode, ServiceError
from .formats import FileEncoder
from .serving import TtsRuntime
from .text import TextChunker
from .voices import ResolvedVoice

_END = object()


@dataclass
class Prepared:
    voice: ResolvedVoice
    pieces: list[str]


async def prepare(runtime: TtsRuntime, text: str, voice: str | None) -> Prepared:
    limit = runtime.settings.text.max_text_chars
    if len(text) > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"text of {len(text)} characters exceeds the limit of {limit}")
    if not text.strip():
        raise ServiceError(ErrorCode.BAD_REQUEST, "text is empty")
    chunker = TextChunker(runtime.chunker_options)
    pieces = chunker.push(text) + chunker.flush()
    if not pieces:
        raise ServiceError(ErrorCode.BAD_REQUEST, "text has nothing to speak (no letters or digits)")
    return Prepared(await runtime.voices.resolve(voice), pieces)


async def stream_audio(runtime: TtsRuntime, prepared: Prepared, encoder: FileEncoder,
                       speed: float = 1.0) -> AsyncIterator[bytes]:
    """Yields the container's start together with the first audio, then the rest as it is made."""
    pending = encoder.start()
    try:
        for piece in prepared.pieces:
            queue: asyncio.Queue = asyncio.Queue()
            resampler: list[StreamResampler | None] = [None]

            def on_chunk(samples: np.ndarray, rate_hz: int) -> None:
                if resampler[0] is None:
                    resampler[0] = StreamResampler(rate_hz, encoder.rate_hz)
                queue.put_nowait(resampler[0].process(samples))

            task = asyncio.ensure_future(runtime.synthesize(prepared.voice, piece, on_chunk, speed=speed))
            task.add_done_callback(lambda _t: queue.put_nowait(_END))
            try:
                while (samples := await queue.get()) is not _END:
                    data = encoder.encode(samples)
                    if data:
                        yield pending + data
                        pending = b""
                task.result()
            finally:
                if not task.done():
                    task.cancel()
            if resampler[0] is not None:
                data = encoder.encode(resampler[0].process(np.zeros(0, dtype=np.float32), last=True))
                if data:
                    yield pending + data
                    pending = b""
        tail = pending + encoder.finish()
        if tail:
            yield tail
    finally:
        encoder.close()
