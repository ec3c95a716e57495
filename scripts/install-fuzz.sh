#!/usr/bin/env bash
# Installs cargo-fuzz (libFuzzer for Rust) for scripts/fuzz.sh, unless the
# pinned version is already there. Works on stable Rust: fuzz.sh runs
# without a sanitizer (`-s none`), and every flag cargo-fuzz then passes is
# a stable one; libFuzzer itself is compiled by the libfuzzer-sys crate with
# the system C++ compiler (g++, installed here when missing).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install -q --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
