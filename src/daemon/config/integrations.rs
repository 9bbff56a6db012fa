//! The integration keys of `berth.yml`: per service `github:` and `notify:`, at the top `slack:`. They name
//! secrets (never hold them): the values are read at start from the service's `secrets` directory or the
//! daemon-wide dotenv file of the top-level `secrets:` ([`super::super::integrations`]).
//!
//! ```yaml
//! secrets: /etc/berth/daemon.env          # daemon-wide secrets (Slack's), dotenv
//! public_url: https://deploy.example.com  # what links in statuses, notifications and Slack point to
//! slack:
//!   signing_secret: SLACK_SIGNING_SECRET
//!   users: {U012ABCDEF: deploy, U0ADMIN: admin}
//! services:
//!   app:
//!     github:
//!       repository: me/app
//!       branches: [main, "release/*"]     # default: the service's branch
//!       paths: ["app/**", Dockerfile]     # optional: only pushes changing one of these deploy
//!       webhook_secret: GITHUB_WEBHOOK_SECRET
//!       token: GITHUB_TOKEN               # optional: commit statuses (or deployments: true)
//!       api_url: https://api.github.com   # default
//!       deployments: false
//!     notify:
//!       - url: https://hooks.example.com/berth
//!         secret: NOTIFY_SECRET
//!         events: [started, succeeded, failed]   # default: all
//!       - slack_webhook: SLACK_WEBHOOK_URL
//! ```

use indexmap::IndexMap;
use yaml_serde::Value;

use super::{kind, problem, show, unknown_key};
use crate::config::schema::Problem;
use crate::daemon::model::Scope;

/// A service's GitHub repository: which pushes deploy, and where statuses go.
#[derive(Clone, Debug, PartialEq)]
pub struct GithubConfig {
    /// `OWNER/NAME`, as GitHub's `repository.full_name`.
    pub repository: String,
    /// Branch globs whose pushes deploy.
    pub branches: Vec<String>,
    /// Path globs: when set, a push deploys only if it changed a matching file.
    pub paths: Vec<String>,
    /// Secret names.
    pub webhook_secret: String,
    pub token: Option<String>,
    /// The REST API's base URL (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: String,
    /// Report through the Deployments API instead of commit statuses.
    pub deployments: bool,
    /// The destination pushes deploy to (required when the service has destinations).
    pub destination: Option<String>,
}

/// Where a deploy's events are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyConfig {
    pub target: NotifyTarget,
    pub events: Vec<NotifyEvent>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NotifyTarget {
    /// A JSON POST to `url`, signed with the secret named `secret` when there is one.
    Webhook { url: String, secret: Option<String> },
    /// A readable message to the Slack incoming webhook whose URL is the secret named here.
    Slack { webhook: String },
}

/// The deploy events a notification can be sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    Queued,
    Started,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Queued,
        NotifyEvent::Started,
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::Cancelled,
        NotifyEvent::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Queued => "queued",
            NotifyEvent::Started => "started",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::Interrupted => "interrupted",
        }
    }

    pub fn parse(name: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|event| event.name() == name)
    }
}

/// Slack slash commands: who may do what.
#[derive(Clone, Debug, PartialEq)]
pub struct SlackConfig {
    /// Secret name of the app's signing secret.
    pub signing_secret: String,
    /// Slack user id → scope.
    pub users: IndexMap<String, Scope>,
}

const GITHUB_KEYS: [&str; 8] =
    ["repository", "branches", "paths", "webhook_secret", "token", "api_url", "deployments", "destination"];
const NOTIFY_KEYS: [&str; 4] = ["url", "secret", "events", "slack_webhook"];
const SLACK_KEYS: [&str; 2] = ["signing_secret", "users"];

pub const GITHUB_API: &str = "https://api.github.com";

