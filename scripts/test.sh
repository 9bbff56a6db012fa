#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests need, then runs them.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Real hosts for the end-to-end tests: sshd + dockerd per network namespace, a registry (see tests/bench/).
bash tests/bench/install-deps.sh
# Ruby: ERB tests compare berth's native evaluator with Ruby's own ERB, and exercise the ruby fallback.
if ! command -v ruby >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq ruby >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq ruby >/dev/null; }
fi

export CARGO_TERM_COLOR=never
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
