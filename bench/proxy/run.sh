#!/usr/bin/env bash
# The proxy benchmark: requests/s and p50/p99 latency through the berth proxy vs nginx as an equivalent
# reverse proxy vs direct to the backend; same backend (nginx answering a 64-byte body), same load tool
# (wrk), same run; plus memory per 1,000 idle keep-alive connections.
#
# Layout (as in the issue): wrk pinned to CPU 0; the proxy under test and the backend pinned to CPU 1; one
# worker each. Rounds interleave the three setups so machine noise hits all of them alike.
#
# Usage: bench/proxy/run.sh [seconds-per-run] [rounds] [connections]
# Needs: nginx, wrk (tests/bench/install-deps.sh installs them), python3, and target/release/berth
# (`cargo build --release`). Everything listens on 127.0.0.1 only and is stopped on exit.
# BERTH_BIN=path measures another berth binary; BASELINE_BIN=path also measures a second one (e.g. the
# previous build) as the setup "base", in the same rounds.
set -euo pipefail
# 10,000 idle connections need more descriptors than the usual 1,024 (client and proxy sides).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

duration=${1:-10}
rounds=${2:-3}
connections=${3:-50}
repo=$(cd "$(dirname "$0")/../.." && pwd)
berth=${BERTH_BIN:-$repo/target/release/berth}
[[ -x $berth ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "install nginx and wrk (tests/bench/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-proxy-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

backend_port=18080
nginx_port=18081
berth_port=18082
base_port=18083
baseline=${BASELINE_BIN:-}
body=$(printf 'x%.0s' $(seq 1 63))  # 63 bytes + newline = 64

cat >"$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    default_type text/plain;
    server {
        listen 127.0.0.1:$backend_port backlog=4096;
        location / { return 200 "$body\n"; }
    }
}
CONF

# nginx doing what the berth proxy does per request: pooled upstream keep-alive, Host kept,
# X-Forwarded-For/Proto/Host and a request id set, no access log (the berth proxy runs with --access-log=false).
cat >"$work/nginx-proxy.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 10000000;
    upstream backend { server 127.0.0.1:$backend_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-ID \$request_id;
        }
    }
}
CONF

mkdir -p "$work/logs"
taskset -c 1 nginx -p "$work" -e "$work/backend-error.log" -c "$work/backend.conf" &
pids+=($!)
taskset -c 1 nginx -p "$work" -e "$work/nginx-proxy-error.log" -c "$work/nginx-proxy.conf" &
nginx_master=$!
pids+=($nginx_master)

ln -s "$berth" "$work/kamal-proxy"
export KAMAL_PROXY_SOCKET=$work/proxy.sock
taskset -c 1 "$work/kamal-proxy" run --bind=127.0.0.1 --http-port=$berth_port --https-port=0 --workers=1 \
    --state-dir="$work/state" --access-log=false --max-connections-per-ip=0 >"$work/berth.log" 2>&1 &
berth_pid=$!
pids+=($berth_pid)
if [[ -n $baseline ]]; then
    mkdir -p "$work/base"
    ln -s "$baseline" "$work/base/kamal-proxy"
    KAMAL_PROXY_SOCKET=$work/base/proxy.sock taskset -c 1 "$work/base/kamal-proxy" run --bind=127.0.0.1 \
        --http-port=$base_port --https-port=0 --workers=1 --state-dir="$work/base/state" --access-log=false \
        $(if "$baseline" run --help 2>/dev/null | grep -q max-connections-per-ip; then echo --max-connections-per-ip=0; fi) \
        >"$work/base.log" 2>&1 &
    base_pid=$!
    pids+=($base_pid)
fi

wait_port() {
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not answer" >&2
    return 1
}
wait_port $backend_port
wait_port $nginx_port
for _ in $(seq 1 100); do [[ -S $KAMAL_PROXY_SOCKET ]] && break; sleep 0.05; done
"$work/kamal-proxy" deploy bench --target=127.0.0.1:$backend_port
wait_port $berth_port
[[ $(curl -fsS "http://127.0.0.1:$berth_port/") == "$body" ]] || { echo "berth proxy answers wrongly" >&2; exit 1; }
if [[ -n $baseline ]]; then
    for _ in $(seq 1 100); do [[ -S $work/base/proxy.sock ]] && break; sleep 0.05; done
    KAMAL_PROXY_SOCKET=$work/base/proxy.sock "$work/base/kamal-proxy" deploy bench --target=127.0.0.1:$backend_port
    wait_port $base_port
