"""OpenAI Realtime-compatible transcription: ``WS /v1/realtime?intent=transcription``, a dialect of the ASR session.

This module owns the translation between OpenAI's Realtime transcription flow
(the GA one, which Pipecat's ``OpenAIRealtimeSTTService`` and the ``openai``
SDK speak, and the older ``transcription_session.update``) and our
:class:`~.session.AsrSession`: the same processor, schedulers, admission and
limits. ``session.created`` comes first; appends are taken before any
``session.update`` (pcm16 at 24 kHz, OpenAI's default). ``session.update`` sets
the format (``audio/pcm`` at any rate we take, ``audio/pcmu``; only before the
first audio), the language, and ``turn_detection``: ``null`` is our ``none``
(the client commits), ``server_vad`` our ``vad`` with its
``silence_duration_ms``, ``semantic_vad`` our ``smart_turn``; the transcription's
``prompt`` is the stream's prompt from then on (over ``model.max_context_chars``:
``too_large``, which ends the session). Each utterance is
an item: ``speech_started`` / ``speech_stopped`` (not with ``null``),
``committed``, ``delta`` events carrying the newly confirmed words (the
LocalAgreement stable prefix: a delta is never revised; the final's remaining
words come as a last delta, so the deltas add up to the transcript whenever the
final agrees with what was confirmed), and ``completed`` with the final
transcript. ``commit`` is our ``commit`` (with nothing open it still
answers ``committed`` and an empty ``completed``, never an error, since an
``error`` event makes clients reconnect); ``clear`` drops the open utterance.
Errors are OpenAI ``error`` events; a refused session is an HTTP status on the
handshake.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from ..common.audio import Encoding, parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common.protocol import Closed, parse_object, shown
from ..common.resume import refuse_resume
from .context import checked_context
from .endpointing import EndReason, TurnMode
from .protocol import Final, Partial, SpeechStart, StreamParams
from .serving import AsrRuntime
from .session import AsrSession, AsrSetup

__all__ = ["RealtimeSession"]

DEFAULT_RATE_HZ = 24000
"""OpenAI's ``audio/pcm`` rate, and what a session takes before ``session.update`` says otherwise."""
DEFAULT_SILENCE_MS = 500
"""``server_vad``'s ``silence_duration_ms`` when the client gives none (OpenAI's default)."""
_SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": DEFAULT_SILENCE_MS}


@dataclass(frozen=True)
class _Update:
    session: dict
    beta: bool  # transcription_session.update (answered in its own shape)


@dataclass(frozen=True)
class _Commit:
    pass


@dataclass(frozen=True)
class _Clear:
    pass


@dataclass(frozen=True)
class _EmptyCommit:
    """A commit with no utterance open: ``committed`` and an empty ``completed`` for a fresh item."""


@dataclass(frozen=True)
class _Reply:
    """A server event decided in order with the audio (after the frames before it were processed)."""

    body: dict


def _ids(prefix: str):
    return (f"{prefix}_{uuid.uuid4().hex[:20]}" for _ in itertools.count())


