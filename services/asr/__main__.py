"""``python -m services.asr [--port N] [--host H] [--config FILE]``: run one ASR instance in the foreground."""

from __future__ import annotations

import sys

from ..common.serve import run_cli


def main(argv: list[str] | None = None) -> int:
    from .app import create_app
    from .settings import load

    return run_cli("asr", __doc__, load, create_app, lambda s: max(16 << 20, 2 * s.server.max_frame_bytes), argv)


if __name__ == "__main__":
    sys.exit(main())
