//! `berth serve` end to end on the bench: the real binary as a daemon, real hosts (sshd + dockerd each), the
//! real registry and berth's proxy, driven with curl as a script would — a deploy to two hosts with its
//! timeline and live log, a `ref` built on a remote builder, a cancel in the middle of a boot, and a
//! `kill -9` of the daemon mid-deploy followed by a restart; a load loop proves the service kept answering.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::bench::{Bench, Host};
use crate::support::http::{self, LoadLoop};
use crate::support::served::{SECRET_TOKEN, Served, app_config, json, version_served};

/// The deploy's log as a client following it would see it: (id, event, data), until the stream closes.
fn follow(daemon: &Served, id: i64, last_event_id: Option<i64>) -> Vec<(Option<i64>, String, String)> {
    let mut extra = vec!["-N", "-H", "Accept: text/event-stream"];
    let header;
    if let Some(last) = last_event_id {
        header = format!("Last-Event-ID: {last}");
        extra.extend(["-H", &header]);
    }
    let (status, text) = daemon.curl("GET", &format!("/deploys/{id}/logs"), None, &extra);
    assert_eq!(status, 200, "{text}");
    crate::daemon::parse_events(&text)
}

fn stage(deploy: &serde_json::Value, name: &str) -> serde_json::Value {
    deploy["stages"].as_array().unwrap().iter().find(|stage| stage["name"] == name).unwrap().clone()
}

