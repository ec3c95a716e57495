#!/bin/bash
# Multi-core scaling of scenario A; needs a machine with at least 16 CPUs:
# server on CPUs 0..shards-1, load generator (8 threads) on CPUs 8-15.
set -u
M=${MLES_BIN:-target/release/mles}; L=${LOADTEST_BIN:-target/release/mles-loadtest}
OUT=${OUT:-target/scale-results}; mkdir -p "$OUT"
nproc; lscpu | grep -E "Model name|^CPU\(s\)"; uname -r
ulimit -n 65536 2>/dev/null || ulimit -n 20000
for shards in 1 2 4 8; do
  port=$((9000 + shards))
  taskset -c 0-$((shards - 1)) $M --listen 127.0.0.1:$port --shards $shards >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  timeout 60 taskset -c 8-15 $L fanout --url ws://127.0.0.1:$port/ --channels 80 --subs 100 --pubs 1 --size 64 \
    --threads 8 --duration 5 --warmup 2 --server-pid $pid --json --quiet > $OUT/A-$shards.json 2>$OUT/A-$shards.err
  echo "shards=$shards rc=$?"
  python3 -c "
import json,sys; d=json.load(open('$OUT/A-$shards.json')); r=d['results']
print('  delivered/s %.0f  server ns/delivery %.0f  server cores %.2f  harness cores %.2f  lost %s pass %s' % (r['delivered_per_s'], r['server_cpu_ns_per_delivery'], r['server']['cpu_cores'], r['harness']['cpu_cores'], r['lost'], d['passed']))" 2>/dev/null || tail -3 $OUT/A-$shards.err
  kill $pid; wait $pid 2>/dev/null
done
