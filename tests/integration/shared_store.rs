//! Several `berth serve` on one PostgreSQL (the daemons built by `Daemon::start`, on port 0, each with its
//! own data directory, on a new database of the test run's PostgreSQL): requests to any of them, every
//! deploy run once by one of them, never two of a service at once, tokens and deploys seen by all.

use std::time::Duration;

use berth::daemon::model::Scope;
use http::StatusCode;
use sqlx::Connection;

use crate::daemon::{App, wait_for_end};

/// A new, empty database on the test run's PostgreSQL (`BERTH_TEST_DATABASE_URL`, started by scripts/test.sh).
pub(crate) async fn new_database() -> String {
    let server = std::env::var("BERTH_TEST_DATABASE_URL").expect(
        "BERTH_TEST_DATABASE_URL names the test run's PostgreSQL: run `bash scripts/test.sh`, which starts one",
    );
    let name = format!("berth_it_{}_{}", std::process::id(), rand_suffix());
    let mut connection = sqlx::PgConnection::connect(&server).await.expect("the test PostgreSQL answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut connection).await.unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn rand_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Commits a pre-connect hook into the daemon's copy of the services' repository.
fn add_hook(daemon: &App, script: &str) {
    let repo = std::path::PathBuf::from(&daemon.daemon.as_ref().unwrap().state.config.services["app"].repo);
    let hooks = repo.join(".kamal/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("pre-connect");
    std::fs::write(&hook, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    for args in
        [&["add", "."][..], &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "hook"][..]]
    {
        let status = std::process::Command::new("git").args(args).current_dir(&repo).status().unwrap();
        assert!(status.success());
    }
}

fn services_yml(url: &str, instance: &str) -> String {
    let mut yml = format!("database_url: {url}\ninstance: {instance}\nservices:\n");
    for service in ["app", "web", "api", "jobs"] {
        yml.push_str(&format!("  {service}:\n    repo: app\n    secrets: secrets/app\n    queue: fifo\n"));
    }
    yml
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_one_postgresql_share_the_queue_and_run_each_deploy_once() {
    let url = new_database().await;
    let a = App::spawn(&services_yml(&url, "deploy-a")).await;
    let b = App::spawn(&services_yml(&url, "deploy-b")).await;
    // A token made through one daemon works on the other: one store.
    let token = a.token(Scope::Deploy, None).await;
    assert_eq!(b.request("GET", "/deploys", Some(&token), None).await.status, StatusCode::OK);
    assert_eq!(b.request("GET", "/healthz", None, None).await.json()["instance"], "deploy-b");

    // 12 requests, 3 per service (fifo), sent to either daemon at once.
    let mut requests = Vec::new();
    let token = token.as_str();
    for round in 0..3 {
        for service in ["app", "web", "api", "jobs"] {
            let daemon = if (round + service.len()) % 2 == 0 { &a } else { &b };
            let body = format!(r#"{{"service":"{service}","reason":"round {round}"}}"#);
            requests.push(async move {
                let answer = daemon.request("POST", "/deploys", Some(token), Some(body.as_bytes())).await;
                assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
                answer.json()["id"].as_i64().unwrap()
            });
        }
    }
    let ids = futures_util::future::join_all(requests).await;
    let mut ended = Vec::new();
    for id in &ids {
        // Read through the other daemon than the one most requests went to: either sees every deploy.
        ended.push(wait_for_end(&b, *id, token).await);
    }
    for deploy in &ended {
        // Each ran (and failed: its host cannot be reached) once, on one of the two.
        assert_eq!(deploy["state"], "failed", "{deploy:#}");
        assert!(["deploy-a", "deploy-b"].contains(&deploy["runner"].as_str().unwrap_or_default()), "{deploy:#}");
    }
    // Never two of one service at once: their running times do not overlap.
    for service in ["app", "web", "api", "jobs"] {
        let mut spans: Vec<(String, String)> = ended
            .iter()
            .filter(|deploy| deploy["service"] == service)
            .map(|deploy| (deploy["started_at"].as_str().unwrap().into(), deploy["ended_at"].as_str().unwrap().into()))
            .collect();
        spans.sort();
        assert_eq!(spans.len(), 3);
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{service}: {spans:?}");
        }
    }

    // Every deploy's log, followed live through either daemon, whichever ran it: every line once, in order,
    // then the end.
    for (n, deploy) in ended.iter().enumerate() {
        let id = deploy["id"].as_i64().unwrap();
        let daemon = if n % 2 == 0 { &a } else { &b };
        let events = daemon.follow(id, token, None).await;
        let (end, lines) = events.split_last().unwrap();
        assert_eq!((end.1.as_str(), end.2.as_str()), ("end", "failed"), "{events:#?}");
        let seqs: Vec<i64> = lines.iter().map(|event| event.0.unwrap()).collect();
        assert_eq!(seqs, (1..=lines.len() as i64).collect::<Vec<_>>());
    }

    // Live, across daemons: a deploy whose pre-connect hook prints a line every 100 ms, followed through
    // the daemon that does not run it. (The other services' deploys failed at once: their repository's
    // deploy.yml names the service `app`.)
    for daemon in [&a, &b] {
        add_hook(daemon, "for i in 1 2 3 4 5 6 7 8 9 10; do echo hook-line $i; sleep 0.1; done");
    }
    let answer = a.request("POST", "/deploys", Some(token), Some(br#"{"service":"app"}"#)).await;
    let id = answer.json()["id"].as_i64().unwrap();
    let runner = loop {
        let deploy = b.request("GET", &format!("/deploys/{id}"), Some(token), None).await.json();
        if let Some(runner) = deploy["runner"].as_str() {
            break runner.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let watcher = if runner == "deploy-a" { &b } else { &a };
    let events = watcher.follow(id, token, None).await;
    let hook_lines: Vec<&str> =
        events.iter().filter(|event| event.2.contains("hook-line")).map(|event| event.2.trim()).collect();
    assert_eq!(hook_lines, (1..=10).map(|i| format!("hook-line {i}")).collect::<Vec<_>>(), "{events:#?}");
    let seqs: Vec<i64> = events.iter().filter_map(|event| event.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "every line once, in order");
    assert_eq!(events.last().unwrap().1, "end");

    // With one daemon gone, the other takes what is queued, whichever daemon accepted it.
    a.stop().await;
    let answer = b.request("POST", "/deploys", Some(token), Some(br#"{"service":"app"}"#)).await;
    let id = answer.json()["id"].as_i64().unwrap();
    let deploy = tokio::time::timeout(Duration::from_secs(60), wait_for_end(&b, id, token)).await.unwrap();
    assert_eq!(deploy["runner"], "deploy-b");
}
