"""Word timings on WS /v1/stream/tts (``word_timings=true``): the real service in a subprocess with the real Piper
voice, real sockets; the project's own ASR model (word timestamps) says where each word really is in the audio.
Also the client library's heard text at a cancel, and the Pipecat glue (examples/pipecat_tts.py)."""

from __future__ import annotations

import asyncio
import difflib
import json
import sys

import numpy as np
import pytest
import websockets

from conftest import ROOT
from services.asr.engine import DecodeRequest
from services.common.audio import resample
from services.tts.alignment import _fill
from services.tts.words import WordRate, WordSpan, split_words, spread
from tts_support import Received, Transcriber, mostly_heard, pcm_to_float, recv_until, speak, words as plain_words

sys.path.insert(0, str(ROOT / "examples"))

# Held out: not one of the sentences the alignment was tried on while it was written.
HELD_OUT = ("Seven brave sailors carried fresh lemons across the windy harbour before sunrise. "
            "Nobody expected the old lighthouse keeper to sing.")
LONG = ("This reply goes on for a long while so that there is plenty of audio left when the listener interrupts it. "
        "It talks about the weather, the garden, the trains and the price of bread, one sentence after another, "
        "until somebody finally stops it.")


@pytest.fixture(scope="module")
def tts(examples_tts):
    return examples_tts  # Piper with the defaults, deterministic: nothing here needs a service of its own


@pytest.fixture(scope="module")
def asr():
    return Transcriber()


def check_order(got: Received, bytes_per_sample: int = 2) -> list[dict]:
    """Every word event arrives before the audio past its start, and its words spell its segment's text."""
    received = 0
    texts = {s["index"]: s["text"] for s in got.of("segment")}
    timed: list[dict] = []
    for event in got.events:
        if not isinstance(event, dict):
            received += event[1] // bytes_per_sample
        elif event["type"] == "words":
            for word in event["words"]:
                assert word["start_sample"] >= received, (word, received)
                assert word["end_sample"] >= word["start_sample"]
            assert " ".join(w["word"] for w in event["words"]) in texts[event["segment"]]
            assert event["estimated"] is False  # Piper aligns
            timed.extend(event["words"])
    assert " ".join(w["word"] for w in timed) == " ".join(texts[i] for i in sorted(texts))
    starts = [w["start_sample"] for w in timed]
    assert starts == sorted(starts) and timed[-1]["end_sample"] <= received
    return timed


# -- the words of a piece, without a model ------------------------------------------------------------------------

def test_split_words_keeps_punctuation_on_its_word():
    assert split_words("Well - it's 42, you know... right?") == ["Well -", "it's", "42,", "you", "know...", "right?"]
    assert split_words("\u201c Quoted\u201d text") == ["\u201c Quoted\u201d", "text"]
    assert " ".join(split_words("  Hello   there  ")) == "Hello there"


def test_spread_and_fill_cover_the_gaps_by_characters():
    spans = spread(["a", "bbb"], 100, 160)
    assert spans == [WordSpan("a", 100, 120), WordSpan("bbb", 120, 160)]
    filled = _fill(["one", "two", "three"], [(10, 20), None, (50, 60)], 0, 70)
    assert filled == [WordSpan("one", 10, 20), WordSpan("two", 20, 50), WordSpan("three", 50, 60)]
    rate = WordRate(0.1)
    rate.learn("abcd", 1.0)  # 5 weighted characters in 1 s: halfway from 0.1 to 0.2
    assert rate.s_per_char == pytest.approx(0.15)


