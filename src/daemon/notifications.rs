//! What is sent where when a deploy's state changes, as pure functions: which targets hear of an event,
//! the JSON of a notification webhook, the text of a Slack message. The notifier ([`super::notifier`])
//! sends them.

use serde_json::json;

use super::config::{NotifyEvent, ServiceConfig};
use super::model::{Deploy, DeployState};

/// The notification event a state change is (none for `superseded`: the deploy never started, and the
/// one that superseded it is announced).
pub fn event_of(state: DeployState) -> Option<NotifyEvent> {
    match state {
        DeployState::Queued => Some(NotifyEvent::Queued),
        DeployState::Running => Some(NotifyEvent::Started),
        DeployState::Succeeded => Some(NotifyEvent::Succeeded),
        DeployState::Failed | DeployState::TimedOut => Some(NotifyEvent::Failed),
        DeployState::Cancelled => Some(NotifyEvent::Cancelled),
        DeployState::Interrupted => Some(NotifyEvent::Interrupted),
        DeployState::Superseded => None,
    }
}

/// Where a deploy's change to `state` is sent: `notify/N` per matching `notify` entry, `github` (a status
/// or deployment status; statuses say nothing new when a deploy starts), `slack-reply` (the command that
/// asked for it hears when it starts and how it ends).
pub fn targets(service: &ServiceConfig, state: DeployState, replies_to_slack: bool) -> Vec<String> {
    let mut targets = Vec::new();
    if let Some(event) = event_of(state) {
        for (index, notify) in service.notify.iter().enumerate() {
            if notify.events.contains(&event) {
                targets.push(format!("notify/{index}"));
            }
        }
    }
    if let Some(github) = &service.github
        && github.token.is_some()
        && (github.deployments || state != DeployState::Running)
    {
        targets.push("github".to_string());
    }
    if replies_to_slack && state != DeployState::Queued {
        targets.push("slack-reply".to_string());
    }
    targets
}

