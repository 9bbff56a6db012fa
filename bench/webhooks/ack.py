#!/usr/bin/env python3
"""Acknowledgement time of GitHub webhook deliveries (and, in the same run, of the same deploys asked for
with POST /deploys and a token): N requests from C threads on keep-alive connections, each a real push
payload (tests/corpus/payloads) pointed at the bench's repository, with its own X-GitHub-Delivery, signed.
Prints count, failures, p50/p90/p99/max in milliseconds and requests per second.

Usage: ack.py HOST:PORT SECRET TOKEN COMMIT [requests] [threads]
"""
import hashlib
import hmac
import http.client
import json
import pathlib
import sys
import threading
import time
import uuid

address, secret, token, commit = sys.argv[1:5]
total = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
threads = int(sys.argv[6]) if len(sys.argv) > 6 else 8
host, port = address.rsplit(":", 1)
corpus = pathlib.Path(__file__).resolve().parents[2] / "tests/corpus/payloads/github/api.github.com/push"
push = json.loads((corpus / "with-new-branch.payload.json").read_text())
push["ref"] = "refs/heads/main"
push["after"] = commit
push["repository"]["full_name"] = "bench/app"
body = json.dumps(push).encode()
signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def run(kind):
    latencies, failures, lock = [], [], threading.Lock()
    per_thread = total // threads

    def worker():
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        for _ in range(per_thread):
            if kind == "webhook":
                headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                           "X-Hub-Signature-256": signature, "Content-Type": "application/json",
                           "User-Agent": "GitHub-Hookshot/bench"}
                path, payload = "/webhooks/github", body
            else:
                headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
                path, payload = "/deploys", json.dumps({"service": "app", "ref": commit}).encode()
            started = time.perf_counter()
            connection.request("POST", path, payload, headers)
            answer = connection.getresponse()
            answer.read()
            mine.append(time.perf_counter() - started)
            if answer.status != 202:
                with lock:
                    failures.append(answer.status)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"{kind:8} requests={len(latencies)} failures={len(failures)} rate={len(latencies) / elapsed:,.0f}/s "
          f"p50={pick(0.50):.2f}ms p90={pick(0.90):.2f}ms p99={pick(0.99):.2f}ms max={latencies[-1] * 1000:.2f}ms")
    return failures


failed = run("webhook") + run("api")
sys.exit(1 if failed else 0)
