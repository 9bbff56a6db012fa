//! berth-test-app: the tiny HTTP/1.1 server that berth's end-to-end tests deploy.
//!
//! Built statically and shipped `FROM scratch`, so it has no shell and no libraries to lean on.
//! Configured by environment variables:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | `80` | TCP port to listen on (all IPv4 addresses) |
//! | `APP_VERSION` | `dev` | the version `/` and `/version` report (the image bakes it in) |
//! | `UP_FAIL` | unset | `1`/`true`: `/up` answers 500 from the start |
//! | `UP_FAIL_HOST` | unset | `/up` answers 500 from the start when it equals `KAMAL_HOST` (fail on one host only) |
//! | `BOOT_DELAY_MS` | `0` | wait this long before listening (a slow boot) |
//! | `SLOW_MS` | `1000` | how long `/slow` sleeps when the request gives no `ms` |
//! | `SHUTDOWN_TIMEOUT_MS` | `30000` | after SIGTERM, the longest wait for in-flight requests |
//! | `LOG_REQUESTS` | unset | `1`: log one line per request to stdout |
//!
//! Endpoints (any method; `HEAD` answers without a body):
//!
//! | path | answer |
//! |---|---|
//! | `/up` | 200 `OK`, or 500 `FAILING` once made to fail |
//! | `/` | 200 `version=V host=HOSTNAME` |
//! | `/version` | 200 `V` |
//! | `/slow?ms=N` | sleeps N ms, then 200 `slept=N version=V` |
//! | `/fail`, `/recover` | make `/up` fail, or succeed again |
//! | `/env/NAME` | 200 with the value of env var NAME, or 404 |
//! | `/echo` | 200 with the request line, headers and body |
//! | `/crash?code=N` | exits at once with code N (default 1), no answer |
//!
//! Run with `--version` it prints its version, with `--env NAME` the value of NAME, with `--read-line` what its
//! stdin is and a line read from it, and exits (for `app exec`).
//!
//! SIGTERM (or SIGINT): stops accepting connections, lets requests already being read or answered finish
//! (their answers say `Connection: close`), then exits 0. Idle keep-alive connections are simply closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

struct App {
    version: String,
    hostname: String,
    log_requests: bool,
    slow_ms_default: u64,
    failing: AtomicBool,
    shutting_down: AtomicBool,
    /// Requests between their first byte and the end of their answer; `None` once the process is exiting.
    in_flight: Mutex<Option<usize>>,
    drained: Condvar,
}

/// The listening socket, once there is one (-1 before), so the signal thread can wake `accept`.
static LISTENER_FD: AtomicI32 = AtomicI32::new(-1);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// `UP_FAIL_HOST` names the one host (as Kamal's `KAMAL_HOST` gives it) where this version is broken.
fn fails_on_this_host() -> bool {
    let broken = env_or("UP_FAIL_HOST", "");
    !broken.is_empty() && env_or("KAMAL_HOST", "") == broken
}

fn env_flag(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok("1") | Ok("true") | Ok("yes") | Ok("on"))
}

fn env_ms(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("berth-test-app: {name}={v:?} is not a number of milliseconds");
            std::process::exit(2)
        }),
        _ => default,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Blocks SIGTERM and SIGINT in every thread (call before spawning any) and returns the set, for `sigwait`.
