//! One request's trip through the proxy: route, pause gate, claim a target, rewrite headers, forward
//! (buffered or streamed, WebSocket upgrades tunnelled), and map failures to 404/413/502/503/504.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::http1::HeadLimits;
use super::observability::{self, AccessLogLine, Metrics, method_index};
use super::router::{Admission, Router, Service, TargetGroup};
use super::target::{BoxError, InFlight, Target, UpstreamBody, UpstreamError, buffer_body};

/// What the request path shares: the routing table, metrics and listener facts.
pub struct Shared {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    /// The HTTPS port redirects point to.
    pub https_port: u16,
    /// Longest wait for a request body when buffering it.
    pub body_read_timeout: Duration,
    /// Limits on request heads, on both paths.
    pub head_limits: HeadLimits,
    /// Time allowed for a request head once its first byte arrived (then 408).
    pub header_timeout: Duration,
}

/// Facts about the client connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub client: SocketAddr,
    pub local_port: u16,
    pub tls: bool,
    /// The client's IP as a header value, made once per connection for X-Forwarded-For.
    pub client_ip: HeaderValue,
}

impl ConnectionInfo {
    pub fn new(client: SocketAddr, local_port: u16, tls: bool) -> ConnectionInfo {
        let client_ip = HeaderValue::from_str(&client.ip().to_string()).unwrap_or(HeaderValue::from_static("0.0.0.0"));
        ConnectionInfo { client, local_port, tls, client_ip }
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1, as Go's ReverseProxy drops).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");

/// How many times a request retries when its target started draining between lookup and claim.
pub(crate) const CLAIM_ATTEMPTS: usize = 8;

/// Handles one request; never fails (errors become error pages).
pub async fn handle(
    shared: Arc<Shared>,
    connection: ConnectionInfo,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let request_id = match request.headers().get(&X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => new_request_id(),
    };
    let mut record = RequestRecord::new(&request, connection, started, request_id, shared.access_log);
    let response = route_and_forward(&shared, request, &mut record).await;
    if let Some(service) = &record.service {
        shared.metrics.request_finished(service.id, record.method, response.status().as_u16(), started.elapsed());
    }
    if shared.access_log {
        record.log(&response);
    }
    Ok(response)
}

async fn route_and_forward(
    shared: &Shared,
    mut request: Request<Incoming>,
    record: &mut RequestRecord,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    if !record.connection.tls
        && let Some(token) = path.strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = shared.router.certs.acme.http01_response(token)
    {
        return text_response(StatusCode::OK, Bytes::from(answer));
    }
    let mut attempts = 0;
    let (service, claim, strip_len) = loop {
        attempts += 1;
        let (service, redirect_to_https, prefix_len) = {
            let table = shared.router.table();
            match table.find(record.host(), request.uri().path()) {
                Some(route) => (Arc::clone(&route.service), route.redirect_to_https, route.prefix.len()),
                None => return page(None, StatusCode::NOT_FOUND, None),
            }
        };
        if record.service.is_none() {
            record.service = Some(Arc::clone(&service));
            shared.metrics.request_started(service.id);
        }
        let connection = &record.connection;
        if redirect_to_https && !connection.tls {
            return redirect(&format!(
                "https://{}{}{}",
                host_without_port(record.host()),
                port_suffix(shared.https_port),
                path_and_query(request.uri())
            ));
        }
        if let Some(canonical) = &service.options.canonical_host
            && host_without_port(record.host()) != canonical
        {
            let scheme = if connection.tls || redirect_to_https { "https" } else { "http" };
            return redirect(&format!("{scheme}://{canonical}{}", path_and_query(request.uri())));
        }
        if !service.pause.is_running() {
            let is_health_check = matches!(*request.method(), Method::GET | Method::HEAD)
                && request.uri().path() == service.options.health_check.path;
            if is_health_check {
                return text_response(StatusCode::OK, Bytes::from_static(b"OK"));
            }
            // Rare paths are boxed so the common path's future (kept per connection by hyper) stays small.
            match Box::pin(service.pause.admit()).await {
                Admission::Proceed => {}
                Admission::Stopped(message) => {
                    return page(Some(&service), StatusCode::SERVICE_UNAVAILABLE, Some(&message));
                }
                Admission::PauseExpired => return page(Some(&service), StatusCode::GATEWAY_TIMEOUT, None),
            }
            if attempts < CLAIM_ATTEMPTS {
                continue;
            }
        }
        let group = choose_group(&service, request.headers());
        if !group.is_admitted() && !Box::pin(group.wait_admitted()).await {
            return page(
                Some(&service),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The service is starting; try again shortly."),
            );
        }
        let strip_len = if service.options.strip_path_prefix && prefix_len > 1 { prefix_len } else { 0 };
        match group.pick().try_claim() {
            Some(claim) => break (service, claim, strip_len),
            None if attempts < CLAIM_ATTEMPTS => continue,
            None => return page(Some(&service), StatusCode::SERVICE_UNAVAILABLE, None),
        }
    };
    let target = Arc::clone(claim.target());
    record.target = Some(Arc::clone(&target));
    record.note_request_headers(&service.options.log_request_headers, request.headers());
    target.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let wants_upgrade = is_upgrade_request(request.headers());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
    let options = &service.options;
    let (parts, body) = match upstream_parts(request, &service, strip_len, wants_upgrade, record) {
        Ok(parts_and_body) => parts_and_body,
        Err(status) => return page(Some(&service), status, None),
    };
    let upstream_request = if body.is_end_stream() {
        Request::from_parts(parts, UpstreamBody::Empty)
    } else if options.buffer_requests {
        // Boxed: buffering is the rare path, and its state would otherwise enlarge every request's future.
        match Box::pin(buffer_request(shared, parts, body, &service, record)).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    } else {
        Request::from_parts(parts, UpstreamBody::Stream { head: None, rest: body })
    };

    let outcome = tokio::time::timeout(options.target_timeout, send_upstream(&target, upstream_request)).await;
    let (mut response, sender) = match outcome {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) if target.is_cancelled() => {
            record.error = Some("cancelled: the target's drain timed out".to_string());
            return page(Some(&service), StatusCode::GATEWAY_TIMEOUT, None);
        }
        Ok(Err(error)) => {
            record.error = Some(error.to_string());
            // The client's own body broke off or broke its framing: the client's fault, and the target
            // never got a whole request.
            let status = if error.is_client_body() { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
            return page(Some(&service), status, None);
        }
        Err(_) => {
            record.error = Some(format!("no response headers within {:?}", options.target_timeout));
            return page(Some(&service), StatusCode::GATEWAY_TIMEOUT, None);
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(claim, client_upgrade, upstream_upgrade));
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, ProxyBody::empty());
    }

    let codings =
        response.headers().contains_key(header::TRANSFER_ENCODING).then(|| response_codings(response.headers()));
    strip_hop_by_hop(response.headers_mut(), false);
    if let Some(codings) = codings.flatten() {
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response.headers_mut().insert(header::TRANSFER_ENCODING, codings);
    }
    let is_stream = is_streaming_response(response.headers());
    if options.buffer_responses && !is_stream {
        let (parts, body) = response.into_parts();
        let limit = if options.max_response_body > 0 { options.max_response_body } else { options.buffer_memory };
        return match Box::pin(buffer_body(body, limit)).await {
            Ok((head, None)) => {
                if let Some(sender) = sender {
                    target.checkin(sender);
                }
                drop(claim);
                Response::from_parts(parts, ProxyBody::full(head))
            }
            Ok((_, Some(_))) if options.max_response_body > 0 => {
                record.error = Some(format!("response body over --max-response-body ({})", options.max_response_body));
                page(Some(&service), StatusCode::INTERNAL_SERVER_ERROR, None)
            }
            Ok((head, Some(rest))) => Response::from_parts(parts, ProxyBody::upstream(rest, Some(head), claim, sender)),
            Err(error) => {
                record.error = Some(error.to_string());
                page(Some(&service), StatusCode::BAD_GATEWAY, None)
            }
        };
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, ProxyBody::upstream(body, None, claim, sender))
}

/// The rollout slot when the request's `kamal-rollout` cookie is selected by the split, else the active one.
fn choose_group<'a>(service: &'a Service, headers: &HeaderMap) -> &'a Arc<TargetGroup> {
    choose_group_by_cookies(service, headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes))
}