class RealtimeSession(AsrSession):
    handshake_refusal = True

    def __init__(self, ws: WebSocket, runtime: AsrRuntime, setup: AsrSetup, session_id: str) -> None:
        super().__init__(ws, runtime, setup, session_id)
        server = runtime.settings.server
        self.max_message_bytes = max(self.max_message_bytes, server.max_frame_bytes * 4 // 3 + 4096)
        self.session_key = f"sess_{session_id}"
        self.turn_detection: dict | None = dict(_SERVER_VAD)  # None: the client commits (turn mode none)
        self.transcription: dict | None = None
        self.processor.set_turn_mode(TurnMode.VAD, DEFAULT_SILENCE_MS)
        self._event_ids = _ids("event")
        self._item_ids = _ids("item")
        self._items: dict[int, str] = {}  # utterance -> item id
        self._delivered: dict[int, str] = {}  # utterance -> text sent in deltas
        self._previous_item: str | None = None
        self._audio_seen = False

    @classmethod
    def prepare(cls, ws: WebSocket, runtime: AsrRuntime) -> AsrSetup:
        refuse_resume(ws.query_params, "/v1/realtime")
        intent = ws.query_params.get("intent")
        if intent != "transcription":
            raise ServiceError(ErrorCode.NOT_SUPPORTED, f"only transcription sessions are served here "
                                                        f"(?intent=transcription), not intent={shown(intent)}")
        params = StreamParams(DEFAULT_RATE_HZ, Encoding.PCM_S16LE, None, True, TurnMode.VAD)
        return AsrSetup(params, runtime.resolve_language(None), [])

    def greet(self) -> None:
        self._event({"type": "session.created", "session": self._session_body()})

    # -- reading ---------------------------------------------------------------------------------
    async def on_binary(self, data: bytes) -> bool:
        raise ServiceError(ErrorCode.BAD_MESSAGE, "send audio as input_audio_buffer.append events (base64 in JSON)")

    async def on_text(self, raw: str) -> bool:
        data = parse_object(raw)
        kind = data.get("type")
        if kind == "input_audio_buffer.append":
            audio = data.get("audio")
            if not isinstance(audio, str):
                raise ServiceError(ErrorCode.BAD_MESSAGE, "input_audio_buffer.append needs a base64 string 'audio'")
            try:
                pcm = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise ServiceError(ErrorCode.BAD_MESSAGE, "input_audio_buffer.append: 'audio' is not base64") from None
            return await super().on_binary(pcm)
        if kind == "input_audio_buffer.commit":
            await self.inbound.put(_Commit())
        elif kind == "input_audio_buffer.clear":
            await self.inbound.put(_Clear())
        elif kind in ("session.update", "transcription_session.update"):
            session = data.get("session")
            if not isinstance(session, dict):
                raise ServiceError(ErrorCode.BAD_MESSAGE, f"{kind} needs an object 'session'")
            await self.inbound.put(_Update(session, beta=kind == "transcription_session.update"))
        else:
            raise ServiceError(ErrorCode.BAD_MESSAGE, f"event type {shown(kind)} is not supported in a transcription "
                                                      f"session; expected input_audio_buffer.append, .commit, .clear "
                                                      f"or session.update")
        return False

    async def handle(self, item: Any) -> bool:
        processor = self.processor
        if isinstance(item, (bytes, bytearray)):
            self._audio_seen = True
        elif isinstance(item, _Commit):
            if processor.in_utterance:
                await processor.commit()  # committed and completed go out with the final
            else:
                self.outbox.put(_EmptyCommit())
            return False
        elif isinstance(item, _Clear):
            processor.discard()
            self._event({"type": "input_audio_buffer.cleared"})
            return False
        elif isinstance(item, _Update):
            self._update(item.session, item.beta)
            return False
        return await super().handle(item)

    # -- session configuration -------------------------------------------------------------------
    def _update(self, session: dict, beta: bool) -> None:
        audio_in: dict = {}
        if beta:
            if "input_audio_transcription" in session:
                audio_in["transcription"] = session["input_audio_transcription"]
            if "turn_detection" in session:
                audio_in["turn_detection"] = session["turn_detection"]
            if "input_audio_format" in session:
                fmt = session["input_audio_format"]
                audio_in["format"] = {"pcm16": {"type": "audio/pcm", "rate": DEFAULT_RATE_HZ},
                                      "g711_ulaw": {"type": "audio/pcmu"}}.get(fmt, {"type": fmt})
        else:
            audio = session.get("audio")
            if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
                audio_in = audio["input"]
        try:
            if "format" in audio_in:
                self._set_format(audio_in["format"])
            if "transcription" in audio_in:
                self._set_transcription(audio_in["transcription"])
            if "turn_detection" in audio_in:
                self._set_turn_detection(audio_in["turn_detection"])
        except ServiceError as err:
            if err.fatal:
                raise  # a prompt over the limit: reported, and the session ends
            self.outbox.put(err)
        if beta:
            self._event({"type": "transcription_session.updated", "session": self._beta_body()})
        else:
            self._event({"type": "session.updated", "session": self._session_body()})

    def _set_format(self, fmt: Any) -> None:
        if not isinstance(fmt, dict):
            raise ServiceError(ErrorCode.BAD_MESSAGE, "audio.input.format must be an object")
        kind = fmt.get("type")
        if kind == "audio/pcm":
            encoding, rate = Encoding.PCM_S16LE, parse_sample_rate(fmt.get("rate") or DEFAULT_RATE_HZ)
        elif kind == "audio/pcmu":
            encoding, rate = Encoding.MULAW, 8000
        else:
            raise ServiceError(ErrorCode.BAD_MESSAGE, f"audio format {shown(kind)} is not supported; "
                                                      f"use audio/pcm or audio/pcmu")
        if (encoding, rate) == (self.params.encoding, self.params.sample_rate):
            return
        if self._audio_seen:
            raise ServiceError(ErrorCode.BAD_MESSAGE, "the audio format cannot change once audio has been appended")
        self.processor.set_format(encoding, rate)

    def _set_transcription(self, transcription: Any) -> None:
        if transcription is not None and not isinstance(transcription, dict):
            raise ServiceError(ErrorCode.BAD_MESSAGE, "audio.input.transcription must be an object or null")
        prompt = (transcription or {}).get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ServiceError(ErrorCode.BAD_MESSAGE, "audio.input.transcription.prompt must be a string")
        self.processor.context = checked_context(None, prompt, self.runtime.settings.model.max_context_chars)
        self.transcription = transcription
        language = (transcription or {}).get("language") or None
        try:
            resolved = self.runtime.resolve_language(language)
        except ValueError as exc:
            raise ServiceError(ErrorCode.BAD_MESSAGE, f"{exc}; keeping {self.language or 'auto'}") from None
        self.processor.language = resolved

    def _set_turn_detection(self, turn: Any) -> None:
        if turn is None:
            self.processor.set_turn_mode(TurnMode.NONE)
            self.turn_detection = None
            return
        kind = turn.get("type") if isinstance(turn, dict) else None
        if kind == "server_vad":
            silence = turn.get("silence_duration_ms") or DEFAULT_SILENCE_MS
            if not isinstance(silence, int) or not 100 <= silence <= 10000:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "silence_duration_ms must be an integer, 100-10000")
            self.processor.set_turn_mode(TurnMode.VAD, silence)
            self.turn_detection = {**_SERVER_VAD, **turn, "silence_duration_ms": silence}
        elif kind == "semantic_vad":
            self.processor.set_turn_mode(TurnMode.SMART_TURN)
            self.turn_detection = {"type": "semantic_vad", "eagerness": turn.get("eagerness", "auto")}
        else:
            raise ServiceError(ErrorCode.BAD_MESSAGE, f"turn_detection type {shown(kind)} is not supported; use "
                                                      f"server_vad, semantic_vad or null")

    def _format_body(self) -> dict:
        if self.params.encoding is Encoding.MULAW:
            return {"type": "audio/pcmu"}
        return {"type": "audio/pcm", "rate": self.params.sample_rate}

    def _transcription_body(self) -> dict:
        return {"model": (self.transcription or {}).get("model") or self.runtime.model_name,
                "language": self.language or "", "prompt": self.processor.context.prompt}

    def _session_body(self) -> dict:
        return {"type": "transcription", "id": self.session_key, "object": "realtime.transcription_session",
                "expires_at": 0, "include": None,
                "audio": {"input": {"format": self._format_body(), "transcription": self._transcription_body(),
                                    "noise_reduction": None, "turn_detection": self.turn_detection}}}

    def _beta_body(self) -> dict:
        return {"id": self.session_key, "object": "realtime.transcription_session",
                "input_audio_format": "g711_ulaw" if self.params.encoding is Encoding.MULAW else "pcm16",
                "input_audio_transcription": self._transcription_body(), "turn_detection": self.turn_detection,
                "input_audio_noise_reduction": None, "include": None}

    # -- writing ---------------------------------------------------------------------------------
    def _event(self, body: dict) -> None:
        self.outbox.put(_Reply(body))

    def _item(self, utterance: int) -> str:
        if utterance not in self._items:
            self._items[utterance] = next(self._item_ids)
        return self._items[utterance]

    async def send(self, item: Any) -> bool:
        if isinstance(item, _Reply):
            await self._send(item.body)
        elif isinstance(item, SpeechStart):
            if self.turn_detection is not None:  # the server detects turns: it reports speech
                await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(item.t * 1000),
                                  "item_id": self._item(item.utterance)})
        elif isinstance(item, Partial):
            delivered = self._delivered.get(item.utterance, "")
            stable = item.stable.strip()
            if stable.startswith(delivered) and len(stable) > len(delivered):
                delta = stable[len(delivered):]
                self._delivered[item.utterance] = stable
                await self._send({"type": "conversation.item.input_audio_transcription.delta",
                                  "item_id": self._item(item.utterance), "content_index": 0, "delta": delta})
        elif isinstance(item, _EmptyCommit):
            await self._complete(next(self._item_ids), "", 0.0)
        elif isinstance(item, Closed):
            pass  # the Realtime API has no end-of-session event
        else:
            return await super().send(item)
        return False

    async def write_final(self, final: Final) -> None:
        item_id = self._item(final.utterance)
        self._items.pop(final.utterance, None)
        delivered = self._delivered.pop(final.utterance, "")
        text = final.text.strip()
        if text.startswith(delivered) and len(text) > len(delivered):  # the deltas add up to the transcript
            await self._send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                              "content_index": 0, "delta": text[len(delivered):]})
        stopped_ms = None
        if final.reason is not EndReason.COMMIT and self.turn_detection is not None:
            stopped_ms = round(final.end * 1000)
        await self._complete(item_id, final.text, final.end - final.start, stopped_ms)

    async def _complete(self, item_id: str, transcript: str, seconds: float, stopped_ms: int | None = None) -> None:
        """An item's last events: ``speech_stopped`` (server VAD), ``committed``, ``completed``."""
        if stopped_ms is not None:
            await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": stopped_ms,
                              "item_id": item_id})
        await self._send({"type": "input_audio_buffer.committed", "previous_item_id": self._previous_item,
                          "item_id": item_id})
        self._previous_item = item_id
        await self._send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                          "content_index": 0, "transcript": transcript,
                          "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    async def _send(self, body: dict) -> None:
        await self.write(json.dumps({"event_id": next(self._event_ids), **body}, ensure_ascii=False))

    @classmethod
    def error_frame(cls, err: ServiceError) -> str:
        kind = "server_error" if err.code in (ErrorCode.INTERNAL, ErrorCode.OVERLOADED) else "invalid_request_error"
        return json.dumps({"type": "error", "event_id": f"event_{uuid.uuid4().hex[:20]}",
                           "error": {"type": kind, "code": err.code.value, "message": err.message, "param": None,
                                     "event_id": None}}, ensure_ascii=False)
