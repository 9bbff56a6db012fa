//! berth: deploys web apps to Linux hosts with Docker, with zero downtime, reading Kamal's configuration.
//!
//! Modules, in reading order:
//! - [`environment`]: the process environment as a value (env vars, cwd, local commands).
//! - [`config`]: `config/deploy.yml` loaded exactly as Kamal loads it (ERB, YAML, destinations, validation).
//! - [`secrets`]: `.kamal/secrets*` files and the vault adapters behind `berth secrets`.
//! - [`project`]: `berth init` (a new project's files) and `berth docs` (the configuration reference).
//! - [`cli`]: the command line; the only module that prints.

pub mod cli;
pub mod config;
pub mod environment;
pub mod project;
pub mod secrets;
