"""One live synthesis session: the state and tasks behind one ``WS /v1/stream/tts``.

Three tasks per connection:

* the *reader* parses client messages, feeds text to the session's
  :class:`~.text.TextChunker` and queues the complete pieces for the speaker;
  it speaks a pending fragment once it has waited ``flush_after_ms``, and it
  handles ``cancel`` itself, at once;
* the *speaker* takes pieces one at a time, announces each with a ``segment``
  event and asks the shared scheduler to synthesize it; audio chunks are
  resampled and encoded on the model's worker thread as they are made (never
  on the event loop) and queued for the writer;
* the *writer* sends queued events and audio in order.

Everything queued is bounded: audio by seconds (``max_buffered_audio_s``, which
holds synthesis back), and pieces, flush marks (consecutive ones are merged)
and events by count (``session_queue_items``): a client that floods the
session without reading is closed with ``overloaded`` (1013). Admission comes
first, before any other work (the voice lookup too). Any failure of the reader
or writer ends the session with an ``internal`` error; it never hangs holding
its admission slot.

Barge-in: every queued item carries the *generation* it belongs to. ``cancel``
starts a new generation: the chunker is emptied, the speaker task (and with it
its pending scheduler request) is cancelled and the running piece told to stop
between chunks, queued audio of older generations is dropped, and
``cancelled`` is queued; the writer never sends audio of an older generation,
so nothing of the cancelled text follows ``cancelled``. A fresh speaker then
serves new text. All per-stream state lives here, never on the shared engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..common import logs
from ..common.admission import refuse, session_slot
from ..common.errors import ErrorCode, ServiceError
from ..common.tasks import TaskSet
from .formats import WireEncoder
from .protocol import (Cancel, Cancelled, Closed, Done, End, Flush, Ready, Segment, StreamParams, Text,
                       parse_client_message, parse_stream_params)
from .serving import TtsRuntime
from .text import TextChunker
from .voices import ResolvedVoice

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 0.5  # on SIGTERM, messages already on the wire are read before a session counts as idle


@dataclass(frozen=True)
class _Piece:
    text: str
    ready_at: float  # perf_counter when it was cut
    first: bool  # nothing else was waiting or speaking: its first audio is a time-to-first-audio


@dataclass(frozen=True)
class _Mark:
    done: bool = True
    end: bool = False


@dataclass(frozen=True)
class _CloseRequest:
    code: int


@dataclass(frozen=True)
class _Audio:
    data: bytes
    first_of: _Piece | None = None  # set on a piece's first audio when it measures time to first audio


class QueueFull(Exception):
    """A session's queue holds its limit of items: the client floods without reading."""


