//! `POST /chatops/slack`: Slack slash commands (`/berth deploy app@production v1.2`, `status`, …), verified
//! by Slack's request signature (no bearer token) and allowed per Slack user by `slack: users:` in
//! berth.yml. Slack shows only answers given within 3 s and with status 200, so refusals are 200 replies
//! too (only forged or stale requests get 401); a deploy's progress is posted to the command's
//! `response_url` by the notifier.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState, check_destination, unknown_service};
use crate::daemon::form::Form;
use crate::daemon::notifications::slack_escape;
use crate::daemon::queue::Cancelled;
use crate::daemon::slack::{self, Command, Unsigned};
use crate::daemon::store::{DeployAudit, NewDeploy};

/// How long `status` waits for the hosts before answering with what it has.
const STATUS_WAIT: Duration = Duration::from_millis(2500);

/// Takes a Slack slash command.
#[utoipa::path(post, path = "/chatops/slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "Slack's slash-command form"),
    params(("X-Slack-Request-Timestamp" = String, Header, description = "Unix seconds"),
        ("X-Slack-Signature" = String, Header, description = "v0=HMAC-SHA256 of v0:TIMESTAMP:BODY with the signing secret")),
    responses((status = 200, description = "The reply Slack shows (JSON with `text`, and `deploy_id` when one was queued)"),
        (status = 401, body = super::Problem), (status = 404, body = super::Problem)))]
pub(super) async fn slack_command(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (Some(config), Some(secret)) = (&state.config.slack, &state.secrets.slack_signing_secret) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Slack commands are not set up: add `slack: {signing_secret: NAME, users: {…}}` to berth.yml",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let verified = slack::verify(
        secret.expose().as_bytes(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now,
    );
    match verified {
        Ok(()) => {}
        Err(Unsigned::Missing) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not signed by Slack: X-Slack-Request-Timestamp and X-Slack-Signature are required",
            ));
        }
        Err(Unsigned::Stale) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "X-Slack-Request-Timestamp is more than 5 minutes from the daemon's clock: a replayed request, or a \
                 clock out of sync (check NTP)",
            ));
        }
        Err(Unsigned::Mismatch) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the signature does not match: the `slack: signing_secret` must be the Slack app's Signing Secret",
            ));
        }
    }
    let form = Form::parse(&body);
    let field = |name: &str| form.string(name).unwrap_or_default();
    if field("ssl_check") == "1" {
        return Ok(StatusCode::OK.into_response());
    }
    let (user, user_name, command_name) = (field("user_id"), field("user_name"), field("command"));
    let Some(scope) = config.users.get(&user).copied() else {
        return Ok(reply(&format!(
            "You may not use berth yet: ask its admin to add `{user}: read` (or `deploy`, `admin`) under `slack: users:` \
             in berth.yml."
        )));
    };
    let command = match slack::parse(&field("text")) {
        Ok(command) => command,
        Err(error) => return Ok(reply(&format!("{error}.\n{}", slack::usage(&command_name)))),
    };
    if scope < command.needs() {
        return Ok(reply(&format!(
            "That needs the `{}` scope; you have `{}` (set under `slack: users:` in berth.yml).",
            command.needs().name(),
            scope.name()
        )));
    }
    let actor = format!("slack:{user}");
    let remote = peer.ip().to_string();
    let response_url =
        Some(field("response_url")).filter(|url| url.starts_with("https://") || url.starts_with("http://"));
    let requested = |kind: &str, service: String, destination: Option<String>| NewDeploy {
        service,
        destination,
        kind: kind.to_string(),
        reason: Some(format!("from Slack by @{user_name}")),
        requested_by: Some(actor.clone()),
        slack_response_url: response_url.clone(),
        // Slack's trigger id is one per invocation: the same signed request replayed within its 5 minutes
        // is the same deploy.
        idempotency_key: Some(field("trigger_id")).filter(|id| !id.is_empty()).map(|id| format!("slack:{id}")),
        ..NewDeploy::default()
    };
    let new = match command {
        Command::Help => return Ok(reply(&slack::usage(&command_name))),
        Command::Status { service } => return Ok(status(&state, service).await),
        Command::Cancel { id } => return Ok(cancel(&state, id, &actor, &remote).await),
        Command::Deploy { service, destination, reference } => {
            NewDeploy { git_ref: reference, ..requested("deploy", service, destination) }
        }
        Command::Rollback { service, destination, version } => {
            NewDeploy { version: Some(version), ..requested("rollback", service, destination) }
        }
    };
    if !state.config.services.contains_key(&new.service) {
        return Ok(reply(&unknown_service(&state.config, &new.service)));
    }
    if let Err(error) = check_destination(&state, &new.service, &new.destination) {
        return Ok(reply(error.detail()));
    }
    let audit = DeployAudit {
        token_id: None,
        actor: &actor,
        action: "POST /chatops/slack",
        status: StatusCode::ACCEPTED.as_u16(),
        remote_addr: Some(&remote),
        target: |deploy| format!("deploy {} of {}", deploy.id, deploy.service),
    };
    let policy = state.config.services[&new.service].queue;
    let (deploy, _) = state.store.insert_deploy_audited(&new, policy, &audit).await?;
    state.queue.wake();
    let target = match &deploy.destination {
        Some(destination) => format!("{}@{destination}", deploy.service),
        None => deploy.service.clone(),
    };
    let what = match (&deploy.version, &deploy.git_ref) {
        (Some(version), _) => format!(" (version `{}`)", slack_escape(version)),
        (None, Some(reference)) => format!(" (`{}`)", slack_escape(reference)),
        (None, None) => String::new(),
    };
    let kind = if deploy.kind == "rollback" { "Rollback" } else { "Deploy" };
    let text = format!(
        ":hourglass_flowing_sand: {kind} <{}|#{}> of *{}*{what} queued by <@{user}>",
        state.config.deploy_url(deploy.id),
        deploy.id,
        slack_escape(&target)
    );
    Ok(Json(json!({"response_type": "in_channel", "text": text, "deploy_id": deploy.id})).into_response())
}

