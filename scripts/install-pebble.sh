#!/bin/sh
# Installs pebble and pebble-challtestsrv (Let's Encrypt's ACME test server and
# its DNS/challenge helper), needed by tests/acme_pebble.rs. Idempotent: does
# nothing when both are already on PATH. Debian/Ubuntu (apt) only.
set -eu

if command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-pebble: no apt-get here; install pebble (https://github.com/letsencrypt/pebble)" \
         "so that 'pebble' and 'pebble-challtestsrv' are on PATH" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Another apt may be running (CI images, parallel set-up): wait for its lock.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq pebble

command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null
