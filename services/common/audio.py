"""Audio conversion shared by both services.

Owns the sample formats on the wire (``pcm_s16le`` and G.711 ``mulaw``), the
streaming byte decoder that tolerates frames split mid-sample, streaming
resampling with soxr, and decoding uploaded files with PyAV (FFmpeg) window by
window (:class:`AudioFileReader`). Internally audio is mono float32 in [-1, 1].
"""

from __future__ import annotations

import enum
import io
import struct
from typing import BinaryIO

import av
import numpy as np
import soxr

from .errors import ErrorCode, ServiceError
from .protocol import shown


class Encoding(str, enum.Enum):
    PCM_S16LE = "pcm_s16le"
    MULAW = "mulaw"

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is Encoding.PCM_S16LE else 1


SAMPLE_RATE_HZ = 16000
"""The rate every speech model here takes (Whisper, Silero VAD, Smart Turn): streams are resampled to it."""
MIN_RATE_HZ = 8000
MAX_RATE_HZ = 48000


def parse_encoding(value: str) -> Encoding:
    try:
        return Encoding(value)
    except ValueError:
        raise ServiceError(
            ErrorCode.BAD_AUDIO, f"unsupported encoding {shown(value)}: use pcm_s16le or mulaw"
        ) from None


def parse_sample_rate(value: str | int) -> int:
    try:
        rate = int(value)
    except (TypeError, ValueError):
        raise ServiceError(ErrorCode.BAD_AUDIO, f"sample_rate must be an integer, got {shown(value)}") from None
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise ServiceError(
            ErrorCode.BAD_AUDIO, f"sample_rate {rate} out of range {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
        )
    return rate


# --- G.711 u-law ---------------------------------------------------------------

_MULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _build_mulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_MULAW_TO_PCM = _build_mulaw_decode_table()


def mulaw_to_pcm16(data: bytes | np.ndarray) -> np.ndarray:
    codes = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _MULAW_TO_PCM[codes]


