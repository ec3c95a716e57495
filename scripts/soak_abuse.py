#!/usr/bin/env python3
"""Abusive clients for scripts/soak.sh, bounded in time and connections.

Runs until --seconds pass, keeping up to --conns connections at once, each
picking one misbehaviour: hold an unfinished 1 MiB frame before its header,
hold one after joining, stay idle without a request, send an oversized
header, flood malformed frames, or join and never read. Loopback only.
Prints one summary line of what it did and how the server answered.
"""
import argparse
import base64
import os
import random
import socket
import struct
import threading
import time
from collections import Counter

HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: mles-websocket\r\n\r\n"
)


def masked(b0, payload, length=None):
    n = len(payload) if length is None else length
    head = bytes([b0])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade(host, port):
    s = socket.create_connection((host, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(HANDSHAKE.format(host=host, key=key).encode())
    resp = s.recv(4096)
    if not resp.startswith(b"HTTP/1.1 101"):
        s.close()
        return None, resp.split(b"\r\n", 1)[0].decode(errors="replace")
    return s, "101"


def header(uid, channel):
    return masked(0x81, ('{"uid":"%s","channel":"%s"}' % (uid, channel)).encode())


def abuse(kind, host, port, hold, stats):
    try:
        if kind == "idle":
            s = socket.create_connection((host, port), timeout=5)
            time.sleep(hold)
            stats["idle"] += 1
            s.close()
            return
        s, status = upgrade(host, port)
        if s is None:
            stats["refused " + status] += 1
            return
        if kind == "partial-before-header":
            s.sendall(masked(0x81, b"", length=1 << 20)[:14] + b"x" * 60000)
        elif kind == "partial-after-join":
            s.sendall(header("abuser-%d" % random.randrange(1 << 30), "abuse-%d" % random.randrange(50)))
            frame = masked(0x82, b"\0" * ((1 << 20) - 64))
            s.sendall(frame[:-1])
        elif kind == "big-header":
            s.sendall(masked(0x81, b"{" + b" " * 20000 + b"}"))
        elif kind == "malformed":
            s.sendall(b"\x81\x05hello" + bytes(random.randrange(256) for _ in range(64)))
        elif kind == "never-read":
            s.sendall(header("sink-%d" % random.randrange(1 << 30), "soak-fanout-sink"))
        s.settimeout(hold)
        try:
            data = s.recv(65536)
            code = struct.unpack(">H", data[2:4])[0] if len(data) >= 4 and data[0] & 0x0F == 8 else None
            stats["%s -> close %s" % (kind, code)] += 1
        except socket.timeout:
            stats["%s -> held %ds" % (kind, hold)] += 1
        s.close()
    except OSError as e:
        stats["%s -> %s" % (kind, type(e).__name__)] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--hold", type=int, default=20)
    a = ap.parse_args()
    kinds = ["idle", "partial-before-header", "partial-after-join", "big-header", "malformed", "never-read"]
    stats = Counter()
    end = time.time() + a.seconds
    slots = threading.Semaphore(a.conns)
    threads = []

    def run(kind):
        try:
            abuse(kind, a.host, a.port, min(a.hold, max(1, int(end - time.time()))), stats)
        finally:
            slots.release()

    while time.time() < end:
        if not slots.acquire(timeout=0.5):
            continue
        t = threading.Thread(target=run, args=(random.choice(kinds),), daemon=True)
        t.start()
        threads.append(t)
        threads = [t for t in threads if t.is_alive()]
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=a.hold + 5)
    print("abuse: " + ", ".join("%s %d" % kv for kv in sorted(stats.items())))


if __name__ == "__main__":
    main()
