//! `berth.yml`, the daemon's configuration: read in two stages — YAML into a tree, then checked into typed
//! values — so that every problem is reported at once, with its YAML path and how to fix it.
//!
//! ```yaml
//! listen: 127.0.0.1:7420        # default
//! data_dir: ./berth-data        # the SQLite file (WAL) and the git mirrors; relative to this file
//! services:
//!   myapp:                      # the `service` of its config/deploy.yml
//!     repo: git@github.com:me/myapp.git   # or a local path
//!     branch: main              # default
//!     config: config/deploy.yml # default; read from the commit being deployed
//!     destinations: [production]
//!     secrets: /etc/berth/myapp # stands in for the repository's .kamal/ (secrets, secrets-common, …)
//!     queue: latest             # or fifo
//! ```
//!
//! The integration keys (`github`, `notify`, `slack`, `secrets`, `public_url`, `badges`) are in
//! [`integrations`].

pub mod integrations;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use yaml_serde::Value;

use crate::config::schema::Problem;
pub use integrations::{GithubConfig, NotifyConfig, NotifyEvent, NotifyTarget, SlackConfig};

/// The configuration file used when none is named.
pub const DEFAULT_FILE: &str = "berth.yml";

/// The daemon's configuration, checked.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The file it came from (None: started without one).
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub services: IndexMap<String, ServiceConfig>,
    /// Deploys running at once, over all services.
    pub max_concurrent_deploys: usize,
    /// Longest a deploy may run in all, and one stage of it, before it is stopped as `timed_out`.
    pub deploy_timeout: Duration,
    pub stage_timeout: Duration,
    /// Log lines of deploys older than this are deleted (the deploys themselves are kept).
    pub log_retention: Duration,
    /// The daemon-wide dotenv file of integration secrets (Slack's, and a fallback for the services').
    pub secrets: Option<PathBuf>,
    /// Slack slash commands, when configured.
    pub slack: Option<SlackConfig>,
    /// The daemon's address as users reach it (links in statuses, notifications, Slack); default
    /// `http://LISTEN`.
    pub public_url: Option<String>,
    /// `GET /badges/{service}.svg` answers without a token (default true).
    pub badges: bool,
    /// This daemon's name among several on one database (`instance:`, or `--instance`); default the host's
    /// name and the port it listens on.
    pub instance: String,
    /// PostgreSQL shared by several daemons (`database_url:` or `BERTH_DATABASE_URL`); None: the embedded
    /// SQLite file in `data_dir`.
    pub database_url: Option<String>,
}

/// One service the daemon deploys.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// A git URL, or a local path (made absolute).
    pub repo: String,
    pub branch: String,
    /// The Kamal configuration's path inside the repository.
    pub config: String,
    pub destinations: Vec<String>,
    /// The directory whose `secrets*` files stand in for the repository's `.kamal/` (never the repository's).
    pub secrets: Option<PathBuf>,
    pub queue: QueuePolicy,
    /// Deploys on pushes, statuses back (`github:`).
    pub github: Option<GithubConfig>,
    /// Where the service's deploy events are sent (`notify:`).
    pub notify: Vec<NotifyConfig>,
}

/// What happens to queued deploys of a service when another request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePolicy {
    /// A new request supersedes the queued ones: only the newest waits.
    Latest,
    /// Every request runs, in order.
    Fifo,
}

