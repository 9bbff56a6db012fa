//! The berth proxy: the zero-downtime reverse proxy on every host, with kamal-proxy's control surface.
//!
//! One process (`berth proxy run`, or the same binary called as `kamal-proxy run`) serves HTTP and HTTPS for
//! every app on a host and routes by host and path prefix to the app containers on the `kamal` network.
//! Control commands (`deploy`, `remove`, `pause`, `stop`, `resume`, `list`, `rollout …`) are separate
//! invocations of the same binary that talk to the running proxy over a unix socket and block until the
//! operation is done, exactly like kamal-proxy, so Kamal and berth can drive it unchanged.
//!
//! # Pieces
//! - [`cli`]: kamal-proxy's command line (`kamal-proxy run|deploy|…`), its flag names and value forms.
//! - [`options`]: a service's options (hosts, paths, timeouts, health check, buffering) and value parsing.
//! - [`target`]: one upstream (`container:port`): its connection pool, in-flight count, drain and health state.
//! - [`health`]: the health-check loop with consecutive-success/failure thresholds.
//! - [`router`]: services, the routing table behind an `ArcSwap`, deploy/rollout/pause/stop and their drains.
//! - [`forward`]: one request's trip through the proxy (headers, buffering, upgrades, errors).
//! - [`fast_path`]: plain HTTP/1.1 requests forwarded by the client connection's own task, without hyper.
//! - [`http1`]: HTTP/1.1 heads and body framing for the fast path (parse, rewrite, find the body's end).
//! - [`server`]: listeners, worker runtimes, connection timeouts and graceful shutdown.
//! - [`control`]: the unix-socket protocol between the control commands and the running proxy.
//! - [`state`]: the persisted routing state (atomic write, per-service restore).
//! - [`observability`]: the JSON access log and Prometheus metrics.
//! - [`tls`]: certificates per host (files, and ACME with HTTP-01 / TLS-ALPN-01).
//! - [`pages`]: the HTML error and maintenance pages.
//!
//! # Control protocol
//! The socket is `$KAMAL_PROXY_SOCKET`, else `$XDG_RUNTIME_DIR/kamal-proxy.sock`, else
//! `$TMPDIR/kamal-proxy.sock` (`/tmp` when `TMPDIR` is unset). A client connects, writes one JSON object on
//! one line (a [`control::ControlRequest`], tagged by `"command"`: `deploy`, `remove`, `pause`, `stop`,
//! `resume`, `list`, `rollout_deploy`, `rollout_set`, `rollout_stop`) and reads one JSON line back:
//! `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`. The reply is sent only when the operation is
//! complete (for `deploy`: after the health-gated switch and the drain of the old targets), so a caller can
//! stop the old container as soon as it returns. Example:
//!
//! ```text
//! > {"command":"deploy","service":"app-web","targets":["app-web-1:80"],"options":{"hosts":["example.com"]}}
//! < {"ok":true,"result":{"service":"app-web","targets":["app-web-1:80"],"drained":["app-web-0:80"]}}
//! ```

pub mod cli;
pub mod connection_limits;
pub mod control;
pub mod fast_path;
pub mod forward;
pub mod guard;
pub mod health;
pub mod http1;
pub mod observability;
pub mod options;
pub mod pages;
pub mod router;
pub mod server;
pub mod state;
pub mod target;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

pub use cli::{ControlCommand, RunArgs, run_control, run_server};

/// Everything that can go wrong in the proxy, with a message that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid value {value:?} for {what}: {reason}")]
    InvalidValue { what: &'static str, value: String, reason: String },

    #[error("service {service:?} does not exist (see `kamal-proxy list`)")]
    UnknownService { service: String },

    #[error(
        "host {host:?} with path {path:?} is already used by service {other:?}; remove it or pick another host/path"
    )]
    RouteInUse { host: String, path: String, other: String },

    #[error(
        "target failed to become healthy within configured timeout ({timeout}): {target} ({last}); \
         check the app's health-check path ({path}) and port, or raise --deploy-timeout"
    )]
    TargetNeverHealthy { target: String, timeout: String, last: String, path: String },

    #[error("service {service:?} has no rollout targets; run `kamal-proxy rollout deploy` first")]
    NoRolloutTargets { service: String },

    #[error(
        "cannot reach the proxy at {socket}: {source} (is `kamal-proxy run` running? set KAMAL_PROXY_SOCKET to its socket)"
    )]
    ProxyUnreachable { socket: PathBuf, source: std::io::Error },

    #[error("the proxy closed the control connection without replying (it may have been stopped or crashed)")]
    NoReply,

    #[error("the proxy did not reply within {0:?}; the operation may still complete on the proxy")]
    ReplyTimeout(Duration),

    #[error("{0}")]
    Remote(String),

    #[error("cannot bind {what} on {address}: {source} (is another proxy already running, or the port privileged?)")]
    Bind { what: &'static str, address: String, source: std::io::Error },

    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },

    #[error("TLS for {host}: {reason}")]
    Tls { host: String, reason: String },

    #[error("ACME for {host}: {reason}")]
    Acme { host: String, reason: String },

    #[error("control protocol: {0}")]
    Protocol(String),
}

impl ProxyError {
    pub(crate) fn invalid(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ProxyError {
        ProxyError::InvalidValue { what, value: value.into(), reason: reason.into() }
    }
}

/// Where the control socket lives, in kamal-proxy's order: `$KAMAL_PROXY_SOCKET`, then
/// `$XDG_RUNTIME_DIR/kamal-proxy.sock`, then `$TMPDIR/kamal-proxy.sock` (or `/tmp/kamal-proxy.sock`).
pub fn socket_path() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = var("KAMAL_PROXY_SOCKET") {
        return PathBuf::from(path);
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("kamal-proxy.sock");
    }
    let tmp = var("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join("kamal-proxy.sock")
}

/// The directory for state and certificates: `$HOME/.config/kamal-proxy` (Kamal mounts a volume there).
pub fn default_state_dir() -> PathBuf {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    home.unwrap_or_else(|| PathBuf::from("/home/kamal-proxy")).join(".config").join("kamal-proxy")
}
