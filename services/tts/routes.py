"""HTTP and WebSocket routes of the TTS service.

Each route fetches the shared runtime, builds what it needs and awaits it: the
stream routes hand the socket to :class:`~.session.TtsSession` or its Deepgram
dialect (``/v1/speak``); the synthesis routes (ours, OpenAI's, with its SSE
form, and Deepgram's REST ``/v1/speak``) check the request, pull the first audio (so an error still gets a
status) and stream the rest, each holding one HTTP synthesis slot until its
response ends (refused at once with 503 when all are taken; a client that takes
nothing for ``server.send_timeout_s`` is dropped); the voice routes
call the catalog and store.
JSON bodies are parsed here in one helper: malformed JSON is 400
``bad_request``, invalid fields 422 ``invalid_parameter``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..common.audio import parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common.http import request_id_header, runtime_of
from ..common.auth import key_subprotocols
from ..common.session import handshake_refusals
from .formats import AudioEncoder
from .deepgram import DeepgramSpeakSession, voice_of_model
from .protocol import DeepgramSpeakRequest, SpeechFormat, SpeechRequest, SynthesizeFormat, SynthesizeRequest
from .serving import TtsRuntime
from .session import TtsSession
from .synthesis import prepare, stream_audio

log = logging.getLogger(__name__)
router = APIRouter()
M = TypeVar("M", bound=BaseModel)

OPENAI_PCM_RATE_HZ = 24000  # OpenAI's "pcm" is 24 kHz 16-bit mono


MULAW_DEFAULT_RATE_HZ = 8000  # audio/basic is 8 kHz G.711


class _SlotResponse(StreamingResponse):
    """A streamed body that runs ``on_close`` however the response ends (sent, failed, the client left before
    the body started, or stopped reading for ``send_timeout_s``), so the HTTP slot and the synthesis are always
    released."""

    def __init__(self, content, on_close: Callable[[], Awaitable[None]], send_timeout_s: float, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        async def timed_send(message) -> None:
            await asyncio.wait_for(send(message), self._send_timeout_s)

        try:
            await super().__call__(scope, receive, timed_send)
        except asyncio.TimeoutError:
            log.info("client stopped reading; response dropped", extra={"send_timeout_s": self._send_timeout_s})
        finally:
            await self._on_close()


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


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def _as_sse(text: str, first: bytes, chunks) -> AsyncIterator[bytes]:
    """OpenAI's speech events: each audio chunk base64 in a ``speech.audio.delta``, then ``speech.audio.done``
    (``usage`` counts the input's words and the audio deltas: there is no tokenizer here)."""
    deltas = 0
    async for data in _chained(first, chunks):
        if data:
            deltas += 1
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    words = len(text.split())
    yield _sse({"type": "speech.audio.done",
                "usage": {"input_tokens": words, "output_tokens": deltas, "total_tokens": words + deltas}})


async def _chained(first: bytes, chunks) -> AsyncIterator[bytes]:
    yield first
    async for data in chunks:
        yield data


async def _streaming(runtime: TtsRuntime, text: str, voice: str | None, fmt: str, rate_hz: int | None,
                     speed: float, route: str, sse: bool = False,
                     headers: dict[str, str] | None = None) -> StreamingResponse:
    runtime.http_admission.acquire()  # 503 at once when every HTTP slot is taken; sessions keep their budget
    chunks = None
    released = False

    async def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        try:
            if chunks is not None:
                await chunks.aclose()  # withdraws the pending piece, closes the encoder
        except Exception:  # noqa: BLE001 - a response that is already gone
            pass
        finally:
            runtime.http_admission.release()

    try:
        plan = await prepare(runtime, text, voice)
        encoder = await asyncio.to_thread(AudioEncoder, fmt, rate_hz or runtime.native_rate_hz(plan.voice))
        chunks = stream_audio(runtime, plan, encoder, speed)
        try:
            first = await chunks.__anext__()  # errors before the first audio still get their status
        except StopAsyncIteration:
            first = b""
        runtime.metrics.http_synthesis.labels(route=route).inc()

        headers = {"X-Sample-Rate": str(encoder.rate_hz), **(headers or {})}
        if sse:
            body, media_type = _as_sse(text, first, chunks), "text/event-stream"
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        else:
            body, media_type = _chained(first, chunks), encoder.media_type
        response = _SlotResponse(body, release, runtime.settings.server.send_timeout_s, media_type=media_type,
                                 headers=headers)
    except BaseException:
        await release()
        raise
    return response


@router.websocket("/v1/stream/tts")
async def stream_tts(ws: WebSocket) -> None:
    await TtsSession.serve(ws, runtime_of(ws.app))


@router.post("/v1/synthesize", tags=["tts"])
async def synthesize(request: Request) -> StreamingResponse:
    """JSON ``{"text","voice","format":"wav"|"pcm"|"mulaw","sample_rate"}``; streams the audio as it is made."""
    runtime = runtime_of(request.app)
    body = await _body(request, SynthesizeRequest)
    rate = body.sample_rate
    if rate is None and body.format is SynthesizeFormat.mulaw:
        rate = MULAW_DEFAULT_RATE_HZ
    return await _streaming(runtime, body.text, body.voice, body.format.value, rate, body.speed, "synthesize")


@router.post("/v1/audio/speech", tags=["openai"])
async def openai_speech(request: Request) -> StreamingResponse:
    """OpenAI-compatible speech. ``model`` is ignored (one engine per instance); OpenAI voice names
    (alloy, echo, ...) speak with the default voice; ``pcm`` is 24 kHz like OpenAI's."""
    runtime = runtime_of(request.app)
    body = await _body(request, SpeechRequest)
    rate = OPENAI_PCM_RATE_HZ if body.response_format is SpeechFormat.pcm else None
    return await _streaming(runtime, body.input, body.voice, body.response_format.value, rate, body.speed,
                            "speech", sse=body.stream_format == "sse", headers=request_id_header())


@router.websocket("/v1/speak")
async def deepgram_speak_stream(ws: WebSocket) -> None:
    await DeepgramSpeakSession.serve(ws, runtime_of(ws.app))


HANDSHAKE_REFUSALS = handshake_refusals({"/v1/speak": DeepgramSpeakSession})
"""The dialect's socket: a refusal there, a missing API key too, is an HTTP status on the handshake."""
KEY_SUBPROTOCOLS = key_subprotocols({"/v1/speak": DeepgramSpeakSession})
"""It also takes a browser's key as a subprotocol (``token, KEY``)."""


_DEEPGRAM_FORMATS = {("linear16", "none"): "pcm", ("linear16", "wav"): "wav", ("mulaw", "none"): "mulaw",
                     ("mp3", "none"): "mp3", ("flac", "none"): "flac",
                     ("opus", "ogg"): "opus", ("aac", "none"): "aac"}


@router.post("/v1/speak", tags=["deepgram"])
async def deepgram_speak(request: Request) -> StreamingResponse:
    """Deepgram-compatible REST speech: ``{"text"}``, with ``model``, ``encoding`` (default mp3), ``container``
    (linear16 without one is WAV, as Deepgram sends it) and ``sample_rate`` in the query."""
    runtime = runtime_of(request.app)
    body = await _body(request, DeepgramSpeakRequest)
    query = request.query_params
    encoding = (query.get("encoding") or "mp3").lower()
    default_container = {"linear16": "wav", "opus": "ogg"}.get(encoding, "none")
    container = (query.get("container") or default_container).lower()
    fmt = _DEEPGRAM_FORMATS.get((encoding, container))
    if fmt is None:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, f"encoding {encoding[:20]!r} with container "
                                                        f"{container[:20]!r} is not supported")
    raw_rate = query.get("sample_rate")
    rate = parse_sample_rate(raw_rate) if raw_rate else (MULAW_DEFAULT_RATE_HZ if encoding == "mulaw" else None)
    return await _streaming(runtime, body.text, voice_of_model(query.get("model")), fmt, rate, 1.0,
                            "deepgram_speak")


