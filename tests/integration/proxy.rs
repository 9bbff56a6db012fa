//! The berth proxy from the outside: the real binary run as `kamal-proxy` (a symlink, as in the proxy image),
//! driven by its control commands, in front of in-process test backends, on loopback only.
//!
//! Each test starts its own proxy (ports chosen by the kernel, read back from the proxy's "Server started"
//! log line), its own control socket and state directory, and stops it on drop, even after a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod hostile;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

// ---------------------------------------------------------------------------------------------------------
// The proxy under test

/// A running `kamal-proxy run` with its own socket, state directory and log.
struct Proxy {
    child: Option<Child>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    http_port: u16,
    https_port: u16,
    metrics_port: u16,
    log: PathBuf,
    started_line: serde_json::Value,
}

impl Proxy {
    fn start() -> Proxy {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut proxy = Proxy::start_in(&dir, &[]);
        proxy._temp = Some(temp);
        proxy
    }

    /// Starts a proxy whose files (socket, state, log, `kamal-proxy` link) live in `dir`.
    fn start_in(dir: &Path, extra_args: &[&str]) -> Proxy {
        let program = dir.join("kamal-proxy");
        if !program.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berth"), &program).expect("link kamal-proxy");
        }
        let log = dir.join("proxy.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let metrics_port = free_port();
        let given = |flag: &str| extra_args.iter().any(|a| a.starts_with(flag));
        let mut args = vec!["run".to_string(), "--bind=127.0.0.1".into()];
        for flag in ["--http-port", "--https-port"] {
            if !given(flag) {
                args.push(format!("{flag}=0"));
            }
        }
        args.extend([
            format!("--metrics-port={metrics_port}"),
            "--workers=1".into(),
            format!("--state-dir={}", dir.join("state").display()),
        ]);
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = Command::new(&program)
            .args(&args)
            .env_clear()
            .env("KAMAL_PROXY_SOCKET", dir.join("proxy.sock"))
            .env("HOME", dir)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start kamal-proxy run");
        let mut proxy = Proxy {
            child: Some(child),
            dir: dir.to_path_buf(),
            _temp: None,
            http_port: 0,
            https_port: 0,
            metrics_port,
            log,
            started_line: serde_json::Value::Null,
        };
        let started = proxy.wait_for_log(|line| line["msg"] == "Server started", Duration::from_secs(20));
        proxy.http_port = started["http_port"].as_u64().unwrap() as u16;
        proxy.https_port = started["https_port"].as_u64().unwrap() as u16;
        proxy.started_line = started;
        proxy
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn wait_for_log(&mut self, matches: impl Fn(&serde_json::Value) -> bool, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("proxy exited ({status}); log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "log line not seen; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a control command on a blocking thread, so the test's backends keep serving meanwhile.
    async fn ctl_async(&self, args: &[&str]) -> Output {
        let program = self.dir.join("kamal-proxy");
        let socket = self.dir.join("proxy.sock");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(program)
                .args(&args)
                .env_clear()
                .env("KAMAL_PROXY_SOCKET", socket)
                .output()
                .expect("run kamal-proxy")
        })
        .await
        .unwrap()
    }

    async fn ctl_ok(&self, args: &[&str]) -> Output {
        let output = self.ctl_async(args).await;
        assert!(output.status.success(), "kamal-proxy {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state").join("berth-proxy.state.json")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------
// Test backends

/// An HTTP app on loopback: `/up` (switchable health), `/slow?ms=N`, `/sse`, `/headers`, upgrades (echo),
/// everything else answers its name. It counts requests it served while it was unhealthy.
#[derive(Clone)]
struct Backend {
    name: &'static str,
    address: SocketAddr,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    served_while_unhealthy: Arc<AtomicU64>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let served = Arc::new(AtomicU64::new(0));
        let served_while_unhealthy = Arc::new(AtomicU64::new(0));
        let state = (Arc::clone(&healthy), Arc::clone(&served), Arc::clone(&served_while_unhealthy));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| backend_answer(name, state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { name, address, healthy, served, served_while_unhealthy, task: Arc::new(task) }
    }

    fn target(&self) -> String {
        format!("--target={}", self.address)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.task.abort();
    }
}

async fn backend_answer(
    name: &'static str,
    (healthy, served, served_while_unhealthy): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>),
    mut request: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let full = |status: StatusCode, body: String| {
        Response::builder().status(status).header("x-backend", name).body(Full::new(Bytes::from(body)).boxed()).unwrap()
    };
    let path = request.uri().path().to_string();
    if path == "/up" {
        let ok = healthy.load(Ordering::SeqCst);
        return Ok(full(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, String::new()));
    }
    served.fetch_add(1, Ordering::SeqCst);
    if !healthy.load(Ordering::SeqCst) {
        served_while_unhealthy.fetch_add(1, Ordering::SeqCst);
    }
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if path == "/echo" {
        // The body back, and how the proxy framed the request to the target.
        let headers = request.headers();
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("").to_string());
        let framing = text("transfer-encoding")
            .or_else(|| text("content-length").map(|length| format!("length {length}")))
            .unwrap_or_default();
        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Ok(Response::builder()
            .header("x-backend", name)
            .header("x-request-framing", framing)
            .body(Full::new(body).boxed())
            .unwrap());
    }
    if request.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 1024];
                while let Ok(n) = io.read(&mut buffer).await {
                    if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    match path.as_str() {
        "/slow" => {
            let ms: u64 = query.get("ms").and_then(|m| m.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(full(StatusCode::OK, name.to_string()))
        }
        "/headers" => {
            let headers: HashMap<String, String> =
                request.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
            let mut body = serde_json::to_value(headers).unwrap();
            body["uri"] = request.uri().to_string().into();
            Ok(full(StatusCode::OK, body.to_string()))
        }
        "/sse" => {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
            tokio::spawn(async move {
                for i in 1..=3 {
                    if sender.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n"))))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            });
            let stream = futures_util::stream::unfold(receiver, |mut r| async move { r.recv().await.map(|f| (f, r)) });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("x-backend", name)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap())
        }
        _ => Ok(full(StatusCode::OK, name.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Clients

/// A keep-alive HTTP/1.1 client connection to the proxy.
struct Client {
    port: u16,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Client {
    fn new(port: u16) -> Client {
        Client { port, sender: None }
    }

    async fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        self.send(Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()).await
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| e.to_string())?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| {
            self.sender = None;
            e.to_string()
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

async fn get(port: u16, host: &str, path: &str) -> Answer {
    Client::new(port).get(host, path).await.unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

async fn deploy(proxy: &Proxy, service: &str, backend: &Backend, extra: &[&str]) -> Output {
    let target = backend.target();
    let mut args = vec!["deploy", service, target.as_str(), "--health-check-interval=1s"];
    args.extend_from_slice(extra);
    proxy.ctl_async(&args).await
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests

/// The zero-downtime claim: continuous load with 1–3 s requests in flight, 20 deploys alternating between
/// two targets whose health comes up 200 ms after each deploy starts. Every request succeeds, no target
/// serves a request while it is unhealthy, slow requests on the old target finish during the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_under_load_drop_nothing() {
    let proxy = Proxy::start();
    let backends = [Backend::start("blue").await, Backend::start("green").await];
    proxy.ctl_ok(&["deploy", "app", &backends[0].target(), "--host=app.test"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let completed = Arc::new(AtomicU64::new(0));
    let slow_completed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for worker in 0..6u64 {
        let (stop, failures, completed, slow_completed) =
            (stop.clone(), failures.clone(), completed.clone(), slow_completed.clone());
        let port = proxy.http_port;
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(port);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                // Two of the six clients keep 1–3 s requests in flight all the time.
                let path = if worker < 2 {
                    format!("/slow?ms={}", 1000 + (i * 700 + worker * 300) % 2000)
                } else {
                    "/".to_string()
                };
                match client.get("app.test", &path).await {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        completed.fetch_add(1, Ordering::SeqCst);
                        if worker < 2 {
                            slow_completed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(answer) => failures.lock().unwrap().push(format!("{path}: {} {}", answer.status, answer.body)),
                    Err(error) => failures.lock().unwrap().push(format!("{path}: {error}")),
                }
            }
        }));
    }

    let mut drains_that_waited = 0;
    let mut deploy_times = Vec::new();
    for round in 0..20 {
        let next = &backends[(round + 1) % 2];
        // The new version boots: unhealthy at first, healthy 200 ms later.
        next.set_healthy(false);
        let booting = next.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            booting.set_healthy(true);
        });
        let started = Instant::now();
        let output =
            deploy(&proxy, "app", next, &["--host=app.test", "--drain-timeout=10s", "--deploy-timeout=10s"]).await;
        assert!(output.status.success(), "deploy {round}: {}", String::from_utf8_lossy(&output.stderr));
        let took = started.elapsed();
        deploy_times.push(took);
        if took > Duration::from_millis(700) {
            drains_that_waited += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    for backend in &backends {
        assert_eq!(backend.served_while_unhealthy.load(Ordering::SeqCst), 0, "{} served while unhealthy", backend.name);
    }
    assert!(
        slow_completed.load(Ordering::SeqCst) >= 20,
        "slow requests completed: {}",
        slow_completed.load(Ordering::SeqCst)
    );
    assert!(drains_that_waited >= 10, "drains should wait for the slow requests: {deploy_times:?}");
    assert!(
        deploy_times.iter().all(|t| *t < Duration::from_secs(10)),
        "every drain finished within its timeout: {deploy_times:?}"
    );
    eprintln!(
        "20 deploys: {} requests ok, {} slow ones, deploy times {:?}",
        completed.load(Ordering::SeqCst),
        slow_completed.load(Ordering::SeqCst),
        deploy_times
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_that_never_becomes_healthy_fails_the_deploy_and_traffic_stays() {
    let proxy = Proxy::start();
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.set_healthy(false);
    proxy.ctl_ok(&["deploy", "app", &good.target()]).await;

    let started = Instant::now();
    let output = deploy(&proxy, "app", &bad, &["--deploy-timeout=1s"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("failed to become healthy within configured timeout (1s)"), "{stderr}");
    assert!(
        stderr.contains(&bad.address.to_string()) && stderr.contains("503"),
        "names the target and the last result: {stderr}"
    );
    // It gives up at its timeout rather than waiting on: bounded generously, as the suite shares 2 CPUs with
    // dockerd, PostgreSQL and Chromium (a 5 s bound failed once under that load).
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let answer = get(proxy.http_port, "any.test", "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "good"));
    assert_eq!(bad.served.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_target_switches_in_well_under_a_second() {
    let proxy = Proxy::start();
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    proxy.ctl_ok(&["deploy", "app", &first.target()]).await;
    let started = Instant::now();
    proxy.ctl_ok(&["deploy", "app", &second.target()]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "deploy took {took:?}");
    assert_eq!(get(proxy.http_port, "x", "/").await.body, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_and_maps_failures() {
    let proxy = Proxy::start();
    let web = Backend::start("web").await;
    let api = Backend::start("api").await;
    let slow = Backend::start("slow").await;
    proxy.ctl_ok(&["deploy", "web", &web.target(), "--host=app.test,www.app.test"]).await;
    proxy.ctl_ok(&["deploy", "api", &api.target(), "--host=app.test", "--path-prefix=/api"]).await;
    proxy.ctl_ok(&["deploy", "slow", &slow.target(), "--host=slow.test", "--target-timeout=300ms"]).await;

    assert_eq!(get(proxy.http_port, "app.test", "/").await.body, "web");
    assert_eq!(get(proxy.http_port, "www.app.test", "/x").await.body, "web");
    assert_eq!(get(proxy.http_port, "app.test", "/api/users").await.body, "api");
    assert_eq!(get(proxy.http_port, "app.test", "/apix").await.body, "web");
    let unknown = get(proxy.http_port, "nobody.test", "/").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // The prefix is stripped before forwarding, the query kept; forwarding headers and a request id are set.
    let echoed = get(proxy.http_port, "app.test", "/api/headers?q=1").await;
    let headers: serde_json::Value = serde_json::from_str(&echoed.body).unwrap();
    assert_eq!(headers["uri"], "/headers?q=1");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "app.test");
    assert_eq!(headers["host"], "app.test");
    assert_eq!(headers["x-request-id"].as_str().unwrap().len(), 36);

    // Slow target: 504 after --target-timeout. Dead target: 502.
    let timed_out = get(proxy.http_port, "slow.test", "/slow?ms=2000").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    let dead = Backend::start("dead").await;
    proxy.ctl_ok(&["deploy", "dead", &dead.target(), "--host=dead.test"]).await;
    dead.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = get(proxy.http_port, "dead.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);

    // A host already served by another service is refused, with the owner named.
    let output = proxy.ctl_async(&["deploy", "other", &web.target(), "--host=app.test"]).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("already used by service \"web\""));

    let list = String::from_utf8(proxy.ctl_ok(&["list"]).await.stdout).unwrap();
    assert!(list.starts_with("Service"), "{list}");
    assert!(list.contains("app.test") && list.contains("/api") && list.contains("running"), "{list}");
    proxy.ctl_ok(&["remove", "api"]).await;
    assert_eq!(get(proxy.http_port, "app.test", "/api/users").await.body, "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamals_exact_command_line_deploys() {
    let proxy = Proxy::start();
    let app = Backend::start("app").await;
    let target = format!("--target=\"{}\"", app.address);
    let args = [
        "deploy",
        "app-web",
        target.as_str(),
        "--deploy-timeout=\"30s\"",
        "--drain-timeout=\"30s\"",
        "--buffer-requests",
        "--buffer-responses",
        "--log-request-header=\"Cache-Control\"",
        "--log-request-header=\"Last-Modified\"",
        "--log-request-header=\"User-Agent\"",
    ];
    proxy.ctl_ok(&args).await;
    assert_eq!(get(proxy.http_port, "example.com", "/").await.body, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_pass_through_and_websockets_close_on_drain() {
    let proxy = Proxy::start();
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    // Kamal turns response buffering on; event streams must still arrive event by event.
    proxy.ctl_ok(&["deploy", "app", &first.target(), "--buffer-responses", "--buffer-requests"]).await;

    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream.write_all(b"GET /sse HTTP/1.1\r\nhost: app.test\r\naccept: text/event-stream\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("data: 1") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "stream ended early");
        received.extend_from_slice(&buffer[..n]);
    }
    let first_event = started.elapsed();
    assert!(first_event < Duration::from_millis(350), "first event after {first_event:?}: buffered?");
    while !String::from_utf8_lossy(&received).contains("data: 3") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "stream ended early");
        received.extend_from_slice(&buffer[..n]);
    }
    assert!(started.elapsed() >= Duration::from_millis(700));

    // WebSocket-style upgrade: 101, then bytes both ways.
    let mut socket = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    socket
        .write_all(
            b"GET /cable HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reader = tokio::io::BufReader::new(&mut socket);
    let mut status_line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut status_line).await.unwrap();
    assert!(status_line.starts_with("HTTP/1.1 101"), "{status_line}");
    loop {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    socket.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    socket.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    // A deploy closes upgraded connections at once instead of waiting out the drain timeout.
    let started = Instant::now();
    proxy.ctl_ok(&["deploy", "app", &second.target(), "--drain-timeout=20s"]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "drain waited for the websocket: {:?}", started.elapsed());
    let closed = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut echo)).await.expect("socket closed");
    assert!(matches!(closed, Ok(0) | Err(_)));
    assert_eq!(get(proxy.http_port, "app.test", "/").await.body, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_serves_503_with_message_and_pause_holds_requests() {
    let proxy = Proxy::start();
    let app = Backend::start("app").await;
    proxy.ctl_ok(&["deploy", "app", &app.target(), "--host=app.test"]).await;

    proxy.ctl_ok(&["stop", "app", "--message=Back at <5pm>"]).await;
    let answer = get(proxy.http_port, "app.test", "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.body.contains("Back at &lt;5pm&gt;"), "{}", answer.body);
    // Load balancers keep the node while it is in maintenance.
    assert_eq!(get(proxy.http_port, "app.test", "/up").await.status, StatusCode::OK);
    assert!(String::from_utf8(proxy.ctl_ok(&["list"]).await.stdout).unwrap().contains("stopped"));
    proxy.ctl_ok(&["resume", "app"]).await;
    assert_eq!(get(proxy.http_port, "app.test", "/").await.body, "app");

    proxy.ctl_ok(&["pause", "app"]).await;
    let port = proxy.http_port;
    let held = tokio::spawn(async move { get(port, "app.test", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "paused requests wait");
    let served_before = app.served.load(Ordering::SeqCst);
    let resume = Proxy::ctl_detached(&proxy, &["resume", "app"]);
    let answer = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap();
    assert_eq!(answer.body, "app");
    assert!(resume.await.unwrap().status.success());
    assert_eq!(app.served.load(Ordering::SeqCst), served_before + 1);
    proxy.ctl_ok(&["pause", "app", "--max-pause=200ms"]).await;
    assert_eq!(get(proxy.http_port, "app.test", "/").await.status, StatusCode::GATEWAY_TIMEOUT);
}

impl Proxy {
    fn ctl_detached(&self, args: &[&str]) -> tokio::task::JoinHandle<Output> {
        let program = self.dir.join("kamal-proxy");
        let socket = self.dir.join("proxy.sock");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(program)
                .args(&args)
                .env_clear()
                .env("KAMAL_PROXY_SOCKET", socket)
                .output()
                .expect("run kamal-proxy")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_routes_health_checks_them_first_and_skips_a_corrupted_entry() {
    let temp = tempfile::tempdir().unwrap();
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let three = Backend::start("three").await;
    let mut proxy = Proxy::start_in(temp.path(), &[]);
    proxy.ctl_ok(&["deploy", "one", &one.target(), "--host=one.test"]).await;
    proxy.ctl_ok(&["deploy", "two", &two.target(), "--host=two.test"]).await;
    proxy.ctl_ok(&["deploy", "three", &three.target(), "--host=three.test"]).await;
    proxy.ctl_ok(&["stop", "three", "--message=upgrading"]).await;
    proxy.stop();

    // Corrupt one entry; the others must come back.
    let path = proxy.state_file();
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let services = state["services"].as_array_mut().unwrap();
    let one_entry = services.iter_mut().find(|s| s["name"] == "one").unwrap();
    one_entry["targets"] = serde_json::json!({"not": "a list"});
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    // "two" is down while the proxy restarts: it must not get traffic before it passes its checks.
    two.set_healthy(false);
    let mut proxy = Proxy::start_in(temp.path(), &[]);
    let started = proxy.started_line.clone();
    let problems = started["restore_problems"].as_array().unwrap();
    assert!(
        problems.len() == 1 && problems[0].as_str().unwrap().contains("\"one\""),
        "the bad entry is reported: {started}"
    );
    assert_eq!(started["restored_services"], 2, "{started}");
    proxy.wait_for_log(|l| l["msg"] == "State entry skipped", Duration::from_secs(1));

    let port = proxy.http_port;
    let waiting = tokio::spawn(async move { get(port, "two.test", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(two.served.load(Ordering::SeqCst), 0);
    two.set_healthy(true);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(answer.body, "two");
    assert_eq!(two.served_while_unhealthy.load(Ordering::SeqCst), 0);
    assert_eq!(get(proxy.http_port, "one.test", "/").await.status, StatusCode::NOT_FOUND);
    let maintenance = get(proxy.http_port, "three.test", "/").await;
    assert_eq!(maintenance.status, StatusCode::SERVICE_UNAVAILABLE, "pause state survives restarts");
    assert!(maintenance.body.contains("upgrading"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_metrics_report_requests() {
    let mut proxy = Proxy::start();
    let app = Backend::start("app").await;
    proxy.ctl_ok(&["deploy", "app", &app.target(), "--host=app.test", "--log-request-header=User-Agent"]).await;
    let mut client = Client::new(proxy.http_port);
    let request = Request::get("/hello?x=1")
        .header("host", "app.test")
        .header("x-request-id", "req-123")
        .header("user-agent", "probe/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.send(request).await.unwrap().status, StatusCode::OK);
    let line = proxy.wait_for_log(|l| l["msg"] == "Request" && l["request_id"] == "req-123", Duration::from_secs(3));
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["query"], "x=1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["service"], "app");
    assert_eq!(line["target"], app.address.to_string());
    assert!(line["duration"].as_u64().unwrap() > 0);
    assert!(line["req_user_agent"].as_str().is_some_and(|ua| ua.contains("probe")), "{line}");

    let metrics = get(proxy.metrics_port, "localhost", "/metrics").await;
    assert!(
        metrics.body.contains("kamal_proxy_http_requests_total{method=\"GET\",service=\"app\",status=\"200\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("kamal_proxy_http_request_duration_seconds_bucket"));
    assert!(metrics.body.contains("berth_proxy_deploys_total{service=\"app\",outcome=\"ok\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_requests_enforce_the_body_limit() {
    let proxy = Proxy::start();
    let app = Backend::start("app").await;
    proxy.ctl_ok(&["deploy", "app", &app.target(), "--buffer-requests", "--max-request-body=1024"]).await;
    let mut client = Client::new(proxy.http_port);
    let small = Request::post("/").header("host", "a").body(Full::new(Bytes::from(vec![b'x'; 100]))).unwrap();
    assert_eq!(client.send(small).await.unwrap().status, StatusCode::OK);
    let large = Request::post("/").header("host", "a").body(Full::new(Bytes::from(vec![b'x'; 5000]))).unwrap();
    assert_eq!(Client::new(proxy.http_port).send(large).await.unwrap().status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut proxy = Proxy::start();
    let app = Backend::start("app").await;
    proxy.ctl_ok(&["deploy", "app", &app.target()]).await;
    let port = proxy.http_port;
    let in_flight = tokio::spawn(async move { get(port, "a", "/slow?ms=700").await });
    wait_until("the request to reach the backend", Duration::from_secs(5), || app.served.load(Ordering::SeqCst) == 1)
        .await;
    tokio::task::spawn_blocking(move || proxy.stop()).await.unwrap();
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.body, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_sends_cookie_holders_to_the_canary_and_stops_cleanly() {
    let proxy = Proxy::start();
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    proxy.ctl_ok(&["deploy", "app", &stable.target(), "--host=app.test"]).await;
    let output = proxy.ctl_async(&["rollout", "set", "app", "--percent=50"]).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("rollout deploy"), "needs a rollout slot first");

    proxy.ctl_ok(&["rollout", "deploy", "app", &canary.target()]).await;
    proxy.ctl_ok(&["rollout", "set", "app", "--allowlist=vip,beta-tester"]).await;
    let with_cookie = |value: &str| {
        Request::get("/")
            .header("host", "app.test")
            .header("cookie", format!("session=1; kamal-rollout={value}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut client = Client::new(proxy.http_port);
    assert_eq!(client.send(with_cookie("vip")).await.unwrap().body, "canary");
    assert_eq!(client.send(with_cookie("someone")).await.unwrap().body, "stable");
    assert_eq!(get(proxy.http_port, "app.test", "/").await.body, "stable", "no cookie: the active slot");

    proxy.ctl_ok(&["rollout", "set", "app", "--percent=100"]).await;
    assert_eq!(client.send(with_cookie("someone")).await.unwrap().body, "canary");

    proxy.ctl_ok(&["rollout", "stop", "app"]).await;
    assert_eq!(client.send(with_cookie("vip")).await.unwrap().body, "stable");
}

/// A CA and a certificate for `hosts` signed by it, made with the openssl command line.
fn make_certificate(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=berth test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &format!("/CN={}", hosts[0])]]
        .concat());
    let names: Vec<String> = hosts
        .iter()
        .map(|h| if h.parse::<std::net::IpAddr>().is_ok() { format!("IP:{h}") } else { format!("DNS:{h}") })
        .collect();
    std::fs::write(dir.join("leaf.ext"), format!("subjectAltName={}\n", names.join(","))).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

/// `curl` over HTTPS to the proxy, trusting `ca`, with `host` resolved to loopback.
async fn curl_https(ca: &Path, host: &str, port: u16, path: &str) -> (String, String) {
    let args = vec![
        "-sS".to_string(),
        "-i".into(),
        "--max-time".into(),
        "5".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
        format!("https://{host}:{port}{path}"),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output().expect("run curl"))
        .await
        .unwrap();
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_certificate_files_with_http_redirect() {
    let proxy = Proxy::start();
    let app = Backend::start("secure-app").await;
    let (ca, cert, key) = make_certificate(&proxy.dir, &["secure.test", "www.secure.test"]);
    let cert_flag = format!("--tls-certificate-path={}", cert.display());
    let key_flag = format!("--tls-private-key-path={}", key.display());
    proxy
        .ctl_ok(&[
            "deploy",
            "secure",
            &app.target(),
            "--host=secure.test,www.secure.test",
            "--tls",
            &cert_flag,
            &key_flag,
        ])
        .await;

    let (answer, errors) = curl_https(&ca, "secure.test", proxy.https_port, "/headers").await;
    assert!(answer.starts_with("HTTP/2 200") || answer.starts_with("HTTP/1.1 200"), "{answer}{errors}");
    assert!(answer.contains("\"x-forwarded-proto\":\"https\""), "{answer}");
    let (answer, errors) = curl_https(&ca, "www.secure.test", proxy.https_port, "/").await;
    assert!(answer.ends_with("secure-app"), "{answer}{errors}");

    // HTTP/1.1 over TLS (the fast path when ALPN picks it): two requests on one kept-alive connection.
    let port = proxy.https_port;
    let args = vec![
        "-sS".to_string(),
        "-i".into(),
        "-v".into(),
        "--http1.1".into(),
        "--max-time".into(),
        "5".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("secure.test:{port}:127.0.0.1"),
        format!("https://secure.test:{port}/headers"),
        format!("https://secure.test:{port}/"),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output().expect("run curl"))
        .await
        .unwrap();
    let (answer, errors) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}{errors}");
    assert!(answer.contains("\"x-forwarded-proto\":\"https\""), "{answer}");
    assert!(answer.ends_with("secure-app"), "{answer}{errors}");
    assert!(errors.to_ascii_lowercase().contains("re-us"), "one connection for both: {errors}");

    let redirect = get(proxy.http_port, "secure.test", "/path?q=1").await;
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], format!("https://secure.test:{}/path?q=1", proxy.https_port));

    // A missing key file fails the deploy and leaves the service as it was.
    let bad_key = format!("--tls-private-key-path={}", proxy.dir.join("missing.key").display());
    let output = proxy
        .ctl_async(&["deploy", "secure", &app.target(), "--host=secure.test", "--tls", &cert_flag, &bad_key])
        .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.key"));
    let (answer, _) = curl_https(&ca, "secure.test", proxy.https_port, "/").await;
    assert!(answer.ends_with("secure-app"), "{answer}");
}

/// A child process killed on drop (pebble and its DNS server).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble (a local ACME CA) with pebble-challtestsrv answering every DNS name with 127.0.0.1. It validates
/// challenges against the proxy's HTTP port (HTTP-01) and HTTPS port (TLS-ALPN-01).
struct Pebble {
    _dns: Daemon,
    _pebble: Daemon,
    directory: String,
    management_port: u16,
    ca: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16, https_port: u16, acme_port: u16) -> Pebble {
        let status =
            Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/install-deps.sh")).status();
        assert!(status.is_ok_and(|s| s.success()), "install pebble (tests/bench/install-deps.sh)");
        let (ca, cert, key) = make_certificate(dir, &["127.0.0.1", "localhost"]);
        let dns_port = free_port();
        let dns_management = free_port();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(std::fs::File::create(dir.join("challtestsrv.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("challtestsrv.err")).unwrap())
            .spawn()
            .expect("start pebble-challtestsrv");
        let management_port = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": https_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .args([
                "-config",
                dir.join("pebble.json").to_str().unwrap(),
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap())
            .spawn()
            .expect("start pebble");
        let (dns, pebble) = (Daemon(dns), Daemon(pebble));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", acme_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Pebble {
            _dns: dns,
            _pebble: pebble,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management_port,
            ca,
        }
    }

    /// The root that signs pebble's certificates (random per pebble run).
    fn issuing_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pebble-root.pem");
        let output = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                self.ca.to_str().unwrap(),
                &format!("https://127.0.0.1:{}/roots/0", self.management_port),
            ])
            .output()
            .expect("run curl");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::write(&path, &output.stdout).unwrap();
        path
    }
}

/// Automatic certificates: for each challenge kind, a proxy obtains a certificate from pebble for a TLS
/// service, serves it, redirects HTTP to HTTPS, and after a restart serves the cached certificate at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificates_from_pebble_over_both_challenges() {
    for challenge in ["tls-alpn-01", "http-01"] {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let app = Backend::start("acme-app").await;
        let acme_port = free_port();
        let args = |ca: &Path| {
            vec![
                format!("--acme-directory=https://127.0.0.1:{acme_port}/dir"),
                format!("--acme-ca-root={}", ca.display()),
                format!("--acme-challenges={challenge}"),
                "--acme-contact=ops@example.test".to_string(),
            ]
        };
        // The proxy's ports must be known before pebble starts; a first proxy run picks them.
        let ca_path = dir.join("ca.pem");
        std::fs::create_dir_all(dir).unwrap();
        let first_args = args(&ca_path);
        let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
        let mut proxy = Proxy::start_in(dir, &first_args);
        let pebble = Pebble::start(dir, proxy.http_port, proxy.https_port, acme_port);
        assert_eq!(pebble.directory, format!("https://127.0.0.1:{acme_port}/dir"));

        let host = format!("{}.acme.test", challenge.replace('-', ""));
        proxy.ctl_ok(&["deploy", "secure", &app.target(), &format!("--host={host}"), "--tls"]).await;
        let issued = proxy
            .wait_for_log(|l| l["msg"] == "Challenge passed" && l["host"] == host.as_str(), Duration::from_secs(60));
        assert_eq!(issued["challenge"], challenge);
        let root = pebble.issuing_root(dir);
        let (answer, errors) = curl_https(&root, &host, proxy.https_port, "/").await;
        assert!(answer.ends_with("acme-app"), "{answer}{errors}\n{:?}", proxy.log_lines());
        let redirect = get(proxy.http_port, &host, "/x").await;
        assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);

        // Restart: the cached certificate is served without a new order.
        let (http_port, https_port) = (proxy.http_port, proxy.https_port);
        proxy.stop();
        let restart_args = args(&ca_path);
        let mut restart_args: Vec<String> = restart_args;
        restart_args.extend([format!("--http-port={http_port}"), format!("--https-port={https_port}")]);
        let restart_args: Vec<&str> = restart_args.iter().map(String::as_str).collect();
        let proxy = Proxy::start_in(dir, &restart_args);
        let (answer, errors) = curl_https(&root, &host, proxy.https_port, "/").await;
        assert!(answer.ends_with("acme-app"), "{answer}{errors}");
        assert!(!proxy.log_lines().iter().any(|l| l["msg"] == "Certificate issued"), "served from the cache");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_drain_timeout_are_cut_with_504() {
    let proxy = Proxy::start();
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    proxy.ctl_ok(&["deploy", "app", &old.target()]).await;
    let port = proxy.http_port;
    let slow = tokio::spawn(async move { get(port, "a", "/slow?ms=5000").await });
    wait_until("the slow request to reach the old target", Duration::from_secs(5), || {
        old.served.load(Ordering::SeqCst) == 1
    })
    .await;
    let started = Instant::now();
    proxy.ctl_ok(&["deploy", "app", &new.target(), "--drain-timeout=300ms"]).await;
    assert!(started.elapsed() < Duration::from_secs(4), "deploy waited {:?}", started.elapsed());
    let answer = tokio::time::timeout(Duration::from_secs(2), slow).await.expect("cut promptly").unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(get(proxy.http_port, "a", "/").await.body, "new");
}

/// A target speaking raw HTTP/1.1 from a script, for answers hyper does not produce: a 103 before the final
/// response, a body that ends when the connection closes, bodiless answers carrying a length.
async fn start_raw_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some(end) = find(&pending, b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_string();
                    pending.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    if path == "/reject" {
                        // Refuses a body before reading it, then reads (and drops) it, as servers do to keep
                        // the connection: whoever reuses the connection must have sent all of it.
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        while pending.len() < length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                            }
                        }
                        pending.drain(..length);
                        continue;
                    }
                    let answer: &[u8] = match path.as_str() {
                        "/up" => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                        "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                        "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
                        "/not-modified" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\netag: \"v1\"\r\n\r\n",
                        "/early-hints" => {
                            b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n\
                                            HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                        }
                        "/chunked" => {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                                        5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                        }
                        "/until-close" => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nstreamed until close",
                        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                    };
                    if stream.write_all(answer).await.is_err() || path == "/until-close" {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_more(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("an answer in time");
    let n = read.expect("read");
    pending.extend_from_slice(&chunk[..n]);
    n > 0
}

/// A response as a client sees it on the wire.
struct RawAnswer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Reads one response from a raw connection (`pending` keeps what was read past it).
async fn read_raw_response(stream: &mut TcpStream, pending: &mut Vec<u8>, head_request: bool) -> RawAnswer {
    let head_end = loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            break end + 4;
        }
        assert!(read_more(stream, pending).await, "connection closed before a response head");
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    pending.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status: u16 = status_line[9..12].parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = Vec::new();
    if head_request || status < 200 || status == 204 || status == 304 {
        return RawAnswer { status, headers, body };
    }
    if headers.get("transfer-encoding").is_some_and(|te| te == "chunked") {
        loop {
            let line_end = loop {
                if let Some(end) = find(pending, b"\r\n") {
                    break end;
                }
                assert!(read_more(stream, pending).await, "connection closed mid-chunk");
            };
            let line = String::from_utf8(pending[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                assert!(read_more(stream, pending).await, "connection closed mid-chunk");
            }
            body.extend_from_slice(&pending[..size]);
            assert_eq!(&pending[size..size + 2], b"\r\n");
            pending.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length: usize = headers.get("content-length").expect("a length or chunks").parse().unwrap();
        while pending.len() < length {
            assert!(read_more(stream, pending).await, "connection closed mid-body");
        }
        body.extend(pending.drain(..length));
    }
    RawAnswer { status, headers, body }
}

/// The plain-HTTP fast path, seen from a client: request bodies by length and chunked, pipelined requests,
/// responses that are chunked, run until the target closes, have no body (HEAD, 204, 304) or follow a 103;
/// a connection that moves to the hyper path mid-way; a client that leaves mid-body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_fast_path_frames_bodies_pipelines_and_hands_over() {
    let mut proxy = Proxy::start();
    let app = Backend::start("app").await;
    let raw = start_raw_backend().await;
    proxy.ctl_ok(&["deploy", "app", &app.target(), "--host=app.test"]).await;
    proxy.ctl_ok(&["deploy", "raw", &format!("--target={raw}"), "--host=raw.test"]).await;

    // Three requests in one write: a sized body, a chunked body (forwarded chunked), no body.
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello\
              POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n\
              GET /hi HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(answer.headers["x-request-framing"], "length 5");
    assert!(answer.headers.contains_key("date"));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"abcdefg"[..]));
    assert_eq!(answer.headers["x-request-framing"], "chunked");
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"app"[..]));

    // A body larger than any buffer, both ways.
    let big = Bytes::from(vec![b'x'; 3 << 20]);
    let request = Request::post("/echo").header("host", "app.test").body(Full::new(big.clone())).unwrap();
    let answer = Client::new(proxy.http_port).send(request).await.unwrap();
    assert_eq!((answer.status, answer.body.len()), (StatusCode::OK, big.len()));

    // Answers without a body, after an interim 103, chunked, and until the target closes (re-chunked, so the
    // client connection stays usable).
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream
        .write_all(
            b"HEAD /head HTTP/1.1\r\nHost: raw.test\r\n\r\n\
              GET /no-content HTTP/1.1\r\nHost: raw.test\r\n\r\n\
              GET /not-modified HTTP/1.1\r\nHost: raw.test\r\n\r\n\
              GET /early-hints HTTP/1.1\r\nHost: raw.test\r\n\r\n\
              GET /chunked HTTP/1.1\r\nHost: raw.test\r\n\r\n\
              GET /until-close HTTP/1.1\r\nHost: raw.test\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut stream, &mut pending, true).await;
    assert_eq!((answer.status, answer.headers["content-length"].as_str()), (200, "10"));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!(answer.status, 204);
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.headers["etag"].as_str()), (304, "\"v1\""));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.headers["link"].as_str()), (103, "</app.css>; rel=preload"));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"final"[..]));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"hello world"[..]));
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"streamed until close"[..]));
    assert_eq!(answer.headers["transfer-encoding"], "chunked");
    assert!(pending.is_empty(), "nothing after the last response");
    stream.write_all(b"GET /hi HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    assert_eq!(read_raw_response(&mut stream, &mut pending, false).await.body, b"app");

    // A target that answers before it has the whole body: the client gets the answer and its connection is
    // closed (the rest of its body is unread); the target's connection, still expecting the rest, is not
    // reused for the next request.
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream
        .write_all(b"POST /reject HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 100000\r\n\r\npartial")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut stream, &mut pending, false).await;
    assert_eq!((answer.status, answer.headers["connection"].as_str()), (413, "close"));
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "the client connection is closed: {closed:?}");
    for _ in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
        stream.write_all(b"GET /chunked HTTP/1.1\r\nHost: raw.test\r\n\r\n").await.unwrap();
        assert_eq!(read_raw_response(&mut stream, &mut Vec::new(), false).await.body, b"hello world");
    }

    // A request the fast path leaves to hyper (no service for the host: hyper's 404 page) hands the
    // connection over with the pipelined request after it, which hyper then serves.
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream
        .write_all(
            b"GET /hi HTTP/1.1\r\nHost: app.test\r\n\r\n\
              GET /hi HTTP/1.1\r\nHost: nowhere.test\r\n\r\n\
              GET /hi HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_raw_response(&mut stream, &mut pending, false).await.body, b"app");
    assert_eq!(read_raw_response(&mut stream, &mut pending, false).await.status, 404);
    assert_eq!(read_raw_response(&mut stream, &mut pending, false).await.body, b"app");

    // A client that leaves mid-body: the exchange is logged as failed, and the proxy serves on.
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: leaver\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    drop(stream);
    let line = proxy.wait_for_log(|l| l["request_id"] == "leaver", Duration::from_secs(5));
    assert_eq!(line["status"], 502);
    assert!(line["error"].as_str().is_some_and(|e| e.contains("mid-body")), "{line}");
    assert_eq!(get(proxy.http_port, "app.test", "/hi").await.body, "app");

    // A client that gives up waiting for a slow answer: the proxy notices at once (its claim on the target
    // ends then, not when the answer comes).
    let served = app.served.load(Ordering::SeqCst);
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.http_port)).await.unwrap();
    stream.write_all(b"GET /slow?ms=20000 HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: quitter\r\n\r\n").await.unwrap();
    wait_until("the slow request to reach the target", Duration::from_secs(5), || {
        app.served.load(Ordering::SeqCst) > served
    })
    .await;
    drop(stream);
    let line = proxy.wait_for_log(|l| l["request_id"] == "quitter", Duration::from_secs(5));
    assert!(line["error"].as_str().is_some_and(|e| e.contains("before the answer")), "{line}");
}
