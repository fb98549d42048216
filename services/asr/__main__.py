"""``python -m services.asr [--port N] [--host H] [--config FILE]``: run one ASR instance in the foreground."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from ..common.serve import run_cli


def quiet_threads(environ: MutableMapping[str, str]) -> None:
    """No thread of the process spins while idle: Whisper shares the cores with Smart Turn and Silero, and a
    spinning thread takes their CPU (docs/benchmarks.md). ``OMP_WAIT_POLICY=PASSIVE``: CTranslate2's OpenMP threads
    sleep when idle. ``OPENBLAS_NUM_THREADS=1``: numpy's OpenBLAS runs its small products (the log-mel filterbanks)
    on the calling thread instead of worker threads that spin for ~0.1 s after each product. Must be called before
    numpy and CTranslate2 load; an operator's own setting wins."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    quiet_threads(os.environ)
    from .app import create_app
    from .settings import load

    return run_cli("asr", __doc__, load, create_app, lambda s: max(16 << 20, 2 * s.server.max_frame_bytes), argv)


if __name__ == "__main__":
    sys.exit(main())
