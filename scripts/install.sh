#!/usr/bin/env bash
# Install everything the services and their tests need on a fresh Debian/Ubuntu machine:
# system packages (when apt-get is there and we are root), uv, and the locked Python environment (.venv).
# Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(ca-certificates chromium nginx systemd)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install: apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi

if ! command -v uv >/dev/null; then
  echo "install: uv (from PyPI)"
  python3 -m pip install --quiet "uv>=0.9,<0.10" || python3 -m pip install --quiet --user "uv>=0.9,<0.10"
  export PATH="$HOME/.local/bin:$PATH"
fi

echo "install: Python environment from uv.lock"
UV_PYTHON_DOWNLOADS=never uv sync --frozen --quiet
echo "install: done ($(.venv/bin/python --version), $(du -sh .venv | cut -f1) in .venv)"