def test_the_fallback_estimates_before_the_first_audio_and_learns_the_pace():
    """An engine that reports no alignment (Chatterbox; here Piper told not to) gets estimated words ahead of its
    first chunk, from a rate the session learns from what it has spoken."""
    from services.tts.formats import AudioEncoder
    from services.tts.engine import SynthesisJob
    from services.tts.pipe import piece_pipe
    from services.tts.piper import EMBEDDED_VOICE, PiperEngine, embedded_voice_files

    engine = PiperEngine({EMBEDDED_VOICE: embedded_voice_files()}, cpu_threads=2, noise_scale=0, noise_w_scale=0)
    engine.aligns_words = False
    rate = WordRate()

    async def piece(text: str) -> tuple[list, int]:
        job = SynthesisJob(text, EMBEDDED_VOICE)
        pipe = piece_pipe(job, AudioEncoder("pcm", 16000), 60.0, words=rate, aligned=False)
        done = asyncio.get_running_loop().run_in_executor(None, lambda: (engine.synthesize(job), job.on_done()))
        done.add_done_callback(lambda _: pipe.end())
        items = [item async for item in pipe]
        await done
        return items, sum(len(i) for i in items if isinstance(i, bytes)) // 2

    text = "The quiet river wound slowly past the mill and under the old stone bridge."
    first, samples = asyncio.run(piece(text))
    assert not isinstance(first[0], bytes) and first[0].estimated  # before any audio
    assert [s.word for s in first[0].spans] == text.split()
    assert not any(not isinstance(i, bytes) for i in first[1:])
    guess_error = abs(first[0].spans[-1].end - samples)
    second, samples = asyncio.run(piece(text))
    assert abs(second[0].spans[-1].end - samples) < guess_error  # learnt from the first piece


def test_reply_words_and_the_client_clock_across_a_resume():
    from voice_client.backoff import ResumePolicy
    from voice_client.events import Cancelled, Done, Words
    from voice_client.tts import _TtsCore

    core = _TtsCore("ws://127.0.0.1:9/v1/stream/tts", {}, None, ResumePolicy())
    core._parse({"type": "ready", "session_id": "s", "sample_rate": 1000, "encoding": "pcm_s16le"})
    word = lambda w, a, b: {"word": w, "start": a / 1000, "end": b / 1000, "start_sample": a, "end_sample": b}
    core._on_event(Words(0, [word("one", 0, 100), word("two", 150, 300)]))
    core._on_binary(bytes(600))  # 300 samples
    core._on_event(Done())
    core._resumed(1, 0.1)  # a new socket: its session counts from 0 again, the stream from 300
    [shifted] = core._on_event(Words(0, [word("three", 10, 200), word("four", 250, 400)]))
    assert [(w["start_sample"], w["start"]) for w in shifted.words] == [(310, 0.31), (550, 0.55)]
    assert core.reply_words.heard_text(311) == "three"  # the earlier reply ended with its done
    core._on_binary(bytes(400))  # up to 500: "four" (from 550) never arrives before the cancel
    core._on_event(Cancelled())
    assert core.reply_words.heard_text(10_000) == "three"
    assert core.reply_words.heard_text(10_000, whole=True) == "three"
    assert core.reply_words.heard_text(400, whole=True) == ""


# -- the socket --------------------------------------------------------------------------------------------------

def test_without_the_opt_in_nothing_changes(tts):
    got = asyncio.run(speak(tts.ws, "Hello there. How are you today?"))
    assert not got.of("words")
    assert set(got.types) == {"ready", "segment", "audio", "done", "closed"}


@pytest.mark.parametrize("query, bytes_per_sample", [("?word_timings=true", 2),
                                                      ("?word_timings=1&encoding=mulaw&sample_rate=8000", 1)])
def test_each_word_arrives_before_the_audio_past_its_start(tts, query, bytes_per_sample):
    got = asyncio.run(speak(tts.ws, "It's 42 degrees in New York, isn't it? Of the people, by the people.", query))
    timed = check_order(got, bytes_per_sample)
    assert len(got.of("segment")) >= 2  # the clock runs on across segments
    assert len(timed) == 14


def test_bad_opt_in_is_refused(tts):
    async def attempt():
        async with websockets.connect(f"{tts.ws}/v1/stream/tts?word_timings=maybe") as ws:
            return await recv_until(ws, Received(), None)
    got = asyncio.run(attempt())
    assert got.of("error")[0]["code"] == "invalid_parameter"


def asr_words(asr: Transcriber, audio: np.ndarray, rate_hz: int) -> list[tuple[str, float, float]]:
    result = asr.engine.decode_batch([DecodeRequest(resample(audio, rate_hz, 16000), beam_size=5,
                                                    word_timestamps=True)])[0]
    return [(w.word.strip(), w.start, w.end) for w in result.words]


