"""The ASR service's Wyoming server (Home Assistant's speech-to-text protocol): a dialect of the ASR session.

A connection on ``wyoming.port`` is one :class:`WyomingAsrSession`, an
:class:`~.session.AsrSession` that overrides only the edges, like the Deepgram
and OpenAI dialects: the same processor, schedulers, admission, limits, idle
timer, drain and metrics (the transport is :mod:`services.common.wyoming`).
Client events: ``describe`` (answered with ``info``: the model, its languages,
``supports_transcript_streaming``), ``transcribe`` (its ``language``; its names,
then its terms, become the stream's hotwords, as many as fit in
``model.max_context_chars``: Home Assistant may send every entity's name, so
what does not fit is left out, not refused; see :class:`TranscribeHints`), ``audio-start`` (any
rate, 8-48 kHz, width and channel count: converted to mono 16-bit here and
resampled by the processor), ``audio-chunk`` (the audio, as a binary frame would
be: same limits and backpressure), ``audio-stop`` (our ``end``: what is open is
ended and flushed). Utterances end as on the socket (Smart Turn), and each one's
text goes out as it is decided: ``transcript-start`` at the first speech, a
``transcript-chunk`` with each utterance's final text (a delta: from the second
on, a space and the utterance; finals are never revised, so the chunks add up to
the transcript exactly, and no partial decodes are spent on a connection that
cannot show them), and at ``audio-stop`` the full ``transcript`` (what Home
Assistant reads) and ``transcript-stop``; then the connection closes (a drain
sends them with what was decided, then closes). Bad input is an ``error`` event
with our code (a chunk before ``audio-start`` is ignored; a format we cannot
take ends the session).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from ..common.audio import SAMPLE_RATE_HZ, Encoding, MonoPcm16, parse_sample_rate
from ..common.errors import ErrorCode, ServiceError
from ..common.protocol import Closed, End, shown
from ..common.wyoming import EventLimits, WyomingDialect, WyomingListener, WyomingSocket, answer_describes, listeners
from .context import DecodingContext, context_of_terms, join_terms
from .endpointing import TurnMode
from .protocol import Final, SpeechStart, StreamParams
from .serving import AsrRuntime
from .session import AsrSession, AsrSetup

__all__ = ["TranscribeHints", "WyomingAsrSession", "describe", "transcribe_hints", "wyoming_listeners"]

PROGRAM = "voice-services-asr"
_WHISPER = Attribution(name="OpenAI Whisper, run by faster-whisper", url="https://github.com/SYSTRAN/faster-whisper")


def describe(runtime: AsrRuntime) -> Event:
    """The ``info`` event: one program with the running model and the languages it transcribes."""
    model = AsrModel(name=runtime.model_name, attribution=_WHISPER, installed=True, version=None,
                     description=f"Whisper {runtime.model_name}", languages=runtime.engine.languages())
    program = AsrProgram(name=PROGRAM, attribution=_WHISPER, installed=True, version="0.1.0",
                         description="Streaming speech-to-text: Whisper with Silero VAD and Smart Turn",
                         models=[model], supports_transcript_streaming=True)
    return Info(asr=[program]).event()


@dataclass(frozen=True)
class TranscribeHints:
    """What a ``transcribe`` event asks the transcription to favour: unique names (first), domain terms, and the
    context Home Assistant carries from the previous interaction."""

    names: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()
    context: dict | None = None

    @property
    def words(self) -> list[str]:
        """Names, then terms, each once."""
        return list(dict.fromkeys(self.names + self.terms))

    def decoding_context(self, max_chars: int) -> DecodingContext:
        """The hotwords: names, then terms, as many as fit in ``max_chars`` (the rest are left out)."""
        kept: list[str] = []
        for word in self.words:
            if len(join_terms(kept + [word])) > max_chars:
                break
            kept.append(word)
        return context_of_terms(kept, max_chars=max_chars)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(s.strip() for s in value if isinstance(s, str) and s.strip())


def transcribe_hints(event: Event) -> TranscribeHints:
    """A ``transcribe`` event's ``transcript_names``, ``transcript_terms`` and ``context`` (what is not a list of
    strings, or an object, is left out)."""
    data = event.data or {}
    context = data.get("context")
    return TranscribeHints(_strings(data.get("transcript_names")), _strings(data.get("transcript_terms")),
                           context if isinstance(context, dict) else None)


@dataclass(frozen=True)
class _Format:
    """Inbound marker from ``audio-start``: the audio's rate, set before its first chunk is processed."""

    rate: int


