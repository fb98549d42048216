"""What this machine's CPU computes exactly, for the choices the models' runtimes leave to us.

Owns one question: whether int8 matrix products are exact here. x86 CPUs without VNNI (AVX2, AVX-512F)
multiply unsigned by signed int8 in ``vpmaddubsw``, which sums pairs into saturating 16-bit registers, so a
quantised model's outputs move a little; VNNI (AVX-512 or AVX), AMX and ARM's dot products accumulate in 32 bits.
CTranslate2 then runs int8 or float32 (``compute_type: auto``), onnxruntime promotes to 16-bit products only where
it has to (``session.x64quantprecision``): the slower exact path costs only the CPUs that need it.
"""

from __future__ import annotations

import platform

__all__ = ["EXACT_INT8_FLAGS", "cpu_flags", "int8_is_exact"]

EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def int8_is_exact(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """True where int8 products accumulate without saturation: non-x86 CPUs, and x86 ones with VNNI or AMX.

    An x86 CPU whose flags cannot be read (not Linux) counts as inexact: the safe answer."""
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return True
    return bool((flags if flags is not None else cpu_flags()) & EXACT_INT8_FLAGS)
