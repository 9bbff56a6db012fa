//! `berth serve` from the outside: the daemon built by the same function the command uses
//! (`Daemon::start`), on port 0 with a temporary data directory, driven by a real HTTP client.
//!
//! Deploys here run the real engine runner against a local git repository; without hosts they fail at the
//! point they would need one, which is enough for the API, the queue, the store and the log stream. The
//! deploys to real hosts are in `daemon_bench` tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth::daemon::config::DaemonConfig;
use berth::daemon::model::Scope;
use berth::daemon::{Daemon, auth};
use berth::environment::Environment;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A daemon on port 0 with its own data directory and a local git repository for the service `app` (the
/// dashboard's tests use it too).
pub(crate) struct App {
    pub(crate) daemon: Option<Daemon>,
    pub(crate) address: String,
    /// Removed when the test ends (the daemon's tasks end with the test's runtime).
    pub(crate) _dir: tempfile::TempDir,
}

impl App {
    pub(crate) async fn spawn(berth_yml: &str) -> App {
        App::spawn_with(berth_yml, &[]).await
    }

    /// [`App::spawn`], with more files (path relative to the daemon's directory, text) written before it
    /// starts (secrets files, for instance).
    pub(crate) async fn spawn_with(berth_yml: &str, files: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().unwrap();
        make_repository(&dir.path().join("app"));
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let text = format!("listen: 127.0.0.1:0\ndata_dir: data\n{berth_yml}");
        let path = dir.path().join("berth.yml");
        std::fs::write(&path, &text).unwrap();
        let config = DaemonConfig::load(&path).expect("the test's berth.yml is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let env = Environment::from_vars(std::env::vars(), dir.path());
        let runner = berth::daemon::engine_runner(&config, &env);
        let daemon = Daemon::start(config, listener, runner, &env).await.expect("the daemon starts");
        let address = daemon.address.to_string();
        App { daemon: Some(daemon), address, _dir: dir }
    }

    /// Stops the daemon as SIGTERM would (its data directory stays until the test ends).
    pub(crate) async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop(Duration::from_secs(30)).await;
        }
    }

    pub(crate) async fn token(&self, scope: Scope, service: Option<&str>) -> String {
        let token = auth::new_token();
        let store = &self.daemon.as_ref().unwrap().state.store;
        store.insert_token(&format!("test-{}", scope.name()), &auth::hash(&token), scope, service).await.unwrap();
        token
    }

    pub(crate) async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Answer {
        self.request_with(method, path, token, body, &[]).await
    }

    pub(crate) async fn request_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let stream = tokio::net::TcpStream::connect(&self.address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", "berth.test");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default()))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    /// Follows a deploy's log as an event stream until the server closes it: (id, event, data) per event.
    pub(crate) async fn follow(
        &self,
        id: i64,
        token: &str,
        last_event_id: Option<i64>,
    ) -> Vec<(Option<i64>, String, String)> {
        let stream = tokio::net::TcpStream::connect(&self.address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .uri(format!("/deploys/{id}/logs"))
            .header("host", "berth.test")
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
            .await
            .expect("the stream closes once the deploy ended")
            .unwrap()
            .to_bytes();
        parse_events(&String::from_utf8_lossy(&body))
    }
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn assert_problem(&self, status: StatusCode, detail_contains: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.headers["content-type"], "application/problem+json", "{}", self.body);
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16());
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(detail_contains), "detail {detail:?} lacks {detail_contains:?}");
    }
}

/// The events of a server-sent event stream: (id, event, data).
pub(crate) fn parse_events(text: &str) -> Vec<(Option<i64>, String, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|block| !block.trim().is_empty()) {
        let (mut id, mut event, mut data) = (None, "message".to_string(), Vec::new());
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().parse().ok();
            } else if let Some(value) = line.strip_prefix("event:") {
                event = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        if id.is_some() || !data.is_empty() {
            events.push((id, event, data.join("\n")));
        }
    }
    events
}

/// The registry password the service's secrets directory holds: it must never show anywhere.
const REGISTRY_PASSWORD: &str = "hunter2-berth-test-secret";

