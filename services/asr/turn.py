"""Semantic end-of-turn detection for the ASR service with Smart Turn v3.

This module owns ``SmartTurnModel``, the process-wide, thread-safe, stateless
wrapper around the Smart Turn v3.2 ONNX classifier bundled with pipecat-ai
(a batch of 16 kHz mono utterances in, one onnxruntime run, P(turn complete)
out), the model's input features (last 8 s, zero left-padding, waveform
normalised to zero mean / unit variance, 80-bin Whisper log-mel; numpy float64,
bit-identical to pipecat's ``LocalSmartTurnAnalyzerV3``), and ``TurnPolicy``,
the pure rule that turns a probability, the current silence and the final's
text into a ``TurnDecision``. It owns no audio buffering, VAD, resampling or
timers: the endpointer decides when to check, and ends the utterance itself
after its hard max silence.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view

from ..common.audio import SAMPLE_RATE_HZ
from ..common.cpu import int8_is_exact

__all__ = [
    "MODEL_FILENAME",
    "N_FRAMES",
    "N_MELS",
    "TURN_WINDOW_SAMPLES",
    "SmartTurnModel",
    "TurnDecision",
    "TurnPolicy",
    "bundled_model_path",
    "sounds_unfinished",
    "last_window",
    "log_mel_features",
]

WINDOW_SECONDS = 8
TURN_WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE_HZ  # 128000: the audio the model sees
N_MELS = 80
N_FFT = 400
HOP_LENGTH = 160
N_FRAMES = TURN_WINDOW_SAMPLES // HOP_LENGTH  # 800
MODEL_FILENAME = "smart-turn-v3.2-cpu.onnx"
_MODEL_SUBPATH = ("audio", "turn", "smart_turn", "data", MODEL_FILENAME)
# Same epsilon as transformers' zero_mean_unit_var_norm / pipecat's vendored copy.
_NORM_VARIANCE_EPS = 1e-7

# Whisper log-mel constants (transformers' WhisperFeatureExtractor defaults).
_MEL_FLOOR = 1e-10


def _hertz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz_slaney(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return freq


def _mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, float64, shape [n_fft // 2 + 1, 80]."""
    edges = np.array([0.0, SAMPLE_RATE_HZ / 2.0], dtype=np.float64)
    mel_min, mel_max = _hertz_to_mel_slaney(edges)
    filter_freqs = _mel_to_hertz_slaney(np.linspace(mel_min, mel_max, N_MELS + 2))
    fft_freqs = np.linspace(0, SAMPLE_RATE_HZ // 2, N_FFT // 2 + 1)
    filter_diff = np.diff(filter_freqs)
    slopes = np.expand_dims(filter_freqs, 0) - np.expand_dims(fft_freqs, 1)
    down_slopes = -slopes[:, :-2] / filter_diff[:-1]
    up_slopes = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down_slopes, up_slopes))
    filters *= np.expand_dims(2.0 / (filter_freqs[2 : N_MELS + 2] - filter_freqs[:N_MELS]), 0)
    return filters


# Why not faster-whisper's FeatureExtractor: called with padding=0 on an 8 s
# buffer it agrees with the reference to ~4e-6, but it works in float32 /
# complex64 and the quantised Smart Turn model is so sensitive near its decision
# boundary that a 1e-6 feature perturbation moves P(complete) by up to +-0.15
# (e.g. austen_0870_incomplete: 0.321 reference vs 0.221 with faster-whisper
# features). So this is the transformers/pipecat computation op for op in
# float64, which reproduces pipecat's LocalSmartTurnAnalyzerV3 exactly.
_MEL_FILTERS_T = _mel_filterbank().T  # [80, 201]
_HANN_WINDOW = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, float64


