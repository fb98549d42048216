"""The part of a resumable stream both services share: one socket at a time, and a new one after a drop.

A :class:`ResumableStream` owns a *runner* task that reads the current socket
and turns frames into events on a bounded queue (a client that does not read
its events stops the reading, and TCP pushes back on the server). When the
socket ends without the session's ``closed`` and without a fatal error, the
runner reconnects to the same URL with the subclass's resume parameters,
after a jittered backoff (:class:`~.backoff.ResumePolicy`), and the subclass
sends again what the new session needs (ASR: the kept audio; TTS: the text
not yet fully spoken). What is sent goes through :meth:`ResumableStream._send_pending`,
one sender at a time, so audio and messages keep their order across replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import ResumePolicy
from .errors import FATAL_CODES, ConnectionLost, ServiceError, VoiceClientError
from .events import ErrorEvent, Event, Reconnecting, Resumed

_END = object()
EVENT_QUEUE = 256
"""Events waiting for the application before the runner stops reading the socket."""


def with_query(url: str, params: dict[str, Any]) -> str:
    """``url`` with ``params`` added to its query (None values left out; later values win)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: _text(v) for k, v in params.items() if v is not None})
    return urlunsplit(parts._replace(query=urlencode(query)))


def refusal(exc: InvalidStatus) -> ServiceError:
    """A handshake refused with an HTTP status, as the error its body names (``overloaded`` for a 502/503/504
    without one: a proxy with no instance behind it, worth another try)."""
    status = exc.response.status_code
    try:
        error = json.loads(exc.response.body or b"")["error"]
        return ServiceError(str(error["code"]), str(error["message"]), status)
    except (ValueError, KeyError, TypeError):
        code = {401: "unauthorized", 403: "unauthorized", 404: "not_found", 413: "too_large", 422: "invalid_parameter",
                501: "not_supported"}.get(status, "overloaded" if status in (502, 503, 504) else "bad_request")
        return ServiceError(code, f"handshake refused: HTTP {status}", status)


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class StreamHandle:
    """What a public stream class shares: open/close (also as ``async with``) and iteration, over its ``_core``
    (a :class:`ResumableStream`)."""

    _core: "ResumableStream"

    async def __aenter__(self):
        await self._core.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._core.close()

    async def open(self) -> None:
        await self._core.open()

    async def close(self) -> None:
        """Drop the stream at once (no ``end``)."""
        await self._core.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._core.__aiter__()


