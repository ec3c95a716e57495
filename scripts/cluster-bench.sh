#!/usr/bin/env bash
# Cluster-mode measurements for BENCHMARKS.md ("Cluster"): the same load on
# one plain node and on three mles nodes with one NATS server or a
# three-server NATS cluster (R3), all on loopback, in one session.
#
# Every server process (the mles nodes and the NATS servers) runs on
# $SERVER_CPUS (default CPU 0), the load generator on $LOAD_CPUS (CPU 1), as
# in scripts/bench.sh. mles-loadtest deals its sessions over the nodes round
# robin (--url per node) and sums CPU time and RSS over every server process
# (--server-pid per process), so "server ns/delivery" includes NATS.
#
#   scripts/cluster-bench.sh [label] [scenario...]
#     scenarios: B1 B3 B3R3 A1 A3 A3R3 L1 L3 L3R3 D1 D3 K1 KC (letter: the load of
#     BENCHMARKS.md, L: one channel, 3 subscribers, 100 frames/s;
#     1: one plain node, 3: three nodes + one NATS, 3R3: three nodes + three NATS;
#     K1 / KC: 10,000 idle sessions on 10,000 channels on one plain node /
#     one cluster node on one NATS: what following many channels costs)
#   DURATION=10 (measured seconds per fan-out run), MLES_ARGS="--limit N" (extra node flags),
#   D_PER_CHANNEL=100 (sessions per channel in D1/D3),
#   MEASURE=nodes (CPU and RSS of the mles nodes alone; default: NATS too)
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-cluster}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(B1 B3 B3R3 A1 A3 A3R3 D1 D3)
DURATION=${DURATION:-10}
MLES_ARGS=${MLES_ARGS:-} # extra flags for every node, e.g. "--limit 1000"
OUT=${OUT:-target/bench-results/$label}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
mkdir -p "$OUT"

cargo build --release -q -p mles -p mles-loadtest
MLES=${MLES_BIN:-target/release/mles}
LT=target/release/mles-loadtest
NATS=${MLES_NATS_SERVER:-${MLES_TEST_VENV:-$HOME/.cache/mles/venv}/bin/nats-server}
[ -x "$NATS" ] || NATS=$(command -v nats-server) || {
    echo "no nats-server: run scripts/install-nats.sh" >&2
    exit 1
}

# Below the ephemeral range (32768+), where the load generator's own
# connections would take ports a server is about to bind.
base=$((10000 + RANDOM % 8000))
pids=()
node_pids=()
work=$(mktemp -d)
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    node_pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

