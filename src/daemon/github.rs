//! GitHub, as pure functions: a webhook's signature, whether a push deploys (branches, paths, skip
//! markers), and the REST calls that report a deploy back (commit statuses, or the Deployments API).
//! The HTTP edge is in the API (`POST /webhooks/github`) and the notifier (the calls).

use http::Method;
use serde_json::{Value, json};

use super::config::GithubConfig;
use super::model::DeployState;
use super::signature;

/// `X-Hub-Signature-256: sha256=HEX` over the raw body, checked in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|value| value.trim().strip_prefix("sha256=")) else { return false };
    signature::hmac_matches(secret, &[body], hex)
}

/// `sha256=HEX` of `body` under `secret` (what GitHub sends, and what berth's own notifications carry).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", signature::hmac_hex(secret, &[body]))
}

/// What a webhook delivery means for one service.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deploy exactly this commit.
    Deploy { commit: String, branch: String, message: String },
    /// No deploy, and why (said in the answer to GitHub, visible in the webhook's delivery log).
    Ignore(String),
}

/// Whether the event deploys the service.
pub fn decide(event: &str, payload: &Value, github: &GithubConfig) -> Decision {
    if event != "push" {
        return Decision::Ignore(format!("`{event}` events do not deploy; pushes do"));
    }
    let reference = payload["ref"].as_str().unwrap_or_default();
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        return Decision::Ignore(format!("`{reference}` is not a branch (tags do not deploy)"));
    };
    if payload["deleted"].as_bool() == Some(true) {
        return Decision::Ignore(format!("branch `{branch}` was deleted"));
    }
    if !github.branches.iter().any(|glob| glob_matches(glob, branch)) {
        return Decision::Ignore(format!(
            "branch `{branch}` is not one that deploys ({})",
            github.branches.iter().map(|glob| format!("`{glob}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let head = &payload["head_commit"];
    if head.is_null() {
        return Decision::Ignore("the push has no head commit".to_string());
    }
    let commit = payload["after"].as_str().unwrap_or_default();
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Decision::Ignore("the push names no commit (`after`)".to_string());
    }
    let message = head["message"].as_str().unwrap_or_default();
    if let Some(marker) = ["[skip deploy]", "[skip ci]"].into_iter().find(|marker| message.contains(marker)) {
        return Decision::Ignore(format!("the head commit's message says {marker}"));
    }
    if !github.paths.is_empty() {
        let commits = payload["commits"].as_array().filter(|commits| !commits.is_empty());
        let commits = commits.map_or_else(|| vec![head], |commits| commits.iter().collect());
        let changed = commits.iter().flat_map(|commit| {
            ["added", "removed", "modified"]
                .into_iter()
                .flat_map(move |kind| commit[kind].as_array().into_iter().flatten().filter_map(Value::as_str))
        });
        let mut changed = changed.peekable();
        if changed.peek().is_none() {
            return Decision::Ignore("the push lists no changed file to compare with `paths`".to_string());
        }
        if !changed.into_iter().any(|file| github.paths.iter().any(|glob| glob_matches(glob, file))) {
            return Decision::Ignore("no changed file matches `paths`".to_string());
        }
    }
    Decision::Deploy {
        commit: commit.to_string(),
        branch: branch.to_string(),
        message: message.lines().next().unwrap_or_default().to_string(),
    }
}

/// GitHub Actions' glob flavour: `*` is any run of characters but `/`, `**` any run including `/`, `?` one
/// character but `/`; everything else is itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    fn matches(glob: &[u8], text: &[u8]) -> bool {
        match glob {
            [] => text.is_empty(),
            [b'*', b'*', rest @ ..] => {
                // `**/` may also stand for no directory at all (`**/*.rb` matches `user.rb`).
                if let Some(after_slash) = rest.strip_prefix(b"/")
                    && matches(after_slash, text)
                {
                    return true;
                }
                (0..=text.len()).any(|skip| matches(rest, &text[skip..]))
            }
            [b'*', rest @ ..] => (0..=text.len())
                .take_while(|&skip| !text[..skip].contains(&b'/'))
                .any(|skip| matches(rest, &text[skip..])),
            [b'?', rest @ ..] => matches!(text, [c, tail @ ..] if *c != b'/' && matches(rest, tail)),
            [c, rest @ ..] => matches!(text, [t, tail @ ..] if t == c && matches(rest, tail)),
        }
    }
    matches(glob.as_bytes(), text.as_bytes())
}

/// A call to GitHub's REST API.
#[derive(Debug, PartialEq)]
pub struct ApiCall {
    pub method: Method,
    /// Below the API's base URL.
    pub path: String,
    pub body: Value,
}

/// `berth/SERVICE[/DESTINATION]`: the status's context, one per service and destination.
pub fn context(service: &str, destination: Option<&str>) -> String {
    match destination {
        Some(destination) => format!("berth/{service}/{destination}"),
        None => format!("berth/{service}"),
    }
}

/// The commit status for a deploy's new state, or None when the state changes nothing GitHub shows
/// (`running`: the status is already `pending`).
pub fn commit_status(
    repository: &str,
    commit: &str,
    context: &str,
    state: DeployState,
    deploy_id: i64,
    target_url: &str,
) -> Option<ApiCall> {
    let (github_state, description) = match state {
        DeployState::Queued => ("pending", format!("Deploy {deploy_id} queued")),
        DeployState::Running => return None,
        DeployState::Succeeded => ("success", format!("Deploy {deploy_id} succeeded")),
        DeployState::Failed => ("failure", format!("Deploy {deploy_id} failed")),
        DeployState::TimedOut => ("failure", format!("Deploy {deploy_id} timed out")),
        DeployState::Cancelled => ("error", format!("Deploy {deploy_id} was cancelled")),
        DeployState::Superseded => ("error", format!("Deploy {deploy_id} was superseded by a newer one")),
        DeployState::Interrupted => ("error", format!("Deploy {deploy_id} was interrupted")),
    };
    Some(ApiCall {
        method: Method::POST,
        path: format!("/repos/{repository}/statuses/{commit}"),
        body: json!({"state": github_state, "target_url": target_url, "description": description, "context": context}),
    })
}

/// Creates the deployment of a commit (when the deploy is queued).
pub fn create_deployment(repository: &str, commit: &str, environment: &str, deploy_id: i64, service: &str) -> ApiCall {
    ApiCall {
        method: Method::POST,
        path: format!("/repos/{repository}/deployments"),
        // `required_contexts: []`: berth deploys what it was asked to; checks are the pusher's business.
        body: json!({
            "ref": commit,
            "environment": environment,
            "auto_merge": false,
            "required_contexts": [],
            "description": format!("berth deploy {deploy_id} of {service}"),
            "payload": {"berth_deploy_id": deploy_id},
        }),
    }
}

/// The deployment status for a deploy's new state.
pub fn deployment_status(repository: &str, deployment_id: i64, state: DeployState, log_url: &str) -> ApiCall {
    let github_state = match state {
        DeployState::Queued => "queued",
        DeployState::Running => "in_progress",
        DeployState::Succeeded => "success",
        DeployState::Failed | DeployState::TimedOut => "failure",
        DeployState::Cancelled | DeployState::Superseded | DeployState::Interrupted => "error",
    };
    ApiCall {
        method: Method::POST,
        path: format!("/repos/{repository}/deployments/{deployment_id}/statuses"),
        body: json!({"state": github_state, "log_url": log_url, "description": format!("berth: {}", state.name())}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::integrations::GITHUB_API;

    fn github(branches: &[&str], paths: &[&str]) -> GithubConfig {
        GithubConfig {
            repository: "me/app".into(),
            branches: branches.iter().map(|b| b.to_string()).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            webhook_secret: "HOOK".into(),
            token: None,
            api_url: GITHUB_API.into(),
            deployments: false,
            destination: None,
        }
    }

    fn push(reference: &str, message: &str, files: &[&str]) -> Value {
        json!({
            "ref": reference,
            "after": "0123456789abcdef0123456789abcdef01234567",
            "deleted": false,
            "head_commit": {"message": message, "modified": files},
            "commits": [{"message": message, "modified": files}],
        })
    }

    #[test]
    fn signatures_are_checked_over_the_exact_body() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(b"It's a Secret to Everybody", b"Hello, World!"), expected);
        assert!(signature_matches(b"It's a Secret to Everybody", b"Hello, World!", Some(expected)));
        assert!(!signature_matches(b"It's a Secret to Everybody", b"Hello, World! ", Some(expected)));
        assert!(!signature_matches(b"another secret", b"Hello, World!", Some(expected)));
        assert!(!signature_matches(b"It's a Secret to Everybody", b"Hello, World!", None));
        assert!(!signature_matches(b"It's a Secret to Everybody", b"Hello, World!", Some("sha1=757107ea")));
        assert!(!signature_matches(b"It's a Secret to Everybody", b"Hello, World!", Some("sha256=zz")));
        assert!(!signature_matches(b"It's a Secret to Everybody", b"Hello, World!", Some(&expected[..20])));
    }

    #[test]
    fn pushes_to_matching_branches_deploy_their_after_commit() {
        let config = github(&["main", "release/*"], &[]);
        let decision = decide("push", &push("refs/heads/main", "Fix the footer\n\nLong text", &[]), &config);
        assert_eq!(
            decision,
            Decision::Deploy {
                commit: "0123456789abcdef0123456789abcdef01234567".into(),
                branch: "main".into(),
                message: "Fix the footer".into()
            }
        );
        assert!(matches!(decide("push", &push("refs/heads/release/2.1", "x", &[]), &config), Decision::Deploy { .. }));
        for (event, payload, why) in [
            ("push", push("refs/heads/feature", "x", &[]), "branch `feature` is not one that deploys"),
            ("push", push("refs/heads/release/2/1", "x", &[]), "is not one that deploys"),
            ("push", push("refs/tags/v1.0", "x", &[]), "is not a branch"),
            ("push", push("refs/heads/main", "Docs [skip deploy]", &[]), "says [skip deploy]"),
            ("push", push("refs/heads/main", "Docs [skip ci]", &[]), "says [skip ci]"),
            ("pull_request", push("refs/heads/main", "x", &[]), "`pull_request` events do not deploy"),
            ("push", json!({"ref": "refs/heads/main", "deleted": true, "head_commit": null}), "was deleted"),
            ("push", json!({"ref": "refs/heads/main", "after": "0000", "head_commit": null}), "no head commit"),
        ] {
            match decide(event, &payload, &config) {
                Decision::Ignore(reason) => assert!(reason.contains(why), "{reason} vs {why}"),
                deploy => panic!("{event} {payload} deployed: {deploy:?}"),
            }
        }
    }

    #[test]
    fn paths_deploy_only_pushes_that_change_a_matching_file() {
        let config = github(&["main"], &["app/**", "Dockerfile", "config/*.yml"]);
        let deploys = |files: &[&str]| {
            matches!(decide("push", &push("refs/heads/main", "x", files), &config), Decision::Deploy { .. })
        };
        assert!(deploys(&["app/models/user.rb"]));
        assert!(deploys(&["README.md", "Dockerfile"]));
        assert!(deploys(&["config/deploy.yml"]));
        assert!(!deploys(&["config/deploy/production.yml"]));
        assert!(!deploys(&["README.md", "docs/app/x.md"]));
        assert!(!deploys(&[]));
    }

    #[test]
    fn globs_follow_github_actions() {
        for (glob, text, expected) in [
            ("main", "main", true),
            ("main", "mainline", false),
            ("release/*", "release/1.0", true),
            ("release/*", "release/1/0", false),
            ("release/**", "release/1/0", true),
            ("**", "a/b/c", true),
            ("**/*.rb", "user.rb", true),
            ("**/*.rb", "app/models/user.rb", true),
            ("app/**/*.rb", "app/user.rb", true),
            ("v?", "v1", true),
            ("v?", "v10", false),
            ("*", "a/b", false),
        ] {
            assert_eq!(glob_matches(glob, text), expected, "{glob} ~ {text}");
        }
    }

    #[test]
    fn statuses_and_deployments_say_each_state_once() {
        let url = "https://deploy.example.com/ui/deploys/7";
        let call = commit_status("me/app", "abc", "berth/app/production", DeployState::Queued, 7, url).unwrap();
        assert_eq!(call.path, "/repos/me/app/statuses/abc");
        assert_eq!(call.body["state"], "pending");
        assert_eq!(call.body["context"], "berth/app/production");
        assert_eq!(call.body["target_url"], url);
        assert!(commit_status("me/app", "abc", "berth/app", DeployState::Running, 7, url).is_none());
        for (state, expected) in [
            (DeployState::Succeeded, "success"),
            (DeployState::Failed, "failure"),
            (DeployState::TimedOut, "failure"),
            (DeployState::Cancelled, "error"),
            (DeployState::Interrupted, "error"),
            (DeployState::Superseded, "error"),
        ] {
            assert_eq!(commit_status("me/app", "abc", "c", state, 7, url).unwrap().body["state"], expected);
        }
        assert_eq!(context("app", None), "berth/app");
        let created = create_deployment("me/app", "abc", "production", 7, "app");
        assert_eq!((created.path.as_str(), &created.body["ref"]), ("/repos/me/app/deployments", &json!("abc")));
        let status = deployment_status("me/app", 42, DeployState::Running, url);
        assert_eq!(status.path, "/repos/me/app/deployments/42/statuses");
        assert_eq!((status.body["state"].as_str(), status.body["log_url"].as_str()), (Some("in_progress"), Some(url)));
    }
}
