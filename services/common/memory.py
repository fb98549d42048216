"""Process memory policy: glibc's arenas, the cyclic collector and a periodic heap trim.

A service allocates and frees audio, feature and model buffers of every size
all day from several threads; this module owns the three process-wide rules
that keep its resident memory at the level of what is live:
:func:`limit_arenas` caps glibc's malloc arenas (``server.malloc_arena_max``;
each arena fragments on its own, and glibc allows 8 per core);
:func:`freeze_startup_heap` moves everything loaded at start-up (models,
libraries) out of the cyclic collector's reach, so full collections scan only
what sessions created and run often enough that garbage in reference cycles
does not wait minutes; :class:`HeapTrimmer` calls ``malloc_trim(0)`` every
``server.heap_trim_interval_s`` in a worker thread, handing the free pages
inside every arena back to the system. All are no-ops where the C library is
not glibc. (The onnxruntime sessions of the VAD and Smart Turn run without
onnxruntime's CPU arena for the same reason; the measurements behind each
choice are in RELIABILITY.md, "Soak", and ARCHITECTURE.md, "Memory".)
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
