#!/usr/bin/env bash
# A whole cluster on this machine, in the foreground: 2 ASR + 2 TTS instances and nginx in front.
#   scripts/start_all.sh
# Front (nginx): http://127.0.0.1:8080 (CLUSTER_FRONT_PORT) serves every route of both services.
# Instances:     ASR on 8001 and 8011 (CLUSTER_ASR_PORTS), TTS on 8002 and 8012 (CLUSTER_TTS_PORTS), loopback only;
#                the TTS instances share one voice store (VOICE_STORE, default ./voices).
# nginx runs unprivileged with a generated config in a temporary run directory (no system nginx service).
# It heals: an instance (or nginx) that exits once the cluster is up is started again after a backoff (1 s, doubling
# to 30 s; back to 1 s after a run of a minute), with a "start_all: ..." line on stderr saying how it ended (its exit
# status or signal). Meanwhile nginx sends its requests to the other instances. A SIGTERM sent to one instance is a
# rolling restart: it drains, exits 0 and comes back. An exit during start-up stops everything (exit 1).
# Ctrl-C or SIGTERM stops everything it started: the instances drain their open streams first, and nginx keeps the
# drained streams' connections until the instances close them.
# Extra ASR_* / TTS_* environment variables reach every instance (see README "Configuration"), except the Wyoming
# ports (ASR_WYOMING__PORT, TTS_WYOMING__PORT; docs/wyoming.md): only the first instance of each service listens
# there (Home Assistant connects to one address; nginx does not balance Wyoming's TCP).
set -euo pipefail
set -m  # every job in its own process group: Ctrl-C reaches this script only, and each instance gets one SIGTERM
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$ROOT/.venv/bin/python" ] || "$ROOT/scripts/install.sh"
cd "$ROOT"
CLUSTER_FRONT_PORT="${CLUSTER_FRONT_PORT:-8080}"
CLUSTER_ASR_PORTS="${CLUSTER_ASR_PORTS:-8001,8011}"
CLUSTER_TTS_PORTS="${CLUSTER_TTS_PORTS:-8002,8012}"
export TTS_VOICES__STORE_DIR="${VOICE_STORE:-${TTS_VOICES__STORE_DIR:-$ROOT/voices}}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || { echo "start_all: nginx not found (scripts/install.sh installs it)" >&2; exit 1; }
SETSID="$(command -v setsid || true)"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/voice-cluster.XXXXXX")"
mkdir -p "$TTS_VOICES__STORE_DIR"

# supervise NAME STOP_SIGNAL COMMAND...: run COMMAND; whenever it exits, log why and start it again after the backoff.
# Before the cluster is first up ($RUN_DIR/up), an exit ends the supervisor instead: a bad setting or a port in use
# must not loop. STOP_SIGNAL is what a SIGTERM to the supervisor passes on (TERM drains an instance; QUIT makes nginx
# stop listening but keep its open connections until the draining instances close them).
supervise() {
  local name=$1 stop=$2 child=0 rc delay=1 restarts=0 started why stopping=0
  shift 2
  # a second SIGTERM (a second Ctrl-C) stops the process at once
  trap '[ "$stopping" = 0 ] || stop=TERM; stopping=1; [ "$child" = 0 ] || kill -s "$stop" "$child" 2>/dev/null || true' TERM
  while :; do
    started=$SECONDS
    $SETSID "$@" & child=$!  # its own process group: what it leaves behind can be cleared (nginx's workers)
    echo "start_all: $name started (pid $child)" >&2
    while :; do  # a trapped signal interrupts wait: wait again until the process has really gone
      rc=0; wait "$child" || rc=$?
      kill -0 "$child" 2>/dev/null || break
    done
    # Workers orphaned by a killed nginx master still hold its port: clear its process group. (Not bash's own kill
    # with -PID: for a job it remembers, that signals the group the job started in, this supervisor's.)
    [ -z "$SETSID" ] || pkill -KILL -g "$child" 2>/dev/null || true
    [ "$stopping" = 0 ] || exit 0
    if [ "$rc" -gt 128 ] && why="was killed by SIG$(kill -l $((rc - 128)) 2>/dev/null)"; then :
    else why="exited with status $rc"; fi
    [ -e "$RUN_DIR/up" ] || { echo "start_all: $name $why during start-up" >&2; exit 1; }
    [ $((SECONDS - started)) -lt 60 ] || delay=1
    restarts=$((restarts + 1))
    echo "start_all: $name (pid $child) $why after $((SECONDS - started)) s; restart $restarts in $delay s" >&2
    sleep "$delay" & child=$!
    wait "$child" || true  # a SIGTERM during the backoff ends the sleep at once
    [ "$stopping" = 0 ] || exit 0
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
}