class ResumableStream:
    """Base of :class:`~.asr.AsrStream` and :class:`~.tts.TtsStream`; use those."""

    def __init__(self, url: str, params: dict[str, Any], api_key: str | None, policy: ResumePolicy) -> None:
        self.url = url
        self.policy = policy
        self.reconnects = 0
        """How many times the stream resumed."""
        self._params = params
        self._api_key = api_key
        self._ws: ClientConnection | None = None
        self._connected = False  # the current socket carries the session (replay may still be going on)
        self._send_lock = asyncio.Lock()
        self._events: asyncio.Queue = asyncio.Queue(EVENT_QUEUE)
        self._runner: asyncio.Task | None = None
        self._replay: asyncio.Task | None = None
        self._fatal: ServiceError | None = None
        self._closed_seen = False
        self._finished_iter = False
        self._failure: VoiceClientError | None = None  # why the runner stopped, when it failed
        self._progress = asyncio.Event()  # set when something kept was sent or let go, or the runner stopped

    # -- the subclass's part -----------------------------------------------------------------------
    def _parse(self, body: dict) -> Event:
        raise NotImplementedError

    def _on_event(self, event: Event) -> list[Event]:
        """Track what the event says about the stream; return what the application sees."""
        return [event]

    def _on_binary(self, data: bytes) -> list[Event]:
        return []

    def _resume_params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_resumable(self, reason: str) -> None:
        """Raise ``ConnectionLost`` when what a resume needs was not kept."""

    def _rewind(self) -> None:
        """A new socket: what it must be sent starts again from the first thing kept."""

    async def _send_next(self, ws: ClientConnection) -> bool:
        """Send the next pending frame on ``ws``; False when nothing is pending."""
        return False

    def _resumed(self, attempt: int, outage_s: float) -> Resumed:
        raise NotImplementedError

    def _after_resume(self) -> list[Event]:
        """Events the application gets after ``resumed`` (answers the dropped socket owed it)."""
        return []

    # -- opening and closing ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and wait for the session's ``ready`` (raises ``ServiceError`` if it is refused)."""
        ws, ready = await self._connect(self._params)
        self._ws, self._connected = ws, True
        await self._events.put(ready)
        self._runner = asyncio.create_task(self._run(), name="voice-client-runner")

    async def close(self) -> None:
        """Drop the stream now (without ``end``: what is not yet answered is lost)."""
        for task in (self._runner, self._replay):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def __aenter__(self):
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        """The events, until ``closed``; raises ``ServiceError`` (fatal error) or ``ConnectionLost``."""
        while not self._finished_iter:
            item = await self._events.get()
            if item is _END:
                self._finished_iter = True
                return
            if isinstance(item, BaseException):
                self._finished_iter = True
                raise item
            yield item

    # -- sending --------------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Connected, with nothing being replayed: what is sent now goes straight out."""
        return self._connected and (self._replay is None or self._replay.done())

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._runner is not None and self._runner.done():
            raise ConnectionLost("the stream has ended")

    async def _send_pending(self) -> None:
        """Send what the current socket has not been sent yet, in order (a no-op while reconnecting)."""
        async with self._send_lock:
            ws = self._ws
            try:
                while self._connected and ws is self._ws and ws is not None and await self._send_next(ws):
                    self._progress.set()
            except ConnectionClosed:
                pass  # the runner sees the drop and resumes; what was not sent is kept
        self._progress.set()  # a replay that ends makes the stream live: a sender waiting for that goes on

    async def _send_control(self, message: dict) -> None:
        """A message that is not replayed (it is sent now or never)."""
        if self._connected and self._ws is not None:
            async with self._send_lock:
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(json.dumps(message))

    # -- the runner -------------------------------------------------------------------------------------
    async def _connect(self, params: dict[str, Any]) -> tuple[ClientConnection, Event]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        try:
            # no permessage-deflate: audio barely compresses, and it costs CPU on both ends
            ws = await connect(with_query(self.url, params), additional_headers=headers, max_size=None, proxy=None,
                               compression=None, open_timeout=self.policy.open_timeout_s,
                               ping_interval=self.policy.keepalive_s, ping_timeout=self.policy.keepalive_s)
        except InvalidStatus as exc:  # refused on the handshake (a proxy, an auth layer, a dialect)
            raise refusal(exc) from exc
        try:
            async with asyncio.timeout(self.policy.open_timeout_s):
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        continue
                    body = json.loads(message)
                    if body.get("type") == "error":
                        raise ServiceError(str(body.get("code")), str(body.get("message")))
                    if body.get("type") == "ready":
                        return ws, self._parse(body)
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise

    async def _run(self) -> None:
        try:
            while True:
                reason = await self._pump(self._ws)
                if reason is None:
                    # wait for room: with the queue full of unread events, a dropped end would leave the
                    # application's ``async for`` waiting forever after ``closed``
                    await self._events.put(_END)
                    return
                await self._reconnect(reason)
        except asyncio.CancelledError:
            raise
        except VoiceClientError as exc:
            self._failure = exc
            await self._events.put(exc)
        except Exception as exc:  # noqa: BLE001 - the application hears of it, the task does not die silently
            self._failure = ConnectionLost(f"stream failed: {exc!r}", cause=exc)
            await self._events.put(self._failure)
        finally:
            self._progress.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(_END)  # cancelled (close()), or after the failure: best effort

    async def _pump(self, ws: ClientConnection | None) -> str | None:
        """Read ``ws`` until it ends; None when the session ended (``closed``), else why the socket ended."""
        assert ws is not None
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    events = self._on_binary(message)
                else:
                    events = self._on_text(json.loads(message))
                for event in events:
                    await self._events.put(event)
        except ConnectionClosed:
            pass
        finally:
            self._connected = False
            if self._replay is not None:
                self._replay.cancel()
        if self._closed_seen:
            return None
        if self._fatal is not None:
            raise self._fatal
        return f"socket closed ({ws.close_code or 1006}{' ' + ws.close_reason if ws.close_reason else ''})"

    def _on_text(self, body: dict) -> list[Event]:
        if body.get("type") == "error":
            code, message = str(body.get("code")), str(body.get("message"))
            if code in FATAL_CODES:
                self._fatal = ServiceError(code, message)
                return []
            if code == "overloaded":
                return []  # the session ends; another instance may have room: resume
            return [ErrorEvent(code, message)]
        event = self._parse(body)
        if body.get("type") == "closed":
            self._closed_seen = True
        return self._on_event(event)

    async def _reconnect(self, reason: str) -> None:
        if not self.policy.enabled:
            raise ConnectionLost(f"connection dropped ({reason}) and resuming is off")
        dropped_at = time.monotonic()
        last: BaseException | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            self._check_resumable(reason)  # before each attempt: what was kept may have changed while retrying
            delay = self.policy.delay_s(attempt)
            await self._events.put(Reconnecting(attempt, round(delay, 3), reason))
            await asyncio.sleep(delay)
            try:
                ws, _ = await self._connect({**self._params, **self._resume_params()})
            except ServiceError as err:
                if not err.retryable:
                    raise
                last = err
                continue
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                last = exc
                continue
            self._ws, self._connected, self._fatal = ws, True, None
            self._rewind()
            self._progress.set()
            self.reconnects += 1
            await self._events.put(self._resumed(attempt, round(time.monotonic() - dropped_at, 3)))
            for event in self._after_resume():
                await self._events.put(event)
            self._replay = asyncio.create_task(self._send_pending(), name="voice-client-replay")
            return
        raise ConnectionLost(f"could not resume after {self.policy.max_attempts} attempts ({reason}); "
                             f"last error: {last!r}", self.policy.max_attempts, last)
