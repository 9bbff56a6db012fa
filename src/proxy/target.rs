//! One upstream (`container:port`): its keep-alive connection pool, in-flight count, drain and health state.
//!
//! The zero-downtime invariant lives here. A request *claims* a target by incrementing `in_flight` and then
//! checking `closing`; a drain sets `closing` after the routing table no longer points at the target and then
//! waits for `in_flight` to reach zero. Both sides use sequentially consistent atomics, so either the request
//! sees `closing` (and retries on the new routing table) or the drain sees the request (and waits for it): no
//! request can fall between the switch and the drain, without a lock on the request path.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::ProxyError;
use super::server::worker_index;

/// Errors of boxed bodies (buffered or streamed request bodies).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connect to a target may take; a target on the local Docker network answers in microseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections kept per target and worker; more concurrent requests open more connections.
const MAX_IDLE_PER_WORKER: usize = 256;

/// The body sent to a target: nothing, a buffered body, or the client's body streamed through (optionally
/// after a buffered head).
pub enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    Stream { head: Option<Bytes>, rest: Incoming },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Stream { head, rest } => {
                if let Some(head) = head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(head))));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(data) => data.is_none(),
            UpstreamBody::Stream { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            UpstreamBody::Stream { head, rest } => {
                let head_len = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest_hint = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest_hint.lower() + head_len);
                if let Some(upper) = rest_hint.upper() {
                    hint.set_upper(upper + head_len);
                }
                hint
            }
        }
    }
}

/// A target's health as the health checker last saw it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub healthy: bool,
    /// Why the last check failed (for error messages), if it did.
    pub last_failure: Option<String>,
    pub checks: u64,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request finished.
    Completed,
    /// The drain timeout passed; this many requests were cancelled.
    Cancelled(usize),
}

/// One upstream address and everything the proxy tracks about it.
pub struct Target {
    /// As given to `--target`, e.g. `app-web-1234:80`.
    pub address: String,
    host: String,
    port: u16,
    in_flight: AtomicUsize,
    closing: AtomicBool,
    drained: Notify,
    upgrades_cancelled: AtomicBool,
    cancel_upgrades: Arc<Notify>,
    all_cancelled: AtomicBool,
    cancel_all: Arc<Notify>,
    healthy: AtomicBool,
    health: watch::Sender<Health>,
    /// Requests served, for `list` and tests.
    pub served: AtomicU64,
    /// Idle keep-alive connections, one list per worker runtime (a connection is driven by the runtime
    /// that opened it, so handing it to another worker would add cross-thread wake-ups).
    pools: Box<[Mutex<Vec<SendRequest<UpstreamBody>>>]>,
    /// Idle keep-alive sockets of the HTTP/1 fast path, one list per worker: a client connection checks one
    /// out for one exchange and speaks HTTP/1.1 on it itself (no driver task, no channel in between).
    streams: Box<[Mutex<Vec<TcpStream>>]>,
    /// The driver tasks of this target's connections: a drain that times out aborts them, which fails
    /// the requests still on them (they answer 504) without any per-request cancellation hook.
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
    resolved: Mutex<Option<(SocketAddr, Instant)>>,
}

