"""A Pipecat TTS service for the native ``WS /v1/stream/tts`` socket, with word timestamps.

    from pipecat_tts import VoiceTTSService
    tts = VoiceTTSService(base_url="ws://127.0.0.1:8002", sample_rate=24000)

Pipecat's own ``DeepgramTTSService`` works against our ``/v1/speak`` too, but Deepgram's streaming TTS has no word
timings. This service asks the native socket for them (``word_timings=true``) and hands them to Pipecat the way
Pipecat's Cartesia and ElevenLabs services do: ``push_text_frames=False`` and ``add_word_timestamps`` with each
word's start in seconds from the audio context's first audio. Pipecat then pushes a ``TTSTextFrame`` per word at
the time it is played, and the assistant's context aggregator keeps only the words pushed before an interruption:
at a barge-in the agent's context is cut at what the user heard, not at what the LLM wrote.

The mapping: a Pipecat audio context is one reply; each ``run_tts`` sends its sentence as ``text``,
``flush_audio`` sends ``flush``, and the server's ``done`` ends the context (``TTSStoppedFrame``). An interruption
sends ``cancel``; audio and words that arrive before its ``cancelled`` belong to the cancelled reply and are
dropped (but still counted: the server's audio clock counts every sample it sent). Word times arrive in the
session's audio time (samples since its first audio); the service keeps the same clock and subtracts the sample
where the context's first audio began (its first ``segment``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from urllib.parse import urlencode

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import WebsocketTTSService
from websockets.protocol import State


class VoiceTTSService(WebsocketTTSService):
    """Our TTS service's native socket as a Pipecat word-timestamp TTS service (16-bit PCM at ``sample_rate``)."""

    def __init__(self, *, base_url: str = "ws://127.0.0.1:8002", voice: str | None = None,
                 api_key: str | None = None, sample_rate: int | None = None, **kwargs) -> None:
        super().__init__(sample_rate=sample_rate, push_text_frames=False, pause_frame_processing=True,
                         push_stop_frames=False, push_start_frame=True, append_trailing_space=True,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._receive_task = None
        self._clock = 0  # samples the session has sent (its audio clock)
        self._context_start: int | None = None  # the clock where the playing context's audio began
        self._cancelling = False  # a cancel was sent and its cancelled has not come

    def can_generate_metrics(self) -> bool:
        return True

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket and not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._websocket and self._websocket.state is State.OPEN:
            return
        query = {"word_timings": "true", "sample_rate": self.sample_rate, "encoding": "pcm_s16le"}
        if self._settings.voice:
            query["voice"] = self._settings.voice
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            self._websocket = await self._websocket_connect(
                f"{self._base_url}/v1/stream/tts?{urlencode(query)}", additional_headers=headers)
            self._clock, self._context_start, self._cancelling = 0, None, False  # a new session, a new clock
            await self._call_event_handler("on_connected")
        except Exception as e:  # noqa: BLE001 - reported as Pipecat services do
            self._websocket = None
            await self.push_error_frame(ErrorFrame(error=f"{self} error: {e}", exception=e))
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _disconnect_websocket(self) -> None:
        try:
            await self.stop_all_metrics()
            if self._websocket:
                await self._websocket.close()
        finally:
            self._websocket = None
            await self._call_event_handler("on_disconnected")

    def _get_websocket(self):
        if self._websocket:
            return self._websocket
        raise Exception("Websocket not connected")

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: ``cancel`` stops the server at once; what it sent of the old reply until ``cancelled`` is
        dropped here."""
        await self.stop_all_metrics()
        if self._websocket:
            self._cancelling = True
            self._context_start = None
            try:
                await self._websocket.send(json.dumps({"type": "cancel"}))
            except Exception as e:  # noqa: BLE001
                logger.error(f"{self} error sending cancel: {e}")
        await super().on_audio_context_interrupted(context_id)

    async def flush_audio(self, context_id: str | None = None) -> None:
        if self._websocket:
            await self._websocket.send(json.dumps({"type": "flush"}))

    async def _receive_messages(self) -> None:
        async for message in self._get_websocket():
            if isinstance(message, bytes):
                self._clock += len(message) // 2
                if not self._cancelling:
                    ctx = self.get_active_audio_context_id()
                    await self.append_to_audio_context(ctx, TTSAudioRawFrame(message, self.sample_rate, 1,
                                                                             context_id=ctx))
                continue
            event = json.loads(message)
            kind = event.get("type")
            if kind == "cancelled":
                self._cancelling = False
            elif self._cancelling:
                continue  # the cancelled reply's segments, words and done
            elif kind == "segment":
                if self._context_start is None:
                    self._context_start = self._clock  # the context's first audio starts here
            elif kind == "words":
                await self._words(event)
            elif kind == "done":
                ctx = self.get_active_audio_context_id()
                self._context_start = None
                await self.append_to_audio_context(ctx, TTSStoppedFrame(context_id=ctx))
                await self.remove_audio_context(ctx)
            elif kind == "error":
                await self.push_error_frame(ErrorFrame(error=f"{self}: {event.get('code')}: {event.get('message')}"))

    async def _words(self, event: dict) -> None:
        """Word starts in seconds from the context's first audio, as ``add_word_timestamps`` takes them."""
        start = self._context_start if self._context_start is not None else self._clock
        await self.add_word_timestamps([(w["word"], (w["start_sample"] - start) / self.sample_rate)
                                        for w in event.get("words", [])], self.get_active_audio_context_id())

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        try:
            if not self._websocket or self._websocket.state is State.CLOSED:
                await self._connect()
            await self._get_websocket().send(json.dumps({"type": "text", "text": text}))
            await self.start_tts_usage_metrics(text)
            yield None  # the audio and the words arrive on the receive task
        except Exception as e:  # noqa: BLE001
            yield ErrorFrame(error=f"{self} error: {e}")