class WyomingAsrSession(WyomingDialect, AsrSession):
    ws: WyomingSocket

    def __init__(self, ws: WyomingSocket, runtime: AsrRuntime, setup: AsrSetup, session_id: str) -> None:
        super().__init__(ws, runtime, setup, session_id)
        self.hints = TranscribeHints()
        self._format: tuple[int, int, int] | None = None  # (rate, width, channels) of audio-start
        self._to_pcm16: MonoPcm16 | None = None
        self._finals: list[str] = []
        self._started = False  # transcript-start sent
        self._stopped = False  # transcript and transcript-stop sent

    @classmethod
    def prepare(cls, ws: WyomingSocket, runtime: AsrRuntime) -> AsrSetup:
        params = StreamParams(SAMPLE_RATE_HZ, Encoding.PCM_S16LE, None, partials=False,
                              turn_detection=TurnMode.SMART_TURN)
        return AsrSetup(params, runtime.resolve_language(None), [])

    def describe(self) -> Event:
        return describe(self.runtime)

    # -- reading ---------------------------------------------------------------------------------
    async def on_wyoming(self, event: Event) -> bool:
        if AudioChunk.is_type(event.type):
            return await self._chunk(event)
        if Transcribe.is_type(event.type):
            self._transcribe(event)
        elif AudioStart.is_type(event.type):
            await self._start(event)
        elif AudioStop.is_type(event.type):
            if self._format is None:
                raise ServiceError(ErrorCode.BAD_MESSAGE, "audio-stop before audio-start; ignored")
            await self.inbound.put(End())  # after the accepted audio: its finals, the transcript, then the close
            return True
        return False  # Wyoming servers drop events they do not know

    def _transcribe(self, event: Event) -> None:
        if self._format is not None:
            raise ServiceError(ErrorCode.BAD_MESSAGE, "transcribe after audio-start; ignored")
        self.hints = transcribe_hints(event)
        self.processor.context = self.hints.decoding_context(self.runtime.settings.model.max_context_chars)
        language = event.data.get("language")
        if language:
            try:
                self.processor.language = self.runtime.resolve_language(str(language).split("-")[0].split("_")[0])
            except ValueError as exc:
                raise ServiceError(ErrorCode.BAD_MESSAGE, f"{exc}; using {self.language or 'auto'}") from None

    def _audio_format(self, data: dict) -> tuple[int, int, int]:
        rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rate, width, channels)):
            raise ServiceError(ErrorCode.BAD_AUDIO, f"audio needs integer rate, width and channels, got "
                                                    f"{shown([rate, width, channels])}")
        return rate, width, channels

    async def _start(self, event: Event) -> None:
        if self._format is not None:
            raise ServiceError(ErrorCode.BAD_MESSAGE, "audio-start after audio-start; ignored (one audio stream "
                                                      "a connection)")
        rate, width, channels = self._audio_format(event.data)
        parse_sample_rate(rate)  # bad_audio outside 8-48 kHz
        self._to_pcm16 = MonoPcm16(width, channels)  # bad_audio for a width or channel count we do not take
        self._format = (rate, width, channels)
        await self.inbound.put(_Format(rate))

    async def _chunk(self, event: Event) -> bool:
        if self._format is None or self._to_pcm16 is None:
            raise ServiceError(ErrorCode.BAD_MESSAGE, "audio-chunk before audio-start; chunk ignored")
        chunk_format = self._audio_format(event.data)
        if chunk_format != self._format:
            raise ServiceError(ErrorCode.BAD_MESSAGE, f"audio-chunk format {chunk_format} (rate, width, channels) "
                                                      f"differs from audio-start's {self._format}; chunk ignored")
        return await self.on_binary(self._to_pcm16.convert(event.payload or b""))

    async def handle(self, item: Any) -> bool:
        if isinstance(item, _Format):
            self.processor.set_format(Encoding.PCM_S16LE, item.rate)
            return False
        return await super().handle(item)

    # -- writing ---------------------------------------------------------------------------------
    async def _open_transcript(self) -> None:
        if not self._started:
            self._started = True
            await self.write_event(TranscriptStart(language=self.language).event())

    async def send(self, item: Any) -> bool:
        if isinstance(item, SpeechStart):
            await self._open_transcript()
        elif isinstance(item, Closed):
            await self._stop_transcript()
        else:
            return await super().send(item)
        return False

    async def close(self, code: int, reason: str | None = None) -> None:
        if code == 1001 and not self._stopped:  # draining: the transcript so far before the connection goes
            await self._stop_transcript()
        await super().close(code, reason)

    async def _stop_transcript(self) -> None:
        await self._open_transcript()
        self._stopped = True
        await self.write_event(Transcript(text=" ".join(self._finals), language=self.language).event())
        await self.write_event(TranscriptStop().event())

    async def write_final(self, final: Final) -> None:
        await self._open_transcript()
        text = final.text.strip()
        if text:
            await self.write_event(TranscriptChunk(text=f" {text}" if self._finals else text).event())
            self._finals.append(text)


def wyoming_listeners(runtime: AsrRuntime) -> list[WyomingListener]:
    """The Wyoming server ``wyoming.port`` asks for (none while it is 0)."""
    server = runtime.settings.server

    async def serve(ws: WyomingSocket) -> None:
        if await answer_describes(ws, lambda: describe(runtime), server.idle_timeout_s, server.send_timeout_s):
            await WyomingAsrSession.serve(ws, runtime)

    limits = EventLimits(max_data_bytes=server.max_message_bytes, max_payload_bytes=server.max_frame_bytes)
    return listeners(runtime.settings, runtime, serve, limits)
