"""Whole-text synthesis for the HTTP routes, streamed as it is made.

:func:`prepare` checks a request's text and voice before any response is
started (so errors get a proper status); :func:`stream_audio` then yields the
encoded bytes piece by piece through the shared scheduler. Resampling and
container encoding (PyAV for mp3/flac/opus/aac) run on the model's worker
thread as each chunk is made, and the container's last bytes in a worker
thread, never on the event loop. If the client goes away, the generator is
closed, the pending piece is withdrawn, the running one stops at its next
chunk, and the encoder is closed (safely, even while a chunk is being encoded).
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


class _PieceEncoder:
    """One piece's resampler in front of the response's encoder; used on the worker thread."""

    def __init__(self, encoder: FileEncoder) -> None:
        self.encoder = encoder
        self.resampler: StreamResampler | None = None

    def encode(self, samples: np.ndarray, rate_hz: int) -> bytes:
        if self.resampler is None:
            self.resampler = StreamResampler(rate_hz, self.encoder.rate_hz)
        return self.encoder.encode(self.resampler.process(samples))

    def tail(self) -> bytes:
        if self.resampler is None:
            return b""
        return self.encoder.encode(self.resampler.process(np.zeros(0, dtype=np.float32), last=True))


async def stream_audio(runtime: TtsRuntime, prepared: Prepared, encoder: FileEncoder,
                       speed: float = 1.0) -> AsyncIterator[bytes]:
    """Yields the container's start together with the first audio, then the rest as it is made."""
    pending = encoder.start()
    try:
        for piece in prepared.pieces:
            queue: asyncio.Queue = asyncio.Queue()  # at most one piece's chunks
            piece_encoder = _PieceEncoder(encoder)
            task = asyncio.ensure_future(runtime.synthesize(
                prepared.voice, piece, lambda data, _rate: queue.put_nowait(data), speed=speed,
                encode=piece_encoder.encode))
            task.add_done_callback(lambda _t: queue.put_nowait(_END))
            try:
                while (data := await queue.get()) is not _END:
                    if data:
                        yield pending + data
                        pending = b""
                task.result()
            finally:
                if not task.done():
                    task.cancel()
            data = await asyncio.to_thread(piece_encoder.tail)
            if data:
                yield pending + data
                pending = b""
        tail = pending + await asyncio.to_thread(encoder.finish)
        if tail:
            yield tail
    finally:
        encoder.close()
