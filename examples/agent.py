"""The voice agent shared by ``with_llm.py`` and ``twilio_phone.py``: ASR turns in, LLM tokens out as speech.

Owns one conversation, over the client library's ``AsrStream`` and
``TtsStream`` (``voice_client``: both ride through a dropped connection).
Audio frames from any source go to the ASR stream;
each ``final`` that ends a turn (every reason but ``max_length``) starts a
reply: the bounded :class:`History` is sent to an OpenAI-compatible chat
endpoint with ``stream: true`` (:class:`ChatReplier`; llama.cpp server, vLLM,
Ollama and OpenAI all speak it), and each token is written to the TTS socket
as it arrives, then ``flush``. TTS audio goes to an :class:`AudioOut`. With no
LLM configured, :class:`EchoReplier` answers "You said: ..." instead.

Barge-in: a ``speech_start`` from the ASR while the agent is speaking (a reply
is being generated, or its audio is still being heard) cancels the reply task
(which closes the LLM HTTP stream), sends ``cancel`` to the TTS socket, and
clears the output; TTS audio that arrives before ``cancelled`` is dropped.

Per-turn latency (:class:`TurnStats`): end of speech (the wall time the audio
at the final's ``end`` was sent) -> final -> first LLM token -> first audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from voice_client import (AsrStream, Audio, Cancelled, Done, ErrorEvent, Final, SpeechStart, TtsReady, TtsStream,
                          VoiceClientError)

from audio_io import AudioOut

SYSTEM_PROMPT = ("You are a helpful voice assistant on a phone line. Answer in one to three short spoken sentences, "
                 "plain text only: no lists, no markdown, no emoji.")
END_OF_TURN_REASONS = {"turn", "silence", "commit", "end"}  # "max_length" cuts an utterance mid-turn


# -- the LLM side -------------------------------------------------------------------


@dataclass(frozen=True)
class LlmConfig:
    """``LLM_BASE_URL`` (e.g. http://127.0.0.1:8080/v1), ``LLM_MODEL``, ``LLM_API_KEY``.

    Configured when ``LLM_BASE_URL`` is set, or when only ``LLM_API_KEY`` is (then OpenAI's URL is used)."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "LlmConfig":
        env = dict(os.environ if env is None else env)
        key = env.get("LLM_API_KEY") or None
        base = env.get("LLM_BASE_URL") or ("https://api.openai.com/v1" if key else None)
        return cls(base.rstrip("/") if base else None, env.get("LLM_MODEL") or cls.model, key)

    @property
    def configured(self) -> bool:
        return bool(self.base_url)


class History:
    """The conversation sent to the LLM, bounded in turns and characters (oldest exchanges go first)."""

    def __init__(self, system: str = SYSTEM_PROMPT, max_turns: int = 8, max_chars: int = 6000) -> None:
        self.system = system
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._messages: deque[dict[str, str]] = deque()

    def add(self, role: str, text: str) -> None:
        if text.strip():
            self._messages.append({"role": role, "content": text.strip()})
        while len(self._messages) > 1 and (
                len(self._messages) > 2 * self.max_turns
                or sum(len(m["content"]) for m in self._messages) + len(self.system) > self.max_chars):
            self._messages.popleft()

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, *self._messages]

    @property
    def last_user_text(self) -> str:
        return next((m["content"] for m in reversed(self._messages) if m["role"] == "user"), "")


class EchoReplier:
    """The fallback with no LLM: repeats what it heard."""

    name = "echo (no LLM configured)"

    async def reply(self, history: History) -> AsyncIterator[str]:
        for word in f"You said: {history.last_user_text}".split(" "):
            yield word + " "


class ChatReplier:
    """Streams ``POST {base_url}/chat/completions`` with ``stream: true`` and yields the content deltas."""

    def __init__(self, config: LlmConfig) -> None:
        self.config = config
        self.name = f"{config.model} at {config.base_url}"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.timeout_s, connect=10.0))

    async def reply(self, history: History) -> AsyncIterator[str]:
        body = {"model": self.config.model, "messages": history.messages(), "stream": True}
        # Leaving this block early (a barge-in cancels the task) closes the response: the server sees the client go.
        async with self._client.stream("POST", f"{self.config.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"LLM answered HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content

    async def aclose(self) -> None:
        await self._client.aclose()


def make_replier(config: LlmConfig | None = None, log: Callable[[str], None] = print):
    config = config or LlmConfig.from_env()
    if not config.configured:
        log("No LLM configured (set LLM_BASE_URL, LLM_MODEL and, if needed, LLM_API_KEY; see INTEGRATION.md): "
            "falling back to echo, the agent repeats what it hears.")
        return EchoReplier()
    log(f"LLM: {config.model} at {config.base_url}")
    return ChatReplier(config)


# -- the conversation ------------------------------------------------------------------


@dataclass
class AgentSettings:
    asr_url: str = "ws://127.0.0.1:8001/v1/stream/asr"
    tts_url: str = "ws://127.0.0.1:8002/v1/stream/tts"
    in_sample_rate_hz: int = 16000
    in_encoding: str = "pcm_s16le"  # or "mulaw" (telephony)
    out_sample_rate_hz: int | None = None  # None: the voice's own rate
    out_encoding: str = "pcm_s16le"
    voice: str | None = None
    api_key: str | None = None  # of the speech services, when they have keys configured
    max_history_turns: int = 8
    max_history_chars: int = 6000
    system_prompt: str = SYSTEM_PROMPT


@dataclass
class TurnStats:
    index: int
    user_text: str
    speech_end_at: float | None = None  # wall clock (time.monotonic) of the end of the user's speech
    final_at: float = 0.0
    first_token_at: float | None = None
    first_audio_at: float | None = None
    reply_text: str = ""
    interrupted: bool = False

    @staticmethod
    def _ms(a: float | None, b: float | None) -> str:
        return f"{(b - a) * 1000:.0f} ms" if a is not None and b is not None else "-"

    def line(self) -> str:
        return (f"turn {self.index}: end of speech -> final {self._ms(self.speech_end_at, self.final_at)}, "
                f"-> first token {self._ms(self.final_at, self.first_token_at)}, "
                f"-> first audio {self._ms(self.first_token_at, self.first_audio_at)} "
                f"(total {self._ms(self.speech_end_at, self.first_audio_at)})"
                + (" [interrupted]" if self.interrupted else ""))


@dataclass
class Counters:
    barge_ins: int = 0
    tts_cancelled: int = 0  # `cancelled` events the TTS socket answered
    audio_bytes: int = 0
    dropped_audio_bytes: int = 0  # audio of a cancelled reply that arrived before `cancelled`
    errors: list[dict] = field(default_factory=list)


class VoiceAgent:
    """One conversation over one ASR socket and one TTS socket. ``await run(frames)``."""

    def __init__(self, settings: AgentSettings, replier, out: AudioOut,
                 log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.replier = replier
        self.out = out
        self.log = log
        self.history = History(settings.system_prompt, settings.max_history_turns, settings.max_history_chars)
        self.turns: list[TurnStats] = []
        self.counters = Counters()
        self.on_event: Callable[[dict], None] | None = None  # every ASR/TTS event, for UIs and tests
        self._tts: TtsStream | None = None
        self._tts_reader: asyncio.Task | None = None
        self._reply: asyncio.Task | None = None
        self._reply_done = asyncio.Event()
        self._discarding = False  # between a `cancel` and its `cancelled`
        self._pending_user = ""
        self._accepting = True  # False once the caller has hung up: no new replies
        self._sent: deque[tuple[float, float]] = deque(maxlen=6000)  # (stream seconds sent, wall time)

    # -- public ------------------------------------------------------------------------

    def speaking(self) -> bool:
        return (self._reply is not None and not self._reply.done()) or self.out.busy()

    async def run(self, frames: AsyncIterator[bytes], *, drain: bool = True) -> list[TurnStats]:
        """Converse until ``frames`` ends. ``drain``: let the last reply finish (a file); else stop at once (a
        hang-up)."""
        s = self.settings
        async with AsrStream(s.asr_url, sample_rate=s.in_sample_rate_hz, encoding=s.in_encoding,
                             api_key=s.api_key) as asr:
            await self._ensure_tts()
            sender = asyncio.create_task(self._send_audio(asr, frames, drain))
            try:
                await self._read_asr(asr)  # returns at `closed`, or when the stream fails
                if drain:
                    await self._finish_reply()
                    await self._ensure_tts()
                    assert self._tts is not None and self._tts_reader is not None
                    await self._tts.finish()
                    await asyncio.wait_for(asyncio.shield(self._tts_reader), 30)
            finally:
                if self._tts is not None:
                    await self._tts.close()
                for task in (sender, self._tts_reader, self._reply):
                    if task is not None and not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                await self.out.close()
                if hasattr(self.replier, "aclose"):
                    await self.replier.aclose()
        return self.turns

    # -- ASR ---------------------------------------------------------------------------

    async def _send_audio(self, asr: AsrStream, frames: AsyncIterator[bytes], drain: bool) -> None:
        bytes_per_second = self.settings.in_sample_rate_hz * (1 if self.settings.in_encoding == "mulaw" else 2)
        sent = 0
        async for frame in frames:
            await asr.send_audio(frame)
            sent += len(frame)
            self._sent.append((sent / bytes_per_second, time.monotonic()))
        self._accepting = drain
        await asr.finish()

    def _wall_time_of(self, stream_s: float) -> float | None:
        for seconds, wall in self._sent:
            if seconds >= stream_s:
                return wall
        return None

    async def _read_asr(self, asr: AsrStream) -> None:
        try:
            async for event in asr:  # ends at `closed`
                if self.on_event:
                    self.on_event({"source": "asr", **event.as_dict()})
                if isinstance(event, SpeechStart) and self.speaking():
                    await self.barge_in()
                elif isinstance(event, Final):
                    await self._on_final(event.as_dict())
                elif isinstance(event, ErrorEvent):
                    self._error("ASR", event.as_dict())
        except VoiceClientError as exc:  # a fatal error, or a drop that could not be resumed
            self._error("ASR", {"type": "error", "code": getattr(exc, "code", "connection_lost"), "message": str(exc)})

    def _error(self, source: str, event: dict) -> None:
        self.counters.errors.append(event)
        self.log(f"{source} error {event.get('code')}: {event.get('message')}")

    async def _on_final(self, event: dict) -> None:
        text = event.get("text", "").strip()
        self.log(f"you: {text}  ({event.get('reason')})")
        self._pending_user = f"{self._pending_user} {text}".strip()
        if event.get("reason") not in END_OF_TURN_REASONS or not self._pending_user or not self._accepting:
            return
        if self.speaking():  # a turn ended while the previous reply was still on: it gives way
            await self.barge_in()
        stats = TurnStats(len(self.turns) + 1, self._pending_user, self._wall_time_of(float(event.get("end", 0))),
                          time.monotonic())
        self._pending_user = ""
        self.turns.append(stats)
        self._reply_done.clear()
        self._reply = asyncio.create_task(self._speak_reply(stats))

    # -- the reply -----------------------------------------------------------------------

    async def _speak_reply(self, stats: TurnStats) -> None:
        self.history.add("user", stats.user_text)
        parts: list[str] = []
        try:
            await self._ensure_tts()
            assert self._tts is not None
            async for token in self.replier.reply(self.history):
                if stats.first_token_at is None:
                    stats.first_token_at = time.monotonic()
                parts.append(token)
                await self._tts.send_text(token)
            await self._tts.flush()
            await self._reply_done.wait()
            await self.out.reply_done(stats.index)
        except asyncio.CancelledError:
            stats.interrupted = True
            raise
        except Exception as exc:  # an LLM failure ends this reply, not the conversation
            self.log(f"reply failed: {exc}")
        finally:
            stats.reply_text = "".join(parts).strip()
            self.history.add("assistant", stats.reply_text + (" ..." if stats.interrupted else ""))
            self.log(f"agent: {stats.reply_text}" + (" [interrupted]" if stats.interrupted else ""))
            self.log(stats.line())

    async def barge_in(self) -> None:
        """Stop speaking now: cancel the LLM stream and the TTS, drop what is queued for the listener."""
        self.counters.barge_ins += 1
        self.log("barge-in: the caller speaks, the agent stops")
        if self._tts is not None and self._tts_reader is not None and not self._tts_reader.done():
            self._discarding = True
            await self._tts.cancel()
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reply
        await self.out.clear()

    async def _finish_reply(self) -> None:
        if self._reply is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reply), 120)
        for _ in range(1200):  # the last reply is still being heard; at most 2 minutes
            if not self.out.busy():
                break
            await asyncio.sleep(0.1)

    # -- TTS ----------------------------------------------------------------------------

    async def _ensure_tts(self) -> None:
        """(Re)open the TTS stream: the service closes a session that stays silent past its idle timeout,
        which a quiet phone call easily does, so each reply checks first."""
        if self._tts is not None and self._tts_reader is not None and not self._tts_reader.done():
            return
        s = self.settings
        self._tts = TtsStream(s.tts_url, voice=s.voice, encoding=s.out_encoding, sample_rate=s.out_sample_rate_hz,
                              api_key=s.api_key)
        await self._tts.open()
        self._discarding = False
        self._tts_reader = asyncio.create_task(self._read_tts(self._tts))

    async def _read_tts(self, tts: TtsStream) -> None:
        try:
            async for event in tts:  # ends at `closed`
                if isinstance(event, Audio):
                    if self._discarding:
                        self.counters.dropped_audio_bytes += len(event.data)
                        continue
                    if self.turns and self.turns[-1].first_audio_at is None:
                        self.turns[-1].first_audio_at = time.monotonic()
                    self.counters.audio_bytes += len(event.data)
                    await self.out.play(event.data)
                    continue
                if self.on_event:
                    self.on_event({"source": "tts", **event.as_dict()})
                if isinstance(event, TtsReady):
                    self.out.configure(event.sample_rate, event.encoding)
                elif isinstance(event, Done) and not self._discarding:
                    self._reply_done.set()
                elif isinstance(event, Cancelled):
                    self.counters.tts_cancelled += 1
                    self._discarding = False
                elif isinstance(event, ErrorEvent):
                    self._error("TTS", event.as_dict())
        except VoiceClientError as exc:  # idle timeout or a lost connection: the next reply opens a new stream
            if getattr(exc, "code", None) != "timeout":
                self._error("TTS", {"type": "error", "code": getattr(exc, "code", "connection_lost"),
                                    "message": str(exc)})
