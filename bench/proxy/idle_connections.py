#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy on 127.0.0.1, makes one request on each, keeps them idle, and
prints how much the proxy process's resident memory (VmRSS) grew, in KB. Usage: PID PORT N"""
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
    # Warm up: one connection, so one-time allocations (pools, buffers) are not counted per connection.
    warm = socket.create_connection(("127.0.0.1", port))
    warm.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    warm.recv(65536)
    time.sleep(0.3)
    before = rss_kb(pid)
    connections = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        response = conn.recv(65536)
        if not response.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {response[:80]!r}")
        connections.append(conn)
    time.sleep(0.5)
    after = rss_kb(pid)
    print(after - before)
    for conn in connections:
        conn.close()
    warm.close()


if __name__ == "__main__":
    main()
