"""``python -m services.tts [--port N] [--host H] [--config FILE]``: run one TTS instance in the foreground."""

from __future__ import annotations

import sys

from ..common.serve import run_cli


def main(argv: list[str] | None = None) -> int:
    from .app import create_app
    from .settings import load

    return run_cli("tts", __doc__, load, create_app, lambda s: max(4 << 20, 4 * s.server.max_message_bytes), argv)


if __name__ == "__main__":
    sys.exit(main())
