#!/usr/bin/env bash
# berth's test bench: N real hosts and a real registry on one machine (ARCHITECTURE.md says how the tests use it).
#
#   bench.sh up NAME N_HOSTS     stand up bench NAME (first removing any leftover NAME); prints its description
#   bench.sh down NAME           remove everything bench NAME made (idempotent; works after a half-failed up)
#   bench.sh env NAME            print the description of a running bench again
#   bench.sh status [NAME]       list benches, and whether their processes are alive
#   bench.sh ssh NAME I [CMD…]   ssh to host I (1-based) as the deploy user
#   bench.sh push-app NAME VERSION [BINARY]
#                                build the test app image (tests/app) FROM scratch on the first host's engine,
#                                tag it REGISTRY/berth-test-app:VERSION, push it, remove it from that host;
#                                prints the ref.
#                                BINARY: the static test-app binary (built with cargo when not given)
#                                BENCH_APP_BUILD_ARGS="SERVICE=app UP_FAIL_HOST=10.213.1.12": more --build-args
#   bench.sh build-app           build the static test-app binary; prints its path
#   bench.sh down-all            down every bench this machine has (state dirs and orphaned namespaces)
#   bench.sh reap                down every bench whose owner process is gone (see BENCH_ATTACH)
#
# NAME: 1 to 8 characters [a-z0-9] (network interface names are limited to 15).
#
# A host is a network namespace (no default route: nothing leaves the machine) on the bench's own bridge, with
# its own mount and UTS namespace (its own /home/<user>, /tmp and hostname), its own sshd, and its own dockerd
# (own data root, exec root, socket, containerd, engine ID). The registry is docker-registry (htpasswd, bcrypt,
# plain HTTP) in a namespace of its own; every dockerd trusts it with --insecure-registry.
#
# The description `up` and `env` print is KEY=VALUE lines (no quoting needed: values have no spaces):
#   BENCH_NAME, BENCH_STATE_DIR, BENCH_DATA_DIR, BENCH_SUBNET, BENCH_GATEWAY, BENCH_CGROUP (v1|v2),
#   BENCH_SSH_USER, BENCH_SSH_KEY, BENCH_KNOWN_HOSTS,
#   BENCH_REGISTRY (ip:port), BENCH_REGISTRY_USER, BENCH_REGISTRY_PASSWORD_FILE,
#   BENCH_HOSTS (count), and for I in 1..N: BENCH_HOST_<I>_IP, _HOSTNAME, _NETNS, _DOCKER_HOST (unix://…),
#   _HOME (that host's home of the deploy user, as seen from the machine), _SSHD_PID, _DOCKERD_PID
#
# Environment: BENCH_SSH_USER (default deploy), BENCH_TIMEOUT (seconds per readiness wait, default 120),
# BENCH_KEEP_ON_FAILURE=1 (leave a failed `up` in place for inspection), BENCH_SUBNET_BASE (default 10.213:
# benches get 10.213.K.0/24), BENCH_VERBOSE=1 (say how long `up` took), BENCH_ATTACH=1 (`up` prints the
# description, closes its output, and stays the parent of the bench's processes until `down`: no zombies; the
# calling process is recorded as the bench's owner, for `reap`),
# BENCH_INJECT_FAILURE=network|ready (make `up` fail after the network is set up, or once all daemons run: for
# the bench's own tests of clean-up).
set -euo pipefail
umask 022 # sshd (StrictModes) and the deploy user must be able to read what the bench writes

readonly STATE_ROOT=/run/berth-bench
readonly DATA_ROOT=/var/lib/berth-bench
readonly SSH_USER=${BENCH_SSH_USER:-deploy}
readonly TIMEOUT=${BENCH_TIMEOUT:-120}
readonly SUBNET_BASE=${BENCH_SUBNET_BASE:-10.213}
readonly REGISTRY_USER=berth
readonly REGISTRY_PORT=5000
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH=$SYS_PATH:$PATH

die() {
    echo "bench: $*" >&2
    exit 1
}
log() {
    [[ ${BENCH_VERBOSE:-0} == 1 ]] && echo "bench: $*" >&2
    return 0
}

check_name() {
    [[ ${1:-} =~ ^[a-z0-9]{1,8}$ ]] || die "bench name must be 1-8 characters [a-z0-9], got '${1:-}'"
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, dockerd, sshd); try: sudo $0 $*"
}

# Runs "$@" with the machine-wide bench lock held (user creation, namespace creation).
with_global_lock() {
    mkdir -p "$STATE_ROOT"
    (
        flock -w 60 8 || die "timed out waiting for the global bench lock $STATE_ROOT/.lock"
        "$@"
    ) 8>"$STATE_ROOT/.lock"
}

