"""The application shell both services share: lifespan, error mapping, operations routes, middleware.

:func:`build_app` takes a service's settings, a blocking ``load_runtime`` callable
and its router. The lifespan caps glibc's heap arenas, loads the runtime once,
off the event loop, starts its schedulers, publishes it on ``app.state.runtime``
(where routes, ``/ready`` and the middleware find it), starts the service's
other ``listeners`` (its Wyoming server, :mod:`services.common.wyoming`), freezes the start-up heap
and trims the heap every ``server.heap_trim_interval_s``
(:mod:`services.common.memory`), tells systemd it is ready and feeds its watchdog
while no model is stalled (:mod:`services.common.watchdog`), and on shutdown stops
taking sessions and HTTP work, lets what is open finish within
``server.drain_timeout_s``, stops the listeners and then the schedulers.
:func:`install_middleware` is the one place the middleware stack is assembled
(the app that is served and the app a test builds are the same): the balancer
gate first, then API keys, then the body-size limit, then the routes. A service
passes in the WebSocket paths its dialects refuse on the handshake
(``handshake_refusals``, from :func:`services.common.session.handshake_refusals`) and those that take an API key
as a subprotocol (``key_subprotocols``, from :func:`services.common.auth.key_subprotocols`): this package
names no dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI

from .admission import drain, work_pools
from .auth import ApiKeyAuth, ApiKeys
from .errors import RefusalHeaders
from .http import BodySizeLimit, install_error_handlers, ops_router
from .memory import HeapTrimmer, freeze_startup_heap, limit_arenas
from .serve import BalancerGate
from .watchdog import Watchdog

log = logging.getLogger(__name__)


def build_app(*, title: str, description: str, settings: Any, load_runtime: Callable[[], Any],
              router: APIRouter, ready_extra: Callable[[Any], dict] = lambda runtime: {},
              handshake_refusals: Mapping[str, RefusalHeaders] = {},
              key_subprotocols: Mapping[str, Sequence[str]] = {},
              listeners: Callable[[Any], list] = lambda runtime: []) -> FastAPI:
    """``settings.server`` needs the fields of :class:`~services.common.settings.ServerSettings`
    plus ``max_upload_bytes``; the runtime needs ``start()``, ``stop()``, ``admission`` and ``metrics``;
    ``listeners(runtime)`` gives servers of other protocols on the same runtime (``start()``, ``stop()``)."""
    server = settings.server
    keys = ApiKeys.load(server.api_keys, server.api_keys_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        limit_arenas(server.malloc_arena_max)  # before the model threads exist
        runtime = await asyncio.to_thread(load_runtime)
        await runtime.start()
        servers = listeners(runtime)
        try:
            for server_ in servers:
                await server_.start()
        except BaseException:
            await runtime.stop()
            raise
        app.state.runtime = runtime
        frozen = freeze_startup_heap()
        trimmer = HeapTrimmer(server.heap_trim_interval_s)
        trimmer.start()
        watchdog = Watchdog(runtime.admission, server.stall_exit_s)
        watchdog.start()  # READY=1 to systemd; WATCHDOG=1 while no model is stalled
        log.info("ready", extra={"port": server.port, "max_connections": server.max_connections,
                                 "frozen_objects": frozen, **ready_extra(runtime)})
        try:
            yield
        finally:
            pools = work_pools(runtime)
            if any(pool.active for pool in pools):
                log.info("draining", extra={"busy": [pool.active for pool in pools]})
            await drain(pools, server.drain_timeout_s)
            for server_ in servers:
                await server_.stop()
            await watchdog.stop()
            await trimmer.stop()
            await runtime.stop()
            app.state.runtime = None

    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan, description=description)
    app.state.runtime = None
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    install_middleware(app, server, keys, handshake_refusals, key_subprotocols)
    return app


def install_middleware(app: FastAPI, server: Any, keys: ApiKeys,
                       handshake_refusals: Mapping[str, RefusalHeaders] = {},
                       key_subprotocols: Mapping[str, Sequence[str]] = {}) -> None:
    """The middleware every app runs with, outermost first: BalancerGate, ApiKeyAuth, BodySizeLimit."""
    app.add_middleware(BodySizeLimit, max_bytes=server.max_upload_bytes + 64 * 1024)
    app.add_middleware(ApiKeyAuth, keys=keys, handshake_refusals=handshake_refusals, key_subprotocols=key_subprotocols)
    app.add_middleware(BalancerGate)  # added last: runs first
