#!/usr/bin/env bash
# The daemon benchmark (issue 10's targets), against a release build on loopback:
#   - the daemon's RSS idle (target < 30 MB);
#   - N SSE clients (default 1,000) following one deploy's log: every client gets every line once and in order,
#     the daemon's RSS meanwhile (target < 100 MB), and how late the last client gets each line after the store
#     recorded it (target: within 100 ms);
#   - `GET /deploys/{id}` per second polling one deploy (target ≥ 20,000/s), and reads spread over every deploy;
#   - `POST /deploys` accepted per second, sustained (target ≥ 2,000/s).
#
# Placement (as bench/proxy/run.sh): the daemon, and every process it starts, on CPU 1; wrk (-t1) and the
# Python followers on CPU 0.
#
# The services (max_concurrent_deploys: 1, queue: fifo):
#   - `app` takes the POST load. Its deploys are cheap and say so: its `repo` is a path that does not exist, so
#     each deploy, once the queue runs it, fails at its first step (`git clone` of the repository, one process).
#     The queue runs them one after another *while* the load runs, as it would; most are still queued when the
#     load ends (they are requests queued faster than any deploy runs), and drain after.
#   - `follow` is the deploy the followers watch: its repository has a pre-connect hook that waits until the
#     followers are connected and have the lines already stored, then prints `follow-line N <time>` every 50 ms
#     (100 lines); hook output is part of the deploy's log. The deploy then fails (its host, 127.0.0.1:1, cannot be reached), which ends
#     the stream with an `end` event.
#
# Usage: bench/daemon/run.sh [seconds] [connections] [followers]
# Needs: wrk, git, python3, taskset, 2 CPUs, target/release/berth (`cargo build --release`).
set -euo pipefail