# Time in microseconds, without forking (bash 5's EPOCHREALTIME).
now() { echo "${EPOCHREALTIME/./}"; }
# deadline_passed START [SECONDS]: true once SECONDS (default TIMEOUT) have passed since START (from `now`)
deadline_passed() { ((${EPOCHREALTIME/./} - $1 > ${2:-$TIMEOUT} * 1000000)); }
elapsed() { awk -v s="$1" -v n="${EPOCHREALTIME/./}" 'BEGIN { printf "%.2f", (n - s) / 1e6 }'; }

# A process is alive if it exists and is not a zombie (no fork: `down` asks this of many processes).
alive() {
    local line
    [[ -n ${1:-} ]] || return 1
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    line=${line##*) }
    [[ -n $line && ${line%% *} != Z ]]
}

# cmdline_has PID TEXT: the process's command line contains TEXT
cmdline_has() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

tail_log() {
    [[ -s $1 ]] || return 0
    echo "---- last lines of $1:" >&2
    tail -n 20 "$1" >&2
}

cgroup_version() {
    case $(stat -fc %T /sys/fs/cgroup 2>/dev/null) in
        cgroup2fs) echo v2 ;;
        tmpfs) echo v1 ;;
        *) echo none ;;
    esac
}

# dockerd needs cgroups: v1 with at least the devices, memory, cpu and pids controllers mounted, or v2 with
# its controllers delegated from the root. Prints v1 or v2.
ensure_cgroups() {
    local version ctrl
    version=$(cgroup_version)
    if [[ $version == none ]]; then
        # Nothing mounted (a bare machine without systemd): mount v1 hierarchies the way cgroupfs-mount does.
        mount -t tmpfs -o uid=0,gid=0,mode=0755 cgroup /sys/fs/cgroup || die "cannot mount /sys/fs/cgroup"
        # shellcheck disable=SC2013 # controller names are single words
        for ctrl in $(awk '!/^#/ { if ($4 == 1) print $1 }' /proc/cgroups); do
            mkdir -p "/sys/fs/cgroup/$ctrl"
            mountpoint -q "/sys/fs/cgroup/$ctrl" || mount -n -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/$ctrl" ||
                die "cannot mount the $ctrl cgroup controller"
        done
        version=v1
    fi
    if [[ $version == v1 ]]; then
        for ctrl in devices memory cpu pids; do
            awk -v c="$ctrl" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) f = 1 }
                END { exit !f }' /proc/mounts ||
                die "cgroup v1 controller '$ctrl' is not mounted under /sys/fs/cgroup (dockerd needs it)"
        done
    else
        # v2: delegate the controllers dockerd uses to child cgroups (only possible from a cgroup without
        # processes of its own, which the real root cgroup is exempt from).
        for ctrl in cpuset cpu io memory pids; do
            grep -qw "$ctrl" /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null && continue
            grep -qw "$ctrl" /sys/fs/cgroup/cgroup.controllers || continue
            echo "+$ctrl" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
                die "cgroup v2: cannot enable the '$ctrl' controller in /sys/fs/cgroup/cgroup.subtree_control"
        done
    fi
    echo "$version"
}

ensure_tools() {
    local tool missing=()
    for tool in ip iptables nsenter unshare setsid flock tini /usr/sbin/sshd ssh ssh-keygen /usr/sbin/dockerd \
        docker docker-registry htpasswd curl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing: ${missing[*]} (run tests/bench/install-deps.sh)"
}

# The deploy user: unprivileged, /bin/sh, in the docker group, no password, key auth only (keys are per bench,
# in each sshd's AuthorizedKeysFile). Shared by all benches; its home directory is per host (bind-mounted).
ensure_user() {
    getent group docker >/dev/null || groupadd --system docker
    if ! getent passwd "$SSH_USER" >/dev/null; then
        useradd --no-create-home --home-dir "/home/$SSH_USER" --shell /bin/sh --groups docker "$SSH_USER"
    fi
    # useradd leaves the account locked ('!'), which sshd without PAM refuses even for key auth.
    [[ $(getent shadow "$SSH_USER" | cut -d: -f2) == '*' ]] || usermod --password '*' "$SSH_USER"
    [[ $(getent passwd "$SSH_USER" | cut -d: -f7) == /bin/sh ]] || usermod --shell /bin/sh "$SSH_USER"
    id -nG "$SSH_USER" | grep -qw docker || usermod -aG docker "$SSH_USER"
    mkdir -p "/home/$SSH_USER"
    # sshd privilege separation directory; /run/containerd exists so each host can hide it (see start_sshd).
    mkdir -p /run/sshd /run/containerd
    chmod 755 /run/sshd
}

