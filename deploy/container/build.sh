#!/usr/bin/env bash
# Build the ASR and TTS images (deploy/container/Containerfile) with the host's package-index settings passed
# in as build secrets: the index and proxy variables of uv and pip (and pip's configured index-url), and the
# CA bundle the host trusts. Nothing of them is written into a layer.
#
#   deploy/container/build.sh [--engine docker|podman] [--tag-prefix voice-services/] [--tag latest]
#                             [--targets "asr tts"] [-- extra build arguments, e.g. --build-arg BASE_IMAGE=...]
#
# Runs the builds at nice 10. DOCKER (or --engine) picks the client; a docker client needs BuildKit
# (Docker 20.10's own client, or one with buildx).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENGINE="${DOCKER:-}"
PREFIX="voice-services/"
TAG="latest"
TARGETS="asr tts"
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) ENGINE="$2"; shift 2 ;;
    --tag-prefix) PREFIX="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$ENGINE" ]; then
  if [ -x /usr/bin/docker ]; then ENGINE=/usr/bin/docker
  elif command -v docker >/dev/null; then ENGINE=docker
  else ENGINE=podman; fi
fi

secrets="$(mktemp -d)"
trap 'rm -rf "$secrets"' EXIT
# Index and proxy settings: only network URLs travel (a file:// index on the host does not exist in a build).
: > "$secrets/index_env"
for var in UV_INDEX_URL UV_DEFAULT_INDEX UV_INDEX UV_EXTRA_INDEX_URL UV_NATIVE_TLS PIP_INDEX_URL \
           PIP_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  value="${!var:-}"
  case "$value" in ""|file:*) ;; *) printf '%s=%q\n' "$var" "$value" >> "$secrets/index_env" ;; esac
done
if command -v pip >/dev/null || command -v pip3 >/dev/null; then
  pip_index="$( (pip3 config get global.index-url || pip config get global.index-url) 2>/dev/null || true)"
  case "$pip_index" in http*) grep -q '^UV_DEFAULT_INDEX=\|^UV_INDEX_URL=' "$secrets/index_env" ||
    printf 'PIP_INDEX_URL=%q\nUV_INDEX_URL=%q\n' "$pip_index" "$pip_index" >> "$secrets/index_env" ;; esac
fi
ca=""
for candidate in "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt \
                 /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -n "$candidate" ] && [ -s "$candidate" ]; then ca="$candidate"; break; fi
done
secret_args=(--secret "id=index_env,src=$secrets/index_env")
[ -n "$ca" ] && secret_args+=(--secret "id=ca,src=$ca")

format=()
case "$(basename "$ENGINE")" in podman*|buildah*) format=(--format docker) ;; esac  # keep HEALTHCHECK
for target in $TARGETS; do
  echo "build.sh: $target -> ${PREFIX}${target}:${TAG} ($ENGINE)" >&2
  DOCKER_BUILDKIT=1 nice -n 10 "$ENGINE" build --network=host "${format[@]}" "${secret_args[@]}" \
    -f "$ROOT/deploy/container/Containerfile" --target "$target" -t "${PREFIX}${target}:${TAG}" "$@" "$ROOT"
done