duration=${1:-10}
connections=${2:-32}
followers=${3:-1000}
repo=$(cd "$(dirname "$0")/../.." && pwd)
berth=${BERTH_BIN:-$repo/target/release/berth}
[[ -x $berth ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk (tests/bench/install-deps.sh)" >&2; exit 1; }
ulimit -n "$(( followers * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/berth-daemon-bench.XXXXXX)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

commit_all() {
    git -C "$1" init -q --initial-branch=main
    git -C "$1" -c user.name=b -c user.email=b@example.com add .
    git -C "$1" -c user.name=b -c user.email=b@example.com commit -qm bench
}

# `follow`: a Kamal configuration whose host is unreachable, and a pre-connect hook that prints lines.
mkdir -p "$work/follow/config" "$work/follow/.kamal/hooks"
cat >"$work/follow/config/deploy.yml" <<YML
service: follow
image: bench/follow
servers: [127.0.0.1:1]
builder: {arch: amd64}
registry: {server: localhost:5555}
YML
cat >"$work/follow/.kamal/hooks/pre-connect" <<SH
#!/bin/sh
while [ ! -e "$work/go" ]; do sleep 0.02; done
i=1
while [ \$i -le 100 ]; do
    echo "follow-line \$i \$(date +%s.%N)"
    i=\$((i + 1))
    sleep 0.05
done
SH
chmod +x "$work/follow/.kamal/hooks/pre-connect"
commit_all "$work/follow"

port=17420
cat >"$work/berth.yml" <<YML
listen: 127.0.0.1:$port
data_dir: data
max_concurrent_deploys: 1
services:
  app:
    repo: no-such-repository
    queue: fifo
  follow:
    repo: follow
    queue: fifo
YML
token=$("$berth" token create --scope deploy --config "$work/berth.yml")
taskset -c 1 "$berth" serve --config "$work/berth.yml" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
api() { curl -fsS -H "Authorization: Bearer $token" "$@"; }
newest() { api "http://127.0.0.1:$port/deploys?limit=1" | python3 -c 'import json,sys; d=json.load(sys.stdin)["deploys"]; print(d[0]["id"] if d else 0)'; }

echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$("$berth" version) ($berth, built $(date -u -r "$berth" +%FT%TZ)); wrk -t1 -c$connections -d${duration}s"
rss_idle=$(rss)
echo
echo "daemon RSS idle: $rss_idle KB"

echo
echo "== $followers SSE clients following one deploy"
follow_id=$(api -X POST -H 'Content-Type: application/json' -d '{"service":"follow","version":"v1"}' \
    "http://127.0.0.1:$port/deploys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
taskset -c 0 python3 "$repo/bench/daemon/followers.py" --port "$port" --token "$token" --deploy "$follow_id" \
    --clients "$followers" --go "$work/go" --pid "$pid" --db "$work/data/berth.sqlite" | tee "$work/followers.txt"
follow_ok=${PIPESTATUS[0]}
last_ms=$(awk -F= '/^LAST_FOLLOWER_MAX_MS=/ {print $2}' "$work/followers.txt")
rss_follow=$(awk -F= '/^RSS_FOLLOW_KB=/ {print $2}' "$work/followers.txt")
echo "daemon RSS after: $(rss) KB"

cat >"$work/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"service":"app","version":"v1","reason":"bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
# wrk's figures: requests/s, total requests, p99, non-2xx answers and socket errors.
load() {
    local out=$1; shift
    taskset -c 0 wrk -t1 -c"$connections" -d"${duration}s" --latency "$@" >"$out"
    grep -E "Requests/sec|requests in|Latency  |99%|Non-2xx|Socket errors" "$out" | sed 's/^/    /'
}
rate() { awk '/^Requests\/sec/ {printf "%d", $2}' "$1"; }
failed() { awk '/Non-2xx/ {n += $NF} /Socket errors/ {n += 1} END {print n + 0}' "$1"; }

echo
echo "== GET /deploys/$follow_id, polled (one deploy: after its first read, from the store's deploy cache)"
load "$work/get.txt" -s "$work/get.lua" "http://127.0.0.1:$port/deploys/$follow_id"

echo
echo "== POST /deploys to \`app\` (each deploy fails at its git clone once the queue runs it; one at a time)"
before=$(newest)
load "$work/post.txt" -s "$work/post.lua" "http://127.0.0.1:$port/deploys"
accepted=$(awk '/requests in/ {print $1}' "$work/post.txt")
last_id=$(newest)
counts=$(api "http://127.0.0.1:$port/metrics" | awk -F'[{}" ]+' '/^berth_deploys\{/ {printf "%s %s, ", $3, $4}')
echo "    deploys by state right after the load: ${counts%, }"
echo "    daemon RSS after the POSTs: $(rss) KB"

echo
echo "== GET /deploys/{random id of $last_id} (mostly not cached: one query each; the queue is draining meanwhile)"
cat >"$work/get-any.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
request = function()
  return wrk.format("GET", "/deploys/" .. math.random(1, $last_id))
end
LUA
load "$work/get-any.txt" -s "$work/get-any.lua" "http://127.0.0.1:$port"
rss_end=$(rss)
echo "    daemon RSS at the end: $rss_end KB"

verdict() { if [[ $1 == 1 ]]; then echo "met"; else echo "NOT MET"; fi; }
post_rate=$(rate "$work/post.txt")
get_rate=$(rate "$work/get.txt")
echo
echo "== Targets"
printf '%-58s %12s  %s\n' "POST /deploys accepted per second (≥ 2,000)" "$post_rate/s" \
    "$(verdict $(( post_rate >= 2000 && $(failed "$work/post.txt") == 0 )))"
printf '%-58s %12s  %s\n' "GET /deploys/{id} per second, polled (≥ 20,000)" "$get_rate/s" \
    "$(verdict $(( get_rate >= 20000 && $(failed "$work/get.txt") == 0 )))"
printf '%-58s %12s  %s\n' "  (reads spread over $last_id deploys, for comparison)" "$(rate "$work/get-any.txt")/s" ""
printf '%-58s %12s  %s\n' "RSS idle (< 30 MB)" "$rss_idle KB" "$(verdict $(( rss_idle < 30 * 1024 )))"
printf '%-58s %12s  %s\n' "RSS with $followers SSE clients (< 100 MB)" "${rss_follow:-?} KB" \
    "$(verdict $(( follow_ok == 0 && ${rss_follow:-999999} < 100 * 1024 )))"
printf '%-58s %12s  %s\n' "last SSE client's delay after a line is stored (≤ 100 ms)" "${last_ms:-?} ms" \
    "$(verdict $(( follow_ok == 0 && $(awk -v v="${last_ms:-1e9}" 'BEGIN {print (v <= 100)}') )))"
echo "(POST: wrk counted $accepted answers, $(failed "$work/post.txt") of them failed; deploys $((before + 1))..$last_id stored)"
