"""A growable buffer of one stream's 16 kHz samples, addressed by absolute sample index.

The session appends resampled audio and slices utterances out of it by the
sample numbers the endpointer gives; everything before the oldest sample still
needed is dropped, so memory stays bounded by the longest utterance.
"""

from __future__ import annotations

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ


class SampleBuffer:
    def __init__(self, capacity: int = SAMPLE_RATE_HZ * 8) -> None:
        self._data = np.zeros(capacity, dtype=np.float32)
        self._base = 0  # absolute index of _data[0]
        self._len = 0

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self._base + self._len

    @property
    def start(self) -> int:
        return self._base

    def append(self, samples: np.ndarray) -> None:
        n = samples.size
        if n == 0:
            return
        if self._len + n > self._data.size:
            grown = np.zeros(max(self._data.size * 2, self._len + n), dtype=np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len : self._len + n] = samples
        self._len += n

    def slice(self, start: int, end: int) -> np.ndarray:
        """Copy of samples [start, end) (clamped to what is held)."""
        a = max(start, self._base) - self._base
        b = min(end, self.end) - self._base
        if b <= a:
            return np.zeros(0, dtype=np.float32)
        return self._data[a:b].copy()

    def discard_before(self, index: int) -> None:
        drop = min(max(0, index - self._base), self._len)
        if drop == 0:
            return
        self._data[: self._len - drop] = self._data[drop : self._len]
        self._len -= drop
        self._base += drop
