#!/usr/bin/env bash
# Several daemons on PostgreSQL against one on SQLite, in one run (issue 12): POST /deploys accepted per second
# and GET /deploys/{id} per second, with 1 daemon on SQLite, 1 on PostgreSQL and 3 on PostgreSQL (one wrk per
# daemon at once, figures summed); then how long a frozen daemon's running deploy takes to be interrupted by
# another (SIGSTOP; lease 15 s, renewed every 5 s).
#
# Release build on loopback, a throwaway PostgreSQL cluster (tests/postgres/cluster.sh). The service's deploys
# are cheap (its repository does not exist: each fails at its first step); queue fifo, 1 deploy at a time.
# Usage: bench/shared/run.sh [seconds] [connections per daemon]
set -euo pipefail
duration=${1:-10}
connections=${2:-16}
repo=$(cd "$(dirname "$0")/../.." && pwd)
berth=${BERTH_BIN:-$repo/target/release/berth}
[[ -x $berth ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk (tests/bench/install-deps.sh)" >&2; exit 1; }
work=$(mktemp -d /tmp/berth-shared-bench.XXXXXX)
pids=()
pg_dir=""
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n $pg_dir ]] && bash "$repo/tests/postgres/cluster.sh" stop "$pg_dir"
    rm -rf "$work"
}
trap cleanup EXIT
server=$(bash "$repo/tests/postgres/cluster.sh" start 2>"$work/pg-dir")
pg_dir=$(tail -1 "$work/pg-dir")
cd "$work"

# start NAME PORT [DATABASE_URL] -> pid in $started
start() {
    local name=$1 port=$2 url=${3:-}
    {
        echo "listen: 127.0.0.1:$port"
        echo "data_dir: data-$name"
        echo "instance: $name"
        echo "max_concurrent_deploys: 1"
        [[ -n $url ]] && echo "database_url: $url"
        echo "services:"
        echo "  app: {repo: no-such-repository, queue: fifo}"
    } >"$name.yml"
    taskset -c 1 "$berth" serve --config "$name.yml" >"$name.log" 2>&1 &
    started=$!
    pids+=("$started")
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.05; done
    echo "$name did not start: $(cat "$name.log")" >&2
    exit 1
}

# load KIND TOKEN PORT... -> "requests/s p99" summed over the daemons
load() {
    local kind=$1 token=$2
    shift 2
    local id
    id=$(curl -sf -X POST "http://127.0.0.1:$1/deploys" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"service":"app","version":"v1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    cat >"$kind.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA
    if [[ $kind == post ]]; then
        cat >>"$kind.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"service":"app","version":"v1","reason":"bench"}'
wrk.headers["Content-Type"] = "application/json"
LUA
    fi
    local path=/deploys
    [[ $kind == get ]] && path=/deploys/$id
    local outs=() loads=()
    for port in "$@"; do
        taskset -c 0 wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$kind.lua" "http://127.0.0.1:$port$path" \
            >"wrk-$kind-$port.txt" &
        loads+=("$!")
        outs+=("wrk-$kind-$port.txt")
    done
    wait "${loads[@]}"
    python3 - "${outs[@]}" <<'PY'
import re, sys
total, p99s, errors = 0.0, [], 0
for path in sys.argv[1:]:
    text = open(path).read()
    total += float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    p99s.append(float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)])
    e = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(e.group(1)) if e else 0
print(f"{total:,.0f}/s  p99 {max(p99s):.2f} ms  non-2xx {errors}")
PY
}

echo "$("$berth" version), $(nproc) CPUs; wrk -t1 -c$connections -d${duration}s per daemon; daemons on CPU 1, wrk on CPU 0"
start sqlite 17501
token=$("$berth" token create --scope deploy --config sqlite.yml)
echo "SQLite, 1 daemon:      POST $(load post "$token" 17501)   GET $(load get "$token" 17501)"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

psql -q "$server" -c "CREATE DATABASE bench1" && url1="${server%/*}/bench1"
start pg-1 17511 "$url1"
token=$(BERTH_DATABASE_URL=$url1 "$berth" token create --scope deploy --config pg-1.yml)
echo "PostgreSQL, 1 daemon:  POST $(load post "$token" 17511)   GET $(load get "$token" 17511)"
kill "$started"; wait "$started" 2>/dev/null || true

psql -q "$server" -c "CREATE DATABASE bench3" && url3="${server%/*}/bench3"
start pg-a 17521 "$url3"; start pg-b 17522 "$url3"; start pg-c 17523 "$url3"
token=$(BERTH_DATABASE_URL=$url3 "$berth" token create --scope deploy --config pg-a.yml)
echo "PostgreSQL, 3 daemons: POST $(load post "$token" 17521 17522 17523)   GET $(load get "$token" 17521 17522 17523)"