/// A reply only the user sees.
fn reply(text: &str) -> Response {
    Json(json!({"response_type": "ephemeral", "text": text})).into_response()
}

/// What runs on each host of one service, or of all.
async fn status(state: &AppState, service: Option<String>) -> Response {
    let names: Vec<String> = match service {
        Some(name) if state.config.services.contains_key(&name) => vec![name],
        Some(name) => return reply(&unknown_service(&state.config, &name)),
        None => state.config.services.keys().cloned().collect(),
    };
    if names.is_empty() {
        return reply("berth deploys no services yet.");
    }
    let mut lines = Vec::new();
    for name in names {
        let config = &state.config.services[&name];
        let destinations: Vec<Option<String>> = match config.destinations.as_slice() {
            [] => vec![None],
            some => some.iter().cloned().map(Some).collect(),
        };
        let last = state.store.last_deploy(&name).await.ok().flatten();
        let seen = last.as_ref().map_or(String::new(), |last| format!("{} {}", last.id, last.state.name()));
        for destination in destinations {
            let title = match &destination {
                Some(destination) => format!("*{}@{}*", slack_escape(&name), slack_escape(destination)),
                None => format!("*{}*", slack_escape(&name)),
            };
            let read =
                tokio::time::timeout(STATUS_WAIT, state.hosts.recent_status(&name, destination, seen.clone())).await;
            match read {
                Ok(Ok(hosts)) if hosts.is_empty() => lines.push(format!("{title}: no hosts")),
                Ok(Ok(hosts)) => {
                    lines.push(format!("{title}:"));
                    for host in hosts {
                        lines.push(format!(
                            "• {} ({}): {} {}",
                            slack_escape(&host.host),
                            slack_escape(&host.role),
                            host.version.map_or("nothing".to_string(), |v| format!("`{}`", slack_escape(&v))),
                            host.state
                        ));
                    }
                }
                Ok(Err(error)) => lines.push(format!("{title}: the hosts could not be read: {}", slack_escape(&error))),
                Err(_) => lines.push(format!("{title}: the hosts are slow to answer; ask again in a moment")),
            }
        }
        if let Some(last) = last {
            lines.push(format!(
                "  last deploy <{}|#{}>: {}",
                state.config.deploy_url(last.id),
                last.id,
                last.state.name()
            ));
        }
    }
    reply(&lines.join("\n"))
}

async fn cancel(state: &AppState, id: i64, actor: &str, remote: &str) -> Response {
    let deploy = match state.store.deploy(id).await {
        Ok(Some(deploy)) => deploy,
        Ok(None) => return reply(&format!("No deploy #{id}.")),
        Err(error) => return reply(&format!("The database did not answer ({error}); try again.")),
    };
    let text = match state.queue.cancel(id).await {
        Ok(Cancelled::Now) => {
            format!(":no_entry_sign: Deploy #{id} of *{}* cancelled before it started.", deploy.service)
        }
        Ok(Cancelled::Stopping) => {
            format!(":no_entry_sign: Stopping deploy #{id} of *{}*: what switched is rolled back.", deploy.service)
        }
        Ok(Cancelled::AlreadyEnded(ended)) => format!("Deploy #{id} has ended already: {}.", ended.name()),
        Ok(Cancelled::NotFound) => format!("No deploy #{id}."),
        Err(error) => format!("The database did not answer ({error}); try again."),
    };
    let entry = crate::daemon::store::NewAudit {
        token_id: None,
        actor,
        action: "POST /chatops/slack cancel",
        target: Some(&format!("deploy {id} of {}", deploy.service)),
        status: StatusCode::ACCEPTED.as_u16(),
        remote_addr: Some(remote),
    };
    let _ = state.store.audit(&entry).await;
    Json(json!({"response_type": "in_channel", "text": text, "deploy_id": id})).into_response()
}
