//! The hyper path's gatekeeper: every byte hyper reads from an HTTP/1 client connection passes through a
//! [`Guarded`] stream, which applies the fast path's rules ([`super::http1`]) to each request head and body,
//! so that both paths accept, refuse and frame exactly the same requests.
//!
//! Why a stream wrapper: hyper's parser is more lenient than berth's rules (it accepts whitespace after a
//! chunk size, and a bare LF after the last chunk), and a request it accepted is already on its way to the
//! target. Here nothing reaches hyper unchecked:
//! - A request head is held back until it is complete and valid. An invalid one is never shown to hyper:
//!   hyper's input ends there, and once hyper has answered the requests before it and shuts the connection
//!   down, the guard writes the same refusal the fast path sends (400, 405, 408, 414 or 431).
//! - A body is followed as it passes (the same scanner as the fast path's): broken chunked framing fails
//!   hyper's read, so hyper abandons the request and the target never receives a whole one; trailer fields
//!   are removed.
//! - After a request that asks for an upgrade, no more input is given until hyper's answer is seen: a 101
//!   makes the connection a tunnel (no longer inspected), anything else goes back to checking requests.
//!
//! The guard follows hyper's responses (as written) to know when every request handed over was answered.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::connection_limits::HeadReservation;
use super::http1::{self, BodyProgress, HeadLimits, Parsed, Refusal};

/// How much is read from the client at a time.
const READ_SIZE: usize = 16 * 1024;

/// A client connection served by hyper, with berth's HTTP/1 rules applied to what hyper reads.
pub struct Guarded<S> {
    stream: S,
    /// Bytes read from the client; those before `at` were given to hyper.
    input: Vec<u8>,
    at: usize,
    /// Of the bytes from `at` on, how many are checked and may be given to hyper.
    ready: usize,
    phase: Phase,
    limits: HeadLimits,
    header_timeout: Duration,
    /// Runs while a request head is incomplete.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// The process-wide memory an incomplete head holds beyond one read's worth.
    reservation: HeadReservation,
    responses: ResponseWatch,
    /// The refusal to write when hyper shuts the connection down, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
    /// The reader waiting for hyper's answers (upgrade decision, or the last answer before a refusal).
    read_waker: Option<Waker>,
}

#[derive(Debug)]
enum Phase {
    /// Expecting a request head.
    Head,
    Body {
        progress: BodyProgress,
        upgrade: bool,
    },
    /// An upgrade request was handed over; its answer decides what the next bytes are.
    AwaitUpgrade,
    /// Upgraded: bytes pass as they are.
    Tunnel,
    /// A request was refused: hyper's input ends once it answered the requests before it.
    Refused,
    /// The client's chunked framing broke mid-body: hyper's read fails.
    BrokenBody,
    /// The client closed its side.
    Eof,
}

impl<S> Guarded<S> {
    /// Wraps `stream`, whose first bytes (already read by the fast path) are `pending`.
    pub fn new(stream: S, pending: &[u8], limits: HeadLimits, header_timeout: Duration) -> Guarded<S> {
        let mut guarded = Guarded {
            stream,
            input: pending.to_vec(),
            at: 0,
            ready: 0,
            phase: Phase::Head,
            limits,
            header_timeout,
            head_timer: None,
            reservation: HeadReservation::default(),
            responses: ResponseWatch::default(),
            refusal: None,
            read_waker: None,
        };
        guarded.check();
        guarded
    }

