"""The session chassis: what every WebSocket session of both services does, written once.

A service's session subclasses :class:`Session` and supplies only its messages
and its work (ASR: the audio processor; TTS: the speaker). The chassis owns:

* **admission**: :meth:`Session.serve` accepts, checks the query
  (:meth:`Session.prepare`: refused before a slot is taken), takes a slot or
  refuses at once with ``overloaded``, builds the session and runs it;
* **tasks**: a *reader* (socket -> hooks), a *writer* (outbox -> socket, in
  order), a *drain watcher* and the subclass's work, in one
  :class:`~.tasks.TaskSet` cancelled and awaited together at the end;
* **errors**: :meth:`Session.report` queues an error event (a fatal one then a
  close; a non-fatal one counts against the outbox bound, so a client flooding
  bad frames without reading is closed with ``overloaded``); :meth:`Session.fail`
  ends the session now: queued items go, the error and close are next, and a
  client that does not read them gets :data:`FAIL_GRACE_S`, then close 1011;
* **limits**: text frames over ``server.max_message_bytes`` are ``too_large``;
  a client that takes no frame for ``server.send_timeout_s`` is dropped;
* **draining**: on SIGTERM, after :data:`DRAIN_GRACE_S` (what was just sent is read first), :meth:`Session.on_drain`;
* **dialects**: a compatible API is a subclass that renders the same items in
  its own shape (:meth:`Session.send`, :meth:`Session.error_frame`) and, with
  ``handshake_refusal``, refuses a session with an HTTP status on the handshake
  (with its :meth:`Session.refusal_headers`), as those APIs' clients expect;
  :func:`handshake_refusals` lists such sockets for the API-key check (``key_subprotocols``: a browser's key).

Any exception in the reader or writer ends this session, never another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from . import logs
from .admission import refuse, session_slot
from .auth import subprotocol_key
from .errors import ErrorCode, RefusalHeaders, ServiceError
from .outbox import CloseRequest, Outbox, QueueFull
from .protocol import Event
from .tasks import TaskSet

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 0.5
"""On SIGTERM, frames already on the wire are read before a session counts as idle."""
FAIL_GRACE_S = 10.0
"""A failed session's error and close are next in line; a client that does not read gets this long."""


def handshake_refusals(sockets: Mapping[str, type["Session"]]) -> dict[str, RefusalHeaders]:
    """Of a service's WebSocket paths and their session classes, those refused on the handshake, each with its
    dialect's headers: what the API-key middleware needs to refuse them the same way."""
    return {path: cls.refusal_headers for path, cls in sockets.items() if cls.handshake_refusal}


def report(outbox: Outbox, err: ServiceError) -> None:
    """Queue an error event; a fatal one also closes the session after it. A non-fatal one counts against the
    outbox's limit (``OutboxFull`` when a client floods bad frames without reading)."""
    outbox.put(err)
    if err.fatal:
        outbox.put(CloseRequest(err.close_code))


