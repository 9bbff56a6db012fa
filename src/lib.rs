//! berth: deploys web apps to Linux hosts with Docker, with zero downtime, reading Kamal's configuration.
//!
//! Modules, in reading order:
//! - [`environment`]: the process environment as a value (env vars, cwd, local commands).
//! - [`config`]: `config/deploy.yml` loaded exactly as Kamal loads it (ERB, YAML, destinations, validation).
//! - [`secrets`]: `.kamal/secrets*` files and the vault adapters behind `berth secrets`.
//! - [`project`]: `berth init` (a new project's files) and `berth docs` (the configuration reference).
//! - [`command`]: `Cmd`, a shell command for a host; the only place that quotes shell words.
//! - [`commands`]: pure builders of every command berth runs on hosts (Kamal's names, labels and paths).
//! - [`ssh`]: the SSH executor (one multiplexed connection per host, host keys verified).
//! - [`proxy`]: the reverse proxy that runs on each host (`berth proxy run`) and its control commands.
//! - [`engine`]: runs Kamal's commands against hosts: deploy flow, lock, hooks, host selection, events.
//! - [`outbound_http`]: berth's own outgoing HTTP(S) requests (ACME, GitHub's API, notifications).
//! - [`daemon`]: `berth serve`, the deploy daemon: HTTP API, durable queue in SQLite, live logs over SSE.
//! - [`utc`]: UTC timestamps (logs, locks, audit lines) without a time-zone database.
//! - [`cli`]: the command line; the only module that prints.

pub mod cli;
pub mod command;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod environment;
pub mod outbound_http;
pub mod project;
pub mod proxy;
pub mod secrets;
pub mod ssh;
pub mod utc;
