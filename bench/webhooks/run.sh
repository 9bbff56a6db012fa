#!/usr/bin/env bash
# Webhook acknowledgement time (issue 11: GitHub wants an answer within 10 s; berth's target is well under a
# second): signed push deliveries, each with its own delivery id, each queuing a deploy — against the same
# deploys asked for through POST /deploys with a token, in the same run. Release build on loopback; the
# daemon on CPU 1, the client (bench/webhooks/ack.py) on CPU 0. The service's deploys are cheap (its
# repository does not exist: each fails at its first step), and the queue runs them while the load runs.
#
# Usage: bench/webhooks/run.sh [requests] [threads]
set -euo pipefail
requests=${1:-4000}
threads=${2:-8}
repo=$(cd "$(dirname "$0")/../.." && pwd)
berth=${BERTH_BIN:-$repo/target/release/berth}
[[ -x $berth ]] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /tmp/berth-webhook-bench.XXXXXX)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

secret=bench-webhook-secret
commit=0123456789abcdef0123456789abcdef01234567
port=17421
mkdir -p "$work/secrets"
echo "GITHUB_WEBHOOK_SECRET=$secret" >"$work/secrets/secrets"
cat >"$work/berth.yml" <<YML
listen: 127.0.0.1:$port
data_dir: data
max_concurrent_deploys: 1
services:
  app:
    repo: no-such-repository
    queue: fifo
    secrets: secrets
    github:
      repository: bench/app
      webhook_secret: GITHUB_WEBHOOK_SECRET
YML
cd "$work"
token=$("$berth" token create --scope deploy --config berth.yml)
taskset -c 1 "$berth" serve --config berth.yml >serve.log 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done
echo "berth $("$berth" version 2>/dev/null | head -1), $(nproc) CPUs, $requests requests per kind from $threads threads"
taskset -c 0 python3 "$repo/bench/webhooks/ack.py" "127.0.0.1:$port" "$secret" "$token" "$commit" "$requests" "$threads"
echo "daemon RSS after: $(awk '/VmRSS/ {print $2 / 1024 " MB"}' "/proc/$pid/status")"
