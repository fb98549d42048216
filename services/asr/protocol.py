"""Typed wire events of ``WS /v1/stream/asr`` and its query parameters.

Every message the socket carries is one of the small classes here, with a
``type`` literal; :func:`parse_client_message` is the one place incoming text
is parsed and :func:`parse_stream_params` the one place query parameters are.
Field names follow the API reference (``docs/api.md``) exactly.
:func:`merge_partials` is the outbox rule for a slow reader: a newer partial of
an utterance replaces the one still waiting. :class:`Resume` is where a resumed stream carries
on: its :meth:`Resume.shift` puts an event into the whole stream's time and numbering, and the voice
detector's state a final carried (``vad_state``) lets the new session's detector go on as the old one would.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..common.audio import SAMPLE_RATE_HZ, Encoding, parse_encoding, parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common import protocol as common
from ..common.protocol import Closed, End, Event, parse_message, shown
from ..common.resume import index_param, refuse_resume, seconds_param
from ..common.vad import decode_state
from .context import checked_context
from .endpointing import EndReason, TurnMode

__all__ = ["Closed", "Commit", "End", "Final", "Partial", "Ready", "Resume", "SpeechStart", "StreamParams",
           "merge_partials", "parse_client_message", "parse_stream_params"]


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
class Resume:
    """A resumed stream: its first sample is stream time ``at_s`` and its first utterance is number
    ``utterance`` (both 0: a stream that starts here, whose events pass unchanged)."""

    at_s: float = 0.0
    utterance: int = 0
    replay_s: float = 0.0  # what the client said it replays (logged)
    vad_state: str | None = None  # the detector's state at at_s, as a final carried it (checked: decode_state)

    def log_fields(self) -> dict[str, float]:
        """Fields of the "session started" log line (none for a stream that starts here)."""
        if not (self.at_s or self.utterance):
            return {}
        return {"resume_at_s": self.at_s, "resume_utterance": self.utterance, "resume_replay_s": self.replay_s,
                "resume_vad_state": self.vad_state is not None}

    def shift(self, item: Any) -> Any:
        """``item`` in the whole stream's time and numbering (anything that is not an event passes as it is)."""
        if not (self.at_s or self.utterance) or not isinstance(item, (SpeechStart, Partial, Final)):
            return item
        at, index = self.at_s, item.utterance + self.utterance
        if isinstance(item, Final):
            words = [{**w, "start": round(w["start"] + at, 3), "end": round(w["end"] + at, 3)} for w in item.words]
            return dataclasses.replace(item, utterance=index, start=round(item.start + at, 3),
                                       end=round(item.end + at, 3), words=words)
        return dataclasses.replace(item, utterance=index, t=round(item.t + at, 3))


def parse_resume(query: dict[str, str], max_replay_s: float, vad_fingerprint: bytes | None = None,
                 warnings: list[ServiceError] | None = None) -> Resume:
    """The resume parameters (``invalid_parameter``, ``too_large``: see :mod:`services.common.resume`). A
    ``resume_vad_state`` another VAD model wrote (not ``vad_fingerprint``: an upgrade between the drop and the
    resume) is left out with a warning: the detector starts afresh."""
    refuse_resume(query, "/v1/stream/asr",
                  supported=("resume_at_s", "resume_utterance", "resume_replay_s", "resume_vad_state"))
    at_s = seconds_param(query, "resume_at_s")
    utterance = index_param(query, "resume_utterance")
    replay_s = seconds_param(query, "resume_replay_s", max_replay_s, over=ErrorCode.TOO_LARGE)
    if (at_s is None) != (utterance is None):
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "a resumed stream names both resume_at_s and "
                                                        "resume_utterance")
    if at_s is None and replay_s is not None:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "resume_replay_s needs resume_at_s and resume_utterance")
    carried_state = None
    carried = query.get("resume_vad_state")
    if carried is not None:
        if at_s is None:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, "resume_vad_state needs resume_at_s and resume_utterance")
        try:
            fingerprint, _ = decode_state(carried)
        except ValueError as exc:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, f"resume_vad_state is not a final's vad_state ({exc})")
        if fingerprint == vad_fingerprint:
            carried_state = carried
        elif warnings is not None:
            warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, "resume_vad_state is from another VAD model; "
                                                                "the voice detector starts afresh"))
    return Resume(at_s or 0.0, utterance or 0, replay_s or 0.0, carried_state)


@dataclass(frozen=True)
class StreamParams:
    sample_rate: int = SAMPLE_RATE_HZ
    encoding: Encoding = Encoding.PCM_S16LE
    language: str | None = None  # None: the configured default
    partials: bool = True
    turn_detection: TurnMode = TurnMode.SMART_TURN
    resume: Resume = Resume()
    vad_state: bool = False  # finals carry the detector's state at their end (for a resume)
    hotwords: str = ""  # words likely to be said (context.py)
    prompt: str = ""  # text that precedes the audio (context.py)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_stream_params(query: dict[str, str], max_replay_s: float = 300.0,
                        max_context_chars: int = 500,
                        vad_fingerprint: bytes | None = None) -> tuple[StreamParams, list[ServiceError]]:
    """Audio and resume parameters are fatal when wrong (``bad_audio``; see :func:`parse_resume`), and so are
    hotwords and prompt over ``max_context_chars`` (``too_large``); the others fall back to their default with a
    non-fatal ``bad_message`` warning."""
    context = checked_context(query.get("hotwords"), query.get("prompt"), max_context_chars)
    warnings: list[ServiceError] = []
    resume = parse_resume(query, max_replay_s, vad_fingerprint, warnings)
    sample_rate = parse_sample_rate(query.get("sample_rate", str(SAMPLE_RATE_HZ)))
    encoding = parse_encoding(query.get("encoding", "pcm_s16le"))
    partials = _flag(query, "partials", True, warnings)
    vad_state = _flag(query, "vad_state", False, warnings)
    turn = TurnMode.SMART_TURN
    raw = query.get("turn_detection")
    if raw is not None:
        try:
            turn = TurnMode(raw)
        except ValueError:
            warnings.append(ServiceError(
                ErrorCode.BAD_MESSAGE, f"turn_detection must be smart_turn, vad or none, got {shown(raw)}; using smart_turn"))
    language = query.get("language") or None
    return StreamParams(sample_rate, encoding, language, partials, turn, resume, vad_state, context.hotwords,
                        context.prompt), warnings


def _flag(query: dict[str, str], name: str, default: bool, warnings: list[ServiceError]) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    warnings.append(ServiceError(ErrorCode.BAD_MESSAGE, f"{name} must be true or false, got {shown(raw)}; "
                                                        f"using {str(default).lower()}"))
    return default


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
    vad_state: str | None = None  # with vad_state=true: the detector's state at ``end``, for resume_vad_state

    def to_json(self) -> str:
        body = {"type": self.type, "utterance": self.utterance, "text": self.text, "start": self.start,
                "end": self.end, "reason": self.reason.value, "words": self.words, "latency_ms": self.latency_ms}
        if self.vad_state is not None:
            body["vad_state"] = self.vad_state
        return json.dumps(body, ensure_ascii=False)


ServerEvent = Ready | SpeechStart | Partial | Final | Closed


def merge_partials(waiting: Any, new: Any) -> Partial | None:
    """Outbox merge rule: a new partial replaces the waiting partial of the same utterance."""
    if isinstance(new, Partial) and isinstance(waiting, Partial) and waiting.utterance == new.utterance:
        return new
    return None
