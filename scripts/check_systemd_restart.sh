#!/usr/bin/env bash
# Check that systemd brings a killed instance back under the project's units, with real systemd as PID 1:
#   1. a Debian bookworm root filesystem with systemd, python3 (3.11) and the apt packages scripts/install.sh
#      wants (mmdebstrap, cached for 7 days);
#   2. a podman container booting /lib/systemd/systemd from it, with no network (its own loopback: the
#      services keep their default ports and collide with nothing on the host), this checkout mounted
#      read-only, the host's uv binary, and the host's uv cache as a throw-away overlay (the locked environment
#      installs from it offline; nothing is written back);
#   3. inside it, deploy/systemd/install.sh exactly as on a host (user voice, /opt/voice-services, env files,
#      units, `systemctl enable --now`) for one ASR and one TTS instance;
#   4. for each: wait until the unit is active (Type=notify: READY=1 sent), /ready answers 200 and the unit has
#      outlived WatchdogSec (the watchdog is fed), SIGKILL its main process, and wait until systemd has restarted
#      it (NRestarts 1, a new main PID, active, /ready 200); then `systemctl stop` must end in result success
#      with no restart. Prints the journal lines and the time from the SIGKILL to ready again.
# Needs root, podman and mmdebstrap (apt-get install podman mmdebstrap runc: runc where the host mixes cgroup
# v1 and v2); skips (exit 0) with a message without them. Bounded: every wait has a deadline; the container
# and the temporary files go on exit. Takes about 3 minutes (4-6 more to build the root filesystem).
# Cache: $VOICE_SYSTEMD_CACHE (default ~/.cache/voice-services-systemd); delete it for a clean run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VOICE_SYSTEMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-services-systemd}"
NAME="voice-systemd-check-$$"
ASR_PORT=8001
TTS_PORT=8002
READY_TIMEOUT_S=300  # the units' TimeoutStartSec
START=$SECONDS

say() { printf 'check_systemd_restart [%4ss]: %s\n' "$((SECONDS - START))" "$*" >&2; }
skip() { say "SKIP: $*"; exit 0; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root (podman with systemd as init)"
command -v podman >/dev/null || skip "podman is missing (apt-get install podman)"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is missing (apt-get install mmdebstrap)"
UV="$(command -v uv || true)"
[ -n "$UV" ] || skip "uv is missing (run scripts/install.sh)"
UV="$(readlink -f "$(command -v pyenv >/dev/null && pyenv which uv 2>/dev/null || echo "$UV")")"
UV_CACHE="$("$UV" cache dir)"
[ -d "$UV_CACHE" ] || skip "no uv cache at $UV_CACHE (run scripts/install.sh first: the container installs from it)"
# the OCI runtime: runc where installed (as for docker), else crun (podman's own dependency)
RUNTIME="$(command -v runc >/dev/null && echo runc || echo crun)"
if [ "$RUNTIME" = crun ] && [ -d /sys/fs/cgroup/unified ]; then
  skip "hybrid cgroups (v1 + v2), which crun refuses: apt-get install runc"
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d /tmp/voice-systemd.XXXXXX)"
# podman's settings for this run only (the host's containers.conf is left alone)
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "$RUNTIME"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

cleanup() {
  status=$?
  set +e
  if podman container exists "$NAME" 2>/dev/null; then
    [ $status = 0 ] || podman exec "$NAME" journalctl --no-pager -n 40 -u 'voice-agent-*' >&2 2>/dev/null
    podman rm -f -t 5 "$NAME" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  say "$([ $status = 0 ] && echo PASSED || echo "FAILED ($status)") in $((SECONDS - START)) s"
}
trap cleanup EXIT

# ---- 1. the root filesystem ------------------------------------------------------------------------------
ROOTFS="$CACHE/rootfs"
if [ ! -f "$ROOTFS/.complete" ] || [ -n "$(find "$ROOTFS/.complete" -mtime +7)" ]; then
  say "mmdebstrap: bookworm with systemd, python3 and scripts/install.sh's apt packages (a few minutes)"
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  apt_packages="$(sed -n 's/^APT_PACKAGES=(\(.*\))$/\1/p' "$ROOT/scripts/install.sh" | tr ' ' ',')"
  [ -n "$apt_packages" ] || fail "cannot read APT_PACKAGES from scripts/install.sh"
  nice -n 10 mmdebstrap --quiet --variant=minbase \
    --include="systemd,systemd-sysv,dbus,python3,curl,procps,$apt_packages" bookworm "$ROOTFS.tmp" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >"$WORK/mmdebstrap.log" 2>&1 \
    || { tail -20 "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap"; }
  touch "$ROOTFS.tmp/.complete"
  mv "$ROOTFS.tmp" "$ROOTFS"
fi

# ---- 2. boot systemd ------------------------------------------------------------------------------------
say "podman: booting systemd ($(podman --version), $RUNTIME)"
podman run -d --name "$NAME" --systemd=always --privileged --network=none \
  -v "$ROOT:/src:ro" -v "$UV:/usr/local/bin/uv:ro" -v "$UV_CACHE:/root/.cache/uv:O" \
  --rootfs "$ROOTFS:O" /lib/systemd/systemd >/dev/null
inside() { podman exec "$NAME" "$@"; }
for _ in $(seq 120); do
  state="$(inside systemctl is-system-running 2>/dev/null || true)"
  case "$state" in running|degraded) break ;; esac
  sleep 0.5
done
case "$state" in running|degraded) ;; *) fail "systemd did not boot (state: ${state:-none})" ;; esac
say "systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) is PID 1: $state"

