"""The TTS service's Wyoming server (Home Assistant's text-to-speech protocol): a dialect of the TTS session.

A connection on ``wyoming.port`` is one :class:`WyomingTtsSession`, a
:class:`~.session.TtsSession` that overrides only the edges, like the Deepgram
dialect: the same chunker, speaker, scheduler, admission, limits, idle timer,
drain and metrics (the transport is :mod:`services.common.wyoming`). Client
events: ``describe`` (answered with ``info``: every voice and
``supports_synthesize_streaming``); ``synthesize`` (our ``text`` then
``flush``: answered by ``audio-start``, ``audio-chunk`` s, ``audio-stop``);
``synthesize-start`` / ``synthesize-chunk`` s / ``synthesize-stop`` (streamed
text, spoken a sentence at a time as it arrives; the full ``synthesize`` a
client sends inside the stream for older servers is ignored; the stop is a
``flush``, answered by the audio's ``audio-stop`` and then
``synthesize-stopped``). A request's ``voice.name`` picks the voice of its
pieces (an unknown one is ``not_found``, which ends the connection); the
audio is 16-bit mono at the session's rate (the default voice's). Problems are
``error`` events with our codes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Attribution, Info, TtsProgram, TtsVoice
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from ..common.audio import Encoding
from ..common.errors import ErrorCode, ServiceError
from ..common.wyoming import EventLimits, WyomingDialect, WyomingListener, WyomingSocket, answer_describes, listeners
from .protocol import Done, Flush, StreamParams, Text, text_message
from .serving import TtsRuntime
from .session import TtsSession, TtsSetup
from .voices import ResolvedVoice, VoiceInfo

__all__ = ["WyomingTtsSession", "describe", "wyoming_listeners"]

PROGRAM = "voice-services-tts"
MAX_CHUNK_BYTES = 8192
"""Audio goes out in ``audio-chunk`` s of at most this (about 0.19 s at 22.05 kHz)."""
_ENGINES = {"piper": Attribution(name="Piper", url="https://github.com/OHF-Voice/piper1-gpl"),
            "chatterbox": Attribution(name="Chatterbox", url="https://github.com/resemble-ai/chatterbox")}


def voice_languages(voice: VoiceInfo) -> list[str]:
    """A voice's language as Piper names it (``en_US-joe-medium`` speaks ``en_US``); English otherwise."""
    head = voice.id.split("-")[0]
    if len(head) == 5 and head[2] == "_" and head[:2].isalpha() and head[3:].isalpha():
        return [head]
    return ["en"]


def describe(runtime: TtsRuntime) -> Event:
    """The ``info`` event: one program with every voice (built-in and cloned)."""
    attribution = _ENGINES.get(runtime.engine.name, Attribution(name=runtime.engine.name, url=""))
    voices = [TtsVoice(name=v.id, attribution=attribution, installed=True, version=None,
                       description=v.name if v.name != v.id else f"{runtime.engine.name} voice {v.id}",
                       languages=voice_languages(v))
              for v in runtime.voices.all()]
    program = TtsProgram(name=PROGRAM, attribution=attribution, installed=True, version="0.1.0",
                         description=f"Streaming text-to-speech ({runtime.engine.name})", voices=voices,
                         supports_synthesize_streaming=True)
    return Info(tts=[program]).event()


class WyomingTtsSession(WyomingDialect, TtsSession):
    ws: WyomingSocket

    def __init__(self, ws: WyomingSocket, runtime: TtsRuntime, setup: TtsSetup, session_id: str) -> None:
        super().__init__(ws, runtime, setup, session_id)
        self._streaming = False  # between synthesize-start and synthesize-stop
        self._responses: deque[bool] = deque()  # flushes waiting for their done: True for a streamed request
        self._audio_open = False  # audio-start sent, audio-stop not yet

    @classmethod
    def prepare(cls, ws: WyomingSocket, runtime: TtsRuntime) -> TtsSetup:
        return TtsSetup(StreamParams(None, Encoding.PCM_S16LE, None))

    def describe(self) -> Event:
        return describe(self.runtime)

    # -- reading ---------------------------------------------------------------------------------
    async def on_wyoming(self, event: Event) -> bool:
        if Synthesize.is_type(event.type):
            if self._streaming:
                return False  # the whole text again, for servers that do not stream: already being spoken
            await self._use_voice(event.data.get("voice"))
            await self._text(event)
            await self._request(streamed=False)
        elif SynthesizeStart.is_type(event.type):
            if self._streaming:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "synthesize-start inside a streamed request; ignored")
            await self._use_voice(event.data.get("voice"))
            self._streaming = True
        elif SynthesizeChunk.is_type(event.type):
            if not self._streaming:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "synthesize-chunk before synthesize-start; ignored")
            await self._text(event)
        elif SynthesizeStop.is_type(event.type):
            if not self._streaming:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "synthesize-stop before synthesize-start; ignored")
            self._streaming = False
            await self._request(streamed=True)
        return False  # Wyoming servers drop events they do not know

    async def _use_voice(self, voice: Any) -> None:
        name = voice.get("name") if isinstance(voice, dict) else None
        if name is not None and not isinstance(name, str):
            raise ServiceError(ErrorCode.BAD_MESSAGE, "voice.name must be a string")
        resolved: ResolvedVoice | None = None
        if name and name != self.voice.id:
            resolved = await self.runtime.voices.resolve(name)  # not_found: the error, then the close
        self.piece_voice = resolved

    async def _text(self, event: Event) -> None:
        message = text_message(event.data)
        if message.text.strip():
            await self.take(Text(message.text))

    async def _request(self, streamed: bool) -> None:
        """The request's text is all here: speak what is left, and answer when its audio is out."""
        self._responses.append(streamed)
        await self.take(Flush())

    # -- writing ---------------------------------------------------------------------------------
    def _format(self) -> dict:
        return {"rate": self.out_rate_hz, "width": 2, "channels": 1}

    async def write_audio(self, data: bytes) -> None:
        if not self._audio_open:
            self._audio_open = True
            await self.write_event(AudioStart(**self._format()).event())
        for start in range(0, len(data), MAX_CHUNK_BYTES):
            await self.write_event(AudioChunk(audio=data[start:start + MAX_CHUNK_BYTES], **self._format()).event())

    async def send_event(self, item: Any) -> None:
        if isinstance(item, Done):
            for _ in range(item.flushes):
                streamed = self._responses.popleft() if self._responses else False
                if not self._audio_open:  # a request with nothing to speak still gets its audio-start and -stop
                    await self.write_event(AudioStart(**self._format()).event())
                self._audio_open = False
                await self.write_event(AudioStop().event())
                if streamed:
                    await self.write_event(SynthesizeStopped().event())
        elif isinstance(item, ServiceError):
            await super().send_event(item)
        # ready, segment, segment_end, cancelled, closed: Wyoming has none


def wyoming_listeners(runtime: TtsRuntime) -> list[WyomingListener]:
    """The Wyoming server ``wyoming.port`` asks for (none while it is 0)."""
    server = runtime.settings.server

    async def serve(ws: WyomingSocket) -> None:
        if await answer_describes(ws, lambda: describe(runtime), server.idle_timeout_s, server.send_timeout_s):
            await WyomingTtsSession.serve(ws, runtime)

    limits = EventLimits(max_data_bytes=server.max_message_bytes, max_payload_bytes=0)
    return listeners(runtime.settings, runtime, serve, limits)
