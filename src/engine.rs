//! The engine: runs Kamal's commands (deploy, rollback, app …, accessory …, proxy …) against hosts.
//!
//! Async and cancellable between steps; everything it does is reported as `output::Event`s to a `Sink`, so the
//! CLI prints it and the daemon can persist and stream it.

pub mod hooks;
pub mod output;
pub mod proxy_image;
pub mod selection;
