//! GitHub and Slack driving `berth serve` deploying to a real bench host: a signed push builds and deploys
//! its commit (remote builder on the host) while notifications, commit statuses and Slack replies reach a
//! local server standing in for GitHub and Slack — each receiver's first answer a 500, retried — and the
//! deploys still succeed; Slack's `status` answers with the version the host runs.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::bench::Bench;
use crate::support::recorder::Recorder;
use crate::support::served::{Integrations, Served, app_config, json, version_served};

const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const NOTIFY_SECRET: &str = "bench-notify-secret";
const GITHUB_TOKEN: &str = "ghp_benchToken0123456789";
const SLACK_SECRET: &str = "bench-slack-signing-secret";

/// POSTs `body` to the daemon with `headers`, as GitHub or Slack would (no token): (status, answer).
fn post(daemon: &Served, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
    let file = daemon.dir.path().join("request-body");
    std::fs::write(&file, body).unwrap();
    let mut args = vec!["-sS".to_string(), "--max-time".into(), "60".into(), "-w".into(), "\n%{http_code}".into()];
    for (name, value) in headers {
        args.extend(["-H".to_string(), format!("{name}: {value}")]);
    }
    args.extend(["--data-binary".into(), format!("@{}", file.display())]);
    args.push(format!("http://127.0.0.1:{}{path}", daemon.port));
    let out = Command::new("curl").args(&args).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), answer.to_string())
}

fn slack(daemon: &Served, user: &str, text: &str, response_url: &str) -> serde_json::Value {
    let encode = |value: &str| -> String {
        value
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    };
    let body = format!(
        "token=x&team_id=T1&channel_id=C1&user_id={user}&user_name=ana&command=%2Fberth&text={}&response_url={}&trigger_id=1.2.3",
        encode(text),
        encode(response_url)
    );
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = berth::daemon::slack::sign(SLACK_SECRET.as_bytes(), &timestamp, body.as_bytes());
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded".to_string()),
        ("X-Slack-Request-Timestamp", timestamp),
        ("X-Slack-Signature", signature),
    ];
    let (status, answer) = post(daemon, "/chatops/slack", body.as_bytes(), &headers);
    assert_eq!(status, 200, "{answer}");
    json(&answer)
}