/// `services/NAME/github`.
pub(super) fn parse_github(
    at: &str,
    branch: &str,
    destinations: &[String],
    value: &Value,
    problems: &mut Vec<Problem>,
) -> Option<GithubConfig> {
    let Value::Mapping(map) = value else {
        problems.push(problem(at, format!("must be a mapping, found {}", kind(value)), Some("see config/berth.yml")));
        return None;
    };
    let before = problems.len();
    let mut github = GithubConfig {
        repository: String::new(),
        branches: vec![branch.to_string()],
        paths: Vec::new(),
        webhook_secret: String::new(),
        token: None,
        api_url: GITHUB_API.to_string(),
        deployments: false,
        destination: None,
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let path = format!("{at}/{key}");
        match key {
            "repository" => match value.as_str() {
                Some(name) if is_repository(name) => github.repository = name.to_string(),
                _ => problems.push(problem(
                    &path,
                    format!("must be OWNER/NAME, found {}", show(value)),
                    Some("as on github.com, e.g. basecamp/hey"),
                )),
            },
            "branches" | "paths" => {
                if let Some(globs) = globs(&path, value, problems) {
                    if key == "branches" {
                        github.branches = globs;
                    } else {
                        github.paths = globs;
                    }
                }
            }
            "webhook_secret" | "token" => match secret_name(&path, value, problems) {
                Some(name) if key == "token" => github.token = Some(name),
                Some(name) => github.webhook_secret = name,
                None => {}
            },
            "api_url" => match value.as_str() {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    github.api_url = url.trim_end_matches('/').to_string()
                }
                _ => problems.push(problem(
                    &path,
                    format!("must be an http(s) URL, found {}", show(value)),
                    Some("GitHub Enterprise: https://HOST/api/v3"),
                )),
            },
            "deployments" => match value.as_bool() {
                Some(flag) => github.deployments = flag,
                None => problems.push(problem(&path, format!("must be true or false, found {}", show(value)), None)),
            },
            "destination" => match value.as_str() {
                Some(destination) if destinations.iter().any(|known| known == destination) => {
                    github.destination = Some(destination.to_string())
                }
                _ => problems.push(problem(
                    &path,
                    format!("must be one of the service's destinations, found {}", show(value)),
                    Some(format!("the service's destinations: {}", destinations.join(", ")).as_str()),
                )),
            },
            unknown => problems.push(unknown_key(at, unknown, &GITHUB_KEYS)),
        }
    }
    if !destinations.is_empty() && !map.contains_key(Value::from("destination")) {
        problems.push(problem(
            &format!("{at}/destination"),
            "is required: the service has destinations, and a push deploys to one of them".into(),
            Some(format!("one of {}", destinations.join(", ")).as_str()),
        ));
    }
    for required in ["repository", "webhook_secret"] {
        if !map.contains_key(Value::from(required)) {
            problems.push(problem(
                &format!("{at}/{required}"),
                "is required".into(),
                Some(if required == "repository" {
                    "the repository whose pushes deploy, OWNER/NAME"
                } else {
                    "the name of the secret holding the webhook's secret (set the same value in GitHub's webhook settings)"
                }),
            ));
        }
    }
    if github.deployments && github.token.is_none() && map.contains_key(Value::from("deployments")) {
        problems.push(problem(
            &format!("{at}/deployments"),
            "needs `token`: the Deployments API is called with it".into(),
            None,
        ));
    }
    (problems.len() == before).then_some(github)
}

/// `services/NAME/notify`.
pub(super) fn parse_notify(at: &str, value: &Value, problems: &mut Vec<Problem>) -> Vec<NotifyConfig> {
    let Value::Sequence(items) = value else {
        problems.push(problem(
            at,
            format!("must be a list of targets, found {}", kind(value)),
            Some("e.g. [{url: https://…, secret: NOTIFY_SECRET}]"),
        ));
        return Vec::new();
    };
    let mut targets = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("{at}/{index}");
        let Value::Mapping(map) = item else {
            problems.push(problem(&at, format!("must be a mapping, found {}", kind(item)), None));
            continue;
        };
        let before = problems.len();
        let (mut url, mut secret, mut webhook, mut events) = (None, None, None, NotifyEvent::ALL.to_vec());
        for (key, value) in map {
            let Some(key) = key.as_str() else { continue };
            let path = format!("{at}/{key}");
            match key {
                "url" => match value.as_str() {
                    Some(text) if text.starts_with("https://") || text.starts_with("http://") => {
                        url = Some(text.to_string())
                    }
                    _ => problems.push(problem(&path, format!("must be an http(s) URL, found {}", show(value)), None)),
                },
                "secret" => secret = secret_name(&path, value, problems),
                "slack_webhook" => webhook = secret_name(&path, value, problems),
                "events" => match value {
                    Value::Sequence(names) => {
                        events.clear();
                        for (n, name) in names.iter().enumerate() {
                            match name.as_str().and_then(NotifyEvent::parse) {
                                Some(event) => events.push(event),
                                None => problems.push(problem(
                                    &format!("{path}/{n}"),
                                    format!("is not an event, found {}", show(name)),
                                    Some("events: queued, started, succeeded, failed, cancelled, interrupted"),
                                )),
                            }
                        }
                    }
                    _ => {
                        problems.push(problem(&path, format!("must be a list of events, found {}", show(value)), None))
                    }
                },
                unknown => problems.push(unknown_key(&at, unknown, &NOTIFY_KEYS)),
            }
        }
        let target = match (url, webhook) {
            (Some(url), None) => Some(NotifyTarget::Webhook { url, secret }),
            (None, Some(webhook)) if secret.is_none() => Some(NotifyTarget::Slack { webhook }),
            (None, Some(_)) => {
                problems.push(problem(
                    &format!("{at}/secret"),
                    "is for `url` targets (Slack's webhook URL is itself the secret)".into(),
                    None,
                ));
                None
            }
            (Some(_), Some(_)) => {
                problems.push(problem(&at, "has both `url` and `slack_webhook`: one target per entry".into(), None));
                None
            }
            (None, None) => {
                problems.push(problem(
                    &at,
                    "needs `url` (a JSON POST) or `slack_webhook` (the name of the secret holding a Slack incoming-webhook URL)"
                        .into(),
                    None,
                ));
                None
            }
        };
        if let Some(target) = target
            && problems.len() == before
        {
            targets.push(NotifyConfig { target, events });
        }
    }
    targets
}

