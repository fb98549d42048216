"""The one error type of both services and its mapping to the wire.

Every failure a client can see is a :class:`ServiceError` carrying an
:class:`ErrorCode`. The code alone decides the HTTP status, the WebSocket close
code and whether a WebSocket session must end; the edges translate with
:meth:`ServiceError.to_json` (the WebSocket ``error`` event),
:func:`http_response` and :func:`send_http_error` (the contract's HTTP body,
from a route or from ASGI middleware), and the ``close_code``/``fatal``
properties. This module is the only place either shape is written. Nothing
matches on message strings.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence

from starlette.responses import JSONResponse
from starlette.types import Send


class ErrorCode(str, enum.Enum):
    BAD_AUDIO = "bad_audio"
    BAD_MESSAGE = "bad_message"
    BAD_REQUEST = "bad_request"
    INVALID_PARAMETER = "invalid_parameter"
    UNSUPPORTED_MEDIA = "unsupported_media"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    NOT_SUPPORTED = "not_supported"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


# code -> (HTTP status, WebSocket close code, fatal on a WebSocket)
_WIRE: dict[ErrorCode, tuple[int, int, bool]] = {
    ErrorCode.BAD_AUDIO: (400, 1003, True),
    ErrorCode.BAD_MESSAGE: (400, 1003, False),
    ErrorCode.BAD_REQUEST: (400, 1003, True),
    ErrorCode.INVALID_PARAMETER: (422, 1003, True),
    ErrorCode.UNSUPPORTED_MEDIA: (415, 1003, True),
    ErrorCode.TOO_LARGE: (413, 1009, True),
    ErrorCode.UNAUTHORIZED: (401, 1008, True),
    ErrorCode.NOT_FOUND: (404, 1003, True),  # 1008 is unauthorized's alone
    ErrorCode.NOT_SUPPORTED: (501, 1003, True),
    ErrorCode.OVERLOADED: (503, 1013, True),
    ErrorCode.TIMEOUT: (408, 1000, True),
    ErrorCode.INTERNAL: (500, 1011, True),
}

RETRY_AFTER_S = 1


class ServiceError(Exception):
    """A failure with a stable machine code and a human message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _WIRE[self.code][0]

    @property
    def close_code(self) -> int:
        return _WIRE[self.code][1]

    @property
    def fatal(self) -> bool:
        """Whether a WebSocket session ends after reporting this error."""
        return _WIRE[self.code][2]

    def event(self) -> dict:
        return {"type": "error", "code": self.code.value, "message": self.message}

    def body(self) -> dict:
        """The contract's HTTP error body."""
        return {"error": {"code": self.code.value, "message": self.message}}

    def to_json(self) -> str:
        """The WebSocket ``error`` event as a text frame."""
        return json.dumps(self.event(), ensure_ascii=False)

    def __repr__(self) -> str:
        return f"ServiceError({self.code.value!r}, {self.message!r})"


def _headers(error: ServiceError) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if error.code is ErrorCode.OVERLOADED else {}


RefusalHeaders = Callable[["ServiceError"], dict[str, str]]
"""Headers a WebSocket dialect adds to a refused handshake's HTTP response, beside the error body (its
clients read the reason there); the dialect registers them (``Session.refusal_headers``)."""


def http_response(error: ServiceError, status: int | None = None,
                  headers: dict[str, str] | None = None) -> JSONResponse:
    """The error as a response (``status``: the framework's own, where it differs from the code's)."""
    return JSONResponse(error.body(), status_code=status or error.http_status,
                        headers={**_headers(error), **(headers or {})} or None)


async def send_http_error(send: Send, error: ServiceError, headers: Sequence[tuple[bytes, bytes]] = (),
                          websocket: bool = False) -> None:
    """The error as a raw ASGI response, for middleware that answers before the app (``websocket``: a
    refused WebSocket handshake, ``websocket.http.response``)."""
    body = json.dumps(error.body()).encode()
    prefix = "websocket.http.response" if websocket else "http.response"
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in _headers(error).items()), *headers]
    await send({"type": f"{prefix}.start", "status": error.http_status, "headers": head})
    await send({"type": f"{prefix}.body", "body": body})
