#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time on the
# committed seeds (fuzz/seeds/<target>/) plus what earlier runs found
# (target/fuzz/corpus/<target>/, not committed).
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 30) each
#   FUZZ_SECONDS=300 scripts/fuzz.sh frame header
#
# Stable Rust, no sanitizer: the fuzzed code is safe Rust, so AddressSanitizer
# would find nothing the panics and overflow checks (--debug-assertions) do
# not, at half the speed. A crash stops the script with the input's path
# under target/fuzz/artifacts/; add it as a regression test in the normal
# suite (and, once fixed, to fuzz/seeds/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
bash scripts/install-fuzz.sh

out=target/fuzz
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
flags=(-s none --debug-assertions --fuzz-dir fuzz --target-dir "$out")

# Build everything first, so each target's time is spent fuzzing.
cargo fuzz build "${flags[@]}"

# The static-file targets make their site under TMPDIR, once per process.
export TMPDIR="$PWD/$out/tmp"
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR" "$out/logs"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
    log="$out/logs/$t.log"
    if cargo fuzz run "${flags[@]}" "$t" "$out/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
        echo "fuzz $t: ok, ${runs:-?} inputs in ${seconds}s, $cov"
    else
        echo "fuzz $t: FAILED (log: $log)"
        grep -E 'panicked|ERROR|Test unit written|SUMMARY' "$log" | head -20 || true
        failed+=("$t")
    fi
done
rm -rf "$TMPDIR"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets with crashes: ${failed[*]}"
    exit 1
fi
