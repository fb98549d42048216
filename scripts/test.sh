#!/usr/bin/env bash
# Run the whole test suite (real models, real audio, real sockets on loopback).
# Fails if pytest fails or if it collected no test at all. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/install.sh"
cd "$ROOT"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee /tmp/voice-services-pytest.log
status=${PIPESTATUS[0]}
set -e
if [ "$status" = 5 ] || ! grep -Eq '[0-9]+ passed' /tmp/voice-services-pytest.log; then
  echo "test.sh: no test passed (pytest exit $status): refusing to call this green" >&2
  exit 1
fi
exit "$status"
