#!/usr/bin/env bash
# A whole cluster on this machine, in the foreground: 2 ASR + 2 TTS instances and nginx in front.
#   scripts/start_all.sh
# Front (nginx): http://127.0.0.1:8080 (CLUSTER_FRONT_PORT) serves every route of both services.
# Instances:     ASR on 8001 and 8011 (CLUSTER_ASR_PORTS), TTS on 8002 and 8012 (CLUSTER_TTS_PORTS), loopback only;
#                the TTS instances share one voice store (VOICE_STORE, default ./voices).
# nginx runs unprivileged with a generated config in a temporary run directory (no system nginx service).
# Ctrl-C or SIGTERM stops everything it started: the instances drain their open streams first.
# Extra ASR_* / TTS_* environment variables reach every instance (see README "Configuration").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv/bin/python" ] || "$ROOT/scripts/install.sh"
cd "$ROOT"
CLUSTER_FRONT_PORT="${CLUSTER_FRONT_PORT:-8080}"
CLUSTER_ASR_PORTS="${CLUSTER_ASR_PORTS:-8001,8011}"
CLUSTER_TTS_PORTS="${CLUSTER_TTS_PORTS:-8002,8012}"
export TTS_VOICES__STORE_DIR="${VOICE_STORE:-${TTS_VOICES__STORE_DIR:-$ROOT/voices}}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || { echo "start_all: nginx not found (scripts/install.sh installs it)" >&2; exit 1; }
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/voice-cluster.XXXXXX")"
mkdir -p "$TTS_VOICES__STORE_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "start_all: stopping (instances drain open streams first)" >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait || true
  rm -rf "$RUN_DIR"
}
trap cleanup INT TERM EXIT

for p in ${CLUSTER_ASR_PORTS//,/ }; do .venv/bin/python -m services.asr --host 127.0.0.1 --port "$p" & pids+=($!); done
for p in ${CLUSTER_TTS_PORTS//,/ }; do .venv/bin/python -m services.tts --host 127.0.0.1 --port "$p" & pids+=($!); done

# nginx starts once every instance is ready (models loaded), so the first requests do not meet a 503.
for p in ${CLUSTER_ASR_PORTS//,/ } ${CLUSTER_TTS_PORTS//,/ }; do
  for _ in $(seq 1 600); do
    .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$p/ready" >/dev/null 2>&1 && break
    for q in "${pids[@]}"; do kill -0 "$q" 2>/dev/null || { echo "start_all: an instance exited" >&2; exit 1; }; done
    sleep 0.5
  done
done
.venv/bin/python deploy/nginx/render.py --listen "127.0.0.1:$CLUSTER_FRONT_PORT" --asr "$CLUSTER_ASR_PORTS" --tts "$CLUSTER_TTS_PORTS" \
  --standalone "$RUN_DIR" $([ "$(id -u)" = 0 ] && echo --user root) > "$RUN_DIR/nginx.conf"
"$NGINX" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/error.log" & pids+=($!)
echo "start_all: front http://127.0.0.1:$CLUSTER_FRONT_PORT (ws://127.0.0.1:$CLUSTER_FRONT_PORT/v1/stream/asr, .../tts);" \
     "ASR on $CLUSTER_ASR_PORTS, TTS on $CLUSTER_TTS_PORTS, voices in $TTS_VOICES__STORE_DIR, nginx logs in $RUN_DIR; Ctrl-C stops" >&2
wait -n
