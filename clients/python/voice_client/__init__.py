"""Async, typed Python client of the voice services: streaming ASR and TTS that resume across dropped connections.

``AsrStream`` and ``TtsStream`` are the WebSocket streams (:mod:`.asr`,
:mod:`.tts`), ``ResumePolicy`` says how they resume (:mod:`.backoff`), the
events they yield are in :mod:`.events`, and :func:`transcribe_file` /
:func:`synthesize` are the HTTP calls (:mod:`.http`). It depends on
``websockets`` and ``httpx`` only.
"""

from .asr import AsrStream
from .backoff import NO_RESUME, ResumePolicy
from .errors import ConnectionLost, ServiceError, VoiceClientError
from .events import (Audio, Cancelled, Closed, Done, ErrorEvent, Event, Final, Partial, Ready, Reconnecting, Resumed,
                     Segment, SegmentEnd, SpeechStart, TtsReady, Unknown, Words)
from .http import Transcript, stream_synthesis, synthesize, transcribe_file
from .tts import TtsStream

__all__ = ["AsrStream", "Audio", "Cancelled", "Closed", "ConnectionLost", "Done", "ErrorEvent", "Event", "Final",
           "NO_RESUME", "Partial", "Ready", "Reconnecting", "ResumePolicy", "Resumed", "Segment", "SegmentEnd",
           "ServiceError", "SpeechStart", "Transcript", "TtsReady", "TtsStream", "Unknown", "VoiceClientError", "Words",
           "stream_synthesis", "synthesize", "transcribe_file"]
__version__ = "0.1.0"
