"""How one instance runs under uvicorn behind a load balancer: signal-driven drain and the balancer gate.

uvicorn, left to itself, answers SIGTERM by closing every WebSocket with 1012
at once, before the app's lifespan shutdown runs. :class:`DrainingServer`
intercepts the first SIGTERM/SIGINT instead: it sets every admission pool
draining (``/ready`` turns 503, new sessions and HTTP work are refused, and open
sessions are asked through ``admission.drain_requested`` to finish their
current utterance or reply and leave with 1001 "going away"), waits up to
``drain_timeout_s`` for the sessions *and* the HTTP work in flight (uploads,
synthesis), and only then lets uvicorn shut down, giving what is left
:data:`GRACEFUL_SHUTDOWN_S`; the process exits 0. A systemd unit's
``TimeoutStopSec`` must exceed both together. A second signal stops at once
(uvicorn's own behaviour).

:class:`BalancerGate` is ASGI middleware for the same moment seen from nginx:
while draining, HTTP requests other than ``/health``, ``/ready`` and
``/metrics`` get 503 ``overloaded`` with ``Retry-After`` (nothing was done, so
the client may retry elsewhere); so does a POST while every HTTP work slot
(uploads, synthesis) is taken, before its body is read; and a WebSocket handshake that carries
the ``X-Voice-Balancer`` header (set by our nginx config only) is refused with
HTTP 503 instead of being accepted and closed with 1013 whenever the instance
is full, draining or has a stalled model, so nginx's ``proxy_next_upstream
http_503`` retries it on another instance. Direct clients, without the header,
keep the contract's ``overloaded``/1013 close. It is added to every app by
:func:`services.common.app.build_app`, so tests and production run the same
stack. :func:`run_cli` (which calls :func:`serve`) is what both ``__main__``
modules run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from .admission import drain, work_pools
from .errors import ErrorCode, ServiceError, send_http_error
from .http import OPS_PATHS

log = logging.getLogger(__name__)

BALANCER_HEADER = b"x-voice-balancer"
GRACEFUL_SHUTDOWN_S = 5
"""After the drain, what is still open gets this long from uvicorn before it is cut."""


def _runtime(app) -> object | None:
    state = getattr(app, "state", None)
    return getattr(state, "runtime", None) if state is not None else None


class BalancerGate:
    """ASGI middleware: refuse what a draining, stalled or full instance should not take, in a way a balancer
    can retry. The runtime is read from the app on the scope (Starlette puts it there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = _runtime(scope.get("app"))
        admission = getattr(runtime, "admission", None)
        if admission is not None and scope["type"] in ("http", "websocket") and scope["path"] not in OPS_PATHS:
            if scope["type"] == "http" and admission.draining:
                await send_http_error(send, ServiceError(ErrorCode.OVERLOADED,
                                                         "this instance is shutting down; try another"))
                return
            work = getattr(runtime, "http_admission", None)
            if scope["type"] == "http" and scope.get("method") == "POST" and work is not None and not work.accepting:
                # every HTTP work slot is taken: refuse before the body (an upload: up to 100 MB) is read
                await send_http_error(send, ServiceError(
                    ErrorCode.OVERLOADED, f"all {work.max_sessions} {work.what} slots are in use; try again later"))
                return
            if (scope["type"] == "websocket" and not admission.accepting
                    and BALANCER_HEADER in dict(scope.get("headers") or [])
                    and "websocket.http.response" in scope.get("extensions", {})):
                await receive()  # websocket.connect
                await send_http_error(send, ServiceError(
                    ErrorCode.OVERLOADED, f"this instance is {admission.state}; the balancer retries another"),
                    websocket=True)
                return
        await self.app(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first SIGTERM/SIGINT drains the app's sessions before shutting down."""

    def __init__(self, config: uvicorn.Config, app, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.target = app
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None and not self.should_exit and self._loop is not None and self.started:
            # Not recorded in _captured_signals: a drained shutdown is a clean exit (status 0).
            self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)
            return
        super().handle_exit(sig, frame)  # a second signal, or before start-up finished: stop now

    def _start_drain(self, name: str) -> None:
        if self._drain is None:
            self._drain = self._loop.create_task(self.drain(name), name="drain")

    async def drain(self, reason: str = "request") -> bool:
        """Refuse new work, wait for open sessions and HTTP work (bounded), then ask uvicorn to stop.
        True if all finished."""
        runtime = _runtime(self.target)
        finished = True
        if runtime is not None:
            pools = work_pools(runtime)
            log.info("draining", extra={"signal": reason, "busy": [p.active for p in pools],
                                        "drain_timeout_s": self.drain_timeout_s})
            finished = await drain(pools, self.drain_timeout_s)
            log.info("drained" if finished else "drain timed out", extra={"busy": [p.active for p in pools]})
        self.should_exit = True
        return finished


def serve(app, *, host: str, port: int, drain_timeout_s: float, log_level: str, **uvicorn_options) -> None:
    """Run ``app`` in the foreground until a signal, draining on the first one (see the module docstring).

    ``FORWARDED_ALLOW_IPS`` (uvicorn's variable; default ``127.0.0.1,::1``) names the proxies whose
    ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are trusted, so the real client address reaches the app.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=log_level,
        proxy_headers=True, forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, access_log=False, **uvicorn_options,
    )
    DrainingServer(config, app, drain_timeout_s).run()


def run_cli(name: str, doc: str, load, create_app, ws_max_size_of, argv: list[str] | None = None) -> int:
    """The command line both services share: ``python -m services.NAME [--port N] [--host H] [--config FILE]``.

    ``load(path, **overrides)`` builds the settings, ``create_app(settings)`` the app and
    ``ws_max_size_of(settings)`` the largest WebSocket message uvicorn accepts. Bad settings or keys
    end the process with exit code 2 and one line per problem.
    """
    import argparse
    import sys

    from .logs import configure_logging
    from .settings import SettingsError

    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=doc)
    parser.add_argument("--config", help=f"YAML settings file (default: ${name.upper()}_CONFIG or "
                                          f"services/{name}/config.yaml)")
    parser.add_argument("--host", help="bind address (server.host)")
    parser.add_argument("--port", type=int, help="port (server.port)")
    args = parser.parse_args(argv)
    overrides: dict = {}
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port:
        overrides.setdefault("server", {})["port"] = args.port
    try:
        settings = load(args.config, **overrides)
        configure_logging(settings.server.log_level, settings.server.log_json)
        app = create_app(settings)
    except (SettingsError, ValueError) as exc:  # bad settings, a missing api_keys_file, a short key
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    s = settings.server
    # SIGTERM drains open sessions first; proxy headers are trusted from FORWARDED_ALLOW_IPS (default
    # loopback), so clients' real addresses come through nginx.
    serve(app, host=s.host, port=s.port, drain_timeout_s=s.drain_timeout_s, log_level=s.log_level,
          ws_max_size=ws_max_size_of(settings), ws_ping_interval=20, ws_ping_timeout=20)
    return 0
