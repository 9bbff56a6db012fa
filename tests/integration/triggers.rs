//! What starts deploys from outside and what the daemon tells others: GitHub webhooks (real payloads from
//! `tests/corpus/payloads`, pointed at the test repository and re-signed), notifications and GitHub statuses
//! received by a local server standing in for GitHub and Slack — on the daemon on port 0, whose deploys fail
//! for want of hosts (`daemon_bench` has them succeed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth::daemon::model::Scope;
use http::StatusCode;

use crate::daemon::{Answer, App};
use crate::support::recorder::Recorder;

const WEBHOOK_SECRET: &str = "berth-test-webhook-secret";

fn payloads() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/payloads")
}

fn payload(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(payloads().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The service `app`, fed by the repository the corpus's pushes come from.
const GITHUB_SERVICE: &str = "services:\n  app:\n    repo: app\n    secrets: secrets/app\n    \
    github:\n      repository: Codertocat/Hello-World\n      webhook_secret: GITHUB_WEBHOOK_SECRET\n";

async fn spawn() -> App {
    App::spawn_with(
        GITHUB_SERVICE,
        &[("secrets/app/secrets-common", &format!("GITHUB_WEBHOOK_SECRET={WEBHOOK_SECRET}\n"))],
    )
    .await
}

/// The test repository's head commit (what a push to `main` names as `after`).
fn head_commit(app: &App) -> String {
    let dir = app.daemon.as_ref().unwrap().state.config.services["app"].repo.clone();
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A real push (a new branch with one commit) pointed at the test repository's `main` and its head.
fn push_to_main(app: &App) -> serde_json::Value {
    let mut push = payload("github/api.github.com/push/with-new-branch.payload.json");
    push["ref"] = "refs/heads/main".into();
    push["after"] = head_commit(app).into();
    push
}

async fn deliver(app: &App, event: &str, delivery: &str, body: &[u8], signature: Option<&str>) -> Answer {
    let mut headers = vec![("x-github-event", event), ("x-github-delivery", delivery)];
    headers.push(("user-agent", "GitHub-Hookshot/044aadd"));
    if let Some(signature) = signature {
        headers.push(("x-hub-signature-256", signature));
    }
    app.request_with("POST", "/webhooks/github", None, Some(body), &headers).await
}

fn sign(body: &[u8]) -> String {
    berth::daemon::github::sign(WEBHOOK_SECRET.as_bytes(), body)
}

async fn deploy_count(app: &App, token: &str) -> usize {
    app.request("GET", "/deploys?limit=500", Some(token), None).await.json()["deploys"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_to_the_branch_deploys_its_commit_once_and_nothing_else_deploys() {
    let app = spawn().await;
    let read = app.token(Scope::Read, None).await;
    let push = push_to_main(&app);
    let body = serde_json::to_vec(&push).unwrap();

    // Missing and wrong signatures: 401, nothing stored.
    deliver(&app, "push", "d-1", &body, None).await.assert_problem(StatusCode::UNAUTHORIZED, "X-Hub-Signature-256");
    let forged = berth::daemon::github::sign(b"not the secret", &body);
    deliver(&app, "push", "d-1", &body, Some(&forged)).await.assert_problem(StatusCode::UNAUTHORIZED, "matches no");
    let mut tampered = push.clone();
    tampered["after"] = "ffffffffffffffffffffffffffffffffffffffff".into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    deliver(&app, "push", "d-1", &tampered, Some(&sign(&body))).await.assert_problem(StatusCode::UNAUTHORIZED, "");
    assert_eq!(deploy_count(&app, &read).await, 0, "nothing stored for a bad signature");

    // Signed: one deploy of exactly the pushed commit, answered at once.
    let started = Instant::now();
    let answer = deliver(&app, "push", "d-1", &body, Some(&sign(&body))).await;
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.json()["deploy_id"].as_i64().expect("a deploy id");
    let deploy = app.request("GET", &format!("/deploys/{id}"), Some(&read), None).await.json();
    assert_eq!(deploy["service"], "app");
    assert_eq!(deploy["ref"], head_commit(&app), "{deploy:#}");
    assert_eq!(deploy["requested_by"], "github:Codertocat");
    assert!(deploy["reason"].as_str().unwrap().starts_with("push to main by Codertocat"), "{deploy:#}");

    // Redelivered (GitHub's "Redeliver" sends the same id and body): the same deploy, no other.
    for _ in 0..3 {
        let again = deliver(&app, "push", "d-1", &body, Some(&sign(&body))).await;
        assert_eq!(again.status, StatusCode::ACCEPTED);
        assert_eq!(again.json()["deploy_id"], id);
        assert!(again.body.contains("received before"), "{}", again.body);
    }
    // Replayed under a made-up delivery id (the header is not signed): the same push, the same deploy.
    let replay = deliver(&app, "push", "made-up-id", &body, Some(&sign(&body))).await;
    assert_eq!(replay.json()["deploy_id"], id, "{}", replay.body);
    assert_eq!(deploy_count(&app, &read).await, 1);

    // Signed but not deploying: the reason is in the answer, and no deploy.
    let mut other_branch = push.clone();
    other_branch["ref"] = "refs/heads/feature".into();
    let mut skipped = push.clone();
    skipped["head_commit"]["message"] = "Fix a typo [skip deploy]".into();
    let mut deleted = push.clone();
    deleted["deleted"] = true.into();
    deleted["head_commit"] = serde_json::Value::Null;
    let cases = [
        ("push", other_branch, "branch `feature` is not one that deploys"),
        ("push", skipped, "[skip deploy]"),
        ("push", deleted, "was deleted"),
        ("issues", push.clone(), "`issues` events do not deploy"),
        // Real tag deletions, as GitHub sends them.
        ("push", payload("github/api.github.com/push/payload.json"), "is not a branch"),
        ("push", payload("github/api.github.com/push/1.payload.json"), "is not a branch"),
        ("push", payload("github/api.github.com/push/with-installation.payload.json"), "is not a branch"),
    ];
    for (n, (event, payload, reason)) in cases.into_iter().enumerate() {
        let body = serde_json::to_vec(&payload).unwrap();
        let answer = deliver(&app, event, &format!("other-{n}"), &body, Some(&sign(&body))).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        let json = answer.json();
        assert!(json["deploy_id"].is_null(), "{json:#}");
        assert!(json["services"][0]["reason"].as_str().unwrap().contains(reason), "{json:#} lacks {reason}");
    }
    assert_eq!(deploy_count(&app, &read).await, 1, "none of those deployed");

    // GitHub's form encoding: `payload=<JSON>`, signed over the form body.
    let mut again = push.clone();
    again["pusher"]["name"] = "someone-else".into();
    let form = format!("payload={}", percent_encode(&serde_json::to_string(&again).unwrap()));
    let headers = [
        ("x-github-event", "push"),
        ("x-github-delivery", "d-form"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-hub-signature-256", &sign(form.as_bytes())),
    ];
    let answer = app.request_with("POST", "/webhooks/github", None, Some(form.as_bytes()), &headers).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert!(answer.json()["deploy_id"].as_i64().is_some_and(|new| new != id));

    // The webhook needs no token, but its deploys are audited as GitHub's.
    let admin = app.token(Scope::Admin, None).await;
    let audit = app.request("GET", "/audit", Some(&admin), None).await.json();
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|entry| entry["actor"] == "github:Codertocat"),
        "{audit:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_from_github_are_answered_and_unknown_repositories_refused() {
    let app = spawn().await;
    for path in [
        "github/api.github.com/ping/payload.json",
        "github/api.github.com/ping/with-app_id.payload.json",
        "github/ghes-35/ping/payload.json",
    ] {
        let mut ping = payload(path);
        ping["repository"]["full_name"] = "Codertocat/Hello-World".into();
        let body = serde_json::to_vec(&ping).unwrap();
        let answer = deliver(&app, "ping", "ping-1", &body, Some(&sign(&body))).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert!(answer.body.contains("secret matches"), "{}", answer.body);
    }
    // A repository no service deploys: refused like a bad signature (nothing tells which repositories exist).
    let mut push = push_to_main(&app);
    push["repository"]["full_name"] = "someone/else".into();
    let body = serde_json::to_vec(&push).unwrap();
    deliver(&app, "push", "x", &body, Some(&sign(&body)))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "someone/else");
    // Not JSON at all, signed: 400; no event header: 400.
    deliver(&app, "push", "x", b"{not json", Some(&sign(b"{not json")))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "JSON");
    let answer =
        app.request_with("POST", "/webhooks/github", None, Some(b"{}"), &[("x-hub-signature-256", "sha256=00")]).await;
    answer.assert_problem(StatusCode::BAD_REQUEST, "X-GitHub-Event");
    // Announced over 10 MiB: refused from the head alone, before any of the body is read.
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: berth.test\r\nx-github-event: push\r\nx-github-delivery: x\r\n\
         x-hub-signature-256: sha256=00\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        11 * 1024 * 1024
    );
    let mut raw = tokio::net::TcpStream::connect(&app.address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let reading = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer);
    tokio::time::timeout(Duration::from_secs(10), reading).await.expect("answered without the body").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 ") && answer.contains("10 MiB for webhooks"), "{answer}");
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

const NOTIFY_SECRET: &str = "berth-test-notify-secret";
const GITHUB_TOKEN: &str = "ghp_berthTestToken0123456789";

/// A service whose pushes deploy and whose deploys are reported to `recorder`: a signed webhook, a Slack
/// incoming webhook for failures, and GitHub (statuses, or deployments).
async fn spawn_reporting(recorder: &Recorder, deployments: bool) -> App {
    let yml = format!(
        "public_url: http://berth.example/\n\
         services:\n  app:\n    repo: app\n    secrets: secrets/app\n\
         \x20   github:\n      repository: Codertocat/Hello-World\n      webhook_secret: GITHUB_WEBHOOK_SECRET\n\
         \x20     token: GITHUB_TOKEN\n      api_url: {url}/api\n      deployments: {deployments}\n\
         \x20   notify:\n      - url: {url}/hook\n        secret: NOTIFY_SECRET\n\
         \x20     - slack_webhook: SLACK_WEBHOOK_URL\n        events: [failed]\n",
        url = recorder.url()
    );
    let secrets = format!(
        "GITHUB_WEBHOOK_SECRET={WEBHOOK_SECRET}\nGITHUB_TOKEN={GITHUB_TOKEN}\nNOTIFY_SECRET={NOTIFY_SECRET}\n\
         SLACK_WEBHOOK_URL={}/slack/T000/B000/XXXX\n",
        recorder.url()
    );
    App::spawn_with(&yml, &[("secrets/app/secrets-common", &secrets)]).await
}

/// Pushes to `main` (signed) and returns the deploy queued.
async fn push(app: &App, delivery: &str) -> i64 {
    let body = serde_json::to_vec(&push_to_main(app)).unwrap();
    let answer = deliver(app, "push", delivery, &body, Some(&sign(&body))).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    answer.json()["deploy_id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_and_commit_statuses_arrive_signed_in_order_and_are_retried() {
    let recorder = Recorder::start();
    // The first notification and the first status are answered with server errors: both are retried.
    recorder.script("/hook", &[500]);
    recorder.script("/api/", &[502]);
    let app = spawn_reporting(&recorder, false).await;
    let read = app.token(Scope::Read, None).await;
    let id = push(&app, "n-1").await;
    // The deploy fails (its host cannot be reached): queued, started, failed.
    let deploy = crate::daemon::wait_for_end(&app, id, &read).await;
    assert_eq!(deploy["state"], "failed");

    let hooks = recorder.wait_for("/hook", 4, Duration::from_secs(30));
    let events: Vec<_> = hooks.iter().map(|r| (r.json()["event"].as_str().unwrap().to_string(), r.status)).collect();
    assert_eq!(
        events,
        [("queued".into(), 500), ("queued".into(), 200), ("started".into(), 200), ("failed".into(), 200)],
        "in order, the failed one again"
    );
    for hook in &hooks {
        let signature = hook.headers["x-berth-signature-256"].clone();
        assert_eq!(signature, berth::daemon::github::sign(NOTIFY_SECRET.as_bytes(), &hook.body), "signed");
        let body = hook.json();
        assert_eq!((body["id"].as_i64(), body["service"].as_str()), (Some(id), Some("app")));
        assert_eq!(body["url"], format!("http://berth.example/ui/deploys/{id}"));
        assert_eq!(hook.headers["content-type"], "application/json");
    }
    assert!(hooks[3].json()["error"].as_str().is_some(), "a failure says why");

    let statuses = recorder.wait_for("/api/", 3, Duration::from_secs(30));
    let commit = head_commit(&app);
    for status in &statuses {
        assert_eq!(status.path, format!("/api/repos/Codertocat/Hello-World/statuses/{commit}"));
        assert_eq!(status.headers["authorization"], format!("Bearer {GITHUB_TOKEN}"));
        assert_eq!(status.headers["accept"], "application/vnd.github+json");
        let body = status.json();
        assert_eq!(body["context"], "berth/app");
        assert_eq!(body["target_url"], format!("http://berth.example/ui/deploys/{id}"));
    }
    let states: Vec<_> = statuses.iter().map(|r| (r.json()["state"].as_str().unwrap().to_string(), r.status)).collect();
    let on_record = app.request("GET", &format!("/deploys/{id}/deliveries"), Some(&read), None).await.body;
    assert_eq!(states, [("pending".into(), 502), ("pending".into(), 200), ("failure".into(), 200)], "{on_record}");

    // Slack hears of the failure only, as a readable message.
    let slack = recorder.wait_for("/slack/", 1, Duration::from_secs(30));
    let text = slack[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("Deploy <http://berth.example/ui/deploys/{id}|#{id}> of *app* failed")), "{text}");

    // Every delivery is on record, with its attempts; none carries a secret.
    // (The last answer may still be on its way into the database.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (deliveries, list) = loop {
        let deliveries = app.request("GET", &format!("/deploys/{id}/deliveries"), Some(&read), None).await;
        assert_eq!(deliveries.status, StatusCode::OK, "{}", deliveries.body);
        let list = deliveries.json();
        let sent = list.as_array().unwrap().iter().all(|d| d["status"] == "delivered");
        if sent || Instant::now() > deadline {
            break (deliveries, list);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = &list.as_array().unwrap()[0];
    assert_eq!(
        (first["target"].as_str(), first["status"].as_str(), first["attempts"].as_i64()),
        (Some("notify/0"), Some("delivered"), Some(2))
    );
    assert!(first["last_error"].as_str().unwrap().contains("500"), "{list:#}");
    assert!(list.as_array().unwrap().iter().all(|d| d["status"] == "delivered"), "{list:#}");
    for secret in [GITHUB_TOKEN, NOTIFY_SECRET, WEBHOOK_SECRET, "/slack/T000/B000/XXXX"] {
        assert!(!deliveries.body.contains(secret), "{secret} in {}", deliveries.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployments_api_gets_a_deployment_and_its_statuses() {
    let recorder = Recorder::start();
    let app = spawn_reporting(&recorder, true).await;
    let read = app.token(Scope::Read, None).await;
    let id = push(&app, "d-1").await;
    crate::daemon::wait_for_end(&app, id, &read).await;
    let calls = recorder.wait_for("/api/", 4, Duration::from_secs(30));
    let paths: Vec<_> = calls.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/repos/Codertocat/Hello-World/deployments",
            "/api/repos/Codertocat/Hello-World/deployments/4242/statuses",
            "/api/repos/Codertocat/Hello-World/deployments/4242/statuses",
            "/api/repos/Codertocat/Hello-World/deployments/4242/statuses",
        ]
    );
    assert_eq!(calls[0].json()["ref"], head_commit(&app));
    assert_eq!(calls[0].json()["environment"], "production");
    let states: Vec<_> = calls[1..].iter().map(|r| r.json()["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["queued", "in_progress", "failure"]);
    assert_eq!(calls[3].json()["log_url"], format!("http://berth.example/ui/deploys/{id}"));
}

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// Slack commands on: roadrunner (the example's user) may deploy, W111 (bolt-js's) may only read.
async fn spawn_slack(recorder: &Recorder) -> App {
    let _ = recorder;
    let yml = "public_url: http://berth.example\nsecrets: daemon.env\n\
               slack:\n  signing_secret: SLACK_SIGNING_SECRET\n  users:\n    U2CERLKJA: deploy\n    W111: read\n\
               services:\n  app:\n    repo: app\n    secrets: secrets/app\n";
    App::spawn_with(yml, &[("daemon.env", &format!("SLACK_SIGNING_SECRET={SLACK_SECRET}\n"))]).await
}

/// A real slash-command body with some fields replaced (the others byte for byte).
fn slack_body(file: &str, replace: &[(&str, &str)]) -> String {
    let original = std::fs::read_to_string(payloads().join("slack").join(file)).unwrap();
    original
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            match replace.iter().find(|(name, _)| *name == key) {
                Some((_, value)) => format!("{key}={}", percent_encode(value)),
                None => pair.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn command(app: &App, body: &str, timestamp: u64, signature: Option<String>) -> Answer {
    let timestamp = timestamp.to_string();
    let signature =
        signature.unwrap_or_else(|| berth::daemon::slack::sign(SLACK_SECRET.as_bytes(), &timestamp, body.as_bytes()));
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-slack-request-timestamp", timestamp.as_str()),
        ("x-slack-signature", signature.as_str()),
        ("user-agent", "Slackbot 1.0 (+https://api.slack.com/robots)"),
    ];
    app.request_with("POST", "/chatops/slack", None, Some(body.as_bytes()), &headers).await
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_commands_are_verified_scoped_and_followed_up() {
    let recorder = Recorder::start();
    let app = spawn_slack(&recorder).await;
    let read = app.token(Scope::Read, None).await;
    let reply_url = format!("{}/slack-reply/T1DC2JH3J/1", recorder.url());

    // The real example body, re-signed now: an empty text is `help`.
    let help = slack_body("verifying-requests-example.body.txt", &[]);
    let answer = command(&app, &help, unix_now(), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.json()["text"].as_str().unwrap().contains("/webhook-collect deploy SERVICE"), "{}", answer.body);

    // Its original signature and timestamp (2018): too old. A wrong signature, and none: 401.
    let original = slack_body("verifying-requests-example.body.txt", &[]);
    let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503".to_string();
    command(&app, &original, 1_531_420_618, Some(signature))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "5 minutes");
    let expired = unix_now() - 301;
    command(&app, &help, expired, None).await.assert_problem(StatusCode::UNAUTHORIZED, "5 minutes");
    let forged = berth::daemon::slack::sign(b"another secret", &unix_now().to_string(), help.as_bytes());
    command(&app, &help, unix_now(), Some(forged)).await.assert_problem(StatusCode::UNAUTHORIZED, "does not match");
    let answer = app.request_with("POST", "/chatops/slack", None, Some(help.as_bytes()), &[]).await;
    answer.assert_problem(StatusCode::UNAUTHORIZED, "not signed");

    // A user with `read` cannot deploy; an unknown user can do nothing; nothing is queued.
    let reader = slack_body("bolt-js-slash-command.body.txt", &[("text", "deploy app")]);
    let answer = command(&app, &reader, unix_now(), None).await;
    assert!(
        answer.json()["text"].as_str().unwrap().contains("needs the `deploy` scope; you have `read`"),
        "{}",
        answer.body
    );
    let stranger = slack_body("slash-command-docs-weather.body.txt", &[("text", "deploy app")]);
    let answer = command(&app, &stranger, unix_now(), None).await;
    assert!(answer.json()["text"].as_str().unwrap().contains("add `U2147483697: read`"), "{}", answer.body);
    assert_eq!(deploy_count(&app, &read).await, 0);
    // Slack's SSL check is acknowledged.
    let check = slack_body("bolt-js-ssl-check.body.txt", &[]);
    assert_eq!(command(&app, &check, unix_now(), None).await.status, StatusCode::OK);
    // Mistakes get the usage.
    let typo = slack_body("verifying-requests-example.body.txt", &[("text", "deploi app")]);
    let answer = command(&app, &typo, unix_now(), None).await;
    assert!(answer.body.contains("no command `deploi`") && answer.body.contains("rollback SERVICE"), "{}", answer.body);

    // A deploy: answered at once with its id; its start and outcome are posted to the response_url.
    let deploy =
        slack_body("verifying-requests-example.body.txt", &[("text", "deploy app"), ("response_url", &reply_url)]);
    let started = Instant::now();
    let answer = command(&app, &deploy, unix_now(), None).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let json = answer.json();
    let id = json["deploy_id"].as_i64().expect("the deploy id");
    assert_eq!(json["response_type"], "in_channel");
    assert!(
        json["text"].as_str().unwrap().contains(&format!("<http://berth.example/ui/deploys/{id}|#{id}>")),
        "{json:#}"
    );
    let record = app.request("GET", &format!("/deploys/{id}"), Some(&read), None).await.json();
    assert_eq!(
        (record["requested_by"].as_str(), record["reason"].as_str()),
        (Some("slack:U2CERLKJA"), Some("from Slack by @roadrunner"))
    );
    crate::daemon::wait_for_end(&app, id, &read).await;
    let posts = recorder.wait_for("/slack-reply/", 2, Duration::from_secs(30));
    let texts: Vec<String> = posts.iter().map(|post| post.json()["text"].as_str().unwrap().to_string()).collect();
    assert!(texts[0].contains("started") && texts[1].contains("failed"), "{texts:#?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(recorder.requests("/slack-reply/").len(), 2, "one post per change, at most 5");
    // The same signed command replayed within its 5 minutes (same trigger id): the same deploy.
    let replayed = command(&app, &deploy, unix_now(), None).await.json();
    assert_eq!(replayed["deploy_id"], id, "{replayed:#}");
    assert_eq!(deploy_count(&app, &read).await, 1);

    // status: what each host runs (here the one host cannot be reached).
    let status = slack_body("bolt-js-slash-command.body.txt", &[("text", "status app")]);
    let answer = command(&app, &status, unix_now(), None).await;
    let text = answer.json()["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("*app*:")
            && text.contains("127.0.0.1:1 (web): nothing unreachable")
            && text.contains(&format!("#{id}>: failed")),
        "{text}"
    );

    // cancel, by a user who may deploy: a deploy that has ended says so.
    let cancel = slack_body("verifying-requests-example.body.txt", &[("text", &format!("cancel {id}"))]);
    let answer = command(&app, &cancel, unix_now(), None).await;
    assert!(answer.json()["text"].as_str().unwrap().contains("has ended already: failed"), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn badges_show_the_last_deploy_without_a_token_unless_turned_off() {
    let app = spawn().await;
    let read = app.token(Scope::Read, None).await;
    let badge = app.request("GET", "/badges/app.svg", None, None).await;
    assert_eq!(badge.status, StatusCode::OK);
    assert_eq!(badge.headers["content-type"], "image/svg+xml; charset=utf-8");
    assert!(badge.body.contains("<title>app: no deploys</title>"), "{}", badge.body);
    let id = push(&app, "b-1").await;
    crate::daemon::wait_for_end(&app, id, &read).await;
    let badge = app.request("GET", "/badges/app.svg", None, None).await;
    let commit = head_commit(&app);
    assert!(badge.body.contains("<title>app: failed</title>") || badge.body.contains(&commit[..12]), "{}", badge.body);
    assert!(badge.body.contains("#e05d44"), "failed is red: {}", badge.body);
    app.request("GET", "/badges/nope.svg", None, None).await.assert_problem(StatusCode::NOT_FOUND, "no service `nope`");

    let off = App::spawn("badges: false\nservices:\n  app:\n    repo: app\n").await;
    off.request("GET", "/badges/app.svg", None, None).await.assert_problem(StatusCode::NOT_FOUND, "turned off");
}