impl Target {
    /// Parses `host:port` (port 80 when absent), as kamal-proxy's `--target` accepts it (no scheme).
    pub fn new(address: &str, workers: usize) -> Result<Arc<Target>, ProxyError> {
        let address = address.trim();
        let bad = |reason: &str| ProxyError::invalid("--target", address, reason.to_string());
        if address.contains("://") || address.contains('/') {
            return Err(bad("expected HOST:PORT without a scheme or path, e.g. app-web-1234:80"));
        }
        let (host, port) = match address.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => (address.to_string(), 80),
            Some((host, port)) => {
                (host.trim_matches(['[', ']']).to_string(), port.parse().map_err(|_| bad("bad port"))?)
            }
            None => (address.to_string(), 80),
        };
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(bad("expected HOST:PORT, e.g. app-web-1234:80"));
        }
        let (health, _) = watch::channel(Health::default());
        Ok(Arc::new(Target {
            address: address.to_string(),
            host,
            port,
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            drained: Notify::new(),
            upgrades_cancelled: AtomicBool::new(false),
            cancel_upgrades: Arc::new(Notify::new()),
            all_cancelled: AtomicBool::new(false),
            cancel_all: Arc::new(Notify::new()),
            healthy: AtomicBool::new(false),
            health,
            served: AtomicU64::new(0),
            pools: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            streams: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            connections: Mutex::new(Vec::new()),
            resolved: Mutex::new(None),
        }))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    pub fn subscribe_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Records a health transition (called by the health checker).
    pub fn set_health(&self, health: Health) {
        self.healthy.store(health.healthy, Ordering::Release);
        self.health.send_replace(health);
    }

    /// Registers a request on this target, unless a drain has begun (then the caller retries on the new
    /// routing table, which the drain's start guarantees is already visible).
    pub fn try_claim(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.finish_request();
            return None;
        }
        Some(InFlight { target: Arc::clone(self) })
    }

    fn finish_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.closing.load(Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
    }

    /// Stops new requests, closes upgraded (WebSocket) connections at once, waits for the other in-flight
    /// requests up to `timeout`, then cancels what is left. Returns as soon as nothing is in flight.
    pub async fn drain(&self, timeout: Duration) -> DrainOutcome {
        self.closing.store(true, Ordering::SeqCst);
        self.upgrades_cancelled.store(true, Ordering::SeqCst);
        self.cancel_upgrades.notify_waiters();
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = self.in_flight.load(Ordering::SeqCst);
            if in_flight == 0 {
                break DrainOutcome::Completed;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break DrainOutcome::Cancelled(self.in_flight.load(Ordering::SeqCst));
            }
        };
        if outcome != DrainOutcome::Completed {
            self.all_cancelled.store(true, Ordering::SeqCst);
            self.cancel_all.notify_waiters();
            for connection in self.connections.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                connection.abort();
            }
        }
        self.close_idle_connections();
        outcome
    }

    /// Resolves when a drain wants upgraded connections (WebSockets) on this target closed.
    pub fn upgrades_cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let notified = Arc::clone(&self.cancel_upgrades).notified_owned();
        let cancelled = self.upgrades_cancelled.load(Ordering::SeqCst);
        async move {
            if !cancelled {
                notified.await;
            }
        }
    }

    /// Resolves when the drain timeout has passed and remaining requests must be cut.
    pub fn requests_cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let notified = Arc::clone(&self.cancel_all).notified_owned();
        let cancelled = self.all_cancelled.load(Ordering::SeqCst);
        async move {
            if !cancelled {
                notified.await;
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.all_cancelled.load(Ordering::SeqCst)
    }

    /// Drops pooled idle connections (the upstream sees them close), e.g. after a drain.
    pub fn close_idle_connections(&self) {
        for pool in self.pools.iter() {
            pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        for pool in self.streams.iter() {
            pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// An idle fast-path socket to this target that has not been closed by the target, if there is one.
    ///
    /// The check costs no system call in the common case: tokio knows from epoll whether the socket became
    /// readable since its last response was read (a short read clears readiness); only then does `try_read`
    /// look, finding either the target's close (EOF) or stray bytes, and the socket is dropped.
    pub fn checkout_stream(&self) -> Option<TcpStream> {
        let pool = &self.streams[worker_index() % self.streams.len()];
        let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(stream) = idle.pop() {
            match stream.try_read(&mut [0u8; 1]) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Some(stream),
                _ => continue,
            }
        }
        None
    }

    /// Returns a fast-path socket whose last response was read completely (and nothing more).
    pub fn checkin_stream(&self, stream: TcpStream) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let mut pool = self.streams[worker_index() % self.streams.len()].lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_PER_WORKER {
            pool.push(stream);
        }
    }

    /// A pooled idle connection that is ready now, without waiting (the common case).
    pub fn checkout_idle(&self) -> Option<SendRequest<UpstreamBody>> {
        let pool = &self.pools[worker_index() % self.pools.len()];
        let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
            if !sender.is_closed() {
                // Not ready yet (its last response is still being finished): leave it for `checkout`.
                idle.push(sender);
                return None;
            }
        }
        None
    }

    /// A ready connection to this target: a pooled idle one, or a new one.
    pub async fn checkout(&self) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let pool = &self.pools[worker_index() % self.pools.len()];
        loop {
            let idle = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.is_ready() {
                return Ok(sender);
            }
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    /// Returns a connection whose last response was read completely.
    pub fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if self.closing.load(Ordering::Relaxed) || sender.is_closed() {
            return;
        }
        let mut pool = self.pools[worker_index() % self.pools.len()].lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_PER_WORKER {
            pool.push(sender);
        }
    }

    /// Opens a new keep-alive connection; its driver task runs on the current runtime.
    pub async fn connect(&self) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = self.connect_tcp(self.port).await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let task = tokio::spawn(async move {
            // The connection ends when the target closes it or every sender is dropped; either is normal.
            let _ = connection.with_upgrades().await;
        });
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| !c.is_finished());
        connections.push(task.abort_handle());
        Ok(sender)
    }

    /// A TCP connection to `port` on this target's host (resolved through Docker's DNS for container names).
    pub async fn connect_tcp(&self, port: u16) -> Result<TcpStream, UpstreamError> {
        let address = self.resolve(port).await?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| UpstreamError::Connect(format!("connect to {address} timed out")))?
            .map_err(|e| {
                self.forget_resolution();
                UpstreamError::Connect(format!("connect to {address}: {e}"))
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn resolve(&self, port: u16) -> Result<SocketAddr, UpstreamError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        // Container addresses change only when the container does, which means a new target; a short cache
        // keeps DNS off the path of every new connection while still following a restarted container.
        if let Some((address, at)) = *self.resolved.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(SocketAddr::new(address.ip(), port));
        }
        let mut addresses = tokio::net::lookup_host((self.host.as_str(), port))
            .await
            .map_err(|e| UpstreamError::Connect(format!("resolve {}: {e}", self.host)))?;
        let address =
            addresses.next().ok_or_else(|| UpstreamError::Connect(format!("resolve {}: no addresses", self.host)))?;
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = Some((address, Instant::now()));
        Ok(address)
    }

    fn forget_resolution(&self) {
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("address", &self.address).field("in_flight", &self.in_flight()).finish()
    }
}

