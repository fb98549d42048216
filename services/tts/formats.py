"""Turning synthesized audio into bytes: wire encodings and file formats.

:class:`WireEncoder` converts one stream's audio (float32 chunks at the voice's
rate) into the session's encoding (``pcm_s16le`` or G.711 ``mulaw``) at the
requested rate, resampling with soxr; it is per stream, never shared.
:func:`file_encoder` gives an incremental encoder for an HTTP response format:
``wav`` (a streaming header, then PCM), raw ``pcm``, ``mulaw``, and, through
PyAV (FFmpeg), ``mp3``, ``flac``, ``opus`` (in Ogg) and ``aac`` (ADTS), each
producing bytes as audio comes in so responses stream. Both are called on the
model's worker thread (or a ``to_thread`` worker), never on the event loop; a
:class:`FileEncoder` is locked so that closing it from the loop while a chunk
is being encoded (the client left) is safe, and encoding after close yields
nothing.
"""

from __future__ import annotations

import io
import threading

import av
import numpy as np

from ..common.audio import Encoding, StreamResampler, float_to_pcm16, pcm16_to_mulaw, wav_header


class WireEncoder:
    """Resample + encode the chunks of one stream. Call :meth:`end_piece` after each piece's last chunk."""

    def __init__(self, encoding: Encoding, out_rate_hz: int) -> None:
        self.encoding = encoding
        self.out_rate_hz = out_rate_hz
        self._resampler: StreamResampler | None = None

    def encode(self, samples: np.ndarray, in_rate_hz: int) -> bytes:
        if self._resampler is None or self._resampler.in_rate_hz != in_rate_hz:
            tail = self.end_piece()
            self._resampler = StreamResampler(in_rate_hz, self.out_rate_hz)
            return tail + self._pack(self._resampler.process(samples))
        return self._pack(self._resampler.process(samples))

    def end_piece(self) -> bytes:
        """Flush the resampler's tail; the next chunk starts a fresh resampler."""
        if self._resampler is None:
            return b""
        tail = self._resampler.process(np.zeros(0, dtype=np.float32), last=True)
        self._resampler = None
        return self._pack(tail)

    def reset(self) -> None:
        self._resampler = None

    def _pack(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:
            return b""
        pcm = float_to_pcm16(samples)
        return pcm16_to_mulaw(pcm) if self.encoding is Encoding.MULAW else pcm.astype("<i2").tobytes()


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file PyAV muxes into; :meth:`take` drains what was written."""

    def __init__(self) -> None:
        super().__init__()
        self._data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self._data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        out = bytes(self._data)
        self._data.clear()
        return out


# format -> (container, codec, media type, fixed rate or None)
_CONTAINERS = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg", None),
    "flac": ("flac", "flac", "audio/flac", None),
    "opus": ("ogg", "libopus", "audio/ogg", 48000),
    "aac": ("adts", "aac", "audio/aac", None),
}

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mulaw": "audio/basic",
               **{k: v[2] for k, v in _CONTAINERS.items()}}


class FileEncoder:
    """Incremental encoder of one HTTP response: float32 chunks at ``rate_hz`` in, bytes out."""

    def __init__(self, fmt: str, rate_hz: int) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.format = fmt
        self.media_type = MEDIA_TYPES[fmt]
        spec = _CONTAINERS.get(fmt)
        self.rate_hz = spec[3] if spec is not None and spec[3] else rate_hz
        self._container = None
        if spec is not None:
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=spec[0])
            self._stream = self._container.add_stream(spec[1], rate=self.rate_hz)
            self._stream.layout = "mono"

    def start(self) -> bytes:
        return wav_header(self.rate_hz) if self.format == "wav" else b""

    def encode(self, samples: np.ndarray) -> bytes:
        """``samples``: mono float32 at :attr:`rate_hz`."""
        if samples.size == 0:
            return b""
        pcm = float_to_pcm16(samples)
        with self._lock:
            if self._closed:
                return b""
            if self._container is None:
                return pcm16_to_mulaw(pcm) if self.format == "mulaw" else pcm.astype("<i2").tobytes()
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.rate_hz
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            return self._sink.take()

    def finish(self) -> bytes:
        with self._lock:
            if self._container is None or self._closed:
                return b""
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            return self._sink.take()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._container is not None:
                try:
                    self._container.close()
                except Exception:  # noqa: BLE001 - abandoning a half-written response
                    pass
                self._container = None