@router.get("/v1/voices", tags=["voices"])
async def list_voices(request: Request) -> JSONResponse:
    runtime = runtime_of(request.app)
    voices = await asyncio.to_thread(runtime.voices.all)
    return JSONResponse([v.listing() for v in voices])


@router.post("/v1/voices", tags=["voices"], status_code=201)
async def create_voice(
    request: Request,
    file: Annotated[UploadFile | None, File(description="reference speech, 3 to 30 s, any format FFmpeg decodes")]
    = None,
    name: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    runtime = runtime_of(request.app)
    runtime.check_can_clone()  # 501 on an engine that cannot clone, whatever the form holds
    if file is None:
        raise ServiceError(ErrorCode.BAD_REQUEST, "file: a multipart field 'file' with the reference audio is required")
    if name is None:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "name: a form field 'name' is required")
    with runtime.http_admission.slot():
        data = await file.read()
        info = await runtime.clone_voice(name, data)
    return JSONResponse({"id": info.id, "name": info.name, "engine": info.engine, "duration": info.duration},
                        status_code=201)


@router.get("/v1/voices/{voice_id:path}", tags=["voices"])
async def get_voice(request: Request, voice_id: str) -> JSONResponse:
    runtime = runtime_of(request.app)
    info = await asyncio.to_thread(runtime.voices.info, voice_id)
    return JSONResponse(info.detail())


@router.delete("/v1/voices/{voice_id:path}", tags=["voices"], status_code=204)
async def delete_voice(request: Request, voice_id: str) -> Response:
    runtime = runtime_of(request.app)
    if voice_id in runtime.engine.builtin_voices():
        raise ServiceError(ErrorCode.BAD_REQUEST, f"{voice_id!r} is a built-in voice and cannot be deleted")
    if not await asyncio.to_thread(runtime.store.delete, voice_id):
        raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {voice_id[:80]!r}")
    runtime.voices.forget(voice_id)
    return Response(status_code=204)
