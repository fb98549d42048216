"""Turn checks run beside the stream: the processor reads on while Smart Turn scores a pause, and a decision that
comes back late ends the utterance where it would have ended at once.

The real service in-process (real models, a real socket on loopback) and real speech: two sentences with a pause
between them, streamed as fast as the socket takes them. In the second run every check of that pause is scored by
the real model and then held back until the stream is past the point where the old processor would have waited:
two checks of one stream out at once (speech comes back after a short pause: the processor must wait for them
before it goes on), or the silence timeout reached (a long pause: the final says what the held checks decided).
The finals must be those of the run where nothing was held. Sent at real time, a stream has one check out and
its silence timeout waits for none; with ``turn.hold_stream`` (the old path) it waits for each at any speed.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest
from voice_client import NO_RESUME, AsrStream, Final

from conftest import DATA, read_wav
from inprocess import InProcessServer

FRAME_BYTES = 640  # 20 ms at 16 kHz PCM16
PROCESSOR_LOG = "services.asr.processor"


@pytest.fixture(scope="module")
def asr():
    from services.asr.app import create_app
    from services.asr.settings import load

    with InProcessServer(create_app(load(server={"log_level": "warning"}, model={"cpu_threads": 2}))) as server:
        yield server


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, np.ndarray]:
    return read_wav(DATA / "asr" / "quilter.wav")[0], read_wav(DATA / "asr" / "wizard.wav")[0]


class HeldChecks:
    """The runtime's turn check, scored by the real model; the checks of the pause that ends ``first`` (a final:
    their audio reaches to its end) are then held until :meth:`release`. Checks of pauses inside it have less
    audio: they end at least the final's end pad (96 ms) before it."""

    def __init__(self, runtime, first: tuple) -> None:
        _, _, start, end, _ = first
        self.real = runtime.turn_probability
        self.first_samples = round((end - start) * 16000) - 800  # 50 ms of slack
        self.out = 0
        self.most_out = 0
        self.answered = 0  # held checks that got their answer (the others were cancelled)
        self.two_out = threading.Event()
        self.released = threading.Event()
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, audio: np.ndarray, session_id: str | None = None) -> float:
        probability = await self.real(audio, session_id)
        if self.released.is_set() or audio.size < self.first_samples:
            return probability
        if self._gate is None:
            self._gate, self._loop = asyncio.Event(), asyncio.get_running_loop()
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        if self.out >= 2:
            self.two_out.set()
        try:
            await self._gate.wait()
        finally:
            self.out -= 1
        self.answered += 1
        return probability

    def release(self) -> None:
        self.released.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._gate.set)


class EndedLog(logging.Handler):
    """Set when the processor acts on an utterance's end (its debug log) past ``after_s`` of the stream."""

    def __init__(self, after_s: float) -> None:
        super().__init__(logging.DEBUG)
        self.after_s = after_s
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "Ended" and getattr(record, "position_s", 0) > self.after_s:
            self.seen.set()


async def stream_finals(server, pcm: bytes, until: tuple[threading.Event, ...] = (), then=None) -> list[tuple]:
    """Send ``pcm`` in 20 ms frames as fast as the socket takes them, then ``end``; wait for the ``until`` events
    (in a thread), then call ``then``; the finals as (utterance, text, start, end, reason)."""
    async with AsrStream(server.ws + "/v1/stream/asr", resume=NO_RESUME) as stream:
        async def send() -> None:
            for offset in range(0, len(pcm), FRAME_BYTES):
                await stream.send_audio(pcm[offset:offset + FRAME_BYTES])
            await stream.finish()

        sender = asyncio.create_task(send())
        events = asyncio.create_task(_collect(stream))
        if until:
            reached = await asyncio.to_thread(lambda: all(event.wait(120) for event in until))
            then()
            assert reached, "the stream never got past the held checks: the processor waited for them"
        finals = await asyncio.wait_for(events, 120)
        await sender
    return [(f.utterance, f.text, f.start, f.end, f.reason) for f in finals]


async def _collect(stream: AsrStream) -> list[Final]:
    return [event async for event in stream if isinstance(event, Final)]


@pytest.mark.asyncio
async def test_speech_after_a_short_pause_waits_for_its_checks_and_is_cut_as_without_waiting(asr, clips):
    first, second = clips
    pcm = np.concatenate([first, np.zeros(5600, dtype=np.int16), second, np.zeros(16000, dtype=np.int16)]).tobytes()
    expected = await stream_finals(asr, pcm)
    assert len(expected) == 2 and expected[0][4] == "turn", expected  # the short pause ends a turn: the case tested

    held = HeldChecks(asr.runtime, expected[0])
    asr.runtime.turn_probability = held
    try:
        got = await stream_finals(asr, pcm, until=(held.two_out,), then=held.release)
    finally:
        held.release()
        del asr.runtime.turn_probability
    assert held.most_out >= 2
    assert got == expected


