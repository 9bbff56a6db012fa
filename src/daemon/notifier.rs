//! Tells others of deploys: turns each deploy event (stored with the state change that made it) into
//! deliveries — notification webhooks, Slack messages, GitHub statuses or deployments, replies to the Slack
//! command that asked — and sends them, in order per deploy and target, retried with backoff on 5xx, 429 and
//! no answer. Nothing here can block or fail a deploy: it only reads deploys and writes deliveries.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, Method, header};

use super::config::{DaemonConfig, NotifyTarget, ServiceConfig};
use super::github;
use super::integrations::IntegrationSecrets;
use super::model::{Deploy, DeployState};
use super::notifications::{self, slack_text, webhook_body};
use super::store::{Delivery, DeliveryOutcome, NewDelivery, Store, StoreError};
use crate::outbound_http::{OutboundHttp, OutboundResponse};

/// Attempts before a delivery is given up (the waits between them add up to about 4 minutes).
pub const MAX_ATTEMPTS: i64 = 8;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before attempt `attempt + 1`: 1 s, 2 s, 4 s … at most 60 s.
pub fn backoff(attempt: i64) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 7).saturating_sub(1)).min(Duration::from_secs(60))
}

/// Why an attempt did not deliver.
enum Failure {
    /// Worth another attempt (5xx, 429, no answer).
    Retry(String),
    /// Not (4xx, a target that no longer exists).
    Permanent(String),
    /// Nothing to send (no commit to report a status on, …).
    Skip(String),
}

pub struct Notifier {
    store: Store,
    config: Arc<DaemonConfig>,
    secrets: Arc<IntegrationSecrets>,
    http: OutboundHttp,
    /// (deploy, target) pairs with an attempt under way: the next one waits for it.
    in_flight: Mutex<HashSet<(i64, String)>>,
    attempt_ended: tokio::sync::Notify,
}

impl Notifier {
    pub fn new(
        store: Store,
        config: Arc<DaemonConfig>,
        secrets: Arc<IntegrationSecrets>,
    ) -> Result<Arc<Notifier>, String> {
        let http = OutboundHttp::new(concat!("berth/", env!("CARGO_PKG_VERSION")), &[])?;
        Ok(Arc::new(Notifier {
            store,
            config,
            secrets,
            http,
            in_flight: Mutex::default(),
            attempt_ended: tokio::sync::Notify::new(),
        }))
    }

    /// Plans and sends, for as long as the daemon runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            // A database that does not answer now is tried again on the next pass.
            let _ = self.plan().await;
            let pending = self.send_due().await.unwrap_or(true);
            let wait = if pending { Duration::from_millis(250) } else { Duration::from_secs(10) };
            tokio::select! {
                () = self.store.wait_for_change() => {}
                () = self.attempt_ended.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Turns the events not yet planned into deliveries (the cursor moves with them, in one transaction).
    async fn plan(&self) -> Result<(), StoreError> {
        loop {
            let cursor = self.store.notifier_cursor().await?;
            let events = self.store.events_after(cursor, 500).await?;
            let Some(last) = events.last().map(|event| event.id) else { return Ok(()) };
            let mut planned = Vec::new();
            for event in events {
                let Some(service) = self.config.services.get(&event.service) else { continue };
                // Only a daemon with Slack configured has deploys that reply to a command.
                let replies = match &self.config.slack {
                    Some(_) => self.store.deploy_link(event.deploy_id).await?.slack_response_url.is_some(),
                    None => false,
                };
                for target in notifications::targets(service, event.state, replies) {
                    planned.push(NewDelivery {
                        deploy_id: event.deploy_id,
                        event_id: event.id,
                        state: event.state,
                        target,
                    });
                }
            }
            self.store.plan_deliveries(last, &planned).await?;
        }
    }

    /// Starts an attempt for every due delivery whose (deploy, target) has none under way. Returns whether
    /// deliveries are still pending.
    async fn send_due(self: &Arc<Self>) -> Result<bool, StoreError> {
        let due = self.store.due_deliveries(100).await?;
        for delivery in due {
            let key = (delivery.deploy_id, delivery.target.clone());
            if !self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
                continue;
            }
            let notifier = Arc::clone(self);
            tokio::spawn(async move {
                let outcome = notifier.attempt(&delivery).await;
                let _ = notifier.store.record_attempt(delivery.id, &outcome).await;
                notifier.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                notifier.attempt_ended.notify_one();
            });
        }
        Ok(self.store.next_delivery_at().await?.is_some())
    }