/// [`choose_group`] over the values of the request's `Cookie` headers.
pub(crate) fn choose_group_by_cookies<'a, 'c>(
    service: &'a Service,
    cookie_headers: impl Iterator<Item = &'c [u8]>,
) -> &'a Arc<TargetGroup> {
    if let (Some(rollout), Some(split)) = (&service.rollout, &service.rollout_split) {
        for cookies in cookie_headers {
            let Ok(cookies) = std::str::from_utf8(cookies) else { continue };
            for cookie in cookies.split(';') {
                if let Some(value) = cookie.trim().strip_prefix("kamal-rollout=")
                    && split.selects(value)
                {
                    return rollout;
                }
            }
        }
    }
    &service.active
}

/// The request head to send upstream (forwarding headers set, hop-by-hop headers removed, prefix stripped),
/// and the client's body. Not async, so it adds nothing to the request's future.
fn upstream_parts(
    request: Request<Incoming>,
    service: &Service,
    strip_len: usize,
    wants_upgrade: bool,
    record: &mut RequestRecord,
) -> Result<(http::request::Parts, Incoming), StatusCode> {
    let options = &service.options;
    let connection = &record.connection;
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers, wants_upgrade);
    set_request_framing(&mut parts.headers, &body);
    if wants_upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let headers = &mut parts.headers;
    // Room for the forwarding headers below, so the map grows once rather than several times.
    headers.reserve(6);
    if !headers.contains_key(header::HOST) && !record.host.is_empty() {
        headers.insert(header::HOST, record.host.clone());
    }
    // One hash per header: the entry API finds and replaces (or keeps) in a single lookup.
    let trust = options.trusts_forwarded_headers();
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut existing) if trust => {
            let chained = existing.get().to_str().ok().map(|v| format!("{v}, {}", connection.client.ip()));
            if let Some(value) = chained.and_then(|v| HeaderValue::from_str(&v).ok()) {
                existing.insert(value);
            }
        }
        Entry::Occupied(mut existing) => {
            existing.insert(connection.client_ip.clone());
        }
        Entry::Vacant(vacant) => {
            vacant.insert(connection.client_ip.clone());
        }
    }
    let scheme = HeaderValue::from_static(if connection.tls { "https" } else { "http" });
    match headers.entry(X_FORWARDED_PROTO) {
        Entry::Occupied(_) if trust => {}
        Entry::Occupied(mut existing) => {
            existing.insert(scheme);
        }
        Entry::Vacant(vacant) => {
            vacant.insert(scheme);
        }
    }
    if !record.host.is_empty() {
        match headers.entry(X_FORWARDED_HOST) {
            Entry::Occupied(_) if trust => {}
            Entry::Occupied(mut existing) => {
                existing.insert(record.host.clone());
            }
            Entry::Vacant(vacant) => {
                vacant.insert(record.host.clone());
            }
        }
    }
    headers.insert(X_REQUEST_ID, record.request_id.clone());
    if let Entry::Vacant(vacant) = headers.entry(X_REQUEST_START) {
        vacant.insert(request_start_header());
    }

    // Origin-form requests to a root-path service go out with their URI untouched (no allocation).
    if strip_len > 0 || parts.uri.scheme().is_some() {
        let path = parts.uri.path();
        let upstream_path = if strip_len > 0 && path.len() >= strip_len { &path[strip_len..] } else { path };
        let upstream_path = if upstream_path.is_empty() { "/" } else { upstream_path };
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{upstream_path}?{query}"),
            None => upstream_path.to_string(),
        };
        parts.uri = match Uri::builder().path_and_query(path_and_query).build() {
            Ok(uri) => uri,
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        };
    }
    parts.version = Version::HTTP_11;

    Ok((parts, body))
}

