//! `berth serve` as a process for bench tests: the real binary with its own directory, `berth.yml` (one
//! service, `app`, from a local repository holding the test app), secrets, token and HOME (the bench's SSH key
//! and known_hosts), driven with curl as a script would, and killed on drop.

// Not every test uses every helper.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::bench::{Bench, Host};
use super::http;

pub const SECRET_TOKEN: &str = "daemon-s3cret-never-shown";

/// What a test adds to the daemon's configuration: `berth.yml` text (top-level keys; keys of the service
/// `app`, indented by 4 spaces), secret lines for the service's directory and the daemon-wide `daemon.env`.
#[derive(Default)]
pub struct Integrations {
    pub top_level: String,
    pub service_keys: String,
    pub service_secrets: String,
    pub daemon_secrets: String,
}

/// A `berth serve` process with its own directory, configuration, token and HOME (the bench's SSH key and
/// known_hosts), killed on drop.
pub struct Served {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// A `deploy` token.
    pub token: String,
}

impl Served {
    pub fn new(bench: &Bench, repo_config: &str) -> Served {
        Served::new_with(bench, repo_config, &Integrations::default())
    }

    /// [`Served::new`], with more of `berth.yml` (top-level keys, keys of the service `app`) and secrets.
    pub fn new_with(bench: &Bench, repo_config: &str, more: &Integrations) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::copy(bench.ssh_key(), home.join(".ssh/id_ed25519")).unwrap();
        std::fs::copy(bench.known_hosts(), home.join(".ssh/known_hosts")).unwrap();
        make_repository(&dir.path().join("app"), repo_config);
        let secrets = dir.path().join("secrets/app");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(
            secrets.join("secrets"),
            format!(
                "KAMAL_REGISTRY_PASSWORD={}\nSECRET_TOKEN={SECRET_TOKEN}\n{}",
                bench.registry().password(),
                more.service_secrets
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("daemon.env"), &more.daemon_secrets).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            dir.path().join("berth.yml"),
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: data\n{}services:\n  app:\n    repo: app\n    secrets: secrets/app\n    queue: fifo\n{}",
                more.top_level, more.service_keys
            ),
        )
        .unwrap();
        let mut served = Served { child: None, dir, port, token: String::new() };
        let created = served.berth(&["token", "create", "--scope", "deploy", "--config", "berth.yml"]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        served.token = String::from_utf8_lossy(&created.stdout).trim().to_string();
        served.start();
        served
    }

    /// A new token with `scope` (`read`, `deploy` or `admin`), as `berth token create` prints it.
    pub fn create_token(&self, scope: &str) -> String {
        let created = self.berth(&["token", "create", "--scope", scope, "--config", "berth.yml"]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        String::from_utf8_lossy(&created.stdout).trim().to_string()
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"));
        command
    }

    pub fn berth(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().unwrap()
    }

    pub fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("serve.log")).unwrap();
        let child = self
            .command()
            .args(["serve", "--config", "berth.yml"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        Bench::wait_for("the daemon to answer /healthz", Duration::from_secs(20), || {
            http::get(&address, "/healthz").ok().filter(|answer| answer.status == 200)
        });
    }

    /// `kill -9`: no chance to clean anything up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops the daemon; waits (generously) for it to exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        Bench::wait_for("the daemon to exit after SIGTERM", Duration::from_secs(180), || child.try_wait().unwrap())
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `curl` with the token: (status, body).
    pub fn curl(&self, method: &str, path: &str, body: Option<&str>, extra: &[&str]) -> (u16, String) {
        let mut args = vec![
            "-sS".to_string(),
            "--max-time".into(),
            "120".into(),
            "-X".into(),
            method.into(),
            "-H".into(),
            format!("Authorization: Bearer {}", self.token),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(body) = body {
            args.extend(["-H".into(), "Content-Type: application/json".into(), "--data".into(), body.into()]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args.push(format!("http://127.0.0.1:{}{path}", self.port));
        let out = Command::new("curl").args(&args).stdin(Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn deploy(&self, body: &str) -> i64 {
        let (status, answer) = self.curl("POST", "/deploys", Some(body), &[]);
        assert_eq!(status, 202, "{answer}");
        json(&answer)["id"].as_i64().unwrap()
    }

    pub fn get_deploy(&self, id: i64) -> serde_json::Value {
        let (status, answer) = self.curl("GET", &format!("/deploys/{id}"), None, &[]);
        assert_eq!(status, 200, "{answer}");
        json(&answer)
    }

    pub fn wait_until(
        &self,
        id: i64,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        Bench::wait_for(&format!("deploy {id} to be {what}"), timeout, || {
            let deploy = self.get_deploy(id);
            done(&deploy).then_some(deploy)
        })
    }

    pub fn wait_end(&self, id: i64) -> serde_json::Value {
        self.wait_until(id, "over", Duration::from_secs(240), |deploy| {
            !["queued", "running"].contains(&deploy["state"].as_str().unwrap_or_default())
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Kamal configuration of the test app `app` on `hosts` (berth's proxy in front, the test app's
/// health check), built on `builder` over SSH when given (else versions come from the registry).
pub fn app_config(bench: &Bench, hosts: &[&Host], builder: Option<&Host>, deploy_timeout: u32) -> String {
    let registry = bench.registry();
    let servers: String = hosts.iter().map(|host| format!("  - {}\n", host.ip)).collect();
    let remote = builder
        .map_or(String::new(), |host| format!("  local: false\n  remote: ssh://{}@{}\n", bench.ssh_user(), host.ip));
    format!(
        "service: app
image: berth-test-app
registry:
  server: {server}
  username: {user}
  password:
    - KAMAL_REGISTRY_PASSWORD
servers:
{servers}env:
  secret:
    - SECRET_TOKEN
proxy:
  app_port: 80
  healthcheck:
    path: /up
    interval: 1
    timeout: 2
builder:
  arch: amd64
{remote}ssh:
  user: {ssh_user}
deploy_timeout: {deploy_timeout}
drain_timeout: 2
readiness_delay: 0
",
        server = registry.addr,
        user = registry.user,
        ssh_user = bench.ssh_user(),
    )
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The service's repository: its Kamal configuration, and a Dockerfile that builds the test app
/// (`APP_VERSION=built`) for deploys of a `ref`.
pub fn make_repository(dir: &Path, config: &str) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/deploy.yml"), config).unwrap();
    std::fs::copy(crate::support::bench::test_app_binary(), dir.join("berth-test-app")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY berth-test-app /berth-test-app\nENV PORT=80 APP_VERSION=built\nLABEL service=app\n\
         ENTRYPOINT [\"/berth-test-app\"]\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ana")
            .env("GIT_AUTHOR_EMAIL", "ana@example.com")
            .env("GIT_COMMITTER_NAME", "Ana")
            .env("GIT_COMMITTER_EMAIL", "ana@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q", "--initial-branch=main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "app"]);
}

/// What the test app on `host` answers on `/version` (through the proxy on port 80).
pub fn version_served(host: &Host) -> String {
    let answer = http::get(&format!("{}:80", host.ip), "/version").unwrap_or_else(|e| panic!("{}: {e}", host.ip));
    assert_eq!(answer.status, 200, "GET /version on {}: {answer:?}", host.ip);
    answer.body.trim().to_string()
}
