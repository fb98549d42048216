"""The TTS application factory: the shared app shell (services/common/app.py) around the TTS runtime and routes.

``create_app(settings)`` builds the FastAPI app; its lifespan loads the engine
once (off the event loop) and starts its scheduler, and its Wyoming server when
``wyoming.port`` is set. ``engine`` injects a
prebuilt engine (tests use it for a fake cloning model). ``python -m
services.tts`` runs it under uvicorn.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..common.app import build_app
from .engine import TtsEngine
from .routes import HANDSHAKE_REFUSALS, KEY_SUBPROTOCOLS, router
from .serving import TtsRuntime
from .wyoming import wyoming_listeners
from .settings import TtsSettings, load


def create_app(settings: TtsSettings | None = None, engine: TtsEngine | None = None) -> FastAPI:
    settings = settings or load()
    return build_app(title="TTS service", settings=settings, router=router,
                     description="Streaming text-to-speech. API reference: docs/api.md.",
                     load_runtime=lambda: TtsRuntime.load(settings, engine),
                     ready_extra=lambda runtime: {"engine": runtime.engine.name},
                     handshake_refusals=HANDSHAKE_REFUSALS,
                     key_subprotocols=KEY_SUBPROTOCOLS, listeners=wyoming_listeners)
