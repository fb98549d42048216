"""Audio in and out for the examples: WAV files, an optional microphone, optional speakers.

Owns everything the example programs do with sound outside the sockets. Input
is an async iterator of raw audio frames (20 ms of 16-bit mono PCM): from a
WAV file paced at real time (:func:`wav_frames`) or from the microphone
(:func:`microphone_frames`, only where the optional ``sounddevice`` package is
importable; it is not a dependency of the project). Output is an
:class:`AudioOut`: it receives the TTS audio, knows whether the listener is
still hearing the reply (``busy``, which the agent needs for barge-in) and can
drop what is still queued (``clear``). :class:`WavOut` keeps a playout clock
as if the audio were played at real time and writes a WAV file at the end;
:class:`SpeakerOut` plays through ``sounddevice``. The Twilio bridge has its
own ``AudioOut`` (in ``twilio_phone.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

FRAME_S = 0.020


def have_sounddevice() -> bool:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but PortAudio is not
        return False
    return True


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """(mono pcm_s16le bytes, sample rate) of a 16-bit PCM WAV file; stereo is downmixed."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).round().astype("<i2")
    return pcm.tobytes(), rate


def write_wav(path: str | Path, pcm: bytes, rate_hz: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm)


async def wav_frames(pcm: bytes, rate_hz: int, *, speed: float = 1.0,
                     tail_silence_s: float = 2.0) -> AsyncIterator[bytes]:
    """20 ms frames of ``pcm`` and then ``tail_silence_s`` of silence (so the last turn can end),
    paced at ``speed`` x real time (0: as fast as the socket takes them)."""
    step = int(rate_hz * FRAME_S) * 2
    audio = pcm + bytes(int(rate_hz * tail_silence_s) * 2)
    start = time.monotonic()
    for i, offset in enumerate(range(0, len(audio), step)):
        yield audio[offset:offset + step]
        if speed > 0:
            delay = start + (i + 1) * FRAME_S / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def microphone_frames(rate_hz: int = 16000) -> AsyncIterator[bytes]:
    """20 ms frames from the default microphone until cancelled (needs ``sounddevice``)."""
    import sounddevice as sd

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=250)  # 5 s; older audio is dropped if we fall behind

    def callback(indata, frames, time_info, status) -> None:  # PortAudio's thread
        def put(data: bytes = bytes(indata)) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)
        loop.call_soon_threadsafe(put)

    with sd.RawInputStream(samplerate=rate_hz, channels=1, dtype="int16",
                           blocksize=int(rate_hz * FRAME_S), callback=callback):
        while True:
            yield await queue.get()


class AudioOut:
    """Where the agent's speech goes. This base class only keeps a real-time playout clock."""

    def __init__(self) -> None:
        self.bytes_per_second = 0  # set by :meth:`configure` when the TTS socket says its format
        self._playing_until = 0.0

    def configure(self, sample_rate_hz: int, encoding: str) -> None:
        self.bytes_per_second = sample_rate_hz * (1 if encoding == "mulaw" else 2)

    async def play(self, audio: bytes) -> None:
        now = time.monotonic()
        self._playing_until = max(self._playing_until, now) + len(audio) / max(1, self.bytes_per_second)

    async def reply_done(self, turn: int) -> None:
        """All audio of reply ``turn`` has been handed to :meth:`play`."""

    async def clear(self) -> None:
        """Barge-in: drop whatever has not been heard yet."""
        self._playing_until = 0.0

    def busy(self) -> bool:
        """Whether the listener is still hearing (or about to hear) the agent."""
        return time.monotonic() < self._playing_until

    async def close(self) -> None:
        pass


class WavOut(AudioOut):
    """Collects the audio (as if heard at real time: a barge-in cuts what was not yet 'played')."""

    def __init__(self, path: str | Path | None) -> None:
        super().__init__()
        self.path = path
        self.rate_hz = 0
        self.audio = bytearray()
        self._timeline: list[tuple[float, int]] = []  # (wall time a chunk starts playing, offset in audio)

    def configure(self, sample_rate_hz: int, encoding: str) -> None:
        super().configure(sample_rate_hz, encoding)
        self.rate_hz = sample_rate_hz

    async def play(self, audio: bytes) -> None:
        self._timeline.append((max(self._playing_until, time.monotonic()), len(self.audio)))
        self.audio.extend(audio)
        await super().play(audio)

    async def clear(self) -> None:
        now = time.monotonic()
        if self.busy() and self._timeline and self.bytes_per_second:
            for started, offset in reversed(self._timeline):
                if started <= now:  # the chunk being heard now: keep what was heard of it
                    heard = offset + int((now - started) * self.bytes_per_second) // 2 * 2
                    del self.audio[min(heard, len(self.audio)):]
                    break
        self._timeline.clear()
        await super().clear()

    async def close(self) -> None:
        if self.path and self.rate_hz:
            write_wav(self.path, bytes(self.audio), self.rate_hz)


class SpeakerOut(AudioOut):
    """Plays through the default output device (needs ``sounddevice``); pcm_s16le only."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._lock = threading.Lock()  # the buffer is shared with PortAudio's thread
        self._stream = None

    def configure(self, sample_rate_hz: int, encoding: str) -> None:
        import sounddevice as sd

        super().configure(sample_rate_hz, encoding)
        self._stream = sd.RawOutputStream(samplerate=sample_rate_hz, channels=1, dtype="int16",
                                          callback=self._callback)
        self._stream.start()

    def _callback(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread
        with self._lock:
            n = min(len(outdata), len(self._buffer))
            outdata[:n] = self._buffer[:n]
            del self._buffer[:n]
        outdata[n:] = bytes(len(outdata) - n)

    async def play(self, audio: bytes) -> None:
        with self._lock:
            self._buffer.extend(audio)
        await super().play(audio)

    async def clear(self) -> None:
        with self._lock:
            self._buffer.clear()
        await super().clear()

    def busy(self) -> bool:
        return bool(self._buffer)

    async def close(self) -> None:
        for _ in range(600):  # let the last reply finish, at most 60 s
            if not self._buffer:
                break
            await asyncio.sleep(0.1)
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