sups=()
stop_all() { for p in "${sups[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
cleanup() {
  trap - EXIT
  trap 'echo "start_all: stopping now" >&2; stop_all' INT TERM  # a second Ctrl-C: no drain
  echo "start_all: stopping (instances drain open streams first; Ctrl-C again stops at once)" >&2
  stop_all
  for p in "${sups[@]}"; do while kill -0 "$p" 2>/dev/null; do wait "$p" || true; done; done
  rm -rf "$RUN_DIR"
}
trap cleanup INT TERM EXIT

wyoming=()  # the first instance of a service keeps its Wyoming port; the others turn theirs off
for p in ${CLUSTER_ASR_PORTS//,/ }; do
  supervise "asr :$p" TERM "${wyoming[@]}" .venv/bin/python -m services.asr --host 127.0.0.1 --port "$p" & sups+=($!)
  wyoming=(env ASR_WYOMING__PORT=0)
done
wyoming=()
for p in ${CLUSTER_TTS_PORTS//,/ }; do
  supervise "tts :$p" TERM "${wyoming[@]}" .venv/bin/python -m services.tts --host 127.0.0.1 --port "$p" & sups+=($!)
  wyoming=(env TTS_WYOMING__PORT=0)
done

# up URL: wait until URL answers (bounded); fail at once when a supervisor gave up (its process exited in start-up).
up() {
  for _ in $(seq 1 1200); do
    .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" \
      >/dev/null 2>&1 && return 0
    for q in "${sups[@]}"; do kill -0 "$q" 2>/dev/null || { echo "start_all: an instance exited" >&2; exit 1; }; done
    sleep 0.5
  done
  echo "start_all: $1 did not answer in 10 minutes" >&2; exit 1
}
# nginx starts once every instance is ready (models loaded), so the first requests do not meet a 503.
for p in ${CLUSTER_ASR_PORTS//,/ } ${CLUSTER_TTS_PORTS//,/ }; do up "http://127.0.0.1:$p/ready"; done
.venv/bin/python deploy/nginx/render.py --listen "127.0.0.1:$CLUSTER_FRONT_PORT" --asr "$CLUSTER_ASR_PORTS" --tts "$CLUSTER_TTS_PORTS" \
  --standalone "$RUN_DIR" $([ "$(id -u)" = 0 ] && echo --user root) > "$RUN_DIR/nginx.conf"
supervise nginx QUIT "$NGINX" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/error.log" & sups+=($!)
up "http://127.0.0.1:$CLUSTER_FRONT_PORT/health"
touch "$RUN_DIR/up"
echo "start_all: front http://127.0.0.1:$CLUSTER_FRONT_PORT (ws://127.0.0.1:$CLUSTER_FRONT_PORT/v1/stream/asr, .../tts);" \
     "ASR on $CLUSTER_ASR_PORTS, TTS on $CLUSTER_TTS_PORTS, voices in $TTS_VOICES__STORE_DIR, nginx logs in $RUN_DIR; Ctrl-C stops" >&2
wait -n || true  # a supervisor ends only when told to, or when killed itself: then stop the rest
