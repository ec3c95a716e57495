#!/usr/bin/env python3
"""Markdown summary of mles-loadtest JSON reports, one row per scenario.

    bench_table.py single|cluster OUT_DIR SCENARIO...

Reads OUT_DIR/<scenario>.json (missing ones are skipped). `single` has the
columns of scripts/bench.sh, `cluster` those of scripts/cluster-bench.sh.
"""
import json
import os
import sys

COMMON_HEAD = [
    ("deliveries/s", "delivered_per_s", 1), ("server ns/delivery", "server_cpu_ns_per_delivery", 1),
    ("server cores", "server.cpu_cores", 1), ("p50 ms", "latency.p50_us", 1e-3), ("p99 ms", "latency.p99_us", 1e-3),
    ("B/conn", "server_memory.bytes_per_conn", 1),
]
COLUMNS = {
    "single": COMMON_HEAD + [
        ("anon B/conn", "server_memory.anon_bytes_per_conn", 1),
        ("server us/join", "server_memory.join_cpu_us_per_conn", 1),
        ("server us/cycle", "server_cpu_us_per_cycle", 1), ("frames/write", "frames_per_write", 1),
        ("harness cores", "harness.cpu_cores", 1), ("pass", "passed", None),
    ],
    "cluster": COMMON_HEAD + [
        ("lost", "lost", 1), ("dup", "duplicates", 1), ("echoed", "echoed", 1),
        ("order diverged", "order_divergent", 1), ("harness cores", "harness.cpu_cores", 1), ("pass", "passed", None),
    ],
}


def flat(d, p=""):
    r = {}
    for k, v in d.items():
        if isinstance(v, dict):
            r.update(flat(v, p + k + "."))
        else:
            r[p + k] = v
    return r


def main():
    cols, out, names = COLUMNS[sys.argv[1]], sys.argv[2], sys.argv[3:]
    print("| scenario | " + " | ".join(c[0] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in names:
        p = os.path.join(out, n + ".json")
        if not os.path.exists(p):
            continue
        try:
            d = json.load(open(p))
        except ValueError:
            print(f"| {n} | (no report: see {n}.err) |")
            continue
        f = flat(d.get("results", {}))
        f["passed"] = d.get("passed")
        row = []
        for _, k, scale in cols:
            v = f.get(k, "")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and scale:
                v = v * scale
                row.append(f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")
            else:
                row.append(str(v))
        print(f"| {n} | " + " | ".join(row) + " |")


main()