def _log_mel(x: np.ndarray) -> np.ndarray:
    """Whisper log-mel of an exactly-8 s float32 waveform -> float32 [80, 800]."""
    pad = N_FFT // 2
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")  # center=True
    frames = sliding_window_view(padded, N_FFT)[::HOP_LENGTH]  # [801, 400]
    power = (np.abs(np.fft.rfft(frames * _HANN_WINDOW, axis=-1)) ** 2).T  # [201, 801]
    log_spec = np.log10(np.maximum(_MEL_FLOOR, _MEL_FILTERS_T @ power))
    log_spec = log_spec[:, :-1]  # Whisper drops the last STFT frame -> 800 frames
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def bundled_model_path() -> Path:
    """Path of the Smart Turn v3.2 CPU model shipped inside ``pipecat-ai``.

    Found via the package's import spec without importing pipecat (its import
    is slow and logs). The file is not checked for existence here.
    """
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Smart Turn model {MODEL_FILENAME!r} not found: the 'pipecat' package "
            "(pipecat-ai) is not installed; pass an explicit model path"
        )
    return Path(next(iter(spec.submodule_search_locations)), *_MODEL_SUBPATH)


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of ``audio`` as float32, left-padded with zeros to 128000 samples."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
    if x.size >= TURN_WINDOW_SAMPLES:
        return np.ascontiguousarray(x[-TURN_WINDOW_SAMPLES:])
    return np.pad(x, (TURN_WINDOW_SAMPLES - x.size, 0))


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """Smart Turn v3 model input for one utterance: float32 array of shape [80, 800].

    Mirrors pipecat's ``LocalSmartTurnAnalyzerV3._predict_endpoint``: last 8 s,
    zero left-padding, zero-mean/unit-variance over the padded buffer, then the
    Whisper log-mel spectrogram.
    """
    x = last_window(audio)
    # Normalised in float32 over the padded buffer, as the reference does.
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_VARIANCE_EPS)
    return _log_mel(x)


class SmartTurnModel:
    """Shared weights only; thread-safe; no per-session state.

    One instance per process; ``predict`` may be called concurrently from
    several threads (onnxruntime sessions are safe to ``run`` concurrently).
    """

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, path: str | os.PathLike[str] | None = None, *, threads: int = 1) -> None:
        """Load the ONNX model.

        Args:
            path: ONNX file; ``None`` uses the file bundled with pipecat-ai.
            threads: onnxruntime intra-op threads per ``predict`` call.

        Raises:
            FileNotFoundError: the model file does not exist (the message names the path).
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path: Path = Path(path) if path is not None else bundled_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Smart Turn model file not found: {self.path}")
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        # With threads > 1, onnxruntime's workers would spin between runs on cores Whisper shares.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = False  # the arena keeps the largest batch's buffers for good (RELIABILITY.md)
        # The model is int8. x86 CPUs without VNNI (AVX2, AVX-512F) saturate 16-bit sums in u8s8 products, which
        # moves scores; this promotes them to 16 bits there, so every CPU gives the reference scores. Where int8
        # is exact already it would only cost time (1.6 x per check).
        self.promotes_int8_products: bool = not int8_is_exact()
        if self.promotes_int8_products:
            options.add_session_config_entry("session.x64quantprecision", "1")
        self._session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_name: str = self._session.get_inputs()[0].name  # "input_features"

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Model input for a batch: float32 array of shape [batch, 80, 800]."""
        if len(audios) == 0:
            return np.zeros((0, N_MELS, N_FRAMES), dtype=np.float32)
        return np.stack([log_mel_features(a) for a in audios])

    def predict(self, audios: Sequence[np.ndarray]) -> list[float]:
        """P(turn complete) for each utterance, in order.

        Args:
            audios: float32 mono 16 kHz utterances of any length, including the
                trailing silence seen so far; only the last 8 s of each is used.

        Returns:
            One probability in [0, 1] per input (the model's sigmoid output),
            computed with a single onnxruntime run for the whole batch.
        """
        if len(audios) == 0:
            return []
        batch = self.features(audios)
        (scores,) = self._session.run(None, {self._input_name: batch})
        return [float(p) for p in np.asarray(scores, dtype=np.float64).reshape(len(audios))]


class TurnDecision(enum.Enum):
    """Outcome of one end-of-turn check."""

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


CONTINUING_WORDS = frozenset("""
    a an the and or but nor of to in on at by for with from into onto upon about as than that which who whom whose
    what when where how if because since while although though unless until whether been being my your his her its
    our their this these those very such every each some any no seems seem seemed appears became become
""".split())
"""Words a finished English sentence does not end with: articles, conjunctions, prepositions, relative and
question words, possessives, linking verbs. (Auxiliaries are not here: "than he was." ends a sentence.)"""


SENTENCE_CLOSERS = frozenset(".?!\"')\u3002\uff1f\uff01\uff61\u061f\u0964\u300d\u300f\u201d\u2019\uff09")
"""Characters a finished sentence ends with, in the scripts Whisper writes: . ? ! and closing quotes or brackets,
and their CJK, Arabic and Devanagari forms (。？！ ؟ ।)."""


def sounds_unfinished(text: str) -> bool:
    """True when a transcript does not end a sentence: nothing heard at all, no closing punctuation (Whisper
    closes almost every finished utterance with ``.``, ``?`` or ``!``), a trailing ellipsis (Whisper's mark for
    speech that trails off: "Why'd you..."), comma, colon, semicolon or dash, or a last word from
    :data:`CONTINUING_WORDS`. A full stop alone proves nothing; what precedes it does ("...to consider how.")."""
    words = text.strip().split()
    if not words:
        return True
    last = words[-1]
    if last[-1] not in SENTENCE_CLOSERS or last.endswith("..."):  # (an ellipsis character is no closer either)
        return True
    return re.sub(r"[^\w']", "", last.lower()) in CONTINUING_WORDS


