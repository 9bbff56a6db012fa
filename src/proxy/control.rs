//! The control protocol: one JSON request line and one JSON reply line per unix-socket connection.
//!
//! The server side runs inside `run` and calls the [`Router`]; the client side is what `deploy`, `list` and
//! the other control commands use. The reply is written when the operation has finished, so the client
//! simply blocks on reading it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::ProxyError;
use super::observability::Metrics;
use super::options::ServiceOptions;
use super::router::Router;

/// Longest accepted request line (a deploy with many hosts is a few KB).
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// A control request, tagged by `"command"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    Deploy {
        service: String,
        targets: Vec<String>,
        #[serde(default)]
        options: Box<ServiceOptions>,
    },
    Remove {
        service: String,
    },
    Pause {
        service: String,
        drain_timeout_ms: u64,
        max_pause_ms: u64,
    },
    Stop {
        service: String,
        drain_timeout_ms: u64,
        #[serde(default)]
        message: String,
    },
    Resume {
        service: String,
    },
    List,
    RolloutDeploy {
        service: String,
        targets: Vec<String>,
        #[serde(default)]
        deploy_timeout_ms: Option<u64>,
        #[serde(default)]
        drain_timeout_ms: Option<u64>,
    },
    RolloutSet {
        service: String,
        percent: u32,
        #[serde(default)]
        allowlist: Vec<String>,
    },
    RolloutStop {
        service: String,
    },
}

impl ControlRequest {
    /// How long the client should wait for the reply: the server's own timeouts plus a margin.
    pub fn reply_timeout(&self) -> Duration {
        let margin = Duration::from_secs(30);
        let ms = Duration::from_millis;
        match self {
            ControlRequest::Deploy { options, .. } => options.deploy_timeout + options.drain_timeout + margin,
            ControlRequest::Pause { drain_timeout_ms, .. } | ControlRequest::Stop { drain_timeout_ms, .. } => {
                ms(*drain_timeout_ms) + margin
            }
            ControlRequest::RolloutDeploy { deploy_timeout_ms, drain_timeout_ms, .. } => {
                ms(deploy_timeout_ms.unwrap_or(30_000)) + ms(drain_timeout_ms.unwrap_or(30_000)) + margin
            }
            // A removal drains with the service's own timeout, which the client does not know.
            ControlRequest::Remove { .. } => Duration::from_secs(600),
            _ => margin,
        }
    }
}

/// A reply line.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Binds the control socket, replacing a stale socket file left by a previous run.
pub fn bind(path: &Path) -> Result<UnixListener, ProxyError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ProxyError::Bind {
            what: "the control socket",
            address: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "another proxy is answering on it"),
        });
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|source| ProxyError::Bind {
        what: "the control socket",
        address: path.display().to_string(),
        source,
    })
}

/// Answers control connections until the task is aborted.
pub async fn serve(listener: UnixListener, router: Arc<Router>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let router = Arc::clone(&router);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST_BYTES));
            let reply = match reader.read_line(&mut line).await {
                Ok(0) => return,
                Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(request) => execute(&router, &metrics, request).await,
                    Err(e) => Err(ProxyError::Protocol(format!("bad request line: {e}"))),
                },
                Err(e) => Err(ProxyError::Protocol(format!("cannot read the request: {e}"))),
            };
            let reply = match reply {
                Ok(result) => ControlReply { ok: true, result: Some(result), error: None },
                Err(error) => ControlReply { ok: false, result: None, error: Some(error.to_string()) },
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".to_string());
            text.push('\n');
            // The client may have given up waiting; nothing to do about a closed socket.
            let _ = writer.write_all(text.as_bytes()).await;
        });
    }
}

async fn execute(router: &Router, metrics: &Metrics, request: ControlRequest) -> Result<serde_json::Value, ProxyError> {
    let ms = Duration::from_millis;
    match request {
        ControlRequest::Deploy { service, targets, options } => {
            let started = Instant::now();
            let result = router.deploy(&service, &targets, *options).await;
            metrics.deploy_finished(&service, result.is_ok(), started.elapsed().as_secs_f64());
            to_json(&result?)
        }
        ControlRequest::Remove { service } => to_json(&router.remove(&service).await?),
        ControlRequest::Pause { service, drain_timeout_ms, max_pause_ms } => {
            router.pause(&service, ms(drain_timeout_ms), ms(max_pause_ms)).await?;
            Ok(serde_json::Value::Null)
        }
        ControlRequest::Stop { service, drain_timeout_ms, message } => {
            router.stop(&service, ms(drain_timeout_ms), message).await?;
            Ok(serde_json::Value::Null)
        }
        ControlRequest::Resume { service } => {
            router.resume(&service).await?;
            Ok(serde_json::Value::Null)
        }
        ControlRequest::List => to_json(&router.list()),
        ControlRequest::RolloutDeploy { service, targets, deploy_timeout_ms, drain_timeout_ms } => to_json(
            &router.rollout_deploy(&service, &targets, deploy_timeout_ms.map(ms), drain_timeout_ms.map(ms)).await?,
        ),
        ControlRequest::RolloutSet { service, percent, allowlist } => {
            router.rollout_set(&service, percent, allowlist).await?;
            Ok(serde_json::Value::Null)
        }
        ControlRequest::RolloutStop { service } => {
            router.rollout_stop(&service).await?;
            Ok(serde_json::Value::Null)
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, ProxyError> {
    serde_json::to_value(value).map_err(|e| ProxyError::Protocol(e.to_string()))
}

/// Sends one request to the proxy at `socket` and waits for its reply (blocking; no runtime needed).
pub fn call(socket: &Path, request: &ControlRequest) -> Result<serde_json::Value, ProxyError> {
    let unreachable = |source| ProxyError::ProxyUnreachable { socket: socket.to_path_buf(), source };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let timeout = request.reply_timeout();
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| ProxyError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(0) => return Err(ProxyError::NoReply),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(ProxyError::ReplyTimeout(timeout));
        }
        Err(source) => return Err(unreachable(source)),
    }
    let reply: ControlReply =
        serde_json::from_str(&reply).map_err(|e| ProxyError::Protocol(format!("bad reply: {e}")))?;
    if reply.ok {
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ProxyError::Remote(reply.error.unwrap_or_else(|| "unknown error".to_string())))
    }
}