impl QueuePolicy {
    pub fn name(self) -> &'static str {
        match self {
            QueuePolicy::Latest => "latest",
            QueuePolicy::Fifo => "fifo",
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DaemonConfigError {
    #[error("could not read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}", invalid_message(path, problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn invalid_message(path: &Path, problems: &[Problem]) -> String {
    let mut text = format!("{} has {} problem(s):", path.display(), problems.len());
    for problem in problems {
        text.push_str(&format!("\n  - {problem}"));
    }
    text
}

const TOP_LEVEL_KEYS: [&str; 13] = [
    "listen",
    "data_dir",
    "services",
    "max_concurrent_deploys",
    "deploy_timeout",
    "stage_timeout",
    "log_retention",
    "secrets",
    "slack",
    "public_url",
    "badges",
    "instance",
    "database_url",
];
const SERVICE_KEYS: [&str; 8] = ["repo", "branch", "config", "destinations", "secrets", "queue", "github", "notify"];

impl DaemonConfig {
    /// The configuration without a file: no services, everything else by default, paths relative to `cwd`.
    pub fn empty(cwd: &Path) -> DaemonConfig {
        DaemonConfig {
            file: None,
            listen: default_listen(),
            data_dir: cwd.join("berth-data"),
            services: IndexMap::new(),
            max_concurrent_deploys: 4,
            deploy_timeout: Duration::from_secs(60 * 60),
            stage_timeout: Duration::from_secs(30 * 60),
            log_retention: Duration::from_secs(90 * 24 * 60 * 60),
            secrets: None,
            slack: None,
            public_url: None,
            badges: true,
            instance: default_instance(default_listen()),
            database_url: None,
        }
    }

    /// Reads and checks `path`; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<DaemonConfig, DaemonConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DaemonConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        DaemonConfig::parse(&text, path, &base)
    }

    /// Checks the text of a configuration file named `path`, with relative paths resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<DaemonConfig, DaemonConfigError> {
        // Stage one: YAML into a tree.
        let tree: Value = yaml_serde::from_str(text)
            .map_err(|error| DaemonConfigError::Yaml { path: path.to_path_buf(), message: error.to_string() })?;
        // Stage two: the tree checked into typed values, every problem collected.
        let mut problems = Vec::new();
        let mut named_instance = None;
        let mut config = DaemonConfig::empty(base);
        config.file = Some(path.to_path_buf());
        let top = match &tree {
            Value::Mapping(map) => map.clone(),
            Value::Null => Default::default(),
            other => {
                problems.push(problem("", format!("must be a mapping of keys, found {}", kind(other)), None));
                Default::default()
            }
        };
        for (key, value) in &top {
            let Some(key) = key.as_str() else {
                problems.push(problem("", format!("keys must be strings, found {}", kind(key)), None));
                continue;
            };
            match key {
                "listen" => match value.as_str().map(str::parse::<SocketAddr>) {
                    Some(Ok(address)) => config.listen = address,
                    _ => problems.push(problem(
                        "listen",
                        format!("must be an address and port, found {}", show(value)),
                        Some("e.g. 127.0.0.1:7420, or 0.0.0.0:7420 to listen on every interface"),
                    )),
                },
                "data_dir" => match value.as_str() {
                    Some(dir) if !dir.is_empty() => config.data_dir = clean(&base.join(dir)),
                    _ => problems.push(problem(
                        "data_dir",
                        format!("must be a directory path, found {}", show(value)),
                        None,
                    )),
                },
                "max_concurrent_deploys" => match value.as_u64() {
                    Some(count) if count >= 1 => config.max_concurrent_deploys = count as usize,
                    _ => problems.push(problem(
                        key,
                        format!("must be a whole number of at least 1, found {}", show(value)),
                        None,
                    )),
                },
                "deploy_timeout" | "stage_timeout" | "log_retention" => match duration(value) {
                    Some(duration) if !duration.is_zero() => match key {
                        "deploy_timeout" => config.deploy_timeout = duration,
                        "stage_timeout" => config.stage_timeout = duration,
                        _ => config.log_retention = duration,
                    },
                    _ => problems.push(problem(
                        key,
                        format!("must be a duration, found {}", show(value)),
                        Some("seconds, or a number with s, m, h or d: 90s, 30m, 1h, 30d"),
                    )),
                },
                "secrets" => match value.as_str() {
                    Some(file) if !file.is_empty() => config.secrets = Some(clean(&base.join(file))),
                    _ => problems.push(problem(
                        "secrets",
                        format!("must be the path of a dotenv file, found {}", show(value)),
                        Some("NAME=value lines, as in .kamal/secrets; e.g. /etc/berth/daemon.env"),
                    )),
                },
                "slack" => config.slack = integrations::parse_slack(value, &mut problems),
                "public_url" => match value.as_str() {
                    Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                        config.public_url = Some(url.trim_end_matches('/').to_string())
                    }
                    _ => problems.push(problem(
                        "public_url",
                        format!("must be an http(s) URL, found {}", show(value)),
                        Some("the address people and GitHub reach the daemon at, e.g. https://deploy.example.com"),
                    )),
                },
                "database_url" => match value.as_str() {
                    Some(url) if is_postgres_url(url) => config.database_url = Some(url.to_string()),
                    // Not shown: the URL may carry a password.
                    _ => problems.push(problem(
                        "database_url",
                        "must be a PostgreSQL URL, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE".into(),
                        Some("leave it out to use the embedded SQLite database in data_dir"),
                    )),
                },
                "instance" => match value.as_str() {
                    Some(name) if valid_instance(name) => named_instance = Some(name.to_string()),
                    _ => problems.push(problem(
                        "instance",
                        format!("must be a name of letters, digits, '.', '-', '_' and ':', found {}", show(value)),
                        Some("e.g. deploy-1; each daemon on one database needs its own"),
                    )),
                },
                "badges" => match value.as_bool() {
                    Some(flag) => config.badges = flag,
                    None => {
                        problems.push(problem("badges", format!("must be true or false, found {}", show(value)), None))
                    }
                },
                "services" => match value {
                    Value::Mapping(services) => {
                        for (name, service) in services {
                            let Some(name) = name.as_str() else {
                                problems.push(problem("services", "service names must be strings".into(), None));
                                continue;
                            };
                            if let Some(service) = parse_service(name, service, base, &mut problems) {
                                config.services.insert(name.to_string(), service);
                            }
                        }
                    }
                    Value::Null => {}
                    other => problems.push(problem(
                        "services",
                        format!("must be a mapping of service names, found {}", kind(other)),
                        None,
                    )),
                },
                unknown => problems.push(unknown_key("", unknown, &TOP_LEVEL_KEYS)),
            }
        }
        config.instance = named_instance.unwrap_or_else(|| default_instance(config.listen));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(DaemonConfigError::Invalid { path: path.to_path_buf(), problems })
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("berth.sqlite")
    }

    /// The base of links to the daemon (its dashboard pages), without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The link to a deploy's dashboard page.
    pub fn deploy_url(&self, id: i64) -> String {
        format!("{}/ui/deploys/{id}", self.public_url())
    }
}