/// Writes the framing berth relays for the client's body, whatever the client's headers said: the length
/// hyper decoded, or `Transfer-Encoding: chunked` (hyper's client would otherwise send a GET's chunked body
/// as no body at all). A `Content-Length: 0` the client sent is kept.
fn set_request_framing(headers: &mut HeaderMap, body: &Incoming) {
    let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
    headers.remove(header::TRANSFER_ENCODING);
    match body.size_hint().exact() {
        Some(0) if !had_length => {}
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
    }
}

/// A response's transfer codings other than `chunked` (e.g. `gzip`), to send on: hyper decodes the
/// chunking and chunks again, adding `chunked` after the codings kept.
fn response_codings(headers: &HeaderMap) -> Option<HeaderValue> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|coding| coding.trim_matches([' ', '\t']))
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("chunked"))
        .collect();
    if codings.is_empty() { None } else { HeaderValue::from_str(&codings.join(", ")).ok() }
}

/// Reads the request body before contacting the target (`--buffer-requests`), up to the limit.
async fn buffer_request(
    shared: &Shared,
    mut parts: http::request::Parts,
    body: Incoming,
    service: &Service,
    record: &mut RequestRecord,
) -> Result<Request<UpstreamBody>, Response<ProxyBody>> {
    let options = &service.options;
    let limit = if options.max_request_body > 0 { options.max_request_body } else { options.buffer_memory };
    let body = match tokio::time::timeout(shared.body_read_timeout, buffer_body(body, limit)).await {
        Ok(Ok((head, None))) => {
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(head.len()));
            UpstreamBody::Full(Some(head))
        }
        Ok(Ok((_, Some(_)))) if options.max_request_body > 0 => {
            return Err(page(Some(service), StatusCode::PAYLOAD_TOO_LARGE, None));
        }
        Ok(Ok((head, Some(rest)))) => UpstreamBody::Stream { head: Some(head), rest },
        Ok(Err(error)) => {
            record.error = Some(format!("reading the request body: {error}"));
            return Err(page(Some(service), StatusCode::BAD_REQUEST, None));
        }
        Err(_) => {
            record.error = Some("request body not received in time".to_string());
            return Err(page(Some(service), StatusCode::REQUEST_TIMEOUT, None));
        }
    };
    Ok(Request::from_parts(parts, body))
}