fi

nginx_worker=$(pgrep -P "$nginx_master" | head -1)

run_wrk() { # name port [pid to measure] -> "rps p50_ms p99_ms cpu_us_per_request"
    local out stat=$work/stat-$1.txt cpu="-" perf_pid=""
    if [[ -n ${3:-} ]] && command -v perf >/dev/null; then
        # CPU time per request of the proxy process: unlike req/s, hardly moved by other load on the machine.
        perf stat -e task-clock -x, -o "$stat" -p "$3" -- sleep "$duration" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(taskset -c 0 wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$2/")
    echo "$out" >>"$work/wrk-$1.txt"
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        cpu=$(awk -F, -v rps="$rps" -v d="$duration" '/task-clock/ {printf "%.2f", $1 * 1000 / (rps * d)}' "$stat")
    fi
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${cpu:--} ${errors:-}"
}
to_ms() { # wrk prints 512.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else print v }'
}

echo "wrk -t1 -c$connections -d${duration}s, $rounds rounds; wrk on CPU 0, proxy + backend on CPU 1"
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every setup; compare within a round)"
printf '%-8s %-6s %12s %10s %10s %10s  %s\n' round setup req/s p50_ms p99_ms cpu_us/req notes
declare -A all
ratios=""
for round in $(seq 1 "$rounds"); do
    # Alternate the order of the two proxies so a load change during a round does not always favour one.
    if (( round % 2 )); then order="direct:$backend_port nginx:$nginx_port berth:$berth_port"; else order="direct:$backend_port berth:$berth_port nginx:$nginx_port"; fi
    [[ -n $baseline ]] && order+=" base:$base_port"
    declare -A this_round=()
    for setup in $order; do
        name=${setup%%:*}
        port=${setup##*:}
        case $name in
            nginx) measured=$nginx_worker ;;
            berth) measured=$berth_pid ;;
            base) measured=$base_pid ;;
            *) measured="" ;;
        esac
        result=$(run_wrk "$name" "$port" "$measured")
        all[$name]+="$result"$'\n'
        this_round[$name]=${result%% *}
        # shellcheck disable=SC2086
        printf '%-8s %-6s %12s %10s %10s %10s  %s\n' "$round" "$name" $result
    done
    ratios+="$(awk -v b="${this_round[berth]}" -v n="${this_round[nginx]}" 'BEGIN {printf "%.3f", b / n}')"$'\n'
done

echo
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median over rounds:"
setups="direct nginx berth"
[[ -n $baseline ]] && setups+=" base"
for name in $setups; do
    rps=$(awk 'NF {print $1}' <<<"${all[$name]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    p50=$(awk 'NF {print $2}' <<<"${all[$name]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    p99=$(awk 'NF {print $3}' <<<"${all[$name]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    cpu=$(awk 'NF && $4 != "-" {print $4}' <<<"${all[$name]}" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}')
    printf '%-6s %12s req/s  p50 %s ms  p99 %s ms  CPU %s us/request\n' "$name" "$rps" "$p50" "$p99" "$cpu"
done
echo "berth/nginx throughput per round: $(tr '\n' ' ' <<<"$ratios")"
echo "median berth/nginx: $(awk 'NF' <<<"$ratios" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"

# Memory: RSS growth of the proxy process (nginx: its worker) with 1,000 and 10,000 idle keep-alive
# connections, each having made one request, and with 2,000 slow clients each holding a ~60 KB partial head.
# The process's whole RSS is printed too: nginx allocates its connection table (worker_connections) up
# front, so its growth is near zero while its baseline already holds that memory.
held_rss() { # pid port count mode -> "KB of growth (RSS before)"
    local before
    before=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status")
    echo "$(python3 "$repo/bench/proxy/idle_connections.py" "$1" "$2" "$3" "$4") KB (process RSS before: $before KB)"
}
for held in "1000 idle" "10000 idle" "2000 slow"; do
    read -r count mode <<<"$held"
    echo
    echo "memory with $count $mode connections (RSS growth):"
    echo "nginx  $(held_rss "$nginx_worker" $nginx_port "$count" "$mode")"
    echo "berth  $(held_rss "$berth_pid" $berth_port "$count" "$mode")"
    if [[ -n $baseline ]]; then
        echo "base   $(held_rss "$base_pid" $base_port "$count" "$mode")"
    fi
    sleep 2 # let both close the held connections before the next measurement
done