@pytest.mark.asyncio
async def test_a_final_the_silence_timeout_closes_says_what_its_held_checks_decided(asr, clips):
    first, second = clips
    pcm = np.concatenate([first, np.zeros(24000, dtype=np.int16), second, np.zeros(16000, dtype=np.int16)]).tobytes()
    expected = await stream_finals(asr, pcm)
    assert len(expected) == 2 and expected[0][4] == "turn", expected

    held = HeldChecks(asr.runtime, expected[0])
    ended = EndedLog(after_s=expected[0][3])
    logger = logging.getLogger(PROCESSOR_LOG)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(ended)
    asr.runtime.turn_probability = held
    try:
        got = await stream_finals(asr, pcm, until=(held.two_out, ended.seen), then=held.release)
    finally:
        held.release()
        del asr.runtime.turn_probability
        logger.removeHandler(ended)
        logger.setLevel(level)
        logger.propagate = propagate
    assert held.most_out >= 2  # the pause's checks were out when the timeout closed the utterance
    assert got == expected


@pytest.mark.asyncio
async def test_at_real_time_a_stream_has_one_check_out_and_the_timeout_waits_for_none(asr, clips):
    """Sent at real time, a stream asks the model again only when its last check is back (the newest checkpoint
    then), and a check the model has not answered when the silence timeout is due does not delay the final: it
    is dropped."""
    first, _ = clips
    pcm = np.concatenate([first, np.zeros(24000, dtype=np.int16)]).tobytes()
    expected = await stream_finals(asr, pcm)
    held = HeldChecks(asr.runtime, expected[0])
    asr.runtime.turn_probability = held
    try:
        async with AsrStream(asr.ws + "/v1/stream/asr", resume=NO_RESUME) as stream:
            async def send() -> None:
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
                    await stream.send_audio(pcm[offset:offset + FRAME_BYTES])
                    await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))  # the audio's own pace
                await stream.finish()

            async def first_final() -> tuple[Final, int]:
                finals = []
                async for event in stream:
                    if isinstance(event, Final) and not finals:
                        finals.append((event, held.answered))  # held checks answered before it came
                        held.release()
                return finals[0]

            sender = asyncio.create_task(send())
            final, answered_before = await asyncio.wait_for(first_final(), 120)
            await sender
    finally:
        held.release()
        del asr.runtime.turn_probability
    assert (held.most_out, answered_before) == (1, 0)  # one check out, and the final did not wait for its answer
    assert (final.utterance, final.start, final.end, final.reason) == (0, expected[0][2], expected[0][3], "silence")


class CheckSpans:
    """The runtime's turn check, unchanged, with the order in which checks start and finish (a counter, no clock)."""

    def __init__(self, runtime) -> None:
        self.real = runtime.turn_probability
        self.out = 0
        self.most_out = 0

    async def __call__(self, audio: np.ndarray, session_id: str | None = None) -> float:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            return await self.real(audio, session_id)
        finally:
            self.out -= 1


@pytest.mark.asyncio
async def test_hold_stream_keeps_the_old_path_one_check_at_a_time_whatever_the_speed(asr, clips):
    """``turn.hold_stream``: the stream waits for each check before it reads on, so even sent as fast as the socket
    takes it no two of its checks are ever out at once; it is cut as the default cuts it."""
    from services.asr.app import create_app
    from services.asr.settings import load

    first, second = clips
    pcm = np.concatenate([first, np.zeros(5600, dtype=np.int16), second, np.zeros(24000, dtype=np.int16)]).tobytes()
    settings = load(server={"log_level": "warning"}, model={"cpu_threads": 2}, turn={"hold_stream": True})
    with InProcessServer(create_app(settings)) as held_server:
        spans = CheckSpans(held_server.runtime)
        held_server.runtime.turn_probability = spans
        got = await stream_finals(held_server, pcm)
    assert spans.most_out == 1
    assert got == await stream_finals(asr, pcm)


@pytest.mark.asyncio
async def test_under_load_a_long_pause_has_its_final_decoded_whatever_its_checks_say(asr, clips):
    """While Whisper has other streams' work, a pause's final is decoded ahead only once a check says the turn may
    end there, or once the pause reaches ``turn.speculate_after_ms``: a pause Smart Turn is never sure of (every
    check scored by the real model, then reported below ``speculate_threshold``) has its final decoded before the
    silence timeout ends it, and none is decoded after that decision."""
    from conftest import metric

    runtime = asr.runtime
    real = runtime.turn_probability
    assert runtime.settings.turn.speculate_after_ms is not None

    async def unsure(audio: np.ndarray, session_id: str | None = None) -> float:
        return min(await real(audio, session_id), runtime.settings.turn.speculate_threshold / 2)

    def decodes(source: str) -> float:
        return metric(asr, f'asr_final_decodes_total{{source="{source}"}}')

    sources = ("decoded_ahead", "started_ahead", "decoded_after")
    first, _ = clips
    pcm = np.concatenate([first, np.zeros(24000, dtype=np.int16)]).tobytes()
    before = {s: decodes(s) for s in sources}
    runtime.turn_probability, runtime.whisper_free_for = unsure, lambda session_id: False  # others' work waits
    try:
        finals = await stream_finals(asr, pcm)
    finally:
        del runtime.turn_probability, runtime.whisper_free_for
    after = {s: decodes(s) for s in sources}
    assert finals and finals[-1][4] == "silence"
    assert after["decoded_after"] == before["decoded_after"]
    assert sum(after[s] - before[s] for s in ("decoded_ahead", "started_ahead")) == len(finals)
