"""Deepgram-compatible live transcription: ``WS /v1/listen``, a dialect of the ASR session.

This module owns the translation between Deepgram's streaming API and our
:class:`~.session.AsrSession`; the audio goes through the very same processor,
schedulers, admission and limits. Query parameters map onto
:class:`~.protocol.StreamParams` (``encoding`` linear16/mulaw, ``sample_rate``,
``channels=1``, ``language``, ``interim_results``, ``vad_events``,
``utterance_end_ms``, ``endpointing``; ``keyterm`` and ``keywords``, repeated, become
the stream's hotwords, a keyword's intensifier unused; the rest are accepted and
ignored, see INTEGRATION.md). Client messages: binary audio; ``KeepAlive`` restarts the idle
timer; ``Finalize`` is our ``commit`` (its ``Results`` carries
``from_finalize``, an empty one when nothing was open); ``CloseStream`` is our
``end`` (the last ``Results``, then ``Metadata``, then close 1000); ``Configure``
(keyterms and formatting features mid-stream) is answered in order with the
audio by exactly one ``ConfigureSuccess`` or ``ConfigureFailure``: keyterms
replace the stream's hotwords and what our transcripts already are (punctuated)
succeeds; other features fail with a code and a description, and nothing
changes. Our events
become Deepgram's: a partial is an interim ``Results`` (``is_final`` false), a
final a final ``Results`` whose ``speech_final`` is true when the turn ended
(Smart Turn or the silence fallback: reasons ``turn`` and ``silence``), speech
start is ``SpeechStarted``, and an end of turn is followed by ``UtteranceEnd``
when ``utterance_end_ms`` is set. ``start``/``duration`` of the finals tile the
stream. Errors are Deepgram ``Error`` messages; a refused session is an HTTP
status on the handshake. :func:`prerecorded_response` renders a whole-file
transcript (``POST /v1/listen``, Deepgram's pre-recorded API) the same way.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import string
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import ImmutableMultiDict
from starlette.websockets import WebSocket

from ..common.audio import SAMPLE_RATE_HZ, Encoding
from ..common.deepgram import KEY_SUBPROTOCOLS, parse_audio_query, refusal_headers as deepgram_refusal_headers
from ..common.errors import ErrorCode, ServiceError
from ..common.protocol import Closed, End, parse_message
from ..common.resume import refuse_resume
from .context import context_of_terms
from .endpointing import EndReason, TurnMode
from .files import Transcript
from .protocol import Final, Partial, SpeechStart, StreamParams
from .serving import AsrRuntime
from .session import AsrSession, AsrSetup

__all__ = ["DeepgramListenSession", "parse_listen_query", "prerecorded_response"]

_DEFAULT_RATES = {Encoding.PCM_S16LE: SAMPLE_RATE_HZ, Encoding.MULAW: 8000}
_TRUE = {"true", "1", "yes"}
_PUNCTUATION = string.punctuation + "“”‘’…"


@dataclass(frozen=True)
class ListenOptions:
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None


@dataclass(frozen=True)
class ListenSetup(AsrSetup):
    """An ASR session's setup, with the Deepgram options that shape its messages."""

    options: ListenOptions = ListenOptions()


def _flag(query: Mapping[str, str], name: str) -> bool:
    return (query.get(name) or "").lower() in _TRUE


def _every(query: Mapping[str, str], name: str) -> list[str]:
    """Every value of a repeated query parameter (``keyterm=a&keyterm=b``)."""
    if isinstance(query, ImmutableMultiDict):
        return query.getlist(name)
    return [query[name]] if name in query else []


def keyword(raw: str) -> str | None:
    """A ``keywords`` value, ``word`` or ``word:intensifier``, as a hotword: the intensifier is not used (Whisper
    has no per-word weight); a word Deepgram is asked to suppress (an intensifier of 0 or less) is left out."""
    word, colon, boost = raw.rpartition(":")
    if not colon:
        return raw
    try:
        return word if float(boost) > 0 else None
    except ValueError:
        return raw  # a colon inside the term itself


def listen_hotwords(query: Mapping[str, str], max_context_chars: int) -> str:
    """``keyterm`` and ``keywords`` (repeated) as hotwords (over ``max_context_chars``: ``too_large``)."""
    keywords = [k for k in map(keyword, _every(query, "keywords")) if k]
    return context_of_terms(_every(query, "keyterm"), keywords, max_chars=max_context_chars).hotwords