# Picks a free /24 for the bench: K such that SUBNET_BASE.K.0/24 is neither taken by another bench nor routed.
allocate_subnet() {
    local name=$1 k
    mkdir -p "$STATE_ROOT/.subnets"
    for k in $(seq 1 254); do
        [[ -e $STATE_ROOT/.subnets/$k ]] && continue
        ip -4 route show | grep -q "^$SUBNET_BASE\.$k\." && continue
        if (set -o noclobber && echo "$name" >"$STATE_ROOT/.subnets/$k") 2>/dev/null; then
            echo "$k"
            return 0
        fi
    done
    die "no free subnet under $SUBNET_BASE.0.0/16 (too many benches? try: $0 down-all)"
}

release_subnets() {
    local name=$1 f
    for f in "$STATE_ROOT"/.subnets/*; do
        [[ -f $f && $(cat "$f" 2>/dev/null) == "$name" ]] && rm -f "$f"
    done
    return 0
}

# make_netns NS VETH IP BRIDGE
make_netns() {
    local ns=$1 veth=$2 addr=$3 bridge=$4
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$bridge" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
}

setup_network() {
    local name=$1 n=$2 k=$3 i
    local bridge=bb-$name prefix=$SUBNET_BASE.$k
    ip link add "$bridge" type bridge
    ip addr add "$prefix.1/24" dev "$bridge"
    ip link set "$bridge" up
    make_netns "berth-$name-reg" "bv-$name-r" "$prefix.5" "$bridge"
    for i in $(seq 1 "$n"); do
        make_netns "berth-$name-h$i" "bv-$name-$i" "$prefix.$((10 + i))" "$bridge"
    done
}

record_pid() { echo "$2 $1" >>"$STATE/pids"; }

# prepare_host NAME I IP: the host's directories, host key, sshd and dockerd configuration.
prepare_host() {
    local name=$1 i=$2 addr=$3
    local hs=$STATE/h$i hd=$DATA/h$i
    mkdir -p "$hs" "$hd/home" "$hd/tmp" "$hd/docker"
    chmod 1777 "$hd/tmp"
    chown "$SSH_USER:" "$hd/home"
    chmod 755 "$hd/home"
    ssh-keygen -q -t ed25519 -N '' -C "berth-bench-$name-h$i" -f "$hs/ssh_host_ed25519_key"
    echo "$addr $(cut -d' ' -f1,2 "$hs/ssh_host_ed25519_key.pub")" >>"$STATE/known_hosts"
    cat >"$hs/sshd_config" <<SSHD
ListenAddress $addr
Port 22
HostKey $hs/ssh_host_ed25519_key
PidFile $hs/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
AllowUsers $SSH_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
MaxStartups 200:30:400
MaxSessions 100
Subsystem sftp internal-sftp
SetEnv DOCKER_HOST=unix://$hs/docker.sock
SSHD
    /usr/sbin/sshd -t -f "$hs/sshd_config" || die "sshd rejects $hs/sshd_config"
    # Its own daemon.json (not /etc/docker's), and its own identity key: `docker info` shows a distinct ID.
    echo "{ \"deprecated-key-path\": \"$hs/key.json\" }" >"$hs/daemon.json"
}

# start_sshd NAME I: (keeper) starts the host's sshd in the host's namespaces.
start_sshd() {
    local name=$1 i=$2
    local hs=$STATE/h$i hd=$DATA/h$i
    # The host's own mount namespace (slave: unmounts in the machine's namespace, e.g. `ip netns del`, still
    # reach it) gives it its own home, /tmp and no view of a system containerd; its UTS namespace its hostname.
    # setsid/nsenter/unshare/env/sh all exec, so $! is sshd's PID.
    # shellcheck disable=SC2016 # $1.. expand in the inner shell
    setsid nsenter --net="/run/netns/berth-$name-h$i" \
        unshare --mount --uts --propagation slave \
        env -i PATH="$SYS_PATH" /bin/sh -c '
            set -e
            hostname "$1"
            mount --bind "$2" "$3"
            mount --bind "$4" /tmp
            mount -t tmpfs -o size=1m,mode=755 berth-bench /run/containerd
            exec /usr/sbin/sshd -D -f "$5" -E "$6"' \
        sh "$name-h$i" "$hd/home" "/home/$SSH_USER" "$hd/tmp" "$hs/sshd_config" "$hs/sshd.log" \
        </dev/null >>"$hs/boot.log" 2>&1 &
    echo $! >"$hs/sshd.pid.started"
    record_pid $! "sshd-h$i"
}

# wait_port PID IP PORT LOG WHAT: waits for a TCP port to accept, while PID stays alive.
wait_port() {
    local pid=$1 addr=$2 port=$3 logfile=$4 what=$5 start
    start=$(now)
    until timeout 1 bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; do
        alive "$pid" || {
            tail_log "$logfile"
            tail_log "${logfile%/*}/boot.log"
            die "$what exited during start-up (log: $logfile)"
        }
        deadline_passed "$start" && {
            tail_log "$logfile"
            die "$what not listening on $addr:$port after ${TIMEOUT}s (log: $logfile)"
        }
        sleep 0.02
    done
}

# start_dockerd NAME I REGISTRY: (keeper) starts the host's dockerd, once its sshd runs.
start_dockerd() {
    local name=$1 i=$2 registry=$3
    local hs=$STATE/h$i hd=$DATA/h$i sshd_pid
    sshd_pid=$(cat "$hs/sshd.pid.started")
    # Join the host's namespaces through its sshd (same mount, UTS and network namespace): not `ip netns exec`,
    # which remounts /sys and hides the cgroup mounts from dockerd.
    setsid nsenter --target "$sshd_pid" --mount --uts --net \
        env -i PATH="$SYS_PATH" HOME=/root \
        /usr/sbin/dockerd \
        --config-file "$hs/daemon.json" \
        --data-root "$hd/docker" \
        --exec-root "$hs/exec" \
        --pidfile "$hs/docker.pid" \
        -H "unix://$hs/docker.sock" \
        --group docker \
        --cgroup-parent "/berth-$name-h$i" \
        --containerd-namespace "berth-$name-h$i" \
        --containerd-plugins-namespace "berth-$name-h$i-plugins" \
        --insecure-registry "$registry" \
        </dev/null >>"$hs/dockerd.log" 2>&1 &
    echo $! >"$hs/dockerd.pid.started"
    record_pid $! "dockerd-h$i"
}

wait_dockerd() {
    local i=$1 hs=$STATE/h$1 pid start
    pid=$(cat "$hs/dockerd.pid.started")
    start=$(now)
    until [[ -S $hs/docker.sock && $(curl -s -m 2 --unix-socket "$hs/docker.sock" http://docker/_ping) == OK ]]; do
        alive "$pid" || {
            tail_log "$hs/dockerd.log"
            die "dockerd of host $i exited during start-up (log: $hs/dockerd.log)"
        }
        deadline_passed "$start" && {
            tail_log "$hs/dockerd.log"
            die "dockerd of host $i not answering on $hs/docker.sock after ${TIMEOUT}s"
        }
        sleep 0.02
    done
}

prepare_registry() {
    local name=$1 addr=$2
    local rs=$STATE/registry rd=$DATA/registry
    mkdir -p "$rs" "$rd"
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$STATE/registry-password")
    # -i: the password comes from stdin, never argv.
    htpasswd -Bin "$REGISTRY_USER" <"$STATE/registry-password" >"$rs/htpasswd" 2>/dev/null ||
        die "htpasswd failed"
    cat >"$rs/config.yml" <<REGISTRY
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $rd
  delete:
    enabled: true
http:
  addr: $addr:$REGISTRY_PORT
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: berth-bench-$name
    path: $rs/htpasswd
REGISTRY
}

start_registry() {
    local name=$1 rs=$STATE/registry
    setsid nsenter --net="/run/netns/berth-$name-reg" env -i PATH="$SYS_PATH" \
        docker-registry serve "$rs/config.yml" </dev/null >>"$rs/registry.log" 2>&1 &
    echo $! >"$rs/registry.pid"
    record_pid $! registry
}

wait_registry() {
    local addr=$1 rs=$STATE/registry pid start code
    pid=$(cat "$rs/registry.pid")
    start=$(now)
    while :; do
        code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$addr:$REGISTRY_PORT/v2/" || true)
        [[ $code == 401 ]] && return 0
        alive "$pid" || {
            tail_log "$rs/registry.log"
            die "the registry exited during start-up (log: $rs/registry.log)"
        }
        deadline_passed "$start" && {
            tail_log "$rs/registry.log"
            die "the registry not answering on $addr:$REGISTRY_PORT after ${TIMEOUT}s (last HTTP status $code)"
        }
        sleep 0.02
    done
}

# The keeper: parent of every daemon of the bench, run under `tini -s` (a child subreaper) so that processes
# orphaned on the hosts (containerd shims, containerd when dockerd dies, ...) are reaped instead of piling up
# as zombies under PID 1 (which, on this kind of machine, does not reap them). Starts the daemons, waits until
# all answer, writes $STATE/ready, then waits for its children, which `down` kills; then it exits, tini too.
cmd_keeper() {
    local name=$1 n=$2 prefix i
    STATE=$STATE_ROOT/$name
    DATA=$DATA_ROOT/$name
    prefix=$SUBNET_BASE.$(cat "$STATE/subnet-index")
    trap '' INT HUP
    start_registry "$name"
    for i in $(seq 1 "$n"); do
        start_sshd "$name" "$i"
    done
    for i in $(seq 1 "$n"); do
        wait_port "$(cat "$STATE/h$i/sshd.pid.started")" "$prefix.$((10 + i))" 22 "$STATE/h$i/sshd.log" \
            "sshd of host $i"
        start_dockerd "$name" "$i" "$prefix.5:$REGISTRY_PORT"
    done
    wait_registry "$prefix.5"
    for i in $(seq 1 "$n"); do
        wait_dockerd "$i"
    done
    [[ ${BENCH_INJECT_FAILURE:-} != ready ]] || die "failure injected (BENCH_INJECT_FAILURE=ready)"
    touch "$STATE/ready"
    echo "bench: $name ready" >&2
    wait
    echo "bench: $name: all daemons gone; keeper exits" >&2
}

describe() {
    local name=$1 n=$2 k=$3 cgroup=$4 i prefix=$SUBNET_BASE.$3
    echo "BENCH_NAME=$name"
    echo "BENCH_STATE_DIR=$STATE"
    echo "BENCH_DATA_DIR=$DATA"
    echo "BENCH_SUBNET=$prefix.0/24"
    echo "BENCH_GATEWAY=$prefix.1"
    echo "BENCH_CGROUP=$cgroup"
    echo "BENCH_SSH_USER=$SSH_USER"
    echo "BENCH_SSH_KEY=$STATE/id_ed25519"
    echo "BENCH_KNOWN_HOSTS=$STATE/known_hosts"
    echo "BENCH_REGISTRY=$prefix.5:$REGISTRY_PORT"
    echo "BENCH_REGISTRY_USER=$REGISTRY_USER"
    echo "BENCH_REGISTRY_PASSWORD_FILE=$STATE/registry-password"
    echo "BENCH_HOSTS=$n"
    for i in $(seq 1 "$n"); do
        echo "BENCH_HOST_${i}_IP=$prefix.$((10 + i))"
        echo "BENCH_HOST_${i}_HOSTNAME=$name-h$i"
        echo "BENCH_HOST_${i}_NETNS=berth-$name-h$i"
        echo "BENCH_HOST_${i}_DOCKER_HOST=unix://$STATE/h$i/docker.sock"
        echo "BENCH_HOST_${i}_HOME=$DATA/h$i/home"
        echo "BENCH_HOST_${i}_SSHD_PID=$(cat "$STATE/h$i/sshd.pid.started")"
        echo "BENCH_HOST_${i}_DOCKERD_PID=$(cat "$STATE/h$i/dockerd.pid.started")"
    done
}

UP_OK=0
on_up_exit() {
    [[ $UP_OK == 1 ]] && return 0
    echo "bench: up $1 failed (exit $2)" >&2
    if [[ ${BENCH_KEEP_ON_FAILURE:-0} == 1 ]]; then
        echo "bench: left in place for inspection (BENCH_KEEP_ON_FAILURE=1); remove with: $0 down $1" >&2
    else
        cmd_down "$1" || true
        wait # reap the keeper, if it was started (down ended it)
    fi
}

cmd_up() {
    local name=${1:-} n=${2:-}
    check_name "$name"
    [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || die "N_HOSTS must be 1..200, got '$n'"
    need_root up
    ensure_tools
    local cgroup k prefix i t0 start keeper
    t0=$(now)
    cgroup=$(ensure_cgroups)

    cmd_down "$name" # leftovers of an earlier run with this name

    STATE=$STATE_ROOT/$name
    DATA=$DATA_ROOT/$name
    # shellcheck disable=SC2064
    trap "on_up_exit $name \$?" EXIT
    mkdir -p "$STATE" "$DATA"
    chmod 755 "$STATE_ROOT" "$STATE"
    : >"$STATE/pids"
    k=$(allocate_subnet "$name")
    prefix=$SUBNET_BASE.$k
    echo "$k" >"$STATE/subnet-index"
    echo "$n" >"$STATE/hosts"
    # Attached: the process that asked for the bench owns it (`reap` downs benches whose owner is gone).
    [[ ${BENCH_ATTACH:-0} != 1 ]] || echo "$PPID" >"$STATE/owner"

    with_global_lock ensure_user
    with_global_lock setup_network "$name" "$n" "$k"
    # Bridged traffic goes through the machine's FORWARD chain (br_netfilter), whose policy any dockerd in the
    # machine's namespace sets to DROP: let the bench bridge forward to itself.
    iptables -w 30 -I FORWARD 1 -i "bb-$name" -o "bb-$name" -m comment --comment "berth-bench:$name" -j ACCEPT
    [[ ${BENCH_INJECT_FAILURE:-} != network ]] || die "failure injected (BENCH_INJECT_FAILURE=network)"

    ssh-keygen -q -t ed25519 -N '' -C "berth-bench-$name-deploy" -f "$STATE/id_ed25519"
    cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
    chmod 644 "$STATE/authorized_keys"
    : >"$STATE/known_hosts"
    prepare_registry "$name" "$prefix.5"
    for i in $(seq 1 "$n"); do
        prepare_host "$name" "$i" "$prefix.$((10 + i))"
    done

    # setsid: a terminal's ^C does not reach the bench. With BENCH_ATTACH=1 this process stays the keeper's
    # parent until `down`, so that not even the keeper is left a zombie.
    setsid tini -s -- bash "$SCRIPT_DIR/bench.sh" _keeper "$name" "$n" </dev/null >>"$STATE/keeper.log" 2>&1 &
    keeper=$!
    echo "$keeper" >"$STATE/keeper.pid"
    record_pid "$keeper" keeper
    start=$(now)
    until [[ -e $STATE/ready ]]; do
        alive "$keeper" || {
            cat "$STATE/keeper.log" >&2
            die "bench $name did not come up (log above: $STATE/keeper.log)"
        }
        deadline_passed "$start" $((2 * TIMEOUT)) &&
            die "bench $name not ready after $((2 * TIMEOUT))s (log: $STATE/keeper.log)"
        sleep 0.02
    done

    describe "$name" "$n" "$k" "$cgroup" >"$STATE/bench.env"
    UP_OK=1
    log "up $name ($n hosts) in $(elapsed "$t0") s"
    cat "$STATE/bench.env"
    if [[ ${BENCH_ATTACH:-0} == 1 ]]; then
        exec >/dev/null 2>&1 # the caller reads the description up to the end of the output
        wait
    fi
}

# Processes in any of the named network namespaces NS... (one pass over /proc).
pids_in_netns() {
    local ns inodes=()
    for ns in "$@"; do
        [[ -e /run/netns/$ns ]] && inodes+=("$(stat -L -c %i "/run/netns/$ns")")
    done
    [[ ${#inodes[@]} -gt 0 ]] || return 0
    stat -L -c '%n %i' /proc/[0-9]*/ns/net 2>/dev/null |
        awk -v inodes="${inodes[*]}" 'BEGIN { n = split(inodes, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
            ($2 in want) { split($1, p, "/"); print p[3] }'
    return 0
}