/// A request registered on a target; dropping it ends the request (and may complete a drain).
pub struct InFlight {
    target: Arc<Target>,
}

impl InFlight {
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.finish_request();
    }
}

/// Why a request to a target failed.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(String),
    Request(hyper::Error),
}

impl UpstreamError {
    /// The request failed because reading the client's body failed (it broke off, or its framing was bad).
    pub fn is_client_body(&self) -> bool {
        matches!(self, UpstreamError::Request(error) if error.is_user())
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(message) => f.write_str(message),
            UpstreamError::Request(error) => write!(f, "{error}"),
        }
    }
}

/// Reads a body into memory up to `limit` bytes. Returns the bytes read and, when the body is longer than
/// `limit`, the body itself for the caller to refuse or stream on (its first bytes are in the returned head).
pub async fn buffer_body(mut body: Incoming, limit: u64) -> Result<(Bytes, Option<Incoming>), hyper::Error> {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0u64;
    loop {
        match body.frame().await {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    total += data.len() as u64;
                    chunks.push_back(data);
                }
            }
        }
        if total > limit {
            return Ok((concat(chunks, total), Some(body)));
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok((concat(chunks, total), None))
}

fn concat(mut chunks: VecDeque<Bytes>, total: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut joined = Vec::with_capacity(total as usize);
    for chunk in chunks {
        joined.extend_from_slice(&chunk);
    }
    Bytes::from(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_kamal_proxy() {
        let target = Target::new("app-web-123:3000", 1).unwrap();
        assert_eq!((target.host(), target.port()), ("app-web-123", 3000));
        let target = Target::new("app", 1).unwrap();
        assert_eq!((target.host(), target.port()), ("app", 80));
        let target = Target::new("127.0.0.1:8080", 1).unwrap();
        assert_eq!((target.host(), target.port()), ("127.0.0.1", 8080));
        assert!(Target::new("http://app:80", 1).is_err());
        assert!(Target::new("app:eighty", 1).is_err());
    }

    #[tokio::test]
    async fn drain_waits_for_claims_and_refuses_new_ones() {
        let target = Target::new("127.0.0.1:1", 1).unwrap();
        let claim = target.try_claim().unwrap();
        let drain = tokio::spawn({
            let target = Arc::clone(&target);
            async move { target.drain(Duration::from_secs(5)).await }
        });
        while !target.is_closing() {
            tokio::task::yield_now().await;
        }
        assert!(target.try_claim().is_none(), "a draining target takes no new requests");
        drop(claim);
        assert_eq!(drain.await.unwrap(), DrainOutcome::Completed);
    }

    #[tokio::test]
    async fn drain_times_out_and_cancels() {
        let target = Target::new("127.0.0.1:1", 1).unwrap();
        let _claim = target.try_claim().unwrap();
        let cancelled = target.requests_cancelled();
        let outcome = target.drain(Duration::from_millis(20)).await;
        assert_eq!(outcome, DrainOutcome::Cancelled(1));
        tokio::time::timeout(Duration::from_secs(1), cancelled).await.expect("cancellation is signalled");
    }
}
