"""The typed events a stream yields: the services' wire events, and the client's own ``reconnecting``/``resumed``.

Each server event is a frozen dataclass named after its ``type`` and built by
:func:`parse_asr_event` or :func:`parse_tts_event` (the one place JSON becomes
an event; unknown types become :class:`Unknown`, so a newer server does not
break an older client). :meth:`Event.as_dict` gives the event's own fields in
the wire's shape (``{"type": ..., ...}``). :class:`Reconnecting` and
:class:`Resumed` never come from a server: the library yields them around a
resume so an application can show that the line dropped and came back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Event:
    type: ClassVar[str]

    def as_dict(self) -> dict[str, Any]:
        """The event as the server sent it (less the opaque state a resume sends back)."""
        body: dict[str, Any] = {"type": self.type}
        body.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                     if f.name != "data" and not f.metadata.get("resume")})
        return body


# -- both services --------------------------------------------------------------------

@dataclass(frozen=True)
class Closed(Event):
    """The session ended after the client's ``end``: everything sent was handled."""

    type: ClassVar[str] = "closed"


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A non-fatal error (``bad_message``: one message was ignored); fatal ones are raised as ``ServiceError``."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class Reconnecting(Event):
    """The socket dropped (``reason``); attempt ``attempt`` to resume starts after ``delay_s``."""

    type: ClassVar[str] = "reconnecting"
    attempt: int
    delay_s: float
    reason: str


@dataclass(frozen=True)
class Resumed(Event):
    """The stream goes on over a new socket. ASR: from stream time ``at_s`` and utterance ``utterance``, with
    ``replay_s`` of kept audio sent again. TTS: from segment ``segment``; ``restarted`` is True when that
    segment's audio had begun before the drop (it starts again from its beginning)."""

    type: ClassVar[str] = "resumed"
    attempt: int
    outage_s: float
    at_s: float = 0.0
    utterance: int | None = None
    replay_s: float = 0.0
    segment: int | None = None
    restarted: bool = False


@dataclass(frozen=True)
class Unknown(Event):
    """An event type this client does not know (kept whole in ``body``)."""

    type: ClassVar[str] = "unknown"
    body: dict


# -- ASR ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ready(Event):
    type: ClassVar[str] = "ready"
    session_id: str
    sample_rate: int
    encoding: str
    language: str = ""
    model: str = ""


@dataclass(frozen=True)
class SpeechStart(Event):
    type: ClassVar[str] = "speech_start"
    utterance: int
    t: float


@dataclass(frozen=True)
class Partial(Event):
    """The current hypothesis of an utterance (after a resume, the utterance in flight is heard again)."""

    type: ClassVar[str] = "partial"
    utterance: int
    text: str
    stable: str
    t: float


@dataclass(frozen=True)
class Final(Event):
    """Exactly once per utterance, never revised, numbered without gaps across resumes."""

    type: ClassVar[str] = "final"
    utterance: int
    text: str
    start: float
    end: float
    reason: str
    words: list[dict] = field(default_factory=list)
    latency_ms: float = 0.0
    vad_state: str | None = field(default=None, repr=False, metadata={"resume": True})
    """Opaque: the server's voice-detector state at ``end`` (the stream sends it back when it resumes there)."""


# -- TTS ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TtsReady(Event):
    type: ClassVar[str] = "ready"
    session_id: str
    sample_rate: int
    encoding: str
    voice: str = ""


@dataclass(frozen=True)
class Segment(Event):
    """Piece ``index`` of the text starts; its audio follows."""

    type: ClassVar[str] = "segment"
    index: int
    text: str


@dataclass(frozen=True)
class SegmentEnd(Event):
    """All of piece ``index``'s audio has arrived."""

    type: ClassVar[str] = "segment_end"
    index: int


@dataclass(frozen=True)
class Words(Event):
    """Only with ``word_timings=True``: the words of segment ``segment`` whose audio follows, sent before the
    audio each one starts in. ``words``: ``{"word", "start", "end", "start_sample", "end_sample"}``, on the
    stream's audio clock (seconds / samples of audio received since the stream's first audio, across resumes);
    ``estimated``: the engine reported no alignment and the times are a guess."""

    type: ClassVar[str] = "words"
    segment: int
    words: list[dict] = field(default_factory=list)
    estimated: bool = False


@dataclass(frozen=True)
class Audio(Event):
    """A binary frame of speech, in the session's encoding and rate; ``segment``: the piece it belongs to."""

    type: ClassVar[str] = "audio"
    data: bytes = field(repr=False)
    segment: int | None = None


@dataclass(frozen=True)
class Done(Event):
    """Everything before the client's ``flush`` has been spoken."""

    type: ClassVar[str] = "done"


@dataclass(frozen=True)
class Cancelled(Event):
    """The client's ``cancel`` took effect: no audio of the cancelled text follows."""

    type: ClassVar[str] = "cancelled"


AsrEvent = Ready | SpeechStart | Partial | Final | Closed | ErrorEvent | Reconnecting | Resumed | Unknown
TtsEvent = (TtsReady | Segment | SegmentEnd | Words | Audio | Done | Cancelled | Closed | ErrorEvent | Reconnecting
            | Resumed | Unknown)

_ASR: dict[str, type] = {"ready": Ready, "speech_start": SpeechStart, "partial": Partial, "final": Final,
                         "closed": Closed, "error": ErrorEvent}
_TTS: dict[str, type] = {"ready": TtsReady, "segment": Segment, "segment_end": SegmentEnd, "words": Words, "done": Done,
                         "cancelled": Cancelled, "closed": Closed, "error": ErrorEvent}


def _build(table: dict[str, type], body: dict) -> Event:
    cls = table.get(body.get("type", ""))
    if cls is None:
        return Unknown(body)
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in body.items() if k in names})
    except TypeError:  # a field missing: not the event this client knows
        return Unknown(body)


def parse_asr_event(body: dict) -> Event:
    return _build(_ASR, body)


def parse_tts_event(body: dict) -> Event:
    return _build(_TTS, body)
