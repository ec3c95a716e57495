#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds once, runs every
# test. --no-fail-fast: one failing test binary does not hide the others.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast "$@"

# Fuzzing (issue 9): each cargo-fuzz target for FUZZ_SECONDS (default 30) on its seeds.
bash scripts/fuzz.sh
