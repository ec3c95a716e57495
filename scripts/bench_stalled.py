#!/usr/bin/env python3
# Server CPU per published frame while stalled readers read nothing (their
# sockets stay full, their queues grow under a large --max-queue): what a
# delivery to a blocked session costs. Not in scripts/bench.sh (mles-loadtest
# has no stalled reader); BENCHMARKS.md, issue 12.
# Server pinned to CPU 0, this script to CPU 1; one frame per server read.
#
#   scripts/bench_stalled.py <mles-binary> [readers=10] [frames=20000] [size=200]
import os, socket, subprocess, sys, time, base64, json, random
binary = sys.argv[1]
readers = int(sys.argv[2]) if len(sys.argv) > 2 else 10
frames = int(sys.argv[3]) if len(sys.argv) > 3 else 50000
size = int(sys.argv[4]) if len(sys.argv) > 4 else 200
port = 45000 + random.randrange(5000)
srv = subprocess.Popen(["taskset", "-c", "0", binary, "--listen", f"127.0.0.1:{port}", "--shards", "1",
                        "--max-queue", "1GiB"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def mask(op, payload):
    m = os.urandom(4)
    n = len(payload)
    h = bytes([0x80 | op])
    if n < 126: h += bytes([0x80 | n])
    elif n < 65536: h += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else: h += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return h + m + bytes(b ^ m[i % 4] for i, b in enumerate(payload))
def connect(uid):
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port)); break
        except OSError: time.sleep(0.05)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mles-websocket\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(4096)
    s.sendall(mask(1, json.dumps({"uid": uid, "channel": "stall"}).encode()))
    return s
pid = srv.pid
taskset = subprocess.run(["taskset", "-cp", "1", str(os.getpid())], capture_output=True)
stalled = []
for i in range(readers):
    s = connect(f"r{i}")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.append(s)
pub = connect("pub")
time.sleep(0.5)
payload = os.urandom(size)
frame = mask(2, payload)
c0 = cpu(pid); t0 = time.time()
for i in range(frames):
    pub.sendall(frame)
    time.sleep(0.0001)  # one frame per server read
time.sleep(1.0)
c1 = cpu(pid)
print(json.dumps({"binary": os.path.basename(binary), "readers": readers, "frames": frames,
                  "server_cpu_s": round(c1 - c0, 3), "us_per_frame": round((c1 - c0) / frames * 1e6, 2)}))
srv.terminate(); srv.wait()