/// A git repository with a Kamal configuration whose only host cannot be reached, and the service's secrets
/// directory beside it (`secrets/app/secrets`), as the daemon's configuration names it.
pub(crate) fn make_repository(dir: &Path) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/deploy.yml"),
        "service: app\nimage: test/app\nservers:\n  - 127.0.0.1:1\nbuilder:\n  arch: amd64\n\
         registry:\n  server: registry.invalid\n  username: deployer\n  password:\n    - REGISTRY_PASSWORD\n",
    )
    .unwrap();
    let secrets = dir.parent().unwrap().join("secrets/app");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("secrets"), format!("REGISTRY_PASSWORD={REGISTRY_PASSWORD}\n")).unwrap();
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "first"]);
}

pub(crate) const ONE_SERVICE: &str = "services:\n  app:\n    repo: app\n    secrets: secrets/app\n";

pub(crate) async fn wait_for_end(app: &App, id: i64, token: &str) -> serde_json::Value {
    for _ in 0..600 {
        let deploy = app.request("GET", &format!("/deploys/{id}"), Some(token), None).await.json();
        if !["queued", "running"].contains(&deploy["state"].as_str().unwrap_or_default()) {
            return deploy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deploy {id} did not end");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_problems_and_store_nothing() {
    let app = App::spawn(ONE_SERVICE).await;
    let read = app.token(Scope::Read, None).await;
    let admin = app.token(Scope::Admin, None).await;
    let body = br#"{"service":"app"}"#;

    let health = app.request("GET", "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");

    let answer = app.request("POST", "/deploys", None, Some(body)).await;
    answer.assert_problem(StatusCode::UNAUTHORIZED, "Authorization: Bearer");
    assert_eq!(answer.headers["www-authenticate"], "Bearer");
    app.request("POST", "/deploys", Some("berth_not-a-token"), Some(body))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unknown or revoked token");
    app.request("GET", "/deploys", None, None).await.assert_problem(StatusCode::UNAUTHORIZED, "token");
    app.request("POST", "/deploys", Some(&read), Some(body))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "needs `deploy`");
    app.request("POST", "/deploys", Some(&admin), Some(b"{\"service\": "))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "not a valid deploy request");
    app.request("POST", "/deploys", Some(&admin), Some(br#"{"service":"app","colour":"red"}"#))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "unknown field `colour`");
    app.request("POST", "/deploys", Some(&admin), Some(br#"{"service":"app","version":"v1","ref":"main"}"#))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "not both");
    app.request("POST", "/deploys", Some(&admin), Some(br#"{"service":"app","version":"v 1"}"#))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "without spaces");
    app.request("POST", "/deploys", Some(&admin), Some(br#"{"service":"nope"}"#))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no service `nope`; the daemon deploys app");
    app.request("POST", "/deploys", Some(&admin), Some(br#"{"service":"app","destination":"prod"}"#))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "not a destination of `app`");
    // A 10 MB upload is refused from its declared length, before its body is read (as curl sends it, with
    // `Expect: 100-continue`): the answer comes while the client has sent only the head.
    let head = format!(
        "POST /deploys HTTP/1.1\r\nHost: berth.test\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        10 * 1024 * 1024
    );
    let mut raw = tokio::net::TcpStream::connect(&app.address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let reading = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer);
    tokio::time::timeout(Duration::from_secs(10), reading).await.expect("answered without the body").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("over"), "{answer}");
    app.request("GET", "/deploys/12345", Some(&admin), None).await.assert_problem(StatusCode::NOT_FOUND, "no deploy");
    app.request("GET", "/deploys/x'1", Some(&admin), None).await.assert_problem(StatusCode::NOT_FOUND, "no deploy");
    app.request("GET", "/nowhere", Some(&admin), None).await.assert_problem(StatusCode::NOT_FOUND, "/docs");
    app.request("GET", "/audit", Some(&read), None).await.assert_problem(StatusCode::FORBIDDEN, "needs `admin`");

    // Nothing of the above was recorded.
    let deploys = app.request("GET", "/deploys", Some(&admin), None).await.json();
    assert_eq!(deploys["deploys"].as_array().unwrap().len(), 0, "{deploys}");
    let audit = app.request("GET", "/audit", Some(&admin), None).await.json();
    assert_eq!(audit["entries"].as_array().unwrap().len(), 0, "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_makes_one_deploy_and_the_audit_says_who() {
    let app = App::spawn(ONE_SERVICE).await;
    let deployer = app.token(Scope::Deploy, Some("app")).await;
    let admin = app.token(Scope::Admin, None).await;
    let body = br#"{"service":"app","reason":"first try"}"#;
    let key = [("idempotency-key", "release-42")];
    let first = app.request_with("POST", "/deploys", Some(&deployer), Some(body), &key).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let deploy = first.json();
    assert_eq!(deploy["state"], "queued");
    assert_eq!(deploy["service"], "app");
    assert_eq!(deploy["reason"], "first try");
    let id = deploy["id"].as_i64().unwrap();
    assert_eq!(first.headers["location"], format!("/deploys/{id}"));
    let again = app.request_with("POST", "/deploys", Some(&deployer), Some(body), &key).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json()["id"], id, "the same deploy");
    let list = app.request("GET", "/deploys?service=app", Some(&admin), None).await.json();
    assert_eq!(list["deploys"].as_array().unwrap().len(), 1, "{list}");
    let audit = app.request("GET", "/audit", Some(&admin), None).await.json();
    let entry = &audit["entries"][0];
    assert_eq!(entry["actor"], "test-deploy");
    assert_eq!(entry["action"], "POST /deploys");
    assert_eq!(entry["remote_addr"], "127.0.0.1");

    // A service-limited token sees only its service.
    let other = app.request("POST", "/deploys", Some(&deployer), Some(br#"{"service":"other"}"#)).await;
    other.assert_problem(StatusCode::FORBIDDEN, "limited to the service `app`");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_streams_every_line_once_resumes_after_last_event_id_and_ends_with_the_state() {
    let app = App::spawn(ONE_SERVICE).await;
    let token = app.token(Scope::Deploy, None).await;
    // A version already in the registry: no build; the pull needs the host, which cannot be reached.
    let answer = app.request("POST", "/deploys", Some(&token), Some(br#"{"service":"app","version":"v1"}"#)).await;
    let id = answer.json()["id"].as_i64().unwrap();
    let events = app.follow(id, &token, None).await;
    let (end, lines) = events.split_last().expect("events");
    assert_eq!((end.1.as_str(), end.2.as_str()), ("end", "failed"), "{events:?}");
    let ids: Vec<i64> = lines.iter().map(|event| event.0.expect("every line has an id")).collect();
    assert_eq!(ids, (1..=lines.len() as i64).collect::<Vec<_>>(), "1, 2, 3 …: {events:?}");
    assert!(lines.len() >= 3, "{events:?}");
    assert!(lines[0].2.starts_with("Fetching "), "{events:?}");
    assert!(lines.iter().any(|line| line.2.contains("Deploying app version")), "{events:?}");

    let deploy = wait_for_end(&app, id, &token).await;
    assert_eq!(deploy["state"], "failed");
    assert!(deploy["error"].as_str().unwrap().contains("127.0.0.1"), "the host it could not reach: {deploy}");
    assert_eq!(deploy["commit"].as_str().unwrap().len(), 40, "{deploy}");
    assert_eq!(deploy["version"], "v1");
    let stages: Vec<&str> = deploy["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["build", "push", "pull", "boot", "healthcheck", "cutover", "prune"]);
    let state_of =
        |name: &str| deploy["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    assert_eq!(state_of("build")["state"], "skipped", "a given version is not built: {deploy}");
    let pull = state_of("pull");
    assert_eq!(pull["state"], "failed", "{deploy}");
    assert_eq!(pull["hosts"][0]["host"], "127.0.0.1:1");
    assert_eq!(pull["hosts"][0]["state"], "failed");
    assert!(pull["hosts"][0]["started_at"].is_string() && pull["hosts"][0]["ended_at"].is_string(), "{pull}");
    assert_eq!(state_of("boot")["state"], "skipped");

    // Reconnecting after line 2 gets exactly the lines after it, then the end.
    let resumed = app.follow(id, &token, Some(2)).await;
    assert_eq!(resumed[..resumed.len() - 1], lines[2..], "{resumed:?}");
    assert_eq!(resumed.last().unwrap().1, "end");

    // Plain text: every line so far.
    let text = app.request("GET", &format!("/deploys/{id}/logs"), Some(&token), None).await;
    assert_eq!(text.headers["content-type"], "text/plain; charset=utf-8");
    let expected: Vec<&str> = lines.iter().map(|line| line.2.as_str()).collect();
    assert_eq!(text.body.lines().collect::<Vec<_>>(), expected);

    // The secret the deploy used is nowhere: not in the API's answers, the log, or the database's files.
    let all =
        format!("{}{}{}", serde_json::to_string(&deploy).unwrap(), text.body, serde_json::to_string(&events).unwrap());
    assert!(!all.contains(REGISTRY_PASSWORD), "the secret leaked into the API");
    for entry in std::fs::read_dir(app._dir.path().join("data")).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let found = bytes.windows(REGISTRY_PASSWORD.len()).any(|w| w == REGISTRY_PASSWORD.as_bytes());
            assert!(!found, "the secret is stored in {}", entry.path().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spec_is_served_committed_and_browsable() {
    let app = App::spawn("").await;
    let spec = app.request("GET", "/openapi.json", None, None).await;
    assert_eq!(spec.status, StatusCode::OK);
    let served = spec.json();
    for path in ["/deploys", "/deploys/{id}", "/deploys/{id}/logs", "/deploys/{id}/cancel", "/services/{name}/rollback"]
    {
        assert!(served["paths"][path].is_object(), "{path} documented");
    }
    let docs = app.request("GET", "/docs/", None, None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.body.contains("swagger"), "{}", &docs.body[..docs.body.len().min(300)]);

    let committed_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/berth.json");
    let generated = berth::daemon::api::openapi_json();
    if std::env::var_os("BERTH_UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/berth.json is stale: regenerate it with `BERTH_UPDATE_OPENAPI=1 cargo test --test integration daemon::the_spec` and commit it"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&committed).unwrap(),
        served,
        "the served spec is the committed one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_without_services_starts_and_says_how_to_add_one() {
    let dir = tempfile::tempdir().unwrap();
    let env = Environment::from_vars(Vec::<(String, String)>::new(), dir.path());
    let config = berth::daemon::load_config(None, &env).unwrap();
    assert!(config.services.is_empty());
    assert_eq!(config.data_dir, dir.path().join("berth-data"));
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "services:\n  app:\n    queue: lifo\nlisten: x\n").unwrap();
    let error = berth::daemon::load_config(Some(&bad), &env).unwrap_err().to_string();
    assert!(error.contains("services/app/repo: is required"), "{error}");
    assert!(error.contains("services/app/queue: must be `latest` or `fifo`"), "{error}");
    assert!(error.contains("listen: must be an address and port"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_in_the_served_spec() {
    let app = App::spawn(ONE_SERVICE).await;
    let admin = app.token(Scope::Admin, None).await;
    let tool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/venv/bin/schemathesis");
    assert!(tool.exists(), "{} is missing: run `bash scripts/test.sh`, which installs it", tool.display());
    let url = format!("http://{}/openapi.json", app.address);
    let run = tokio::process::Command::new(&tool)
        .args(["run", &url, "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1"])
        // Maintenance changes hosts, and this daemon's service has none it can reach: those answer 502 (the
        // hosts failed) by design; they are exercised on real hosts in `daemon_bench`.
        .args(["--exclude-path-regex", "/(maintenance|live)$"])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .env("NO_COLOR", "1")
        // It keeps a cache (.schemathesis/) where it runs: not in the repository.
        .current_dir(app._dir.path())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("schemathesis finishes").unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found a problem:\n{shown}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains(" passed"), "{shown}");
    assert!(!shown.contains("Server error"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_daemon_per_sqlite_database_and_each_says_its_name() {
    let app = App::spawn(&format!("instance: deploy-a\n{ONE_SERVICE}")).await;
    let read = app.token(Scope::Read, None).await;
    let health = app.request("GET", "/healthz", None, None).await.json();
    assert_eq!(health["instance"], "deploy-a");
    // A deploy names the instance that ran it.
    let deploy = app.token(Scope::Deploy, None).await;
    let id = app.request("POST", "/deploys", Some(&deploy), Some(br#"{"service":"app"}"#)).await.json()["id"]
        .as_i64()
        .unwrap();
    let ended = wait_for_end(&app, id, &read).await;
    assert_eq!(ended["runner"], "deploy-a", "{ended:#}");
    // A second daemon on the same data directory is refused, saying who holds it.
    let config = (*app.daemon.as_ref().unwrap().state.config).clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let env = Environment::from_vars(std::env::vars(), app._dir.path());
    let runner = berth::daemon::engine_runner(&config, &env);
    let error = match Daemon::start(config, listener, runner, &env).await {
        Ok(_) => panic!("a second daemon started on the same database"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("another `berth serve` uses") && error.contains("instance deploy-a, pid"), "{error}");
    assert!(error.contains("PostgreSQL"), "{error}");
}
