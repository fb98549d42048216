"""``python -m cloning_tts --host H --port N`` (with tests/ on PYTHONPATH): the real TTS service, served
exactly as ``python -m services.tts`` serves it (SIGTERM drain, balancer gate), but with the cloning-capable
ChatterboxEngine wrapped around the torch-free stand-in model of tests/test_tts_cloning.py. The cluster tests
run two of these on one voice store (``TTS_VOICES__STORE_DIR``), because the default Piper engine answers 501
to ``POST /v1/voices``. Its audio is a constant at the voice's level, which tells which voice spoke."""

from __future__ import annotations

import argparse
import sys

from services.common.logs import configure_logging
from services.common.serve import serve
from services.tts.app import create_app
from services.tts.chatterbox import ChatterboxEngine
from services.tts.settings import load
from test_tts_cloning import FakeChatterbox, FakeConds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloning_tts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = load(server={"host": args.host, "port": args.port}, voices={"min_speech_s": 1.0})
    configure_logging(settings.server.log_level, settings.server.log_json)
    app = create_app(settings, engine=ChatterboxEngine(FakeChatterbox(builtin=FakeConds(0.5)), FakeConds))
    s = settings.server
    serve(app, host=s.host, port=s.port, drain_timeout_s=s.drain_timeout_s, log_level=s.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