wait_port() { # port
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

# start_nats N: N JetStream servers with routes between them; sets nats_urls.
start_nats() {
    local n=$1 routes="" i
    nats_urls=()
    for i in $(seq "$n"); do routes+="nats-route://127.0.0.1:$((base + 100 + i)),"; done
    for i in $(seq "$n"); do
        local port=$((base + 110 + i)) dir="$work/nats$i"
        mkdir -p "$dir"
        {
            echo "server_name: n$i"
            echo "listen: 127.0.0.1:$port"
            echo "max_payload: 2MB"
            echo "jetstream { store_dir: \"$dir\" }"
            if [ "$n" -gt 1 ]; then
                echo "cluster { name: bench, listen: 127.0.0.1:$((base + 100 + i)), routes: [${routes%,}] }"
            fi
        } >"$dir/nats.conf"
        taskset -c "$SERVER_CPUS" "$NATS" -c "$dir/nats.conf" >"$OUT/nats$i-$scenario.log" 2>&1 &
        pids+=($!)
        nats_urls+=("nats://127.0.0.1:$port")
    done
    for u in "${nats_urls[@]}"; do wait_port "${u##*:}"; done
}

# start_mles N [args...]: N nodes (one shard each); sets urls.
start_mles() {
    local n=$1 i
    shift
    urls=()
    for i in $(seq "$n"); do
        local port=$((base + 200 + i))
        taskset -c "$SERVER_CPUS" "$MLES" --listen "127.0.0.1:$port" --shards 1 $MLES_ARGS "$@" \
            >"$OUT/mles$i-$scenario.log" 2>&1 &
        pids+=($!)
        node_pids+=($!)
        urls+=(--url "ws://127.0.0.1:$port/")
        wait_port "$port"
    done
}

# cluster N_NATS [N_NODES]: N_NODES (3) nodes on N_NATS NATS servers, each
# node with its own seed first.
cluster() {
    local n=$1 nodes=${2:-3} i args=()
    start_nats "$n"
    local replicas=1
    [ "$n" -gt 1 ] && replicas=3
    urls=()
    for i in $(seq "$nodes"); do
        local port=$((base + 200 + i)) seed=${nats_urls[$(((i - 1) % n))]}
        args=(--nats "$seed")
        for u in "${nats_urls[@]}"; do [ "$u" = "$seed" ] || args+=(--nats "$u"); done
        taskset -c "$SERVER_CPUS" "$MLES" --listen "127.0.0.1:$port" --shards 1 $MLES_ARGS \
            --nats-replicas "$replicas" "${args[@]}" >"$OUT/mles$i-$scenario.log" 2>&1 &
        pids+=($!)
        node_pids+=($!)
        urls+=(--url "ws://127.0.0.1:$port/")
        wait_port "$port"
    done
    # Joins are refused until each node's link is up ("cluster link up" in
    # its log); a new NATS cluster takes up to half a minute to elect leaders.
    for i in $(seq "$nodes"); do
        for _ in $(seq 1200); do
            grep -q "cluster link up" "$OUT/mles$i-$scenario.log" && break
            sleep 0.05
        done
        grep -q "cluster link up" "$OUT/mles$i-$scenario.log" || {
            echo "node $i: no cluster link" >&2
            return 1
        }
    done
}

load() { # scenario-args...
    local sp=() measured=("${pids[@]}")
    [ "${MEASURE:-all}" = nodes ] && measured=("${node_pids[@]}")
    for p in "${measured[@]}"; do sp+=(--server-pid "$p"); done
    # A failed check (loss, order) is in the report; go on with the next run.
    taskset -c "$LOAD_CPUS" "$LT" "$@" "${urls[@]}" "${sp[@]}" --json --quiet >"$OUT/$scenario.json" 2>"$OUT/$scenario.err" || true
}

B=(fanout --channels 10 --subs 100 --pubs 1 --size 64 --rate 100 --duration "$DURATION")
A=(fanout --channels 10 --subs 100 --pubs 1 --size 64 --duration "$DURATION")
D=(conns --conns 6000 --per-channel "${D_PER_CHANNEL:-100}" --duration 8)
K=(conns --conns 10000 --per-channel 1 --duration 8)
# The path alone: one channel, three subscribers, 100 frames/s (no queueing).
L=(fanout --channels 1 --subs 3 --pubs 1 --size 64 --rate 100 --duration "$DURATION")

for scenario in "${scenarios[@]}"; do
    echo "== $scenario" >&2
    base=$((base + 1000))
    case $scenario in
    B1) start_mles 1 && load "${B[@]}" ;;
    B3) cluster 1 && load "${B[@]}" ;;
    B3R3) cluster 3 && load "${B[@]}" ;;
    A1) start_mles 1 && load "${A[@]}" ;;
    A3) cluster 1 && load "${A[@]}" ;;
    A3R3) cluster 3 && load "${A[@]}" ;;
    L1) start_mles 1 && load "${L[@]}" ;;
    L3) cluster 1 && load "${L[@]}" ;;
    L3R3) cluster 3 && load "${L[@]}" ;;
    D1) start_mles 1 && load "${D[@]}" ;;
    D3) cluster 1 && load "${D[@]}" ;;
    K1) start_mles 1 && load "${K[@]}" ;;
    KC) cluster 1 1 && load "${K[@]}" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    stop_all
    rm -rf "${work:?}"/*
done

python3 scripts/bench_table.py cluster "$OUT" "${scenarios[@]}"
