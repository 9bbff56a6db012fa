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

/// A `berth serve` process (killed on drop, by its PID).
struct Process {
    child: std::process::Child,
}

impl Process {
    fn start(dir: &std::path::Path, config: &str) -> Process {
        let port: u16 = std::fs::read_to_string(dir.join(config))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("listen: 127.0.0.1:"))
            .and_then(|port| port.parse().ok())
            .unwrap();
        let log = std::fs::File::create(dir.join(format!("{port}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config", config])
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let process = Process { child };
        crate::support::bench::Bench::wait_for("the daemon to answer", Duration::from_secs(30), || {
            crate::support::http::get(&format!("127.0.0.1:{port}"), "/healthz").ok().filter(|a| a.status == 200)
        });
        process
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(port: u16, token: &str, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    let mut args =
        vec!["-sS".to_string(), "-X".into(), method.into(), "-H".into(), format!("Authorization: Bearer {token}")];
    if let Some(body) = body {
        args.extend(["-H".into(), "Content-Type: application/json".into(), "--data".into(), body.into()]);
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out = std::process::Command::new("curl").args(&args).output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&out.stdout).into()))
}

fn log_lines(port: u16, token: &str, id: i64) -> Vec<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://127.0.0.1:{port}/deploys/{id}/logs"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_daemon_loses_its_deploy_within_seconds_and_writes_nothing_when_it_wakes() {
    let url = new_database().await;
    let dir = tempfile::tempdir().unwrap();
    crate::daemon::make_repository(&dir.path().join("app"));
    // A deploy that prints a line every 250 ms for 15 s before it goes anywhere.
    let repo = dir.path().join("app");
    std::fs::create_dir_all(repo.join(".kamal/hooks")).unwrap();
    std::fs::write(
        repo.join(".kamal/hooks/pre-connect"),
        "#!/bin/sh\ni=1\nwhile [ $i -le 60 ]; do echo slow-line $i; i=$((i + 1)); sleep 0.25; done\n",
    )
    .unwrap();
    std::process::Command::new("chmod").args(["+x", ".kamal/hooks/pre-connect"]).current_dir(&repo).status().unwrap();
    for args in
        [&["add", "."][..], &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "hook"][..]]
    {
        assert!(std::process::Command::new("git").args(args).current_dir(&repo).status().unwrap().success());
    }
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port_a, port_b) = (free_port(), free_port());
    for (name, port) in [("a", port_a), ("b", port_b)] {
        std::fs::write(
            dir.path().join(format!("{name}.yml")),
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: data-{name}\ndatabase_url: {url}\ninstance: deploy-{name}\n\
                 services:\n  app:\n    repo: app\n    secrets: secrets/app\n    queue: fifo\n"
            ),
        )
        .unwrap();
    }
    let a = Process::start(dir.path(), "a.yml");
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "create", "--scope", "deploy", "--config", "a.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let token = String::from_utf8(created.stdout).unwrap().trim().to_string();
    let id = curl(port_a, &token, "POST", "/deploys", Some(r#"{"service":"app"}"#))["id"].as_i64().unwrap();
    crate::support::bench::Bench::wait_for("the deploy to print on deploy-a", Duration::from_secs(30), || {
        log_lines(port_a, &token, id).iter().any(|line| line.contains("slow-line 3")).then_some(())
    });
    let b = Process::start(dir.path(), "b.yml");

    // Frozen: deploy-a renews nothing; deploy-b takes its deploy over.
    a.signal("-STOP");
    let frozen = std::time::Instant::now();
    let deploy =
        crate::support::bench::Bench::wait_for("deploy-b to interrupt the deploy", Duration::from_secs(40), || {
            let deploy = curl(port_b, &token, "GET", &format!("/deploys/{id}"), None);
            (deploy["state"] == "interrupted").then_some(deploy)
        });
    let took = frozen.elapsed();
    eprintln!("the frozen daemon's deploy was interrupted {took:?} after the freeze");
    assert!(
        took <= Duration::from_secs(21),
        "interrupted {took:?} after the daemon froze (lease 15 s, checked every 5 s)"
    );
    assert_eq!(deploy["runner"], "deploy-a");
    assert!(deploy["error"].as_str().unwrap().contains("stopped renewing its lease"), "{deploy:#}");
    let note = crate::support::bench::Bench::wait_for("deploy-b's note in the log", Duration::from_secs(30), || {
        let lines = log_lines(port_b, &token, id);
        lines.iter().any(|line| line.starts_with("deploy-b: deploy-a stopped renewing its lease")).then_some(lines)
    });

    // Thawed: deploy-a's deploy goes on printing for a while, but nothing of it reaches the store.
    a.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = log_lines(port_b, &token, id);
    assert_eq!(after, note, "the stale owner wrote nothing");
    let again = curl(port_b, &token, "GET", &format!("/deploys/{id}"), None);
    assert_eq!(
        (again["state"].as_str(), again["ended_at"].as_str()),
        (Some("interrupted"), deploy["ended_at"].as_str())
    );

    // The queue goes on: the next deploy runs (on either daemon) and gets past its hook.
    let next = curl(port_b, &token, "POST", "/deploys", Some(r#"{"service":"app"}"#))["id"].as_i64().unwrap();
    crate::support::bench::Bench::wait_for("the next deploy to run", Duration::from_secs(60), || {
        log_lines(port_b, &token, next).iter().any(|line| line.contains("slow-line 2")).then_some(())
    });
    drop((a, b));
}

/// A PostgreSQL cluster of this test's own (tests/postgres/cluster.sh), stopped and deleted on drop.
struct OwnCluster {
    url: String,
    dir: String,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres/cluster.sh");
        let out = std::process::Command::new("bash").args([script, "start"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = String::from_utf8_lossy(&out.stderr).lines().last().unwrap().to_string();
        OwnCluster { url: String::from_utf8(out.stdout).unwrap().trim().to_string(), dir }
    }

    /// `pg_ctl restart` (fast: open connections are cut), with the options it was started with.
    fn restart(&self) {
        let bin = std::fs::read_dir("/usr/lib/postgresql").unwrap().flatten().map(|e| e.path()).max().unwrap();
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("bin/pg_ctl"))
            .args(["-D", &format!("{}/data", self.dir), "-m", "fast", "-w", "-t", "60", "restart"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres/cluster.sh");
        let _ = std::process::Command::new("bash").args([script, "stop", &self.dir]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_restarted_under_load_loses_no_accepted_request_and_the_daemons_recover() {
    let cluster = OwnCluster::start();
    let url = {
        let mut connection = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
        sqlx::query("CREATE DATABASE restarts").execute(&mut connection).await.unwrap();
        format!("{}/restarts", cluster.url.rsplit_once('/').unwrap().0)
    };
    let started_at = || async {
        let mut connection = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
        let at: String =
            sqlx::query_scalar("SELECT pg_postmaster_start_time()::TEXT").fetch_one(&mut connection).await.unwrap();
        at
    };
    let first_start = started_at().await;
    let a = App::spawn(&services_yml(&url, "deploy-a")).await;
    let b = App::spawn(&services_yml(&url, "deploy-b")).await;
    let token = a.token(Scope::Deploy, None).await;
    let token = token.as_str();

    // Requests to both daemons, one after another, while the database restarts under them.
    let load = async {
        let (mut accepted, mut refused) = (Vec::new(), 0);
        let started = std::time::Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs(6) {
            let daemon = if n.is_multiple_of(2) { &a } else { &b };
            n += 1;
            let answer = daemon.request("POST", "/deploys", Some(token), Some(br#"{"service":"web"}"#)).await;
            match answer.status {
                StatusCode::ACCEPTED => accepted.push((answer.json()["id"].as_i64().unwrap(), started.elapsed())),
                // The database is away: refused, and said so; nothing was accepted.
                StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("{other}: {}", answer.body),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (accepted, refused)
    };
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| cluster.restart());
    };
    let ((accepted, refused), ()) = tokio::join!(load, restart);
    eprintln!("{} requests accepted, {refused} refused while PostgreSQL restarted", accepted.len());
    assert_ne!(started_at().await, first_start, "PostgreSQL did restart");
    // The daemons recovered by themselves: requests were accepted after the restart too.
    assert!(accepted.iter().any(|(_, at)| *at > Duration::from_secs(4)), "{accepted:?}");
    // Every request answered 202 is in the database, whichever daemon took it.
    for (id, _) in &accepted {
        let answer = b.request("GET", &format!("/deploys/{id}"), Some(token), None).await;
        assert_eq!(answer.status, StatusCode::OK, "deploy {id}: {}", answer.body);
    }
    for daemon in [&a, &b] {
        assert_eq!(daemon.request("GET", "/healthz", None, None).await.json()["status"], "ok");
    }
}