fn parse_service(name: &str, value: &Value, base: &Path, problems: &mut Vec<Problem>) -> Option<ServiceConfig> {
    let at = |key: &str| format!("services/{name}/{key}");
    let Value::Mapping(map) = value else {
        problems.push(problem(&format!("services/{name}"), format!("must be a mapping, found {}", kind(value)), None));
        return None;
    };
    let before = problems.len();
    let mut service = ServiceConfig {
        name: name.to_string(),
        repo: String::new(),
        branch: "main".to_string(),
        config: "config/deploy.yml".to_string(),
        destinations: Vec::new(),
        secrets: None,
        queue: QueuePolicy::Latest,
        github: None,
        notify: Vec::new(),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        problems.push(problem(
            &format!("services/{name}"),
            "a service name is letters, digits, '-', '_' and '.' (the `service` of its deploy.yml)".into(),
            None,
        ));
    }
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let text = || value.as_str().filter(|text| !text.is_empty()).map(str::to_string);
        match key {
            "repo" => match text() {
                // A local path is made absolute; anything with a scheme or `user@host:` is a git URL.
                Some(repo) if repo.contains("://") || looks_like_scp(&repo) => service.repo = repo,
                Some(repo) => service.repo = base.join(repo).to_string_lossy().into_owned(),
                None => problems.push(problem(
                    &at(key),
                    format!("must be a git URL or a path, found {}", show(value)),
                    None,
                )),
            },
            "branch" | "config" => match text() {
                Some(text) if key == "branch" => service.branch = text,
                Some(text) => service.config = text,
                None => {
                    problems.push(problem(&at(key), format!("must be a non-empty string, found {}", show(value)), None))
                }
            },
            "destinations" => match value {
                Value::Sequence(items) => {
                    for (index, item) in items.iter().enumerate() {
                        match item.as_str() {
                            Some(destination) if !destination.is_empty() => {
                                service.destinations.push(destination.to_string())
                            }
                            _ => problems.push(problem(
                                &format!("services/{name}/destinations/{index}"),
                                format!("must be a destination name, found {}", show(item)),
                                None,
                            )),
                        }
                    }
                }
                _ => problems.push(problem(
                    &at(key),
                    format!("must be a list of destination names, found {}", show(value)),
                    Some("e.g. [staging, production]"),
                )),
            },
            "secrets" => match text() {
                Some(dir) => service.secrets = Some(clean(&base.join(dir))),
                None => {
                    problems.push(problem(&at(key), format!("must be a directory path, found {}", show(value)), None))
                }
            },
            "queue" => match value.as_str() {
                Some("latest") => service.queue = QueuePolicy::Latest,
                Some("fifo") => service.queue = QueuePolicy::Fifo,
                _ => problems.push(problem(
                    &at(key),
                    format!("must be `latest` or `fifo`, found {}", show(value)),
                    Some("latest: a new request supersedes queued ones; fifo: every request runs, in order"),
                )),
            },
            // After the loop: its default branches are the service's branch.
            "github" => {}
            "notify" => service.notify = integrations::parse_notify(&at(key), value, problems),
            unknown => problems.push(unknown_key(&format!("services/{name}"), unknown, &SERVICE_KEYS)),
        }
    }
    if let Some(github) = map.get(Value::from("github")) {
        service.github =
            integrations::parse_github(&at("github"), &service.branch, &service.destinations, github, problems);
    }
    if service.repo.is_empty() && !map.contains_key(Value::from("repo")) {
        problems.push(problem(
            &at("repo"),
            "is required: where the service's code is".into(),
            Some("a git URL (git@github.com:me/app.git, https://…) or a local path"),
        ));
    }
    (problems.len() == before).then_some(service)
}

