"""``python -m services.asr [--port N] [--host H] [--config FILE]``: run one ASR instance in the foreground."""

from __future__ import annotations

import os
import sys

from ..common.serve import run_cli


def main(argv: list[str] | None = None) -> int:
    # CTranslate2's OpenMP threads sleep when idle instead of spinning: Whisper shares the cores with Smart Turn
    # and Silero, and spinning threads take their CPU (docs/benchmarks.md). Set before CTranslate2 loads; an
    # operator's own setting wins.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from .app import create_app
    from .settings import load

    return run_cli("asr", __doc__, load, create_app, lambda s: max(16 << 20, 2 * s.server.max_frame_bytes), argv)


if __name__ == "__main__":
    sys.exit(main())
