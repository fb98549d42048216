"""HTTP and WebSocket routes of the ASR service.

Each route fetches the shared runtime, builds what it needs and awaits it: the
stream routes hand the socket to :class:`~.session.AsrSession` or one of its
dialects (Deepgram's ``/v1/listen``, OpenAI Realtime's ``/v1/realtime``); the file routes
(ours, OpenAI's multipart upload, Deepgram's raw-body ``POST /v1/listen``) take a file-transcription slot (503 at once when all are busy), open the upload
for windowed decoding and await :func:`~.files.transcribe_file` until it is
done or the client leaves, then format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import tempfile
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..common.audio import SAMPLE_RATE_HZ, AudioFileReader
from ..common.errors import ErrorCode, ServiceError
from ..common.http import request_id_header, runtime_of, until_disconnected
from ..common.auth import key_subprotocols
from ..common.session import handshake_refusals
from .context import checked_context
from .files import FileOptions, Transcript, as_contract_json, as_srt, as_verbose_json, as_vtt, transcribe_file
from .deepgram import DeepgramListenSession, listen_hotwords, prerecorded_response
from .realtime import RealtimeSession
from .serving import AsrRuntime
from .session import AsrSession

router = APIRouter()


@router.websocket("/v1/stream/asr")
async def stream_asr(ws: WebSocket) -> None:
    await AsrSession.serve(ws, runtime_of(ws.app))


@router.websocket("/v1/listen")
async def deepgram_listen(ws: WebSocket) -> None:
    await DeepgramListenSession.serve(ws, runtime_of(ws.app))


@router.websocket("/v1/realtime")
async def openai_realtime(ws: WebSocket) -> None:
    await RealtimeSession.serve(ws, runtime_of(ws.app))


DIALECT_SOCKETS = {"/v1/listen": DeepgramListenSession, "/v1/realtime": RealtimeSession}
HANDSHAKE_REFUSALS = handshake_refusals(DIALECT_SOCKETS)
"""The dialects' sockets: a refusal there, a missing API key too, is an HTTP status on the handshake."""
KEY_SUBPROTOCOLS = key_subprotocols(DIALECT_SOCKETS)
"""Deepgram's socket also takes a browser's key as a subprotocol (``token, KEY``)."""


async def _transcribe(request: Request, runtime: AsrRuntime, file: UploadFile, options: FileOptions) -> Transcript:
    server = runtime.settings.server
    context = checked_context(options.hotwords, options.prompt, runtime.settings.model.max_context_chars)
    options = dataclasses.replace(options, hotwords=context.hotwords, prompt=context.prompt)
    size = file.size if file.size is not None else 0
    if size > server.max_upload_bytes:
        raise ServiceError(ErrorCode.TOO_LARGE, f"file of {size} bytes exceeds the limit of {server.max_upload_bytes}")
    with runtime.http_admission.slot():  # 503 + Retry-After at once when every file slot is busy
        reader = await asyncio.to_thread(AudioFileReader, file.file, SAMPLE_RATE_HZ, server.max_upload_duration_s)
        try:
            return await until_disconnected(request, transcribe_file(runtime, reader, options))
        finally:
            await asyncio.to_thread(reader.close)


HOTWORDS = ("words and names likely to be said, comma-separated, to bias the transcript towards them; with the "
            "prompt at most model.max_context_chars characters (more: 413 too_large)")
PROMPT = "text that precedes the audio, given to the decoder as previous text with every segment"


SPOOL_MEMORY_BYTES = 1024 * 1024
"""A raw audio body past this is spooled to a temporary file, as multipart uploads are."""


@router.post("/v1/listen", tags=["deepgram"])
async def deepgram_listen_file(request: Request) -> JSONResponse:
    """Deepgram-compatible pre-recorded transcription: the audio itself is the body (any format FFmpeg decodes);
    ``language``, and ``keyterm`` / ``keywords`` as hotwords, in the query (Deepgram's other options are accepted
    and ignored). A JSON body (a remote ``url``) is refused: nothing is fetched from elsewhere."""
    runtime = runtime_of(request.app)
    if (request.headers.get("content-type") or "").split(";")[0].strip().lower() == "application/json":
        raise ServiceError(ErrorCode.NOT_SUPPORTED, "remote audio URLs are not fetched: send the audio as the body")
    language = (request.query_params.get("language") or "").split("-")[0].lower() or None
    hotwords = listen_hotwords(request.query_params, runtime.settings.model.max_context_chars)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
    try:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():  # the body-size limit counts it as it comes
            digest.update(chunk)
            size += len(chunk)
            spool.write(chunk)
        spool.seek(0)
        upload = UploadFile(spool, size=size, filename="audio")
        result = await _transcribe(request, runtime, upload, FileOptions(language=language, word_timestamps=True,
                                                                   hotwords=hotwords or None))
    finally:
        spool.close()
    body = prerecorded_response(result, digest.hexdigest(), runtime.model_name)
    return JSONResponse(body, headers={"dg-request-id": body["metadata"]["request_id"]})


class ResponseFormat(str, enum.Enum):
    json = "json"
    text = "text"
    srt = "srt"
    vtt = "vtt"
    verbose_json = "verbose_json"


@router.post("/v1/transcribe", tags=["asr"])
async def transcribe(
    request: Request,
    file: Annotated[UploadFile, File(description="audio in any format FFmpeg decodes")],
    language: Annotated[str | None, Form()] = None,
    word_timestamps: Annotated[bool, Form()] = False,
    hotwords: Annotated[str | None, Form(description=HOTWORDS)] = None,
    prompt: Annotated[str | None, Form(description=PROMPT)] = None,
) -> JSONResponse:
    """Transcribe a whole file."""
    runtime = runtime_of(request.app)
    options = FileOptions(language=language, word_timestamps=word_timestamps, hotwords=hotwords, prompt=prompt)
    result = await _transcribe(request, runtime, file, options)
    return JSONResponse(as_contract_json(result, word_timestamps))


@router.post("/v1/audio/transcriptions", tags=["openai"])
async def openai_transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(description=PROMPT)] = None,
    hotwords: Annotated[str | None, Form(description=HOTWORDS + " (an extension of OpenAI's API)")] = None,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    response_format: Annotated[ResponseFormat, Form()] = ResponseFormat.json,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
) -> Response:
    """OpenAI-compatible transcription (``model`` is accepted and ignored: the service runs one model)."""
    runtime = runtime_of(request.app)
    granularities = set(timestamp_granularities or ["segment"])
    unknown = granularities - {"segment", "word"}
    if unknown:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, f"unknown timestamp_granularities: {sorted(unknown)}")
    words = "word" in granularities
    result = await _transcribe(request, runtime, file, FileOptions(language=language, word_timestamps=words,
                                                                   hotwords=hotwords, prompt=prompt,
                                                                   temperature=temperature))
    headers = request_id_header()  # OpenAI's clients report it
    if response_format is ResponseFormat.text:
        return PlainTextResponse(result.text, headers=headers)
    if response_format is ResponseFormat.srt:
        return PlainTextResponse(as_srt(result), headers=headers)
    if response_format is ResponseFormat.vtt:
        return PlainTextResponse(as_vtt(result), media_type="text/vtt", headers=headers)
    if response_format is ResponseFormat.verbose_json:
        return JSONResponse(as_verbose_json(result, words), headers=headers)
    return JSONResponse({"text": result.text}, headers=headers)