    async fn attempt(&self, delivery: &Delivery) -> DeliveryOutcome {
        let result = match self.store.deploy(delivery.deploy_id).await {
            Ok(Some(deploy)) => {
                match (self.config.services.get(&deploy.service), DeployState::parse(&delivery.state)) {
                    (Some(service), Some(state)) => self.send(delivery, &deploy, service, state).await,
                    _ => Err(Failure::Skip("the service is no longer configured".into())),
                }
            }
            Ok(None) => Err(Failure::Skip("the deploy no longer exists".into())),
            Err(error) => Err(Failure::Retry(error.to_string())),
        };
        match result {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(Failure::Skip(why)) => DeliveryOutcome::Skipped(why),
            Err(Failure::Permanent(error)) => DeliveryOutcome::Failed(self.scrub(error)),
            Err(Failure::Retry(error)) if delivery.attempts + 1 >= MAX_ATTEMPTS => {
                DeliveryOutcome::Failed(self.scrub(format!("{error} (gave up after {MAX_ATTEMPTS} attempts)")))
            }
            Err(Failure::Retry(error)) => DeliveryOutcome::Retry {
                at: crate::utc::millis_at(SystemTime::now() + backoff(delivery.attempts + 1)),
                error: self.scrub(error),
            },
        }
    }

    async fn send(
        &self,
        delivery: &Delivery,
        deploy: &Deploy,
        service: &ServiceConfig,
        state: DeployState,
    ) -> Result<(), Failure> {
        let url = self.config.deploy_url(deploy.id);
        let secrets = self.secrets.service(&service.name);
        if let Some(index) = delivery.target.strip_prefix("notify/") {
            let index: usize = index.parse().map_err(|_| Failure::Skip("unknown target".into()))?;
            let notify = service.notify.get(index).ok_or_else(|| Failure::Skip("the notify entry is gone".into()))?;
            let secret = secrets.notify.get(index).cloned().flatten();
            return match &notify.target {
                NotifyTarget::Webhook { url: endpoint, .. } => {
                    let body = webhook_body(deploy, state, &crate::utc::now_millis(), &url);
                    let mut headers = vec![
                        (header::CONTENT_TYPE, "application/json".to_string()),
                        (HeaderName::from_static("x-berth-event"), state.name().to_string()),
                        (HeaderName::from_static("x-berth-delivery"), delivery.id.to_string()),
                    ];
                    if let Some(secret) = secret {
                        let signature = github::sign(secret.expose().as_bytes(), &body);
                        headers.push((HeaderName::from_static("x-berth-signature-256"), signature));
                    }
                    self.post(endpoint, &headers, body).await.map(drop)
                }
                NotifyTarget::Slack { .. } => {
                    let endpoint = secret.ok_or_else(|| Failure::Skip("no Slack webhook URL".into()))?;
                    let body = serde_json::json!({"text": slack_text(deploy, state, &url)});
                    self.post_json(endpoint.expose(), &body, &[]).await.map(drop)
                }
            };
        }
        match delivery.target.as_str() {
            "slack-reply" => {
                let link = self.store.deploy_link(deploy.id).await.map_err(|e| Failure::Retry(e.to_string()))?;
                let endpoint = link.slack_response_url.ok_or_else(|| Failure::Skip("no Slack response_url".into()))?;
                let body = serde_json::json!({
                    "response_type": "in_channel",
                    "replace_original": false,
                    "text": slack_text(deploy, state, &url),
                });
                self.post_json(&endpoint, &body, &[]).await.map(drop)
            }
            "github" => self.github(deploy, service, state, &url).await,
            other => Err(Failure::Skip(format!("unknown target {other}"))),
        }
    }