    /// Checks the bytes received but not yet checked, as far as the phase allows.
    fn check(&mut self) {
        loop {
            if let Phase::Body { progress, upgrade } = &self.phase
                && progress.is_done()
            {
                self.phase = if *upgrade { Phase::AwaitUpgrade } else { Phase::Head };
            }
            let start = self.at + self.ready;
            if start == self.input.len() {
                return;
            }
            match &mut self.phase {
                Phase::Head => {
                    let mut slots = http1::header_slots();
                    let outcome = match http1::parse_request(&self.input[start..], &mut slots, &self.limits) {
                        Parsed::Complete((head, _)) => {
                            Ok(Some((head.head_len, head.method == "HEAD", head.framing, head.upgrade)))
                        }
                        Parsed::Partial => Ok(None),
                        Parsed::Invalid(refusal) => Err(refusal),
                    };
                    match outcome {
                        Ok(Some((head_len, head_request, framing, upgrade))) => {
                            self.responses.expect(head_request);
                            self.ready += head_len;
                            self.head_timer = None;
                            self.reservation.release();
                            self.phase = Phase::Body { progress: BodyProgress::new(framing), upgrade };
                        }
                        Ok(None) => return,
                        Err(refusal) => return self.refuse(refusal),
                    }
                }
                Phase::Body { progress, .. } => match progress.advance(&self.input[start..]) {
                    Ok(advanced) => {
                        if !advanced.trailer.is_empty() {
                            self.input.drain(start + advanced.trailer.start..start + advanced.trailer.end);
                        }
                        self.ready += advanced.forwarded_len();
                        if !progress.is_done() {
                            return;
                        }
                    }
                    Err(_) => {
                        self.input.truncate(start);
                        self.phase = Phase::BrokenBody;
                        return;
                    }
                },
                Phase::Tunnel => {
                    self.ready = self.input.len() - self.at;
                    return;
                }
                Phase::AwaitUpgrade | Phase::Refused | Phase::BrokenBody | Phase::Eof => return,
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.input.truncate(self.at + self.ready);
        self.refusal = Some((http1::refusal_response(refusal), 0));
        self.head_timer = None;
        self.reservation.release();
        self.phase = Phase::Refused;
    }

    fn wait_for_answers(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let count = this.ready.min(buf.remaining());
                buf.put_slice(&this.input[this.at..this.at + count]);
                this.at += count;
                this.ready -= count;
                if this.at == this.input.len() {
                    this.input.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Tunnel if this.at == this.input.len() => return Pin::new(&mut this.stream).poll_read(cx, buf),
                Phase::Eof => return Poll::Ready(Ok(())),
                Phase::BrokenBody => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed chunked request body",
                    )));
                }
                // hyper's input ends only once it answered everything before the refused request: an end
                // of input while a request is in flight would abandon that request.
                Phase::Refused if this.responses.all_answered() => return Poll::Ready(Ok(())),
                Phase::Refused => return this.wait_for_answers(cx),
                Phase::AwaitUpgrade if this.responses.upgraded => {
                    this.phase = Phase::Tunnel;
                    this.check();
                    continue;
                }
                Phase::AwaitUpgrade if this.responses.all_answered() => {
                    this.phase = Phase::Head;
                    this.check();
                    continue;
                }
                Phase::AwaitUpgrade => return this.wait_for_answers(cx),
                Phase::Head | Phase::Body { .. } | Phase::Tunnel => {}
            }
            // An incomplete head must be complete within the header timeout.
            if matches!(this.phase, Phase::Head) && this.at < this.input.len() {
                let timeout = this.header_timeout;
                let timer = this.head_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.refuse(Refusal { status: 408, reason: "request head not received within --header-timeout" });
                    continue;
                }
            }
            if this.at > 0 {
                this.input.drain(..this.at);
                this.at = 0;
            }
            // A head longer than one read grows only within the process-wide budget.
            if matches!(this.phase, Phase::Head) && this.input.len() >= READ_SIZE && !this.reservation.grow(READ_SIZE) {
                this.refuse(Refusal { status: 503, reason: "too many large request heads in progress; try again" });
                continue;
            }
            let start = this.input.len();
            this.input.resize(start + READ_SIZE, 0);
            let mut read = ReadBuf::new(&mut this.input[start..]);
            let polled = Pin::new(&mut this.stream).poll_read(cx, &mut read);
            let count = read.filled().len();
            this.input.truncate(start + count);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) if count == 0 => {
                    // An unfinished head at the end is dropped: hyper sees a clean end of input.
                    this.input.truncate(this.at + this.ready);
                    if !matches!(this.phase, Phase::Tunnel) {
                        this.phase = Phase::Eof;
                    }
                    if this.ready == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => this.check(),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        if !matches!(this.phase, Phase::Tunnel)
            && this.responses.follow(&buf[..written])
            && let Some(waker) = this.read_waker.take()
        {
            waker.wake();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper has written its last answer: the refusal goes after it.
        if let Some((refusal, written)) = &mut this.refusal {
            while *written < refusal.len() {
                let count = std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, &refusal[*written..]))?;
                if count == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += count;
            }
            std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
            this.refusal = None;
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Follows the responses hyper writes, to know when every request handed over has its answer.
#[derive(Debug, Default)]
struct ResponseWatch {
    /// Requests handed to hyper and not answered yet (true: HEAD, whose answer has no body).
    unanswered: VecDeque<bool>,
    /// The bytes of a response head being written.
    head: Vec<u8>,
    body: Option<BodyProgress>,
    /// hyper answered 101: the connection is a tunnel.
    upgraded: bool,
    /// hyper wrote something this watch cannot follow: nothing is known about answers any more.
    lost: bool,
}

impl ResponseWatch {
    fn expect(&mut self, head_request: bool) {
        self.unanswered.push_back(head_request);
    }

    fn all_answered(&self) -> bool {
        self.unanswered.is_empty() || self.lost
    }

    /// Follows `written`; returns true when a response was completed or the connection upgraded.
    fn follow(&mut self, mut written: &[u8]) -> bool {
        let mut progressed = false;
        while !written.is_empty() && !self.upgraded && !self.lost {
            if let Some(body) = &mut self.body {
                let Ok(advanced) = body.advance(written) else {
                    self.lost = true;
                    return true;
                };
                written = &written[advanced.taken..];
                if body.is_done() {
                    self.body = None;
                    self.unanswered.pop_front();
                    progressed = true;
                }
                continue;
            }
            self.head.extend_from_slice(written);
            if self.head.starts_with(b"HTTP/1.1 101 ") || self.head.starts_with(b"HTTP/1.0 101 ") {
                self.upgraded = true;
                return true;
            }
            let head_request = self.unanswered.front().copied().unwrap_or(false);
            let mut slots = http1::header_slots();
            let parsed = http1::parse_response(&self.head, &mut slots, head_request);
            let (head_len, framing, informational) = match parsed {
                Ok(Some((head, _))) => (head.head_len, head.framing, head.is_informational()),
                Ok(None) => break,
                Err(_) => {
                    self.lost = true;
                    return true;
                }
            };
            let rest = self.head.split_off(head_len);
            self.head.clear();
            if !informational {
                let body = BodyProgress::new(framing);
                if body.is_done() {
                    self.unanswered.pop_front();
                    progressed = true;
                } else {
                    self.body = Some(body);
                }
            }
            // The body bytes written with the head are followed from a copy (rare: the hyper path only).
            return self.follow(&rest) || progressed;
        }
        progressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs `client_bytes` through a guard as hyper would read them, answering each request as hyper would.
    async fn through_guard(client_bytes: &[u8], limits: HeadLimits) -> (Vec<u8>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(client_bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut guarded = Guarded::new(server, b"", limits, Duration::from_secs(5));
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = guarded.read(&mut chunk).await;
            match read {
                Ok(0) | Err(_) => break,
                Ok(count) => seen.extend_from_slice(&chunk[..count]),
            }
        }
        guarded.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (seen, answer)
    }

    #[tokio::test]
    async fn valid_requests_pass_and_trailers_are_removed() {
        let requests =
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                         3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let (seen, answer) = through_guard(requests, HeadLimits::default()).await;
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n"
        );
        assert!(answer.is_empty());
    }

    #[tokio::test]
    async fn an_invalid_head_is_never_shown_and_refused_at_shutdown() {
        let requests =
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(requests).await.unwrap();
        let mut guarded = Guarded::new(server, b"", HeadLimits::default(), Duration::from_secs(5));
        let mut chunk = [0u8; 4096];
        let count = guarded.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..count], b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        // Until /a is answered, hyper's input does not end (that would abandon /a).
        let pending = tokio::time::timeout(Duration::from_millis(50), guarded.read(&mut chunk)).await;
        assert!(pending.is_err(), "input held while /a is unanswered");
        guarded.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        assert_eq!(guarded.read(&mut chunk).await.unwrap(), 0, "then the input ends");
        guarded.shutdown().await.unwrap();
        drop(guarded);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("more than one Host header"), "{answer}");
    }

    #[tokio::test]
    async fn broken_chunked_framing_fails_the_read() {
        let requests = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(requests).await.unwrap();
        let mut guarded = Guarded::new(server, b"", HeadLimits::default(), Duration::from_secs(5));
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        let error = loop {
            match guarded.read(&mut chunk).await {
                Ok(0) => panic!("ended without an error"),
                Ok(count) => seen.extend_from_slice(&chunk[..count]),
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(!String::from_utf8_lossy(&seen).contains("smuggled"));
    }

    #[tokio::test]
    async fn an_upgrade_waits_for_its_answer() {
        let requests = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(requests).await.unwrap();
        let mut guarded = Guarded::new(server, b"", HeadLimits::default(), Duration::from_secs(5));
        let mut chunk = [0u8; 4096];
        let count = guarded.read(&mut chunk).await.unwrap();
        assert!(chunk[..count].ends_with(b"websocket\r\n\r\n"));
        let pending = tokio::time::timeout(Duration::from_millis(50), guarded.read(&mut chunk)).await;
        assert!(pending.is_err(), "frames held until the answer");
        guarded.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n").await.unwrap();
        let count = guarded.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..count], b"\x81\x05hello", "tunnelled as is");

        // Refused upgrade: the next bytes are a request again, and are checked.
        let requests = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let (seen, answer) = {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            client.write_all(requests).await.unwrap();
            let mut guarded = Guarded::new(server, b"", HeadLimits::default(), Duration::from_secs(5));
            let count = guarded.read(&mut chunk).await.unwrap();
            let seen = chunk[..count].to_vec();
            guarded.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            assert_eq!(guarded.read(&mut chunk).await.unwrap(), 0, "no Host: refused");
            guarded.shutdown().await.unwrap();
            drop(guarded);
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            (seen, answer)
        };
        assert!(!String::from_utf8_lossy(&seen).contains("/next"));
        assert!(answer.ends_with("no Host header\n"), "{answer}");
    }

    #[tokio::test]
    async fn head_limits_and_timeout() {
        let limits = HeadLimits { max_line: 64, max_head: 1024, max_headers: 10 };
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(100));
        let (seen, answer) = through_guard(long.as_bytes(), limits).await;
        assert!(seen.is_empty());
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 414 URI Too Long\r\n"));

        let (client, server) = tokio::io::duplex(1 << 20);
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut guarded = Guarded::new(server, b"", limits, Duration::from_millis(100));
        let mut chunk = [0u8; 64];
        assert_eq!(guarded.read(&mut chunk).await.unwrap(), 0);
        guarded.shutdown().await.unwrap();
        drop(guarded);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    }
}
