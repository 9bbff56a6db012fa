#!/usr/bin/env bash
# The deploy benchmark of issue 3: wall time of `berth deploy` of a prebuilt image to 1, 5 and 20 bench hosts,
# against the same docker steps run by a plain shell script over OpenSSH with ControlMaster (bench/deploy/floor.sh,
# the floor), in the same run. Target: berth <= 1.2x the floor at every size.
#
#   bench/deploy/run.sh [SIZES...]      (default: 1 5 20; must run as root, like tests/bench/bench.sh)
#
# For each size, one bench at a time (tests/bench/bench.sh up; always downed, even on failure or ^C):
#   1. push the test app (label service=app) as v1 and as one version per timed deploy; every version's binary
#      gets a few unique trailing bytes, so each deploy pulls a new ~1.4 MB layer (a new build of the app),
#      not only a new manifest
#   2. `berth setup --skip-push --version v1` (proxy, env files, app v1 on every host; not timed)
#   3. WARMUP + REPS rounds; each round times, one after the other on the same bench, each deploying a new version:
#        floor        bench/deploy/floor.sh            (login, pull, run, poll /up, stop old; the testbed's floor)
#        floor+proxy  bench/deploy/floor.sh --proxy    (same, but the health wait is kamal-proxy deploy, as berth's)
#        berth        berth deploy --skip-push --version vN
#      then checks (untimed) that the version runs everywhere; after each floor run, `berth prune all` (untimed)
#      removes what the floor left behind, so that berth's own prune only has its usual work. The order of the
#      three rotates from round to round. Warm-up rounds are not counted.
#   4. one more, untimed `berth deploy -v` under bench/deploy/timeline.sh: berth-profile-N.tsv (every line berth
#      printed, timestamped) and berth-profile-N.txt (time per remote command on the first host, SSH round trips)
# Prints the table (medians) and writes everything under OUT (samples.tsv, table.md, logs).
#
# Environment: REPS (timed rounds, default 5), WARMUP (default 2), BERTH_BIN (default target/release/berth; copied
# once, so a rebuild during the run changes nothing), OUT (default: a new /tmp/berth-deploy-bench.XXXXXX),
# BENCH_NAME_PREFIX (default bdep), DEPLOY_TIMEOUT (seconds per timed command, default 600).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf with a '.' decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
BENCH=$REPO/tests/bench/bench.sh
FLOOR=$SCRIPT_DIR/floor.sh
REPS=${REPS:-5}
WARMUP=${WARMUP:-2}
PREFIX=${BENCH_NAME_PREFIX:-bdep}
DEPLOY_TIMEOUT=${DEPLOY_TIMEOUT:-600}
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(1 5 20)