class _Outbox:
    """Ordered items for the writer, each tagged with its generation; audio bytes are counted for backpressure,
    and at most ``limit_items`` items wait (close requests, fatal errors and ``closed`` are never refused)."""

    DROPPABLE = (_Audio, Segment, Done)

    def __init__(self, limit_items: int = 1 << 30) -> None:
        self.limit_items = limit_items
        self._items: deque[tuple[int, Any]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.audio_bytes = 0
        self.limit_bytes = 1 << 62

    def __len__(self) -> int:
        return len(self._items)

    def put(self, generation: int, item: Any) -> None:
        if len(self._items) >= self.limit_items and not _forced(item):
            raise QueueFull(f"{len(self._items)} events waiting for the client")
        self._items.append((generation, item))
        if isinstance(item, _Audio):
            self.audio_bytes += len(item.data)
            if self.audio_bytes >= self.limit_bytes:
                self._room.clear()
        self._ready.set()

    def drop_before(self, generation: int) -> None:
        """Drop queued audio, segments and dones of older generations (errors and closes stay)."""
        kept = deque(x for x in self._items if x[0] >= generation or not isinstance(x[1], self.DROPPABLE))
        self._items = kept
        self.audio_bytes = sum(len(i.data) for _, i in kept if isinstance(i, _Audio))
        if self.audio_bytes < self.limit_bytes:
            self._room.set()

    async def get(self) -> tuple[int, Any]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        generation, item = self._items.popleft()
        if isinstance(item, _Audio):
            self.audio_bytes -= len(item.data)
            if self.audio_bytes < self.limit_bytes:
                self._room.set()
        return generation, item

    async def wait_room(self) -> None:
        await self._room.wait()

    def clear(self) -> None:
        self._items.clear()
        self.audio_bytes = 0
        self._room.set()


def _forced(item: Any) -> bool:
    return isinstance(item, (_CloseRequest, Closed)) or (isinstance(item, ServiceError) and item.fatal)


class _Work:
    """The pieces and flush marks waiting for the speaker: at most ``limit`` of them; a mark right behind
    another waiting mark is merged into it (a burst of flushes costs one ``done``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        if isinstance(item, _Mark) and self._items and isinstance(self._items[-1], _Mark):
            last = self._items[-1]
            self._items[-1] = _Mark(done=last.done or item.done, end=last.end or item.end)
            return
        if len(self._items) >= self.limit:
            raise QueueFull(f"{len(self._items)} pieces and flushes waiting to be spoken")
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class TtsSession:
    def __init__(self, ws: WebSocket, runtime: TtsRuntime, params: StreamParams, voice: ResolvedVoice,
                 session_id: str) -> None:
        s = runtime.settings
        self.ws = ws
        self.runtime = runtime
        self.params = params
        self.voice = voice
        self.id = session_id
        self.out_rate_hz = params.sample_rate or runtime.native_rate_hz(voice)
        self.chunker = TextChunker(runtime.chunker_options)
        self.outbox = _Outbox(s.server.session_queue_items)
        self.outbox.limit_bytes = int(s.server.max_buffered_audio_s * self.out_rate_hz
                                      * params.encoding.bytes_per_sample)
        self.generation = 0
        self.work = _Work(s.server.session_queue_items)
        self.queued_chars = 0
        self.segment_index = 0
        self.speaking = False
        self.job_cancel: threading.Event | None = None
        self.speaker: asyncio.Task | None = None
        self._cancel_started = 0.0
        self._tasks = TaskSet(self.id)
        self._gone = asyncio.Event()
        self._failed = asyncio.Event()  # _fail: the session ends now, whatever the writer is doing
        self._draining = False

    # -- entry point (the route calls this) ------------------------------------------
    @classmethod
    async def serve(cls, ws: WebSocket, runtime: TtsRuntime) -> None:
        await ws.accept()
        with logs.session_scope() as session_id:
            try:
                params = parse_stream_params(dict(ws.query_params))
                runtime.admission.acquire()  # first: nothing else is done for a session that is refused
            except ServiceError as err:
                await refuse(ws, runtime.metrics, err)
                return
            with session_slot(runtime.admission, runtime.metrics):
                try:
                    voice = await runtime.voices.resolve(params.voice)
                except ServiceError as err:
                    await refuse(ws, runtime.metrics, err)
                    return
                await cls(ws, runtime, params, voice, session_id).run()

    async def run(self) -> None:
        log.info("session started", extra={"voice": self.voice.id, "sample_rate": self.out_rate_hz,
                                           "encoding": self.params.encoding.value})
        self.outbox.put(0, Ready(self.id, self.voice.id, self.out_rate_hz, self.params.encoding.value))
        writer = self._tasks.spawn(self._write(), "writer")
        self._tasks.spawn(self._read(), "reader")
        self.speaker = self._tasks.spawn(self._speak(self.work, self.generation), "speaker")
        self._tasks.spawn(self._watch_drain(), "drain")
        gone = asyncio.ensure_future(self._gone.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({writer, gone, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done() and not writer.done() and not gone.done():
                # the error and close are next in line; a client that does not read gets no longer than this
                await asyncio.wait({writer, gone}, timeout=FAIL_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            failed.cancel()
            if self.job_cancel is not None:
                self.job_cancel.set()
            await self._tasks.cancel_all()
            if self._failed.is_set() and not _writer_finished(writer):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(1011), timeout=1.0)
            log.info("session ended", extra={"segments": self.segment_index})

    # -- reader ---------------------------------------------------------------------------
    async def _read(self) -> None:
        limits = self.runtime.settings.server
        flush_after_s = self.runtime.settings.text.flush_after_ms / 1000
        last_input = time.perf_counter()
        try:
            while True:
                now = time.perf_counter()
                timeout = limits.idle_timeout_s
                if self.chunker.pending and flush_after_s > 0:
                    timeout = max(0.0, min(timeout, last_input + flush_after_s - now))
                try:
                    message = await asyncio.wait_for(self.ws.receive(), timeout=timeout)
                except asyncio.TimeoutError:
                    if self.chunker.pending and flush_after_s > 0:
                        self._queue(self.chunker.flush())  # the fragment waited long enough: speak it
                        continue
                    if self._idle():
                        self._report(ServiceError(ErrorCode.TIMEOUT,
                                                  f"nothing received for {limits.idle_timeout_s:g} s; closing"))
                        return
                    continue
                if message["type"] == "websocket.disconnect":
                    self._gone.set()
                    return
                last_input = time.perf_counter()
                if message.get("bytes") is not None:
                    self._report(ServiceError(ErrorCode.BAD_MESSAGE,
                                              "binary frames are not accepted on the TTS socket; send JSON text "
                                              "messages ({\"type\":\"text\",\"text\":...}); frame ignored"))
                    continue
                raw = message.get("text")
                if raw is None:
                    continue
                size = len(raw) if len(raw) * 4 <= limits.max_message_bytes else len(raw.encode())
                if size > limits.max_message_bytes:
                    self._report(ServiceError(ErrorCode.TOO_LARGE, f"message of {size} bytes exceeds the limit "
                                                                   f"of {limits.max_message_bytes}"))
                    return
                try:
                    msg = parse_client_message(raw)
                    if self._on_message(msg):
                        return
                except ServiceError as err:
                    self._report(err)
                    if err.fatal:
                        return
        except (WebSocketDisconnect, RuntimeError):
            self._gone.set()
        except QueueFull as exc:
            self._fail(ServiceError(ErrorCode.OVERLOADED, f"the client sends faster than it reads ({exc}); closing"))
        except Exception as exc:  # noqa: BLE001 - a bug here must end this session, not hang it
            log.exception("reader failed")
            self._fail(ServiceError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"))

    def _on_message(self, msg) -> bool:
        """Handle one client message; True when the reader should stop."""
        text_limits = self.runtime.settings.text
        if isinstance(msg, Text):
            if not msg.text:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "empty text ignored")
            if len(msg.text) > text_limits.max_text_chars:
                raise ServiceError(ErrorCode.TOO_LARGE, f"text of {len(msg.text)} characters exceeds the limit of "
                                                        f"{text_limits.max_text_chars}")
            if self.queued_chars + len(self.chunker) + len(msg.text) > text_limits.max_buffered_chars:
                raise ServiceError(ErrorCode.TOO_LARGE, f"more than {text_limits.max_buffered_chars} characters "
                                                        f"waiting to be spoken")
            self._queue(self.chunker.push(msg.text))
        elif isinstance(msg, Flush):
            self._queue(self.chunker.flush())
            self.work.put_nowait(_Mark(done=True))
        elif isinstance(msg, Cancel):
            self._cancel()
        elif isinstance(msg, End):
            self._queue(self.chunker.flush())
            self.work.put_nowait(_Mark(done=True, end=True))
            return True
        return False

    def _queue(self, pieces: list[str]) -> None:
        now = time.perf_counter()
        for text in pieces:
            first = not self.speaking and self.work.empty()
            self.work.put_nowait(_Piece(text, now, first))
            self.queued_chars += len(text)

    def _idle(self) -> bool:
        return not self.speaking and self.work.empty() and not self.chunker.pending and not len(self.outbox)

    def _cancel(self) -> None:
        started = time.perf_counter()
        self.generation += 1
        self.chunker.reset()
        if self.job_cancel is not None:
            self.job_cancel.set()  # the running piece stops at its next chunk
        if self.speaker is not None:
            self.speaker.cancel()  # its queued scheduler request is skipped
        self.work = _Work(self.runtime.settings.server.session_queue_items)
        self.queued_chars = 0
        self.speaking = False
        self.outbox.drop_before(self.generation)
        self.outbox.put(self.generation, Cancelled())
        self.runtime.metrics.cancels.inc()
        self._cancel_started = started
        self.speaker = self._tasks.spawn(self._speak(self.work, self.generation), "speaker")

    # -- draining (SIGTERM, services/common/serve.py) ---------------------------------------
    async def _watch_drain(self) -> None:
        """The instance is draining: finish what is being spoken, then leave with 1001 "going away"."""
        await self.runtime.admission.drain_requested.wait()
        await asyncio.sleep(DRAIN_GRACE_S)  # text the client sent just before the signal is still read first
        self._draining = True
        self._leave_if_drained(self.generation)

    def _leave_if_drained(self, generation: int) -> bool:
        """While draining, close (after everything queued) once nothing is being or waiting to be spoken."""
        if self._draining and not self.speaking and self.work.empty() and not self.chunker.pending:
            self.outbox.put(generation, _CloseRequest(1001))
            return True
        return False

    # -- speaker ---------------------------------------------------------------------------
    async def _speak(self, work: _Work, generation: int) -> None:
        rt = self.runtime
        try:
            while True:
                item = await work.get()
                if isinstance(item, _Mark):
                    if item.done:
                        self.outbox.put(generation, Done())
                    if item.end:
                        self.outbox.put(generation, Closed())
                        self.outbox.put(generation, _CloseRequest(1000))
                        return
                    if self._leave_if_drained(generation):
                        return
                    continue
                self.queued_chars = max(0, self.queued_chars - len(item.text))
                await self.outbox.wait_room()  # a slow reader holds synthesis back (bounded buffer)
                if generation != self.generation:
                    return
                self.speaking = True
                self.outbox.put(generation, Segment(self.segment_index, item.text))
                self.segment_index += 1
                first_pending = [item if item.first else None]
                wire = WireEncoder(self.params.encoding, self.out_rate_hz)  # this piece's; used off the loop

                def on_chunk(data: bytes, _rate_hz: int) -> None:  # on the loop, in order; already encoded
                    if generation != self.generation or not data or self._failed.is_set():
                        return
                    try:
                        self.outbox.put(generation, _Audio(data, first_pending[0]))
                    except QueueFull as exc:
                        self._fail(ServiceError(ErrorCode.OVERLOADED, f"the client is not reading ({exc}); closing"))
                        return
                    first_pending[0] = None

                cancel = threading.Event()
                self.job_cancel = cancel
                try:
                    await rt.synthesize(self.voice, item.text, on_chunk, cancelled=cancel, encode=wire.encode)
                finally:
                    if self.job_cancel is cancel:
                        self.job_cancel = None
                if generation != self.generation or self._failed.is_set():
                    return
                tail = await asyncio.to_thread(wire.end_piece)
                if tail:
                    self.outbox.put(generation, _Audio(tail))
                self.speaking = not work.empty()
                if self._leave_if_drained(generation):
                    return
        except asyncio.CancelledError:
            raise
        except QueueFull as exc:
            self._fail(ServiceError(ErrorCode.OVERLOADED, f"the client is not reading ({exc}); closing"))
        except ServiceError as err:
            self._report(err)
        except Exception as exc:  # noqa: BLE001 - this session fails, nobody else
            log.exception("synthesis failed")
            self._report(ServiceError(ErrorCode.INTERNAL, f"synthesis failed: {type(exc).__name__}"))

    # -- writer ----------------------------------------------------------------------------
    async def _write(self) -> None:
        metrics = self.runtime.metrics
        try:
            while True:
                generation, item = await self.outbox.get()
                if generation < self.generation and isinstance(item, _Outbox.DROPPABLE):
                    continue  # belongs to cancelled text
                if isinstance(item, _Audio):
                    await self.ws.send_bytes(item.data)
                    if item.first_of is not None:
                        metrics.time_to_first_audio.observe(time.perf_counter() - item.first_of.ready_at)
                elif isinstance(item, _CloseRequest):
                    await self.ws.close(item.code)
                    return
                elif isinstance(item, ServiceError):
                    metrics.errors.labels(code=item.code.value).inc()
                    log.info("error sent", extra={"code": item.code.value, "detail": item.message})
                    await self.ws.send_text(item.to_json())
                else:
                    await self.ws.send_text(item.to_json())
                    if isinstance(item, Cancelled):
                        metrics.cancel_ack_seconds.observe(time.perf_counter() - self._cancel_started)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._gone.set()
        except Exception:  # noqa: BLE001 - the session ends (run() waits on the writer); log why
            log.exception("writer failed")
            self._gone.set()

    def _report(self, err: ServiceError) -> None:
        """Queue an error event; a fatal one also closes the session after it. A non-fatal one counts
        against the queue's limit (``QueueFull`` when a client floods bad messages without reading)."""
        self.outbox.put(self.generation, err)
        if err.fatal:
            self.outbox.put(self.generation, _CloseRequest(err.close_code))

    def _fail(self, err: ServiceError) -> None:
        """End the session now with ``err``: what waits to be sent is dropped, the error and the close go
        next, the running piece stops, and run() stops waiting for a writer stuck on a client that does not
        read after ``FAIL_GRACE_S``."""
        if self._failed.is_set():
            return
        log.info("session failed", extra={"code": err.code.value, "detail": err.message})
        if self.job_cancel is not None:
            self.job_cancel.set()
        self.outbox.clear()
        self._report(err)
        self._failed.set()


FAIL_GRACE_S = 10.0


def _writer_finished(writer: asyncio.Task) -> bool:
    return writer.done() and not writer.cancelled()
