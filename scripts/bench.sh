#!/usr/bin/env bash
# Runs the load-test scenarios of BENCHMARKS.md against a freshly started
# server per scenario: server pinned to CPU 0 (taskset -c 0), load generator
# on CPU 1. Results: one JSON file per scenario in $OUT (default
# target/bench-results/<label>), and a summary table on stdout.
#
# Fan-out scenarios use ordinary clients (mles-loadtest's default: one frame
# per write syscall, 4 KiB reads), the figures to quote. A scenario name with
# a "-batch" suffix (A-batch, A2-batch, E-batch) runs the same load with
# batching clients (up to 64 frames per write, 64 KiB reads): a second line,
# cheaper per delivery for the server and not comparable with other servers'
# figures taken under ordinary clients.
#
#   scripts/bench.sh [label] [scenario...]      scenarios: A A-batch A2 A2-batch B C D10 D1k D19 J E E-batch EM
#   MLES_BIN=/path/to/other/mles scripts/bench.sh baseline   # measure another build
#   DURATION=10 (seconds measured per throughput scenario)
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-current}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(A A-batch A2 B C D10 D19 J E E-batch EM)
DURATION=${DURATION:-10}
OUT=${OUT:-target/bench-results/$label}
mkdir -p "$OUT"

cargo build --release -q -p mles -p mles-loadtest
MLES=${MLES_BIN:-target/release/mles}
LT=target/release/mles-loadtest
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}

# Test CA and a P-256 leaf certificate for the TLS scenarios.
tlsdir=target/bench-tls
if [ ! -f "$tlsdir/cert.pem" ]; then
    mkdir -p "$tlsdir"
    (
        cd "$tlsdir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=mles-bench-ca -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj /CN=localhost -keyout key.pem -out leaf.csr 2>/dev/null
        printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile leaf.ext -out cert.pem 2>/dev/null
    )
fi

port=$((20000 + RANDOM % 20000))
server_pid=
start_server() { # args...
    # The port range overlaps the ephemeral ports other connections on this
    # (shared) machine may hold: a port in use is retried with the next one.
    for _ in 1 2 3 4 5; do
        port=$((port + 1))
        taskset -c "$SERVER_CPUS" "$MLES" --listen "127.0.0.1:$port" "$@" >"$OUT/server-$scenario.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && kill -0 "$server_pid" 2>/dev/null && return 0
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -0 "$server_pid" 2>/dev/null && break
        wait "$server_pid" 2>/dev/null || true
    done
    echo "server did not start" >&2
    return 1
}
stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

load() { # scenario-args...
    taskset -c "$LOAD_CPUS" "$LT" "$@" --server-pid "$server_pid" --json --quiet >"$OUT/$scenario.json"
}

for scenario in "${scenarios[@]}"; do
    echo "== $scenario" >&2
    # fanout's --client: ordinary unless the name ends in -batch.
    client=ordinary
    case $scenario in *-batch) client=batch ;; esac
    case $scenario in
    A|A-batch) start_server --shards 1
        load fanout --client "$client" --url "ws://127.0.0.1:$port/" --channels 10 --subs 100 --pubs 1 --size 64 --duration "$DURATION" ;;
    A2|A2-batch) start_server --shards 2
        load fanout --client "$client" --url "ws://127.0.0.1:$port/" --channels 10 --subs 100 --pubs 1 --size 64 --duration "$DURATION" ;;
    B)  start_server --shards 1
        load fanout --client "$client" --url "ws://127.0.0.1:$port/" --channels 10 --subs 100 --pubs 1 --size 64 --rate 100 --duration "$DURATION" ;;
    C)  start_server --shards 1
        load fanout --client "$client" --url "ws://127.0.0.1:$port/" --channels 1000 --subs 2 --pubs 1 --size 64 --rate 10 --duration "$DURATION" ;;
    D10) start_server --shards 1
        load conns --url "ws://127.0.0.1:$port/" --conns 10000 --per-channel 100 --duration 12 ;;
    D1k) start_server --shards 1
        load conns --url "ws://127.0.0.1:$port/" --conns 10000 --per-channel 10 --duration 12 ;;
    D19) start_server --shards 1
        load conns --url "ws://127.0.0.1:$port/" --conns 19000 --per-channel 100 --duration 12 ;;
    J)  start_server --shards 1
        load churn --url "ws://127.0.0.1:$port/" --concurrency 16 --duration "$DURATION" ;;
    E|E-batch) start_server --shards 1 --tls-cert "$tlsdir/cert.pem" --tls-key "$tlsdir/key.pem"
        load fanout --client "$client" --url "wss://localhost:$port/" --ca-file "$tlsdir/ca.pem" --channels 10 --subs 100 --pubs 1 --size 64 --duration "$DURATION" ;;
    EM) start_server --shards 1 --tls-cert "$tlsdir/cert.pem" --tls-key "$tlsdir/key.pem"
        load conns --url "wss://localhost:$port/" --ca-file "$tlsdir/ca.pem" --conns 10000 --per-channel 100 --duration 12 ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    stop_server
done

python3 scripts/bench_table.py single "$OUT" "${scenarios[@]}"