#[test]
fn a_push_and_a_slack_command_deploy_while_every_receiver_hears_of_it_in_order_despite_500s() {
    let bench = Bench::start(1);
    let h1 = bench.host(1).clone();
    let recorder = Recorder::start();
    // Every receiver's first answer is a server error: each is retried, and the deploys go on regardless.
    for prefix in ["/hook", "/api/", "/slack-reply/"] {
        recorder.script(prefix, &[500]);
    }
    let more = Integrations {
        top_level: "public_url: http://berth.example\nsecrets: daemon.env\n\
                    slack:\n  signing_secret: SLACK_SIGNING_SECRET\n  users: {U1: deploy}\n"
            .to_string(),
        service_keys: format!(
            "    github:\n      repository: me/app\n      webhook_secret: GITHUB_WEBHOOK_SECRET\n      token: GITHUB_TOKEN\n\
             \x20     api_url: {url}/api\n\
             \x20   notify:\n      - url: {url}/hook\n        secret: NOTIFY_SECRET\n",
            url = recorder.url()
        ),
        service_secrets: format!(
            "GITHUB_WEBHOOK_SECRET={WEBHOOK_SECRET}\nGITHUB_TOKEN={GITHUB_TOKEN}\nNOTIFY_SECRET={NOTIFY_SECRET}\n"
        ),
        daemon_secrets: format!("SLACK_SIGNING_SECRET={SLACK_SECRET}\n"),
    };
    let daemon = Served::new_with(&bench, &app_config(&bench, &[bench.host(1)], Some(bench.host(1)), 60), &more);
    let head = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(daemon.dir.path().join("app"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    // A signed push to main: its commit is built on the host, pushed and deployed.
    let push = serde_json::json!({
        "ref": "refs/heads/main",
        "after": head,
        "deleted": false,
        "repository": {"full_name": "me/app"},
        "sender": {"login": "ana"},
        "head_commit": {"id": head, "message": "Ship it"},
        "commits": [{"id": head, "message": "Ship it", "modified": ["Dockerfile"]}],
    });
    let body = serde_json::to_vec(&push).unwrap();
    let headers = [
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", "bench-delivery-1".to_string()),
        ("X-Hub-Signature-256", berth::daemon::github::sign(WEBHOOK_SECRET.as_bytes(), &body)),
        ("Content-Type", "application/json".to_string()),
    ];
    let (status, answer) = post(&daemon, "/webhooks/github", &body, &headers);
    assert_eq!(status, 202, "{answer}");
    let pushed = json(&answer)["deploy_id"].as_i64().unwrap();
    let deploy = daemon.wait_end(pushed);
    let log = daemon.curl("GET", &format!("/deploys/{pushed}/logs"), None, &[]).1;
    assert_eq!(deploy["state"], "succeeded", "{deploy:#}\n{log}\n{}", daemon.serve_log());
    assert_eq!(deploy["version"], head.as_str());
    assert_eq!(version_served(&h1), "built");

    // The notifications: queued (500, then again), started, succeeded — signed, in order.
    let hooks = recorder.wait_for("/hook", 4, Duration::from_secs(60));
    let seen: Vec<(String, u16)> =
        hooks.iter().map(|r| (r.json()["event"].as_str().unwrap().into(), r.status)).collect();
    assert_eq!(
        seen,
        [("queued".into(), 500), ("queued".into(), 200), ("started".into(), 200), ("succeeded".into(), 200)]
    );
    for hook in &hooks {
        assert_eq!(
            hook.headers["x-berth-signature-256"],
            berth::daemon::github::sign(NOTIFY_SECRET.as_bytes(), &hook.body)
        );
    }
    assert_eq!(hooks[3].json()["version"], head.as_str());
    // The commit statuses on the pushed commit: pending (500, then again), success.
    let statuses = recorder.wait_for("/api/", 3, Duration::from_secs(60));
    let seen: Vec<(String, u16)> =
        statuses.iter().map(|r| (r.json()["state"].as_str().unwrap().into(), r.status)).collect();
    assert_eq!(seen, [("pending".into(), 500), ("pending".into(), 200), ("success".into(), 200)]);
    for status in &statuses {
        assert_eq!(status.path, format!("/api/repos/me/app/statuses/{head}"));
        assert_eq!(status.json()["context"], "berth/app");
        assert_eq!(status.json()["target_url"], format!("http://berth.example/ui/deploys/{pushed}"));
    }

    // Slack: `deploy app main` builds the branch's head (the same commit, from the builder's cache) and
    // deploys it again.
    let reply_url = format!("{}/slack-reply/T1/1", recorder.url());
    let answer = slack(&daemon, "U1", "deploy app main", &reply_url);
    let from_slack = answer["deploy_id"].as_i64().unwrap_or_else(|| panic!("{answer:#}"));
    let deploy = daemon.wait_end(from_slack);
    assert_eq!(deploy["state"], "succeeded", "{deploy:#}");
    assert_eq!(deploy["requested_by"], "slack:U1");
    // Its start (500, then again) and its success, posted to the command's response_url.
    let posts = recorder.wait_for("/slack-reply/", 3, Duration::from_secs(60));
    let texts: Vec<(String, u16)> =
        posts.iter().map(|r| (r.json()["text"].as_str().unwrap().into(), r.status)).collect();
    assert!(texts[0].0.contains("started") && texts[0].1 == 500, "{texts:#?}");
    assert!(texts[1].0.contains("started") && texts[1].1 == 200, "{texts:#?}");
    assert!(texts[2].0.contains("succeeded") && texts[2].1 == 200, "{texts:#?}");
    // status: the version on each host, read from the host.
    let status = slack(&daemon, "U1", "status app", &reply_url);
    let text = status["text"].as_str().unwrap();
    assert!(text.contains(&format!("• {} (web): `{head}` running", h1.ip)), "{text}");
    // Every delivery ended delivered, none failed.
    let (_, deliveries) = daemon.curl("GET", &format!("/deploys/{pushed}/deliveries"), None, &[]);
    assert!(json(&deliveries).as_array().unwrap().iter().all(|d| d["status"] == "delivered"), "{deliveries}");
    for secret in [GITHUB_TOKEN, NOTIFY_SECRET, WEBHOOK_SECRET, SLACK_SECRET] {
        assert!(!deliveries.contains(secret));
    }
}
