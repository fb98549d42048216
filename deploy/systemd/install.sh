#!/usr/bin/env bash
# Install the voice services under systemd on a Debian/Ubuntu host (run as root; idempotent).
#
#   deploy/systemd/install.sh [--prefix /opt/voice-services] [--asr-ports 8001,8011] [--tts-ports 8002,8012]
#                             [--store /var/lib/voice-services/voices] [--no-start]
#
# 1. creates the system user `voice` (no login shell);
# 2. copies this checkout to PREFIX (unless it already is PREFIX) and builds PREFIX/.venv (scripts/install.sh);
# 3. creates the voice store (writable by `voice`: the only path the units may write);
# 4. writes /etc/voice-services/asr.env and tts.env if they do not exist (never overwrites your edits);
# 5. installs voice-agent-asr@.service / voice-agent-tts@.service (paths rewritten to PREFIX and the store),
#    reloads systemd and enables + starts one instance per port (unless --no-start).
# Put nginx in front with deploy/nginx/render.py (see LOAD_BALANCING.md).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX=/opt/voice-services
STORE=/var/lib/voice-services/voices
ASR_PORTS=8001,8011
TTS_PORTS=8002,8012
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    --asr-ports) ASR_PORTS="$2"; shift 2 ;;
    --tts-ports) TTS_PORTS="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/voice-services

# 1. the user (Debian and Ubuntu already have a group `voice`, gid 22, from base-passwd: it is reused)
getent group voice >/dev/null || groupadd --system voice
if ! id voice >/dev/null 2>&1; then
  useradd --system --gid voice --home-dir /var/lib/voice-services --no-create-home --shell /usr/sbin/nologin voice
  echo "install: created user voice"
fi

# 2. the code and its environment (root-owned, readable by voice)
if [ "$(realpath -m "$PREFIX")" != "$SRC" ]; then
  mkdir -p "$PREFIX"
  tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' -cf - . | tar -C "$PREFIX" -xf -
  echo "install: copied $SRC to $PREFIX"
fi
"$PREFIX/scripts/install.sh"
chmod -R a+rX "$PREFIX"
PY="$(readlink -f "$PREFIX/.venv/bin/python")"

# 3. the voice store (shared by every TTS instance of this host; put it on shared storage for several hosts)
mkdir -p "$STORE"
chown voice:voice "$STORE"
chmod 750 "$STORE"

# 4. settings (same names as services/*/config.yaml; see README "Configuration")
mkdir -p "$CONF_DIR"
if [ ! -f "$CONF_DIR/asr.env" ]; then
  cat > "$CONF_DIR/asr.env" <<EOF
# ASR settings for every instance (ASR_<SECTION>__<KEY>); per-instance overrides go in asr-PORT.env.
ASR_SERVER__HOST=127.0.0.1
ASR_SERVER__MAX_CONNECTIONS=16
ASR_SERVER__DRAIN_TIMEOUT_S=30
# ASR_MODEL__NAME=large-v3
# ASR_MODEL__DEVICE=cuda
# ASR_MODEL__COMPUTE_TYPE=float16
EOF
fi
if [ ! -f "$CONF_DIR/tts.env" ]; then
  cat > "$CONF_DIR/tts.env" <<EOF
# TTS settings for every instance (TTS_<SECTION>__<KEY>); per-instance overrides go in tts-PORT.env.
TTS_SERVER__HOST=127.0.0.1
TTS_SERVER__MAX_CONNECTIONS=32
TTS_SERVER__DRAIN_TIMEOUT_S=20
TTS_VOICES__STORE_DIR=$STORE
EOF
fi
chmod 640 "$CONF_DIR"/*.env
chgrp voice "$CONF_DIR"/*.env

# 5. the units
for svc in asr tts; do
  sed -e "s#/opt/voice-services#$PREFIX#g" -e "s#/var/lib/voice-services/voices#$STORE#g" \
    "$SRC/deploy/systemd/voice-agent-$svc@.service" > "$UNIT_DIR/voice-agent-$svc@.service"
  case "$PY" in
    /root/*|/home/*)  # the interpreter lives in a home directory: ProtectHome=yes would hide it
      mkdir -p "$UNIT_DIR/voice-agent-$svc@.service.d"
      printf '[Service]\nProtectHome=read-only\n' > "$UNIT_DIR/voice-agent-$svc@.service.d/python-in-home.conf"
      echo "install: $PY is under a home directory; voice-agent-$svc@ gets ProtectHome=read-only" ;;
  esac
done
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$UNIT_DIR/voice-agent-asr@${ASR_PORTS%%,*}.service" \
    "$UNIT_DIR/voice-agent-tts@${TTS_PORTS%%,*}.service"
fi
if [ "$START" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  for p in ${ASR_PORTS//,/ }; do systemctl enable --now "voice-agent-asr@$p.service"; done
  for p in ${TTS_PORTS//,/ }; do systemctl enable --now "voice-agent-tts@$p.service"; done
  echo "install: started ASR on ${ASR_PORTS}, TTS on ${TTS_PORTS}"
else
  echo "install: units installed; start with: systemctl daemon-reload && systemctl enable --now voice-agent-asr@8001 ..."
fi
