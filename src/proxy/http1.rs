//! HTTP/1.1 heads and body framing for the proxy's fast path: requests and responses parsed with `httparse`,
//! rewritten for the next hop straight into an output buffer, and bodies delimited (Content-Length, chunked,
//! until close) as their bytes go by, unchanged. Nothing here allocates or does I/O; `fast_path` drives it.
//!
//! Anything unusual in a request head (HTTP/1.0, an upgrade, `Expect`, an absolute URI, ambiguous framing)
//! is reported as [`Parsed::Unsupported`] so the connection goes to the hyper path, which handles it all.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use httparse::Header;

use super::forward::HeaderLookup;

/// Most header lines one head may have (hyper's default limit too).
pub const MAX_HEADERS: usize = 100;

/// Room for a head's parsed headers, left uninitialized (httparse fills what it uses): zeroing 100 slots
/// for every head measured as the largest single cost in the proxy's user space.
pub type HeaderSlots<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

/// Empty [`HeaderSlots`].
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), as on the hyper path.
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

/// The outcome of parsing a head from the bytes received so far.
#[derive(Debug)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
    /// Valid or not, the fast path does not handle it: the hyper path will.
    Unsupported,
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
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                self.upgrade = true;
            } else if self.count < self.named.len() {
                self.named[self.count] = token;
                self.count += 1;
            } else {
                self.overflow = true;
            }
        }
    }

    /// Whether `name` must not be forwarded: hop-by-hop, or named by a `Connection` header.
    fn drops(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
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

/// What the fast path needs to know about a request head it can forward.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    /// The path, without the query.
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub host: &'b str,
    pub framing: Framing,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The client's own `X-Request-ID` (the first one), kept as the request's id.
    pub request_id: Option<&'b [u8]>,
    /// The length of the head, up to and including its empty line.
    pub head_len: usize,
    connection: ConnectionTokens<'b>,
}

/// Parses a request head from the start of `buf`; see [`Parsed`] for what is not handled here.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
) -> Parsed<(RequestHead<'b>, &'h [Header<'b>])> {
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unsupported,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return Parsed::Unsupported;
    };
    // Origin-form targets only; absolute-form (proxy requests), `*` and CONNECT go to the hyper path.
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Unsupported;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut host = None;
    let mut hosts = 0;
    let mut content_length = None;
    let mut chunked = false;
    let mut request_id = None;
    let mut connection = ConnectionTokens::default();
    let headers = request.headers;
    for header in headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(header.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(length) = parse_decimal(header.value) else { return Parsed::Unsupported };
            if content_length.is_some_and(|l| l != length) {
                return Parsed::Unsupported;
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a lone `chunked` is forwarded as is; other codings are rare enough for the hyper path.
            if chunked || !trim(header.value).eq_ignore_ascii_case(b"chunked") {
                return Parsed::Unsupported;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(header.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = request_id.or(Some(header.value));
        } else if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            // WebSockets (a tunnel) and `Expect: 100-continue` (an interim answer) are the hyper path's.
            return Parsed::Unsupported;
        }
    }
    let Some(host) = host.filter(|h| hosts == 1 && !h.is_empty()) else { return Parsed::Unsupported };
    if connection.upgrade || connection.overflow || (chunked && content_length.is_some()) {
        return Parsed::Unsupported;
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(length)) => Framing::Length(length),
    };
    let head =
        RequestHead { method, path, query, host, framing, close: connection.close, request_id, head_len, connection };
    Parsed::Complete((head, headers))
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
/// `X-Request-ID` and `X-Request-Start` set as on the hyper path, chunked framing kept.
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
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    let mut transfer_encoding: Option<&[u8]> = None;
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
            transfer_encoding = Some(header.value);
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
    } else if let Some(codings) = transfer_encoding {
        // RFC 9112 §6.3: chunked must be the last coding, else the body runs until close; with both
        // headers, Transfer-Encoding wins and the connection must not be reused.
        reusable &= content_length.is_none();
        let last = codings.rsplit(|b| *b == b',').next().map(trim).unwrap_or_default();
        if last.eq_ignore_ascii_case(b"chunked") { Framing::Chunked } else { Framing::UntilClose }
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
        connection,
    };
    Ok(Some((head, headers)))
}

