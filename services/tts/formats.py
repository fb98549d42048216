"""Turning synthesized audio into bytes, for sockets and HTTP responses alike.

:class:`AudioEncoder` is the one encoder: float32 chunks at the voice's rate in,
bytes of one format at the output rate out, incrementally, so responses and
streams carry audio as it is made. Formats: raw ``pcm`` (16-bit little-endian;
the WebSocket's ``pcm_s16le``), G.711 ``mulaw``, ``wav`` (a streaming header,
then PCM), and, through PyAV (FFmpeg), ``mp3``, ``flac``, ``opus`` (in Ogg) and
``aac`` (ADTS). Each piece of text gets a fresh soxr resampler (its tail is
flushed by :meth:`AudioEncoder.end_piece`); a container spans the whole
response. It is called on the model's worker thread (or a ``to_thread``
worker), never on the event loop; it is locked so that closing it from the loop
while a chunk is being encoded (the client left) is safe, and encoding after
close yields nothing.
"""

from __future__ import annotations

import io
import threading

import av
import numpy as np

from ..common.audio import Encoding, StreamResampler, float_to_pcm16, pcm16_to_mulaw, wav_header

WIRE_FORMATS = {Encoding.PCM_S16LE: "pcm", Encoding.MULAW: "mulaw"}
"""The WebSocket encodings as formats of :class:`AudioEncoder`."""


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


class AudioEncoder:
    """Incremental encoder of one response or stream: float32 chunks in, bytes at ``rate_hz`` out."""

    def __init__(self, fmt: str, rate_hz: int) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.format = fmt
        self.media_type = MEDIA_TYPES[fmt]
        spec = _CONTAINERS.get(fmt)
        self.rate_hz = spec[3] if spec is not None and spec[3] else rate_hz
        self._resampler: StreamResampler | None = None  # this piece's
        self._container = None
        if spec is not None:
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=spec[0])
            self._stream = self._container.add_stream(spec[1], rate=self.rate_hz)
            self._stream.layout = "mono"

    def start(self) -> bytes:
        return wav_header(self.rate_hz) if self.format == "wav" else b""

    def encode(self, samples: np.ndarray, in_rate_hz: int | None = None) -> bytes:
        """``samples``: mono float32 at ``in_rate_hz`` (default: the output rate), resampled as needed."""
        with self._lock:
            if self._closed:
                return b""
            if in_rate_hz is not None and in_rate_hz != self.rate_hz:
                if self._resampler is None or self._resampler.in_rate_hz != in_rate_hz:
                    head = self._end_piece()
                    self._resampler = StreamResampler(in_rate_hz, self.rate_hz)
                    return head + self._pack(self._resampler.process(samples))
                samples = self._resampler.process(samples)
            return self._pack(samples)

    def end_piece(self) -> bytes:
        """The resampler's tail after a piece's last chunk; the next chunk starts a fresh resampler."""
        with self._lock:
            return b"" if self._closed else self._end_piece()

    def finish(self) -> bytes:
        """The container's last bytes (after the last piece)."""
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

    def _end_piece(self) -> bytes:
        if self._resampler is None:
            return b""
        tail = self._resampler.process(np.zeros(0, dtype=np.float32), last=True)
        self._resampler = None
        return self._pack(tail)

    def _pack(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:
            return b""
        pcm = float_to_pcm16(samples)
        if self._container is None:
            return pcm16_to_mulaw(pcm) if self.format == "mulaw" else pcm.astype("<i2").tobytes()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate_hz
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()
