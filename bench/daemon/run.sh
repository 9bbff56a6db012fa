#!/usr/bin/env bash
# The daemon benchmark: sustained `POST /deploys` accepted per second (queueing only), `GET /deploys/{id}`
# per second, and the daemon's RSS idle and after the load — with wrk on loopback against a release build.
#
# The service's deploys are cheap: its only host cannot be reached, so each queued deploy fails within
# milliseconds once it runs (`queue: fifo` keeps every request; the global cap keeps 4 running at once).
# Usage: bench/daemon/run.sh [seconds] [connections]
# Needs: wrk, git, python3 (for nothing), target/release/berth (`cargo build --release`).
set -euo pipefail

duration=${1:-10}
connections=${2:-32}
repo=$(cd "$(dirname "$0")/../.." && pwd)
berth=${BERTH_BIN:-$repo/target/release/berth}
[[ -x $berth ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk (tests/bench/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-daemon-bench.XXXXXX)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The service's repository: a Kamal configuration whose host is unreachable.
mkdir -p "$work/app/config"
cat >"$work/app/config/deploy.yml" <<YML
service: app
image: bench/app
servers: [127.0.0.1:1]
builder: {arch: amd64}
registry: {server: localhost:5555}
YML
git -C "$work/app" init -q --initial-branch=main
git -C "$work/app" -c user.name=b -c user.email=b@example.com add .
git -C "$work/app" -c user.name=b -c user.email=b@example.com commit -qm bench

port=17420
cat >"$work/berth.yml" <<YML
listen: 127.0.0.1:$port
data_dir: data
services:
  app:
    repo: app
    queue: fifo
YML
token=$("$berth" token create --scope deploy --config "$work/berth.yml")
"$berth" serve --config "$work/berth.yml" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "daemon RSS idle: $(rss) KB"

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"service":"app","version":"v1","reason":"bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
cat >"$work/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA

echo
echo "POST /deploys (wrk -t2 -c$connections -d${duration}s):"
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/deploys" | tee "$work/post.txt" | grep -E "Requests/sec|Latency|99%|Non-2xx|Socket errors"
echo "daemon RSS after the POSTs: $(rss) KB"

echo
echo "GET /deploys/1 (wrk -t2 -c$connections -d${duration}s):"
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/get.lua" "http://127.0.0.1:$port/deploys/1" | tee "$work/get.txt" | grep -E "Requests/sec|Latency|99%|Non-2xx|Socket errors"
echo "daemon RSS after the reads: $(rss) KB"
total=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$port/metrics" | awk '/^berth_deploys\{/ {sum += $2} END {print sum}')
echo "deploys stored: $total"
