//! The HTTP/1.1 fast path: on a plain-HTTP connection, or a TLS one that chose HTTP/1.1, the client
//! connection's own task reads each request head, forwards simple requests over an upstream socket it checks
//! out of the target's pool for that one exchange, and relays the response, with no HTTP state machine,
//! channel or extra task in between.
//!
//! Why: with hyper, a request crosses two HTTP/1 state machines and a channel to the pooled connection's
//! task, and every idle client connection keeps hyper's read and write buffers. Here the work per request is
//! four system calls (read the request, write it upstream, read the response, write it back) plus parsing,
//! and an idle connection holds no buffer: one is taken from the worker's pool only once the socket is
//! readable, and given back when the exchange is over (over TLS, rustls keeps its own buffers).
//!
//! A request that breaks berth's HTTP/1 rules ([`super::http1`]: ambiguous framing or host, limits) is
//! refused here with 400/405/408/414/431 and the connection closed. Whatever valid request this path does
//! not handle — upgrades (WebSockets), `Expect`, HTTP/1.0, request buffering with a body, redirects, ACME
//! challenges, error pages for routing (404, maintenance 503, pause) — goes to the hyper path
//! ([`super::server`]'s `serve_http1`) for the rest of the connection, together with the bytes already read,
//! before anything was claimed or counted, through a [`Guarded`] stream that keeps applying the same rules.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::connection_limits::HeadReservation;
use super::forward::{
    self, CLAIM_ATTEMPTS, ConnectionInfo, HeaderLookup, LogDetails, LogOutcome, Shared, host_without_port,
};
use super::guard::Guarded;
use super::http1::{self, Advanced, BodyProgress, Framing, Headers, Parsed, Refusal};
use super::observability::method_index_of;
use super::router::Service;
use super::target::{InFlight, Target};

/// Size of the buffers taken from the worker's pool (request heads and response chunks).
const BUFFER_SIZE: usize = 16 * 1024;
/// Largest response head from a target (hyper's limit on the other path too).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Free buffers a worker keeps for reuse; more are freed.
const POOLED_BUFFERS: usize = 64;