def parse_listen_query(query: Mapping[str, str], max_context_chars: int = 500) -> tuple[StreamParams, ListenOptions]:
    """Deepgram's query parameters as our stream parameters; unsupported audio is ``bad_audio``; ``keyterm`` and
    ``keywords`` (repeated) are the stream's hotwords (over ``max_context_chars``: ``too_large``)."""
    refuse_resume(query, "/v1/listen")
    encoding, rate = parse_audio_query(query, _DEFAULT_RATES)
    if query.get("channels", "1") != "1" or _flag(query, "multichannel"):
        raise ServiceError(ErrorCode.BAD_AUDIO, "only mono audio is supported (channels=1)")
    turn = TurnMode.SMART_TURN
    endpointing = (query.get("endpointing") or "").lower()
    if endpointing == "false":
        turn = TurnMode.NONE  # finals only on Finalize, CloseStream or the utterance length limit
    if query.get("turn_detection") in {m.value for m in TurnMode}:  # our own parameter, as an extension
        turn = TurnMode(query["turn_detection"])
    language = (query.get("language") or "").split("-")[0].lower() or None
    if language == "multi":
        language = "auto"
    interim = _flag(query, "interim_results")
    end_ms = query.get("utterance_end_ms")
    options = ListenOptions(interim, _flag(query, "vad_events"),
                            int(end_ms) if end_ms and end_ms.isdigit() else None)
    return StreamParams(rate, encoding, language, partials=interim, turn_detection=turn,
                        hotwords=listen_hotwords(query, max_context_chars)), options


@dataclass(frozen=True)
class _KeepAlive:
    pass


@dataclass(frozen=True)
class _Finalize:
    pass


@dataclass(frozen=True)
class _Configure:
    """Deepgram's mid-stream ``Configure``: ``keyterms`` (None: keep them) and formatting ``features``."""

    keyterms: tuple[str, ...] | None
    features: dict[str, bool]


def _configure(data: dict) -> _Configure:
    keyterms, features = data.get("keyterms"), data.get("features")
    if keyterms is not None and not (isinstance(keyterms, list) and all(isinstance(t, str) for t in keyterms)):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "Configure: 'keyterms' must be an array of strings or null")
    if features is not None and not (isinstance(features, dict) and all(isinstance(v, bool) for v in features.values())):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "Configure: 'features' must be an object of booleans or null")
    return _Configure(None if keyterms is None else tuple(keyterms), dict(features or {}))


FEATURES_AS_SERVED = {"punctuate": True}
"""The formatting features a ``Configure`` may name: what every transcript here already is (Whisper punctuates)."""

_MESSAGES = {"KeepAlive": lambda data: _KeepAlive(), "Finalize": lambda data: _Finalize(),
             "CloseStream": lambda data: End(), "Configure": _configure}


@dataclass(frozen=True)
class _Reply:
    """A message decided in order with the audio (a ``Configure``'s answer)."""

    body: dict


@dataclass(frozen=True)
class _EmptyFinal:
    """The answer to a ``Finalize`` when no utterance was open: a final ``Results`` with no words."""

    at: float


def _word(w: dict) -> dict:
    text = w["word"]
    return {"word": text.strip(_PUNCTUATION).lower() or text, "start": w["start"], "end": w["end"],
            "confidence": w["probability"], "punctuated_word": text}


def _confidence(words: list[dict], transcript: str) -> float:
    return round(sum(w["confidence"] for w in words) / len(words) if words else (1.0 if transcript else 0.0), 4)


def _model_info(model_name: str) -> tuple[str, dict]:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, model_name)), {"name": model_name, "version": "1", "arch": "whisper"}


def _metadata(request_id: str, digest: str, created: str, duration: float, model_name: str) -> dict:
    model_uuid, info = _model_info(model_name)
    return {"transaction_key": "deprecated", "request_id": request_id, "sha256": digest, "created": created,
            "duration": round(duration, 3), "channels": 1, "models": [model_uuid], "model_info": {model_uuid: info}}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def prerecorded_response(transcript: Transcript, digest: str, model_name: str) -> dict:
    """Deepgram's pre-recorded response for a whole-file transcript: one channel, one alternative, its words."""
    words = [_word(w) for segment in transcript.segments for w in segment.words]
    text = transcript.text.strip()
    return {"metadata": _metadata(str(uuid.uuid4()), digest, _now(), transcript.duration, model_name),
            "results": {"channels": [{"alternatives": [{"transcript": text, "confidence": _confidence(words, text),
                                                        "words": words}],
                                      "detected_language": transcript.language}]}}


