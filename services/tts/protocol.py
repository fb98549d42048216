"""Typed wire events of ``WS /v1/stream/tts``, its query parameters, and the HTTP request bodies.

Every message the socket carries is one of the small classes here, with a
``type`` literal; :func:`parse_client_message` is the one place incoming text
is parsed and :func:`parse_stream_params` the one place query parameters are.
Field names follow the contract (``shared/contract/API.md``) exactly.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from ..common.audio import Encoding, parse_encoding, parse_sample_rate
from ..common.protocol import Event
from ..common.errors import ErrorCode, ServiceError

# -- client -> server ----------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class Flush:
    type: Literal["flush"] = "flush"


@dataclass(frozen=True)
class Cancel:
    type: Literal["cancel"] = "cancel"


@dataclass(frozen=True)
class End:
    type: Literal["end"] = "end"


ClientMessage = Text | Flush | Cancel | End
_SIMPLE: dict[str, type] = {"flush": Flush, "cancel": Cancel, "end": End}


def parse_client_message(raw: str) -> ClientMessage:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects")
    kind = data.get("type")
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str):
            raise ServiceError(ErrorCode.BAD_MESSAGE, "a text message needs a string field 'text'")
        return Text(text)
    cls = _SIMPLE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ServiceError(ErrorCode.BAD_MESSAGE,
                           f"unknown message type {repr(kind)[:60]}; expected 'text', 'flush', 'cancel' or 'end'")
    return cls()


# -- query parameters ------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    voice: str | None = None  # None: the configured default
    encoding: Encoding = Encoding.PCM_S16LE
    sample_rate: int | None = None  # None: the voice's native rate


def parse_stream_params(query: dict[str, str]) -> StreamParams:
    """Wrong audio parameters are fatal (``bad_audio``, close 1003)."""
    raw_rate = query.get("sample_rate")
    rate = parse_sample_rate(raw_rate) if raw_rate not in (None, "") else None
    encoding = parse_encoding(query.get("encoding") or "pcm_s16le")
    return StreamParams(query.get("voice") or None, encoding, rate)


# -- server -> client ---------------------------------------------------------------




@dataclass
class Ready(Event):
    type: ClassVar[str] = "ready"
    session_id: str
    voice: str
    sample_rate: int
    encoding: str


@dataclass
class Segment(Event):
    type: ClassVar[str] = "segment"
    index: int
    text: str


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"


@dataclass
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"


@dataclass
class Closed(Event):
    type: ClassVar[str] = "closed"


ServerEvent = Ready | Segment | Done | Cancelled | Closed


# -- HTTP bodies ---------------------------------------------------------------------


class SynthesizeFormat(str, enum.Enum):
    wav = "wav"
    pcm = "pcm"
    mulaw = "mulaw"


class SynthesizeRequest(BaseModel):
    """``POST /v1/synthesize``."""

    text: str
    voice: str | None = None
    format: SynthesizeFormat = SynthesizeFormat.wav
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    speed: float = Field(1.0, ge=0.25, le=4.0)


class SpeechFormat(str, enum.Enum):
    wav = "wav"
    pcm = "pcm"
    mp3 = "mp3"
    flac = "flac"
    opus = "opus"
    aac = "aac"


class SpeechRequest(BaseModel):
    """OpenAI-compatible ``POST /v1/audio/speech`` (``model`` is accepted and ignored; ``instructions`` too)."""

    model: str = "tts-1"
    input: str
    voice: str | None = None
    response_format: SpeechFormat = SpeechFormat.mp3
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
