"""``python -m services.asr [--port N] [--host H] [--config FILE]``: run one ASR instance in the foreground."""

from __future__ import annotations

import argparse
import sys

from ..common.logs import configure_logging
from ..common.serve import serve
from ..common.settings import SettingsError
from .settings import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.asr", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (default: $ASR_CONFIG or services/asr/config.yaml)")
    parser.add_argument("--host", help="bind address (server.host)")
    parser.add_argument("--port", type=int, help="port (server.port)")
    args = parser.parse_args(argv)
    overrides: dict = {}
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port:
        overrides.setdefault("server", {})["port"] = args.port
    try:
        settings = load(args.config, **overrides)
    except SettingsError as exc:
        print(f"asr: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level, settings.server.log_json)
    from .app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. a missing api_keys_file or a short key
        print(f"asr: {exc}", file=sys.stderr)
        return 2
    s = settings.server
    # SIGTERM drains open sessions first (services/common/serve.py); proxy headers are trusted from
    # FORWARDED_ALLOW_IPS (default loopback), so clients' real addresses come through nginx.
    serve(app, host=s.host, port=s.port, drain_timeout_s=s.drain_timeout_s, log_level=s.log_level,
          ws_max_size=max(16 << 20, 2 * s.max_frame_bytes), ws_ping_interval=20, ws_ping_timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