def test_word_intervals_overlap_where_the_asr_hears_them(tts, asr):
    got = asyncio.run(speak(tts.ws, HELD_OUT, "?word_timings=true&sample_rate=16000"))
    timed = check_order(got)
    heard = asr_words(asr, pcm_to_float(got.audio), 16000)
    ours = [plain_words(w["word"])[0] if plain_words(w["word"]) else "" for w in timed]
    theirs = [plain_words(w)[0] if plain_words(w) else "" for w, _, _ in heard]
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    pairs = [(a + k, b + k) for a, b, size in matcher.get_matching_blocks() for k in range(size)]
    assert len(pairs) >= 0.8 * len(ours), (ours, theirs)
    for i, j in pairs:
        start, end = timed[i]["start"], timed[i]["end"]
        _, asr_start, asr_end = heard[j]
        assert start < asr_end and asr_start < end, (timed[i], heard[j])


def test_the_clock_counts_only_audio_sent_across_a_cancel(tts):
    async def scenario() -> tuple[int, Received]:
        async with websockets.connect(f"{tts.ws}/v1/stream/tts?word_timings=true") as ws:
            first = Received()
            await recv_until(ws, first, "ready")
            await ws.send(json.dumps({"type": "text", "text": LONG}))
            await _next_audio(ws, first)  # the first piece is being spoken
            await ws.send(json.dumps({"type": "cancel"}))
            await recv_until(ws, first, "cancelled")
            sent = len(first.audio) // 2
            after = Received()
            await ws.send(json.dumps({"type": "text", "text": "Okay, I will stop."}))
            await ws.send(json.dumps({"type": "end"}))
            return sent, await recv_until(ws, after, None, timeout_s=60)

    sent, after = asyncio.run(scenario())
    words = [w for e in after.of("words") for w in e["words"]]
    assert [w["word"] for w in words] == ["Okay,", "I", "will", "stop."]
    # the new reply starts where the audio the client got ends, not where the dropped audio would have
    assert sent <= words[0]["start_sample"] < sent + 0.5 * 22050
    assert words[-1]["end_sample"] <= sent + len(after.audio) // 2


async def _next_audio(ws, got: Received) -> bytes:
    """Read until a binary frame arrives (events before it are recorded)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(message, bytes):
            got.audio += message
            return message
        got.events.append(json.loads(message))


# -- the client library ----------------------------------------------------------------------------------------

def test_client_heard_text_at_a_cancel(tts, asr):
    from voice_client import Cancelled, TtsStream, Words

    async def scenario():
        audio = bytearray()
        events = []
        async with TtsStream(f"{tts.ws}/v1/stream/tts", word_timings=True, sample_rate=16000) as stream:
            await stream.send_text(LONG)
            async for event in stream:
                events.append(event)
                if getattr(event, "data", None):
                    audio += event.data
                    if stream.received_samples >= 3 * 16000:
                        break
            played = 2 * 16000  # the player is a second behind what arrived
            heard_before = stream.heard_text(played)
            await stream.cancel()
            async for event in stream:
                events.append(event)
                if isinstance(event, Cancelled):
                    break
            return heard_before, stream.heard_text(played), stream.heard_words(played), audio, played, events

    before, after, words, audio, played, events = asyncio.run(scenario())
    assert any(isinstance(e, Words) for e in events)
    assert before == after and after  # the cancelled reply's heard words are still there after cancelled
    assert LONG.startswith(after) and len(after) < len(LONG) / 2
    assert all(w["start_sample"] < played for w in words)
    # what the first two seconds of audio say is what the client says was heard (all but the word cut at the end)
    spoken = asr(pcm_to_float(bytes(audio[:played * 2])), 16000)
    assert mostly_heard(" ".join(after.split()[:-1]), spoken), (after, spoken)


# -- the Pipecat glue ---------------------------------------------------------------------------------------------

def test_pipecat_service_reports_the_words(tts):
    from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame, TTSTextFrame
    from pipecat.tests.utils import SleepFrame, run_test
    from pipecat_tts import VoiceTTSService

    sentence = "Welcome to the self hosted voice service. It is nearly ready."
    tts_service = VoiceTTSService(base_url=tts.ws, sample_rate=24000)
    down, _ = asyncio.run(run_test(tts_service, frames_to_send=[TTSSpeakFrame(sentence), SleepFrame(3.0)]))
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in words] == sentence.split()
    pts = [f.pts for f in words]
    assert all(p is not None for p in pts) and pts == sorted(pts) and pts[-1] - pts[0] > 1e9  # spread over > 1 s
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    audio_s = sum(len(f.audio) for f in down if isinstance(f, TTSAudioRawFrame)) / 2 / 24000
    assert (pts[-1] - pts[0]) / 1e9 < audio_s