    /// A commit status, or (with `deployments: true`) the deployment and its statuses.
    async fn github(
        &self,
        deploy: &Deploy,
        service: &ServiceConfig,
        state: DeployState,
        url: &str,
    ) -> Result<(), Failure> {
        let config = service.github.as_ref().ok_or_else(|| Failure::Skip("no github configuration".into()))?;
        let token = self.secrets.service(&service.name).github_token.ok_or_else(|| Failure::Skip("no token".into()))?;
        let commit = deploy.commit.clone().or_else(|| deploy.git_ref.clone().filter(|r| is_commit(r)));
        let Some(commit) = commit else {
            return Err(Failure::Skip("no commit is known for this deploy (deployed by version)".into()));
        };
        let auth = &[
            (header::AUTHORIZATION, format!("Bearer {}", token.expose())),
            (header::ACCEPT, "application/vnd.github+json".to_string()),
            (HeaderName::from_static("x-github-api-version"), "2022-11-28".to_string()),
        ];
        let call = |call: github::ApiCall| async move {
            let endpoint = format!("{}{}", config.api_url, call.path);
            self.post_json(&endpoint, &call.body, auth).await
        };
        if !config.deployments {
            let context = github::context(&service.name, deploy.destination.as_deref());
            return match github::commit_status(&config.repository, &commit, &context, state, deploy.id, url) {
                Some(status) => call(status).await.map(drop),
                None => Ok(()),
            };
        }
        let link = self.store.deploy_link(deploy.id).await.map_err(|e| Failure::Retry(e.to_string()))?;
        let deployment = match link.github_deployment_id {
            Some(id) => id,
            None if state == DeployState::Queued || !state.is_final() => {
                let environment = deploy.destination.clone().unwrap_or_else(|| "production".to_string());
                let created = call(github::create_deployment(
                    &config.repository,
                    &commit,
                    &environment,
                    deploy.id,
                    &service.name,
                ))
                .await?;
                let id = serde_json::from_slice::<serde_json::Value>(&created.body)
                    .ok()
                    .and_then(|body| body["id"].as_i64())
                    .ok_or_else(|| Failure::Permanent("GitHub created no deployment id".into()))?;
                self.store.set_github_deployment(deploy.id, id).await.map_err(|e| Failure::Retry(e.to_string()))?;
                id
            }
            None => return Err(Failure::Skip("no GitHub deployment was created for this deploy".into())),
        };
        call(github::deployment_status(&config.repository, deployment, state, url)).await.map(drop)
    }

    async fn post_json(
        &self,
        endpoint: &str,
        body: &serde_json::Value,
        extra: &[(HeaderName, String)],
    ) -> Result<OutboundResponse, Failure> {
        let mut headers = vec![(header::CONTENT_TYPE, "application/json".to_string())];
        headers.extend_from_slice(extra);
        self.post(endpoint, &headers, serde_json::to_vec(body).expect("JSON values serialize")).await
    }

    async fn post(
        &self,
        endpoint: &str,
        headers: &[(HeaderName, String)],
        body: Vec<u8>,
    ) -> Result<OutboundResponse, Failure> {
        let answer = self
            .http
            .send(Method::POST, endpoint, headers, Some(Bytes::from(body)), ATTEMPT_TIMEOUT)
            .await
            .map_err(Failure::Retry)?;
        let status = answer.status;
        if status.is_success() {
            return Ok(answer);
        }
        let text = String::from_utf8_lossy(&answer.body);
        let detail = format!("answered {status}: {}", text.chars().take(200).collect::<String>());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(Failure::Retry(detail))
        } else {
            Err(Failure::Permanent(detail))
        }
    }

    /// No secret value in what is stored about a delivery.
    fn scrub(&self, mut text: String) -> String {
        for value in self.secrets.values() {
            text = text.replace(&value, "[REDACTED]");
        }
        text
    }
}

fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let waits: Vec<u64> = (1..=MAX_ATTEMPTS).map(|attempt| backoff(attempt).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
