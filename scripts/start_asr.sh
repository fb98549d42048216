#!/usr/bin/env bash
# Run one ASR instance in the foreground.
#   scripts/start_asr.sh [--port N] [--host H] [--config FILE]
# Settings: services/asr/config.yaml, overridable by ASR_<SECTION>__<KEY> environment variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv/bin/python" ] || "$ROOT/scripts/install.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m services.asr "$@"