class Session:
    """One WebSocket connection. Subclasses implement the hooks below; the chassis calls them."""

    handshake_refusal = False
    """Refuse (bad query, no slot) with an HTTP response on the handshake rather than an error event and a close
    (where the server supports the WebSocket denial extension)."""

    key_subprotocols: tuple[str, ...] = ()
    """Subprotocols (lower case) a browser offers its API key after (``token, KEY``); that one is accepted back."""

    def __init__(self, ws: WebSocket, runtime: Any, session_id: str, outbox: Outbox) -> None:
        self.ws = ws
        self.runtime = runtime
        self.id = session_id
        self.outbox = outbox
        self.tasks = TaskSet(session_id)
        self.draining = False
        self.max_message_bytes: int = runtime.settings.server.max_message_bytes
        self.last_input = time.perf_counter()  # when the client last sent a frame
        self.send_timeout_s: float = runtime.settings.server.send_timeout_s
        self._closed_by_writer = False
        self._gone = asyncio.Event()  # the client left (or the socket broke)
        self._failed = asyncio.Event()  # fail(): the session ends now

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, ws: WebSocket, runtime: Any) -> Any:
        """Check the query before admission (raise ``ServiceError`` to refuse); returns what ``open`` gets."""
        raise NotImplementedError

    @classmethod
    async def open(cls, ws: WebSocket, runtime: Any, setup: Any, session_id: str) -> "Session":
        """Build the session from ``prepare``'s setup once it holds a slot (raise ``ServiceError`` to refuse)."""
        return cls(ws, runtime, setup, session_id)  # type: ignore[call-arg]

    def begin(self) -> None:
        """Queue the first events and spawn the work tasks."""

    def receive_timeout(self) -> float:
        return self.runtime.settings.server.idle_timeout_s

    async def on_timeout(self) -> bool:
        """Nothing arrived within ``receive_timeout()``; True stops reading."""
        raise ServiceError(ErrorCode.TIMEOUT, f"no data for {self.receive_timeout():g} s; closing")

    async def on_binary(self, data: bytes) -> bool:
        """A binary frame; True stops reading."""
        raise NotImplementedError

    async def on_text(self, raw: str) -> bool:
        """A text frame within the size limit; True stops reading. (From any reading hook, a non-fatal
        ``ServiceError`` is reported and reading goes on; a fatal one goes to :meth:`end_with`.)"""
        raise NotImplementedError

    async def end_with(self, err: ServiceError) -> None:
        """Reading stopped on a fatal error (timeout, a frame too large, a fatal message); default: report it."""
        self.report(err)

    def on_drain(self) -> None:
        """The instance is draining: leave once the work in hand is done."""

    def on_fail(self) -> None:
        """The session is failing: stop work that costs model time."""

    async def send(self, item: Any) -> bool:
        """Send one outbox item (a close request never gets here); True ends the writer. This one sends
        errors and events as the contract's JSON; a subclass adds its own items and calls it for the rest."""
        if isinstance(item, ServiceError):
            await self.send_error(item)
        elif isinstance(item, Event):
            await self.write(item.to_json())
        else:
            raise TypeError(f"cannot send {type(item).__name__}")
        return False

    @classmethod
    def refusal_headers(cls, err: ServiceError) -> dict[str, str]:
        """Headers of a refusal on the handshake (``handshake_refusal``), beside the error body."""
        return {}

    @classmethod
    def error_frame(cls, err: ServiceError) -> str | None:
        """The text frame that reports ``err`` (None: the close alone says it); the contract's ``error`` event."""
        return err.to_json()

    def summary(self) -> dict:
        """Fields of the "session ended" log line."""
        return {}

    # -- entry point (the route calls this) ------------------------------------------------------
    @classmethod
    async def serve(cls, ws: WebSocket, runtime: Any) -> None:
        deny = cls.handshake_refusal and "websocket.http.response" in ws.scope.get("extensions", {})
        subprotocol = (subprotocol_key(ws.scope, cls.key_subprotocols) or (None,))[0]  # ApiKeyAuth checked the key
        if not deny:
            await ws.accept(subprotocol)
        with logs.session_scope() as session_id:
            try:
                setup = cls.prepare(ws, runtime)
                runtime.admission.acquire()  # first: nothing else is done for a session that is refused
            except ServiceError as err:
                await refuse(ws, runtime.metrics, err, cls.error_frame(err), deny, cls.refusal_headers(err))
                return
            with session_slot(runtime.admission, runtime.metrics):
                try:
                    session = await cls.open(ws, runtime, setup, session_id)
                except ServiceError as err:
                    await refuse(ws, runtime.metrics, err, cls.error_frame(err), deny, cls.refusal_headers(err))
                    return
                if deny:
                    await ws.accept(subprotocol)
                await session.run()

    async def run(self) -> None:
        self.begin()
        writer = self.tasks.spawn(self._write(), "writer")
        self.tasks.spawn(self._read(), "reader")
        self.tasks.spawn(self._watch_drain(), "drain")
        gone = asyncio.ensure_future(self._gone.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({writer, gone, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done() and not writer.done() and not gone.done():
                await asyncio.wait({writer, gone}, timeout=FAIL_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            failed.cancel()
            await self.tasks.cancel_all()
            if self._failed.is_set() and not self._closed_by_writer:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(1011), timeout=1.0)
            log.info("session ended", extra=self.summary())

    # -- reporting -------------------------------------------------------------------------------
    def report(self, err: ServiceError) -> None:
        report(self.outbox, err)

    def fail(self, err: ServiceError) -> None:
        """End the session now with ``err`` (see the module docstring)."""
        if self._failed.is_set():
            return
        log.info("session failed", extra={"code": err.code.value, "detail": err.message})
        self.on_fail()
        self.outbox.clear()
        self.report(err)
        self._failed.set()

    # -- the chassis's tasks ---------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), timeout=self.receive_timeout())
                except asyncio.TimeoutError:
                    message = None
                if message is not None and message["type"] == "websocket.disconnect":
                    self._gone.set()
                    return
                try:
                    stop = await self.on_message(message)
                except ServiceError as err:
                    if err.fatal:
                        await self.end_with(err)
                        return
                    self.report(err)
                    stop = False
                if stop:
                    return
        except (WebSocketDisconnect, RuntimeError):
            self._gone.set()
        except QueueFull as exc:  # the outbox, or a queue a hook fills (TTS's work queue)
            self.fail(ServiceError(ErrorCode.OVERLOADED, f"the client sends faster than it reads ({exc}); closing"))
        except Exception as exc:  # noqa: BLE001 - a bug here must end this session, not hang it
            log.exception("reader failed")
            self.fail(ServiceError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"))

    async def on_message(self, message: dict | None) -> bool:
        """A received message (None: timed out) to the hooks above; a non-WebSocket transport overrides it."""
        if message is None:
            return await self.on_timeout()
        self.last_input = time.perf_counter()
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            return await self.on_binary(data)
        if text is None:
            return False
        limit = self.max_message_bytes
        size = len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise ServiceError(ErrorCode.TOO_LARGE, f"message of {size} bytes exceeds the limit of {limit}")
        return await self.on_text(text)

    async def _watch_drain(self) -> None:
        await self.runtime.admission.drain_requested.wait()
        await asyncio.sleep(DRAIN_GRACE_S)  # what the client sent just before the signal is read first
        self.draining = True
        self.on_drain()

    async def _write(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, CloseRequest):
                    await self.close(item.code)
                    return
                if await self.send(item):
                    return
        except asyncio.TimeoutError:
            self.fail(ServiceError(ErrorCode.OVERLOADED, f"the client has taken nothing for "
                                                         f"{self.send_timeout_s:g} s; closing"))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._gone.set()
        except Exception:  # noqa: BLE001 - the session ends (run() waits on the writer); log why
            log.exception("writer failed")
            self._gone.set()

    async def close(self, code: int, reason: str | None = None) -> None:
        self._closed_by_writer = True
        await asyncio.wait_for(self.ws.close(code, reason), self.send_timeout_s)

    async def write(self, frame: str | bytes) -> None:
        """Send one frame; ``TimeoutError`` when the client takes nothing for ``send_timeout_s``."""
        send = self.ws.send_bytes(frame) if isinstance(frame, bytes) else self.ws.send_text(frame)
        await asyncio.wait_for(send, self.send_timeout_s)

    async def send_error(self, err: ServiceError) -> None:
        self.runtime.metrics.errors.labels(code=err.code.value).inc()
        log.info("error sent", extra={"code": err.code.value, "detail": err.message})
        frame = self.error_frame(err)
        if frame is not None:
            await self.write(frame)
