"""Transcription of uploaded files (``POST /v1/transcribe``, ``POST /v1/audio/transcriptions``).

The file is decoded window by window (``server.file_window_s``, off the event
loop) and cut into utterances by the same :class:`~.segmenter.Segmenter` the
live streams use, in ``vad`` mode; every utterance is decoded through the
shared Whisper scheduler exactly like a stream's final (same request, same
batching rule), so streaming a file with ``turn_detection=vad`` and uploading it
give the same text; hotwords and prompt go with every utterance, as on a
stream. One upload holds at most a window, its open utterance and
``scheduler.max_batch`` utterances waiting for Whisper, whatever the file's
length; its model requests run in the schedulers' bulk lane, after live work.
Cancelling the transcription (the client left) withdraws everything it queued.
Also owns the response formats (json, text, srt, vtt, verbose_json).
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ, AudioFileReader
from ..common.errors import ErrorCode, ServiceError
from ..common.scheduler import Priority
from ..common.vad import VAD_WINDOW_SAMPLES
from .endpointing import Action, Ended, EndReason, TurnMode
from .engine import DecodeRequest, DecodeResult
from .segmenter import Segmenter
from .serving import AsrRuntime

VAD_CHUNK_SAMPLES = VAD_WINDOW_SAMPLES * 320  # ~10 s per VAD request keeps the shared VAD fair


@dataclass
class FileOptions:
    language: str | None = None
    word_timestamps: bool = False
    hotwords: str | None = None  # checked by the caller (context.checked_context)
    prompt: str | None = None  # given to every segment, as hotwords are (segments are decoded independently)
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


async def transcribe_file(runtime: AsrRuntime, reader: AudioFileReader, options: FileOptions) -> Transcript:
    started = time.perf_counter()
    try:
        language = runtime.resolve_language(options.language)
    except ValueError as exc:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, str(exc)) from None
    s = runtime.settings
    segmenter = Segmenter(runtime.endpoint_options(TurnMode.VAD), runtime.detector_options(), VAD_CHUNK_SAMPLES)
    score = functools.partial(runtime.speech_probabilities, priority=Priority.BULK)
    in_flight = asyncio.Semaphore(max(2, s.scheduler.max_batch))
    decodes: list[tuple[Ended, asyncio.Task]] = []

    async def decode(ended: Ended, audio: np.ndarray) -> DecodeResult:
        try:
            request = DecodeRequest(audio=audio, beam_size=s.model.beam_size, word_timestamps=options.word_timestamps,
                                    language=language, hotwords=options.hotwords or None,
                                    prompt=options.prompt or None, temperature=options.temperature, final=True)
            return await runtime.decode_final(request, priority=Priority.BULK)
        finally:
            in_flight.release()

    async def submit(action: Action) -> None:
        if isinstance(action, Ended) and action.end_sample > action.start_sample:
            await in_flight.acquire()  # at most max_batch utterances of this upload wait for Whisper
            audio = segmenter.slice(action.start_sample, action.end_sample)
            decodes.append((action, asyncio.ensure_future(decode(action, audio))))

    try:
        window = int(s.server.file_window_s * SAMPLE_RATE_HZ)
        while (chunk := await asyncio.to_thread(reader.read, window)) is not None:
            segmenter.append(chunk)
            async with aclosing(segmenter.detect_async(score)) as actions:
                async for action in actions:
                    await submit(action)
            segmenter.trim()
        for action in segmenter.close(EndReason.END):
            await submit(action)
        results = await asyncio.gather(*(task for _, task in decodes))
    finally:
        for _, task in decodes:
            task.cancel()
    if reader.samples == 0:
        raise ServiceError(ErrorCode.BAD_AUDIO, "the file contains no audio samples")
    segments: list[Segment] = []
    for (u, _), result in zip(decodes, results):
        text = result.text.strip()
        if not text:
            continue
        offset = u.start_sample / SAMPLE_RATE_HZ
        words = [w.as_dict(offset) for w in result.words]
        segments.append(Segment(len(segments), round(offset, 3), round(u.end_sample / SAMPLE_RATE_HZ, 3), text, words,
                                result.avg_logprob, result.no_speech_prob))
    duration = reader.samples / SAMPLE_RATE_HZ
    detected = next((r.language for r in results), language or s.model.language)
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
