"""HTTP and WebSocket routes of the TTS service.

Each route fetches the shared runtime, builds what it needs and awaits it: the
stream route hands the socket to :class:`~.session.TtsSession`; the synthesis
routes check the request, pull the first audio (so an error still gets a
status) and stream the rest; the voice routes call the catalog and store.
JSON bodies are parsed here in one helper: malformed JSON is 400
``bad_request``, invalid fields 422 ``invalid_parameter``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..common.errors import ErrorCode, ServiceError
from .formats import FileEncoder
from .protocol import SpeechFormat, SpeechRequest, SynthesizeRequest
from .serving import TtsRuntime
from .session import TtsSession
from .synthesis import prepare, stream_audio

router = APIRouter()
M = TypeVar("M", bound=BaseModel)

OPENAI_PCM_RATE_HZ = 24000  # OpenAI's "pcm" is 24 kHz 16-bit mono


def _runtime(app) -> TtsRuntime:
    runtime = getattr(app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(ErrorCode.OVERLOADED, "the service is starting; try again shortly")
    return runtime


async def _body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise ServiceError(ErrorCode.BAD_REQUEST, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ServiceError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "; ".join(problems)) from None


async def _streaming(runtime: TtsRuntime, text: str, voice: str | None, fmt: str, rate_hz: int | None,
                     speed: float, route: str) -> StreamingResponse:
    prepared = await prepare(runtime, text, voice)
    encoder = FileEncoder(fmt, rate_hz or runtime.native_rate_hz(prepared.voice))
    chunks = stream_audio(runtime, prepared, encoder, speed)
    try:
        first = await chunks.__anext__()  # errors before the first audio still get their status
    except StopAsyncIteration:
        first = b""
    except BaseException:
        await chunks.aclose()
        raise
    runtime.metrics.http_synthesis.labels(route=route).inc()

    async def body():
        yield first
        async for data in chunks:
            yield data

    return StreamingResponse(body(), media_type=encoder.media_type,
                             headers={"X-Sample-Rate": str(encoder.rate_hz)})


@router.websocket("/v1/stream/tts")
async def stream_tts(ws: WebSocket) -> None:
    await TtsSession.serve(ws, _runtime(ws.app))


@router.post("/v1/synthesize", tags=["tts"])
async def synthesize(request: Request) -> StreamingResponse:
    """JSON ``{"text","voice","format":"wav"|"pcm"|"mulaw","sample_rate"}``; streams the audio as it is made."""
    runtime = _runtime(request.app)
    body = await _body(request, SynthesizeRequest)
    return await _streaming(runtime, body.text, body.voice, body.format.value, body.sample_rate, body.speed,
                            "synthesize")


@router.post("/v1/audio/speech", tags=["openai"])
async def openai_speech(request: Request) -> StreamingResponse:
    """OpenAI-compatible speech. ``model`` is ignored (one engine per instance); OpenAI voice names
    (alloy, echo, ...) speak with the default voice; ``pcm`` is 24 kHz like OpenAI's."""
    runtime = _runtime(request.app)
    body = await _body(request, SpeechRequest)
    rate = OPENAI_PCM_RATE_HZ if body.response_format is SpeechFormat.pcm else None
    return await _streaming(runtime, body.input, body.voice, body.response_format.value, rate, body.speed,
                            "speech")


@router.get("/v1/voices", tags=["voices"])
async def list_voices(request: Request) -> JSONResponse:
    runtime = _runtime(request.app)
    voices = await asyncio.to_thread(runtime.voices.all)
    return JSONResponse([v.listing() for v in voices])


@router.post("/v1/voices", tags=["voices"], status_code=201)
async def create_voice(
    request: Request,
    file: Annotated[UploadFile, File(description="reference speech, 3 to 30 s, any format FFmpeg decodes")],
    name: Annotated[str, Form()],
) -> JSONResponse:
    runtime = _runtime(request.app)
    runtime.check_can_clone()
    data = await file.read()
    info = await runtime.clone_voice(name, data)
    return JSONResponse({"id": info.id, "name": info.name, "engine": info.engine, "duration": info.duration},
                        status_code=201)


@router.get("/v1/voices/{voice_id:path}", tags=["voices"])
async def get_voice(request: Request, voice_id: str) -> JSONResponse:
    runtime = _runtime(request.app)
    info = await asyncio.to_thread(runtime.voices.info, voice_id)
    return JSONResponse(info.detail())


@router.delete("/v1/voices/{voice_id:path}", tags=["voices"], status_code=204)
async def delete_voice(request: Request, voice_id: str) -> Response:
    runtime = _runtime(request.app)
    if voice_id in runtime.engine.builtin_voices():
        raise ServiceError(ErrorCode.BAD_REQUEST, f"{voice_id!r} is a built-in voice and cannot be deleted")
    if not await asyncio.to_thread(runtime.store.delete, voice_id):
        raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {voice_id[:80]!r}")
    runtime.voices.forget(voice_id)
    return Response(status_code=204)
