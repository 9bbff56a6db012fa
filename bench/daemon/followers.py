#!/usr/bin/env python3
"""Follows one deploy's log with many SSE clients at once (for bench/daemon/run.sh).

Opens N connections to GET /deploys/ID/logs (Accept: text/event-stream) with raw sockets (HTTP/1.1, one epoll
loop), waits until every one has its 200 answer and the lines stored so far, then creates the file the deploy's
pre-connect hook waits for, so that every line the hook prints is published while all N follow. While following, a client
only timestamps and keeps what arrives; the chunked bodies and their events are decoded afterwards.

It samples the daemon's RSS meanwhile and, once every client has its `end` event, checks that each got every
line of the log exactly once and in order (against the stored log and the text/plain one), and prints how
late the *last* client got each line after the store recorded it (`at` in deploy_log_lines, read from the
database; taken just before the line's batch is written). The delays include this client's own time to read
a thousand sockets on its CPU, so they are an upper bound for the daemon's.

Usage: followers.py --port P --token T --deploy ID --clients N --go FILE --pid PID --db PATH
Prints what it measured; exits 1 when a check fails.
"""

import argparse
import bisect
import datetime
import os
import select
import socket
import sqlite3
import sys
import time
import urllib.request


def parse_at(text):
    # RFC 3339 UTC with milliseconds, as the store writes it: 2026-12-03T17:42:49.091Z
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