/// The path without `.` components (`/etc/berth/./data` → `/etc/berth/data`).
fn clean(path: &Path) -> PathBuf {
    path.components().filter(|part| !matches!(part, std::path::Component::CurDir)).collect()
}

/// `user@host:path` (git's scp-like syntax), as opposed to a local path.
fn looks_like_scp(repo: &str) -> bool {
    match repo.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

fn duration(value: &Value) -> Option<Duration> {
    if let Some(seconds) = value.as_u64() {
        return Some(Duration::from_secs(seconds));
    }
    let text = value.as_str()?.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(number.checked_mul(scale)?))
}

/// The host's name and the port: unique among daemons on one database unless two share a host and port.
fn default_instance(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "berth".to_string());
    format!("{host}:{}", listen.port())
}

/// `postgres://…` or `postgresql://…`.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// An instance name: shown in `/healthz` and deploys, so kept printable and short.
pub fn valid_instance(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7420))
}

fn problem(path: &str, message: String, hint: Option<&str>) -> Problem {
    Problem { path: path.to_string(), message, hint: hint.map(str::to_string) }
}

fn unknown_key(parent: &str, key: &str, known: &[&str]) -> Problem {
    let path = if parent.is_empty() { key.to_string() } else { format!("{parent}/{key}") };
    let closest = known.iter().map(|k| (strsim::jaro_winkler(k, key), *k)).max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = match closest {
        Some((score, name)) if score > 0.8 => format!("did you mean `{name}`?"),
        _ => format!("known keys: {}", known.join(", ")),
    };
    Problem { path, message: "unknown key".to_string(), hint: Some(hint) }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::integrations::GITHUB_API;
    use super::*;
    use crate::daemon::model::Scope;

    fn parse(text: &str) -> Result<DaemonConfig, DaemonConfigError> {
        DaemonConfig::parse(text, Path::new("/etc/berth/berth.yml"), Path::new("/etc/berth"))
    }

    #[test]
    fn a_full_configuration() {
        let config = parse(concat!(
            "listen: 0.0.0.0:8080\n",
            "data_dir: ./data\n",
            "max_concurrent_deploys: 2\n",
            "deploy_timeout: 20m\n",
            "services:\n",
            "  app:\n",
            "    repo: git@github.com:me/app.git\n",
            "    branch: release\n",
            "    destinations: [production]\n",
            "    secrets: secrets/app\n",
            "    queue: fifo\n",
            "  local:\n",
            "    repo: ../code/local\n",
        ))
        .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.data_dir, Path::new("/etc/berth/data"));
        assert_eq!(config.database_path(), Path::new("/etc/berth/data/berth.sqlite"));
        assert_eq!(config.max_concurrent_deploys, 2);
        assert_eq!(config.deploy_timeout, Duration::from_secs(1200));
        let app = &config.services["app"];
        assert_eq!(app.repo, "git@github.com:me/app.git");
        assert_eq!((app.branch.as_str(), app.config.as_str()), ("release", "config/deploy.yml"));
        assert_eq!(app.destinations, ["production"]);
        assert_eq!(app.secrets.as_deref(), Some(Path::new("/etc/berth/secrets/app")));
        assert_eq!(app.queue, QueuePolicy::Fifo);
        let local = &config.services["local"];
        assert_eq!(local.repo, "/etc/berth/../code/local");
        assert_eq!((local.branch.as_str(), local.queue), ("main", QueuePolicy::Latest));
    }

    #[test]
    fn integrations_name_their_secrets_and_default_to_the_service_branch() {
        let config = parse(concat!(
            "secrets: daemon.env\n",
            "public_url: https://deploy.example.com/\n",
            "badges: false\n",
            "slack:\n",
            "  signing_secret: SLACK_SIGNING_SECRET\n",
            "  users: {U1: read, U2: admin}\n",
            "services:\n",
            "  app:\n",
            "    repo: ./app\n",
            "    github:\n",
            "      repository: me/app\n",
            "      webhook_secret: HOOK\n",
            "    branch: release\n",
            "    notify:\n",
            "      - url: https://hooks.example.com/x\n",
            "        secret: NOTIFY\n",
            "        events: [succeeded, failed]\n",
            "      - slack_webhook: SLACK_URL\n",
        ))
        .unwrap();
        assert_eq!(config.secrets.as_deref(), Some(Path::new("/etc/berth/daemon.env")));
        assert_eq!(config.public_url(), "https://deploy.example.com");
        assert_eq!(config.deploy_url(7), "https://deploy.example.com/ui/deploys/7");
        assert!(!config.badges);
        let slack = config.slack.as_ref().unwrap();
        assert_eq!(slack.signing_secret, "SLACK_SIGNING_SECRET");
        assert_eq!(slack.users["U2"], Scope::Admin);
        let app = &config.services["app"];
        let github = app.github.as_ref().unwrap();
        assert_eq!((github.repository.as_str(), github.branches.as_slice()), ("me/app", &["release".to_string()][..]));
        assert_eq!((github.api_url.as_str(), github.token.as_deref(), github.deployments), (GITHUB_API, None, false));
        assert_eq!(app.notify.len(), 2);
        assert_eq!(
            app.notify[0],
            NotifyConfig {
                target: NotifyTarget::Webhook {
                    url: "https://hooks.example.com/x".into(),
                    secret: Some("NOTIFY".into())
                },
                events: vec![NotifyEvent::Succeeded, NotifyEvent::Failed],
            }
        );
        assert_eq!(app.notify[1].target, NotifyTarget::Slack { webhook: "SLACK_URL".into() });
        assert_eq!(app.notify[1].events, NotifyEvent::ALL);
        assert_eq!(parse("").unwrap().public_url(), "http://127.0.0.1:7420");
    }

    #[test]
    fn integration_problems_are_reported_with_their_paths_and_never_show_a_secret() {
        let error = parse(concat!(
            "slack:\n",
            "  users: {U1: owner}\n",
            "services:\n",
            "  app:\n",
            "    repo: ./app\n",
            "    github:\n",
            "      repository: not-a-repo\n",
            "      webhook_secret: 'hunter2 is my secret!'\n",
            "      deployments: true\n",
            "      branchs: [main]\n",
            "    notify:\n",
            "      - url: ftp://x\n",
            "      - events: [deployed]\n",
            "        slack_webhook: SLACK\n",
            "      - {}\n",
        ))
        .unwrap_err()
        .to_string();
        for expected in [
            "slack/users/U1: must be read, deploy or admin, found \"owner\"",
            "slack/signing_secret: is required",
            "services/app/github/repository: must be OWNER/NAME, found \"not-a-repo\"",
            "services/app/github/webhook_secret: must be the NAME of a secret",
            "services/app/github/deployments: needs `token`",
            "services/app/github/branchs: unknown key (did you mean `branches`?)",
            "services/app/notify/0/url: must be an http(s) URL",
            "services/app/notify/1/events/0: is not an event, found \"deployed\"",
            "services/app/notify/2: needs `url`",
        ] {
            assert!(error.contains(expected), "missing {expected:?} in:\n{error}");
        }
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn an_empty_file_has_no_services_and_the_defaults() {
        let config = parse("").unwrap();
        assert!(config.services.is_empty());
        assert_eq!(config.listen.to_string(), "127.0.0.1:7420");
        assert_eq!(config.data_dir, Path::new("/etc/berth/berth-data"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let error = parse(concat!(
            "listen: nowhere\n",
            "lisen: x\n",
            "max_concurrent_deploys: 0\n",
            "services:\n",
            "  app:\n",
            "    branch: main\n",
            "    queue: lifo\n",
            "    destinations: production\n",
            "    secret: x\n",
            "  web:\n",
            "    repo: ./web\n",
            "    deploy_timeout: 1\n",
        ))
        .unwrap_err();
        let text = error.to_string();
        for expected in [
            "listen: must be an address and port, found \"nowhere\"",
            "lisen: unknown key (did you mean `listen`?)",
            "max_concurrent_deploys: must be a whole number of at least 1, found 0",
            "services/app/repo: is required",
            "services/app/queue: must be `latest` or `fifo`, found \"lifo\"",
            "services/app/destinations: must be a list of destination names",
            "services/app/secret: unknown key (did you mean `secrets`?)",
            "services/web/deploy_timeout: unknown key",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(text.starts_with("/etc/berth/berth.yml has 8 problem(s):"), "{text}");
        assert!(matches!(parse("listen: [").unwrap_err(), DaemonConfigError::Yaml { .. }));
    }
}
