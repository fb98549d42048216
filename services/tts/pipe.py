"""One piece's audio on its way from the model's worker thread to an ``async for`` on the event loop.

:func:`piece_pipe` wires a :class:`~.engine.SynthesisJob` to an :class:`AudioPipe`: the job's sink encodes each
chunk the engine makes with the session's :class:`~.formats.AudioEncoder` *on the worker thread* (resampling and
container encoding never run on the loop) and hands the bytes over; after the last chunk the encoder's tail for the
piece follows. The pipe is bounded by seconds of audio and pulled: the consumer reads it with ``async for``, and a
consumer that falls too far behind stops the piece instead of blocking the worker thread. A piece whose session
asked for word timings also carries :class:`~.words.PieceWords` (at the output rate, from the piece's first sample)
ahead of the audio they describe: the engine's own, or estimated before the first chunk (:class:`~.words.WordRate`).
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..common.errors import ErrorCode, ServiceError
from .engine import SynthesisJob
from .formats import AudioEncoder
from .words import PieceWords, WordRate, WordSpan


class AudioPipe:
    """One piece's encoded audio, from the model's worker thread to an ``async for`` on the event loop.

    At most ``limit_s`` seconds of audio wait in it: a consumer that falls that far behind (which the callers'
    own bounds keep from happening) gets ``overloaded`` and the piece is stopped, so the worker thread never
    blocks on a consumer and memory stays bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit_s: float, job: SynthesisJob) -> None:
        self._loop = loop
        self._limit_s = limit_s
        self._job = job
        self._chunks: deque[tuple[bytes | PieceWords, float]] = deque()
        self._seconds = 0.0
        self._ready = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None

    def feed(self, data: bytes | PieceWords, seconds: float) -> None:
        """Worker thread: hand one encoded chunk (or a chunk's words) over."""
        if data:
            self._loop.call_soon_threadsafe(self._put, data, seconds)

    def end(self, error: BaseException | None = None) -> None:
        """Event loop: no more chunks (``error``: the piece failed)."""
        self._ended = True
        self._error = self._error or error
        self._ready.set()

    def _put(self, data: bytes | PieceWords, seconds: float) -> None:
        if self._ended:
            return
        self._chunks.append((data, seconds))
        self._seconds += seconds
        if self._seconds > self._limit_s:
            self._job.cancelled.set()
            self.end(ServiceError(ErrorCode.OVERLOADED, f"more than {self._limit_s:g} s of audio waiting to be "
                                                        f"taken; the piece was stopped"))
        self._ready.set()

    def __aiter__(self) -> "AudioPipe":
        return self

    async def __anext__(self) -> bytes | PieceWords:
        while not self._chunks:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        data, seconds = self._chunks.popleft()
        self._seconds -= seconds
        return data


def piece_pipe(job: SynthesisJob, encoder: AudioEncoder, limit_s: float, *, words: WordRate | None = None,
               aligned: bool = False) -> AudioPipe:
    """The pipe ``job``'s audio arrives in, encoded by ``encoder`` on the worker thread (called on the loop).
    With ``words`` the piece's word timings come along: the engine's (``aligned``), or estimated by ``words``."""
    pipe = AudioPipe(asyncio.get_running_loop(), limit_s, job)
    spoken = [0, 0.0]  # native samples, seconds of this piece handed to the encoder so far

    def sink(samples, rate_hz: int) -> None:
        if words is not None and not aligned and not spoken[0]:
            timings(words.estimate(job.text, rate_hz), rate_hz, True)
        pipe.feed(encoder.encode(samples, rate_hz), samples.size / rate_hz)
        spoken[0] += samples.size
        spoken[1] += samples.size / rate_hz

    def timings(spans: list[WordSpan], rate_hz: int, estimated: bool) -> None:
        scale, at = encoder.rate_hz / rate_hz, spoken[0]
        pipe.feed(PieceWords(tuple(WordSpan(s.word, round((at + s.start) * scale), round((at + s.end) * scale))
                                   for s in spans), estimated), 0.0)

    def on_done() -> None:
        pipe.feed(encoder.end_piece(), 0.0)
        if words is not None and not aligned and not job.cancelled.is_set():
            words.learn(job.text, spoken[1])

    job.sink = sink
    job.on_done = on_done
    if words is not None and aligned:
        job.word_sink = timings
    return pipe
