#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests need, then runs them.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Real hosts for the end-to-end tests: sshd + dockerd per network namespace, a registry (see tests/bench/).
bash tests/bench/install-deps.sh
# Ruby: ERB tests compare berth's native evaluator with Ruby's own ERB, and exercise the ruby fallback; the Psych
# corpus test compares berth's reading of YAML scalars with Ruby's Psych.
if ! command -v ruby >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq ruby >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq ruby >/dev/null; }
fi
# Chromium and its WebDriver: the dashboard's browser test (tests/integration/dashboard/browser.rs).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi

# schemathesis (PyPI) fuzzes the daemon's API from its own OpenAPI spec (tests/integration/daemon.rs), from a
# virtual environment of the project's own (Debian's Python refuses system-wide pip installs).
venv=target/test-tools/venv
if [[ ! -x $venv/bin/schemathesis ]]; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq python3 python3-venv >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null; }
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi

# PostgreSQL (the daemon's shared store): a throwaway cluster for this run, stopped and deleted on exit even
# after a failure; every store test runs against it as well as SQLite.
pg_dir_file=$(mktemp)
BERTH_TEST_DATABASE_URL=$(bash tests/postgres/cluster.sh start 2>"$pg_dir_file")
pg_dir=$(tail -1 "$pg_dir_file")
rm -f "$pg_dir_file"
trap 'bash tests/postgres/cluster.sh stop "$pg_dir"' EXIT
export BERTH_TEST_DATABASE_URL

export CARGO_TERM_COLOR=never
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