def pcm16_to_mulaw(samples: np.ndarray) -> bytes:
    """G.711 u-law encoding, bit-exact with the reference (14-bit) algorithm."""
    x = samples.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted(_MULAW_SEG_END, x, side="left")
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((x >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return ((uval ^ mask) & 0xFF).astype(np.uint8).tobytes()


# --- PCM helpers ---------------------------------------------------------------

def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


class ByteDecoder:
    """Turns wire frames of any length into float32 samples, carrying split samples over."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self._carry = b""

    def decode(self, frame: bytes) -> np.ndarray:
        if self.encoding is Encoding.MULAW:
            return pcm16_to_float(mulaw_to_pcm16(frame))
        data = self._carry + frame if self._carry else frame
        usable = len(data) - (len(data) % 2)
        self._carry = bytes(data[usable:])
        return pcm16_to_float(np.frombuffer(data[:usable], dtype="<i2"))

    @property
    def pending_bytes(self) -> int:
        return len(self._carry)


PCM_WIDTHS = (1, 2, 4)
"""Sample widths :class:`MonoPcm16` takes, in bytes: 1 is unsigned (WAV's 8-bit), 2 and 4 signed little-endian."""
MAX_CHANNELS = 8


class MonoPcm16:
    """Interleaved PCM of ``width`` bytes a sample and ``channels`` channels -> mono ``pcm_s16le`` bytes (the
    channels averaged), carrying a frame split across chunks over to the next one. Raises ``bad_audio`` for a
    width or channel count it does not take."""

    def __init__(self, width: int, channels: int) -> None:
        if width not in PCM_WIDTHS:
            raise ServiceError(ErrorCode.BAD_AUDIO, f"sample width {shown(width)} is not supported: use "
                                                    f"{', '.join(map(str, PCM_WIDTHS))} bytes")
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise ServiceError(ErrorCode.BAD_AUDIO, f"channels must be 1-{MAX_CHANNELS}, got {shown(channels)}")
        self.width = width
        self.channels = channels
        self._carry = b""

    def convert(self, data: bytes) -> bytes:
        if self.width == 2 and self.channels == 1:
            return data  # already ours (ByteDecoder carries a split sample)
        data = self._carry + data if self._carry else data
        frame = self.width * self.channels
        usable = len(data) - len(data) % frame
        self._carry = bytes(data[usable:])
        if self.width == 1:
            samples = (np.frombuffer(data[:usable], dtype=np.uint8).astype(np.int32) - 128) << 8
        elif self.width == 2:
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.int32)
        else:
            samples = np.frombuffer(data[:usable], dtype="<i4").astype(np.int64) >> 16
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


class StreamResampler:
    """Stateful soxr resampler; a no-op when the rates match."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._stream = (
            None
            if in_rate_hz == out_rate_hz
            else soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32", quality=quality)
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=last)


def resample(samples: np.ndarray, in_rate_hz: int, out_rate_hz: int) -> np.ndarray:
    if in_rate_hz == out_rate_hz:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), in_rate_hz, out_rate_hz).astype(np.float32)


# --- files ---------------------------------------------------------------------

class AudioFileReader:
    """An uploaded file, decoded window by window: any FFmpeg-readable audio -> mono float32 at one rate.

    Only the window asked for is ever decoded and held, so one upload's memory is bounded whatever the file
    holds. With ``max_duration_s`` the file is refused with ``too_long`` (``too_large`` by default) as soon as
    its container declares more than that, or its decoded audio passes it: a small compressed file that
    expands to hours is never decoded whole. :meth:`read` blocks (PyAV): call it off the event loop.
    """

    def __init__(self, source: bytes | BinaryIO, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 max_duration_s: float | None = None, too_long: ErrorCode = ErrorCode.TOO_LARGE) -> None:
        if isinstance(source, (bytes, bytearray)):
            size, source = len(source), io.BytesIO(source)
        else:
            here = source.tell()
            size = source.seek(0, io.SEEK_END) - here
            source.seek(here)
        if size <= 0:
            raise ServiceError(ErrorCode.BAD_AUDIO, "the uploaded file is empty")
        self.rate_hz = sample_rate_hz
        self.samples = 0
        self._limit_s = max_duration_s
        self._max_samples = None if max_duration_s is None else int(max_duration_s * sample_rate_hz)
        self._too_long = too_long
        self._ended = False
        try:
            self._container = av.open(source, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, ValueError) as exc:
            raise ServiceError(ErrorCode.UNSUPPORTED_MEDIA, f"cannot read the file as audio: {exc}") from None
        if not self._container.streams.audio:
            self.close()
            raise ServiceError(ErrorCode.UNSUPPORTED_MEDIA, "the file has no audio stream")
        self._frames = self._container.decode(self._container.streams.audio[0])
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate_hz)
        declared = self.declared_s
        if max_duration_s is not None and declared is not None and declared > max_duration_s + 1.0:
            self.close()
            raise self._refusal(f"the audio ({declared:.0f} s, as its container declares) is longer than the "
                                f"limit of {max_duration_s:g} s")

    @property
    def declared_s(self) -> float | None:
        """The duration the container declares (None where it does not)."""
        if self._container.duration is not None and self._container.duration > 0:
            return self._container.duration / av.time_base
        stream = self._container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return None

    def read(self, max_samples: int) -> np.ndarray | None:
        """Up to about ``max_samples`` more samples (a frame more at most); None once the file is exhausted."""
        chunks: list[np.ndarray] = []
        count = 0
        try:
            while count < max_samples and not self._ended:
                frame = next(self._frames, None)
                if frame is None:
                    self._ended = True
                for out in self._resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    count += chunk.size
        except (av.FFmpegError, ValueError) as exc:
            raise ServiceError(ErrorCode.BAD_AUDIO, f"cannot decode the file: {exc}") from None
        self.samples += count
        if self._max_samples is not None and self.samples > self._max_samples:
            raise self._refusal(f"the audio is longer than the limit of {self._limit_s:g} s")
        if not chunks:
            return None
        return pcm16_to_float(np.concatenate(chunks))

    def close(self) -> None:
        self._container.close()

    def _refusal(self, message: str) -> ServiceError:
        return ServiceError(self._too_long, message)


def decode_file(data: bytes, sample_rate_hz: int = SAMPLE_RATE_HZ, max_duration_s: float | None = None) -> np.ndarray:
    """Decode a whole (short) file to mono float32 at ``sample_rate_hz``; longer than ``max_duration_s``:
    ``bad_audio``, found without decoding it whole."""
    reader = AudioFileReader(data, sample_rate_hz, max_duration_s, too_long=ErrorCode.BAD_AUDIO)
    try:
        chunks = []
        while (chunk := reader.read(sample_rate_hz * 10)) is not None:
            chunks.append(chunk)
    finally:
        reader.close()
    if not chunks:
        raise ServiceError(ErrorCode.BAD_AUDIO, "the file contains no audio samples")
    return np.concatenate(chunks)


def wav_header(sample_rate_hz: int, num_samples: int | None = None, channels: int = 1) -> bytes:
    """A 16-bit PCM RIFF header; with ``num_samples=None`` the sizes say 'unknown' (streaming)."""
    data_bytes = 0xFFFFFFFF - 36 if num_samples is None else num_samples * 2 * channels
    return b"RIFF" + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF)) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, sample_rate_hz, sample_rate_hz * 2 * channels, 2 * channels, 16
    ) + b"data" + struct.pack("<I", data_bytes)
