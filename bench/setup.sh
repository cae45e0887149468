#!/usr/bin/env bash
# Installs what the benchmarks need beyond the project's venv: the `wrk` HTTP load generator
# (Debian/Ubuntu package `wrk`). Does nothing when wrk is already on PATH.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    echo "bench/setup.sh: wrk already installed: $(command -v wrk)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: wrk is missing and apt-get is not available." >&2
    echo "  install wrk with your package manager (e.g. 'brew install wrk', 'dnf install wrk')" >&2
    echo "  or build it from https://github.com/wg/wrk, then re-run." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "bench/setup.sh: wrk is missing; run as root: apt-get update && apt-get install -y wrk" >&2
        exit 1
    fi
fi

echo "bench/setup.sh: installing wrk: apt-get update && apt-get install -y wrk" >&2
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y wrk
echo "bench/setup.sh: wrk installed: $(command -v wrk)" >&2
