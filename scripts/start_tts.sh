#!/usr/bin/env bash
# Start one TTS instance in the foreground: scripts/start_tts.sh [--port N] [--host H] [--config FILE]
# Settings: services/tts/config.yaml, overridable by TTS_<SECTION>__<KEY> environment variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m services.tts "$@"