class Follower:
    """One SSE client. While following it only timestamps and keeps what arrives (so that a thousand of them
    on one CPU add little to the delays measured); the response is decoded afterwards ([`Follower.decode`])."""

    def __init__(self, sock):
        self.sock = sock
        # Everything received, and when each piece ended.
        self.raw = bytearray()
        self.ends = []  # (offset in raw where a piece ended, time)
        self.closed = False
        self.events = []  # after decode: (id or None, event name or None, data, time received)
        self.ended = None
        self.lost = None

    def read(self):
        """Takes what the socket has; False once the connection is over (closed, or the end event came)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        now = time.time()
        if data:
            self.raw += data
            self.ends.append((len(self.raw), now))
            tail = self.raw[-(len(data) + 16) :]
            if b"event: end\n" not in tail and b"event:end\n" not in tail:
                return True
        self.closed = True
        return False

    def head(self):
        end = self.raw.find(b"\r\n")
        return None if end < 0 else self.raw[:end].decode("latin-1")

    def decode(self):
        """The response head, the chunked body, then its events, each with the time its last byte came."""
        raw, ends = bytes(self.raw), self.ends
        head_end = raw.find(b"\r\n\r\n")
        if head_end < 0:
            self.lost = "no response head"
            return
        head = raw[:head_end].decode("latin-1")
        if "transfer-encoding: chunked" not in head.lower():
            self.lost = "the event stream is not chunked: " + head.split("\r\n", 1)[0]
            return
        position = head_end + 4
        body = bytearray()
        body_ends = []  # (offset in body, offset in raw) at each chunk's end
        while True:
            line_end = raw.find(b"\r\n", position)
            if line_end < 0:
                break
            size = int(raw[position:line_end].split(b";", 1)[0], 16)
            if size == 0:
                break
            start = line_end + 2
            body += raw[start : start + size]
            body_ends.append((len(body), start + size))
            position = start + size + 2

        body_marks = [end for end, _ in body_ends]
        raw_marks = [end for end, _ in ends]

        def arrival(body_offset):
            raw_offset = body_ends[bisect.bisect_left(body_marks, body_offset)][1]
            return ends[bisect.bisect_left(raw_marks, raw_offset)][1]

        position = 0
        while True:
            end = body.find(b"\n\n", position)
            if end < 0:
                break
            block = body[position:end].decode("utf-8")
            position = end + 2
            event_id, name, data = None, None, []
            for line in block.split("\n"):
                if line.startswith(":"):
                    continue  # keep-alive comment
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    event_id = int(value)
                elif field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
            if event_id is None and name is None and not data:
                continue
            self.events.append((event_id, name, "\n".join(data), arrival(end + 2)))
            if name == "end":
                self.ended = "\n".join(data)
        if self.ended is None:
            self.lost = "the connection closed before the end event"


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])


def follow(args):
    """Connects every client, lets the hook go, reads until every client has its `end` event; returns the
    clients, or None when something failed."""
    request = (
        f"GET /deploys/{args.deploy}/logs HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        f"Authorization: Bearer {args.token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    poller = select.epoll()
    open_clients = {}  # fd -> Follower, until its connection is over
    clients = []
    rss = {"max": 0, "max_anon": 0, "samples": 0, "next": 0.0}

    def sample():
        if time.time() >= rss["next"]:
            total, anon = rss_kb(args.pid)
            rss["max"], rss["max_anon"] = max(rss["max"], total), max(rss["max_anon"], anon)
            rss["samples"] += 1
            rss["next"] = time.time() + 0.05

    def pump(until, deadline):
        """Reads whatever arrives until `until()` holds; False at the deadline."""
        while not until():
            if time.time() > deadline:
                return False
            for fd, _ in poller.poll(0.05):
                client = open_clients.get(fd)
                if client is not None and not client.read():
                    poller.unregister(fd)
                    client.sock.close()
                    del open_clients[fd]
            sample()
        return True

    started = time.time()
    # In batches (the listen backlog is finite): a batch is in once every client of it has its answer's head.
    for first in range(0, args.clients, 100):
        batch = []
        for _ in range(first, min(first + 100, args.clients)):
            sock = socket.create_connection(("127.0.0.1", int(args.port)))
            sock.sendall(request)
            sock.setblocking(False)
            client = Follower(sock)
            clients.append(client)
            batch.append(client)
            open_clients[sock.fileno()] = client
            poller.register(sock.fileno(), select.EPOLLIN)
        if not pump(lambda: all(c.head() is not None or c.closed for c in batch), time.time() + 30):
            print("FAIL: clients got no answer within 30 s")
            return None
    bad = [c.head() for c in clients if not (c.head() or "").startswith("HTTP/1.1 200")]
    print(f"clients connected: {args.clients - len(bad)} of {args.clients} in {time.time() - started:.2f} s")
    if bad:
        print(f"FAIL: {len(bad)} answers were not 200, e.g. {bad[0]!r}")
        return None
    # Following means caught up: every client has the lines stored so far (each follower reads the store before
    # it takes the live channel), and has had a moment for its last look at the store.
    started = time.time()
    stored = len(plain_log(args))
    marker = f"id: {stored}\n".encode()
    if stored and not pump(lambda: all(marker in c.raw for c in clients), started + 30):
        print(f"FAIL: not every client got the {stored} lines stored before it connected within 30 s")
        return None
    pump(lambda: False, time.time() + 0.2)
    print(f"clients caught up with the {stored} lines stored so far in {time.time() - started:.2f} s")
    connected = rss_kb(args.pid)
    cpu = cpu_seconds(args.pid), time.process_time()
    go = time.time()
    open(args.go, "w").close()
    if not pump(lambda: not open_clients, go + args.timeout):
        print(f"FAIL: {len(open_clients)} clients did not get the end event within {args.timeout} s")
        return None
    print(f"all clients had the end event {time.time() - go:.2f} s after the hook was let go")
    print(
        f"CPU meanwhile: the daemon {cpu_seconds(args.pid) - cpu[0]:.2f} s (its own, not the hook's processes), "
        f"these clients {time.process_time() - cpu[1]:.2f} s"
    )
    print(f"daemon RSS with {args.clients} clients connected: {connected[0]} KB (anonymous {connected[1]} KB)")
    print(
        f"daemon RSS while they followed, highest of {rss['samples']} samples every 50 ms: "
        f"{rss['max']} KB (anonymous {rss['max_anon']} KB)"
    )
    print(f"RSS_FOLLOW_KB={rss['max']}")
    return clients


def plain_log(args):
    """The deploy's log as text/plain, as lines."""
    url = f"http://127.0.0.1:{args.port}/deploys/{args.deploy}/logs"
    answer = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {args.token}"}))
    return answer.read().decode().splitlines()


