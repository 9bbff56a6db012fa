//! Hostile HTTP/1.1 input, differentially: each probe goes to the proxy as raw bytes in one write, and what
//! the client gets back is compared with what a naive backend behind the proxy parsed from what it was sent.
//! The two must agree (RFC 9112 framing, one request in → at most one request out), for every probe, over
//! plain HTTP and TLS, on the fast path and through hyper (`--buffer-requests`).
//!
//! After each probe a sentinel request on a new connection must reach the backend and come back with its own
//! answer: a desynchronised pooled upstream connection would hand it someone else's.
//!
//! `HOSTILE_PROXY_BINARY=/path/to/berth` runs the probes against another build of berth (say, the one before
//! a change) instead of this one; `HOSTILE_VERBOSE=1` prints every probe's outcome, passed or not.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Proxy, find, make_certificate};

/// The host the service is deployed for (and the name in the test certificate).
const HOST: &str = "app";
/// A request hidden in a body: the backend must never see it as a request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
/// How long a probe's answers (and the close after them) may take.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// `hello, gzip`, gzipped: the body of the backend's `Transfer-Encoding: gzip, chunked` answer.
const GZIP_HELLO: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xd7, 0x51, 0x48, 0xaf,
    0xca, 0x2c, 0x00, 0x00, 0x4a, 0x9b, 0xb1, 0x5c, 0x0b, 0x00, 0x00, 0x00,
];

// ---------------------------------------------------------------------------------------------------------
// The naive backend

/// One request as the backend parsed it, with the bytes it was parsed from.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Seen {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    fn summary(&self) -> String {
        let path = if self.path.len() > 60 {
            format!("{}…({} bytes)", self.path.chars().take(60).collect::<String>(), self.path.len())
        } else {
            self.path.clone()
        };
        format!("{} {path} body={}", self.method, show(&self.body))
    }
}

/// A raw HTTP/1.1 server that logs every complete request it parses (a naive parser: the first
/// Content-Length, or chunked if any Transfer-Encoding mentions it, read leniently) and answers
/// `<METHOD> <PATH>`, or hostile framing on `/resp/...`.
struct LogBackend {
    address: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    /// What connections that ended held of a request they never completed.
    strays: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LogBackend {
    async fn start() -> LogBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let strays = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (task_log, task_strays, task_connections) =
            (Arc::clone(&log), Arc::clone(&strays), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let connection =
                    tokio::spawn(serve_backend_connection(stream, Arc::clone(&task_log), Arc::clone(&task_strays)));
                let mut connections = task_connections.lock().unwrap();
                connections.retain(|c: &tokio::task::AbortHandle| !c.is_finished());
                connections.push(connection.abort_handle());
            }
        });
        LogBackend { address, log, strays, connections, task }
    }

    fn target(&self) -> String {
        format!("--target={}", self.address)
    }

    fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn since(&self, start: usize) -> Vec<Seen> {
        self.log.lock().unwrap()[start..].to_vec()
    }

    fn stray_count(&self) -> usize {
        self.strays.lock().unwrap().len()
    }

    fn strays_since(&self, start: usize) -> Vec<Vec<u8>> {
        self.strays.lock().unwrap()[start..].to_vec()
    }

    fn saw_path(&self, path: &str) -> bool {
        self.log.lock().unwrap().iter().any(|s| s.path == path)
    }

    /// Closes every connection the proxy has open to the backend (after a failed probe, so that a
    /// desynchronised pooled connection cannot spoil the probes after it).
    fn reset_connections(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for LogBackend {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_connections();
    }
}

enum Parsed {
    /// A whole request and how many bytes it took.
    Complete(Seen, usize),
    /// More bytes needed; `true` once the head is complete and asks for `100-continue`.
    Partial(bool),
    Invalid(String),
}

