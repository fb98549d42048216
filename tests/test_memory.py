"""Process memory policy (services/common/memory.py) on this machine's glibc."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.common.memory import HeapTrimmer, freeze_startup_heap, limit_arenas, resident_bytes

glibc = pytest.mark.skipif(not HeapTrimmer(1).enabled, reason="needs glibc")


@glibc
def test_trim_hands_free_pages_inside_the_heap_back_to_the_system():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 100_000, 1500  # below the mmap threshold: these land in the heap
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)  # resident
    for block in blocks[:-1]:  # the last one pins the heap's top, so free() alone gives nothing back
        libc.free(block)
    trimmer = HeapTrimmer(30)
    try:
        before = resident_bytes()
        released = trimmer.trim()
        after = resident_bytes()
    finally:
        libc.free(blocks[-1])
    assert trimmer.trims == 1
    assert released >= 100 * 2**20, (before, after)  # ~150 MB were free but resident
    assert after < before


class CountedTrimmer(HeapTrimmer):
    """A HeapTrimmer that says when it has trimmed ``n`` times."""

    def __init__(self, interval_s: float, n: int) -> None:
        super().__init__(interval_s)
        self.reached = threading.Event()
        self.n = n

    def trim(self) -> int:
        released = super().trim()
        if self.trims >= self.n:
            self.reached.set()
        return released


def test_trimmer_runs_on_its_period_and_zero_turns_it_off():
    assert not HeapTrimmer(0).enabled
    if not HeapTrimmer(1).enabled:
        pytest.skip("no glibc malloc_trim here")

    async def run() -> bool:
        trimmer = CountedTrimmer(0.05, 3)
        trimmer.start()
        reached = await asyncio.to_thread(trimmer.reached.wait, 30)  # three trims, on its own, one after another
        await trimmer.stop()
        return reached

    assert asyncio.run(run())


def test_freeze_moves_the_start_up_heap_out_of_the_collectors_reach():
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 1000
        assert len(gc.get_objects(generation=2)) < 100  # a full collection has (almost) nothing left to scan
    finally:
        gc.unfreeze()


def run_fresh(script: str, *args: str) -> str:
    """Run ``script`` in a fresh interpreter from the repository root (process-wide allocator state); its stdout."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return done.stdout


ARENAS_SCRIPT = """
import ctypes, sys, tempfile, threading
from services.common.memory import limit_arenas
limit_arenas(int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(9)
def work():
    block = libc.malloc(4096)
    together.wait()  # all eight threads are alive at once, each has allocated
    together.wait()
    libc.free(block)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
together.wait()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(open(out.name).read().count("<heap nr="))
together.wait()
for t in threads:
    t.join()
"""


@glibc
def test_arena_cap_bounds_the_heaps_threads_allocate_from():
    """Eight threads allocating at once: glibc gives each its own arena (up to 8 per core) unless capped."""
    assert int(run_fresh(ARENAS_SCRIPT, "2")) == 2
    assert int(run_fresh(ARENAS_SCRIPT, "0")) > 2  # glibc's default: a new arena per thread while under 8 per core
    assert not limit_arenas(0)


ONNX_SCRIPT = """
import ctypes
import numpy as np
from services.asr.turn import SmartTurnModel
from services.common.vad import SileroVad, VadStream
from services.common.memory import resident_bytes
libc = ctypes.CDLL("libc.so.6")
rng = np.random.default_rng(0)
turn, vad = SmartTurnModel(), SileroVad()
def noise(seconds):
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
def settled():
    libc.malloc_trim(0)
    return resident_bytes()
turn.predict([noise(8)]); vad.probabilities(VadStream(), noise(1.024))
before = settled()
turn.predict([noise(8) for _ in range(16)]); vad.probabilities(VadStream(), noise(61.44))  # the biggest batches
print(round((settled() - before) / 2**20, 1))
"""


@glibc
def test_a_big_vad_or_smart_turn_batch_leaves_no_memory_behind():
    """onnxruntime's CPU arena keeps the largest batch's buffers for the life of the process (it only grows: the
    ASR soak's steps of 16-32 MB); the VAD and Smart Turn sessions run without it, so a trim hands them back."""
    left_mb = float(run_fresh(ONNX_SCRIPT))  # 296 MB with onnxruntime's arena on, 0 without (measured here)
    assert left_mb < 16, f"{left_mb} MB still resident after a 16 x 8 s Smart Turn batch"
