"""Deepgram-compatible streaming synthesis: ``WS /v1/speak``, a dialect of the TTS session.

This module owns the translation between Deepgram's streaming TTS API and our
:class:`~.session.TtsSession`: the same chunker, speaker, scheduler, admission
and limits. Query: ``model`` names one of our voices (Deepgram's own ``aura-*``
names speak with the default voice), ``encoding`` linear16 or mulaw,
``sample_rate`` (default 24000 for linear16, 8000 for mulaw). ``Metadata`` is
sent at connect. ``Speak`` is our ``text`` (spoken as it arrives, a sentence at
a time; no need to wait for ``Flush``), ``Flush`` our ``flush`` and is answered
by ``Flushed`` after the last audio byte of what it flushed (with its
``sequence_id``; flushes and clears are counted from 0), ``Clear`` our barge-in
``cancel``, answered by ``Cleared``: no audio of the cleared text and no
``Flushed`` for a cleared flush follows it. ``Close`` is our ``end``. Audio is
raw (no header) in binary frames of at most :data:`MAX_FRAME_BYTES`. Problems
are Deepgram ``Warning`` messages (a fatal one then closes with our close
code); a refused session is an HTTP status on the handshake.
"""

from __future__ import annotations

import collections
import json
import uuid
from typing import Any

from starlette.websockets import WebSocket

from ..common.audio import Encoding
from ..common.deepgram import KEY_SUBPROTOCOLS, parse_audio_query, refusal_headers as deepgram_refusal_headers
from ..common.errors import ServiceError
from ..common.protocol import Closed, End, parse_message
from ..common.resume import refuse_resume
from .protocol import Cancel, Cancelled, Done, Flush, Ready, Segment, StreamParams, Text, text_message
from .serving import TtsRuntime
from .session import TtsSession, TtsSetup

__all__ = ["DeepgramSpeakSession", "parse_speak_query", "voice_of_model"]

MAX_FRAME_BYTES = 64 * 1024
"""Deepgram's clients refuse frames over 1 MiB; audio goes out in frames of at most this."""
_DEFAULT_RATES = {Encoding.PCM_S16LE: 24000, Encoding.MULAW: 8000}
_MESSAGES = {"Speak": text_message, "Flush": lambda data: Flush(), "Clear": lambda data: Cancel(),
             "Close": lambda data: End()}


def voice_of_model(model: str | None) -> str | None:
    """The voice a Deepgram ``model`` names: one of ours, or (Deepgram's ``aura-*`` names, none) the default."""
    return None if not model or model.lower().startswith("aura") else model


def parse_speak_query(query: dict[str, str]) -> StreamParams:
    refuse_resume(query, "/v1/speak")
    encoding, rate = parse_audio_query(query, _DEFAULT_RATES)
    return StreamParams(voice_of_model(query.get("model")), encoding, rate)


class DeepgramSpeakSession(TtsSession):
    handshake_refusal = True
    refusal_headers = staticmethod(deepgram_refusal_headers)  # dg-error: why the handshake was refused
    key_subprotocols = KEY_SUBPROTOCOLS  # a browser's key: Sec-WebSocket-Protocol: token, KEY

    def __init__(self, ws: WebSocket, runtime: TtsRuntime, setup: TtsSetup, session_id: str) -> None:
        super().__init__(ws, runtime, setup, session_id)
        self.model_name = ws.query_params.get("model") or self.voice.id
        self.request_id = str(uuid.uuid4())
        self._sequence = 0
        self._flushes: collections.deque[int] = collections.deque()  # sequence ids waiting for their Flushed
        self._clears: collections.deque[int] = collections.deque()  # sequence ids waiting for their Cleared

    @classmethod
    def prepare(cls, ws: WebSocket, runtime: TtsRuntime) -> TtsSetup:
        return TtsSetup(parse_speak_query(dict(ws.query_params)))

    # -- reading ---------------------------------------------------------------------------------
    async def on_text(self, raw: str) -> bool:
        message = parse_message(raw, _MESSAGES)
        if isinstance(message, Text) and not message.text.strip():
            return False  # Deepgram takes whitespace-only text silently
        if isinstance(message, Flush):
            self._flushes.append(self._next_sequence())
        elif isinstance(message, Cancel):
            self._flushes.clear()  # their text is cleared: no Flushed for them
            self._clears.append(self._next_sequence())
        return await self.take(message)

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence - 1

    # -- writing ---------------------------------------------------------------------------------
    async def write_audio(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_FRAME_BYTES):
            await self.write(data[start:start + MAX_FRAME_BYTES])

    async def send_event(self, item: Any) -> None:
        if isinstance(item, Ready):
            await self._send({"type": "Metadata", "request_id": self.request_id, "model_name": self.model_name,
                              "model_version": "1", "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.voice.id))})
        elif isinstance(item, Done):
            for _ in range(item.flushes):
                if self._flushes:
                    await self._send({"type": "Flushed", "sequence_id": self._flushes.popleft()})
        elif isinstance(item, Cancelled):
            sequence = self._clears.popleft() if self._clears else self._sequence
            await self._send({"type": "Cleared", "sequence_id": sequence})
        elif isinstance(item, (Segment, Closed)):
            pass  # Deepgram has neither
        else:
            await super().send_event(item)

    @classmethod
    def error_frame(cls, err: ServiceError) -> str:
        return json.dumps({"type": "Warning", "description": err.message, "code": err.code.value,
                           "warn_code": err.code.value, "warn_msg": err.message}, ensure_ascii=False)

    async def _send(self, body: dict) -> None:
        await self.write(json.dumps(body, ensure_ascii=False))
