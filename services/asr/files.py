"""Transcription of whole files (``POST /v1/transcribe``, ``POST /v1/audio/transcriptions``).

The audio is cut into utterances by the same :class:`~.endpointing.Endpointer`
the live streams use, in ``vad`` mode, and every utterance is decoded through
the shared Whisper scheduler exactly like a stream's final (same request, same
batching rule): so streaming a file with ``turn_detection=vad`` and uploading
it give the same text. Also owns the response formats (json, text, srt, vtt,
verbose_json).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ
from ..common.errors import ErrorCode, ServiceError
from ..common.scheduler import Priority
from ..common.vad import VAD_WINDOW_SAMPLES, VadStream
from .endpointing import Ended, Endpointer, EndReason, SpeechState, TurnMode
from .engine import DecodeRequest, DecodeResult
from .serving import AsrRuntime

VAD_CHUNK_SAMPLES = VAD_WINDOW_SAMPLES * 320  # ~10 s per VAD request keeps the shared VAD fair


@dataclass
class FileOptions:
    language: str | None = None
    word_timestamps: bool = False
    prompt: str | None = None
    temperature: float = 0.0


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: list[dict] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment]
    processing_ms: float


async def find_utterances(runtime: AsrRuntime, audio: np.ndarray) -> list[Ended]:
    endpointer = Endpointer(runtime.endpoint_options(TurnMode.VAD), runtime.detector_options())
    stream = VadStream()
    utterances: list[Ended] = []
    usable = audio.size - audio.size % VAD_WINDOW_SAMPLES
    for start in range(0, usable, VAD_CHUNK_SAMPLES):
        chunk = audio[start:min(start + VAD_CHUNK_SAMPLES, usable)]
        for probability in await runtime.speech_probabilities(stream, chunk):
            utterances.extend(a for a in endpointer.push(float(probability)) if isinstance(a, Ended))
    if endpointer.in_utterance:
        speaking = endpointer.detector.state is SpeechState.SPEAKING
        utterances.extend(a for a in endpointer.split(EndReason.END, audio.size if speaking else None)
                          if isinstance(a, Ended))
    return [u for u in utterances if u.end_sample > u.start_sample]


async def transcribe_audio(runtime: AsrRuntime, audio: np.ndarray, options: FileOptions) -> Transcript:
    started = time.perf_counter()
    try:
        language = runtime.resolve_language(options.language)
    except ValueError as exc:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, str(exc)) from None
    duration = audio.size / SAMPLE_RATE_HZ
    limit = runtime.settings.server.max_upload_duration_s
    if duration > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"audio of {duration:.0f} s exceeds the limit of {limit:.0f} s")
    utterances = await find_utterances(runtime, audio)
    window = asyncio.Semaphore(max(2, runtime.settings.scheduler.max_batch))

    async def decode(u: Ended, prompt: str | None) -> DecodeResult:
        async with window:
            request = DecodeRequest(audio=audio[u.start_sample:u.end_sample], beam_size=runtime.settings.model.beam_size,
                                    word_timestamps=options.word_timestamps, language=language, prompt=prompt,
                                    temperature=options.temperature)
            return await runtime.decode_final(request, priority=Priority.NORMAL)

    results = await asyncio.gather(*(decode(u, options.prompt if i == 0 else None) for i, u in enumerate(utterances)))
    segments: list[Segment] = []
    for u, result in zip(utterances, results):
        text = result.text.strip()
        if not text:
            continue
        offset = u.start_sample / SAMPLE_RATE_HZ
        words = [w.as_dict(offset) for w in result.words]
        segments.append(Segment(len(segments), round(offset, 3), round(u.end_sample / SAMPLE_RATE_HZ, 3), text, words,
                                result.avg_logprob, result.no_speech_prob))
    detected = next((r.language for r in results), language or runtime.settings.model.language)
    runtime.metrics.file_seconds.inc(duration)
    return Transcript(" ".join(s.text for s in segments), detected, round(duration, 3), segments,
                      round((time.perf_counter() - started) * 1000, 1))


# -- response formats ------------------------------------------------------------------

def as_contract_json(t: Transcript, word_timestamps: bool) -> dict:
    return {
        "text": t.text, "language": t.language, "duration": t.duration,
        "segments": [{"id": s.id, "start": s.start, "end": s.end, "text": s.text,
                      "words": s.words if word_timestamps else []} for s in t.segments],
        "processing_ms": t.processing_ms,
    }


def as_verbose_json(t: Transcript, words: bool) -> dict:
    out = {
        "task": "transcribe", "language": t.language, "duration": t.duration, "text": t.text,
        "segments": [{"id": s.id, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                      "temperature": 0.0, "avg_logprob": round(s.avg_logprob, 4), "compression_ratio": 0.0,
                      "no_speech_prob": round(s.no_speech_prob, 4)} for s in t.segments],
    }
    if words:
        out["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]} for s in t.segments for w in s.words]
    return out


def _stamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def as_srt(t: Transcript) -> str:
    blocks = [f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n" for i, s in enumerate(t.segments, 1)]
    return "\n".join(blocks)


def as_vtt(t: Transcript) -> str:
    blocks = [f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