die() {
    echo "run: $*" >&2
    exit 1
}
say() { echo "run: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (the bench needs it)"
[[ $REPS =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] || die "REPS must be >= 1 and WARMUP >= 0"
for n in "${SIZES[@]}"; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "sizes are host counts, got '$n'"; done

BERTH_SRC=${BERTH_BIN:-$REPO/target/release/berth}
[[ -x $BERTH_SRC ]] || die "no berth binary at $BERTH_SRC (cargo build --release first)"
OUT=${OUT:-$(mktemp -d /tmp/berth-deploy-bench.XXXXXX)}
mkdir -p "$OUT"
BERTH=$OUT/berth
cp "$BERTH_SRC" "$BERTH"

APP_BIN=$REPO/target/testapp/x86_64-unknown-linux-gnu/release/berth-test-app
[[ -x $APP_BIN ]] || APP_BIN=$(bash "$BENCH" build-app)

CURRENT_BENCH=
down_current() {
    if [[ -n $CURRENT_BENCH ]]; then
        say "down $CURRENT_BENCH"
        bash "$BENCH" down "$CURRENT_BENCH" >>"$OUT/bench.log" 2>&1 || say "bench.sh down $CURRENT_BENCH failed (see $OUT/bench.log)"
        CURRENT_BENCH=
    fi
}
trap down_current EXIT
trap 'exit 130' INT TERM

# seconds START END (EPOCHREALTIME values)
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# machine description, for RESULTS.md
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r)"
    echo "software: dockerd $(dockerd --version 2>/dev/null | sed 's/^Docker version //'), docker CLI $(docker --version 2>/dev/null | sed 's/^Docker version //'), $(ssh -V 2>&1)"
    echo "berth: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted changes in src/)'), $(file -b "$BERTH_SRC" | cut -d, -f1-2), built $(date -u -r "$BERTH_SRC" '+%H:%M UTC')"
    echo "command: REPS=$REPS WARMUP=$WARMUP bench/deploy/run.sh ${SIZES[*]}"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2
printf 'hosts\tround\ttool\tversion\tseconds\tlocal_cpu_s\tmachine_cpu_s\tloadavg1\n' >"$OUT/samples.tsv"

# CPU seconds (all cores, not idle) the machine spent so far, from /proc/stat
machine_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# CPU seconds of the calling shell's finished children, from what the `times` builtin wrote to FILE
children_cpu() { awk 'NR == 2 { n = split($0, f, " "); s = 0; for (i = 1; i <= n; i++) { split(f[i], p, "m"); s += p[1] * 60 + p[2] } printf "%.3f", s }' "$1"; }

# run_timed LOG CMD...: runs CMD (output to LOG); prints "WALL LOCAL_CPU MACHINE_CPU" in seconds: its wall time,
# the CPU time of its own processes on this side (berth, or the floor's bash and ssh clients), and the CPU time
# the whole machine spent meanwhile (hosts' sshd, docker, dockerd, containerd, the apps… and anything else
# running). Fails with the log's tail. (CMD may be a function; the commands it wraps carry their own `timeout`.)
run_timed() {
    local log=$1 t0 t1 c0 c1 m0 m1
    shift
    times >"$log.times" # in this shell: `times` in a command substitution would see that subshell's children
    c0=$(children_cpu "$log.times")
    m0=$(machine_cpu)
    t0=$EPOCHREALTIME
    if ! "$@" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "failed: $* (log: $log)"
    fi
    t1=$EPOCHREALTIME
    m1=$(machine_cpu)
    times >"$log.times"
    c1=$(children_cpu "$log.times")
    rm -f "$log.times"
    echo "$(seconds "$t0" "$t1") $(seconds "$c0" "$c1") $(seconds "$m0" "$m1")"
}

# berth_in PROJECT ARGS...: berth with only the environment it needs (HOME holds the bench's key and known_hosts)
berth_in() {
    local project=$1
    shift
    (cd "$project" && env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$project/home" \
        timeout "$DEPLOY_TIMEOUT" "$BERTH" "$@")
}

# check_version ENVFILE VERSION PROXIED: every host runs app-web-VERSION as its only app-web container and, when
# PROXIED, its proxy serves VERSION.
check_version() {
    local envfile=$1 version=$2 proxied=$3 n i ip sock running served
    n=$(sed -n 's/^BENCH_HOSTS=//p' "$envfile")
    for ((i = 1; i <= n; i++)); do
        ip=$(sed -n "s/^BENCH_HOST_${i}_IP=//p" "$envfile")
        sock=$(sed -n "s|^BENCH_HOST_${i}_DOCKER_HOST=unix://||p" "$envfile")
        running=$(curl -fsS -m 10 --unix-socket "$sock" \
            'http://docker/containers/json?filters=%7B%22label%22%3A%5B%22role%3Dweb%22%5D%7D') ||
            die "host $ip: cannot list its containers"
        running=$(grep -o '"Names":\["/[^"]*"' <<<"$running" | sed 's|.*"/||; s|"$||' | sort | tr '\n' ' ' || true)
        [[ $running == "app-web-$version " ]] || die "host $ip runs [$running], expected app-web-$version only"
        if [[ $proxied == 1 ]]; then
            served=$(curl -fsS -m 10 "http://$ip/version") || die "host $ip: GET /version through the proxy failed"
            [[ $served == "$version" ]] || die "host $ip: the proxy serves $served, expected $version"
        fi
    done
}

TOOLS=(floor floor+proxy berth)
for n in "${SIZES[@]}"; do
    name=$PREFIX$n
    dir=$OUT/h$n
    mkdir -p "$dir"
    say "=== $n host(s): bench $name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    CURRENT_BENCH=$name
    BENCH_TIMEOUT=300 bash "$BENCH" up "$name" "$n" >"$dir/bench.env" 2>>"$OUT/bench.log" ||
        die "bench.sh up $name $n failed (see $OUT/bench.log)"
    envfile=$dir/bench.env
    get() { sed -n "s/^$1=//p" "$envfile"; }

    # Versions: v1 for setup, then one per timed deploy.
    rounds=$((WARMUP + REPS))
    versions=$((1 + rounds * ${#TOOLS[@]} + 1))
    say "pushing $versions versions of the test app"
    for ((v = 1; v <= versions; v++)); do
        cp "$APP_BIN" "$dir/app-bin"
        printf '\nberth-deploy-bench %s v%d %s\n' "$name" "$v" "$EPOCHREALTIME" >>"$dir/app-bin"
        BENCH_APP_BUILD_ARGS="SERVICE=app" bash "$BENCH" push-app "$name" "v$v" "$dir/app-bin" >>"$dir/push.log" 2>&1 ||
            die "push-app v$v failed (see $dir/push.log)"
    done
    rm -f "$dir/app-bin"

    # The berth project: every host in role web, behind the proxy, the test's health check settings.
    project=$dir/project
    mkdir -p "$project/config" "$project/.kamal" "$project/home/.ssh"
    cp "$(get BENCH_SSH_KEY)" "$project/home/.ssh/id_ed25519"
    cp "$(get BENCH_KNOWN_HOSTS)" "$project/home/.ssh/known_hosts"
    {
        echo "service: app"
        echo "image: berth-test-app"
        echo "registry:"
        echo "  server: $(get BENCH_REGISTRY)"
        echo "  username: $(get BENCH_REGISTRY_USER)"
        echo "  password:"
        echo "    - KAMAL_REGISTRY_PASSWORD"
        echo "servers:"
        echo "  web:"
        for ((i = 1; i <= n; i++)); do echo "    - $(get "BENCH_HOST_${i}_IP")"; done
        echo "proxy:"
        echo "  app_port: 80"
        echo "  healthcheck:"
        echo "    path: /up"
        echo "    interval: 1"
        echo "    timeout: 2"
        echo "builder:"
        echo "  arch: amd64"
        echo "ssh:"
        echo "  user: $(get BENCH_SSH_USER)"
        echo "deploy_timeout: 60"
        echo "drain_timeout: 5"
        echo "readiness_delay: 0"
    } >"$project/config/deploy.yml"
    (umask 077 && echo "KAMAL_REGISTRY_PASSWORD=$(cat "$(get BENCH_REGISTRY_PASSWORD_FILE)")" >"$project/.kamal/secrets")

    say "berth setup (v1)"
    m=$(run_timed "$dir/setup.log" berth_in "$project" setup --skip-push --version v1)
    say "setup took ${m%% *}s"
    check_version "$envfile" v1 1

    v=1
    for ((round = 1; round <= rounds; round++)); do
        line="round $round/$rounds:"
        [[ $round -gt $WARMUP ]] || line="round $round/$rounds (warm-up):"
        # The order rotates from round to round, so that a drift of the machine's speed favours no tool.
        for ((k = 0; k < ${#TOOLS[@]}; k++)); do
            tool=${TOOLS[$(((round - 1 + k) % ${#TOOLS[@]}))]}
            v=$((v + 1))
            case $tool in
                floor) m=$(run_timed "$dir/floor.log" timeout "$DEPLOY_TIMEOUT" "$FLOOR" "$envfile" "v$v") ;;
                floor+proxy) m=$(run_timed "$dir/floor-proxy.log" timeout "$DEPLOY_TIMEOUT" "$FLOOR" --proxy "$envfile" "v$v") ;;
                berth) m=$(run_timed "$dir/berth.log" berth_in "$project" deploy --skip-push --version "v$v") ;;
            esac
            read -r t local_cpu machine_cpu <<<"$m"
            proxied=1
            [[ $tool != floor ]] || proxied=0
            check_version "$envfile" "v$v" "$proxied"
            # The floor leaves its old containers and images behind; berth's own prune (retain 5 stopped
            # containers, remove unused images) tidies them up, untimed, so that every berth deploy finds the
            # state a berth-only sequence leaves and prunes one container and one image per host, not three.
            [[ $tool == berth ]] || berth_in "$project" prune all >>"$dir/tidy.log" 2>&1 ||
                die "berth prune all (tidying after the floor) failed (see $dir/tidy.log)"
            line+=" $tool ${t}s"
            [[ $round -le $WARMUP ]] ||
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$round" "$tool" "v$v" "$t" "$local_cpu" "$machine_cpu" \
                    "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/samples.tsv"
        done
        say "$line"
    done

    v=$((v + 1))
    (cd "$project" && TIMELINE_OUT=$OUT/berth-profile-$n.tsv "$SCRIPT_DIR/timeline.sh" -- env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$project/home" \
        timeout "$DEPLOY_TIMEOUT" "$BERTH" deploy --skip-push --version "v$v" -v) >"$OUT/berth-profile-$n.txt" 2>&1 ||
        die "the profile deploy failed: see $OUT/berth-profile-$n.tsv and .txt"
    check_version "$envfile" "v$v" 1
    say "untimed profile deploy (-v): $(tail -n 1 "$OUT/berth-profile-$n.txt") (see $OUT/berth-profile-$n.txt)"
    cp "$dir/bench.env" "$OUT/bench-$n.env"

    down_current
done

# The table: medians per size (CPU: seconds of CPU time per deploy, medians too).
col() { awk -F'\t' -v n="$1" -v tool="$2" -v c="$3" '$1 == n && $3 == tool { print $c }' "$OUT/samples.tsv" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
    echo "| hosts | floor (s) | floor+proxy (s) | berth (s) | berth / floor | berth / floor+proxy | machine CPU floor / floor+proxy / berth (s) | berth process CPU (s) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for n in "${SIZES[@]}"; do
        f=$(col "$n" floor 5) fp=$(col "$n" floor+proxy 5) b=$(col "$n" berth 5)
        echo "| $n | $f | $fp | $b | $(ratio "$b" "$f") | $(ratio "$b" "$fp") |" \
            "$(col "$n" floor 7) / $(col "$n" floor+proxy 7) / $(col "$n" berth 7) | $(col "$n" berth 6) |"
    done
} >"$OUT/table.md"
echo "medians of $REPS deploys each (after $WARMUP warm-up round(s)); samples: $OUT/samples.tsv"
cat "$OUT/table.md"