/// Writes the head to send to the client: hop-by-hop headers dropped, chunked framing for bodies that are
/// chunked or run until close (those are re-chunked), a `Date` if the target sent none (as hyper adds one),
/// and `Connection: close` when the client connection ends after this response.
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
    if matches!(head.framing, Framing::Chunked | Framing::UntilClose) {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
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

/// Where a body ends, found as its bytes pass through unchanged.
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

impl BodyProgress {
    pub fn new(framing: Framing) -> BodyProgress {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyProgress::Done,
            Framing::Length(length) => BodyProgress::Length(length),
            Framing::Chunked => BodyProgress::Chunked(ChunkedScanner::default()),
            Framing::UntilClose => BodyProgress::UntilClose,
        }
    }

    /// Takes body bytes from the front of `input`: returns how many belong to this body (any rest is the
    /// next message).
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, BadFraming> {
        match self {
            BodyProgress::Done => Ok(0),
            BodyProgress::UntilClose => Ok(input.len()),
            BodyProgress::Length(remaining) => {
                let taken = (*remaining).min(input.len() as u64);
                *remaining -= taken;
                if *remaining == 0 {
                    *self = BodyProgress::Done;
                }
                Ok(taken as usize)
            }
            BodyProgress::Chunked(scanner) => {
                let taken = scanner.advance(input)?;
                if scanner.is_done() {
                    *self = BodyProgress::Done;
                }
                Ok(taken)
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
    /// Whitespace after the size (tolerated before an extension or the line end).
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Follows chunked framing (RFC 9112 §7.1) byte by byte, to find where the body ends.
#[derive(Clone, Debug, Default)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// The current chunk's size, then what is left of its data.
    size: u64,
    digits: u8,
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn advance(&mut self, input: &[u8]) -> Result<usize, BadFraming> {
        use ChunkState::*;
        let mut at = 0;
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
                (Size, b' ' | b'\t') if self.digits > 0 => SizeSpace,
                (SizeSpace, b' ' | b'\t') => SizeSpace,
                (Size | SizeSpace, b';') if self.digits > 0 => Extension,
                (Size | SizeSpace, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(BadFraming),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | TrailerLine, b'\n') => return Err(BadFraming),
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerStart | TrailerLine, _) => TrailerLine,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadFraming),
            };
        }
        Ok(at)
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
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

    fn request(text: &str) -> Parsed<String> {
        let mut headers = header_slots();
        match parse_request(text.as_bytes(), &mut headers) {
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
            Parsed::Unsupported => Parsed::Unsupported,
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
        let Parsed::Complete((head, headers)) = parse_request(text.as_bytes(), &mut headers) else { panic!() };
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
    fn unusual_requests_go_to_the_hyper_path() {
        for text in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(matches!(request(text), Parsed::Unsupported), "{text:?}");
        }
        assert!(matches!(request("GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
    }

    #[test]
    fn request_framing() {
        let framing = |text: &str| {
            let mut headers = header_slots();
            match parse_request(text.as_bytes(), &mut headers) {
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
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\n");

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
    fn chunked_bodies_end_where_they_end_whatever_the_split() {
        let body = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n";
        let input = [&body[..], &next[..]].concat();
        for split in 0..input.len() {
            let mut progress = BodyProgress::new(Framing::Chunked);
            let first = progress.advance(&input[..split]).unwrap();
            let second = if progress.is_done() { 0 } else { progress.advance(&input[first..]).unwrap() };
            assert!(progress.is_done(), "split at {split}");
            assert_eq!(first + second, body.len(), "split at {split}");
        }
        let mut progress = BodyProgress::new(Framing::Chunked);
        assert_eq!(progress.advance(b"0\r\n\r\n").unwrap(), 5);
        assert!(progress.is_done());
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"5\nhello", b"fffffffffffffffff\r\n"] {
            assert_eq!(BodyProgress::new(Framing::Chunked).advance(bad), Err(BadFraming), "{bad:?}");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut progress = BodyProgress::new(Framing::Length(5));
        assert_eq!(progress.advance(b"hel").unwrap(), 3);
        assert!(!progress.is_done());
        assert_eq!(progress.advance(b"lo, next").unwrap(), 2);
        assert!(progress.is_done());
        assert!(BodyProgress::new(Framing::Empty).is_done());
    }

    #[test]
    fn http_dates() {
        assert_eq!(&format_http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date().len(), 29);
    }
}
