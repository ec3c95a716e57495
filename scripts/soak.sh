#!/usr/bin/env bash
# Soak test (issue 9), bounded and not part of scripts/test.sh: a release
# server under steady fan-out, join/leave churn and abusive clients at once
# for SOAK_SECONDS (default 600), then idle until its channels expire.
# Every SOAK_EVERY seconds (5) it records the server's RSS, descriptors and
# gauges (target/soak/samples.csv); honest clients' latency comes from
# back-to-back 5 s fan-out runs (target/soak/latency.csv). Ends with a
# plot (target/soak/soak.png, when matplotlib is there or installable) and
# a verdict: every honest run passed, and RSS came back to within
# SOAK_RSS_SLACK_MIB (64) of its baseline. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${SOAK_SECONDS:-600}"
every="${SOAK_EVERY:-5}"
slack_mib="${SOAK_RSS_SLACK_MIB:-64}"
ttl=20
out=target/soak
mkdir -p "$out"
rm -f "$out"/*.csv "$out"/*.log "$out/soak.png"

cargo build --release -q -p mles -p mles-loadtest
port=$((20000 + RANDOM % 20000))
metrics_port=$((port + 1))
target/release/mles --listen "127.0.0.1:$port" --shards 2 --metrics "127.0.0.1:$metrics_port" \
    --max-memory 256MiB --channel-ttl "${ttl}s" --max-connections-per-ip 5000 \
    >"$out/server.log" 2>&1 &
server=$!
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    kill "$server" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do
    curl -s "http://127.0.0.1:$metrics_port/metrics" >/dev/null 2>&1 && break
    sleep 0.1
done

metric() {
    curl -s "http://127.0.0.1:$metrics_port/metrics" |
        awk -v n="$1" '$1 ~ "^"n"\\{" { s += $2 } END { print s + 0 }'
}
start=$EPOCHREALTIME
elapsed() { awk -v a="$EPOCHREALTIME" -v b="$start" 'BEGIN { printf "%.1f", a - b }'; }
sample() {
    local t rss fds
    t=$(elapsed)
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server/status")
    fds=$(ls "/proc/$server/fd" | wc -l)
    echo "$t,$rss,$fds,$(metric mles_sessions),$(metric mles_channels),$(metric mles_history_bytes),$(metric mles_partial_bytes),$(metric mles_queued_bytes),$(metric mles_budget_refusals_total)" >>"$out/samples.csv"
}
echo "t,rss_kib,fds,sessions,channels,history_bytes,partial_bytes,queued_bytes,budget_refusals" >"$out/samples.csv"
echo "t,p50_us,p99_us,status" >"$out/latency.csv"
sample
baseline=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server/status")
url="ws://127.0.0.1:$port"

# Load: churn and abuse for the whole period, honest fan-out in 5 s runs.
target/release/mles-loadtest churn --url "$url" --concurrency 8 --rate 50 \
    --duration "$seconds" --quiet >"$out/churn.log" 2>&1 &
pids+=($!)
python3 scripts/soak_abuse.py --port "$port" --seconds "$seconds" --conns 300 >"$out/abuse.log" 2>&1 &
pids+=($!)
(
    end=$(($(date +%s) + seconds))
    while [ "$(date +%s)" -lt "$end" ]; do
        t=$(elapsed)
        if target/release/mles-loadtest fanout --url "$url" --channels 10 --subs 20 --pubs 1 \
            --rate 20 --size 256 --duration 4 --warmup 1 --json --quiet >"$out/fanout.json" 2>>"$out/fanout.log"; then
            status=ok
        else
            status=failed
        fi
        python3 - "$out/fanout.json" "$t" "$status" >>"$out/latency.csv" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    lat = r.get("results", r).get("latency", {})
    print("%s,%s,%s,%s" % (sys.argv[2], lat.get("p50_us", ""), lat.get("p99_us", ""), sys.argv[3]))
except Exception:
    print("%s,,,%s" % (sys.argv[2], sys.argv[3]))
PY
    done
) &
pids+=($!)

end=$(($(date +%s) + seconds))
while [ "$(date +%s)" -lt "$end" ]; do
    sleep "$every"
    sample
done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

# Idle: every session gone, channels expire after the TTL.
for _ in $(seq $(((ttl * 2 + 30) / every))); do
    sleep "$every"
    sample
done
after=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server/status")

# The plot needs matplotlib: the test venv (scripts/install-test-deps.sh) gets it
# when missing; Debian's own python refuses pip installs.
py=python3
venv="${MLES_TEST_VENV:-$HOME/.cache/mles/venv}"
[ -x "$venv/bin/python" ] && py="$venv/bin/python"
if "$py" -c 'import matplotlib' 2>/dev/null || "$py" -m pip install -q matplotlib >/dev/null 2>&1; then
    "$py" scripts/soak_plot.py "$out/samples.csv" "$out/latency.csv" "$out/soak.png"
    echo "plot: $out/soak.png"
else
    echo "plot skipped: matplotlib not available"
fi

failed_runs=$(grep -c ',failed$' "$out/latency.csv" || true)
runs=$(($(wc -l <"$out/latency.csv") - 1))
cat "$out/abuse.log"
echo "honest fan-out runs: $runs, failed: $failed_runs"
echo "RSS: baseline $((baseline / 1024)) MiB, peak $(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print int(m / 1024) }' "$out/samples.csv") MiB, after $((after / 1024)) MiB"
echo "descriptors after: $(ls "/proc/$server/fd" | wc -l)"
if [ "$failed_runs" -gt 0 ] || [ "$after" -gt $((baseline + slack_mib * 1024)) ]; then
    echo "soak: FAILED"
    exit 1
fi
echo "soak: passed"