class DeepgramListenSession(AsrSession):
    handshake_refusal = True
    refusal_headers = staticmethod(deepgram_refusal_headers)  # dg-error: why the handshake was refused
    key_subprotocols = KEY_SUBPROTOCOLS  # a browser's key: Sec-WebSocket-Protocol: token, KEY

    def __init__(self, ws: WebSocket, runtime: AsrRuntime, setup: ListenSetup, session_id: str) -> None:
        super().__init__(ws, runtime, setup, session_id)
        self.options = setup.options
        self.request_id = str(uuid.uuid4())
        self.created = _now()
        self.model_uuid, self.model_info = _model_info(runtime.model_name)
        self._cursor = 0.0  # where the next final's segment starts (finals tile the stream)
        self._digest = hashlib.sha256()
        self._bytes = 0

    @classmethod
    def prepare(cls, ws: WebSocket, runtime: AsrRuntime) -> ListenSetup:
        params, options = parse_listen_query(ws.query_params, runtime.settings.model.max_context_chars)
        try:
            language = runtime.resolve_language(params.language)
        except ValueError as exc:
            raise ServiceError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return ListenSetup(params, language, [], options)

    def greet(self) -> None:
        """Deepgram says nothing at connect."""

    # -- reading ---------------------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> bool:
        self._digest.update(data)
        self._bytes += len(data)
        return await super().on_binary(data)

    async def on_text(self, raw: str) -> bool:
        message = parse_message(raw, _MESSAGES)
        if isinstance(message, _KeepAlive):
            self.keep_alive()
            return False
        await self.inbound.put(message)  # in order with the audio before it
        return isinstance(message, End)

    async def handle(self, item: Any) -> bool:
        if isinstance(item, _Configure):
            self.outbox.put(_Reply(self._configured(item)))
            return False
        if isinstance(item, _Finalize):
            processor = self.processor
            if processor.in_utterance:
                await processor.commit()
            else:
                self.outbox.put(_EmptyFinal(processor.endpointer.position_sample / SAMPLE_RATE_HZ))
            return False
        return await super().handle(item)

    def _configured(self, configure: _Configure) -> dict:
        """The one answer to a ``Configure``; a failure changes nothing (Deepgram's rule). ``keyterms`` replace the
        stream's hotwords from the next decode on (the query's ``keywords`` with them)."""
        unserved = sorted(name for name, on in configure.features.items() if FEATURES_AS_SERVED.get(name) is not on)
        if unserved:
            served = ", ".join(f"{name}={str(on).lower()}" for name, on in FEATURES_AS_SERVED.items())
            return self._configure_failure("CONFIGURE_FEATURES_NOT_SUPPORTED",
                                           f"features {', '.join(unserved)} cannot be set here; transcripts are "
                                           f"always {served}")
        if configure.keyterms is None:
            return {"type": "ConfigureSuccess", "request_id": self.request_id}
        try:
            context = context_of_terms(configure.keyterms, max_chars=self.runtime.settings.model.max_context_chars,
                                       prompt=self.processor.context.prompt or None)
        except ServiceError as exc:
            return self._configure_failure("CONFIGURE_KEYTERMS_TOO_LONG", exc.message)
        self.processor.context = context
        return {"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": list(configure.keyterms)}

    def _configure_failure(self, code: str, description: str) -> dict:
        return {"type": "ConfigureFailure", "request_id": self.request_id, "code": code, "description": description}

    # -- writing ---------------------------------------------------------------------------------
    async def send(self, item: Any) -> bool:
        if isinstance(item, _Reply):
            await self._send(item.body)
        elif isinstance(item, SpeechStart):
            if self.options.vad_events:
                await self._send({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(item.t, 3)})
        elif isinstance(item, Partial):
            await self._send(self._results(item.text, [], self._cursor, item.t, is_final=False))
        elif isinstance(item, _EmptyFinal):
            end = max(item.at, self._cursor)
            await self._send(self._results("", [], self._cursor, end, is_final=True, from_finalize=True))
            self._cursor = end
        elif isinstance(item, Closed):
            duration = self._bytes / self.params.encoding.bytes_per_sample / self.params.sample_rate
            await self._send({"type": "Metadata", **_metadata(self.request_id, self._digest.hexdigest(), self.created,
                                                              duration, self.runtime.model_name)})
        else:
            return await super().send(item)
        return False

    async def write_final(self, final: Final) -> None:
        end = max(final.end, self._cursor)
        turn_ended = final.reason in (EndReason.TURN, EndReason.SILENCE)
        words = [_word(w) for w in final.words]
        await self._send(self._results(final.text, words, self._cursor, end, is_final=True, speech_final=turn_ended,
                                       from_finalize=final.reason is EndReason.COMMIT))
        self._cursor = end
        if turn_ended and self.options.utterance_end_ms is not None:
            last = words[-1]["end"] if words else final.end
            await self._send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last})

    @classmethod
    def error_frame(cls, err: ServiceError) -> str:
        return json.dumps({"type": "Error", "variant": err.code.value, "description": err.message,
                           "message": err.message}, ensure_ascii=False)

    # -- rendering -------------------------------------------------------------------------------
    def _results(self, transcript: str, words: list[dict], start: float, end: float, *, is_final: bool,
                 speech_final: bool = False, from_finalize: bool = False) -> dict:
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript.strip(),
                                          "confidence": _confidence(words, transcript.strip()), "words": words}]},
            "metadata": {"request_id": self.request_id, "model_info": self.model_info, "model_uuid": self.model_uuid},
        }

    async def _send(self, body: dict) -> None:
        await self.write(json.dumps(body, ensure_ascii=False))
