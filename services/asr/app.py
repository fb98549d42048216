"""The ASR application factory and its lifespan.

``create_app(settings)`` builds the FastAPI app; its lifespan loads every model
once (off the event loop), starts the schedulers, and on shutdown stops taking
sessions, lets open ones finish within ``drain_timeout_s``, then stops the
schedulers. ``python -m services.asr`` runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from ..common.auth import ApiKeyAuth, ApiKeys
from ..common.http import BodySizeLimit, install_error_handlers, ops_router
from .routes import router
from .serving import AsrRuntime
from .settings import AsrSettings, load

log = logging.getLogger(__name__)


def create_app(settings: AsrSettings | None = None) -> FastAPI:
    settings = settings or load()
    keys = ApiKeys.load(settings.server.api_keys, settings.server.api_keys_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = await asyncio.to_thread(AsrRuntime.load, settings)
        await runtime.start()
        app.state.runtime = runtime
        log.info("ready", extra={"port": settings.server.port, "max_connections": settings.server.max_connections})
        try:
            yield
        finally:
            runtime.admission.draining = True
            if runtime.admission.active:
                log.info("draining", extra={"sessions": runtime.admission.active})
                await runtime.admission.wait_idle(settings.server.drain_timeout_s)
            await runtime.stop()
            app.state.runtime = None

    app = FastAPI(title="ASR service", version="0.1.0", lifespan=lifespan,
                  description="Streaming and file speech-to-text. Wire contract: shared/contract/API.md.")
    app.state.runtime = None
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_upload_bytes + 64 * 1024)
    app.add_middleware(ApiKeyAuth, keys=keys)  # added last: runs first
    return app
