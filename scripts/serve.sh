#!/usr/bin/env bash
# Start the ASR service (port 8001) and the TTS service (port 8002) on the embedded default models,
# in the foreground; Ctrl-C (or SIGTERM) stops both. Logs go to the terminal as JSON lines.
#   [ASR_PORT=8001] [TTS_PORT=8002] scripts/serve.sh [--host 0.0.0.0]
# Other ASR_* / TTS_* variables are settings and reach the services: ASR_WYOMING__PORT=10300 TTS_WYOMING__PORT=10200
# also serve Home Assistant's Wyoming protocol (docs/wyoming.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv/bin/python" ] || "$ROOT/scripts/install.sh"
cd "$ROOT"
# ASR_PORT / TTS_PORT pick the ports; they are not settings, so the services must not see them.
asr_port="${ASR_PORT:-8001}" tts_port="${TTS_PORT:-8002}"
unset ASR_PORT TTS_PORT
pids=()
cleanup() { trap - INT TERM EXIT; for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap cleanup INT TERM EXIT
"$ROOT/scripts/start_asr.sh" --port "$asr_port" "$@" & pids+=($!)
if [ -f "$ROOT/services/tts/__main__.py" ]; then
  "$ROOT/scripts/start_tts.sh" --port "$tts_port" "$@" & pids+=($!)
fi
echo "serve: ASR on :$asr_port$([ ${#pids[@]} -gt 1 ] && echo ", TTS on :$tts_port"); Ctrl-C stops" >&2
wait -n
