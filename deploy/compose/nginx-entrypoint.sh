#!/bin/sh
# nginx in front of the compose stack. nginx resolves a service name (asr, tts) to every replica's address when
# it loads its configuration, so this script starts it once every name resolves, then looks the names up again
# every RESOLVE_INTERVAL_S seconds and reloads nginx when the set of addresses changed: a replica added with
# `--scale`, removed, or restarted with a new address. A reload keeps open WebSockets on the old workers until
# they end. SIGTERM stops nginx gracefully (QUIT: open connections finish first).
set -eu
CONF="${NGINX_CONF:-/etc/voice-services/nginx.conf}"
RUN_DIR="${NGINX_RUN_DIR:-/tmp/nginx}"
NAMES="${UPSTREAM_NAMES:-asr tts}"
INTERVAL="${RESOLVE_INTERVAL_S:-5}"

addresses() {  # one line per name: its sorted addresses; empty output if any name does not resolve
  out=""
  for name in $NAMES; do
    found="$(getent ahosts "$name" | awk '{print $1}' | sort -u | tr '\n' ' ')" || found=""
    [ -n "$found" ] || return 0
    out="$out$name: $found
"
  done
  printf '%s' "$out"
}

mkdir -p "$RUN_DIR"
chown nobody "$RUN_DIR" 2>/dev/null || true
ln -sf /dev/stderr "$RUN_DIR/error.log"
ln -sf /dev/stdout "$RUN_DIR/access.log"

current="$(addresses)"
until [ -n "$current" ]; do
  echo "nginx-entrypoint: waiting for $NAMES to resolve" >&2
  sleep 1
  current="$(addresses)"
done
printf 'nginx-entrypoint: upstreams\n%s\n' "$current" >&2
nginx -t -c "$CONF" -e stderr >&2
nginx -c "$CONF" -e stderr &
pid=$!
trap 'kill -QUIT "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT

while kill -0 "$pid" 2>/dev/null; do
  sleep "$INTERVAL" &
  wait $! || true
  seen="$(addresses)"
  if [ -n "$seen" ] && [ "$seen" != "$current" ]; then
    printf 'nginx-entrypoint: upstreams changed, reloading\n%s\n' "$seen" >&2
    if nginx -t -c "$CONF" -e stderr >&2 && kill -HUP "$pid"; then current="$seen"; fi
  fi
done
wait "$pid" || status=$?
echo "nginx-entrypoint: nginx exited (${status:-0})" >&2
exit "${status:-1}"
