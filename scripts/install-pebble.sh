#!/usr/bin/env bash
# Installs pebble and pebble-challtestsrv (Let's Encrypt's ACME test server and
# its DNS/challenge helper), needed by tests/acme_pebble.rs, from Debian's
# package. Idempotent: does nothing when both are already on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh

if command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1; then
    exit 0
fi
echo "installing pebble"
apt_install pebble
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null
