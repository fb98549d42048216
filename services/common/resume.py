"""The query parameters of a resumed stream, parsed and checked in one place for both services.

A client that lost its socket reconnects to the same URL and says where its
stream carries on: ASR ``resume_at_s`` (stream seconds of the first sample it
sends), ``resume_utterance`` (the next utterance number), ``resume_replay_s``
(how much already-sent audio it replays) and ``resume_vad_state`` (the voice
detector's state the last final carried); TTS ``resume_segment`` (the next
segment number) and ``segment_end`` (ask for an event when a piece's audio is
complete). Nothing about the stream is kept on the server: these numbers are
the whole of its state. A value that is not a number, is negative or is out of
range is ``invalid_parameter``; a replay over the service's limit is
``too_large``; resume parameters on a route that does not resume (the
compatible APIs, or the other service's names) are ``not_supported``. All
three are fatal: a stream that cannot be numbered right is not started.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .errors import ErrorCode, ServiceError
from .protocol import shown

RESUME_PARAMS = ("resume_at_s", "resume_utterance", "resume_replay_s", "resume_vad_state", "resume_segment",
                 "segment_end")
"""Every query parameter of the resume protocol, on either service."""

MAX_STREAM_S = 7 * 24 * 3600.0
"""The latest stream time a resume may name (a week of audio): larger is taken for a client bug."""
MAX_INDEX = 10_000_000
"""The largest utterance or segment number a resume may name."""


def refuse_resume(query: Mapping[str, str], route: str, supported: Iterable[str] = ()) -> None:
    """``not_supported`` when ``query`` names a resume parameter that ``route`` does not take."""
    named = [name for name in RESUME_PARAMS if name in query and name not in set(supported)]
    if named:
        raise ServiceError(ErrorCode.NOT_SUPPORTED, f"{route} does not take {', '.join(named)}: ASR streams resume "
                                                    f"on /v1/stream/asr (resume_at_s, resume_utterance, "
                                                    f"resume_replay_s, resume_vad_state), TTS streams on /v1/stream/tts "
                                                    f"(resume_segment, segment_end)")


def seconds_param(query: Mapping[str, str], name: str, limit_s: float = MAX_STREAM_S,
                  over: ErrorCode = ErrorCode.INVALID_PARAMETER) -> float | None:
    """A finite, non-negative number of seconds (None when absent); ``invalid_parameter`` otherwise, or ``over``
    past ``limit_s``."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ServiceError(ErrorCode.INVALID_PARAMETER,
                           f"{name} must be a number of seconds >= 0, got {shown(raw)}")
    if value > limit_s:
        raise ServiceError(over, f"{name}={value:g} exceeds the limit of {limit_s:g} s")
    return value


def index_param(query: Mapping[str, str], name: str) -> int | None:
    """A whole number from 0 to :data:`MAX_INDEX` (None when absent); ``invalid_parameter`` otherwise."""
    raw = query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_INDEX:
        raise ServiceError(ErrorCode.INVALID_PARAMETER,
                           f"{name} must be a whole number from 0 to {MAX_INDEX}, got {shown(raw)}")
    return int(raw)