@dataclass
class TurnPolicy:
    """End of turn: Smart Turn's P(complete), the silence so far, and the final's own words.

    ``curve`` gives the P(complete) required to end the turn as the pause grows: ``(silence_ms, probability)``
    points, linear between them. Before its first point no check is made; after its last point the model no
    longer ends the turn and the service's silence timeout (``turn.max_silence_ms``) does. With ``text`` (the
    speculative final's transcript, decoded from the same audio while the pause began) a turn whose words stop
    mid-sentence is never complete (:func:`sounds_unfinished`). The final cannot be sent before it is decoded,
    so waiting for that text costs no latency.

    With ``words`` the final's closing mark weighs in too: ``end_probability`` is the probability Whisper's
    decoder (a language model of the transcript, hearing the audio) gave the last token, usually the ``.`` it
    closed the sentence with. Below ``closing_min`` the stop is a guess (a clause end read as a sentence end:
    "Had he married a more amiable woman.", 0.55) and the model cannot end the turn; at ``closing_sure`` or
    above, a P(complete) of ``sure_probability`` is enough (short answers Smart Turn is unsure of: "This is
    Diane in New Jersey.", 0.94). Without the final's text yet, the curve alone decides, as without ``words``.

    Why a high, flat curve by default: Smart Turn scores a sentence cut off mid-way *higher* the longer the pause
    after it (``scripts/bench_turns.py --simulate`` shows the scores), while complete sentences it recognises
    score high from the first check. A threshold that falls with the silence only adds cut-offs. The reasoning:
    ARCHITECTURE.md, "Turn-taking"; the figures, and how the closing thresholds were chosen on the tuning set
    (``bench_turns.py --sweep``): docs/benchmarks.md.
    """

    curve: tuple[tuple[float, float], ...] = ((96.0, 0.97), (576.0, 0.97))
    text_cues: bool = True
    words: bool = True
    closing_min: float = 0.6
    closing_sure: float = 0.9
    sure_probability: float = 0.5

    def __post_init__(self) -> None:
        points = tuple((float(ms), float(p)) for ms, p in self.curve)
        if not points or any(ms < 0 or not 0.0 <= p <= 1.0 for ms, p in points):
            raise ValueError(f"curve: (silence_ms >= 0, probability in [0, 1]) points, got {self.curve}")
        if [ms for ms, _ in points] != sorted(ms for ms, _ in points):
            raise ValueError("curve: silence_ms must increase")
        for name in ("closing_min", "closing_sure", "sure_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        self.curve = points

    @property
    def first_check_ms(self) -> float:
        return self.curve[0][0]

    @property
    def last_check_ms(self) -> float:
        return self.curve[-1][0]

    def required(self, silence_ms: float) -> float | None:
        """P(complete) needed at this silence; None outside the curve (the model does not decide there)."""
        if silence_ms < self.curve[0][0] or silence_ms > self.curve[-1][0]:
            return None
        for (ms0, p0), (ms1, p1) in zip(self.curve, self.curve[1:]):
            if silence_ms <= ms1:
                return p0 if ms1 == ms0 else p0 + (p1 - p0) * (silence_ms - ms0) / (ms1 - ms0)
        return self.curve[-1][1]

    def wants_text(self, probability: float, silence_ms: float) -> bool:
        """Whether the final's words could make this check end the turn (so the caller should wait for them)."""
        required = self.required(silence_ms)
        if required is None:
            return False
        if self.words:
            required = min(required, self.sure_probability)
        return probability >= required and (self.text_cues or self.words)

    def decide(self, probability: float, silence_ms: float, text: str | None = None,
               end_probability: float | None = None) -> TurnDecision:
        """COMPLETE if the model is sure enough for this pause and the words (when known) agree."""
        required = self.required(silence_ms)
        if required is None:
            return TurnDecision.INCOMPLETE
        if text is not None and self.text_cues and sounds_unfinished(text):
            return TurnDecision.INCOMPLETE
        if text is not None and self.words and end_probability is not None:
            if end_probability < self.closing_min:
                return TurnDecision.INCOMPLETE
            if end_probability >= self.closing_sure:
                required = min(required, self.sure_probability)
        return TurnDecision.COMPLETE if probability >= required else TurnDecision.INCOMPLETE
