"""Transcription of uploaded files (``POST /v1/transcribe``, ``POST /v1/audio/transcriptions``).

The file is decoded window by window (``server.file_window_s``, off the event
loop) and cut into utterances by the same :class:`~.endpointing.Endpointer`
the live streams use, in ``vad`` mode; every utterance is decoded through the
shared Whisper scheduler exactly like a stream's final (same request, same
batching rule), so streaming a file with ``turn_detection=vad`` and uploading it
give the same text. One upload holds at most a window, its open utterance and
``scheduler.max_batch`` utterances waiting for Whisper, whatever the file's
length; its model requests run in the schedulers' bulk lane, after live work.
Cancelling the transcription (the client left) withdraws everything it queued.
Also owns the response formats (json, text, srt, vtt, verbose_json).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ, AudioFileReader
from ..common.errors import ErrorCode, ServiceError
from ..common.scheduler import Priority
from ..common.vad import VAD_WINDOW_SAMPLES, VadStream
from .buffer import SampleBuffer
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


async def transcribe_file(runtime: AsrRuntime, reader: AudioFileReader, options: FileOptions) -> Transcript:
    started = time.perf_counter()
    try:
        language = runtime.resolve_language(options.language)
    except ValueError as exc:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, str(exc)) from None
    s = runtime.settings
    endpointer = Endpointer(runtime.endpoint_options(TurnMode.VAD), runtime.detector_options())
    stream = VadStream()
    buffer = SampleBuffer()
    vad_position = 0
    in_flight = asyncio.Semaphore(max(2, s.scheduler.max_batch))
    decodes: list[tuple[Ended, asyncio.Task]] = []
    keep_back = (s.vad.speech_pad_ms + s.vad.min_speech_ms) * SAMPLE_RATE_HZ // 1000 + 4 * VAD_WINDOW_SAMPLES

    async def decode(ended: Ended, audio: np.ndarray, prompt: str | None) -> DecodeResult:
        try:
            request = DecodeRequest(audio=audio, beam_size=s.model.beam_size, word_timestamps=options.word_timestamps,
                                    language=language, prompt=prompt, temperature=options.temperature, final=True)
            return await runtime.decode_final(request, priority=Priority.BULK)
        finally:
            in_flight.release()

    async def submit(actions) -> None:
        for ended in (a for a in actions if isinstance(a, Ended) and a.end_sample > a.start_sample):
            await in_flight.acquire()  # at most max_batch utterances of this upload wait for Whisper
            prompt = options.prompt if not decodes else None
            task = asyncio.ensure_future(decode(ended, buffer.slice(ended.start_sample, ended.end_sample), prompt))
            decodes.append((ended, task))

    try:
        window = int(s.server.file_window_s * SAMPLE_RATE_HZ)
        while (chunk := await asyncio.to_thread(reader.read, window)) is not None:
            buffer.append(chunk)
            while (windows := min(VAD_CHUNK_SAMPLES, buffer.end - vad_position) // VAD_WINDOW_SAMPLES) > 0:
                audio = buffer.slice(vad_position, vad_position + windows * VAD_WINDOW_SAMPLES)
                vad_position += windows * VAD_WINDOW_SAMPLES
                for probability in await runtime.speech_probabilities(stream, audio, Priority.BULK):
                    await submit(endpointer.push(float(probability)))
            keep = vad_position - keep_back
            if endpointer.in_utterance:
                keep = min(keep, endpointer.start_sample)
            buffer.discard_before(keep)
        if endpointer.in_utterance:
            speaking = endpointer.detector.state is SpeechState.SPEAKING
            await submit(endpointer.split(EndReason.END, buffer.end if speaking else None))
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
