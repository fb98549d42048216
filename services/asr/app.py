"""The ASR application factory: the shared app shell (services/common/app.py) around the ASR runtime and routes.

``create_app(settings)`` builds the FastAPI app; its lifespan loads every model
once (off the event loop) and starts their schedulers, and its Wyoming server
when ``wyoming.port`` is set. ``python -m
services.asr`` runs it under uvicorn.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..common.app import build_app
from .routes import HANDSHAKE_REFUSALS, KEY_SUBPROTOCOLS, router
from .serving import AsrRuntime
from .wyoming import wyoming_listeners
from .settings import AsrSettings, load


def create_app(settings: AsrSettings | None = None) -> FastAPI:
    settings = settings or load()
    return build_app(title="ASR service", settings=settings, router=router,
                     description="Streaming and file speech-to-text. API reference: docs/api.md.",
                     load_runtime=lambda: AsrRuntime.load(settings), handshake_refusals=HANDSHAKE_REFUSALS,
                     key_subprotocols=KEY_SUBPROTOCOLS, listeners=wyoming_listeners)
