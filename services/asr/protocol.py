"""Typed wire events of ``WS /v1/stream/asr`` and its query parameters.

Every message the socket carries is one of the small classes here, with a
``type`` literal; :func:`parse_client_message` is the one place incoming text
is parsed and :func:`parse_stream_params` the one place query parameters are.
Field names follow the contract (``shared/contract/API.md``) exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..common.audio import Encoding, parse_encoding, parse_sample_rate
from ..common.protocol import Event
from ..common.errors import ErrorCode, ServiceError
from .endpointing import EndReason, TurnMode


# -- client -> server ----------------------------------------------------------

@dataclass(frozen=True)
class Commit:
    type: Literal["commit"] = "commit"


@dataclass(frozen=True)
class End:
    type: Literal["end"] = "end"


ClientMessage = Commit | End
_CLIENT_TYPES: dict[str, type] = {"commit": Commit, "end": End}


def parse_client_message(text: str) -> ClientMessage:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects")
    kind = data.get("type")
    cls = _CLIENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ServiceError(ErrorCode.BAD_MESSAGE, f"unknown message type {kind!r}; expected 'commit' or 'end'")
    return cls()


# -- query parameters ------------------------------------------------------------

@dataclass(frozen=True)
class StreamParams:
    sample_rate: int = 16000
    encoding: Encoding = Encoding.PCM_S16LE
    language: str | None = None  # None: the configured default
    partials: bool = True
    turn_detection: TurnMode = TurnMode.SMART_TURN


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_stream_params(query: dict[str, str]) -> tuple[StreamParams, list[ServiceError]]:
    """Audio parameters are fatal when wrong (``bad_audio``); the others fall
    back to their default with a non-fatal ``bad_message`` warning."""
    warnings: list[ServiceError] = []
    sample_rate = parse_sample_rate(query.get("sample_rate", "16000"))
    encoding = parse_encoding(query.get("encoding", "pcm_s16le"))
    partials = True
    raw = query.get("partials")
    if raw is not None:
        if raw.lower() in _TRUE:
            partials = True
        elif raw.lower() in _FALSE:
            partials = False
        else:
            warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"partials must be true or false, got {raw!r}; using true"))
    turn = TurnMode.SMART_TURN
    raw = query.get("turn_detection")
    if raw is not None:
        try:
            turn = TurnMode(raw)
        except ValueError:
            warnings.append(ServiceError(
                ErrorCode.BAD_MESSAGE, f"turn_detection must be smart_turn, vad or none, got {raw!r}; using smart_turn"))
    language = query.get("language") or None
    return StreamParams(sample_rate, encoding, language, partials, turn), warnings


# -- server -> client ---------------------------------------------------------------



def _t(samples: int, rate: int = 16000) -> float:
    return round(samples / rate, 3)


@dataclass
class Ready(Event):
    type: ClassVar[str] = "ready"
    session_id: str
    sample_rate: int
    encoding: str
    language: str
    model: str


@dataclass
class SpeechStart(Event):
    type: ClassVar[str] = "speech_start"
    utterance: int
    t: float


@dataclass
class Partial(Event):
    type: ClassVar[str] = "partial"
    utterance: int
    text: str
    stable: str
    t: float


@dataclass
class Final(Event):
    type: ClassVar[str] = "final"
    utterance: int
    text: str
    start: float
    end: float
    reason: EndReason
    words: list[dict] = field(default_factory=list)
    latency_ms: float = 0.0

    def to_json(self) -> str:
        body = {"type": self.type, "utterance": self.utterance, "text": self.text, "start": self.start,
                "end": self.end, "reason": self.reason.value, "words": self.words, "latency_ms": self.latency_ms}
        return json.dumps(body, ensure_ascii=False)


@dataclass
class Closed(Event):
    type: ClassVar[str] = "closed"


ServerEvent = Ready | SpeechStart | Partial | Final | Closed
