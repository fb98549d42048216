"""The helpers the benchmark and evaluation scripts share: audio files, percentiles, URLs, process memory.

Imported as ``from benchlib import ...`` (Python puts a script's own folder on
``sys.path``); the service's code is imported as ``services`` from the project's
installed environment, so no script edits ``sys.path``. What is here is plain
and dependency-free (numpy and the standard library): reading the corpora's
16 kHz mono WAV files, tiling room tone into a pause, summarising latencies
(p50/p95 as numpy's default percentile), checking that a target URL is the
loopback, reading a process's resident memory from ``/proc``, and stopping a server process.
"""

from __future__ import annotations

import io
import ipaddress
import math
import subprocess
import urllib.parse
import wave
from pathlib import Path

import numpy as np

RATE = 16000  # every benchmark streams and scores 16 kHz mono audio


def read_wav(path: Path) -> np.ndarray:
    """16-bit mono 16 kHz WAV -> float32 in [-1, 1)."""
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE):
            raise ValueError(f"{path}: expected mono 16-bit {RATE} Hz")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


def wav_bytes(samples: np.ndarray) -> bytes:
    """A 16-bit mono 16 kHz WAV file of int16 samples, or of floats in [-1, 1]."""
    if samples.dtype.kind == "f":
        samples = np.clip(samples, -1, 1) * 32767
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def mirror_tile(x: np.ndarray, n: int) -> np.ndarray:
    """``x``, reversed ``x``, ``x``, ... cut to ``n`` samples (no clicks at the joins)."""
    if n <= 0 or x.size == 0:
        return np.zeros(0, np.float32)
    reps = -(-n // x.size)
    return np.concatenate([x if i % 2 == 0 else x[::-1] for i in range(reps)])[:n]


def percentile(values, q: float) -> float | None:
    """q-th percentile (0..100) with linear interpolation between closest ranks
    (same as numpy's default method); None for an empty sequence."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values) -> dict:
    vals = [float(v) for v in values]
    return {"n": len(vals), "p50": percentile(vals, 50), "p95": percentile(vals, 95),
            "max": max(vals) if vals else None,
            "mean": sum(vals) / len(vals) if vals else None}


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ws_url(http_url: str, path: str = "/v1/stream/asr") -> str:
    u = urllib.parse.urlsplit(http_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
    return urllib.parse.urlunsplit((scheme, u.netloc, u.path + path, "", ""))


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop_process(proc: subprocess.Popen, grace_s: float = 30.0) -> int:
    """SIGTERM (a service drains), SIGKILL after ``grace_s``; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode

