#!/usr/bin/env bash
# Installs what the benchmarks in bench/ need that pip does not give: the wrk load generator.
# Idempotent; `apt-get update` runs only when the first install attempt fails.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    echo "wrk already installed: $(command -v wrk)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y wrk; then
    $SUDO apt-get update
    $SUDO apt-get install -y wrk
fi
command -v wrk >/dev/null 2>&1 || { echo "wrk still missing after apt-get install" >&2; exit 1; }
echo "wrk installed: $(command -v wrk)"
