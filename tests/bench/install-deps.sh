#!/usr/bin/env bash
# Installs the Debian packages the test bench needs (see tests/bench/bench.sh), only those missing.
#
# Idempotent and quiet when everything is already there; runs `apt-get update` only when something is
# missing. Never starts the system's sshd or dockerd: the bench runs its own, one per test host.
# Safe to call from several test processes at once (serialized by a lock file).
set -euo pipefail

# package -> why
PACKAGES=(
    openssh-server # one sshd per bench host
    openssh-client # ssh, ssh-keygen, ssh-keyscan
    docker.io      # one dockerd per bench host (+ containerd, runc)
    tini           # docker-init, for `docker run --init`
    docker-registry # the bench's registry (CNCF distribution)
    apache2-utils  # htpasswd (bcrypt) for the registry
    iproute2       # ip netns / veth / bridge
    iptables       # the FORWARD rule for the bench bridge (and dockerd's own rules)
    util-linux     # nsenter, unshare
    procps         # ps, for diagnostics
    curl           # readiness probes, test requests
    nginx          # the proxy benchmark's comparison proxy and its 64-byte backend (bench/proxy)
    wrk            # the proxy benchmark's load tool
    pebble         # a local ACME server for the proxy's certificate tests
    postgresql     # the daemon's shared store: the tests start a throwaway cluster of their own
)

die() {
    echo "install-deps: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (the bench creates network namespaces and starts dockerd)"
command -v dpkg-query >/dev/null || die "not a Debian-like system (no dpkg-query); install by hand: ${PACKAGES[*]}"

missing() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || echo "$pkg"
    done
}

[[ -z $(missing) ]] && exit 0

mkdir -p /run/berth-bench
exec 9>/run/berth-bench/.install.lock
flock -w 900 9 || die "timed out waiting for another install-deps to finish"

# Someone else may have installed them while we waited for the lock.
mapfile -t todo < <(missing)
[[ ${#todo[@]} -eq 0 ]] && exit 0

# Keep package scripts from starting the system's sshd/dockerd/registry: the bench never uses them.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    if [[ $own_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! apt-get "${apt_opts[@]}" update >"$log" 2>&1; then
    cat "$log" >&2
    die "apt-get update failed (log above, also in $log)"
fi
if ! apt-get "${apt_opts[@]}" install --no-install-recommends "${todo[@]}" >>"$log" 2>&1; then
    cat "$log" >&2
    die "apt-get install ${todo[*]} failed (log above, also in $log)"
fi
rm -f "$log"

mapfile -t still < <(missing)
[[ ${#still[@]} -eq 0 ]] || die "still missing after install: ${still[*]}"
getent group docker >/dev/null || groupadd --system docker
exit 0
