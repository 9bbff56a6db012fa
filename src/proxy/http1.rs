//! HTTP/1.1 heads and body framing for the proxy: requests and responses parsed with `httparse` and checked
//! strictly (RFC 9112), rewritten for the next hop straight into an output buffer, and bodies delimited
//! (Content-Length, chunked, until close) as their bytes go by. Nothing here allocates or does I/O;
//! `fast_path` drives it, and `guard` applies the same rules to the bytes the hyper path reads.
//!
//! The one rule that keeps the proxy and its targets in step: framing is decided once, here, and every
//! message berth forwards carries exactly the framing berth relays — berth writes `Content-Length` or
//! `Transfer-Encoding` itself, and no `Connection` option can remove them (or `Host`). A request whose
//! framing or host is ambiguous is refused ([`Parsed::Invalid`]: 400 and close), never guessed at.
//!
//! Valid requests the fast path does not forward itself (HTTP/1.0, upgrades, `Expect`, absolute-form
//! targets) are marked [`RequestHead::needs_hyper`].

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use httparse::Header;

use super::forward::HeaderLookup;

/// Most header lines a head may have (`--max-header-count` can only lower it).
pub const MAX_HEADERS: usize = 256;

/// Room for a head's parsed headers, left uninitialized (httparse fills what it uses): zeroing the slots
/// for every head measured as the largest single cost in the proxy's user space.
pub type HeaderSlots<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