async fn serve_backend_connection(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>, strays: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut pending = Vec::new();
    let mut continued = false;
    loop {
        let mut answers = Vec::new();
        let mut close = false;
        loop {
            match parse_request(&pending) {
                Parsed::Complete(seen, used) => {
                    pending.drain(..used);
                    continued = false;
                    close = seen.header_values("connection").iter().any(|v| v.eq_ignore_ascii_case("close"));
                    answers.extend(backend_answer(&seen));
                    if seen.path != "/up" {
                        log.lock().unwrap().push(seen);
                    }
                    if close {
                        break;
                    }
                }
                Parsed::Partial(expect_continue) => {
                    if expect_continue && !continued {
                        continued = true;
                        answers.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Parsed::Invalid(reason) => {
                    log.lock().unwrap().push(Seen {
                        method: "!INVALID".into(),
                        path: reason,
                        headers: Vec::new(),
                        body: pending.clone(),
                        raw: pending.clone(),
                    });
                    answers.extend_from_slice(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    close = true;
                    break;
                }
            }
        }
        if !answers.is_empty() && stream.write_all(&answers).await.is_err() {
            return;
        }
        if close {
            return;
        }
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !pending.is_empty() {
                    strays.lock().unwrap().push(pending);
                }
                return;
            }
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

fn parse_request(buffer: &[u8]) -> Parsed {
    if buffer.is_empty() {
        return Parsed::Partial(false);
    }
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut request = httparse::Request::new(&mut headers);
    let head_length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial(false),
        Err(e) => return Parsed::Invalid(format!("head: {e}")),
    };
    let headers: Vec<(String, String)> =
        request.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let mut seen = Seen {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        headers,
        body: Vec::new(),
        raw: Vec::new(),
    };
    let expect_continue = seen.header_values("expect").iter().any(|v| v.eq_ignore_ascii_case("100-continue"));
    let rest = &buffer[head_length..];
    let chunked = seen.header_values("transfer-encoding").iter().any(|v| v.to_ascii_lowercase().contains("chunked"));
    let body_length = if chunked {
        match parse_chunked_leniently(rest) {
            Ok(Some((body, used))) => {
                seen.body = body;
                used
            }
            Ok(None) => return Parsed::Partial(expect_continue),
            Err(e) => return Parsed::Invalid(format!("chunked body of {} {}: {e}", seen.method, seen.path)),
        }
    } else if let Some(length) = seen.header_values("content-length").first() {
        let Ok(length) = length.trim().parse::<usize>() else {
            return Parsed::Invalid(format!("content-length {length:?}"));
        };
        if rest.len() < length {
            return Parsed::Partial(expect_continue);
        }
        seen.body = rest[..length].to_vec();
        length
    } else {
        0
    };
    seen.raw = buffer[..head_length + body_length].to_vec();
    Parsed::Complete(seen, head_length + body_length)
}

/// Chunked, as a lax server reads it: the hex digits at the start of a size line, the rest of any line
/// ignored, LF or CRLF, trailer lines up to an empty line. `None`: incomplete.
fn parse_chunked_leniently(buffer: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let line_end = |from: usize| buffer[from..].iter().position(|&b| b == b'\n').map(|p| from + p);
    let mut position = 0;
    let mut body = Vec::new();
    loop {
        let Some(end) = line_end(position) else { return Ok(None) };
        let digits: String =
            buffer[position..end].iter().take_while(|b| b.is_ascii_hexdigit()).map(|&b| b as char).collect();
        let size = usize::from_str_radix(&digits, 16).map_err(|e| format!("chunk size {digits:?}: {e}"))?;
        position = end + 1;
        if size == 0 {
            loop {
                let Some(end) = line_end(position) else { return Ok(None) };
                let empty = buffer[position..end].iter().all(|&b| b == b'\r');
                position = end + 1;
                if empty {
                    return Ok(Some((body, position)));
                }
            }
        }
        if buffer.len() < position + size {
            return Ok(None);
        }
        body.extend_from_slice(&buffer[position..position + size]);
        position += size;
        let Some(end) = line_end(position) else { return Ok(None) };
        position = end + 1;
    }
}

fn backend_answer(seen: &Seen) -> Vec<u8> {
    let route = seen.path.split('?').next().unwrap_or_default();
    match route {
        "/up" => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        // Names its own length as hop-by-hop: the length must still frame the answer for the client.
        "/resp/connection-cl" => format!(
            "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{}",
            seen.path.len(),
            seen.path
        )
        .into_bytes(),
        "/resp/gzip-chunked" => {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n", GZIP_HELLO.len())
                    .into_bytes();
            answer.extend_from_slice(GZIP_HELLO);
            answer.extend_from_slice(b"\r\n0\r\n\r\n");
            answer
        }
        "/resp/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Resp-Trailer\r\n\r\n\
              5\r\nhello\r\n0\r\nX-Resp-Trailer: 1\r\n\r\n"
            .to_vec(),
        _ => {
            let body = format!("{} {}", seen.method, seen.path);
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The raw client

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where probes go: the proxy's HTTP port, or its HTTPS port through a TLS client (ALPN `http/1.1`).
struct Front {
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Front {
    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let tcp = tokio::time::timeout(ANSWER_WAIT, TcpStream::connect(("127.0.0.1", self.port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).unwrap();
        let Some(tls) = &self.tls else { return Ok(Box::new(tcp)) };
        let name = ServerName::try_from(HOST).unwrap();
        let stream = tokio::time::timeout(ANSWER_WAIT, tls.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Box::new(stream))
    }
}

fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A response as the client got it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What one connection gave back: final answers (1xx left out), whether the proxy closed it, and anything
/// that did not parse.
#[derive(Debug, Default)]
struct Exchange {
    answers: Vec<Answer>,
    closed: bool,
    timed_out: bool,
    write_error: Option<String>,
    error: Option<String>,
    /// Bytes of an answer still incomplete when the wait ran out.
    leftover: Vec<u8>,
}

impl Exchange {
    fn statuses(&self) -> Vec<u16> {
        self.answers.iter().map(|a| a.status).collect()
    }

    fn describe(&self) -> String {
        let mut text = format!("answers {:?}", self.statuses());
        text.push_str(if self.closed {
            ", then closed"
        } else if self.timed_out {
            ", then nothing (connection open)"
        } else {
            ""
        });
        if let Some(e) = &self.write_error {
            text.push_str(&format!(", write failed: {e}"));
        }
        if let Some(e) = &self.error {
            text.push_str(&format!(", unparsable answer: {e}"));
        }
        if !self.leftover.is_empty() {
            text.push_str(&format!(", incomplete answer {}", show(&self.leftover)));
        }
        text
    }
}

/// Sends `request` in one write and reads answers until `expected.len()` of them came back (then, when
/// `wait_close` and they are the expected ones, until the proxy closes), the proxy closed, or `wait` passed.
async fn exchange(
    io: &mut Box<dyn Io>,
    request: &[u8],
    expected: &[u16],
    wait_close: bool,
    wait: Duration,
) -> Exchange {
    let mut result = Exchange::default();
    if let Err(e) = async {
        io.write_all(request).await?;
        io.flush().await
    }
    .await
    {
        result.write_error = Some(e.to_string());
    }
    let deadline = Instant::now() + wait;
    let mut pending = Vec::new();
    loop {
        loop {
            match parse_response(&pending, result.closed) {
                Ok(Some((answer, used))) => {
                    pending.drain(..used);
                    if answer.status >= 200 {
                        result.answers.push(answer);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    result.error = Some(e);
                    return result;
                }
            }
        }
        if result.closed {
            return result;
        }
        if result.answers.len() >= expected.len() && !(wait_close && result.statuses() == expected) {
            return result;
        }
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline.into(), io.read(&mut chunk)).await {
            Err(_) => {
                result.timed_out = true;
                result.leftover = pending;
                return result;
            }
            Ok(Ok(0)) | Ok(Err(_)) => result.closed = true,
            Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One response from the front of `buffer` (`None`: incomplete). `closed`: no more bytes will come.
fn parse_response(buffer: &[u8], closed: bool) -> Result<Option<(Answer, usize)>, String> {
    if buffer.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if closed => return Err(format!("closed mid-head: {}", show(buffer))),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("{e}: {}", show(buffer))),
    };
    let status = response.code.unwrap_or_default();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let mut answer = Answer { status, headers, body: Vec::new(), raw: Vec::new() };
    let rest = &buffer[head_length..];
    let body_length = if status < 200 || status == 204 || status == 304 {
        0
    } else if let Some(codings) = answer.header("transfer-encoding") {
        let last = codings.rsplit(',').next().unwrap_or_default().trim().to_ascii_lowercase();
        if last == "chunked" {
            match parse_chunked_leniently(rest)? {
                Some((body, used)) => {
                    answer.body = body;
                    used
                }
                None if closed => return Err(format!("closed mid-chunks: {}", show(buffer))),
                None => return Ok(None),
            }
        } else if closed {
            answer.body = rest.to_vec();
            rest.len()
        } else {
            return Ok(None);
        }
    } else if let Some(length) = answer.header("content-length") {
        let length: usize = length.trim().parse().map_err(|_| format!("content-length {length:?}"))?;
        if rest.len() < length {
            return if closed { Err(format!("closed mid-body: {}", show(buffer))) } else { Ok(None) };
        }
        answer.body = rest[..length].to_vec();
        length
    } else if closed {
        answer.body = rest.to_vec();
        rest.len()
    } else {
        return Ok(None);
    };
    answer.raw = buffer[..head_length + body_length].to_vec();
    Ok(Some((answer, head_length + body_length)))
}

/// Bytes for a message: printable ASCII as is, the rest escaped, long ones cut.
fn show(bytes: &[u8]) -> String {
    let text: String = bytes.iter().flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if text.len() > 120 { format!("\"{}…\" ({} bytes)", &text[..120], bytes.len()) } else { format!("\"{text}\"") }
}

// ---------------------------------------------------------------------------------------------------------
// Probes

type BackendCheck = fn(&[Seen]) -> Result<(), String>;
type AnswersCheck = fn(&[Answer]) -> Result<(), String>;

enum BackendView {
    /// Exactly these (method, path, body), in order.
    Exact(Vec<(String, String, Vec<u8>)>),
    Check(BackendCheck),
}

struct Probe {
    name: String,
    request: Vec<u8>,
    statuses: Vec<u16>,
    /// The proxy must close the connection after the answers.
    closes: bool,
    backend: BackendView,
    answers: Option<AnswersCheck>,
    wait: Duration,
    /// The backend may get the start of a request it never completes (a body refused mid-way).
    partial_ok: bool,
}

impl Probe {
    /// Refused with `status`, connection closed, nothing parsed by the backend.
    fn refused(name: &str, status: u16, request: impl Into<Vec<u8>>) -> Probe {
        Probe {
            name: name.to_string(),
            request: request.into(),
            statuses: vec![status],
            closes: true,
            backend: BackendView::Exact(Vec::new()),
            answers: None,
            wait: ANSWER_WAIT,
            partial_ok: false,
        }
    }

    /// Answered 200 for each request, the backend parsed exactly `seen`.
    fn accepted(name: &str, request: impl Into<Vec<u8>>, seen: &[(&str, &str, &[u8])]) -> Probe {
        Probe {
            name: name.to_string(),
            request: request.into(),
            statuses: vec![200; seen.len()],
            closes: false,
            backend: BackendView::Exact(
                seen.iter().map(|(m, p, b)| (m.to_string(), p.to_string(), b.to_vec())).collect(),
            ),
            answers: None,
            wait: ANSWER_WAIT,
            partial_ok: false,
        }
    }

    /// Refused with 400 for its chunked body: the head may have reached the backend, no complete request.
    fn body_refused(name: &str, body: &str) -> Probe {
        Probe { partial_ok: true, ..Probe::refused(name, 400, chunked_post("/chunks", body)) }
    }

    fn checked(mut self, check: BackendCheck) -> Probe {
        self.backend = BackendView::Check(check);
        self
    }

    fn answers_checked(mut self, check: AnswersCheck) -> Probe {
        self.answers = Some(check);
        self
    }

    fn with_statuses(mut self, statuses: &[u16], closes: bool) -> Probe {
        self.statuses = statuses.to_vec();
        self.closes = closes;
        self
    }

    fn unchecked_close(mut self) -> Probe {
        self.closes = false;
        self
    }
}

/// `body` as two chunks.
fn chunked(body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
}

fn post(path: &str, headers: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: app\r\n{headers}\r\n{body}")
}

fn chunked_post(path: &str, body: &str) -> String {
    post(path, "Transfer-Encoding: chunked\r\n", body)
}

fn many_headers(count: usize, value_length: usize) -> String {
    (0..count).map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(value_length))).collect()
}

/// The rules every request the backend parsed must follow, whatever the probe.
fn framing_invariants(seen: &Seen) -> Result<(), String> {
    if seen.method == "!INVALID" {
        return Err(format!("the backend could not parse what it got ({}): {}", seen.path, show(&seen.raw)));
    }
    let hosts = seen.header_values("host");
    let lengths = seen.header_values("content-length");
    let encodings = seen.header_values("transfer-encoding");
    if hosts.len() != 1 {
        return Err(format!("{} reached the backend with Host headers {hosts:?}", seen.path));
    }
    if lengths.len() > 1 || encodings.len() > 1 || (!lengths.is_empty() && !encodings.is_empty()) {
        return Err(format!(
            "{} reached the backend with Content-Length {lengths:?} and Transfer-Encoding {encodings:?}",
            seen.path
        ));
    }
    Ok(())
}

fn one_request(seen: &[Seen], method: &str, path: &str, body: &[u8]) -> Result<(), String> {
    match seen {
        [s] if s.method == method && s.path == path && s.body == body => Ok(()),
        _ => Err(format!("expected one {method} {path} body={}", show(body))),
    }
}

/// The probe table run in every mode.
fn probes() -> Vec<Probe> {
    let smuggled_length = SMUGGLED.len();
    let hello_chunks = "5\r\nhello\r\n0\r\n\r\n";
    let te_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let mut probes = vec![
        // Host
        Probe::refused("no Host", 400, "GET /no-host HTTP/1.1\r\n\r\n"),
        Probe::refused("two Host headers, same value", 400, "GET /two-hosts HTTP/1.1\r\nHost: app\r\nHost: app\r\n\r\n"),
        Probe::refused(
            "two Host headers, different values",
            400,
            "GET /two-hosts HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n",
        ),
        // Content-Length with Transfer-Encoding
        Probe::refused(
            "Content-Length then Transfer-Encoding",
            400,
            post(
                "/cl-te",
                &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", te_smuggle.len()),
                &te_smuggle,
            ),
        ),
        Probe::refused(
            "Transfer-Encoding then Content-Length",
            400,
            post("/te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &chunked(SMUGGLED)),
        ),
        // Content-Length values
        Probe::refused("two equal Content-Length", 400, post("/two-cl", "Content-Length: 5\r\nContent-Length: 5\r\n", "hello")),
        Probe::refused(
            "two different Content-Length",
            400,
            post("/two-cl", &format!("Content-Length: 0\r\nContent-Length: {smuggled_length}\r\n"), SMUGGLED),
        ),
        Probe::refused("Content-Length list 5, 5", 400, post("/cl-list", "Content-Length: 5, 5\r\n", "hello")),
        Probe::refused("Content-Length +5", 400, post("/cl-plus", "Content-Length: +5\r\n", "hello")),
        Probe::refused("Content-Length -1", 400, post("/cl-minus", "Content-Length: -1\r\n", "hello")),
        Probe::refused("Content-Length 0x5", 400, post("/cl-hex", "Content-Length: 0x5\r\n", "hello")),
        Probe::refused("Content-Length 5 5", 400, post("/cl-space", "Content-Length: 5 5\r\n", "hello")),
        // Transfer-Encoding values
        Probe::refused("Transfer-Encoding: xchunked", 400, post("/te", "Transfer-Encoding: xchunked\r\n", hello_chunks)),
        Probe::refused(
            "Transfer-Encoding: chunked, identity",
            400,
            post("/te", "Transfer-Encoding: chunked, identity\r\n", hello_chunks),
        ),
        Probe::refused(
            "Transfer-Encoding: gzip, chunked",
            400,
            post("/te", "Transfer-Encoding: gzip, chunked\r\n", hello_chunks),
        ),
        Probe::refused(
            "Transfer-Encoding: chunked, chunked",
            400,
            post("/te", "Transfer-Encoding: chunked, chunked\r\n", hello_chunks),
        ),
        Probe::refused(
            "two Transfer-Encoding: chunked headers",
            400,
            post("/te", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", hello_chunks),
        ),
        Probe::refused("Transfer-Encoding: identity", 400, post("/te", "Transfer-Encoding: identity\r\n", hello_chunks)),
        Probe::refused(
            "Transfer-Encoding value starting with a vertical tab",
            400,
            post("/te", "Transfer-Encoding: \x0bchunked\r\n", hello_chunks),
        ),
        Probe::refused(
            "space before the colon of Transfer-Encoding",
            400,
            post("/te", "Transfer-Encoding : chunked\r\n", hello_chunks),
        ),
        // obs-fold
        Probe::refused("obs-fold with a space", 400, "GET /fold HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n b\r\n\r\n"),
        Probe::refused("obs-fold with a tab", 400, "GET /fold HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n\tb\r\n\r\n"),
        Probe::refused(
            "obs-fold of Transfer-Encoding",
            400,
            post("/fold-te", "Transfer-Encoding:\r\n chunked\r\n", hello_chunks),
        ),
        Probe::refused("whitespace before the first header", 400, "GET /fold HTTP/1.1\r\n Host: app\r\n\r\n"),
        // Versions and methods
        Probe::refused(
            "Transfer-Encoding on HTTP/1.0",
            400,
            "POST /te-http10 HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        Probe::refused("CONNECT", 405, "CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n"),
        // Chunked framing
        Probe::body_refused("whitespace after the chunk size", "5 \r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("tab after the chunk size", "5\t\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("control byte in a chunk extension", "5;ext=a\x01b\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("bare CR in a chunk extension", "5;ext\rx\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("chunk size of 16 hex digits", "0000000000000005\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("chunk size missing", "\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("bare LF after the chunk size", "5\nhello\r\n0\r\n\r\n"),
        Probe::body_refused("bare LF after chunk data", "5\r\nhello\n0\r\n\r\n"),
        Probe::body_refused("bare LF after the last chunk size", "5\r\nhello\r\n0\n\r\n"),
        Probe::body_refused("bare LF ending the chunked body, request pipelined after it", &format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}")),
        Probe::body_refused("request line as a trailer", "5\r\nhello\r\n0\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n"),
        Probe::body_refused("trailer ending in a bare LF", "5\r\nhello\r\n0\r\nX-Trailer: 1\n\r\n"),
        // Accepted, framing intact
        Probe::accepted("control: POST with a length", post("/control", "Content-Length: 5\r\n", "hello"), &[(
            "POST",
            "/control",
            b"hello",
        )]),
        Probe::accepted("control: chunked POST", chunked_post("/control-chunked", &chunked("hello world")), &[(
            "POST",
            "/control-chunked",
            b"hello world",
        )]),
        Probe::accepted(
            "Connection: Content-Length on a POST",
            post(
                "/conn-cl",
                &format!("Connection: Content-Length\r\nContent-Length: {smuggled_length}\r\n"),
                SMUGGLED,
            ),
            &[("POST", "/conn-cl", SMUGGLED.as_bytes())],
        ),
        Probe::accepted(
            "Connection: keep-alive, content-length on a POST",
            post(
                "/conn-ka-cl",
                &format!("Connection: keep-alive, content-length\r\nContent-Length: {smuggled_length}\r\n"),
                SMUGGLED,
            ),
            &[("POST", "/conn-ka-cl", SMUGGLED.as_bytes())],
        ),
        Probe::accepted(
            "Connection: Content-Length on a GET with a body",
            format!(
                "GET /conn-cl-get HTTP/1.1\r\nHost: app\r\nConnection: Content-Length\r\nContent-Length: {smuggled_length}\r\n\r\n{SMUGGLED}"
            ),
            &[("GET", "/conn-cl-get", SMUGGLED.as_bytes())],
        ),
        Probe::accepted(
            "Connection: keep-alive, content-length on a GET with a body",
            format!(
                "GET /conn-ka-cl-get HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, content-length\r\nContent-Length: {smuggled_length}\r\n\r\n{SMUGGLED}"
            ),
            &[("GET", "/conn-ka-cl-get", SMUGGLED.as_bytes())],
        ),
        Probe::accepted("Connection: host", "GET /conn-host HTTP/1.1\r\nHost: app\r\nConnection: host\r\n\r\n", &[])
            .with_statuses(&[200], false)
            .checked(|seen| {
                one_request(seen, "GET", "/conn-host", b"")?;
                match seen[0].header_values("host").as_slice() {
                    ["app"] => Ok(()),
                    other => Err(format!("the backend got Host {other:?}")),
                }
            }),
        Probe::accepted(
            "Connection: transfer-encoding with a chunked body",
            post("/conn-te", "Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n", &chunked(SMUGGLED)),
            &[("POST", "/conn-te", SMUGGLED.as_bytes())],
        ),
        Probe::accepted(
            "Transfer-Encoding: Chunked",
            post("/te-capital", "Transfer-Encoding: Chunked\r\n", hello_chunks),
            &[("POST", "/te-capital", b"hello")],
        ),
        Probe::accepted(
            "Transfer-Encoding:<tab>chunked",
            post("/te-tab", "Transfer-Encoding:\tchunked\r\n", hello_chunks),
            &[("POST", "/te-tab", b"hello")],
        ),
        Probe::accepted(
            "Transfer-Encoding with spaces and tabs around chunked",
            post("/te-spaces", "Transfer-Encoding:  \tchunked \t\r\n", hello_chunks),
            &[("POST", "/te-spaces", b"hello")],
        ),
        Probe::accepted(
            "pipelined: POST with a length, then GET",
            format!("{}GET /pipe-2 HTTP/1.1\r\nHost: app\r\n\r\n", post("/pipe-1", "Content-Length: 5\r\n", "hello")),
            &[("POST", "/pipe-1", b"hello"), ("GET", "/pipe-2", b"")],
        ),
        Probe::accepted(
            "pipelined: chunked POST, then GET",
            format!("{}GET /pipe-4 HTTP/1.1\r\nHost: app\r\n\r\n", chunked_post("/pipe-3", hello_chunks)),
            &[("POST", "/pipe-3", b"hello"), ("GET", "/pipe-4", b"")],
        ),
        Probe::accepted(
            "valid request, then one without Host",
            "GET /first HTTP/1.1\r\nHost: app\r\n\r\nGET /second HTTP/1.1\r\n\r\n",
            &[("GET", "/first", b"")],
        )
        .with_statuses(&[200, 400], true),
        Probe::accepted(
            "valid request, then Content-Length with Transfer-Encoding",
            format!(
                "GET /first HTTP/1.1\r\nHost: app\r\n\r\n{}",
                post(
                    "/second",
                    &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", te_smuggle.len()),
                    &te_smuggle
                )
            ),
            &[("GET", "/first", b"")],
        )
        .with_statuses(&[200, 400], true),
        Probe::accepted("absolute-form target", "GET http://app/absolute HTTP/1.1\r\nHost: app\r\n\r\n", &[])
            .with_statuses(&[200], false)
            .checked(|seen| match seen {
                [s] if s.method == "GET" && s.path.ends_with("/absolute") && s.body.is_empty() => Ok(()),
                _ => Err("expected one GET .../absolute".into()),
            }),
        Probe::accepted(
            "HTTP/1.0 POST with a length",
            "POST /http10 HTTP/1.0\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
            &[("POST", "/http10", b"hello")],
        ),
        Probe::accepted(
            "GET with a chunked body",
            format!("GET /get-chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n{hello_chunks}"),
            &[("GET", "/get-chunked", b"hello")],
        ),
        Probe::accepted(
            "GET with a chunked body and Expect: 100-continue",
            format!(
                "GET /expect-chunked HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n{hello_chunks}"
            ),
            &[("GET", "/expect-chunked", b"hello")],
        ),
        Probe::accepted(
            "valid trailer, dropped",
            chunked_post("/trailer", "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
            &[],
        )
        .with_statuses(&[200], false)
        .checked(|seen| {
            one_request(seen, "POST", "/trailer", b"hello")?;
            if String::from_utf8_lossy(&seen[0].raw).to_ascii_lowercase().contains("x-trailer") {
                return Err(format!("the trailer reached the backend: {}", show(&seen[0].raw)));
            }
            Ok(())
        }),
        // Responses
        Probe::accepted(
            "backend answer naming Content-Length in Connection, twice on one connection",
            "GET /resp/connection-cl?1 HTTP/1.1\r\nHost: app\r\n\r\nGET /resp/connection-cl?2 HTTP/1.1\r\nHost: app\r\n\r\n",
            &[("GET", "/resp/connection-cl?1", b""), ("GET", "/resp/connection-cl?2", b"")],
        )
        .answers_checked(|answers| {
            let bodies: Vec<String> = answers.iter().map(|a| String::from_utf8_lossy(&a.body).into_owned()).collect();
            if bodies != ["/resp/connection-cl?1", "/resp/connection-cl?2"] {
                return Err(format!("bodies {bodies:?}"));
            }
            Ok(())
        }),
        Probe::accepted(
            "backend answer with Transfer-Encoding: gzip, chunked",
            "GET /resp/gzip-chunked HTTP/1.1\r\nHost: app\r\n\r\nGET /after-gzip HTTP/1.1\r\nHost: app\r\n\r\n",
            &[("GET", "/resp/gzip-chunked", b""), ("GET", "/after-gzip", b"")],
        )
        .answers_checked(|answers| {
            let codings = answers[0].header("transfer-encoding").unwrap_or_default().replace([' ', '\t'], "");
            if !codings.eq_ignore_ascii_case("gzip,chunked") {
                return Err(format!("Transfer-Encoding {:?} (head {})", codings, show(&answers[0].raw)));
            }
            if answers[0].body != GZIP_HELLO || answers[1].body != b"GET /after-gzip" {
                return Err(format!("bodies {} and {}", show(&answers[0].body), show(&answers[1].body)));
            }
            Ok(())
        }),
        Probe::accepted(
            "backend answer trailers, dropped",
            "GET /resp/trailers HTTP/1.1\r\nHost: app\r\n\r\nGET /after-trailers HTTP/1.1\r\nHost: app\r\n\r\n",
            &[("GET", "/resp/trailers", b""), ("GET", "/after-trailers", b"")],
        )
        .answers_checked(|answers| {
            let raw = &answers[0].raw;
            let trailer = find(&raw.to_ascii_lowercase(), b"x-resp-trailer: 1").is_some();
            if answers[0].body != b"hello" || !raw.ends_with(b"0\r\n\r\n") || trailer {
                return Err(format!("answer {}", show(raw)));
            }
            Ok(())
        }),
    ];
    // The default limits.
    let long = |n: usize| "a".repeat(n);
    probes.extend([
        Probe::refused(
            "request line over the default 16384",
            414,
            format!("GET /{} HTTP/1.1\r\nHost: app\r\n\r\n", long(17_000)),
        )
        .unchecked_close(),
        Probe::accepted(
            "request line under the default 16384",
            format!("GET /long-line?{} HTTP/1.1\r\nHost: app\r\n\r\n", long(15_000)),
            &[],
        )
        .with_statuses(&[200], false)
        .checked(|seen| match seen {
            [s] if s.path.starts_with("/long-line?") => Ok(()),
            _ => Err("expected the long GET".into()),
        }),
        Probe::refused(
            "header line over the default 16384",
            431,
            format!("GET /long-header HTTP/1.1\r\nHost: app\r\nX-Long: {}\r\n\r\n", long(17_000)),
        )
        .unchecked_close(),
        Probe::accepted(
            "header line under the default 16384",
            format!("GET /long-header HTTP/1.1\r\nHost: app\r\nX-Long: {}\r\n\r\n", long(15_000)),
            &[("GET", "/long-header", b"")],
        ),
        Probe::refused(
            "head over the default 65536",
            431,
            format!("GET /big-head HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(5, 15_000)),
        )
        .unchecked_close(),
        Probe::accepted(
            "head under the default 65536",
            format!("GET /big-head HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(3, 15_000)),
            &[("GET", "/big-head", b"")],
        ),
        Probe::refused(
            "more headers than the default 100",
            431,
            format!("GET /many-headers HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(110, 2)),
        )
        .unchecked_close(),
        Probe::accepted(
            "fewer headers than the default 100",
            format!("GET /many-headers HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(90, 2)),
            &[("GET", "/many-headers", b"")],
        ),
    ]);
    probes
}

/// The probes for a proxy run with `--max-header-line-size=1024 --max-header-size=4096
/// --max-header-count=20 --header-timeout=1s`.
fn limit_probes() -> Vec<Probe> {
    let long = |n: usize| "a".repeat(n);
    vec![
        Probe::refused("request line over 1024", 414, format!("GET /{} HTTP/1.1\r\nHost: app\r\n\r\n", long(1100)))
            .unchecked_close(),
        Probe::accepted(
            "request line under 1024",
            format!("GET /line-{} HTTP/1.1\r\nHost: app\r\n\r\n", long(900)),
            &[],
        )
        .with_statuses(&[200], false)
        .checked(|seen| match seen {
            [s] if s.path.starts_with("/line-") => Ok(()),
            _ => Err("expected the long GET".into()),
        }),
        Probe::refused(
            "header line over 1024",
            431,
            format!("GET /long-header HTTP/1.1\r\nHost: app\r\nX-Long: {}\r\n\r\n", long(1100)),
        )
        .unchecked_close(),
        Probe::accepted(
            "header line under 1024",
            format!("GET /long-header HTTP/1.1\r\nHost: app\r\nX-Long: {}\r\n\r\n", long(900)),
            &[("GET", "/long-header", b"")],
        ),
        Probe::refused(
            "head over 4096",
            431,
            format!("GET /big-head HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(6, 900)),
        )
        .unchecked_close(),
        Probe::accepted(
            "head under 4096",
            format!("GET /big-head HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(3, 900)),
            &[("GET", "/big-head", b"")],
        ),
        Probe::refused(
            "more than 20 headers",
            431,
            format!("GET /many-headers HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(25, 2)),
        )
        .unchecked_close(),
        Probe::accepted(
            "fewer than 20 headers",
            format!("GET /many-headers HTTP/1.1\r\nHost: app\r\n{}\r\n", many_headers(15, 2)),
            &[("GET", "/many-headers", b"")],
        ),
        Probe {
            wait: Duration::from_secs(5),
            ..Probe::refused(
                "head unfinished after --header-timeout",
                408,
                "GET /unfinished HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n",
            )
        },
    ]
}

// ---------------------------------------------------------------------------------------------------------
// Running probes

/// A proxy with the logging backend deployed behind it for `Host: app`, and the way in.
struct Harness {
    mode: String,
    front: Front,
    backend: LogBackend,
    proxy: Option<Proxy>,
}

impl Harness {
    /// A proxy run with `run_args`, the backend deployed with `deploy_args`; `tls`: a certificate for `app`.
    async fn start(mode: &str, run_args: &[&str], deploy_args: &[&str], tls: bool) -> Harness {
        let backend = LogBackend::start().await;
        let mut args = vec!["--shutdown-timeout=1s".to_string()];
        args.extend(run_args.iter().map(|a| a.to_string()));
        let proxy = tokio::task::spawn_blocking(move || {
            let temp = tempfile::tempdir().expect("temp dir");
            if let Some(binary) = std::env::var_os("HOSTILE_PROXY_BINARY") {
                std::os::unix::fs::symlink(binary, temp.path().join("kamal-proxy")).expect("link kamal-proxy");
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut proxy = Proxy::start_in(temp.path(), &args);
            proxy._temp = Some(temp);
            proxy
        })
        .await
        .unwrap();
        let target = backend.target();
        let mut deploy = vec!["deploy", "app", target.as_str(), "--host=app"];
        deploy.extend_from_slice(deploy_args);
        let mut front = Front { port: proxy.http_port, tls: None };
        if tls {
            let (ca, cert, key) = make_certificate(&proxy.dir, &[HOST]);
            let cert_flag = format!("--tls-certificate-path={}", cert.display());
            let key_flag = format!("--tls-private-key-path={}", key.display());
            let mut deploy = deploy.clone();
            deploy.extend(["--tls", cert_flag.as_str(), key_flag.as_str()]);
            proxy.ctl_ok(&deploy).await;
            front = Front { port: proxy.https_port, tls: Some(tls_connector(&ca)) };
        } else {
            proxy.ctl_ok(&deploy).await;
        }
        Harness { mode: mode.to_string(), front, backend, proxy: Some(proxy) }
    }

    /// `GET path` on a new connection must reach the backend and come back with its own answer.
    async fn sentinel(&self, path: &str) -> Result<(), String> {
        let mut io = self.front.connect().await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
        let exchange = exchange(&mut io, request.as_bytes(), &[200], false, ANSWER_WAIT).await;
        let expected = format!("GET {path}");
        match exchange.answers.first() {
            Some(answer) if answer.status == 200 && answer.body == expected.as_bytes() => {}
            Some(answer) => {
                return Err(format!("{path} was answered {} {}", answer.status, show(&answer.body)));
            }
            None => return Err(format!("{path}: {}", exchange.describe())),
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        while !self.backend.saw_path(path) {
            if Instant::now() > deadline {
                return Err(format!("{path} never reached the backend"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// After a failed probe: closes the backend's connections and waits for a clean sentinel.
    async fn resync(&self, index: usize) -> Result<(), String> {
        self.backend.reset_connections();
        let mut last = String::new();
        for attempt in 0..10 {
            match self.sentinel(&format!("/resync-{index}-{attempt}")).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!("no clean answer after the probe ({last}); later probes may be spoilt"))
    }

    async fn run(&self, probe: &Probe, index: usize) -> Option<String> {
        let start = self.backend.len();
        let strays_start = self.backend.stray_count();
        let mut problems = Vec::new();
        let exchange = match self.front.connect().await {
            Ok(mut io) => exchange(&mut io, &probe.request, &probe.statuses, probe.closes, probe.wait).await,
            Err(e) => {
                problems.push(e);
                Exchange::default()
            }
        };
        if exchange.statuses() != probe.statuses || exchange.error.is_some() {
            problems.push(format!("{} (expected {:?})", exchange.describe(), probe.statuses));
        } else if probe.closes && !exchange.closed {
            problems.push(format!("{}: the connection stayed open", exchange.describe()));
        } else if let Some(check) = probe.answers
            && let Err(e) = check(&exchange.answers)
        {
            problems.push(e);
        }
        let sentinel = format!("/sentinel-{index}");
        if let Err(e) = self.sentinel(&sentinel).await {
            problems.push(format!("sentinel: {e}"));
        }
        let seen: Vec<Seen> = self.backend.since(start).into_iter().filter(|s| s.path != sentinel).collect();
        let view = match &probe.backend {
            BackendView::Exact(expected) => {
                let got: Vec<(String, String, Vec<u8>)> =
                    seen.iter().map(|s| (s.method.clone(), s.path.clone(), s.body.clone())).collect();
                if &got == expected { Ok(()) } else { Err(String::new()) }
            }
            BackendView::Check(check) => check(&seen),
        };
        let invariants = seen.iter().try_for_each(framing_invariants);
        if view.is_err() || invariants.is_err() {
            let summaries: Vec<String> = seen.iter().map(Seen::summary).collect();
            let why = [view.err(), invariants.err()].into_iter().flatten().filter(|e| !e.is_empty());
            let why: Vec<String> = why.collect();
            problems.push(format!(
                "backend saw [{}]{}",
                summaries.join(", "),
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            ));
        }
        let strays = self.backend.strays_since(strays_start);
        if !probe.partial_ok && !strays.is_empty() {
            let strays: Vec<String> = strays.iter().map(|s| show(s)).collect();
            problems.push(format!("the backend got incomplete requests [{}]", strays.join(", ")));
        }
        if std::env::var_os("HOSTILE_VERBOSE").is_some() {
            let summaries: Vec<String> = seen.iter().map(Seen::summary).collect();
            eprintln!(
                "[{}] {}: {}: {}; backend saw [{}]",
                self.mode,
                probe.name,
                if problems.is_empty() { "ok" } else { "FAILED" },
                exchange.describe(),
                summaries.join(", ")
            );
        }
        if problems.is_empty() {
            return None;
        }
        if let Err(e) = self.resync(index).await {
            problems.push(e);
        }
        Some(format!("[{}] {}: {}", self.mode, probe.name, problems.join("; ")))
    }

    async fn run_all(&self, probes: &[Probe]) -> Vec<String> {
        let mut failures = Vec::new();
        for (index, probe) in probes.iter().enumerate() {
            failures.extend(self.run(probe, index).await);
        }
        failures
    }

    async fn stop(mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            tokio::task::spawn_blocking(move || proxy.stop()).await.unwrap();
        }
    }
}

fn report(failures: &[String]) -> String {
    format!("{} failing probe(s):\n  {}", failures.len(), failures.join("\n  "))
}

/// Every probe, over plain HTTP and TLS, on the fast path and buffered through hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_or_forwarded_with_their_framing() {
    let modes =
        [("http", false, false), ("http+buffer", false, true), ("tls", true, false), ("tls+buffer", true, true)];
    let runs = modes.into_iter().map(|(mode, tls, buffer)| async move {
        let deploy: &[&str] = if buffer { &["--buffer-requests"] } else { &[] };
        let harness = Harness::start(mode, &[], deploy, tls).await;
        let failures = harness.run_all(&probes()).await;
        harness.stop().await;
        failures
    });
    let failures: Vec<String> = futures_util::future::join_all(runs).await.into_iter().flatten().collect();
    assert!(failures.is_empty(), "{}", report(&failures));
}

/// Head limits, the head timeout and the connection caps, with small values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_head_timeout_and_connection_caps() {
    let limits = [
        "--max-header-line-size=1024",
        "--max-header-size=4096",
        "--max-header-count=20",
        "--header-timeout=1s",
        "--max-connections-per-ip=5",
    ];
    let (harness, capped) = tokio::join!(
        Harness::start("limits", &limits, &[], false),
        Harness::start("max-connections", &["--max-connections=3"], &[], false),
    );
    let mut failures = harness.run_all(&limit_probes()).await;
    failures.extend(trickled_head_times_out(&harness).await);
    failures.extend(connection_cap(&harness, 5).await);
    failures.extend(connection_cap(&capped, 3).await);
    harness.stop().await;
    capped.stop().await;
    assert!(failures.is_empty(), "{}", report(&failures));
}

/// A head trickled in a line at a time is cut by `--header-timeout` (1s) however steadily it comes.
async fn trickled_head_times_out(harness: &Harness) -> Option<String> {
    let fail = |what: String| Some(format!("[{}] head trickled past --header-timeout: {what}", harness.mode));
    let mut io = match harness.front.connect().await {
        Ok(io) => io,
        Err(e) => return fail(e),
    };
    let started = Instant::now();
    if io.write_all(b"GET /trickle HTTP/1.1\r\nHost: app\r\n").await.is_err() {
        return fail("first write failed".into());
    }
    let mut received = Vec::new();
    let mut closed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    while !closed && started.elapsed() < Duration::from_secs(5) {
        let mut chunk = [0u8; 4096];
        tokio::select! {
            read = io.read(&mut chunk) => match read {
                Ok(0) | Err(_) => closed = true,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                // Keeps sending; once the proxy has answered, a failed write is expected.
                let _ = io.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    }
    let elapsed = started.elapsed();
    let status = parse_response(&received, true).ok().flatten().map(|(a, _)| a.status);
    let reached = harness.backend.saw_path("/trickle");
    if status != Some(408) || !closed || elapsed > Duration::from_secs(4) || reached {
        return fail(format!(
            "status {status:?} after {elapsed:?}, {}, backend {}",
            if closed { "closed" } else { "still open" },
            if reached { "got it" } else { "did not get it" }
        ));
    }
    None
}

/// `cap` connections are served; one more is closed at once with nothing read or answered; once one of the
/// first closes, new connections are served again.
async fn connection_cap(harness: &Harness, cap: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("[{}] connection cap {cap}: {what}", harness.mode));
    let mut held = Vec::new();
    // Connections of earlier probes may still count until the proxy sees them closed: each held connection
    // is retried until it is served.
    for i in 0..cap {
        let request = format!("GET /held-{i} HTTP/1.1\r\nHost: app\r\n\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let outcome = match harness.front.connect().await {
                Ok(mut io) => {
                    let exchange = exchange(&mut io, request.as_bytes(), &[200], false, ANSWER_WAIT).await;
                    if exchange.statuses() == [200] { Ok(io) } else { Err(exchange.describe()) }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(io) => {
                    held.push(io);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    fail(format!("connection {} of {cap}: {e}", i + 1));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    match harness.front.connect().await {
        Err(_) => {}
        Ok(mut io) => {
            // Closed at once: no answer, and not left open either.
            let exchange =
                exchange(&mut io, b"GET /over-cap HTTP/1.1\r\nHost: app\r\n\r\n", &[], true, ANSWER_WAIT).await;
            if !exchange.answers.is_empty() || exchange.error.is_some() || !exchange.closed {
                fail(format!("connection {} of {cap}: {}", cap + 1, exchange.describe()));
            }
        }
    }
    if harness.backend.saw_path("/over-cap") {
        fail("the request over the cap reached the backend".into());
    }
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = match harness.front.connect().await {
            Ok(mut io) => {
                let exchange =
                    exchange(&mut io, b"GET /after-cap HTTP/1.1\r\nHost: app\r\n\r\n", &[200], false, ANSWER_WAIT)
                        .await;
                exchange.statuses() == [200]
            }
            Err(_) => false,
        };
        if served {
            break;
        }
        if Instant::now() > deadline {
            fail("no connection served after one of the held ones closed".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failures
}
