"""HTTP and WebSocket routes of the ASR service.

Each route fetches the shared runtime, builds what it needs and awaits it: the
stream route hands the socket to :class:`~.session.AsrSession`; the file routes
decode the upload and call :func:`~.files.transcribe_audio`, then format.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..common.audio import SAMPLE_RATE_HZ, decode_file
from ..common.errors import ErrorCode, ServiceError
from ..common.http import runtime_of
from .files import FileOptions, as_contract_json, as_srt, as_verbose_json, as_vtt, transcribe_audio
from .serving import AsrRuntime
from .session import AsrSession

router = APIRouter()


@router.websocket("/v1/stream/asr")
async def stream_asr(ws: WebSocket) -> None:
    await AsrSession.serve(ws, runtime_of(ws.app))


async def _read_upload(runtime: AsrRuntime, file: UploadFile):
    data = await file.read()
    limit = runtime.settings.server.max_upload_bytes
    if len(data) > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"file of {len(data)} bytes exceeds the limit of {limit}")
    return await asyncio.to_thread(decode_file, data, SAMPLE_RATE_HZ)


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
) -> JSONResponse:
    """Transcribe a whole file."""
    runtime = runtime_of(request.app)
    audio = await _read_upload(runtime, file)
    result = await transcribe_audio(runtime, audio, FileOptions(language=language, word_timestamps=word_timestamps))
    return JSONResponse(as_contract_json(result, word_timestamps))


@router.post("/v1/audio/transcriptions", tags=["openai"])
async def openai_transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "whisper-1",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
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
    audio = await _read_upload(runtime, file)
    result = await transcribe_audio(runtime, audio, FileOptions(language=language, word_timestamps=words,
                                                                prompt=prompt, temperature=temperature))
    if response_format is ResponseFormat.text:
        return PlainTextResponse(result.text)
    if response_format is ResponseFormat.srt:
        return PlainTextResponse(as_srt(result))
    if response_format is ResponseFormat.vtt:
        return PlainTextResponse(as_vtt(result), media_type="text/vtt")
    if response_format is ResponseFormat.verbose_json:
        return JSONResponse(as_verbose_json(result, words))
    return JSONResponse({"text": result.text})