bench_cgroups() {
    [[ -d /sys/fs/cgroup ]] || return 0
    find /sys/fs/cgroup -maxdepth 2 -type d -name "berth-$1-h*" 2>/dev/null || true
}

# kill_and_wait WHAT PID...: SIGKILL, then wait until each is gone (or a zombie).
kill_and_wait() {
    local what=$1 p start
    shift
    [[ $# -gt 0 ]] || return 0
    kill -KILL "$@" 2>/dev/null || true
    start=$(now)
    for p in "$@"; do
        while alive "$p"; do
            deadline_passed "$start" 30 && die "$what: process $p survives SIGKILL"
            sleep 0.02
        done
    done
}

cmd_down() {
    local name=${1:-}
    check_name "$name"
    need_root down
    local state=$STATE_ROOT/$name data=$DATA_ROOT/$name
    local ns pids=() p what cg start f mnt namespaces keeper=

    # 1. Every process of the bench: those in its namespaces (sshd and sessions, dockerd, containerd, shims,
    # host-network containers, the registry), in its cgroups (containers), and the PIDs `up` recorded (if they
    # are still the bench's: the command line names the bench's state directory).
    namespaces=$(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E "^berth-$name-(h[0-9]+|reg)$" || true)
    # shellcheck disable=SC2086
    mapfile -t pids < <(pids_in_netns $namespaces)
    for cg in $(bench_cgroups "$name"); do
        mapfile -t -O "${#pids[@]}" pids < <(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
    done
    if [[ -f $state/pids ]]; then
        while read -r what p; do
            if [[ $what == keeper ]]; then
                cmdline_has "$p" "_keeper $name " && keeper=$p
            elif cmdline_has "$p" "berth-bench/$name/"; then
                pids+=("$p")
            fi
        done <"$state/pids"
    fi
    kill_and_wait "down $name" "${pids[@]}"
    # The keeper (and tini above it) exit once their children are gone; they reap what the kill orphaned.
    if [[ -n $keeper ]]; then
        start=$(now)
        while alive "$keeper" && ! deadline_passed "$start" 10; do
            sleep 0.02
        done
        kill_and_wait "down $name" "$keeper"
    fi

    # 2. Mounts the machine's namespace may hold under the bench's directories (normally none: they live and die
    # with the hosts' own mount namespaces).
    # shellcheck disable=SC2013 # mount points under the bench's directories have no spaces
    for mnt in $(awk -v a="$state/" -v b="$data/" 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' \
        /proc/self/mountinfo | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done

    # 3. Network: namespaces (their veth ends go with them), the bridge, the FORWARD rule.
    for ns in $namespaces; do
        ip netns del "$ns" 2>/dev/null || true
    done
    for f in $(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1 | grep -E "^bv-$name-" || true); do
        ip link del "$f" 2>/dev/null || true
    done
    ip link del "bb-$name" 2>/dev/null || true
    if command -v iptables >/dev/null; then
        while iptables -w 30 -D FORWARD -i "bb-$name" -o "bb-$name" -m comment --comment "berth-bench:$name" \
            -j ACCEPT 2>/dev/null; do :; done
    fi

    # 4. Cgroups dockerd made under --cgroup-parent (children first).
    for cg in $(bench_cgroups "$name"); do
        find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done

    # 5. Files: state (keys, sockets, logs), data (docker data roots, registry storage, homes), the subnet.
    rm -rf "$state" "$data" 2>/dev/null || rm -rf "$state" "$data" || true
    release_subnets "$name"

    # Anything left is a bug worth failing on.
    [[ ! -e $state && ! -e $data ]] || die "down $name: could not remove $state or $data"
    ! ip link show "bb-$name" >/dev/null 2>&1 || die "down $name: bridge bb-$name still exists"
    ! ip netns list 2>/dev/null | grep -qE "^berth-$name-" || die "down $name: network namespaces remain"
    [[ -z $(bench_cgroups "$name") ]] || die "down $name: cgroups remain: $(bench_cgroups "$name" | head -3)"
    return 0
}

cmd_env() {
    local name=${1:-}
    check_name "$name"
    [[ -f $STATE_ROOT/$name/bench.env ]] || die "no bench named $name is up"
    cat "$STATE_ROOT/$name/bench.env"
}

cmd_status() {
    local filter=${1:-} d name n pid what alive_count dead
    for d in "$STATE_ROOT"/*/; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        [[ -n $filter && $filter != "$name" ]] && continue
        n=$(cat "$d/hosts" 2>/dev/null || echo '?')
        alive_count=0
        dead=()
        if [[ -f $d/pids ]]; then
            while read -r what pid; do
                if alive "$pid"; then alive_count=$((alive_count + 1)); else dead+=("$what"); fi
            done <"$d/pids"
        fi
        if [[ -f $d/bench.env ]]; then
            echo "$name: $n hosts, $alive_count processes alive${dead:+, dead: ${dead[*]}}"
        else
            echo "$name: incomplete (up failed or in progress)${dead:+, dead: ${dead[*]}}"
        fi
    done
    for name in $(ip netns list 2>/dev/null | awk '{ print $1 }' | sed -nE 's/^berth-([a-z0-9]+)-(h[0-9]+|reg)$/\1/p' |
        sort -u); do
        [[ -n $filter && $filter != "$name" ]] && continue
        [[ -d $STATE_ROOT/$name ]] || echo "$name: orphaned namespaces (no state dir); remove with: $0 down $name"
    done
    return 0
}

cmd_ssh() {
    local name=${1:-} i=${2:-} ip
    check_name "$name"
    shift 2 || die "usage: $0 ssh NAME I [CMD...]"
    local env=$STATE_ROOT/$name/bench.env
    [[ -f $env ]] || die "no bench named $name is up"
    ip=$(sed -n "s/^BENCH_HOST_${i}_IP=//p" "$env")
    [[ -n $ip ]] || die "bench $name has no host $i"
    exec ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$STATE_ROOT/$name/known_hosts" \
        -i "$STATE_ROOT/$name/id_ed25519" -o IdentitiesOnly=yes "$SSH_USER@$ip" "$@"
}

cmd_build_app() {
    local manifest=$SCRIPT_DIR/../app/Cargo.toml target_dir
    target_dir=$(cd "$SCRIPT_DIR/../.." && pwd)/target/testapp
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --manifest-path "$manifest" \
        --target-dir "$target_dir" --target x86_64-unknown-linux-gnu >&2 || die "building the test app failed"
    echo "$target_dir/x86_64-unknown-linux-gnu/release/berth-test-app"
}

cmd_push_app() {
    local name=${1:-} version=${2:-} binary=${3:-}
    check_name "$name"
    [[ $version =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "VERSION must be a valid image tag, got '$version'"
    local state=$STATE_ROOT/$name env registry image ctx out
    env=$state/bench.env
    [[ -f $env ]] || die "no bench named $name is up"
    registry=$(sed -n 's/^BENCH_REGISTRY=//p' "$env")
    [[ -n $binary ]] || binary=$(cmd_build_app)
    [[ -x $binary ]] || die "test app binary $binary not found"
    image=$registry/berth-test-app:$version
    # The first host whose engine answers builds (FROM scratch: nothing to pull); root's docker config is untouched.
    local i builder=
    for ((i = 1; i <= $(cat "$state/hosts"); i++)); do
        if [[ $(curl -s -m 2 --unix-socket "$state/h$i/docker.sock" http://docker/_ping) == OK ]]; then
            builder=$i
            break
        fi
    done
    [[ -n $builder ]] || die "no host of bench $name has a working engine to build on"
    export DOCKER_HOST=unix://$state/h$builder/docker.sock DOCKER_CONFIG=$state/docker-config DOCKER_BUILDKIT=0
    local had_image=0
    docker image inspect "$image" >/dev/null 2>&1 && had_image=1
    ctx=$(mktemp -d "$state/build.XXXXXX")
    cp "$SCRIPT_DIR/../app/Dockerfile" "$ctx/Dockerfile"
    cp "$binary" "$ctx/berth-test-app"
    local build_args=(--build-arg "APP_VERSION=$version") arg
    for arg in ${BENCH_APP_BUILD_ARGS:-}; do build_args+=(--build-arg "$arg"); done
    if ! out=$(docker build -q "${build_args[@]}" -t "$image" "$ctx" 2>&1); then
        rm -rf "$ctx"
        die "docker build of $image failed: $out"
    fi
    rm -rf "$ctx"
    out=$(docker login "$registry" -u "$REGISTRY_USER" --password-stdin <"$state/registry-password" 2>&1) ||
        die "docker login $registry failed: $out"
    out=$(docker push "$image" 2>&1) || die "docker push $image failed: $out"
    # The builder must pull it like every other host (unless it had pulled it before).
    [[ $had_image == 1 ]] || docker rmi "$image" >/dev/null 2>&1 || true
    echo "$image"
}

# Downs every bench whose owner (the process that stood it up attached, e.g. a test process) is gone: what a
# killed test run left behind.
cmd_reap() {
    local d owner
    for d in "$STATE_ROOT"/*/; do
        [[ -f $d/owner ]] || continue
        owner=$(cat "$d/owner" 2>/dev/null || true)
        [[ -n $owner && -d /proc/$owner ]] && continue
        echo "bench: reaping $(basename "$d") (its owner, process ${owner:-?}, is gone)" >&2
        cmd_down "$(basename "$d")"
    done
    return 0
}

cmd_down_all() {
    local names name
    names=$(
        {
            for d in "$STATE_ROOT"/*/; do [[ -d $d ]] && basename "$d"; done
            ip netns list 2>/dev/null | awk '{ print $1 }' | sed -nE 's/^berth-([a-z0-9]+)-(h[0-9]+|reg)$/\1/p'
            ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed -nE 's/^bb-([a-z0-9]+)(@.*)?$/\1/p'
        } | sort -u
    )
    for name in $names; do
        [[ $name =~ ^[a-z0-9]{1,8}$ ]] && cmd_down "$name"
    done
    return 0
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        env) cmd_env "$@" ;;
        status) cmd_status "$@" ;;
        ssh) cmd_ssh "$@" ;;
        push-app) need_root push-app && cmd_push_app "$@" ;;
        build-app) cmd_build_app ;;
        down-all) need_root down-all && cmd_down_all ;;
        reap) need_root reap && cmd_reap ;;
        _keeper) cmd_keeper "$@" ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2 && exit 2 ;;
    esac
}

main "$@"
