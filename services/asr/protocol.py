"""Typed wire events of ``WS /v1/stream/asr`` and its query parameters.

Every message the socket carries is one of the small classes here, with a
``type`` literal; :func:`parse_client_message` is the one place incoming text
is parsed and :func:`parse_stream_params` the one place query parameters are.
Field names follow the API reference (``docs/api.md``) exactly.
:func:`merge_partials` is the outbox rule for a slow reader: a newer partial of
an utterance replaces the one still waiting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..common.audio import SAMPLE_RATE_HZ, Encoding, parse_encoding, parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common import protocol as common
from ..common.protocol import Closed, End, Event, parse_message, shown
from .endpointing import EndReason, TurnMode

__all__ = ["Closed", "Commit", "End", "Final", "Partial", "Ready", "SpeechStart", "StreamParams", "merge_partials",
           "parse_client_message", "parse_stream_params"]


# -- client -> server ----------------------------------------------------------

@dataclass(frozen=True)
class Commit:
    type: Literal["commit"] = "commit"


ClientMessage = Commit | End
_CLIENT_TYPES = {"commit": lambda data: Commit(), "end": lambda data: End()}


def parse_client_message(text: str) -> ClientMessage:
    return parse_message(text, _CLIENT_TYPES)


# -- query parameters ------------------------------------------------------------

@dataclass(frozen=True)
class StreamParams:
    sample_rate: int = SAMPLE_RATE_HZ
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
    sample_rate = parse_sample_rate(query.get("sample_rate", str(SAMPLE_RATE_HZ)))
    encoding = parse_encoding(query.get("encoding", "pcm_s16le"))
    partials = True
    raw = query.get("partials")
    if raw is not None:
        if raw.lower() in _TRUE:
            partials = True
        elif raw.lower() in _FALSE:
            partials = False
        else:
            warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"partials must be true or false, got {shown(raw)}; using true"))
    turn = TurnMode.SMART_TURN
    raw = query.get("turn_detection")
    if raw is not None:
        try:
            turn = TurnMode(raw)
        except ValueError:
            warnings.append(ServiceError(
                ErrorCode.BAD_MESSAGE, f"turn_detection must be smart_turn, vad or none, got {shown(raw)}; using smart_turn"))
    language = query.get("language") or None
    return StreamParams(sample_rate, encoding, language, partials, turn), warnings


# -- server -> client ---------------------------------------------------------------

@dataclass
class Ready(common.Ready):
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


ServerEvent = Ready | SpeechStart | Partial | Final | Closed


def merge_partials(waiting: Any, new: Any) -> Partial | None:
    """Outbox merge rule: a new partial replaces the waiting partial of the same utterance."""
    if isinstance(new, Partial) and isinstance(waiting, Partial) and waiting.utterance == new.utterance:
        return new
    return None