/// The body of a notification webhook.
pub fn webhook_body(deploy: &Deploy, state: DeployState, at: &str, url: &str) -> Vec<u8> {
    let event = event_of(state).map_or(state.name(), NotifyEvent::name);
    let body = json!({
        "event": event,
        "id": deploy.id,
        "service": deploy.service,
        "destination": deploy.destination,
        "version": deploy.version,
        "commit": deploy.commit,
        "ref": deploy.git_ref,
        "state": state.name(),
        "reason": deploy.reason,
        "requested_by": deploy.requested_by,
        "error": if state.is_final() { deploy.error.clone() } else { None },
        "at": at,
        "url": url,
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

/// A readable Slack message (mrkdwn) for a deploy's change to `state`.
pub fn slack_text(deploy: &Deploy, state: DeployState, url: &str) -> String {
    let icon = match state {
        DeployState::Queued => ":hourglass_flowing_sand:",
        DeployState::Running => ":rocket:",
        DeployState::Succeeded => ":white_check_mark:",
        DeployState::Failed | DeployState::TimedOut | DeployState::Interrupted => ":x:",
        DeployState::Cancelled | DeployState::Superseded => ":no_entry_sign:",
    };
    let what = match state {
        DeployState::Queued => "queued",
        DeployState::Running => "started",
        DeployState::Succeeded => "succeeded",
        DeployState::Failed => "failed",
        DeployState::TimedOut => "timed out",
        DeployState::Cancelled => "was cancelled",
        DeployState::Superseded => "was superseded",
        DeployState::Interrupted => "was interrupted",
    };
    let target = match &deploy.destination {
        Some(destination) => format!("{}@{destination}", deploy.service),
        None => deploy.service.clone(),
    };
    let kind = if deploy.kind == "rollback" { "Rollback" } else { "Deploy" };
    let mut text = format!("{icon} {kind} <{url}|#{}> of *{}* {what}", deploy.id, slack_escape(&target));
    if let Some(version) = &deploy.version {
        text.push_str(&format!(" — version `{}`", slack_escape(version)));
    } else if let Some(reference) = &deploy.git_ref {
        text.push_str(&format!(" — `{}`", slack_escape(reference)));
    }
    if state.is_final()
        && state != DeployState::Succeeded
        && let Some(error) = &deploy.error
    {
        text.push_str(&format!("\n> {}", slack_escape(error.lines().next().unwrap_or_default())));
    }
    text
}

/// Slack's three control characters in message text.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::{GithubConfig, NotifyConfig, NotifyTarget, QueuePolicy};

    fn service() -> ServiceConfig {
        ServiceConfig {
            name: "app".into(),
            repo: "/r".into(),
            branch: "main".into(),
            config: "config/deploy.yml".into(),
            destinations: vec![],
            secrets: None,
            queue: QueuePolicy::Latest,
            github: None,
            notify: vec![
                NotifyConfig {
                    target: NotifyTarget::Webhook { url: "http://x".into(), secret: None },
                    events: NotifyEvent::ALL.to_vec(),
                },
                NotifyConfig {
                    target: NotifyTarget::Slack { webhook: "SLACK".into() },
                    events: vec![NotifyEvent::Failed],
                },
            ],
        }
    }

    fn deploy() -> Deploy {
        Deploy {
            id: 12,
            service: "app".into(),
            destination: Some("production".into()),
            kind: "deploy".into(),
            version: Some("abc123".into()),
            git_ref: None,
            commit: None,
            state: DeployState::Failed,
            stage: None,
            reason: None,
            requested_by: None,
            created_at: "t".into(),
            started_at: None,
            ended_at: None,
            error: Some("boot failed on <10.0.0.1> & more\nsecond line".into()),
            runner: None,
            stages: vec![],
        }
    }

    #[test]
    fn each_target_hears_the_events_it_asked_for() {
        let mut service = service();
        assert_eq!(targets(&service, DeployState::Running, false), ["notify/0"]);
        assert_eq!(targets(&service, DeployState::TimedOut, false), ["notify/0", "notify/1"]);
        assert!(targets(&service, DeployState::Superseded, false).is_empty());
        service.github = Some(GithubConfig {
            repository: "me/app".into(),
            branches: vec!["main".into()],
            paths: vec![],
            webhook_secret: "H".into(),
            token: Some("T".into()),
            api_url: "http://gh".into(),
            deployments: false,
            destination: None,
        });
        assert_eq!(targets(&service, DeployState::Queued, true), ["notify/0", "github"]);
        assert_eq!(targets(&service, DeployState::Running, true), ["notify/0", "slack-reply"]);
        assert_eq!(targets(&service, DeployState::Superseded, true), ["github", "slack-reply"]);
        service.github.as_mut().unwrap().deployments = true;
        assert_eq!(targets(&service, DeployState::Running, false), ["notify/0", "github"]);
    }

    #[test]
    fn messages_carry_the_deploy_and_its_link() {
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(
            &deploy(),
            DeployState::TimedOut,
            "2026-12-03T10:00:00Z",
            "http://d/ui/deploys/12",
        ))
        .unwrap();
        assert_eq!(body["event"], "failed");
        assert_eq!(body["state"], "timed_out");
        assert_eq!((body["id"].as_i64(), body["service"].as_str()), (Some(12), Some("app")));
        assert_eq!((body["destination"].as_str(), body["version"].as_str()), (Some("production"), Some("abc123")));
        assert_eq!(body["url"], "http://d/ui/deploys/12");
        let text = slack_text(&deploy(), DeployState::Failed, "http://d/ui/deploys/12");
        assert_eq!(
            text,
            ":x: Deploy <http://d/ui/deploys/12|#12> of *app@production* failed — version `abc123`\n> boot failed on \
             &lt;10.0.0.1&gt; &amp; more"
        );
    }
}
