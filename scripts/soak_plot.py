#!/usr/bin/env python3
"""Plots a soak run's samples (scripts/soak.sh) as one PNG: server RSS and
descriptors, and the honest clients' delivery latency, over time."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(samples, latency, out):
    t, rss, fds = [], [], []
    with open(samples) as f:
        for r in csv.DictReader(f):
            t.append(float(r["t"]))
            rss.append(float(r["rss_kib"]) / 1024)
            fds.append(int(r["fds"]))
    lt, p50, p99 = [], [], []
    with open(latency) as f:
        for r in csv.DictReader(f):
            if r["p99_us"]:
                lt.append(float(r["t"]))
                p50.append(float(r["p50_us"]) / 1000)
                p99.append(float(r["p99_us"]) / 1000)
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot(t, rss)
    ax[0].set_ylabel("server RSS (MiB)")
    ax[1].plot(t, fds)
    ax[1].set_ylabel("server descriptors")
    ax[2].plot(lt, p50, label="p50")
    ax[2].plot(lt, p99, label="p99")
    ax[2].set_ylabel("honest latency (ms)")
    ax[2].set_xlabel("seconds")
    ax[2].legend()
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:4])
