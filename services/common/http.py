"""The HTTP edge both services share: error mapping, body-size limit, and the operations routes.

``install_error_handlers`` turns :class:`ServiceError`, request-validation
errors, the framework's own HTTP errors (malformed multipart, unknown route,
wrong method) and unexpected exceptions into the contract's JSON error body (the one
place that happens). :class:`BodySizeLimit` refuses an upload over the limit
with 413 before it is read, whether or not it declares a Content-Length.
``ops_router`` serves the operations paths (:data:`OPS_PATHS`: ``/health``,
``/ready`` and ``/metrics``, which no key, drain or gate ever refuses) from the
runtime on ``app.state.runtime`` (anything with ``admission`` and ``metrics``).
:func:`runtime_of` is how a route fetches that runtime; :func:`request_id_header` is
the ``x-request-id`` some compatible APIs' clients read from a response (and warn
when it is missing).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorCode, ServiceError, http_response, send_http_error
from .metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})

_FRAMEWORK_CODES = {404: ErrorCode.NOT_FOUND, 413: ErrorCode.TOO_LARGE, 415: ErrorCode.UNSUPPORTED_MEDIA,
                    422: ErrorCode.INVALID_PARAMETER}


def install_error_handlers(app: FastAPI, upload_fields: tuple[str, ...] = ("file",)) -> None:
    def count(code: str) -> None:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.metrics.errors.labels(code=code).inc()

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        count(exc.code.value)
        if exc.code is ErrorCode.OVERLOADED and getattr(app.state, "runtime", None) is not None:
            app.state.runtime.metrics.refusals.labels(reason="http").inc()
        return http_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        missing_upload = False
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form")]
            name = ".".join(loc) or "request"
            if err.get("type") == "missing" and name in upload_fields:
                missing_upload = True
            problems.append(f"{name}: {err.get('msg')}")
        code = ErrorCode.BAD_REQUEST if missing_upload or not problems else ErrorCode.INVALID_PARAMETER
        return await _service_error(request, ServiceError(code, "; ".join(problems) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Raised by the framework itself (malformed multipart, unknown route, wrong method): same body as ours.
        code = _FRAMEWORK_CODES.get(exc.status_code, ErrorCode.INTERNAL if exc.status_code >= 500
                                    else ErrorCode.BAD_REQUEST)
        count(code.value)
        return http_response(ServiceError(code, str(exc.detail)), exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return await _service_error(request, ServiceError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"))


T = TypeVar("T")


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (a request whose body was read); if the client disconnects first, cancel it, so what
    it queued stops costing model time, and raise ``bad_request`` (nobody is left to read it)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        log.info("client left; its request is cancelled", extra={"path": request.url.path})
        raise ServiceError(ErrorCode.BAD_REQUEST, "the client closed the connection")
    finally:
        watcher.cancel()
        task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def request_id_header() -> dict[str, str]:
    """A fresh ``x-request-id`` for a response: ``req_`` and 32 hex digits, the form those clients know."""
    return {"x-request-id": f"req_{uuid.uuid4().hex}"}


def runtime_of(app) -> Any:
    """The runtime the lifespan put on ``app.state``; ``overloaded`` (503) while the service is starting."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(ErrorCode.OVERLOADED, "the service is starting; try again shortly")
    return runtime


class BodySizeLimit:
    """ASGI middleware: HTTP bodies larger than ``max_bytes`` get 413 without being read further.

    A declared Content-Length over the limit is refused before anything is read. A chunked body is counted
    as it arrives; past the limit reading stops, and whatever the app then answers (a form parser reports the
    interrupted body as its own 400) is replaced by the 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        exceeded = started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own answer to the interrupted body; the 413 goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_http_error(send, ServiceError(ErrorCode.TOO_LARGE, f"request body exceeds the limit of "
                                                                      f"{self.max_bytes} bytes"),
                              [(b"connection", b"close")])


class _TooLarge(Exception):
    pass


def ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def health() -> dict:
        """200 while the process is alive."""
        return {"status": "ok"}

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        """200 when the models are loaded and a new session would be accepted, else 503."""
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        adm = runtime.admission
        body = {"status": adm.state, "sessions": adm.active, "max_sessions": adm.max_sessions}
        if adm.stalled:
            body["stalled"] = sorted(adm.stalled)
        return JSONResponse(body, status_code=200 if adm.accepting else 503)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return PlainTextResponse("", status_code=503)
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    return router