# ---- 3. install.sh as on a host ----------------------------------------------------------------------------
say "deploy/systemd/install.sh --asr-ports $ASR_PORT --tts-ports $TTS_PORT"
timeout 600 podman exec -e UV_OFFLINE=1 -e UV_LINK_MODE=copy "$NAME" \
  /src/deploy/systemd/install.sh --asr-ports "$ASR_PORT" --tts-ports "$TTS_PORT" >"$WORK/install.log" 2>&1 \
  || { tail -30 "$WORK/install.log" >&2; fail "install.sh"; }
sed 's/^/  /' "$WORK/install.log" >&2

# ---- 4. kill and watch it come back ------------------------------------------------------------------------
# One script inside the container per unit, so the timings do not include podman exec's start-up.
check_unit() {  # unit port
  timeout $((3 * READY_TIMEOUT_S)) podman exec -i "$NAME" bash -s "$1" "$2" "$READY_TIMEOUT_S" <<'EOF'
set -euo pipefail
unit="$1"; port="$2"; limit="$3"
now() { date +%s.%N; }
prop() { systemctl show -P "$1" "$unit"; }
ready() { [ "$(systemctl is-active "$unit")" = active ] && curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/ready"; }
wait_until() {  # what... ; polls every 0.1 s until it holds or $limit s pass
  local end; end=$(( $(date +%s) + limit ))
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.1; done
}
t0=$(now)
wait_until ready || { echo "FAIL $unit: not ready within $limit s ($(systemctl is-active "$unit"))"; exit 1; }
# the watchdog is fed: the unit outlives WatchdogSec (+5 s) with no restart
mono_us() { python3 -c 'import time; print(int(time.monotonic() * 1e6))'; }
watchdog_us="$(tr '\0' '\n' < "/proc/$(prop MainPID)/environ" | sed -n 's/^WATCHDOG_USEC=//p')"
[ -n "$watchdog_us" ] || { echo "FAIL $unit: systemd gave the service no WATCHDOG_USEC"; exit 1; }
fed_until=$(( $(prop ActiveEnterTimestampMonotonic) + watchdog_us + 5000000 ))
fed() { [ "$(mono_us)" -ge "$fed_until" ]; }
wait_until fed
[ "$(prop NRestarts)" = 0 ] && [ "$(systemctl is-active "$unit")" = active ] \
  || { echo "FAIL $unit: restarted before the kill (NRestarts $(prop NRestarts): the watchdog?)"; exit 1; }
pid="$(prop MainPID)"
first_start_s=$(( $(prop ActiveEnterTimestampMonotonic) - $(prop ExecMainStartTimestampMonotonic) ))
echo "$unit: active, /ready 200, watchdog fed for $(( ($(mono_us) - $(prop ActiveEnterTimestampMonotonic)) / 1000000 )) s, main PID $pid, NRestarts 0, settings Restart=$(prop Restart) RestartUSec=$(prop RestartUSec) WatchdogUSec=$(prop WatchdogUSec)"
since="$(date '+%Y-%m-%d %H:%M:%S')"
t_kill=$(now)
kill -KILL "$pid"
restarted() {  # a new main process; gives up at once if systemd let the unit fail instead
  [ "$(systemctl is-active "$unit")" != failed ] || { echo "FAIL $unit: left failed, not restarted ($(prop Result))"; exit 1; }
  [ "$(prop NRestarts)" = 1 ] && [ "$(prop MainPID)" != "$pid" ] && [ "$(prop MainPID)" != 0 ]
}
wait_until restarted || { echo "FAIL $unit: not restarted within $limit s (NRestarts $(prop NRestarts), $(systemctl is-active "$unit"))"; exit 1; }
t_started=$(now)
wait_until ready || { echo "FAIL $unit: restarted but not ready within $limit s"; exit 1; }
t_ready=$(now)
echo "$unit: back: main PID $(prop MainPID), NRestarts $(prop NRestarts), $(systemctl is-active "$unit"), /ready 200"
journalctl --no-pager -o short-precise -u "$unit" --since "$since" | grep ' systemd\[1\]: ' | sed 's/^/  journal: /'
restart_s=$(( $(prop ActiveEnterTimestampMonotonic) - $(prop ExecMainStartTimestampMonotonic) ))
# and a stop is not a failure: SIGTERM drains, the process exits 0, systemd leaves it stopped
systemctl stop "$unit"
[ "$(systemctl is-active "$unit")" = inactive ] && [ "$(prop Result)" = success ] && [ "$(prop NRestarts)" = 1 ] \
  || { echo "FAIL $unit: after systemctl stop: $(systemctl is-active "$unit"), result $(prop Result)"; exit 1; }
echo "$unit: systemctl stop: inactive, result success, not restarted (exit status $(prop ExecMainStatus))"
awk -v k="$t_kill" -v s="$t_started" -v r="$t_ready" -v u="$unit" -v f="$first_start_s" -v g="$restart_s" \
  'BEGIN { printf "RESULT %s sigkill_to_new_process_s=%.2f sigkill_to_ready_s=%.2f (start to READY=1: first %.1f s, after the restart %.1f s)\n", u, s - k, r - k, f / 1e6, g / 1e6 }'
EOF
}
results=()
for spec in "voice-agent-asr@$ASR_PORT $ASR_PORT" "voice-agent-tts@$TTS_PORT $TTS_PORT"; do
  # shellcheck disable=SC2086
  out="$(check_unit $spec)" || { echo "$out" >&2; fail "${spec%% *}"; }
  echo "$out" | grep -v '^RESULT' >&2
  results+=("$(echo "$out" | sed -n 's/^RESULT //p')")
done
for r in "${results[@]}"; do say "$r"; done
say "host load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (the services' start-up time scales with it)"
