#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests need, then runs them.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Real hosts for the end-to-end tests: sshd + dockerd per network namespace, a registry (see tests/bench/).
bash tests/bench/install-deps.sh

export CARGO_TERM_COLOR=never
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