/// Sends on a pooled connection; a request the pool's connection could not take (it had just closed) is
/// retried once on a fresh connection, which is safe because it never reached the target.
async fn send_upstream(
    target: &Target,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<UpstreamBody>>), UpstreamError> {
    let is_upgrade = request.headers().contains_key(header::UPGRADE);
    let mut sender = match target.checkout_idle() {
        Some(sender) => sender,
        None => Box::pin(target.checkout()).await?,
    };
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message() {
            Some(request) => {
                sender = Box::pin(target.connect()).await?;
                sender.send_request(request).await.map_err(UpstreamError::Request)?
            }
            None => return Err(UpstreamError::Request(error.into_error())),
        },
    };
    // An upgraded connection belongs to its tunnel; it never goes back to the pool.
    Ok((response, (!is_upgrade).then_some(sender)))
}

/// Pipes an upgraded (WebSocket) connection both ways until either side closes or a drain closes it.
async fn tunnel(claim: InFlight, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let cancelled = claim.target().upgrades_cancelled();
    let (Ok(client), Ok(upstream)) = futures_util::future::join(client, upstream).await else { return };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = cancelled => {}
    }
    drop(claim);
}

fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// SSE and other open-ended streams are never buffered (kamal-proxy#46).
fn is_streaming_response(headers: &HeaderMap) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    event_stream || !headers.contains_key(header::CONTENT_LENGTH)
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the (few) names, comparing standard names by
    // value, is cheaper than hashing each hop-by-hop name for a removal that finds nothing.
    let is_hop = |name: &HeaderName| HOP_BY_HOP.contains(name) || (!keep_upgrade && name == header::UPGRADE);
    if !headers.keys().any(is_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION).and_then(|v| v.to_str().ok()) {
        // Framing and host are never the sender's to remove (`Connection: Content-Length` was a smuggling
        // vector): berth decides and writes the framing itself.
        let named: Vec<HeaderName> = connection
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .filter(|name| ![header::CONTENT_LENGTH, header::HOST].contains(name))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

pub(crate) fn host_without_port(host: &str) -> &str {
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

fn port_suffix(port: u16) -> String {
    if port == 443 { String::new() } else { format!(":{port}") }
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn redirect(location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The proxy's own HTML page for `status` (the service's custom page when it has one).
fn page(service: Option<&Service>, status: StatusCode, message: Option<&str>) -> Response<ProxyBody> {
    let body = page_body(service, status, message);
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The HTML of the proxy's own page for `status` (the service's custom page when it has one).
pub(crate) fn page_body(service: Option<&Service>, status: StatusCode, message: Option<&str>) -> Bytes {
    match service {
        Some(service) => service.pages.render(status, message),
        None => super::pages::builtin(status, message.unwrap_or("")),
    }
}

/// A response body: the proxy's own (full) or a target's, streamed through while holding its claim.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(UpstreamResponse),
}

/// A target's response body, with the request's claim on the target and the connection to return.
pub struct UpstreamResponse {
    head: Option<Bytes>,
    body: Incoming,
    claim: Option<InFlight>,
    sender: Option<SendRequest<UpstreamBody>>,
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    pub fn full(data: Bytes) -> ProxyBody {
        ProxyBody::Full(if data.is_empty() { None } else { Some(data) })
    }

    fn upstream(
        body: Incoming,
        head: Option<Bytes>,
        claim: InFlight,
        sender: Option<SendRequest<UpstreamBody>>,
    ) -> ProxyBody {
        let mut upstream = UpstreamResponse { head, body, claim: Some(claim), sender };
        if upstream.head.is_none() && upstream.body.is_end_stream() {
            upstream.finish();
        }
        ProxyBody::Upstream(upstream)
    }
}

impl UpstreamResponse {
    /// The body was read to its end: the connection can serve another request, and the request is done.
    fn finish(&mut self) {
        if let (Some(sender), Some(claim)) = (self.sender.take(), self.claim.as_ref()) {
            claim.target().checkin(sender);
        }
        self.claim = None;
    }
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let upstream = match self.get_mut() {
            ProxyBody::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(upstream) => upstream,
        };
        if let Some(head) = upstream.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        match Pin::new(&mut upstream.body).poll_frame(cx) {
            Poll::Ready(None) => {
                upstream.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if upstream.body.is_end_stream() {
                    upstream.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                upstream.sender = None;
                upstream.claim = None;
                Poll::Ready(Some(Err(error.into())))
            }
            // A body still streaming when its target's drain times out fails here: the drain aborts the
            // target's connections.
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream(upstream) => upstream.head.is_none() && upstream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream(upstream) => {
                let head = upstream.head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = upstream.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + head);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

/// What the access log and metrics need to know about a request, gathered along the way.
struct RequestRecord {
    started: Instant,
    /// The Host header (or HTTP/2 authority), shared with the request's own bytes.
    host: HeaderValue,
    method: u8,
    connection: ConnectionInfo,
    request_id: HeaderValue,
    service: Option<Arc<Service>>,
    target: Option<Arc<Target>>,
    error: Option<String>,
    /// Collected only when the access log is on.
    details: Option<Box<LogDetails>>,
}

/// Header values by name (case-insensitive), from a `HeaderMap` or from a head parsed by the fast path, so
/// both request paths share the access log code.
pub(crate) trait HeaderLookup {
    /// The first value of header `name`, if it is valid text.
    fn first(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for HeaderMap {
    fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The request's side of an access log line (collected only when the access log is on).
pub(crate) struct LogDetails {
    path: String,
    query: String,
    method: String,
    proto: &'static str,
    req_content_length: u64,
    req_content_type: String,
    user_agent: String,
    remote_addr: String,
    extra: std::collections::BTreeMap<String, String>,
}

impl LogDetails {
    pub(crate) fn new(
        path: &str,
        query: &str,
        method: &str,
        proto: &'static str,
        headers: &dyn HeaderLookup,
        connection: &ConnectionInfo,
    ) -> LogDetails {
        let text = |name: &str| headers.first(name).unwrap_or("").to_string();
        LogDetails {
            path: path.to_string(),
            query: query.to_string(),
            method: method.to_string(),
            proto,
            req_content_length: headers.first("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
            req_content_type: text("content-type"),
            user_agent: text("user-agent"),
            remote_addr: headers
                .first("x-forwarded-for")
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| connection.client.ip().to_string()),
            extra: std::collections::BTreeMap::new(),
        }
    }

    /// Keeps `--log-request-header` values (as `req_<name>`, lowercase with `_`, like kamal-proxy).
    pub(crate) fn note_request_headers(&mut self, names: &[String], headers: &dyn HeaderLookup) {
        for name in names {
            if let Some(value) = headers.first(name) {
                self.extra.insert(format!("req_{}", name.to_ascii_lowercase().replace('-', "_")), value.to_string());
            }
        }
    }
}

/// What a finished request adds to its access log line.
pub(crate) struct LogOutcome<'a> {
    pub host: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    pub service: Option<&'a Service>,
    pub target: Option<&'a Target>,
    pub error: Option<&'a str>,
    pub response_headers: &'a dyn HeaderLookup,
    pub resp_content_length: u64,
}

/// Writes one access log line (kamal-proxy's fields).
pub(crate) fn log_access(details: &LogDetails, connection: &ConnectionInfo, started: Instant, outcome: LogOutcome<'_>) {
    let time = observability::now_rfc3339();
    let client_addr = connection.client.ip().to_string();
    let mut extra = details.extra.clone();
    if let Some(service) = outcome.service {
        for name in &service.options.log_response_headers {
            if let Some(value) = outcome.response_headers.first(name) {
                extra.insert(format!("resp_{}", name.to_ascii_lowercase().replace('-', "_")), value.to_string());
            }
        }
    }
    if let Some(error) = outcome.error {
        extra.insert("error".to_string(), error.to_string());
    }
    let line = AccessLogLine {
        time: &time,
        level: if outcome.status >= 500 { "WARN" } else { "INFO" },
        msg: "Request",
        host: host_without_port(outcome.host),
        port: connection.local_port,
        path: &details.path,
        query: &details.query,
        method: &details.method,
        proto: details.proto,
        scheme: if connection.tls { "https" } else { "http" },
        request_id: outcome.request_id,
        status: outcome.status,
        service: outcome.service.map_or("", |s| s.name.as_str()),
        target: outcome.target.map_or("", |t| t.address.as_str()),
        duration: started.elapsed().as_nanos() as u64,
        req_content_length: details.req_content_length,
        req_content_type: &details.req_content_type,
        resp_content_length: outcome.resp_content_length,
        resp_content_type: outcome.response_headers.first("content-type").unwrap_or(""),
        client_addr: &client_addr,
        client_port: connection.client.port(),
        remote_addr: &details.remote_addr,
        user_agent: &details.user_agent,
        extra,
    };
    observability::log_request(&line);
}

impl RequestRecord {
    fn new(
        request: &Request<Incoming>,
        connection: ConnectionInfo,
        started: Instant,
        request_id: HeaderValue,
        access_log: bool,
    ) -> RequestRecord {
        let headers = request.headers();
        let host = match headers.get(header::HOST) {
            Some(host) => host.clone(),
            None => request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or(HeaderValue::from_static("")),
        };
        let details = access_log.then(|| {
            let proto = match request.version() {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            let uri = request.uri();
            let method = request.method().as_str();
            Box::new(LogDetails::new(uri.path(), uri.query().unwrap_or(""), method, proto, headers, &connection))
        });
        RequestRecord {
            started,
            host,
            method: method_index(request.method()),
            connection,
            request_id,
            service: None,
            target: None,
            error: None,
            details,
        }
    }

    fn host(&self) -> &str {
        self.host.to_str().unwrap_or("")
    }

    fn note_request_headers(&mut self, names: &[String], headers: &HeaderMap) {
        if let Some(details) = &mut self.details {
            details.note_request_headers(names, headers);
        }
    }

    fn log(&self, response: &Response<ProxyBody>) {
        let Some(details) = &self.details else { return };
        let outcome = LogOutcome {
            host: self.host(),
            request_id: self.request_id.to_str().unwrap_or(""),
            status: response.status().as_u16(),
            service: self.service.as_deref(),
            target: self.target.as_deref(),
            error: self.error.as_deref(),
            response_headers: response.headers(),
            resp_content_length: response.body().size_hint().exact().unwrap_or(0),
        };
        log_access(details, &self.connection, self.started, outcome);
    }
}

thread_local! {
    /// Small per-request header values are carved from one shared buffer per thread, so making them
    /// costs a reference count instead of an allocation each.
    static HEADER_ARENA: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A header value holding `text` (valid header bytes), carved from the thread's arena.
fn arena_header(text: &[u8]) -> HeaderValue {
    const ARENA_SIZE: usize = 64 * 1024;
    HEADER_ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() < text.len() {
            *arena = bytes::BytesMut::with_capacity(ARENA_SIZE);
        }
        arena.extend_from_slice(text);
        let bytes = arena.split_to(text.len()).freeze();
        HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("-"))
    })
}

/// `t=<milliseconds since the epoch>` (Heroku/New Relic queue-time convention, as kamal-proxy sends it).
fn request_start_header() -> HeaderValue {
    let (text, length) = request_start_text();
    arena_header(&text[..length])
}

/// The text of an `X-Request-Start` value and its length, without allocating.
pub(crate) fn request_start_text() -> ([u8; 22], usize) {
    let mut millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (millis % 10) as u8;
        millis /= 10;
        if millis == 0 {
            break;
        }
    }
    let mut text = [0u8; 22];
    text[..2].copy_from_slice(b"t=");
    let length = digits.len() - start;
    text[2..2 + length].copy_from_slice(&digits[start..]);
    (text, 2 + length)
}

thread_local! {
    static REQUEST_ID_STATE: Cell<(u64, u64)> = Cell::new(seed_request_ids());
}

fn seed_request_ids() -> (u64, u64) {
    let mut seed = [0u8; 16];
    if getrandom::fill(&mut seed).is_err() {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        seed = nanos.to_le_bytes();
    }
    let a = u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()) | 1;
    let b = u64::from_le_bytes(seed[8..].try_into().unwrap_or_default()) | 1;
    (a, b)
}

/// A new request id as a header value, carved from the thread's arena.
fn new_request_id() -> HeaderValue {
    arena_header(&request_id_text())
}

/// A random UUID (version 4 layout) from a per-thread xorshift128+ seeded by the OS; unique, not secret.
pub(crate) fn request_id_text() -> [u8; 36] {
    let (high, low) = REQUEST_ID_STATE.with(|state| {
        let next = || {
            let (mut s1, s0) = state.get();
            s1 ^= s1 << 23;
            s1 ^= s1 >> 17;
            s1 ^= s0 ^ (s0 >> 26);
            state.set((s0, s1));
            s1.wrapping_add(s0)
        };
        (next(), next())
    });
    let id = ((high as u128) << 64 | low as u128) & !(0xF000u128 << 64) | (0x4000u128 << 64);
    let id = id & !(0xC000u128 << 48) | (0x8000u128 << 48);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    let mut nibble = 0;
    for (position, byte) in text.iter_mut().enumerate() {
        if matches!(position, 8 | 13 | 18 | 23) {
            continue;
        }
        *byte = HEX[((id >> (124 - 4 * nibble)) & 0xF) as usize];
        nibble += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "{text}");
    }

    #[test]
    fn hop_by_hop_headers_are_removed_but_upgrade_kept_for_websockets() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, upgrade"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade_request(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get(header::UPGRADE).is_some());
    }

    #[test]
    fn event_streams_and_unsized_bodies_are_streamed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(is_streaming_response(&headers));
        let mut sized = HeaderMap::new();
        sized.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(!is_streaming_response(&sized));
        assert!(is_streaming_response(&HeaderMap::new()));
    }
}
