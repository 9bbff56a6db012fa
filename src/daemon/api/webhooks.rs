//! `POST /webhooks/github`: GitHub's deliveries, authenticated by their signature (no bearer token). A
//! push that deploys is queued — never run — in the request, so the answer comes well within GitHub's
//! 10 s; one delivery queues at most one deploy per service however often it is redelivered or replayed
//! (the digest of its signed body is the deploy's idempotency key, kept with the deploy).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::daemon::form::Form;
use crate::daemon::github::{self, Decision};
use crate::daemon::store::{DeployAudit, NewDeploy};

/// What a delivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAnswer {
    /// The deploy queued (the first, when the repository feeds several services); null when none.
    pub deploy_id: Option<i64>,
    /// Every service the delivery was for, and what it did there.
    pub services: Vec<WebhookOutcome>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOutcome {
    pub service: String,
    pub deploy_id: Option<i64>,
    /// Why it did not deploy; or, for a redelivery, that the deploy was queued before.
    pub reason: Option<String>,
}

/// Receives a GitHub webhook delivery.
#[utoipa::path(post, path = "/webhooks/github", request_body(content = String, description = "GitHub's JSON payload, signed"),
    params(("X-GitHub-Event" = String, Header, description = "push, ping, …"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id"),
        ("X-Hub-Signature-256" = String, Header, description = "sha256=HMAC of the body with the webhook secret")),
    responses((status = 200, description = "ping", body = WebhookAnswer),
        (status = 202, description = "Queued a deploy, or the reason it did not", body = WebhookAnswer),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem)))]
pub(super) async fn github_webhook(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    let Some(signature) = text("x-hub-signature-256") else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no X-Hub-Signature-256: set the webhook's secret in GitHub to the value of the service's `github: webhook_secret`",
        ));
    };
    let (Some(event), Some(delivery)) = (text("x-github-event"), text("x-github-delivery")) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not a GitHub webhook delivery: X-GitHub-Event and X-GitHub-Delivery are required",
        ));
    };
    if delivery.is_empty() || delivery.len() > 100 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "X-GitHub-Delivery must be 1 to 100 characters"));
    }
    let payload = parse_payload(&headers, &body)?;
    // The payload names its repository before it is verified: only to pick the secrets to verify it with.
    let repository = payload["repository"]["full_name"].as_str().unwrap_or_default();
    let verified: Vec<_> =
        state
            .config
            .services
            .values()
            .filter(|service| {
                service.github.as_ref().is_some_and(|github| github.repository.eq_ignore_ascii_case(repository))
                    && state.secrets.service(&service.name).github_webhook.is_some_and(|secret| {
                        github::signature_matches(secret.expose().as_bytes(), &body, Some(signature))
                    })
            })
            .collect();
    if verified.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "the signature matches no service's `github: webhook_secret` for repository `{repository}` (or no service \
                 has `github: repository: {repository}`)"
            ),
        ));
    }
    if event == "ping" {
        let services = verified
            .iter()
            .map(|service| WebhookOutcome {
                service: service.name.clone(),
                deploy_id: None,
                reason: Some("ping: the webhook reaches berth and its secret matches".into()),
            })
            .collect();
        return Ok((StatusCode::OK, Json(WebhookAnswer { deploy_id: None, services })).into_response());
    }
    let sender = payload["sender"]["login"].as_str().unwrap_or("unknown");
    let body_digest = crate::daemon::auth::hash_bytes(&body);
    let actor = format!("github:{sender}");
    let remote = Some(peer.ip().to_string());
    let mut outcomes = Vec::new();
    for service in verified {
        let github = service.github.as_ref().expect("verified services have github");
        let outcome = match github::decide(event, &payload, github) {
            Decision::Ignore(reason) => {
                WebhookOutcome { service: service.name.clone(), deploy_id: None, reason: Some(reason) }
            }
            Decision::Deploy { commit, branch, message } => {
                let new = NewDeploy {
                    service: service.name.clone(),
                    destination: github.destination.clone(),
                    kind: "deploy".to_string(),
                    git_ref: Some(commit),
                    reason: Some(truncate(&format!("push to {branch} by {sender}: {message}"), 1000)),
                    requested_by: Some(actor.clone()),
                    // The signed body, not the (unsigned) delivery header, names the push: a redelivery
                    // and a replay under a made-up delivery id are both the same push, deployed once.
                    idempotency_key: Some(format!("github:{}:{body_digest}", service.name)),
                    ..NewDeploy::default()
                };
                let audit = DeployAudit {
                    token_id: None,
                    actor: &actor,
                    action: "POST /webhooks/github",
                    status: StatusCode::ACCEPTED.as_u16(),
                    remote_addr: remote.as_deref(),
                    target: |deploy| format!("deploy {} of {}", deploy.id, deploy.service),
                };
                let (deploy, created) = state.store.insert_deploy_audited(&new, service.queue, &audit).await?;
                if created {
                    state.queue.wake();
                }
                WebhookOutcome {
                    service: service.name.clone(),
                    deploy_id: Some(deploy.id),
                    reason: (!created)
                        .then(|| format!("delivery {delivery} was received before: deploy {}", deploy.id)),
                }
            }
        };
        outcomes.push(outcome);
    }
    let deploy_id = outcomes.iter().find_map(|outcome| outcome.deploy_id);
    Ok((StatusCode::ACCEPTED, Json(WebhookAnswer { deploy_id, services: outcomes })).into_response())
}

/// The payload: the body itself (`application/json`), or its `payload` field (GitHub's form encoding).
fn parse_payload(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    let json = if form {
        let form = Form::parse(body);
        let field = form
            .get("payload")
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "the form has no `payload` field"))?;
        serde_json::from_str(field)
    } else {
        serde_json::from_slice(body)
    };
    json.map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("the payload is not JSON: {error}")))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}
