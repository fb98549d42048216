"""The Wyoming protocol's transport, shared by both services' Wyoming servers (Home Assistant's voice protocol).

Wyoming is a stream of events over TCP: a JSON header line (``type``, ``data``,
``data_length``, ``payload_length``), then that many bytes of extra JSON data and
of payload (audio). This module owns the TCP side and nothing of either service:

* :func:`read_event` reads one event with bounds checked *before* anything is
  buffered: the header line (the stream reader's limit), its data and its payload
  (``too_large``); a header that is not a JSON event is ``bad_request`` (the stream
  cannot be trusted past it); both end the connection after the error event;
* :class:`WyomingSocket` is one connection seen as the part of a WebSocket the
  session chassis (:mod:`.session`) uses, so a service's Wyoming session is a
  *dialect* of its ordinary session (the same admission, outbox, limits, idle
  timer, drain and metrics), never a second pipeline. A pump task reads events
  into a one-place queue (TCP pushes back on a client the session does not keep
  up with; a timed-out receive loses nothing); :meth:`WyomingSocket.receive`
  gives ``{"type": "websocket.receive", "event": Event | ServiceError}``, and a
  text frame the chassis sends (an error, a refusal) is one Wyoming event as the
  JSON ``{"type", "data"}``;
* :class:`WyomingDialect` is what both services' Wyoming sessions add to their
  session class: the chassis's reading step taking those typed messages
  (``on_message``), ``error`` events, ``ping``/``pong``, ``describe`` answered in
  order, events with payloads written under the chassis's send timeout;
* :class:`WyomingListener` listens on ``wyoming.port`` for the app's lifespan:
  ``describe`` events before the first other one are answered without a session
  slot (Home Assistant asks when it adds or reloads the integration), then the
  connection becomes one session; at most ``2 x server.max_connections``
  connections are open at once; stopping cancels what is still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong

from . import logs
from .errors import ErrorCode, ServiceError
from .protocol import shown

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
"""Longest header line accepted (the stream reader's limit)."""
CLOSE_WAIT_S = 1.0
"""How long a closing connection may take to flush; then it is aborted."""


@dataclass(frozen=True)
class EventLimits:
    max_data_bytes: int
    """Extra JSON data after the header (``data_length``), e.g. a ``synthesize`` event's text."""
    max_payload_bytes: int
    """Binary payload (``payload_length``): an ``audio-chunk``'s audio."""


def _length(header: dict, key: str) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ServiceError(ErrorCode.BAD_REQUEST, f"{key} must be a non-negative integer, got {shown(value)}")
    return value


async def read_event(reader: asyncio.StreamReader, limits: EventLimits) -> Event | None:
    """The next event (None at the end of the stream). Raises ``ServiceError``: ``too_large`` and ``bad_request``
    (fatal: nothing more is read), ``bad_message`` for extra data that is not a JSON object (read whole first)."""
    try:
        line = await reader.readline()
    except ValueError:  # the stream reader's limit: the line is longer than MAX_HEADER_BYTES
        raise ServiceError(ErrorCode.TOO_LARGE, f"an event header is longer than {MAX_HEADER_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ServiceError(ErrorCode.BAD_REQUEST, f"not a Wyoming event header: {shown(line[:80])}")
    data = header.get("data") if isinstance(header.get("data"), dict) else {}
    data_length, payload_length = _length(header, "data_length"), _length(header, "payload_length")
    if data_length > limits.max_data_bytes:
        raise ServiceError(ErrorCode.TOO_LARGE, f"event data of {data_length} bytes exceeds the limit of "
                                                f"{limits.max_data_bytes}")
    if payload_length > limits.max_payload_bytes:
        raise ServiceError(ErrorCode.TOO_LARGE, f"event payload of {payload_length} bytes exceeds the limit of "
                                                f"{limits.max_payload_bytes}")
    extra: Any = {}
    if data_length:
        raw = await reader.readexactly(data_length)
        try:
            extra = json.loads(raw)
        except ValueError:
            extra = None
    payload = await reader.readexactly(payload_length) if payload_length else None
    if not isinstance(extra, dict):
        raise ServiceError(ErrorCode.BAD_MESSAGE, f"the data of a {shown(header['type'])} event is not a JSON "
                                                  f"object; event ignored")
    return Event(type=header["type"], data={**data, **extra}, payload=payload)


def _received(item: Event | ServiceError) -> dict:
    return {"type": "websocket.receive", "event": item}


_DISCONNECT = {"type": "websocket.disconnect", "code": 1000}


class WyomingSocket:
    """One Wyoming connection, as the chassis sees a WebSocket (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: EventLimits) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.scope: dict = dict(type="wyoming", extensions={})  # an ASGI-like scope: no extensions, no subprotocols
        self.query_params: dict[str, str] = {}
        self.closed = False
        self._inbox: asyncio.Queue[dict] = asyncio.Queue(maxsize=1)
        self._pump: asyncio.Task | None = None
        self._unread: dict | None = None

    async def accept(self, subprotocol: str | None = None) -> None:
        """Nothing to do: a TCP connection is open once it exists."""

    async def receive(self) -> dict:
        if self._unread is not None:
            message, self._unread = self._unread, None
            return message
        if self._pump is None:
            self._pump = asyncio.create_task(self._read(), name="wyoming-pump")
        return await self._inbox.get()

    def unread(self, message: dict) -> None:
        """Give a received message back: the next :meth:`receive` returns it."""
        self._unread = message

    async def _read(self) -> None:
        try:
            while True:
                try:
                    event = await read_event(self.reader, self.limits)
                except ServiceError as err:
                    await self._inbox.put(_received(err))
                    if err.fatal:
                        return  # the stream cannot be read past this
                    continue
                if event is None:
                    break
                await self._inbox.put(_received(event))
        except (OSError, asyncio.IncompleteReadError):
            pass
        await self._inbox.put(_DISCONNECT)

    async def send_event(self, event: Event) -> None:
        if self.closed:
            raise ConnectionResetError("the Wyoming connection is closed")
        await async_write_event(event, self.writer)

    async def send_text(self, frame: str) -> None:
        """A text frame from the chassis: one event as JSON ``{"type", "data"}`` (an error, a refusal)."""
        await self.send_event(Event.from_dict(json.loads(frame)))

    async def send_bytes(self, data: bytes) -> None:
        raise TypeError("a Wyoming connection carries events, not bare bytes")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection (a WebSocket close code means nothing here); a client that does not read what is
        still buffered gets :data:`CLOSE_WAIT_S`, then the connection is aborted."""
        if self.closed:
            return
        self.closed = True
        if self._pump is not None:
            self._pump.cancel()
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, OSError):
            self.writer.transport.abort()


def error_event(err: ServiceError) -> Event:
    """A ``ServiceError`` as Wyoming's ``error`` event: the human text and our stable code."""
    return Error(text=err.message, code=err.code.value).event()


@dataclass(frozen=True)
class Reply:
    """An outbox item: one Wyoming event for the client, in order with the session's other items."""

    event: Event


class WyomingDialect:
    """Mixed into a service's session class before it (``class WyomingAsrSession(WyomingDialect, AsrSession)``):
    the Wyoming edges every service shares. The service's class implements :meth:`on_wyoming` and
    :meth:`describe`, and renders its own items in ``send`` (passing the rest here)."""

    ws: WyomingSocket

    def greet(self) -> None:
        """A Wyoming session says nothing at connect."""

    def describe(self) -> Event:
        """The ``info`` event (the service's programs, models, voices)."""
        raise NotImplementedError

    async def on_wyoming(self, event: Event) -> bool:
        """One client event other than describe and ping; True stops reading."""
        raise NotImplementedError

    async def on_message(self, message: dict | None) -> bool:
        """The chassis's reading step (:meth:`Session.on_message`), for the transport's typed messages too."""
        if message is None or "event" not in message:
            return await super().on_message(message)  # type: ignore[misc]  # a timeout
        self.last_input = time.perf_counter()
        return await self.on_event(message["event"])

    async def on_event(self, item: Event | ServiceError) -> bool:
        """One message of the transport: a framing error is raised as the chassis expects from any reading hook
        (fatal: ``end_with``; otherwise reported and reading goes on)."""
        if isinstance(item, ServiceError):
            raise item
        if Describe.is_type(item.type):
            self.outbox.put(Reply(self.describe()))
            return False
        if Ping.is_type(item.type):
            self.outbox.put(Reply(Pong(text=Ping.from_event(item).text).event()))
            return False
        return await self.on_wyoming(item)

    async def send(self, item: Any) -> bool:
        if isinstance(item, Reply):
            await self.write_event(item.event)
            return False
        return await super().send(item)  # type: ignore[misc]

    async def write_event(self, event: Event) -> None:
        """Send one event; ``TimeoutError`` when the client takes nothing for ``send_timeout_s``."""
        await asyncio.wait_for(self.ws.send_event(event), self.send_timeout_s)

    @classmethod
    def error_frame(cls, err: ServiceError) -> str:
        return json.dumps(error_event(err).to_dict(), ensure_ascii=False)


Handler = Callable[[WyomingSocket], Awaitable[None]]


async def answer_describes(ws: WyomingSocket, info: Callable[[], Event], idle_timeout_s: float,
                           send_timeout_s: float) -> bool:
    """Answer ``describe`` events until another event comes (given back to be read again); False if the client
    left or sent nothing for ``idle_timeout_s``."""
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), idle_timeout_s)
        except asyncio.TimeoutError:
            return False
        event = message.get("event")
        if message["type"] == "websocket.disconnect":
            return False
        if isinstance(event, Event) and Describe.is_type(event.type):
            await asyncio.wait_for(ws.send_event(info()), send_timeout_s)
            continue
        ws.unread(message)
        return True