def check(args, clients):
    """Every client got every stored line once, in order, then `end`; how late the last one was."""
    lines = plain_log(args)
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    stored = {
        seq: (parse_at(at), line)
        for seq, at, line in db.execute(
            "SELECT seq, at, line FROM deploy_log_lines WHERE deploy_id = ? ORDER BY seq", (args.deploy,)
        )
    }
    state = db.execute("SELECT state FROM deploys WHERE id = ?", (args.deploy,)).fetchone()[0]
    failures = []
    if sorted(stored) != list(range(1, len(lines) + 1)) or [stored[seq][1] for seq in sorted(stored)] != lines:
        failures.append("the stored lines and the text/plain log differ")
    expected = [(seq, stored[seq][1]) for seq in sorted(stored)]
    received = {}  # seq -> when the last client got it
    complete = 0
    for number, client in enumerate(clients):
        client.decode()
        got = [(event_id, data) for event_id, name, data, _ in client.events if name is None]
        if client.lost:
            failures.append(f"client {number}: {client.lost}")
        elif got != expected:
            failures.append(f"client {number}: got {len(got)} lines, not the {len(expected)} stored, once each in order")
        elif client.ended != state:
            failures.append(f"client {number}: end event {client.ended!r}, but the deploy is {state!r}")
        else:
            complete += 1
        for event_id, name, _, at in client.events:
            if name is None:
                received[event_id] = max(received.get(event_id, 0), at)
    print(f"lines in the log: {len(lines)}; the deploy ended {state}")
    print(f"clients with every line once, in order, then the end event: {complete} of {len(clients)}")
    # The hook's lines, printed once every client followed (lines before them came from the store's backlog).
    live = [seq for seq in sorted(stored) if stored[seq][1].lstrip().startswith("follow-line ") and seq in received]
    if live:
        late = sorted((received[seq] - stored[seq][0]) * 1000 for seq in live)
        printed = sorted((received[seq] - float(stored[seq][1].split()[2])) * 1000 for seq in live)

        def pick(values, q):
            return values[min(len(values) - 1, int(q * len(values)))]

        print(
            f"last client's delay after a line was stored, over {len(late)} lines: "
            f"median {pick(late, 0.5):.1f} ms, p99 {pick(late, 0.99):.1f} ms, max {late[-1]:.1f} ms"
        )
        print(
            f"last client's delay after the hook printed a line: "
            f"median {pick(printed, 0.5):.1f} ms, p99 {pick(printed, 0.99):.1f} ms, max {printed[-1]:.1f} ms"
        )
        slowest = sorted(live, key=lambda seq: received[seq] - stored[seq][0])[-5:]
        print(
            "slowest lines (number: delay): "
            + ", ".join(f"{seq}: {(received[seq] - stored[seq][0]) * 1000:.0f} ms" for seq in reversed(slowest))
        )
        print(f"LAST_FOLLOWER_MAX_MS={late[-1]:.1f}")
    else:
        failures.append("no line of the hook reached the clients")
    for failure in failures[:10]:
        print("FAIL:", failure)
    if len(failures) > 10:
        print(f"FAIL: … and {len(failures) - 10} more")
    return 0 if not failures else 1


def main():
    parser = argparse.ArgumentParser()
    for name in ("--port", "--token", "--deploy", "--go", "--pid", "--db"):
        parser.add_argument(name, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    clients = follow(args)
    return 1 if clients is None else check(args, clients)


if __name__ == "__main__":
    sys.exit(main())
