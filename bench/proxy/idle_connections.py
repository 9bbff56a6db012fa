#!/usr/bin/env python3
"""Opens N connections to a proxy on 127.0.0.1 and prints how much the proxy process's resident memory
(VmRSS) grew, in KB, while they are held open.

Usage: PID PORT N [idle|slow]
- idle (default): each connection makes one request and then stays open, idle (keep-alive).
- slow: each connection sends a request head of about 60 KB (header lines of 12 KB) without its final
  empty line, as a slow or malicious client would, and holds it there; lines the proxy refuses (nginx's
  8 KB line limit) are counted as refused."""
import resource
import socket
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def main():
    pid, port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "idle"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    # Warm up: one connection, so one-time allocations (pools, buffers) are not counted per connection.
    warm = socket.create_connection(("127.0.0.1", port))
    warm.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    warm.recv(65536)
    time.sleep(0.3)
    before = rss_kb(pid)
    connections = []
    refused = 0
    line = b"X-Filler: " + b"f" * 12_000 + b"\r\n"
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        if mode == "slow":
            conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n")
            try:
                for _ in range(5):
                    conn.sendall(line)
            except OSError:
                refused += 1
        else:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            response = conn.recv(65536)
            if not response.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {response[:80]!r}")
        connections.append(conn)
    time.sleep(1.0)
    after = rss_kb(pid)
    if mode == "slow":
        # A connection the proxy answered (an error) and closed has bytes or an end waiting.
        for conn in connections:
            conn.setblocking(False)
            try:
                if conn.recv(1, socket.MSG_PEEK) is not None:
                    refused += 1
            except BlockingIOError:
                pass
            except OSError:
                refused += 1
        print(f"{after - before} ({refused} of {count} refused)")
    else:
        print(after - before)
    for conn in connections:
        conn.close()
    warm.close()


if __name__ == "__main__":
    main()
