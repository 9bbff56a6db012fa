#!/usr/bin/env bash
# The hand-written floor for the deploy benchmark (issue 3): the docker steps of a deploy, run by a plain script
# over OpenSSH, one ControlMaster per host, all hosts in parallel. See bench/deploy/run.sh and bench/RESULTS.md.
#
#   floor.sh [--proxy] BENCH_ENV_FILE VERSION
#
# BENCH_ENV_FILE: the description `tests/bench/bench.sh up` printed (BENCH_* KEY=VALUE lines).
# VERSION: the tag of BENCH_REGISTRY/berth-test-app to deploy (already pushed).
#
# Per host, over one fresh ControlMaster connection (opened by the first command, closed at the end):
#   1. docker login REGISTRY --password-stdin        (the password on stdin, never in argv)
#   2. docker pull IMAGE:VERSION
#   3. docker run -d … the new version               (the very flags berth's `docker run` uses: name, network
#                                                    `kamal`, labels, env file, restart policy, log options)
#   4. wait until it is healthy:
#        default  poll GET /up on the container's address from the host (curl every 50 ms, on the host itself:
#                 one SSH command for the whole wait)
#        --proxy  `docker exec kamal-proxy kamal-proxy deploy app-web --target=ID:80 …` with berth's flags: the
#                 proxy on the host health-checks the new container, switches to it and drains the old one
#                 (what berth does in this step)
#   5. stop the old container(s) of the role (every running app-web-* but the new one)
# The hosts run in parallel; the script fails if any host fails. Connection set-up is part of the timed work
# (berth connects from scratch too), with the key exchange berth's SSH client negotiates with these sshds
# (curve25519-sha256; OpenSSH's default sntrup761x25519 costs ~80 ms more per connection here).
#
# The containers it starts carry berth's names and labels (service=app, role=web), so berth deploys that follow
# find them, stop them and prune them like their own; the env file is the one `berth setup` wrote on each host.
set -euo pipefail

proxy=0
if [[ ${1:-} == --proxy ]]; then
    proxy=1
    shift
fi
[[ $# -eq 2 ]] || {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
envfile=$1 version=$2
[[ -r $envfile ]] || {
    echo "floor: cannot read $envfile" >&2
    exit 2
}

declare -A B
while IFS='=' read -r key value; do
    [[ $key == BENCH_* ]] && B[$key]=$value
done <"$envfile"
for key in BENCH_HOSTS BENCH_SSH_USER BENCH_SSH_KEY BENCH_KNOWN_HOSTS BENCH_REGISTRY BENCH_REGISTRY_USER \
    BENCH_REGISTRY_PASSWORD_FILE; do
    [[ -n ${B[$key]:-} ]] || {
        echo "floor: $envfile has no $key" >&2
        exit 2
    }
done

readonly SERVICE=app ROLE=web APP_PORT=80
readonly TIMEOUT=${FLOOR_TIMEOUT:-60} # seconds per host for the whole health wait
image=${B[BENCH_REGISTRY]}/berth-test-app:$version
name=$SERVICE-$ROLE-$version

# ControlPath is a unix socket path (<108 bytes): a short private directory, %C a hash of host, port and user.
cm_dir=$(mktemp -d /tmp/floor.XXXXXX)
ssh_opts=(
    -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=${B[BENCH_KNOWN_HOSTS]}"
    -o IdentitiesOnly=yes -i "${B[BENCH_SSH_KEY]}" -l "${B[BENCH_SSH_USER]}"
    -o KexAlgorithms=curve25519-sha256 -o ConnectTimeout=30
    -o ControlMaster=auto -o "ControlPath=$cm_dir/%C" -o ControlPersist=120
)

hosts=()
for ((i = 1; i <= B[BENCH_HOSTS]; i++)); do
    hosts+=("${B[BENCH_HOST_${i}_IP]}")
done

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local host
    for host in "${hosts[@]}"; do
        ssh "${ssh_opts[@]}" -O exit "$host" >/dev/null 2>&1 &
    done
    wait
    rm -rf "$cm_dir"
}
trap cleanup EXIT

deploy_host() {
    local host=$1 id
    local -a ssh_host=(ssh "${ssh_opts[@]}" "$host")

    "${ssh_host[@]}" "docker login ${B[BENCH_REGISTRY]} -u ${B[BENCH_REGISTRY_USER]} --password-stdin" \
        <"${B[BENCH_REGISTRY_PASSWORD_FILE]}" >/dev/null
    "${ssh_host[@]}" "docker pull -q $image" >/dev/null </dev/null
    # berth's `docker run` for the role (see `berth deploy -v`), with a random hostname suffix as berth's.
    id=$("${ssh_host[@]}" "docker run --detach --restart unless-stopped --name $name --network kamal \
        --hostname $host-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n') \
        --env KAMAL_CONTAINER_NAME=$name --env KAMAL_VERSION=$version --env KAMAL_HOST=$host \
        --env-file .kamal/apps/$SERVICE/env/roles/$ROLE.env --log-opt max-size=10m \
        --label service=$SERVICE --label role=$ROLE --label destination $image" </dev/null)
    id=${id:0:12}
    if [[ $proxy == 1 ]]; then
        "${ssh_host[@]}" "docker exec kamal-proxy kamal-proxy deploy $SERVICE-$ROLE --target=$id:$APP_PORT \
            --deploy-timeout=${TIMEOUT}s --drain-timeout=5s --health-check-interval=1s --health-check-timeout=2s \
            --health-check-path=/up --buffer-requests --buffer-responses" >/dev/null </dev/null
    else
        # shellcheck disable=SC2016 # expanded on the host
        "${ssh_host[@]}" 'ip=$(docker inspect -f "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}" '"$id"')
            end=$(($(date +%s) + '"$TIMEOUT"'))
            until curl -fsS -o /dev/null -m 2 "http://$ip:'"$APP_PORT"'/up" 2>/dev/null; do
                [ "$(date +%s)" -lt "$end" ] || { echo "'"$name"' not healthy after '"$TIMEOUT"'s" >&2; exit 1; }
                sleep 0.05
            done' </dev/null
    fi
    "${ssh_host[@]}" "docker ps --filter label=service=$SERVICE --filter label=role=$ROLE --format '{{.Names}}' |
        grep -vx '$name' | xargs -r docker stop" >/dev/null </dev/null
}

pids=()
for host in "${hosts[@]}"; do
    deploy_host "$host" &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || {
        echo "floor: deploy of $version failed on ${hosts[$i]}" >&2
        failed=1
    }
done
exit "$failed"
