"""The ASR process keeps no thread spinning between its models' calls: ``python -m services.asr`` sets the thread
libraries' environment before numpy and CTranslate2 load, and an operator's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.asr.__main__ import quiet_threads

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# Counts the process's threads before and after numpy loads and runs one matrix product (as the log-mel does).
COUNT_THREADS = """
import os, sys
if sys.argv[1] == "quiet":
    from services.asr.__main__ import quiet_threads
    quiet_threads(os.environ)
before = len(os.listdir("/proc/self/task"))
import numpy
numpy.ones((80, 201), dtype=numpy.float32) @ numpy.ones((201, 400), dtype=numpy.float32)
print(before, len(os.listdir("/proc/self/task")))
"""


def _threads_started_by_numpy(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", COUNT_THREADS, mode], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    before, after = map(int, out.stdout.split())
    return after - before


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_numpy_starts_no_blas_thread_in_the_asr_process():
    started = _threads_started_by_numpy("plain")
    if started == 0:
        pytest.skip("this numpy's BLAS starts no thread of its own on this machine (one core, or no OpenBLAS)")
    assert _threads_started_by_numpy("quiet") == 0


def test_nothing_loads_numpy_or_ctranslate2_before_the_thread_settings():
    code = "import sys, services.asr.__main__; print(sorted({'numpy', 'ctranslate2', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_operators_thread_settings_win():
    env = {"OPENBLAS_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"}
    quiet_threads(env)
    assert env == {"OPENBLAS_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    quiet_threads(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "1"}
    env = {}
    quiet_threads(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}
