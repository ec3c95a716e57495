#!/usr/bin/env bash
# Installs what the test suite needs beyond a Rust toolchain, skipping what
# is present (safe to rerun). Made for a fresh Debian 12 as root, no sudo
# needed:
#   - Python `websockets` (tests/stock_client.rs), pinned, in a virtual
#     environment at ${MLES_TEST_VENV:-$HOME/.cache/mles/venv}: Debian's
#     python refuses system-wide `pip install` (PEP 668). The tests run that
#     venv's python.
#   - then the feature installers listed below, each run with `bash` (no
#     exec bit needed): pebble for the ACME test, Chromium + Node.js +
#     playwright-core for the browser test, and any others that exist.
# Debian's package lists are refreshed at most once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
MLES_APT_STAMP=$(mktemp)
export MLES_APT_STAMP
trap 'rm -f "$MLES_APT_STAMP"' EXIT

WEBSOCKETS_VERSION=15.0.1
venv="${MLES_TEST_VENV:-$HOME/.cache/mles/venv}"

if ! "$venv/bin/python3" -c 'import websockets' 2>/dev/null; then
    echo "installing python websockets $WEBSOCKETS_VERSION into $venv"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
fi

# Feature-specific installers; a missing one is skipped (install-nats.sh
# comes with cluster mode).
for extra in scripts/install-pebble.sh tests/browser/install.sh scripts/install-nats.sh scripts/install-autobahn.sh; do
    if [ -f "$extra" ]; then
        bash "$extra"
    fi
done