/// Serves a plain-HTTP client connection until it closes, or returns it (with the bytes already read, in
/// order) for the hyper path to serve from the request it could not handle.
pub async fn serve<C: ClientIo>(
    mut client: C,
    info: &ConnectionInfo,
    shared: &Shared,
    idle_timeout: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Option<Box<Guarded<C>>> {
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    let mut idle_timer = Timer::new(idle_timeout);
    let mut target_timer: Option<Timer> = None;
    let mut input: Option<Buffer> = None;
    let mut out = OutBuffer::take();
    loop {
        // Between requests the connection holds no buffer: wait for bytes, then take one.
        let waiting_since = Instant::now();
        idle_timer.arm(waiting_since + idle_timeout);
        if input.as_ref().is_none_or(Buffer::is_empty) {
            input = None;
            out.release();
            // TLS may hold decrypted bytes already: look before waiting for the socket.
            if !C::HOLDS_INPUT {
                tokio::select! {
                    biased;
                    ready = client.wait_readable() => ready.ok()?,
                    () = &mut stop => return None,
                    () = idle_timer.expired() => return None,
                }
            }
            let mut buffer = Buffer::take();
            match read_now(&mut client, &mut buffer).await {
                None if C::HOLDS_INPUT => {
                    drop(buffer);
                    tokio::select! {
                        biased;
                        ready = client.wait_readable() => ready.ok()?,
                        () = &mut stop => return None,
                        () = idle_timer.expired() => return None,
                    }
                    continue;
                }
                None => continue,
                Some(Ok(0) | Err(_)) => return None,
                Some(Ok(_)) => input = Some(buffer),
            }
        }
        let buffer = input.as_mut()?;
        let exchange = match prepare(shared, info, buffer.filled(), out.get()) {
            Prepared::Forward(exchange) => exchange,
            Prepared::Hyper => {
                return Some(hand_over(client, buffer, shared));
            }
            Prepared::Refuse(refusal) => {
                Box::pin(refuse(&mut client, refusal)).await;
                return None;
            }
            // Boxed: waiting for the rest of a head is rarer than a whole head in one read, and its state
            // would otherwise enlarge every idle connection.
            Prepared::Partial => {
                match Box::pin(complete_head(&mut client, buffer, out.get(), shared, info, stop.as_mut())).await {
                    Prepared::Forward(exchange) => exchange,
                    Prepared::Hyper => {
                        return Some(hand_over(client, buffer, shared));
                    }
                    Prepared::Partial | Prepared::Refuse(_) => return None,
                }
            }
        };
        let timer = target_timer.get_or_insert_with(|| Timer::new(exchange.service.options.target_timeout));
        // Boxed: the exchange's state is most of a connection's future, and an idle connection needs none of it.
        let exchange = run_exchange(&mut client, buffer, out.get(), exchange, shared, info, timer, shutdown);
        let keep_alive = Box::pin(exchange).await;
        if !keep_alive || shutdown.has_changed().unwrap_or(true) {
            return None;
        }
    }
}

/// Reads the rest of a request head that came in pieces, until it can be forwarded, handed to hyper, or
/// refused (answered here). `Partial` or `Refuse` back: the connection is done.
async fn complete_head<C: ClientIo>(
    client: &mut C,
    buffer: &mut Buffer,
    out: &mut Vec<u8>,
    shared: &Shared,
    info: &ConnectionInfo,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Prepared {
    // The whole head must arrive within the header timeout of its first bytes, else 408.
    let deadline = tokio::time::sleep(shared.header_timeout);
    tokio::pin!(deadline);
    let mut reservation = HeadReservation::default();
    loop {
        // A head larger than the first buffer grows only within the process-wide budget.
        if buffer.will_grow() && !reservation.grow(buffer.data.capacity().max(BUFFER_SIZE)) {
            let refusal = Refusal { status: 503, reason: "too many large request heads in progress; try again" };
            refuse(client, refusal).await;
            return Prepared::Refuse(refusal);
        }
        let read = tokio::select! {
            biased;
            read = read_into(client, buffer) => read,
            () = stop.as_mut() => return Prepared::Partial,
            () = deadline.as_mut() => {
                let refusal = Refusal { status: 408, reason: "request head not received within --header-timeout" };
                refuse(client, refusal).await;
                return Prepared::Refuse(refusal);
            }
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Prepared::Partial;
        }
        match prepare(shared, info, buffer.filled(), out) {
            Prepared::Partial => {}
            Prepared::Refuse(refusal) => {
                refuse(client, refusal).await;
                return Prepared::Refuse(refusal);
            }
            done => return done,
        }
    }
}

/// The connection for the hyper path, with the bytes already read. Boxed: every connection's task has room
/// for what `serve` returns, and most connections never need it.
fn hand_over<C>(client: C, buffer: &Buffer, shared: &Shared) -> Box<Guarded<C>> {
    Box::new(Guarded::new(client, buffer.filled(), shared.head_limits, shared.header_timeout))
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A request the fast path forwards, claimed on its target.
struct Exchange {
    service: Arc<Service>,
    claim: InFlight,
    started: Instant,
    method: u8,
    head_request: bool,
    /// GET, HEAD, OPTIONS or TRACE: safe to send again if a pooled connection fails before any answer.
    idempotent: bool,
    head_len: usize,
    framing: Framing,
    /// The client asked to close the connection after this exchange.
    close: bool,
    log: Option<Box<FastLog>>,
}

/// What the access log needs beyond [`LogDetails`] (only made when the log is on).
struct FastLog {
    details: LogDetails,
    host: String,
    request_id: String,
}

enum Prepared {
    Forward(Exchange),
    Partial,
    Hyper,
    Refuse(Refusal),
}

/// Answers a request berth refuses, then closes the connection (after reading what the client still
/// sends for a moment, so that closing does not reset the connection before the answer is read).
async fn refuse<C: ClientIo>(client: &mut C, refusal: Refusal) {
    if client.send_all(&http1::refusal_response(refusal)).await.is_err() {
        return;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(client).await;
    let mut discard = [0u8; 4096];
    let mut left: usize = 256 * 1024;
    let drained = async {
        while left > 0 {
            match client.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(count) => left = left.saturating_sub(count),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
}

/// Parses the request head at the start of `input` and, when the fast path can forward it, routes it,
/// claims a target and writes the head for the target into `out`. Not async: the parsed headers live on
/// the stack, not in the connection's future.
fn prepare(shared: &Shared, info: &ConnectionInfo, input: &[u8], out: &mut Vec<u8>) -> Prepared {
    let mut headers = http1::header_slots();
    let (head, headers) = match http1::parse_request(input, &mut headers, &shared.head_limits) {
        Parsed::Complete(parsed) => parsed,
        Parsed::Partial => return Prepared::Partial,
        Parsed::Invalid(refusal) => return Prepared::Refuse(refusal),
    };
    if head.needs_hyper || head.path.starts_with("/.well-known/acme-challenge/") {
        return Prepared::Hyper;
    }
    let lookup = Headers(headers);
    let mut attempts = 0;
    // The same admission as the hyper path's; anything but "forward now" is answered there.
    let (service, claim, strip_len) = loop {
        attempts += 1;
        let table = shared.router.table();
        let Some(route) = table.find(head.host, head.path) else { return Prepared::Hyper };
        let service = &route.service;
        let options = &service.options;
        let redirect = route.redirect_to_https && !info.tls;
        let canonical = options.canonical_host.as_deref().is_some_and(|c| host_without_port(head.host) != c);
        let buffered_body = options.buffer_requests && head.framing != Framing::Empty;
        if redirect || canonical || buffered_body || !service.pause.is_running() {
            return Prepared::Hyper;
        }
        let group = forward::choose_group_by_cookies(service, lookup.all("cookie"));
        if !group.is_admitted() {
            return Prepared::Hyper;
        }
        let strip_len = if options.strip_path_prefix && route.prefix.len() > 1 { route.prefix.len() } else { 0 };
        match group.pick().try_claim() {
            Some(claim) => break (Arc::clone(service), claim, strip_len),
            None if attempts < CLAIM_ATTEMPTS => continue,
            None => return Prepared::Hyper,
        }
    };
    shared.metrics.request_started(service.id);
    claim.target().served.fetch_add(1, Ordering::Relaxed);

    let generated;
    let request_id = match head.request_id {
        Some(id) => id,
        None => {
            generated = forward::request_id_text();
            &generated[..]
        }
    };
    let path = if strip_len > 0 && head.path.len() >= strip_len { &head.path[strip_len..] } else { head.path };
    let forwarding = http1::Forwarding {
        path: if path.is_empty() { "/" } else { path },
        trust: service.options.trusts_forwarded_headers(),
        client_ip: info.client_ip.to_str().unwrap_or("0.0.0.0"),
        scheme: if info.tls { "https" } else { "http" },
        request_id,
    };
    out.clear();
    http1::write_request_head(out, &head, headers, &forwarding);
    let log = shared.access_log.then(|| {
        let query = head.query.unwrap_or("");
        let mut details = LogDetails::new(head.path, query, head.method, "HTTP/1.1", &lookup, info);
        details.note_request_headers(&service.options.log_request_headers, &lookup);
        let request_id = String::from_utf8_lossy(request_id).into_owned();
        Box::new(FastLog { details, host: head.host.to_string(), request_id })
    });
    Prepared::Forward(Exchange {
        started: Instant::now(),
        method: method_index_of(head.method),
        head_request: head.method == "HEAD",
        idempotent: matches!(head.method, "GET" | "HEAD" | "OPTIONS" | "TRACE"),
        head_len: head.head_len,
        framing: head.framing,
        close: head.close,
        log,
        service,
        claim,
    })
}

/// Why an exchange ended before a response head reached the client.
///
/// (The futures of the rare paths — connecting, relaying a request body, answering a failure — are boxed
/// where they are awaited: a task is as large as its largest state, and this keeps idle connections small.)
enum Failure {
    /// The target could not be reached or answered wrongly: 502.
    BadGateway(String),
    /// No response head within the target timeout: 504.
    Timeout,
    /// The target's drain timed out: 504.
    Cancelled,
    /// The client's body framing is broken: 400.
    BadRequest,
    /// The client went away (mid-body, or before the answer); nobody to answer.
    ClientGone(&'static str),
    /// A buffered response over `--max-response-body`: 500.
    ResponseTooLarge,
}

/// What was learnt from the response head, for relaying its body.
struct ResponsePlan {
    body: BodyProgress,
    reusable: bool,
    /// Read the whole body before answering (`--buffer-responses`, a sized body within the limit).
    buffer_len: Option<usize>,
    /// Over `--max-response-body`: answer 500 instead.
    too_large: bool,
    /// A 1xx interim response: relay it, then read the final head.
    informational: bool,
    head_len: usize,
    /// The client's version of the head is in `out` (and the request recorded), unless the body is to be
    /// buffered first or is too large.
    head_written: bool,
}

/// What the response side needs besides the sockets.
struct Relay<'a> {
    exchange: &'a Exchange,
    shared: &'a Shared,
    info: &'a ConnectionInfo,
}

/// Forwards one request and relays its response. Returns whether the client connection stays open.
#[allow(clippy::too_many_arguments)]
async fn run_exchange<C: ClientIo>(
    client: &mut C,
    input: &mut Buffer,
    out: &mut Vec<u8>,
    exchange: Exchange,
    shared: &Shared,
    info: &ConnectionInfo,
    timer: &mut Timer,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    let target = Arc::clone(exchange.claim.target());
    let cancelled = target.requests_cancelled();
    tokio::pin!(cancelled);
    timer.arm(Instant::now() + exchange.service.options.target_timeout);

    // The body bytes that came with the head go out with it.
    input.consume(exchange.head_len);
    let mut request_body = BodyProgress::new(exchange.framing);
    match request_body.advance(input.filled()) {
        Ok(advanced) => {
            for part in advanced.forwarded(input.filled()) {
                out.extend_from_slice(part);
            }
            input.consume(advanced.taken);
        }
        Err(_) => {
            return Box::pin(answer_failure(client, out, &exchange, shared, info, Failure::BadRequest, true)).await;
        }
    }
    // When the whole request is in `out`, it can be sent again on a new connection if a pooled one turns
    // out to have been closed by the target: when writing failed (it never reached the application), or,
    // for idempotent methods, when the connection closed without a byte of answer (as Go's transport does).
    let replayable = request_body.is_done();
    let mut close = exchange.close || shutdown.has_changed().unwrap_or(true);

    let mut upstream_buffer = Buffer::take();
    let relay = Relay { exchange: &exchange, shared, info };
    let sent = async {
        let (mut upstream, mut reused) = match target.checkout_stream() {
            Some(stream) => (stream, true),
            None => (Box::pin(connect(&target, timer, cancelled.as_mut())).await?, false),
        };
        loop {
            let written = write_all(&upstream, out).await;
            if written.is_err() && reused && replayable {
                upstream = Box::pin(connect(&target, timer, cancelled.as_mut())).await?;
                reused = false;
                continue;
            }
            written.map_err(|e| Failure::BadGateway(format!("sending the request: {e}")))?;
            if !request_body.is_done() {
                let relay_body =
                    relay_request_body(client, input, &upstream, &mut request_body, timer, cancelled.as_mut());
                let early = Box::pin(relay_body).await?;
                // The target answered before taking the whole body: the rest of it is still in the client
                // connection, which therefore cannot carry another request.
                close |= early;
            }
            let read = read_response_head(
                &mut upstream,
                &mut upstream_buffer,
                client.plain().map(|stream| (stream, &mut *input)),
                out,
                close,
                &relay,
                timer,
                cancelled.as_mut(),
            );
            match read.await {
                Err(Failure::BadGateway(_))
                    if reused && replayable && exchange.idempotent && upstream_buffer.is_empty() =>
                {
                    upstream = Box::pin(connect(&target, timer, cancelled.as_mut())).await?;
                    reused = false;
                }
                result => return result.map(|plan| (upstream, plan)),
            }
        }
    };
    let (mut upstream, mut plan) = match sent.await {
        Ok(sent) => sent,
        Err(failure) => {
            let keep = request_body.is_done() && !close;
            return Box::pin(answer_failure(client, out, &exchange, shared, info, failure, !keep)).await;
        }
    };
    // A target that answered before it had the whole request body may still expect the rest of it: its
    // connection is not reused.
    let request_sent = request_body.is_done();

    // 1xx interim responses are relayed as they come, then the final head is read.
    while plan.informational {
        upstream_buffer.consume(plan.head_len);
        if client.send_all(out).await.is_err() {
            return false;
        }
        let client_watch = client.plain().map(|stream| (stream, &mut *input));
        let read = read_response_head(
            &mut upstream,
            &mut upstream_buffer,
            client_watch,
            out,
            close,
            &relay,
            timer,
            cancelled.as_mut(),
        );
        plan = match read.await {
            Ok(plan) => plan,
            Err(failure) => return Box::pin(answer_failure(client, out, &exchange, shared, info, failure, true)).await,
        };
    }
    if plan.too_large {
        return Box::pin(answer_failure(client, out, &exchange, shared, info, Failure::ResponseTooLarge, close)).await;
    }
    if let Some(length) = plan.buffer_len {
        // `--buffer-responses`: the target's connection is freed before a slow client reads the answer.
        upstream_buffer.reserve(length);
        while upstream_buffer.len() < length {
            let read = tokio::select! {
                biased;
                read = read_into(&mut upstream, &mut upstream_buffer) => read,
                () = cancelled.as_mut() => {
                    return Box::pin(answer_failure(client, out, &exchange, shared, info, Failure::Cancelled, close))
                        .await;
                }
            };
            if !matches!(read, Ok(n) if n > 0) {
                let failure = Failure::BadGateway("the target closed the connection mid-body".to_string());
                return Box::pin(answer_failure(client, out, &exchange, shared, info, failure, close)).await;
            }
        }
    }
    if !plan.head_written {
        out.clear();
        let _ = plan_response(upstream_buffer.filled(), out, close, &relay, true);
    }
    upstream_buffer.consume(plan.head_len);
    let mut reusable = plan.reusable && request_sent;
    let until_close = matches!(plan.body, BodyProgress::UntilClose);
    let advanced = match plan.body.advance(upstream_buffer.filled()) {
        Ok(advanced) => advanced,
        Err(_) => return false,
    };
    for part in advanced.forwarded(upstream_buffer.filled()) {
        append_body(out, part, until_close);
    }
    // Bytes after the response: the target broke the protocol; its connection is not reused.
    reusable &= advanced.taken == upstream_buffer.len();
    upstream_buffer.clear();
    if plan.body.is_done() && reusable {
        target.checkin_stream(upstream);
        drop(exchange.claim);
        return client.send_all(out).await.is_ok() && !close;
    }
    if client.send_all(out).await.is_err() {
        return false;
    }

    // The rest of the body, as it comes (event streams included).
    while !plan.body.is_done() {
        let read = tokio::select! {
            biased;
            read = read_into(&mut upstream, &mut upstream_buffer) => read,
            // A drain that timed out cuts a body still streaming, as on the hyper path.
            () = cancelled.as_mut() => return false,
        };
        match read {
            Ok(0) if until_close => {
                plan.body = BodyProgress::Done;
                reusable = false;
                if client.send_all(http1::LAST_CHUNK).await.is_err() {
                    return false;
                }
            }
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                let Ok(advanced) = plan.body.advance(upstream_buffer.filled()) else { return false };
                reusable &= advanced.taken == n;
                let written = if until_close {
                    out.clear();
                    append_body(out, &upstream_buffer.filled()[..advanced.taken], true);
                    client.send_all(out).await
                } else {
                    send_forwarded(client, upstream_buffer.filled(), &advanced).await
                };
                upstream_buffer.clear();
                if written.is_err() {
                    return false;
                }
            }
        }
    }
    if reusable {
        target.checkin_stream(upstream);
    }
    drop(exchange.claim);
    !close
}

/// Sends the forwarded parts of a body's bytes (all but trailer fields) to the client.
async fn send_forwarded<C: ClientIo>(client: &mut C, input: &[u8], advanced: &Advanced) -> io::Result<()> {
    for part in advanced.forwarded(input) {
        if !part.is_empty() {
            client.send_all(part).await?;
        }
    }
    Ok(())
}

/// Appends body bytes for the client: as they are, or as one chunk of a body being re-chunked.
fn append_body(out: &mut Vec<u8>, body: &[u8], rechunk: bool) {
    if !rechunk {
        out.extend_from_slice(body);
    } else if !body.is_empty() {
        out.extend_from_slice(http1::chunk_size_line(body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
}

async fn connect(
    target: &Target,
    timer: &mut Timer,
    cancelled: Pin<&mut impl Future<Output = ()>>,
) -> Result<TcpStream, Failure> {
    tokio::select! {
        biased;
        stream = target.connect_tcp(target.port()) => stream.map_err(|e| Failure::BadGateway(e.to_string())),
        () = cancelled => Err(Failure::Cancelled),
        () = timer.expired() => Err(Failure::Timeout),
    }
}

/// Sends the rest of a request body as the client sends it. Returns true when the target started
/// answering first (the relay stops there; the response is read next).
async fn relay_request_body<C: ClientIo>(
    client: &mut C,
    input: &mut Buffer,
    upstream: &TcpStream,
    body: &mut BodyProgress,
    timer: &mut Timer,
    mut cancelled: Pin<&mut impl Future<Output = ()>>,
) -> Result<bool, Failure> {
    while !body.is_done() {
        let read = tokio::select! {
            biased;
            _ = upstream.readable() => return Ok(true),
            () = cancelled.as_mut() => return Err(Failure::Cancelled),
            // The target timeout covers the upload too, as on the hyper path.
            () = timer.expired() => return Err(Failure::Timeout),
            read = read_into(client, input) => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Err(Failure::ClientGone("the client closed the connection mid-body"));
        }
        let advanced = body.advance(input.filled()).map_err(|_| Failure::BadRequest)?;
        for part in advanced.forwarded(input.filled()) {
            tokio::select! {
                biased;
                _ = upstream.readable() => return Ok(true),
                () = cancelled.as_mut() => return Err(Failure::Cancelled),
                () = timer.expired() => return Err(Failure::Timeout),
                written = write_all(upstream, part) => {
                    written.map_err(|e| Failure::BadGateway(format!("sending the request body: {e}")))?;
                }
            }
        }
        input.consume(advanced.taken);
    }
    Ok(false)
}

/// Reads until a complete response head is in `buffer`, decides how its body is relayed and, in most
/// cases, writes the client's version of the head into `out`.
///
/// Meanwhile it watches the client: a client that closes its connection abandons the request (the target's
/// connection is dropped, which tells the application, and the claim on the target ends, so a drain does not
/// wait for an answer nobody reads), as nginx and the hyper path do. Bytes the client sends meanwhile (a
/// pipelined request) are kept in `client`'s buffer, and the watch ends.
#[allow(clippy::too_many_arguments)]
async fn read_response_head(
    upstream: &mut TcpStream,
    buffer: &mut Buffer,
    mut client: Option<(&TcpStream, &mut Buffer)>,
    out: &mut Vec<u8>,
    close: bool,
    relay: &Relay<'_>,
    timer: &mut Timer,
    mut cancelled: Pin<&mut impl Future<Output = ()>>,
) -> Result<ResponsePlan, Failure> {
    loop {
        if !buffer.is_empty() {
            match plan_response(buffer.filled(), out, close, relay, false) {
                Ok(Some(plan)) => return Ok(plan),
                Ok(None) if buffer.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadGateway("response head too large".to_string()));
                }
                Ok(None) => {}
                Err(bad) => return Err(Failure::BadGateway(bad.to_string())),
            }
        }
        let watched = client.as_ref().map(|(stream, _)| *stream);
        let read = tokio::select! {
            biased;
            read = read_into(upstream, buffer) => read,
            () = cancelled.as_mut() => return Err(Failure::Cancelled),
            () = timer.expired() => return Err(Failure::Timeout),
            ready = readable(watched) => {
                let Some((stream, input)) = client.as_mut() else { continue };
                match ready.and_then(|()| stream.try_read_buf(input.room())) {
                    Ok(0) => return Err(Failure::ClientGone("the client closed the connection before the answer")),
                    Ok(_) => client = None,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(Failure::ClientGone("the client connection failed before the answer")),
                }
                continue;
            }
        };
        match read {
            Ok(0) => return Err(Failure::BadGateway("the target closed the connection".to_string())),
            Ok(_) => {}
            Err(error) => return Err(Failure::BadGateway(format!("reading the response: {error}"))),
        }
    }
}

/// Parses a response head (one pass) and plans its relay; unless the body is to be buffered first (or is
/// too large), also writes the client's version of the head into `out` and, for a final head, records the
/// request (metrics, access log), as the hyper path does once the response head is ready. `buffered`: the
/// body is in memory now; write the head whatever the options say.
fn plan_response(
    input: &[u8],
    out: &mut Vec<u8>,
    close: bool,
    relay: &Relay<'_>,
    buffered: bool,
) -> Result<Option<ResponsePlan>, http1::BadResponse> {
    let exchange = relay.exchange;
    let mut headers = http1::header_slots();
    let Some((head, headers)) = http1::parse_response(input, &mut headers, exchange.head_request)? else {
        return Ok(None);
    };
    let options = &exchange.service.options;
    let (mut buffer_len, mut too_large) = (None, false);
    if let (true, false, false, Framing::Length(length)) =
        (options.buffer_responses, buffered, head.event_stream, head.framing)
    {
        let limit = if options.max_response_body > 0 { options.max_response_body } else { options.buffer_memory };
        if length <= limit {
            buffer_len = Some(head.head_len + length as usize);
        } else {
            too_large = options.max_response_body > 0;
        }
    }
    let head_written = buffer_len.is_none() && !too_large;
    if head_written {
        out.clear();
        http1::write_response_head(out, &head, headers, close);
        if !head.is_informational() {
            let length = match head.framing {
                Framing::Length(length) => length,
                _ => 0,
            };
            record(relay, head.status, None, &Headers(headers), length);
        }
    }
    Ok(Some(ResponsePlan {
        body: BodyProgress::new(head.framing),
        reusable: head.reusable,
        buffer_len,
        too_large,
        informational: head.is_informational(),
        head_len: head.head_len,
        head_written,
    }))
}

/// Answers the client with the proxy's own error page (or nobody, when the client has gone).
async fn answer_failure<C: ClientIo>(
    client: &mut C,
    out: &mut Vec<u8>,
    exchange: &Exchange,
    shared: &Shared,
    info: &ConnectionInfo,
    failure: Failure,
    close: bool,
) -> bool {
    let options = &exchange.service.options;
    let client_gone = matches!(failure, Failure::ClientGone(_));
    let (status, error) = match failure {
        Failure::BadGateway(error) => (StatusCode::BAD_GATEWAY, error),
        Failure::ClientGone(why) => (StatusCode::BAD_GATEWAY, why.to_string()),
        Failure::Timeout => {
            (StatusCode::GATEWAY_TIMEOUT, format!("no response headers within {:?}", options.target_timeout))
        }
        Failure::Cancelled => (StatusCode::GATEWAY_TIMEOUT, "cancelled: the target's drain timed out".to_string()),
        Failure::BadRequest => (StatusCode::BAD_REQUEST, "malformed chunked request body".to_string()),
        Failure::ResponseTooLarge => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("response body over --max-response-body ({})", options.max_response_body),
        ),
    };
    let body = forward::page_body(Some(&exchange.service), status, None);
    let relay = Relay { exchange, shared, info };
    record(&relay, status.as_u16(), Some(&error), &PageHeaders, body.len() as u64);
    if client_gone {
        return false;
    }
    out.clear();
    http1::write_own_response(out, status.as_u16(), PageHeaders::CONTENT_TYPE, &body, close);
    client.send_all(out).await.is_ok() && !close
}

/// Metrics and the access log line of a request, when its response head is known (as on the hyper path).
fn record(
    relay: &Relay<'_>,
    status: u16,
    error: Option<&str>,
    response_headers: &dyn HeaderLookup,
    resp_content_length: u64,
) {
    let exchange = relay.exchange;
    let service = &exchange.service;
    relay.shared.metrics.request_finished(service.id, exchange.method, status, exchange.started.elapsed());
    if let Some(log) = &exchange.log {
        let outcome = LogOutcome {
            host: &log.host,
            request_id: &log.request_id,
            status,
            service: Some(service),
            target: Some(exchange.claim.target()),
            error,
            response_headers,
            resp_content_length,
        };
        forward::log_access(&log.details, relay.info, exchange.started, outcome);
    }
}

/// The headers of the proxy's own pages, for the access log.
struct PageHeaders;

impl PageHeaders {
    const CONTENT_TYPE: &'static str = "text/html; charset=utf-8";
}

impl HeaderLookup for PageHeaders {
    fn first(&self, name: &str) -> Option<&str> {
        name.eq_ignore_ascii_case("content-type").then_some(PageHeaders::CONTENT_TYPE)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Socket I/O

/// The client side of a fast-path connection: plain TCP, or TLS over TCP (HTTP/1.1 by ALPN).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The stream may hold input already read from the socket (TLS: decrypted bytes), so a read is tried
    /// before waiting for the socket.
    const HOLDS_INPUT: bool;

    /// Resolves when the socket under the connection is readable.
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes all of `data` out (through to the socket).
    fn send_all(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// The socket itself when it carries the bytes as they are (plain TCP), so that it can be watched for
    /// the client's close while an answer is awaited.
    fn plain(&self) -> Option<&TcpStream>;
}

impl ClientIo for TcpStream {
    const HOLDS_INPUT: bool = false;

    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }

    fn send_all(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        write_all(self, data)
    }

    fn plain(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    const HOLDS_INPUT: bool = true;

    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.get_ref().0.readable()
    }

    async fn send_all(&mut self, data: &[u8]) -> io::Result<()> {
        // rustls keeps what is written until flushed.
        tokio::io::AsyncWriteExt::write_all(self, data).await?;
        tokio::io::AsyncWriteExt::flush(self).await
    }

    fn plain(&self) -> Option<&TcpStream> {
        None
    }
}

/// Reads what is there into `buffer`'s free space, waiting if nothing is. Through `AsyncRead`, so a short
/// read clears tokio's readiness and the next wait goes straight to epoll (no extra `read` returning EAGAIN).
async fn read_into<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Buffer) -> io::Result<usize> {
    stream.read_buf(buffer.room()).await
}

/// Resolves when `stream` is readable; never, without one.
async fn readable(stream: Option<&TcpStream>) -> io::Result<()> {
    match stream {
        Some(stream) => stream.readable().await,
        None => std::future::pending().await,
    }
}

/// One read attempt: `None` if nothing was there after all (readiness can be stale).
async fn read_now<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Buffer) -> Option<io::Result<usize>> {
    let mut read = std::pin::pin!(stream.read_buf(buffer.room()));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Pending => Poll::Ready(None),
        Poll::Ready(result) => Poll::Ready(Some(result)),
    })
    .await
}

/// Writes all of `data`, waiting for room as needed; needs only a shared reference, so it can race a wait
/// for the same socket's readability.
async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => data = &data[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Timers

/// A deadline that is cheap to move on every request: its timer is re-armed only when it fires early (or a
/// sooner deadline is set), instead of being re-registered per request.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    deadline: tokio::time::Instant,
}

impl Timer {
    fn new(timeout: Duration) -> Timer {
        let deadline = tokio::time::Instant::now() + timeout;
        Timer { sleep: Box::pin(tokio::time::sleep_until(deadline)), deadline }
    }

    fn arm(&mut self, deadline: Instant) {
        self.deadline = deadline.into();
        if self.deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= self.deadline {
                return;
            }
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Buffers

thread_local! {
    /// Free read buffers (zero-filled once, at creation) and write buffers of this worker.
    static READ_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer from the worker's pool, given back on drop. The bytes of `data` from `start` on are
/// unread; reads append to `data` in its spare capacity (never zero-filled: a fresh 16 KiB `memset` per
/// buffer showed in profiles whenever more exchanges were in flight than the pool holds).
struct Buffer {
    data: Vec<u8>,
    start: usize,
}

impl Buffer {
    fn take() -> Buffer {
        let data = READ_BUFFERS.with(|pool| pool.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE));
        Buffer { data, start: 0 }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    fn consume(&mut self, count: usize) {
        self.start += count;
        if self.start == self.data.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.data.clear();
    }

    /// Moves the unread bytes to the front.
    fn compact(&mut self) {
        self.data.drain(..self.start);
        self.start = 0;
    }

    /// Room for `total` bytes of unread data.
    fn reserve(&mut self, total: usize) {
        if self.data.capacity() - self.start < total {
            self.compact();
            self.data.reserve(total - self.data.len());
        }
    }

    /// The next read needs a larger vector (no free capacity, and no consumed bytes to move out).
    fn will_grow(&self) -> bool {
        self.data.len() == self.data.capacity() && self.start == 0
    }

    /// The vector to read into, with free capacity after the unread bytes (moved to the front, or the
    /// buffer grown, when there is none).
    fn room(&mut self) -> &mut Vec<u8> {
        if self.data.len() == self.data.capacity() {
            if self.start > 0 {
                self.compact();
            } else {
                self.data.reserve(self.data.capacity().max(BUFFER_SIZE));
            }
        }
        &mut self.data
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.data.capacity() <= 2 * BUFFER_SIZE {
            let mut data = std::mem::take(&mut self.data);
            data.clear();
            READ_BUFFERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOLED_BUFFERS {
                    pool.push(data);
                }
            });
        }
    }
}

/// The buffer a connection assembles outgoing heads in: taken from the pool for the duration of an
/// exchange, given back while the connection is idle.
struct OutBuffer(Option<Vec<u8>>);

impl OutBuffer {
    fn take() -> OutBuffer {
        OutBuffer(None)
    }

    fn get(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(|| {
            WRITE_BUFFERS.with(|pool| pool.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
        })
    }

    fn release(&mut self) {
        if let Some(mut data) = self.0.take()
            && data.capacity() <= 4 * BUFFER_SIZE
        {
            data.clear();
            WRITE_BUFFERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOLED_BUFFERS {
                    pool.push(data);
                }
            });
        }
    }
}

impl Drop for OutBuffer {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_keep_unread_bytes_and_grow_for_long_heads() {
        let mut buffer = Buffer::take();
        buffer.room().extend_from_slice(b"hello");
        buffer.consume(2);
        assert_eq!(buffer.filled(), b"llo");
        let full = buffer.data.capacity() - buffer.data.len();
        buffer.room().extend(std::iter::repeat_n(b'x', full));
        let room = buffer.room();
        assert!(room.capacity() > room.len(), "room made");
        assert_eq!(&buffer.filled()[..3], b"llo");
        let long = buffer.len() + BUFFER_SIZE;
        buffer.reserve(long);
        assert!(buffer.data.capacity() - buffer.start >= long);
        buffer.consume(buffer.len());
        assert!(buffer.is_empty());
    }

    /// Every idle keep-alive connection is one of these futures (plus its socket): the exchange state is
    /// boxed per request so it does not count here (768 bytes at the time of writing, 1,944 unboxed).
    #[tokio::test]
    async fn an_idle_connection_is_a_small_future() {
        let acme = crate::proxy::tls::acme::AcmeManager::new(String::new(), None, None, None);
        let certs = Arc::new(crate::proxy::tls::CertStore::new(acme));
        let shared = Shared {
            router: Arc::new(crate::proxy::router::Router::new(None, 1, certs)),
            metrics: Arc::new(crate::proxy::observability::Metrics::new(1)),
            access_log: false,
            https_port: 0,
            body_read_timeout: Duration::from_secs(1),
            head_limits: http1::HeadLimits::default(),
            header_timeout: Duration::from_secs(30),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let info = ConnectionInfo::new(client.local_addr().unwrap(), 80, false);
        let (_stop, shutdown) = watch::channel(false);
        let connection = serve(client, &info, &shared, Duration::from_secs(60), &shutdown);
        let size = std::mem::size_of_val(&connection);
        eprintln!("idle connection future: {size} bytes");
        assert!(size <= 1024, "the connection future grew to {size} bytes");
    }
}