#[test]
fn the_daemon_deploys_to_two_hosts_builds_a_ref_cancels_mid_boot_and_survives_a_kill() {
    let bench = Bench::start(2);
    for version in ["v1", "v2"] {
        bench.push_test_app_with(version, &[("SERVICE", "app")]);
    }
    // A version whose container takes 8 s to listen: its boot is long enough to cancel or kill in.
    bench.push_test_app_with("slow", &[("SERVICE", "app"), ("BOOT_DELAY_MS", "8000")]);
    let (h1, h2) = (bench.host(1).clone(), bench.host(2).clone());
    let mut daemon = Served::new(&bench, &app_config(&bench, &[bench.host(1), bench.host(2)], Some(bench.host(2)), 30));

    // A version already in the registry, to two hosts: the whole timeline, per host, and the live log.
    let first = daemon.deploy(r#"{"service":"app","version":"v1","reason":"first"}"#);
    let events = follow(&daemon, first, None);
    let (end, lines) = events.split_last().unwrap();
    assert_eq!((end.1.as_str(), end.2.as_str()), ("end", "succeeded"), "{events:#?}\n{}", daemon.serve_log());
    let ids: Vec<i64> = lines.iter().map(|event| event.0.unwrap()).collect();
    assert_eq!(ids, (1..=lines.len() as i64).collect::<Vec<_>>(), "every line once, in order");
    let deploy = daemon.get_deploy(first);
    assert_eq!(deploy["state"], "succeeded");
    for (name, hosts) in
        [("build", 0), ("push", 0), ("pull", 2), ("boot", 2), ("healthcheck", 2), ("cutover", 2), ("prune", 2)]
    {
        let stage = stage(&deploy, name);
        let expected = if hosts == 0 { "skipped" } else { "succeeded" };
        assert_eq!(stage["state"], expected, "{name}: {deploy:#}");
        let hosts_seen: Vec<&str> =
            stage["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
        assert_eq!(hosts_seen.len(), hosts, "{name}: {deploy:#}");
        for host in stage["hosts"].as_array().unwrap() {
            assert!(host["started_at"].is_string() && host["ended_at"].is_string(), "{name}: {host}");
        }
    }
    assert_eq!(version_served(&h1), "v1");
    assert_eq!(version_served(&h2), "v1");
    // What runs where, read from the hosts now: the service, and the list of services.
    let hosts_of = |service: &serde_json::Value| {
        let mut hosts: Vec<(String, String, String, String)> = service["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let text = |key: &str| h[key].as_str().unwrap_or_default().to_string();
                (text("host"), text("role"), text("version"), text("state"))
            })
            .collect();
        hosts.sort();
        hosts
    };
    let row = |host: &Host| (host.ip.clone(), "web".to_string(), "v1".to_string(), "running".to_string());
    let (status, answer) = daemon.curl("GET", "/services/app", None, &[]);
    assert_eq!(status, 200, "{answer}");
    let service = json(&answer);
    assert_eq!(hosts_of(&service), [row(&h1), row(&h2)], "{service:#}");
    let (status, answer) = daemon.curl("GET", "/services", None, &[]);
    assert_eq!(status, 200, "{answer}");
    let services = json(&answer);
    assert_eq!(hosts_of(&services[0]), [row(&h1), row(&h2)], "{services:#}");
    assert_eq!(services[0]["last_deploy"]["id"], first, "{services:#}");

    // Maintenance: the proxies answer 503 with the message; live again after.
    let (status, answer) = daemon.curl("POST", "/services/app/maintenance", Some(r#"{"message":"Back at noon"}"#), &[]);
    assert_eq!(status, 200, "{answer}");
    for host in [&h1, &h2] {
        let answer = http::get(&format!("{}:80", host.ip), "/").unwrap();
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(answer.body.contains("Back at noon"), "{answer:?}");
    }
    let (status, answer) = daemon.curl("POST", "/services/app/live", None, &[]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(version_served(&h1), "v1");
    assert_eq!(version_served(&h2), "v1");

    // A follower that reconnects after line 3 gets exactly the rest.
    let resumed = follow(&daemon, first, Some(3));
    assert_eq!(resumed[..resumed.len() - 1], lines[3..]);

    // A ref: fetched, built at that commit on the remote builder, pushed, deployed.
    let built = daemon.deploy(r#"{"service":"app","ref":"main"}"#);
    let deploy = daemon.wait_end(built);
    assert_eq!(
        deploy["state"],
        "succeeded",
        "{deploy:#}\n{}",
        daemon.curl("GET", &format!("/deploys/{built}/logs"), None, &[]).1
    );
    let commit = deploy["commit"].as_str().unwrap();
    assert_eq!(commit.len(), 40);
    assert_eq!(deploy["version"], commit, "a built ref is tagged with its commit");
    assert_eq!(stage(&deploy, "build")["state"], "succeeded");
    assert_eq!(stage(&deploy, "push")["state"], "succeeded");
    assert_eq!(version_served(&h1), "built");
    assert_eq!(version_served(&h2), "built");

    // Under load from here on: nothing may fail while deploys are cancelled, killed and resumed.
    let addrs = vec![format!("{}:80", h1.ip), format!("{}:80", h2.ip)];
    let load = LoadLoop::start(&addrs, "/", 2);
    Bench::wait_for("load to start", Duration::from_secs(10), || (load.count() > 10).then_some(()));

    // Cancel in the middle of the boot: cancelled, the hosts serve the previous version, the lock is free.
    let slow = daemon.deploy(r#"{"service":"app","version":"slow"}"#);
    daemon.wait_until(slow, "booting", Duration::from_secs(120), |deploy| {
        deploy["state"] == "running" && ["boot", "healthcheck"].contains(&deploy["stage"].as_str().unwrap_or_default())
    });
    let (status, answer) = daemon.curl("POST", &format!("/deploys/{slow}/cancel"), None, &[]);
    assert_eq!(status, 202, "{answer}");
    let deploy = daemon.wait_end(slow);
    let log = daemon.curl("GET", &format!("/deploys/{slow}/logs"), None, &[]).1;
    assert_eq!(deploy["state"], "cancelled", "{deploy:#}\n{log}");
    assert_eq!(version_served(&h1), "built", "{log}");
    assert_eq!(version_served(&h2), "built", "{log}");
    // The command line as the daemon's client: submitted, followed live, the outcome as its exit status.
    let server = format!("http://127.0.0.1:{}", daemon.port);
    let client = |version: &str| {
        daemon
            .command()
            .args(["deploy", "--server", &server, "--service", "app", "--version", version, "--reason", "from the CLI"])
            .env("BERTH_TOKEN", &daemon.token)
            .output()
            .unwrap()
    };
    let out = client("v2");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the lock was released: {shown}\n{}", String::from_utf8_lossy(&out.stderr));
    let next: i64 = shown.split_whitespace().nth(1).and_then(|id| id.parse().ok()).expect("Deploy N queued …");
    assert!(shown.contains(&format!("Deploy {next} succeeded")), "the log was followed to its end: {shown}");
    assert_eq!(daemon.get_deploy(next)["reason"], "from the CLI");
    assert_eq!(version_served(&h1), "v2");
    let out = client("no-such-version");
    assert!(!out.status.success(), "a failed deploy fails the command");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("failed"), "{error}");
    assert_eq!(version_served(&h1), "v2", "a failed pull changes nothing");

    // kill -9 while a deploy boots, then start the daemon again.
    let killed = daemon.deploy(r#"{"service":"app","version":"slow"}"#);
    daemon.wait_until(killed, "booting", Duration::from_secs(120), |deploy| {
        deploy["state"] == "running" && ["boot", "healthcheck"].contains(&deploy["stage"].as_str().unwrap_or_default())
    });
    let lines_before = daemon.curl("GET", &format!("/deploys/{killed}/logs"), None, &[]).1;
    daemon.kill();
    daemon.start();
    let deploy = daemon.get_deploy(killed);
    assert_eq!(deploy["state"], "interrupted", "{deploy:#}");
    assert!(deploy["error"].as_str().unwrap().contains("daemon stopped"), "{deploy:#}");
    let lines_after = daemon.curl("GET", &format!("/deploys/{killed}/logs"), None, &[]).1;
    assert!(
        !lines_before.trim().is_empty() && lines_after.starts_with(lines_before.trim_end()),
        "the log is kept up to the kill"
    );
    assert!(daemon.serve_log().contains(&format!("deploy {killed} of app was interrupted")), "{}", daemon.serve_log());
    // The lock the killed daemon held is released at the restart, and the deploy's log says so.
    let released = Bench::wait_for("the interrupted deploy's lock to be released", Duration::from_secs(60), || {
        let log = daemon.curl("GET", &format!("/deploys/{killed}/logs"), None, &[]).1;
        log.lines().find(|line| line.starts_with("At the daemon's restart")).map(str::to_string)
    });
    assert_eq!(released, format!("At the daemon's restart: released the deploy lock this deploy held on {}", h1.ip));
    let lock = bench.ssh(&h1, "ls -d .kamal/lock-* 2>/dev/null");
    assert!(String::from_utf8_lossy(&lock.stdout).trim().is_empty(), "no lock directory left");
    // The queue goes on: the next deploy succeeds (the killed daemon's lock is recognised and cleared).
    let after = daemon.deploy(r#"{"service":"app","version":"v1"}"#);
    let deploy = daemon.wait_end(after);
    assert_eq!(
        deploy["state"],
        "succeeded",
        "{deploy:#}\n{}",
        daemon.curl("GET", &format!("/deploys/{after}/logs"), None, &[]).1
    );
    assert_eq!(version_served(&h1), "v1");
    assert_eq!(version_served(&h2), "v1");

    // SIGTERM while a deploy boots: no new work, the running deploy stopped at a safe point and rolled back,
    // then the daemon exits cleanly; hosts keep what they ran and no lock is left.
    let stopped = daemon.deploy(r#"{"service":"app","version":"slow"}"#);
    daemon.wait_until(stopped, "booting", Duration::from_secs(120), |deploy| {
        deploy["state"] == "running" && ["boot", "healthcheck"].contains(&deploy["stage"].as_str().unwrap_or_default())
    });
    let status = daemon.terminate();
    assert!(status.success(), "berth serve exits 0 after SIGTERM: {status:?}\n{}", daemon.serve_log());
    assert!(daemon.serve_log().contains("berth serve: stopped"), "{}", daemon.serve_log());
    assert_eq!(version_served(&h1), "v1");
    assert_eq!(version_served(&h2), "v1");
    let lock = bench.ssh(&h1, "ls -d .kamal/lock-* 2>/dev/null");
    assert!(String::from_utf8_lossy(&lock.stdout).trim().is_empty(), "the stopped deploy released its lock");
    daemon.start();
    let deploy = daemon.get_deploy(stopped);
    let log = daemon.curl("GET", &format!("/deploys/{stopped}/logs"), None, &[]).1;
    assert_eq!(deploy["state"], "interrupted", "{deploy:#}\n{log}");
    assert!(deploy["error"].as_str().unwrap().contains("rolled back"), "{deploy:#}");
    let resumed = daemon.deploy(r#"{"service":"app","version":"v2"}"#);
    assert_eq!(daemon.wait_end(resumed)["state"], "succeeded");
    assert_eq!(version_served(&h1), "v2");

    let results = load.finish();
    assert!(results.failures.is_empty(), "requests failed: {:#?}", results.failures);
    assert!(results.ok > 50, "{results:?}");

    // No secret in the API's answers, the logs or the daemon's database.
    for id in [first, built, slow, next, killed, after, stopped, resumed] {
        let (_, log) = daemon.curl("GET", &format!("/deploys/{id}/logs"), None, &[]);
        assert!(!log.contains(SECRET_TOKEN) && !log.contains(&bench.registry().password()), "deploy {id}'s log");
    }
    let data: PathBuf = daemon.dir.path().join("data");
    for entry in std::fs::read_dir(&data).unwrap().flatten().filter(|entry| entry.path().is_file()) {
        let bytes = std::fs::read(entry.path()).unwrap();
        for secret in [SECRET_TOKEN.to_string(), bench.registry().password()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret",
                entry.path().display()
            );
        }
    }
}