class WyomingListener:
    """The Wyoming TCP server of one service, started and stopped by the app's lifespan."""

    def __init__(self, host: str, port: int, handler: Handler, limits: EventLimits, max_open: int,
                 metrics: Any) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.limits = limits
        self.max_open = max_open
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, self.host, self.port, limit=MAX_HEADER_BYTES)
        log.info("wyoming listening", extra={"host": self.host, "wyoming_port": self.port})

    async def stop(self) -> None:
        """Stop accepting, then cancel the connections still open (after the app's drain)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        ws = WyomingSocket(reader, writer, self.limits)
        peer = writer.get_extra_info("peername")
        try:
            self.metrics.wyoming_connections.inc()
            if len(self._connections) > self.max_open:
                err = ServiceError(ErrorCode.OVERLOADED, f"more than {self.max_open} Wyoming connections are open; "
                                                         f"try again later")
                self.metrics.refusals.labels(reason="max_connections").inc()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.send_event(error_event(err)), CLOSE_WAIT_S)
                return
            log.debug("wyoming connection", extra={"peer": str(peer)})
            await self.handler(ws)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError):
            pass  # the client left or stopped reading
        except Exception:  # noqa: BLE001 - one connection's bug must not end the listener
            log.exception("wyoming connection failed", extra={"session_id": logs.session_id.get()})
        finally:
            self._connections.discard(task)
            await ws.close()


def listeners(settings: Any, runtime: Any, handler: Handler, limits: EventLimits) -> list[WyomingListener]:
    """The service's Wyoming server as its ``wyoming`` settings say: none while ``wyoming.port`` is 0."""
    w, server = settings.wyoming, settings.server
    if not w.port:
        return []
    return [WyomingListener(w.host or server.host, w.port, handler, limits, 2 * server.max_connections,
                            runtime.metrics)]
