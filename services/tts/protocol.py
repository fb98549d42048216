"""Typed wire events of ``WS /v1/stream/tts``, its query parameters, and the HTTP request bodies.

Every message the socket carries is one of the small classes here, with a
``type`` literal; :func:`parse_client_message` is the one place incoming text
is parsed and :func:`parse_stream_params` the one place query parameters are.
Field names follow the API reference (``docs/api.md``) exactly. Two
optional parameters serve a client that resumes after a dropped socket:
``segment_end=true`` adds a ``segment_end`` event after each piece's last audio,
and ``resume_segment=N`` numbers the segments from N. ``word_timings=true`` adds a
``words`` event ahead of the audio each word starts in (:class:`Words`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from ..common.audio import Encoding, parse_encoding, parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common import protocol as common
from ..common.protocol import Closed, End, Event, parse_message, shown
from ..common.resume import index_param, refuse_resume

__all__ = ["Cancel", "Cancelled", "Closed", "DeepgramSpeakRequest", "Done", "End", "Flush", "Ready", "Segment",
           "SegmentEnd", "SpeechFormat", "Words",
           "SpeechRequest", "StreamParams", "SynthesizeFormat", "SynthesizeRequest", "Text", "parse_client_message",
           "parse_stream_params"]

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


ClientMessage = Text | Flush | Cancel | End


def text_message(data: dict) -> Text:
    text = data.get("text")
    if not isinstance(text, str):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "a text message needs a string field 'text'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows "\ud800"; nothing downstream can speak or encode it
        raise ServiceError(ErrorCode.BAD_MESSAGE, "the text is not valid Unicode (a lone surrogate); "
                                                  "message ignored") from None
    return Text(text)


_CLIENT_TYPES = {"text": text_message, "flush": lambda data: Flush(), "cancel": lambda data: Cancel(),
                 "end": lambda data: End()}


def parse_client_message(raw: str) -> ClientMessage:
    return parse_message(raw, _CLIENT_TYPES)


# -- query parameters ------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    voice: str | None = None  # None: the configured default
    encoding: Encoding = Encoding.PCM_S16LE
    sample_rate: int | None = None  # None: the voice's native rate
    first_segment: int = 0  # a resumed stream's next segment number
    segment_end: bool = False  # send segment_end after each piece's audio
    word_timings: bool = False  # send words events


def flag_param(query: dict[str, str], name: str) -> bool:
    """A ``true``/``false`` (``1``/``0``) query parameter, false when absent; anything else is ``invalid_parameter``."""
    value = (query.get(name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ServiceError(ErrorCode.INVALID_PARAMETER, f"{name} must be true or false, got {shown(value)}")
    return value in ("true", "1")


def parse_stream_params(query: dict[str, str]) -> StreamParams:
    """Wrong audio parameters are fatal (``bad_audio``, close 1003), and so are wrong resume parameters
    (see :mod:`services.common.resume`)."""
    raw_rate = query.get("sample_rate")
    rate = parse_sample_rate(raw_rate) if raw_rate not in (None, "") else None
    encoding = parse_encoding(query.get("encoding") or "pcm_s16le")
    refuse_resume(query, "/v1/stream/tts", supported=("resume_segment", "segment_end"))
    return StreamParams(query.get("voice") or None, encoding, rate, index_param(query, "resume_segment") or 0,
                        flag_param(query, "segment_end"), flag_param(query, "word_timings"))


# -- server -> client ---------------------------------------------------------------

@dataclass
class Ready(common.Ready):
    voice: str


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"
    flushes: int = 0  # how many client flushes it answers (a dialect's acknowledgements); not on the wire

    def to_json(self) -> str:
        return '{"type": "done"}'


@dataclass
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"


@dataclass
class Segment(Event):
    type: ClassVar[str] = "segment"
    index: int
    text: str


@dataclass
class SegmentEnd(Event):
    """After the last audio of segment ``index`` (only with ``segment_end=true``): that piece is complete."""

    type: ClassVar[str] = "segment_end"
    index: int


@dataclass
class Words(Event):
    """Only with ``word_timings=true``: the words of segment ``segment`` whose audio comes next, sent before the
    audio each one starts in. ``words``: ``{"word", "start", "end", "start_sample", "end_sample"}`` in the
    session's audio time (seconds / samples of audio sent since the session's first audio, across segments and
    barge-ins); ``estimated``: the engine reported no alignment and the times are a guess."""

    type: ClassVar[str] = "words"
    segment: int
    words: list[dict]
    estimated: bool = False


ServerEvent = Ready | Segment | SegmentEnd | Words | Done | Cancelled | Closed


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


class DeepgramSpeakRequest(BaseModel):
    """Deepgram-compatible ``POST /v1/speak`` (the options are query parameters)."""

    text: str


class SpeechRequest(BaseModel):
    """OpenAI-compatible ``POST /v1/audio/speech`` (``model`` is accepted and ignored; ``instructions`` too)."""

    model: str = "tts-1"
    input: str
    voice: str | None = None
    response_format: SpeechFormat = SpeechFormat.mp3
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"  # sse: base64 audio in speech.audio.delta events