/// The top-level `slack`.
pub(super) fn parse_slack(value: &Value, problems: &mut Vec<Problem>) -> Option<SlackConfig> {
    let Value::Mapping(map) = value else {
        problems.push(problem("slack", format!("must be a mapping, found {}", kind(value)), None));
        return None;
    };
    let before = problems.len();
    let mut slack = SlackConfig { signing_secret: String::new(), users: IndexMap::new() };
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let path = format!("slack/{key}");
        match key {
            "signing_secret" => {
                if let Some(name) = secret_name(&path, value, problems) {
                    slack.signing_secret = name;
                }
            }
            "users" => match value {
                Value::Mapping(users) => {
                    for (user, scope) in users {
                        let user = match user {
                            Value::String(user) => user.clone(),
                            other => show(other),
                        };
                        match scope.as_str().and_then(Scope::parse) {
                            Some(scope) => {
                                slack.users.insert(user, scope);
                            }
                            None => problems.push(problem(
                                &format!("{path}/{user}"),
                                format!("must be read, deploy or admin, found {}", show(scope)),
                                None,
                            )),
                        }
                    }
                }
                Value::Null => {}
                _ => problems.push(problem(
                    &path,
                    format!("must map Slack user ids to scopes, found {}", kind(value)),
                    Some("e.g. {U012ABCDEF: deploy}; a user's id is in their Slack profile, under ⋮ > Copy member ID"),
                )),
            },
            unknown => problems.push(unknown_key("slack", unknown, &SLACK_KEYS)),
        }
    }
    if slack.signing_secret.is_empty() && !map.contains_key(Value::from("signing_secret")) {
        problems.push(problem(
            "slack/signing_secret",
            "is required: the name of the secret holding the Slack app's signing secret".into(),
            None,
        ));
    }
    (problems.len() == before).then_some(slack)
}

fn is_repository(name: &str) -> bool {
    let valid = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    matches!(name.split_once('/'), Some((owner, repo)) if valid(owner) && valid(repo))
}

fn globs(path: &str, value: &Value, problems: &mut Vec<Problem>) -> Option<Vec<String>> {
    let items = match value {
        Value::Sequence(items) => items.clone(),
        Value::String(_) => vec![value.clone()],
        other => {
            problems.push(problem(path, format!("must be a list of globs, found {}", kind(other)), None));
            return None;
        }
    };
    let mut globs = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(glob) if !glob.is_empty() => globs.push(glob.to_string()),
            _ => problems.push(problem(
                &format!("{path}/{index}"),
                format!("must be a glob, found {}", show(item)),
                None,
            )),
        }
    }
    Some(globs)
}

fn secret_name(path: &str, value: &Value, problems: &mut Vec<Problem>) -> Option<String> {
    match value.as_str() {
        Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Some(name.to_string())
        }
        _ => {
            // The value is not shown: it may be the secret itself, written here by mistake.
            problems.push(problem(
                path,
                "must be the NAME of a secret (letters, digits and _)".into(),
                Some("the value itself goes in the secrets file, as NAME=value; berth.yml only names it"),
            ));
            None
        }
    }
}
