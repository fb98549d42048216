"""Process memory policy: glibc's arenas, the cyclic collector and a periodic heap trim.

A service allocates and frees audio, feature and model buffers of every size
all day from several threads (the event loop, one owner thread per model and the
libraries' own pools). glibc gives threads separate heaps ("arenas", by default
up to 8 per core) and keeps freed memory inside them unless it sits at the very
top of one, so resident memory stays above what is live and each arena
fragments on its own. :func:`limit_arenas` caps the arena count
(``server.malloc_arena_max``, default 4). Measured in 10-minute soaks of both
services on 2 cores (ASR RSS per minute once level, ASR time-to-final p50 per
minute): glibc's default 424-438 MB, 133-265 ms; 4 arenas (two runs) 426-461
MB, 119-294 ms; 2 arenas 366-390 MB, 159-408 ms, the model threads then waiting
on each other's malloc locks. So on 2 cores the cap costs nothing and saves
nothing; it bounds many-core hosts, where glibc allows 8 arenas per core (128
on 16 cores; not measured there). A fixed mmap threshold, also tried,
is not used: mapping and zeroing every large buffer afresh made time-to-final
three times slower (525-872 ms).
onnxruntime's CPU arena is the other long-lived pool: it grows to the largest
batch a session has run, doubling its regions, and never gives memory back, so
the ASR process stepped up by 16 and 32 MB regions whenever Smart Turn or the
VAD met a bigger batch than before (``/proc/PID/smaps`` sampled through a
soak: anonymous memory 58 -> 161 MB in 15 minutes; 75 MB flat without it).
The VAD and Smart Turn sessions therefore run without it
(``enable_cpu_mem_arena = False``); their buffers come from malloc and go back
with the trim below.
:class:`HeapTrimmer` calls ``malloc_trim(0)`` every ``interval_s`` in a worker
thread, which hands the free pages inside every arena back to the system (one
trim took a loaded ASR process from 407 to 361 MB; under load each hands back
10-25 MB). Both are no-ops where the C library is not glibc.
:func:`freeze_startup_heap` moves everything loaded at start-up (models,
libraries: some 70 000 objects) out of the cyclic collector's reach, so a full
collection scans only what sessions created: it pauses the event loop for well
under a millisecond instead of 30-110 ms, and it runs often enough that garbage
in reference cycles (a session's buffers, a codec's native state) does not wait
minutes for the next full pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0 keeps glibc's default); True when a cap was set.

    Call it before the threads that will allocate start: a thread keeps the arena it first got.
    """
    libc = _glibc() if count > 0 else None
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, count))


def freeze_startup_heap() -> int:
    """Collect once, then freeze every object alive now (``gc.freeze``); returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def resident_bytes() -> int | None:
    """This process's resident set size (VmRSS), or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` every ``interval_s`` seconds, off the event loop (0 turns it off).

    Trimming takes each arena's lock in turn for a few milliseconds; a model thread allocating meanwhile waits
    that long. ``last_released_bytes`` and ``trims`` say what it did (also logged at debug level).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self.last_released_bytes = 0
        self._libc = _glibc() if interval_s > 0 else None
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self._libc is not None

    def trim(self) -> int:
        """One trim, blocking; returns the resident bytes it handed back (0 where unknown)."""
        if self._libc is None:
            return 0
        before = resident_bytes()
        started = time.perf_counter()
        self._libc.malloc_trim(0)
        after = resident_bytes()
        self.trims += 1
        self.last_released_bytes = max(0, before - after) if before is not None and after is not None else 0
        log.debug("heap trimmed", extra={"released_mb": round(self.last_released_bytes / 2**20, 1),
                                         "resident_mb": None if after is None else round(after / 2**20, 1),
                                         "took_ms": round((time.perf_counter() - started) * 1000, 1)})
        return self.last_released_bytes

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="heap-trimmer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.trim)
            except Exception:  # noqa: BLE001 - trimming is an optimisation; the service goes on without it
                log.exception("heap trim failed")
