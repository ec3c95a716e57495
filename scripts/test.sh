#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"

# Fuzzing (issue 9): each cargo-fuzz target for FUZZ_SECONDS (default 30) on its seeds.
./scripts/fuzz.sh
