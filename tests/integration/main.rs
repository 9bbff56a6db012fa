//! berth's one integration-test binary: each module is one area, tested from the outside.

mod support;

// The test bench: real hosts (sshd + dockerd per network namespace) and a real registry.
mod bench;
// `berth config` against every recorded run of the real `kamal config`.
mod kamal_corpus;
// `berth config`, `init`, `docs`, `completions` and their errors.
mod cli_config;
// The SSH executor against real sshd: output, stdin, one connection per host, host keys, jump hosts, agent.
mod ssh;
// The berth proxy (run as `kamal-proxy`): deploys under load, routing, restore, WebSocket/SSE, TLS.
mod proxy;
// `berth serve`: the API, queue, store and log stream, on port 0 with a temporary data directory.
mod daemon;
// Several `berth serve` on one PostgreSQL: one queue, each deploy run once, tokens and deploys seen by all.
mod shared_store;
// GitHub webhooks, Slack commands, notifications and statuses, on the daemon on port 0.
mod triggers;
// GitHub and Slack driving deploys to a real bench host, with every receiver answering 500 first.
mod triggers_bench;
// The dashboard: sign-in, session cookie, CSRF, scopes, escaping; a headless Chromium against the bench.
mod dashboard;
// `berth serve` on the bench: deploys to real hosts, a ref built remotely, cancel mid-boot, kill -9 and restart.
mod daemon_bench;
// Kamal's commands end to end on the bench: setup, deploys under load, rollback, prune, locks, app commands.
mod deploy;
