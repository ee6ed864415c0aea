#!/usr/bin/env bash
# Set up cfqa-edgecloud on a fresh Debian machine: codec binaries + the Python package.
# Usage: scripts/setup.sh [full|dev|edge|cloud|learned|scale]   (default: full)
set -euo pipefail
extra="${1:-full}"
cd "$(dirname "$0")/.."

# Debian codec tools used by the block codecs and by the independent-decoder test
# (plus, for dev, the browser of the report test).
need=()
command -v x265 >/dev/null 2>&1 || need+=(x265)
command -v dec265 >/dev/null 2>&1 || command -v libde265-dec265 >/dev/null 2>&1 || need+=(libde265-examples)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
# The test suite renders the simulation report in a real headless browser.
if [ "$extra" = dev ]; then
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
fi
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]} (apt)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: warning: ${need[*]} missing and cannot apt-get install; codecs needing them report unavailable" >&2
  fi
fi

# torch is pinned to the CPU build 2.13.0 in pyproject.toml.
python3 -m pip install -q -e ".[${extra}]"
