//! Secrets: `.kamal/secrets*` files in dotenv syntax, and the vault adapters behind `berth secrets`.
pub mod cli;
