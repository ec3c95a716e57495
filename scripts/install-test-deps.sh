#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, skipping what is present:
# Python's `websockets` (stock-client test), pebble (ACME test), Chromium and
# playwright-core (browser test). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! python3 -c 'import websockets' 2>/dev/null; then
    echo "installing python websockets"
    python3 -m pip install -q --disable-pip-version-check websockets
fi

# Feature-specific installers live beside their tests.
for extra in scripts/install-pebble.sh tests/browser/install.sh scripts/install-nats.sh; do
    if [ -x "$extra" ]; then
        "$extra"
    fi
done
