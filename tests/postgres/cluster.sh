#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for one test run: `start` initializes one in a new temporary directory (as
# the `postgres` user: initdb refuses root), listening on 127.0.0.1 only with trust authentication, and
# prints its URL; `stop DIR` stops it and deletes the directory. Debian's `postgresql` package provides the
# binaries (tests/bench/install-deps.sh installs it); the system's own cluster is never touched.
#
#   url=$(tests/postgres/cluster.sh start)      # postgres://postgres@127.0.0.1:PORT/postgres, dir on stderr
#   tests/postgres/cluster.sh stop "$dir"
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $bin/initdb ]] || { echo "cluster.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

case ${1:-} in
start)
    dir=$(mktemp -d /tmp/berth-test-pg.XXXXXX)
    chown postgres: "$dir"
    as_postgres() { runuser -u postgres -- "$@"; }
    as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    # A free port, chosen by the kernel.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "$dir" >&2
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    dir=${2:?usage: cluster.sh stop DIR}
    [[ -d $dir/data ]] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: cluster.sh start | stop DIR" >&2
    exit 2
    ;;
esac