/// Empty [`HeaderSlots`].
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), as on the hyper path.
/// `Content-Length` and `Transfer-Encoding` are not forwarded either: berth writes the framing itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a `Connection` option never removes: the message's framing and its host are berth's to decide.
pub const NEVER_CONNECTION_OPTIONS: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Limits on a request head (`kamal-proxy run --max-header-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line or header line, without its line end.
    pub max_line: usize,
    /// Largest head, request line to the empty line.
    pub max_head: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits { max_line: 16 * 1024, max_head: 64 * 1024, max_headers: 100 }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (no length given on a request; HEAD, 1xx, 204, 304 responses).
    Empty,
    Length(u64),
    Chunked,
    /// A response body that ends when the target closes the connection.
    UntilClose,
}

/// A request berth refuses: the status to answer (then the connection is closed) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Refusal {
        Refusal { status: 400, reason }
    }
}

/// The outcome of parsing a request head from the bytes received so far.
#[derive(Debug)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed (none of the limits is exceeded yet).
    Partial,
    /// Answer with this refusal and close the connection.
    Invalid(Refusal),
}

/// The tokens of a message's `Connection` headers that matter to a proxy.
#[derive(Default, Debug)]
struct ConnectionTokens<'b> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Other tokens: the names of more hop-by-hop headers (RFC 9110 §7.6.1).
    named: [&'b str; 8],
    count: usize,
    overflow: bool,
}

impl<'b> ConnectionTokens<'b> {
    fn add(&mut self, value: &'b [u8]) {
        let Ok(value) = std::str::from_utf8(value) else {
            self.overflow = true;
            return;
        };
        for token in value.split(',').map(|t| t.trim_matches([' ', '\t'])).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                self.upgrade = true;
            } else if NEVER_CONNECTION_OPTIONS.iter().any(|n| token.eq_ignore_ascii_case(n)) {
                // Framing and host are not the client's to drop: berth writes them.
            } else if self.count < self.named.len() {
                self.named[self.count] = token;
                self.count += 1;
            } else {
                self.overflow = true;
            }
        }
    }

    /// Whether `name` must not be forwarded: hop-by-hop, framing (berth writes its own), or named by a
    /// `Connection` header.
    fn drops(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case("content-length")
            || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.named[..self.count].iter().any(|n| name.eq_ignore_ascii_case(n))
    }
}

/// The parsed headers of a head, for lookups by name (access log, cookies).
pub struct Headers<'h, 'b>(pub &'h [Header<'b>]);

impl HeaderLookup for Headers<'_, '_> {
    fn first(&self, name: &str) -> Option<&str> {
        let header = self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(header.value).ok()
    }
}

impl<'b> Headers<'_, 'b> {
    /// Every value of header `name`.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.0.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

/// A valid request head.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    /// The path, without the query.
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// The `Host` header's value (empty when an HTTP/1.0 request has none).
    pub host: &'b str,
    pub framing: Framing,
    /// The request's `Content-Length` (also when it is 0: some applications want it on every POST).
    pub content_length: Option<u64>,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// An upgrade (WebSocket) or CONNECT: after the request, the connection may become a tunnel.
    pub upgrade: bool,
    /// Valid, but for the hyper path (HTTP/1.0, an upgrade, `Expect`, a target not in origin form, an
    /// empty host, many `Connection` options).
    pub needs_hyper: bool,
    /// The client's own `X-Request-ID` (the first one), kept as the request's id.
    pub request_id: Option<&'b [u8]>,
    /// The length of the head, up to and including its empty line.
    pub head_len: usize,
    connection: ConnectionTokens<'b>,
}

/// Parses and checks a request head from the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    limits: &HeadLimits,
) -> Parsed<(RequestHead<'b>, &'h [Header<'b>])> {
    let mut request = httparse::Request::new(&mut []);
    let slots = &mut headers[..limits.max_headers.clamp(1, MAX_HEADERS)];
    let head_len = match request.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            if let Err(refusal) = check_lines(buf, limits, true) {
                return Parsed::Invalid(refusal);
            }
            if buf.len() >= limits.max_head {
                return Parsed::Invalid(Refusal { status: 431, reason: "request head over --max-header-size" });
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(Refusal { status: 431, reason: "more header lines than --max-header-count" });
        }
        Err(_) => {
            // A line too long is reported as such even when something else is also wrong with it.
            if let Err(refusal) = check_lines(buf, limits, true) {
                return Parsed::Invalid(refusal);
            }
            return Parsed::Invalid(Refusal::bad("malformed request head"));
        }
    };
    if head_len > limits.max_line
        && let Err(refusal) = check_lines(&buf[..head_len], limits, false)
    {
        return Parsed::Invalid(refusal);
    }
    if head_len > limits.max_head {
        return Parsed::Invalid(Refusal { status: 431, reason: "request head over --max-header-size" });
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Parsed::Invalid(Refusal::bad("malformed request line"));
    };
    if method == "CONNECT" {
        return Parsed::Invalid(Refusal { status: 405, reason: "CONNECT is not served by a reverse proxy" });
    }
    let mut needs_hyper = version == 0;
    // Origin form is forwarded here; absolute form and `*` are valid but the hyper path's.
    if !target.starts_with('/') {
        needs_hyper = true;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut host = None;
    let mut content_length = None;
    let mut chunked = false;
    let mut request_id = None;
    let mut connection = ConnectionTokens::default();
    let mut upgrade = false;
    let headers = request.headers;
    for header in headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::Invalid(Refusal::bad("more than one Host header"));
            }
            let Some(value) = std::str::from_utf8(header.value).ok().filter(|v| is_host(v.as_bytes())) else {
                return Parsed::Invalid(Refusal::bad("invalid Host header"));
            };
            host = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Parsed::Invalid(Refusal::bad("more than one Content-Length header"));
            }
            let Some(length) = parse_decimal(header.value) else {
                return Parsed::Invalid(Refusal::bad("invalid Content-Length header"));
            };
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only one, and only `chunked`: any other coding list cannot be relayed faithfully, and is how
            // smuggling attempts disguise themselves (RFC 9112 §6.1: the server responds 400 and closes).
            if chunked || version == 0 || !trim(header.value).eq_ignore_ascii_case(b"chunked") {
                return Parsed::Invalid(Refusal::bad("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(header.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = request_id.or(Some(header.value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            // WebSockets (a tunnel) are the hyper path's.
            upgrade = true;
            needs_hyper = true;
        } else if name.eq_ignore_ascii_case("expect") {
            // `Expect: 100-continue` (an interim answer) is the hyper path's.
            needs_hyper = true;
        }
    }
    if chunked && content_length.is_some() {
        return Parsed::Invalid(Refusal::bad("both Content-Length and Transfer-Encoding"));
    }
    let host = match host {
        Some(host) => host,
        None if version == 0 => "",
        None => return Parsed::Invalid(Refusal::bad("no Host header")),
    };
    if host.is_empty() || connection.upgrade || connection.overflow {
        needs_hyper = true;
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(length)) => Framing::Length(length),
    };
    let head = RequestHead {
        method,
        path,
        query,
        host,
        framing,
        content_length,
        close: connection.close || (version == 0 && !connection.keep_alive),
        upgrade: upgrade && connection.upgrade,
        needs_hyper,
        request_id,
        head_len,
        connection,
    };
    Parsed::Complete((head, headers))
}

/// Checks the length of every line in `head` (the request line first). `partial`: the last line may be
/// unfinished, and counts too.
fn check_lines(head: &[u8], limits: &HeadLimits, partial: bool) -> Result<(), Refusal> {
    if head.len() <= limits.max_line {
        return Ok(());
    }
    let mut first = true;
    let mut lines = head.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() && !partial {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > limits.max_line {
            return Err(if first {
                Refusal { status: 414, reason: "request line over --max-header-line-size" }
            } else {
                Refusal { status: 431, reason: "header line over --max-header-line-size" }
            });
        }
        first = false;
    }
    Ok(())
}

/// A `Host` value: a host name or IP literal with an optional port (RFC 3986 reg-name / IP-literal chars).
fn is_host(value: &[u8]) -> bool {
    value.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(b))
}

/// How a forwarded request is rewritten for its target.
pub struct Forwarding<'a> {
    /// The path to send (the prefix stripped, `/` when nothing is left).
    pub path: &'a str,
    /// Trust and extend the client's `X-Forwarded-*` headers (else replace them).
    pub trust: bool,
    pub client_ip: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    pub request_id: &'a [u8],
}

/// Writes the head to send to the target: hop-by-hop headers dropped, `X-Forwarded-For/Proto/Host`,
/// `X-Request-ID` and `X-Request-Start` set as on the hyper path, and the framing berth relays written by
/// berth (`Content-Length` or `Transfer-Encoding: chunked`).
pub fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    headers: &[Header<'_>],
    forwarding: &Forwarding<'_>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(forwarding.path.as_bytes());
    if let Some(query) = head.query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut forwarded_for, mut forwarded_proto, mut forwarded_host, mut request_start) = (false, false, false, false);
    for header in headers {
        let name = header.name;
        if head.connection.drops(name) || name.eq_ignore_ascii_case("x-request-id") {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Trusted: the first value is extended with the client's address (others are dropped, as the
            // hyper path's header map does); untrusted: replaced below.
            if forwarding.trust && !forwarded_for {
                forwarded_for = true;
                out.extend_from_slice(b"X-Forwarded-For: ");
                out.extend_from_slice(header.value);
                out.extend_from_slice(b", ");
                out.extend_from_slice(forwarding.client_ip.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-proto") || name.eq_ignore_ascii_case("x-forwarded-host") {
            if !forwarding.trust {
                continue;
            }
            if name.len() == "x-forwarded-proto".len() {
                forwarded_proto = true;
            } else {
                forwarded_host = true;
            }
        } else if name.eq_ignore_ascii_case("x-request-start") {
            request_start = true;
        }
        write_header(out, name.as_bytes(), header.value);
    }
    if !forwarded_for {
        write_header(out, b"X-Forwarded-For", forwarding.client_ip.as_bytes());
    }
    if !forwarded_proto {
        write_header(out, b"X-Forwarded-Proto", forwarding.scheme.as_bytes());
    }
    if !forwarded_host {
        write_header(out, b"X-Forwarded-Host", head.host.as_bytes());
    }
    write_header(out, b"X-Request-ID", forwarding.request_id);
    if !request_start {
        let (text, length) = super::forward::request_start_text();
        write_header(out, b"X-Request-Start", &text[..length]);
    }
    match head.framing {
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(length) => write_header(out, b"Content-Length", decimal(length).as_bytes()),
        Framing::Empty if head.content_length.is_some() => out.extend_from_slice(b"Content-Length: 0\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response's `Transfer-Encoding`, as far as relaying it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codings {
    None,
    /// Just `chunked`.
    Chunked,
    /// Other codings (e.g. `gzip, chunked`, or `gzip` with a body until close): written back as they came.
    Other,
}

/// What the fast path needs to know about a target's response head.
#[derive(Debug)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub framing: Framing,
    /// The target's connection can carry another request once this body has been read.
    pub reusable: bool,
    pub content_length: Option<u64>,
    /// `text/event-stream`: never buffered.
    pub event_stream: bool,
    pub has_date: bool,
    pub head_len: usize,
    codings: Codings,
    connection: ConnectionTokens<'b>,
}

impl ResponseHead<'_> {
    /// A 1xx interim response (another head follows).
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Why a target's response cannot be relayed.
#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses a response head from the start of `buf`. `head_request`: the request was HEAD (no body follows).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    head_request: bool,
) -> Result<Option<(ResponseHead<'b>, &'h [Header<'b>])>, BadResponse> {
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, headers);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed response head from the target")),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(BadResponse("malformed response head from the target"));
    };
    if status == 101 {
        return Err(BadResponse("the target switched protocols without being asked to"));
    }
    let reason = response.reason.unwrap_or("");
    let mut content_length = None;
    let mut codings = Codings::None;
    let mut last_coding_chunked = false;
    let mut connection = ConnectionTokens::default();
    let (mut event_stream, mut has_date) = (false, false);
    let headers = response.headers;
    for header in headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // `42, 42` (a list of one value) is allowed; differing values are an attack or a bug.
            for value in header.value.split(|b| *b == b',') {
                let length = parse_decimal(value).ok_or(BadResponse("invalid Content-Length from the target"))?;
                if content_length.is_some_and(|l| l != length) {
                    return Err(BadResponse("conflicting Content-Length from the target"));
                }
                content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in header.value.split(|b| *b == b',').map(trim).filter(|c| !c.is_empty()) {
                // `chunked` must be the last coding, and only once (RFC 9112 §6.1).
                if last_coding_chunked {
                    return Err(BadResponse("invalid Transfer-Encoding from the target"));
                }
                last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                codings =
                    if last_coding_chunked && codings == Codings::None { Codings::Chunked } else { Codings::Other };
            }
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(header.value);
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = trim(header.value).starts_with(b"text/event-stream");
        } else if name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
    }
    let mut reusable = version == 1 && !connection.close;
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if codings != Codings::None {
        // RFC 9112 §6.3: chunked must be the last coding, else the body runs until close; with both
        // headers, Transfer-Encoding wins and the connection must not be reused.
        reusable &= content_length.is_none();
        if last_coding_chunked { Framing::Chunked } else { Framing::UntilClose }
    } else {
        match content_length {
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    let head = ResponseHead {
        status,
        reason,
        framing,
        reusable,
        content_length,
        event_stream,
        has_date,
        head_len,
        codings,
        connection,
    };
    Ok(Some((head, headers)))
}

/// Writes the head to send to the client: hop-by-hop headers dropped, the framing berth relays written by
/// berth (`Content-Length`, or `Transfer-Encoding` with the target's codings and `chunked` last — bodies
/// that run until close are re-chunked), a `Date` if the target sent none (as hyper adds one), and
/// `Connection: close` when the client connection ends after this response.
pub fn write_response_head(out: &mut Vec<u8>, head: &ResponseHead<'_>, headers: &[Header<'_>], close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status(out, head.status, head.reason);
    for header in headers {
        if !head.connection.drops(header.name) {
            write_header(out, header.name.as_bytes(), header.value);
        }
    }
    if head.is_informational() {
        out.extend_from_slice(b"\r\n");
        return;
    }
    match head.framing {
        Framing::Length(length) => write_header(out, b"Content-Length", decimal(length).as_bytes()),
        // HEAD and 304 answers keep the length they describe; 204 has none (RFC 9110 §8.6).
        Framing::Empty => {
            if let Some(length) = head.content_length.filter(|_| head.status != 204) {
                write_header(out, b"Content-Length", decimal(length).as_bytes());
            }
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"Transfer-Encoding: ");
            if head.codings == Codings::Other {
                let mut first = true;
                for value in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
                    for coding in value.value.split(|b| *b == b',').map(trim).filter(|c| !c.is_empty()) {
                        if !first {
                            out.extend_from_slice(b", ");
                        }
                        out.extend_from_slice(coding);
                        first = false;
                    }
                }
                if head.framing == Framing::UntilClose {
                    out.extend_from_slice(b", chunked");
                }
            } else {
                out.extend_from_slice(b"chunked");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if !head.has_date {
        write_header(out, b"Date", &http_date());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete response of the proxy's own (an error page).
pub fn write_own_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status(out, status, "");
    write_header(out, b"Content-Type", content_type.as_bytes());
    out.extend_from_slice(b"Cache-Control: no-cache\r\n");
    write_header(out, b"Content-Length", decimal(body.len() as u64).as_bytes());
    write_header(out, b"Date", &http_date());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The whole answer to a refused request (the connection is closed after it).
pub fn refusal_response(refusal: Refusal) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let body = format!("{}\n", refusal.reason);
    write_own_response(&mut out, refusal.status, "text/plain; charset=utf-8", body.as_bytes(), true);
    out
}

fn write_status(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(decimal(status as u64).as_bytes());
    out.push(b' ');
    let reason = if reason.is_empty() {
        http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
    } else {
        reason
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The framing of one chunk of a body that is re-chunked (it ran until close): `<hex size>\r\n`.
pub fn chunk_size_line(size: usize) -> String {
    format!("{size:x}\r\n")
}

/// The end of a re-chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Where a body ends, found as its bytes pass through.
#[derive(Clone, Debug)]
pub enum BodyProgress {
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

/// A body's framing is broken (bad chunk syntax).
#[derive(Debug, PartialEq, Eq)]
pub struct BadFraming;

/// What one [`BodyProgress::advance`] found: how many bytes of the input belong to this body, and which
/// of those are trailer fields (not forwarded: berth ends a chunked body with an empty trailer section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advanced {
    pub taken: usize,
    pub trailer: Range<usize>,
}

impl Advanced {
    /// The parts of `input` to forward, in order.
    pub fn forwarded<'a>(&self, input: &'a [u8]) -> [&'a [u8]; 2] {
        [&input[..self.trailer.start], &input[self.trailer.end..self.taken]]
    }

    /// How many bytes are forwarded.
    pub fn forwarded_len(&self) -> usize {
        self.taken - self.trailer.len()
    }
}

impl BodyProgress {
    pub fn new(framing: Framing) -> BodyProgress {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyProgress::Done,
            Framing::Length(length) => BodyProgress::Length(length),
            Framing::Chunked => BodyProgress::Chunked(ChunkedScanner::default()),
            Framing::UntilClose => BodyProgress::UntilClose,
        }
    }

    /// Takes body bytes from the front of `input`: says how many belong to this body (any rest is the
    /// next message) and which of them are trailer fields.
    pub fn advance(&mut self, input: &[u8]) -> Result<Advanced, BadFraming> {
        let whole = |taken: usize| Advanced { taken, trailer: taken..taken };
        match self {
            BodyProgress::Done => Ok(whole(0)),
            BodyProgress::UntilClose => Ok(whole(input.len())),
            BodyProgress::Length(remaining) => {
                let taken = (*remaining).min(input.len() as u64);
                *remaining -= taken;
                if *remaining == 0 {
                    *self = BodyProgress::Done;
                }
                Ok(whole(taken as usize))
            }
            BodyProgress::Chunked(scanner) => {
                let advanced = scanner.advance(input)?;
                if scanner.is_done() {
                    *self = BodyProgress::Done;
                }
                Ok(advanced)
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyProgress::Done)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk extension and trailer section followed (hyper limits extensions to 16 KiB in all).
const MAX_CHUNK_EXTENSION: u32 = 4096;
const MAX_TRAILER_SECTION: u32 = 16 * 1024;

/// Follows chunked framing (RFC 9112 §7.1) byte by byte, strictly: hex digits then `;` or CRLF (no
/// whitespace), extensions without control bytes, CRLF everywhere (a bare LF is an error), trailer fields
/// of the form `name: value`.
#[derive(Clone, Debug, Default)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// The current chunk's size, then what is left of its data.
    size: u64,
    digits: u8,
    /// Bytes of the current chunk extension, or of the trailer section.
    extra: u32,
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn advance(&mut self, input: &[u8]) -> Result<Advanced, BadFraming> {
        use ChunkState::*;
        let mut at = 0;
        let mut trailer: Option<Range<usize>> = None;
        while at < input.len() && self.state != Done {
            if self.state == Data {
                let taken = self.size.min((input.len() - at) as u64);
                at += taken as usize;
                self.size -= taken;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let byte = input[at];
            let in_trailer_field = matches!(self.state, TrailerName | TrailerValue | TrailerLf)
                || (self.state == TrailerStart && byte != b'\r');
            if in_trailer_field {
                let range = trailer.get_or_insert(at..at);
                range.end = at + 1;
                self.extra += 1;
                if self.extra > MAX_TRAILER_SECTION {
                    return Err(BadFraming);
                }
            }
            at += 1;
            self.state = match (self.state, byte) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    // 15 hex digits (2^60 bytes) is more than any body; more is an overflow attempt.
                    if self.digits == 15 {
                        return Err(BadFraming);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + (byte as char).to_digit(16).unwrap_or(0) as u64;
                    Size
                }
                (Size, b';') if self.digits > 0 => {
                    self.extra = 0;
                    Extension
                }
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                    self.extra += 1;
                    if self.extra > MAX_CHUNK_EXTENSION {
                        return Err(BadFraming);
                    }
                    Extension
                }
                (SizeLf, b'\n') if self.size == 0 => {
                    self.extra = 0;
                    TrailerStart
                }
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | TrailerName, byte) if is_token_byte(byte) => TrailerName,
                (TrailerName, b':') => TrailerValue,
                (TrailerValue, b'\r') => TrailerLf,
                (TrailerValue, b'\t' | b' '..=b'~' | 0x80..=0xff) => TrailerValue,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadFraming),
            };
        }
        let trailer = trailer.unwrap_or(at..at);
        Ok(Advanced { taken: at, trailer })
    }
}

/// A `tchar` of RFC 9110 §5.6.2 (header names, tokens).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Trims optional whitespace (spaces and tabs only, RFC 9110 §5.6.3).
fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(value.len());
    let end = value.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
    &value[start..end]
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add((d - b'0') as u64))
}

fn decimal(value: u64) -> String {
    value.to_string()
}

thread_local! {
    /// The `Date` value of the current second, made once per second per thread.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date() -> [u8; 29] {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    DATE.with(|cache| {
        let (second, text) = cache.get();
        if second == now {
            return text;
        }
        let text = format_http_date(now);
        cache.set((now, text));
        text
    })
}

fn format_http_date(seconds: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (seconds / 86_400) as i64;
    let (year, month, day) = crate::utc::civil_from_days(days);
    let of_day = seconds % 86_400;
    let text = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month as usize).saturating_sub(1) % 12],
        year,
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    let mut out = [b' '; 29];
    let length = text.len().min(29);
    out[..length].copy_from_slice(&text.as_bytes()[..length]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head berth would send to the target, or why not.
    fn request(text: &str) -> Parsed<String> {
        let mut headers = header_slots();
        match parse_request(text.as_bytes(), &mut headers, &HeadLimits::default()) {
            Parsed::Complete((head, headers)) => {
                let forwarding = Forwarding {
                    path: head.path,
                    trust: false,
                    client_ip: "10.0.0.9",
                    scheme: "http",
                    request_id: b"id-1",
                };
                let mut out = Vec::new();
                write_request_head(&mut out, &head, headers, &forwarding);
                let text = String::from_utf8(out).unwrap();
                // The request start header carries the time; replace it to compare.
                let start = text.find("X-Request-Start: t=").expect("request start set");
                let end = start + text[start..].find("\r\n").unwrap();
                Parsed::Complete(format!("{}X-Request-Start: t=N{}", &text[..start], &text[end..]))
            }
            Parsed::Partial => Parsed::Partial,
            Parsed::Invalid(refusal) => Parsed::Invalid(refusal),
        }
    }

    fn refusal(text: &str) -> Option<u16> {
        let mut headers = header_slots();
        match parse_request(text.as_bytes(), &mut headers, &HeadLimits::default()) {
            Parsed::Invalid(refusal) => Some(refusal.status),
            _ => None,
        }
    }

    fn needs_hyper(text: &str) -> bool {
        let mut headers = header_slots();
        match parse_request(text.as_bytes(), &mut headers, &HeadLimits::default()) {
            Parsed::Complete((head, _)) => head.needs_hyper,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn requests_are_rewritten_for_the_target() {
        let Parsed::Complete(out) = request(
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        ) else {
            panic!("supported")
        };
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: app.test\r\nX-Request-ID: id-1\r\nX-Request-Start: t=N\r\n\r\n"
        );
    }

    #[test]
    fn trusted_forwarding_headers_are_extended_and_chunked_framing_kept() {
        let text = "POST /up HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\n\
                    x-forwarded-proto: https\r\nx-request-id: mine\r\nx-request-start: t=5\r\n\
                    transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let mut headers = header_slots();
        let Parsed::Complete((head, headers)) = parse_request(text.as_bytes(), &mut headers, &HeadLimits::default())
        else {
            panic!()
        };
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(head.request_id, Some(&b"mine"[..]));
        assert_eq!(&text[head.head_len..], "5\r\nhello\r\n0\r\n\r\n");
        let forwarding =
            Forwarding { path: "/", trust: true, client_ip: "9.9.9.9", scheme: "http", request_id: b"mine" };
        let mut out = Vec::new();
        write_request_head(&mut out, &head, headers, &forwarding);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nhost: a\r\nX-Forwarded-For: 1.1.1.1, 9.9.9.9\r\nx-forwarded-proto: https\r\n\
             x-request-start: t=5\r\nX-Forwarded-Host: a\r\nX-Request-ID: mine\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn unusual_valid_requests_go_to_the_hyper_path() {
        for text in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            assert!(needs_hyper(text), "{text:?}");
        }
        assert!(!needs_hyper("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(matches!(request("GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        for (text, status) in [
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            ("GARBAGE\r\n\r\n", 400),
        ] {
            assert_eq!(refusal(text), Some(status), "{text:?}");
        }
        for text in [
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a:8080\r\nContent-Length:  5 \r\n\r\n",
        ] {
            assert_eq!(refusal(text), None, "{text:?}");
        }
    }

    #[test]
    fn connection_options_never_remove_framing_or_host() {
        let Parsed::Complete(out) = request(
            "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nConnection: Content-Length, host, X-A\r\nX-A: 1\r\n\r\n",
        ) else {
            panic!("supported")
        };
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: app\r\nX-Request-ID: id-1\r\nX-Request-Start: t=N\r\nContent-Length: 3\r\n\r\n"
        );
        let Parsed::Complete(out) = request(
            "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, transfer-encoding\r\n\r\n",
        ) else {
            panic!("supported")
        };
        assert!(out.ends_with("Transfer-Encoding: chunked\r\n\r\n"), "{out}");
        let Parsed::Complete(out) = request("POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n") else {
            panic!("supported")
        };
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
    }

    #[test]
    fn head_limits() {
        let limits = HeadLimits { max_line: 100, max_head: 400, max_headers: 5 };
        let parse = |text: &str| {
            let mut headers = header_slots();
            match parse_request(text.as_bytes(), &mut headers, &limits) {
                Parsed::Complete(_) => 200,
                Parsed::Partial => 0,
                Parsed::Invalid(refusal) => refusal.status,
            }
        };
        let long = "x".repeat(120);
        assert_eq!(parse(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")), 414);
        assert_eq!(parse(&format!("GET /{long}")), 414, "before the line ends");
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {long}\r\n\r\n")), 431);
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {long}")), 431, "before the line ends");
        let many = "X: 1\r\n".repeat(5);
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), 431);
        let big = format!("X: {}\r\n", "y".repeat(90)).repeat(4);
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{big}\r\n")), 431);
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{}", &big[..300])), 0);
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"), 200);
    }

    #[test]
    fn request_framing() {
        let framing = |text: &str| {
            let mut headers = header_slots();
            match parse_request(text.as_bytes(), &mut headers, &HeadLimits::default()) {
                Parsed::Complete((head, _)) => (head.framing, head.close),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), (Framing::Empty, false));
        assert_eq!(framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), (Framing::Empty, false));
        assert_eq!(framing("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"), (Framing::Length(12), false));
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), (Framing::Empty, true));
    }

    fn response(text: &str, head_request: bool) -> Result<(ResponseHead<'_>, String), BadResponse> {
        let mut headers = header_slots();
        let (head, headers) = parse_response(text.as_bytes(), &mut headers, head_request)?.expect("complete");
        let mut out = Vec::new();
        write_response_head(&mut out, &head, headers, false);
        let out = String::from_utf8(out).unwrap();
        Ok((head, out))
    }

    #[test]
    fn response_framing_and_reuse() {
        let (head, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello", false).unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::Length(5), true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 5\r\n\r\n");

        let (head, out) =
            response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: 5\r\nDate: x\r\n\r\n", false)
                .unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\nTransfer-Encoding: chunked\r\n\r\n");

        let (head, out) = response("HTTP/1.1 200 OK\r\nDate: x\r\n\r\n", false).unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "re-chunked: {out}");

        for (text, head_request) in [
            ("HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", false),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nDate: x\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nDate: x\r\n\r\n", true),
            ("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", false),
        ] {
            let (head, out) = response(text, head_request).unwrap();
            assert_eq!((head.framing, head.reusable), (Framing::Empty, true), "{text:?}");
            assert!(!out.contains("Transfer-Encoding"), "{out}");
        }
        let (head, _) = response("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", false).unwrap();
        assert!(head.is_informational());

        let (head, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", false).unwrap();
        assert!(!head.reusable);
        let (head, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert!(!head.reusable);
        let (head, _) =
            response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::Chunked, false));
        let (head, out) = response("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert_eq!(head.framing, Framing::Length(0));
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        assert!(out.contains("Date: "), "a date is added: {out}");
        assert!(response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false).is_err());
        assert!(response("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        let mut headers = header_slots();
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-", &mut headers, false).unwrap().is_none());
    }

    #[test]
    fn responses_keep_their_framing_whatever_connection_says() {
        let (head, out) =
            response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length\r\nDate: x\r\n\r\n", false)
                .unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 5\r\n\r\n");
        let (head, out) =
            response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nDate: x\r\n\r\n", false).unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding:chunked\r\nDate: x\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"), "{out}");
        let (head, out) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nDate: x\r\n\r\n", false).unwrap();
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"), "re-chunked, gzip kept: {out}");
        assert!(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip, chunked\r\n\r\n", false).is_err());
        let (_, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nDate: x\r\n\r\n", true).unwrap();
        assert!(out.contains("Content-Length: 7\r\n"), "a HEAD answer keeps its length: {out}");
        let (_, out) = response("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nDate: x\r\n\r\n", false).unwrap();
        assert!(!out.contains("Content-Length"), "{out}");
    }

    #[test]
    fn chunked_bodies_end_where_they_end_whatever_the_split() {
        let body = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\nB: 2\r\n\r\n";
        let forwarded = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n";
        let input = [&body[..], &next[..]].concat();
        for split in 0..input.len() {
            let mut progress = BodyProgress::new(Framing::Chunked);
            let mut out = Vec::new();
            let first = progress.advance(&input[..split]).unwrap();
            out.extend(first.forwarded(&input[..split]).concat());
            let mut taken = first.taken;
            if !progress.is_done() {
                let second = progress.advance(&input[taken..]).unwrap();
                out.extend(second.forwarded(&input[taken..]).concat());
                taken += second.taken;
            }
            assert!(progress.is_done(), "split at {split}");
            assert_eq!(taken, body.len(), "split at {split}");
            assert_eq!(out, forwarded, "split at {split}: trailer fields are not forwarded");
        }
        let mut progress = BodyProgress::new(Framing::Chunked);
        assert_eq!(progress.advance(b"0\r\n\r\n").unwrap().taken, 5);
        assert!(progress.is_done());
    }

    #[test]
    fn chunked_framing_is_strict() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\nhello",
            b"5 \r\nhello\r\n",
            b"5\t\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"5;a=\x01\r\nhello\r\n",
            b"5;a\nhello",
            b"fffffffffffffffff\r\n",
            b"5\r\nhello\n",
            b"5\r\nhello\r\r",
            b"0\r\n\n",
            b"0\n\r\n",
            b"0\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n: x\r\n\r\n",
            b"0\r\nX : 1\r\n\r\n",
            b"0\r\nX: \x01\r\n\r\n",
        ] {
            assert_eq!(
                BodyProgress::new(Framing::Chunked).advance(bad),
                Err(BadFraming),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let extension = format!("1;{}\r\n", "e".repeat(5000));
        assert_eq!(BodyProgress::new(Framing::Chunked).advance(extension.as_bytes()), Err(BadFraming));
        let trailers = format!("0\r\n{}", "X: 1\r\n".repeat(4000));
        assert_eq!(BodyProgress::new(Framing::Chunked).advance(trailers.as_bytes()), Err(BadFraming));
        for good in [&b"5;a=\"b c\"\r\nhello\r\n0\r\n\r\n"[..], b"A\r\n0123456789\r\n0;x\r\nX-T: a b\t\r\n\r\n"] {
            let mut progress = BodyProgress::new(Framing::Chunked);
            assert_eq!(progress.advance(good).unwrap().taken, good.len());
            assert!(progress.is_done());
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut progress = BodyProgress::new(Framing::Length(5));
        assert_eq!(progress.advance(b"hel").unwrap().taken, 3);
        assert!(!progress.is_done());
        assert_eq!(progress.advance(b"lo, next").unwrap().taken, 2);
        assert!(progress.is_done());
        assert!(BodyProgress::new(Framing::Empty).is_done());
    }

    /// A small deterministic generator (xorshift), so the property tests below repeat exactly.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A request head built from pieces that smuggling attempts use, then perhaps damaged.
    fn random_request(random: &mut Random) -> Vec<u8> {
        let mut text = format!(
            "{} {} {}\r\n",
            random.pick(&["GET", "POST", "PUT", "HEAD", "GET", "POST", "CONNECT", "G T", "get"]),
            random.pick(&["/", "/a?b=1", "/", "/x/y", "http://app/x", "*", "/\x01", "/a b"]),
            random.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]),
        );
        if random.below(5) != 0 {
            text.push_str("Host: app\r\n");
        }
        for _ in 0..random.below(4) {
            let name = random.pick(&[
                "Host",
                "host",
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "X-A",
                "Expect",
                "Upgrade",
                "Transfer-Encoding ",
                " Host",
                "Content-Length\t",
            ]);
            let value = random.pick(&[
                "app",
                "",
                "5",
                "0",
                "5, 5",
                "+5",
                "chunked",
                "Chunked",
                "gzip, chunked",
                " chunked\t",
                "\x0bchunked",
                "content-length",
                "close",
                "keep-alive, transfer-encoding",
                "host",
                "websocket",
                "100-continue",
                "upgrade",
                "18446744073709551616",
                "a\r\n b",
            ]);
            text.push_str(&format!("{name}:{}{value}\r\n", if random.below(2) == 0 { " " } else { "" }));
        }
        text.push_str(random.pick(&["\r\n", "\r\n", "\n", ""]));
        let mut bytes = text.into_bytes();
        for _ in 0..random.below(2) * random.below(3) {
            if bytes.is_empty() {
                break;
            }
            let at = random.below(bytes.len());
            match random.below(3) {
                0 => bytes[at] = random.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, random.pick(&["\r", "\n", " ", "\0", ":", ","]).as_bytes()[0]),
            }
        }
        bytes
    }

    /// The framing headers of a head as forwarded: (Content-Length values, Transfer-Encoding values).
    fn framing_headers(head: &[u8]) -> (Vec<String>, Vec<String>) {
        let mut slots = header_slots();
        let mut response = httparse::Request::new(&mut []);
        let status = response.parse_with_uninit_headers(head, &mut slots).expect("berth writes valid heads");
        assert!(status.is_complete());
        let values = |name: &str| -> Vec<String> {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect()
        };
        (values("content-length"), values("transfer-encoding"))
    }

    #[test]
    fn random_request_heads_never_panic_and_keep_their_framing() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let bytes = if round % 5 == 0 {
                (0..random.below(200)).map(|_| random.next() as u8).collect()
            } else {
                random_request(&mut random)
            };
            let mut slots = header_slots();
            let (head, headers) = match parse_request(&bytes, &mut slots, &HeadLimits::default()) {
                Parsed::Complete(parsed) => parsed,
                Parsed::Invalid(refusal) => {
                    assert!([400, 405, 414, 431].contains(&refusal.status), "{refusal:?}");
                    refused += 1;
                    continue;
                }
                Parsed::Partial => continue,
            };
            accepted += 1;
            if head.needs_hyper {
                // Forwarded by hyper (through the guard, which applies these same rules).
                continue;
            }
            let forwarding =
                Forwarding { path: head.path, trust: false, client_ip: "10.0.0.1", scheme: "http", request_id: b"r" };
            let mut out = Vec::new();
            write_request_head(&mut out, &head, headers, &forwarding);
            let (lengths, codings) = framing_headers(&out);
            let expected = match head.framing {
                Framing::Chunked => (vec![], vec!["chunked".to_string()]),
                Framing::Length(length) => (vec![length.to_string()], vec![]),
                Framing::Empty if head.content_length.is_some() => (vec!["0".to_string()], vec![]),
                Framing::Empty | Framing::UntilClose => (vec![], vec![]),
            };
            assert_eq!(
                (lengths, codings),
                expected,
                "{:?} -> {:?}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&out)
            );
            // The forwarded head is itself accepted, with the same framing and target.
            let mut again = header_slots();
            match parse_request(&out, &mut again, &HeadLimits::default()) {
                Parsed::Complete((forwarded, _)) => {
                    assert_eq!(
                        (forwarded.framing, forwarded.method, forwarded.path),
                        (head.framing, head.method, head.path)
                    );
                }
                other => panic!(
                    "{:?} forwarded as {:?}: {other:?}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        assert!(
            accepted > 1000 && refused > 1000,
            "the generator covers both sides: {accepted} accepted, {refused} refused"
        );
    }

    /// A chunked body built from valid and invalid pieces.
    fn random_chunked_body(random: &mut Random) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut data = Vec::new();
        for _ in 0..random.below(4) {
            let size = random.below(20) + 1;
            let piece: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            body.extend_from_slice(random.pick(&["", "", "0"]).as_bytes());
            body.extend_from_slice(format!("{size:x}").as_bytes());
            body.extend_from_slice(random.pick(&["\r\n", "\r\n", ";e=1\r\n", " \r\n", "\n", ";\x01\r\n"]).as_bytes());
            body.extend_from_slice(&piece);
            body.extend_from_slice(random.pick(&["\r\n", "\r\n", "\r\n", "\n", "x\r\n"]).as_bytes());
            data.extend_from_slice(&piece);
        }
        body.extend_from_slice(random.pick(&["0\r\n", "0\r\n", "000\r\n", "0\n", "0 \r\n"]).as_bytes());
        for _ in 0..random.below(3) {
            body.extend_from_slice(
                random.pick(&["X-T: 1\r\n", "GET /admin HTTP/1.1\r\n", "X: \x01\r\n", "A:b\r\n"]).as_bytes(),
            );
        }
        body.extend_from_slice(random.pick(&["\r\n", "\r\n", "\n", ""]).as_bytes());
        body.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        (body, data)
    }

    /// Decodes a complete chunked body (as a strict recipient would).
    fn dechunk(mut body: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let line_end = body.windows(2).position(|w| w == b"\r\n").expect("size line");
            let size_text = String::from_utf8_lossy(&body[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).expect("hex size");
            body = &body[line_end + 2..];
            if size == 0 {
                assert_eq!(body, b"\r\n", "no trailer fields are forwarded");
                return data;
            }
            data.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n");
            body = &body[size + 2..];
        }
    }

    #[test]
    fn random_chunked_bodies_are_refused_or_forwarded_exactly() {
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let (mut whole, mut broken) = (0, 0);
        for _ in 0..20_000 {
            let (input, data) = random_chunked_body(&mut random);
            // Fed in random pieces, as reads deliver it.
            let mut progress = BodyProgress::new(Framing::Chunked);
            let (mut at, mut forwarded, mut failed) = (0, Vec::new(), false);
            while at < input.len() && !progress.is_done() {
                let end = (at + 1 + random.below(16)).min(input.len());
                match progress.advance(&input[at..end]) {
                    Ok(advanced) => {
                        forwarded.extend(advanced.forwarded(&input[at..end]).concat());
                        at += advanced.taken;
                    }
                    Err(BadFraming) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed || !progress.is_done() {
                broken += 1;
                continue;
            }
            whole += 1;
            assert!(
                input[at..].starts_with(b"GET /next"),
                "the body ends where it ends: {:?}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(dechunk(&forwarded), data);
            let mut again = BodyProgress::new(Framing::Chunked);
            assert_eq!(again.advance(&forwarded).unwrap().taken, forwarded.len());
            assert!(again.is_done());
        }
        assert!(whole > 1000 && broken > 1000, "{whole} whole, {broken} broken");
    }

    #[test]
    fn random_response_heads_never_panic_and_keep_their_framing() {
        let mut random = Random(0x1234_5678_9abc_def1);
        for round in 0..20_000 {
            let mut text =
                format!("HTTP/1.{} {} OK\r\n", random.below(2), random.pick(&["200", "204", "304", "103", "404"]));
            for _ in 0..random.below(5) {
                let name = random.pick(&["Content-Length", "Transfer-Encoding", "Connection", "X-A"]);
                let value = random.pick(&[
                    "5",
                    "5, 5",
                    "5, 6",
                    "chunked",
                    "gzip, chunked",
                    "gzip",
                    "chunked, gzip",
                    "close",
                    "content-length",
                    "x",
                ]);
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            let mut bytes = text.into_bytes();
            if round % 4 == 0 && !bytes.is_empty() {
                let at = random.below(bytes.len());
                bytes[at] = random.next() as u8;
            }
            let head_request = random.below(5) == 0;
            let mut slots = header_slots();
            let Ok(Some((head, headers))) = parse_response(&bytes, &mut slots, head_request) else { continue };
            let mut out = Vec::new();
            write_response_head(&mut out, &head, headers, false);
            let mut again = header_slots();
            let (forwarded, _) = parse_response(&out, &mut again, head_request)
                .unwrap_or_else(|e| {
                    panic!(
                        "{:?} forwarded as {:?}: {e}",
                        String::from_utf8_lossy(&bytes),
                        String::from_utf8_lossy(&out)
                    )
                })
                .expect("complete");
            let expected = if head.framing == Framing::UntilClose { Framing::Chunked } else { head.framing };
            assert_eq!(
                forwarded.framing,
                expected,
                "{:?} -> {:?}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(&format_http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date().len(), 29);
    }
}