fn block_termination_signals() -> libc::sigset_t {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t; the handler does nothing.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        // A handler (never run: the signals stay blocked) so that, as PID 1 of a container, the signals are
        // not discarded as "default action for init".
        let handler: extern "C" fn(libc::c_int) = ignore;
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid sigset_t whose signals are blocked in this thread.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() {
    // One-off commands for `app exec`: the image has no shell, so the binary itself answers.
    // (The entrypoint is this binary, so `docker run IMAGE /berth-test-app --version` passes its own path first.)
    let args: Vec<String> = std::env::args().skip(1).skip_while(|arg| arg.ends_with("berth-test-app")).collect();
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("{}", env_or("APP_VERSION", "dev"));
            return;
        }
        Some("--read-line") => {
            // For `app exec -i`: shows what stdin is (a terminal under `docker run -it`) and echoes a typed line.
            let stdin = std::fs::read_link("/proc/self/fd/0").map(|p| p.display().to_string()).unwrap_or_default();
            println!("stdin={stdin}");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            println!("got: {}", line.trim_end());
            return;
        }
        Some("--env") => {
            let name = args.get(1).map(String::as_str).unwrap_or_default();
            println!("{}", std::env::var(name).unwrap_or_default());
            return;
        }
        _ => {}
    }
    let signals = block_termination_signals();
    let app = Arc::new(App {
        version: env_or("APP_VERSION", "dev"),
        hostname: hostname(),
        log_requests: env_flag("LOG_REQUESTS"),
        slow_ms_default: env_ms("SLOW_MS", 1000),
        failing: AtomicBool::new(env_flag("UP_FAIL") || fails_on_this_host()),
        shutting_down: AtomicBool::new(false),
        in_flight: Mutex::new(Some(0)),
        drained: Condvar::new(),
    });
    let port: u16 = env_or("PORT", "80").parse().unwrap_or_else(|_| {
        eprintln!("berth-test-app: PORT must be a TCP port number");
        std::process::exit(2)
    });
    let shutdown_timeout = Duration::from_millis(env_ms("SHUTDOWN_TIMEOUT_MS", 30_000));

    {
        let app = app.clone();
        thread::spawn(move || {
            let sig = wait_for_signal(&signals);
            let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
            println!("berth-test-app: {name}: stopping (no new connections, finishing in-flight requests)");
            app.shutting_down.store(true, Ordering::SeqCst);
            let fd = LISTENER_FD.load(Ordering::SeqCst);
            if fd < 0 {
                std::process::exit(0); // still booting: nothing in flight
            }
            // SAFETY: shutting down a socket we own; it makes the blocked accept() return (EINVAL on Linux).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        });
    }

    let boot_delay = env_ms("BOOT_DELAY_MS", 0);
    if boot_delay > 0 {
        println!("berth-test-app: booting slowly ({boot_delay} ms)");
        thread::sleep(Duration::from_millis(boot_delay));
    }

    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("berth-test-app: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    LISTENER_FD.store(listener.as_raw_fd(), Ordering::SeqCst);
    if app.shutting_down.load(Ordering::SeqCst) {
        std::process::exit(0);
    }
    println!(
        "berth-test-app: version={} host={} listening on :{port}{}",
        app.version,
        app.hostname,
        if app.failing.load(Ordering::SeqCst) { " (/up failing)" } else { "" }
    );

    for stream in listener.incoming() {
        if app.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                let app = app.clone();
                let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || serve(&app, stream));
                if let Err(e) = spawned {
                    eprintln!("berth-test-app: cannot start a thread: {e}");
                }
            }
            // Out of file descriptors or similar: back off briefly rather than spin.
            Err(e) => {
                eprintln!("berth-test-app: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);

    let deadline = Instant::now() + shutdown_timeout;
    let mut in_flight = app.in_flight.lock().unwrap();
    while in_flight.unwrap_or(0) > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            println!("berth-test-app: {} request(s) still in flight at the deadline", in_flight.unwrap_or(0));
            break;
        }
        in_flight = app.drained.wait_timeout(in_flight, left).unwrap().0;
    }
    *in_flight = None; // requests that start now are dropped: the process is going away
    println!("berth-test-app: stopped");
    std::process::exit(0);
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, header: &str, token: &str) -> bool {
        self.header(header).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn path_and_query(&self) -> (&str, &str) {
        self.target.split_once('?').unwrap_or((&self.target, ""))
    }

    fn query(&self, key: &str) -> Option<&str> {
        self.path_and_query().1.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Response { status, body: body.into() }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// Marks one request in flight for as long as it lives.
struct InFlight<'a>(&'a App);

impl<'a> InFlight<'a> {
    fn start(app: &'a App) -> Option<Self> {
        let mut n = app.in_flight.lock().unwrap();
        let count = n.as_mut()?;
        *count += 1;
        Some(InFlight(app))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap();
        if let Some(count) = n.as_mut() {
            *count -= 1;
            if *count == 0 {
                self.0.drained.notify_all();
            }
        }
    }
}

fn serve(app: &App, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        // Wait for the first byte of the next request before counting it as in flight.
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(_in_flight) = InFlight::start(app) else { return };
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((status, msg)) => {
                let _ = write_response(&mut writer, app, &Response::new(status, format!("{msg}\n")), false, false);
                return;
            }
        };
        let keep_alive = !app.shutting_down.load(Ordering::SeqCst)
            && if request.version == "HTTP/1.0" {
                request.has_token("connection", "keep-alive")
            } else {
                !request.has_token("connection", "close")
            };
        let response = handle(app, &request);
        if app.log_requests {
            println!("{} {} {}", request.method, request.target, response.status);
        }
        let head_only = request.method == "HEAD";
        if write_response(&mut writer, app, &response, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

fn handle(app: &App, req: &Request) -> Response {
    let (path, _) = req.path_and_query();
    match path {
        "/up" => {
            if app.failing.load(Ordering::SeqCst) {
                Response::new(500, "FAILING\n")
            } else {
                Response::new(200, "OK\n")
            }
        }
        "/" => Response::new(200, format!("version={} host={}\n", app.version, app.hostname)),
        "/version" => Response::new(200, format!("{}\n", app.version)),
        "/slow" => {
            let ms = match req.query("ms").map(str::parse::<u64>) {
                None => app.slow_ms_default,
                Some(Ok(ms)) => ms,
                Some(Err(_)) => return Response::new(400, "ms must be a number of milliseconds\n"),
            };
            thread::sleep(Duration::from_millis(ms));
            Response::new(200, format!("slept={ms} version={}\n", app.version))
        }
        "/fail" => {
            app.failing.store(true, Ordering::SeqCst);
            println!("berth-test-app: /up will now fail");
            Response::new(200, "/up will now fail\n")
        }
        "/recover" => {
            app.failing.store(false, Ordering::SeqCst);
            println!("berth-test-app: /up will now succeed");
            Response::new(200, "/up will now succeed\n")
        }
        "/echo" => {
            let mut out = format!("{} {} {}\n", req.method, req.target, req.version);
            for (name, value) in &req.headers {
                out.push_str(&format!("{name}: {value}\n"));
            }
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&req.body));
            Response::new(200, out)
        }
        "/crash" => {
            let code = req.query("code").and_then(|c| c.parse().ok()).unwrap_or(1);
            println!("berth-test-app: crashing with exit code {code}");
            std::process::exit(code);
        }
        _ => match path.strip_prefix("/env/") {
            Some(name) if !name.is_empty() => match std::env::var_os(name) {
                Some(value) => Response::new(200, value.to_string_lossy().into_owned()),
                None => Response::new(404, format!("{name} is not set\n")),
            },
            _ => Response::new(404, "not found\n"),
        },
    }
}

fn write_response(w: &mut TcpStream, app: &App, r: &Response, keep_alive: bool, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-App-Version: {}\r\n\
         Connection: {}\r\n\r\n",
        r.status,
        reason(r.status),
        r.body.len(),
        app.version,
        if keep_alive { "keep-alive" } else { "close" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    w.write_all(&out)?;
    w.flush()
}

type ReadResult = Result<Option<Request>, (u16, &'static str)>;

/// Reads one request; `Ok(None)` when the peer closed or went quiet, `Err` for an answer worth sending.
fn read_request(r: &mut BufReader<TcpStream>) -> ReadResult {
    let mut head_len = 0;
    let mut line = Vec::new();
    let mut next_line =
        |r: &mut BufReader<TcpStream>, line: &mut Vec<u8>| -> Result<Option<String>, (u16, &'static str)> {
            line.clear();
            let n = r
                .by_ref()
                .take((MAX_HEAD - head_len + 1) as u64)
                .read_until(b'\n', line)
                .map_err(|_| (400, "read error"))?;
            if n == 0 {
                return Ok(None);
            }
            head_len += n;
            if head_len > MAX_HEAD {
                return Err((431, "request head too large"));
            }
            if line.last() != Some(&b'\n') {
                return Ok(None); // EOF mid-line
            }
            let text = String::from_utf8_lossy(line);
            Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
        };

    let Some(request_line) = next_line(r, &mut line)? else { return Ok(None) };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err((400, "malformed request line"));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let Some(header) = next_line(r, &mut line)? else { return Ok(None) };
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { return Err((400, "malformed header")) };
        req.headers.push((name.trim().to_string(), value.trim().to_string()));
    }

    if req.has_token("transfer-encoding", "chunked") {
        req.body = read_chunked(r)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| (400, "malformed content-length"))?;
        if len > MAX_BODY {
            return Err((413, "body too large"));
        }
        req.body = vec![0; len];
        if r.read_exact(&mut req.body).is_err() {
            return Ok(None);
        }
    } else if req.header("transfer-encoding").is_some() {
        return Err((501, "unsupported transfer-encoding"));
    }
    Ok(Some(req))
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, (u16, &'static str)> {
    let mut body = Vec::new();
    let mut line = String::new();
    let read_line = |r: &mut BufReader<TcpStream>, line: &mut String| -> Result<(), (u16, &'static str)> {
        line.clear();
        match r.by_ref().take(4096).read_line(line) {
            Ok(n) if n > 0 && line.ends_with('\n') => Ok(()),
            _ => Err((400, "malformed chunked body")),
        }
    };
    loop {
        read_line(r, &mut line)?;
        let size_text = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text.trim(), 16).map_err(|_| (400, "malformed chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                read_line(r, &mut line)?;
                if line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err((413, "body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(|_| (400, "truncated chunk"))?;
        read_line(r, &mut line)?; // the CRLF after the chunk
    }
}
