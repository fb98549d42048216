"""API keys: who may use the service, checked once at the ASGI edge for HTTP and WebSocket alike.

Keys come from the settings (``server.api_keys``) and/or a file (``server.api_keys_file``, one key a line,
``#`` comments); an entry ``name:key`` names the client, otherwise the client is called ``key-<sha256 prefix>``.
Only that name ever reaches logs and metrics, never the key. A request presents its key as
``Authorization: Bearer KEY`` (or ``Token KEY``, the scheme some compatible APIs' clients send) or, for
WebSocket clients that cannot set headers, ``?api_key=KEY`` or, on the sockets whose session class names key
subprotocols (:func:`key_subprotocols`, e.g. ``token``), as the subprotocol offered after one of them
(``Sec-WebSocket-Protocol: token, KEY``, what a browser's ``new WebSocket(url, ["token", KEY])`` sends; on plain
HTTP the query is never read, so no key lands in an access log; only the literal name counts); the key is
compared with every configured key in constant time. ``/health``, ``/ready`` and ``/metrics`` stay open. A
refused HTTP request gets 401 with the contract's error body; a refused WebSocket is accepted just long enough
to send an ``unauthorized`` error event and close with 1008, except on the sockets a service registers as
refused on the handshake (a compatible API's, :func:`~.session.handshake_refusals`): those get 401 there, with
the dialect's headers, as their clients expect. With no keys configured, everything is open.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ErrorCode, RefusalHeaders, ServiceError, send_http_error
from .http import OPS_PATHS

log = logging.getLogger(__name__)

client_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("client", default=None)


@dataclass(frozen=True)
class _Key:
    name: str
    secret: bytes


class ApiKeys:
    def __init__(self, entries: list[str]) -> None:
        keys: list[_Key] = []
        for raw in entries:
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            name, sep, secret = entry.partition(":")
            if not sep:
                name, secret = "", entry
            if len(secret) < 16:
                raise ValueError("API keys must be at least 16 characters long")
            name = name or "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
            keys.append(_Key(name, secret.encode()))
        self._keys = tuple(keys)

    @classmethod
    def load(cls, keys: list[str], path: str | None) -> "ApiKeys":
        entries = list(keys)
        if path:
            p = Path(path)
            if not p.is_file():
                raise ValueError(f"api_keys_file not found: {p}")
            entries += p.read_text().splitlines()
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str | None) -> str | None:
        """The client's name if ``presented`` is a configured key. Every key is compared, in constant time."""
        if presented is None:
            return None
        token = presented.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(token, key.secret) and found is None:
                found = key.name
        return found


def key_subprotocols(sockets: Mapping[str, type]) -> dict[str, tuple[str, ...]]:
    """Of a service's WebSocket paths and their session classes, those whose clients may send their API key as a
    subprotocol (the class's ``key_subprotocols``), with the names announcing it: what :class:`ApiKeyAuth` reads."""
    return {path: cls.key_subprotocols for path, cls in sockets.items() if cls.key_subprotocols}


def subprotocol_key(scope: Scope, schemes: Sequence[str]) -> tuple[str, str] | None:
    """``(scheme, KEY)`` when a WebSocket client offered ``scheme, KEY`` as its first two subprotocols, ``scheme`` one
    of ``schemes`` (any case): the subprotocol to accept back, and the key."""
    offered = scope.get("subprotocols") or []
    if scope["type"] == "websocket" and len(offered) >= 2 and offered[0].lower() in schemes and offered[1]:
        return offered[0], offered[1]
    return None


def presented_key(scope: Scope, key_subprotocols: Sequence[str] = ()) -> str | None:
    """``Authorization: Bearer KEY`` or ``Token KEY``; on a WebSocket only (browsers cannot set headers), also the
    subprotocol after one of ``key_subprotocols`` (:func:`subprotocol_key`) and ``?api_key=KEY``.

    Plain HTTP never reads the query: a key there would land in proxies' access logs. The query parameter's
    name must be exactly ``api_key`` (not percent-encoded), the form the log redaction matches."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("bearer", "token") and token.strip():
                return token.strip()
    if scope["type"] != "websocket":
        return None
    offered = subprotocol_key(scope, key_subprotocols)
    if offered is not None:
        return offered[1]
    for pair in (scope.get("query_string") or b"").decode("latin-1").split("&"):
        name, sep, value = pair.partition("=")
        if sep and name == "api_key":
            return unquote_plus(value)
    return None


class ApiKeyAuth:
    """ASGI middleware enforcing :class:`ApiKeys` on every route but the operations ones. ``handshake_refusals``:
    the WebSocket paths refused with an HTTP status on the handshake, and the headers their dialect adds;
    ``key_subprotocols``: the WebSocket paths that take a key as a subprotocol, and the schemes naming it."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, handshake_refusals: Mapping[str, RefusalHeaders] = {},
                 key_subprotocols: Mapping[str, Sequence[str]] = {}) -> None:
        self.app = app
        self.keys = keys
        self.handshake_refusals = dict(handshake_refusals)
        self.key_subprotocols = dict(key_subprotocols)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        schemes = self.key_subprotocols.get(scope.get("path"), ()) if scope["type"] == "websocket" else ()
        client = self.keys.identify(presented_key(scope, schemes))
        metrics = _metrics(scope)
        if client is None:
            if metrics is not None:
                metrics.errors.labels(code=ErrorCode.UNAUTHORIZED.value).inc()
            log.info("unauthorized", extra={"path": scope.get("path"), "kind": scope["type"]})
            await (self._refuse_ws(scope, receive, send, schemes) if scope["type"] == "websocket"
                   else _refuse_http(send))
            return
        if metrics is not None:
            metrics.client_requests.labels(client=client, kind=scope["type"]).inc()
        token = client_name.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            client_name.reset(token)

    async def _refuse_ws(self, scope: Scope, receive: Receive, send: Send, schemes: Sequence[str]) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        err = ServiceError(ErrorCode.UNAUTHORIZED, _MESSAGE)
        headers_of = self.handshake_refusals.get(scope.get("path"))
        if headers_of is not None and "websocket.http.response" in scope.get("extensions", {}):
            headers = [(name.lower().encode(), value.encode()) for name, value in headers_of(err).items()]
            await send_http_error(send, err, headers, websocket=True)
            return
        offered = subprotocol_key(scope, schemes)  # a browser drops a socket that does not accept its subprotocol
        await send({"type": "websocket.accept", **({"subprotocol": offered[0]} if offered else {})})
        await send({"type": "websocket.send", "text": err.to_json()})
        await send({"type": "websocket.close", "code": 1008})


def _metrics(scope: Scope):
    app = scope.get("app")
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    return getattr(runtime, "metrics", None)


_MESSAGE = ("a valid API key is required: send 'Authorization: Bearer KEY' or 'Token KEY' "
            "(or ?api_key=KEY on a WebSocket)")


async def _refuse_http(send: Send) -> None:
    await send_http_error(send, ServiceError(ErrorCode.UNAUTHORIZED, _MESSAGE),
                          [(b"www-authenticate", b'Bearer realm="voice-services"')])

