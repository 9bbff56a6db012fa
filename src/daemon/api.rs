//! The daemon's HTTP API (axum): the only place that knows HTTP and JSON. Handlers check the caller's token,
//! record intents through the queue, read through the store, and map every error to
//! `application/problem+json` with a message a person can act on. Documented with utoipa: the spec is served
//! at `/openapi.json` (and committed under `openapi/`), browsable at `/docs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, OpenApi, ToSchema};

mod chatops;
mod webhooks;

use super::auth;
use super::config::DaemonConfig;
use super::logs::{LiveEvent, LogHub};
use super::model::{AuditEntry, Deploy, DeployState, Scope, TokenInfo};
use super::queue::{Cancelled, Queue};
use super::store::{Delivery, DeployAudit, DeployFilter, NewAudit, NewDeploy, Store, StoreError};

/// Largest request body accepted (deploy requests are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// The largest webhook delivery taken (GitHub's own cap is 25 MB; a push of thousands of commits is
/// refused with 413, which GitHub's delivery log shows).
pub const MAX_WEBHOOK_BODY: usize = 10 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub queue: Arc<Queue>,
    pub hub: Arc<LogHub>,
    pub config: Arc<DaemonConfig>,
    pub started: Instant,
    /// The engine on a service's hosts (status, maintenance).
    pub hosts: Arc<super::hosts::ServiceHosts>,
    /// The integrations' secrets (webhook and Slack signatures), read at start.
    pub secrets: Arc<super::integrations::IntegrationSecrets>,
}

/// The API's routes, with body limits and request timeouts (log streams excepted).
pub fn router(state: AppState) -> Router {
    let timed = Router::new()
        .route("/deploys", post(create_deploy).get(list_deploys))
        .route("/deploys/{id}", get(get_deploy))
        .route("/deploys/{id}/cancel", post(cancel_deploy))
        .route("/deploys/{id}/deliveries", get(deploy_deliveries))
        .route("/services", get(list_services))
        .route("/services/{name}", get(get_service))
        .route("/services/{name}/rollback", post(rollback_service))
        .route("/services/{name}/maintenance", post(maintenance_on))
        .route("/services/{name}/live", post(maintenance_off))
        .route("/audit", get(list_audit))
        .route("/healthz", get(healthz))
        .route("/badges/{file}", get(service_badge))
        .route("/metrics", get(metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ));
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi());
    let api = Router::new()
        .merge(timed)
        .route("/deploys/{id}/logs", get(deploy_logs))
        .merge(docs)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY));
    // Webhooks carry payloads larger than API requests (a push lists its commits and files).
    let webhooks = Router::new()
        .route("/webhooks/github", post(webhooks::github_webhook))
        .route("/chatops/slack", post(chatops::slack_command))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_WEBHOOK_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ));
    Router::new()
        .merge(api)
        .merge(webhooks)
        .fallback(not_found)
        .layer(axum::middleware::map_response(problems_for_plain_errors))
        // After the layers above: the dashboard answers in HTML and has its own limits and headers.
        .merge(super::dashboard::router())
        .with_state(state)
}

/// Errors answered by the layers (body limit, timeout) in plain text become problems like the rest.
async fn problems_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is over the limit ({} KiB for the API, {} MiB for webhooks)",
            MAX_BODY / 1024,
            MAX_WEBHOOK_BODY / 1024 / 1024
        ),
        StatusCode::REQUEST_TIMEOUT => "the request took too long; try again".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take that method; see /docs".to_string(),
        other => other.canonical_reason().unwrap_or("error").to_string(),
    };
    ApiError::new(status, detail).into_response()
}

// ---------------------------------------------------------------------------------------------------------
// Errors

/// An error answer: `application/problem+json` (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
}

/// An error a handler answers with.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError { status, detail: detail.into() }
    }

    /// What went wrong, for a person.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error").to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut response = (self.status, Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error}; try again shortly"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        let detail = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "the request body is over the limit ({} KiB for the API, {} MiB for webhooks)",
                MAX_BODY / 1024,
                MAX_WEBHOOK_BODY / 1024 / 1024
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "send JSON with `Content-Type: application/json`".to_string(),
            _ => format!("the request body is not a valid deploy request: {}", rejection.body_text()),
        };
        ApiError::new(status, detail)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /docs for the API")
}

// ---------------------------------------------------------------------------------------------------------
// Callers

/// The caller, from `Authorization: Bearer TOKEN`, or for GET and HEAD only from the dashboard's session
/// cookie (its page scripts poll deploys and follow logs; what changes state takes a form with a CSRF field).
pub struct Caller {
    pub token: TokenInfo,
    pub remote: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let remote = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip().to_string());
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .or_else(|| {
                let reads = parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
                reads.then(|| super::dashboard::session_cookie(&parts.headers)).flatten()
            });
        let Some(presented) = presented.filter(|token| !token.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send a token as `Authorization: Bearer TOKEN` (create one with `berth token create --scope read|deploy|admin`)",
            ));
        };
        match state.store.token_by_hash(&auth::hash(presented)).await? {
            Some(token) => Ok(Caller { token, remote }),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown or revoked token")),
        }
    }
}

impl Caller {
    /// Refuses (403) when the token's scope or service does not allow the action.
    pub(super) fn require(&self, needed: Scope, service: Option<&str>) -> Result<(), ApiError> {
        auth::allows(&self.token, needed, service).map_err(|denied| {
            let detail = match denied {
                auth::Denied::Scope { needed, has } => format!(
                    "this token has the `{}` scope; this needs `{}` (create one with `berth token create --scope {}`)",
                    has.name(),
                    needed.name(),
                    needed.name()
                ),
                auth::Denied::Service { allowed } => format!("this token is limited to the service `{allowed}`"),
            };
            ApiError::new(StatusCode::FORBIDDEN, detail)
        })
    }

    async fn audit(&self, store: &Store, action: &str, target: Option<&str>, status: StatusCode) {
        let entry = NewAudit {
            token_id: Some(self.token.id),
            actor: &self.token.name,
            action,
            target,
            status: status.as_u16(),
            remote_addr: self.remote.as_deref(),
        };
        // The action happened whether or not its audit line could be stored.
        let _ = store.audit(&entry).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Deploys

/// A deploy request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The service, as named in the daemon's `berth.yml`.
    pub service: String,
    /// One of the service's destinations (required when it has any).
    pub destination: Option<String>,
    /// An image tag already in the registry: deployed without building (like `kamal deploy -P --version`).
    pub version: Option<String>,
    /// A branch, tag or commit: fetched, built at that commit, pushed, deployed. Neither: the branch's head.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Why (shown in the dashboard and notifications).
    pub reason: Option<String>,
}

/// A rollback request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A version whose containers are still on the hosts (see `berth app containers`).
    pub version: String,
    pub destination: Option<String>,
    pub reason: Option<String>,
}

/// Queues a deploy.
#[utoipa::path(post, path = "/deploys", request_body = DeployRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key again answers with the same deploy")),
    responses(
        (status = 202, description = "Queued (or, with a repeated Idempotency-Key, the deploy it made)", body = Deploy),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such service", body = Problem), (status = 413, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_deploy(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    caller.require(Scope::Deploy, Some(&request.service))?;
    if request.version.is_some() && request.git_ref.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give `version` (an image already in the registry) or `ref` (build that commit), not both",
        ));
    }
    let new = NewDeploy {
        kind: "deploy".to_string(),
        version: check_word("version", request.version)?,
        git_ref: check_word("ref", request.git_ref)?,
        ..new_deploy(&state, &caller, &headers, request.service, request.destination, request.reason)?
    };
    queue_deploy(&state, &caller, new, "POST /deploys").await
}

/// Queues a rollback of a service to a version still on its hosts.
#[utoipa::path(post, path = "/services/{name}/rollback", request_body = RollbackRequest,
    params(("name" = String, Path, description = "The service")),
    responses((status = 202, body = Deploy), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn rollback_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    caller.require(Scope::Deploy, Some(&name))?;
    let new = NewDeploy {
        kind: "rollback".to_string(),
        version: check_word("version", Some(request.version))?,
        ..new_deploy(&state, &caller, &headers, name, request.destination, request.reason)?
    };
    queue_deploy(&state, &caller, new, "POST /services/{name}/rollback").await
}

fn new_deploy(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    service: String,
    destination: Option<String>,
    reason: Option<String>,
) -> Result<NewDeploy, ApiError> {
    if !state.config.services.contains_key(&service) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, unknown_service(&state.config, &service)));
    }
    check_destination(state, &service, &destination)?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 200 => Some(format!("{}:{key}", caller.token.id)),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1 to 200 visible characters",
                ));
            }
        },
        None => None,
    };
    if reason.as_ref().is_some_and(|reason| reason.len() > 1000) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "reason is limited to 1000 characters"));
    }
    Ok(NewDeploy {
        service,
        destination,
        reason,
        requested_by: Some(caller.token.name.clone()),
        idempotency_key,
        ..NewDeploy::default()
    })
}

/// A version or ref: one word of printable characters, as a tag or git name is.
fn check_word(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.is_empty() || text.len() > 200 || !text.chars().all(|c| c.is_ascii_graphic()) => {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{field}` must be 1 to 200 printable characters without spaces"),
            ))
        }
        other => Ok(other),
    }
}

async fn queue_deploy(state: &AppState, caller: &Caller, new: NewDeploy, action: &str) -> Result<Response, ApiError> {
    let policy = state.config.services[&new.service].queue;
    // The request and its audit entry are stored together.
    let audit = DeployAudit {
        token_id: Some(caller.token.id),
        actor: &caller.token.name,
        action,
        status: StatusCode::ACCEPTED.as_u16(),
        remote_addr: caller.remote.as_deref(),
        target: |deploy| format!("deploy {} of {}", deploy.id, deploy.service),
    };
    let (deploy, created) = state.store.insert_deploy_audited(&new, policy, &audit).await?;
    if created {
        state.queue.wake();
    }
    let mut response = (StatusCode::ACCEPTED, Json(&deploy)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/deploys/{}", deploy.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn unknown_service(config: &DaemonConfig, name: &str) -> String {
    if config.services.is_empty() {
        format!("no service `{name}`: the daemon has none yet (add it under `services:` in berth.yml and restart)")
    } else {
        let known: Vec<&str> = config.services.keys().map(String::as_str).collect();
        format!("no service `{name}`; the daemon deploys {}", known.join(", "))
    }
}

/// Filters and page of the deploy list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployListQuery {
    /// Only this service's deploys.
    pub service: Option<String>,
    /// Only deploys in this state.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<i64>,
}

/// A page of deploys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeployPage {
    pub deploys: Vec<Deploy>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<i64>,
}

/// Lists deploys, newest first.
#[utoipa::path(get, path = "/deploys", params(DeployListQuery),
    responses((status = 200, body = DeployPage), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
async fn list_deploys(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DeployListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeployPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let service = query.service.or_else(|| caller.token.service.clone());
    caller.require(Scope::Read, service.as_deref())?;
    let state_filter = match query.state.as_deref() {
        None => None,
        Some(text) => Some(DeployState::parse(text).ok_or_else(|| {
            let states: Vec<&str> = DeployState::ALL.iter().map(|state| state.name()).collect();
            ApiError::new(StatusCode::BAD_REQUEST, format!("unknown state `{text}`; states are {}", states.join(", ")))
        })?),
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    // One more than asked: it tells whether another page follows.
    let filter = DeployFilter { service, state: state_filter, before: query.cursor, limit: limit + 1 };
    let mut deploys = state.store.list_deploys(&filter).await?;
    let more = deploys.len() as i64 > limit;
    deploys.truncate(limit as usize);
    let next_cursor = if more { deploys.last().map(|deploy| deploy.id) } else { None };
    Ok(Json(DeployPage { deploys, next_cursor }))
}

/// A deploy with its stages and their times on each host.
#[utoipa::path(get, path = "/deploys/{id}", params(("id" = i64, Path, description = "The deploy")),
    responses((status = 200, body = Deploy), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn get_deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deploy>, ApiError> {
    let deploy = find_deploy(&state, &id).await?;
    caller.require(Scope::Read, Some(&deploy.service))?;
    Ok(Json(deploy))
}

/// What the daemon told others about a deploy: each notification, GitHub status and Slack reply, with its
/// attempts and outcome.
#[utoipa::path(get, path = "/deploys/{id}/deliveries", params(("id" = i64, Path, description = "The deploy")),
    responses((status = 200, body = [Delivery]), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn deploy_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let deploy = find_deploy(&state, &id).await?;
    caller.require(Scope::Read, Some(&deploy.service))?;
    Ok(Json(state.store.deliveries_of(deploy.id).await?))
}

pub(super) async fn find_deploy(state: &AppState, id: &str) -> Result<Deploy, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no deploy `{id}` (see GET /deploys)"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    state.store.deploy(id).await?.ok_or_else(not_found)
}

/// The outcome of a cancel request.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAnswer {
    pub id: i64,
    /// `cancelled` when it was queued; `running` while a running deploy is being stopped and rolled back.
    pub state: DeployState,
    pub detail: String,
}

/// Cancels a deploy: a queued one at once; a running one is stopped, rolled back, then `cancelled`.
#[utoipa::path(post, path = "/deploys/{id}/cancel", params(("id" = i64, Path, description = "The deploy")),
    responses((status = 202, body = CancelAnswer), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, description = "It had ended already", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn cancel_deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let deploy = find_deploy(&state, &id).await?;
    caller.require(Scope::Deploy, Some(&deploy.service))?;
    let target = format!("deploy {} of {}", deploy.id, deploy.service);
    let answer = match state.queue.cancel(deploy.id).await? {
        Cancelled::Now => CancelAnswer { id: deploy.id, state: DeployState::Cancelled, detail: "cancelled before it started".into() },
        Cancelled::Stopping => CancelAnswer {
            id: deploy.id,
            state: DeployState::Running,
            detail: "stopping: what changes no host stops now, a boot step finishes, then what switched is rolled back and the lock released; follow GET /deploys/{id}".into(),
        },
        Cancelled::AlreadyEnded(ended) => {
            caller.audit(&state.store, "POST /deploys/{id}/cancel", Some(&target), StatusCode::CONFLICT).await;
            return Err(ApiError::new(StatusCode::CONFLICT, format!("deploy {} has ended already: {}", deploy.id, ended.name())));
        }
        Cancelled::NotFound => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no deploy `{id}`"))),
    };
    caller.audit(&state.store, "POST /deploys/{id}/cancel", Some(&target), StatusCode::ACCEPTED).await;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// A deploy's log: `text/plain` (every line so far), or `text/event-stream` (live, resumable).
///
/// As an event stream, each line is one event whose `id` is its sequence number (1, 2, 3 …); a reconnect with
/// `Last-Event-ID: N` gets lines N+1 onwards. When the deploy ends, one `end` event carries its final state,
/// then the stream closes. Comments keep the connection alive while nothing happens.
#[utoipa::path(get, path = "/deploys/{id}/logs", params(("id" = i64, Path, description = "The deploy"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this line")),
    responses((status = 200, description = "The log", content_type = "text/plain", body = String),
        (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn deploy_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let deploy = find_deploy(&state, &id).await?;
    caller.require(Scope::Read, Some(&deploy.service))?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_stream {
        let mut text = String::new();
        let mut after = 0;
        loop {
            let lines = state.store.lines_after(deploy.id, after, 10_000).await?;
            let Some((last, _)) = lines.last() else { break };
            after = *last;
            for (_, line) in &lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let stream = follow(state, deploy.id, after);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The lines after `after`, from the store then live, then the `end` event.
fn follow(state: AppState, id: i64, after: i64) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    struct Follower {
        state: AppState,
        id: i64,
        last: i64,
        live: broadcast::Receiver<LiveEvent>,
        backlog: std::collections::VecDeque<(i64, String)>,
        caught_up: bool,
        done: bool,
    }
    // Subscribed before the store is read: a line stored meanwhile is in one or the other (or both: skipped).
    let live = state.hub.subscribe(id);
    let follower =
        Follower { state, id, last: after, live, backlog: Default::default(), caught_up: false, done: false };
    futures_util::stream::unfold(follower, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if let Some((seq, line)) = f.backlog.pop_front() {
                f.last = seq;
                return Some((Ok(Event::default().id(seq.to_string()).data(line)), f));
            }
            if !f.caught_up {
                match f.state.store.lines_after(f.id, f.last, 1000).await {
                    Ok(lines) if !lines.is_empty() => {
                        f.backlog.extend(lines);
                        continue;
                    }
                    Ok(_) => f.caught_up = true,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
                // Stored lines all sent: if the deploy has ended, say so and close.
                if let Ok(Some(deploy)) = f.state.store.deploy(f.id).await
                    && deploy.state.is_final()
                {
                    f.done = true;
                    return Some((Ok(Event::default().event("end").data(deploy.state.name())), f));
                }
            }
            // On a shared store another daemon may run the deploy: its lines reach this daemon only through
            // the store, so an idle follower reads the store again (from its sequence number) every 250 ms.
            let received = if f.state.store.is_shared() {
                match tokio::time::timeout(Duration::from_millis(250), f.live.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        f.caught_up = false;
                        continue;
                    }
                }
            } else {
                f.live.recv().await
            };
            match received {
                Ok(LiveEvent::Line { seq, text }) if seq > f.last => {
                    f.last = seq;
                    return Some((Ok(Event::default().id(seq.to_string()).data(&*text)), f));
                }
                Ok(LiveEvent::Line { .. }) => {}
                Ok(LiveEvent::End(state)) => {
                    // Lines are published after they are stored, and the end after the last line.
                    f.done = true;
                    return Some((Ok(Event::default().event("end").data(state.name())), f));
                }
                // Fell behind the live channel, or it closed (the deploy ended): read the store again.
                Err(broadcast::error::RecvError::Lagged(_)) => f.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => {
                    f.caught_up = false;
                    f.live = f.state.hub.subscribe(f.id);
                    if let Ok(Some(deploy)) = f.state.store.deploy(f.id).await
                        && !deploy.state.is_final()
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------------------
// Services

/// A service's status badge: its last deploy's state and version (no token; `badges: false` in berth.yml
/// turns badges off).
#[utoipa::path(get, path = "/badges/{file}", params(("file" = String, Path, description = "SERVICE.svg")),
    responses((status = 200, description = "The badge", content_type = "image/svg+xml", body = String),
        (status = 404, body = Problem)))]
async fn service_badge(State(state): State<AppState>, Path(file): Path<String>) -> Result<Response, ApiError> {
    if !state.config.badges {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "badges are turned off (`badges: false` in berth.yml)"));
    }
    let service = file.strip_suffix(".svg").unwrap_or(&file);
    if !state.config.services.contains_key(service) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service `{service}` (badges are at /badges/SERVICE.svg)"),
        ));
    }
    let last = state.store.last_deploy(service).await?;
    let svg = super::badge::svg(service, last.as_ref().map(|deploy| (deploy.state, deploy.version.as_deref())));
    let headers = [
        (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
        // Badges are read through caches (GitHub's camo among them): say they go stale at once.
        (header::CACHE_CONTROL, "no-cache, max-age=0"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'"),
    ];
    Ok((headers, svg).into_response())
}

/// A service the daemon deploys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub repo: String,
    pub branch: String,
    pub destinations: Vec<String>,
    /// `latest` or `fifo`.
    pub queue: String,
    /// The service's newest deploy.
    pub last_deploy: Option<Deploy>,
    /// What runs on each host, per role (and destination), as the hosts answered.
    pub hosts: Vec<ServiceHost>,
    /// Why the hosts could not be read (the service's configuration could not be read, or they did not
    /// answer in time); `hosts` then lists what the last deploy left, as `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts_error: Option<String>,
}

/// A host of a service.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceHost {
    pub host: String,
    pub role: Option<String>,
    /// The destination the host belongs to (for a service with destinations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub version: Option<String>,
    /// `running`, `stopped` (no container of the role runs) or `unreachable`, as the host answered.
    pub state: String,
    /// Why the host did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which destination of a service.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DestinationQuery {
    /// One of the service's destinations (required when it has any).
    pub destination: Option<String>,
}

/// A maintenance request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub destination: Option<String>,
    /// What the proxy answers (503) while in maintenance.
    pub message: Option<String>,
    /// Seconds in-flight requests get to finish.
    pub drain_timeout: Option<u64>,
}

/// What a maintenance change did, per host (as the command line shows it).
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceAnswer {
    pub service: String,
    /// `maintenance` or `live`.
    pub mode: String,
    pub output: Vec<String>,
}

/// Checks a destination for a service: one of its own, and given when it has any.
fn check_destination(state: &AppState, service: &str, destination: &Option<String>) -> Result<(), ApiError> {
    let config = &state.config.services[service];
    match destination {
        None if !config.destinations.is_empty() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("service `{service}` has destinations: name one of {}", config.destinations.join(", ")),
        )),
        Some(destination) if !config.destinations.contains(destination) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`{destination}` is not a destination of `{service}`{}",
                if config.destinations.is_empty() {
                    " (it has none: leave `destination` out)".to_string()
                } else {
                    format!(" (it has {})", config.destinations.join(", "))
                }
            ),
        )),
        _ => Ok(()),
    }
}

/// Puts a service in maintenance: its proxies answer 503 with the message (deploy scope).
#[utoipa::path(post, path = "/services/{name}/maintenance", request_body = MaintenanceRequest,
    params(("name" = String, Path, description = "The service")),
    responses((status = 200, body = MaintenanceAnswer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 502, description = "The hosts could not be changed", body = Problem)),
    security(("bearer" = [])))]
async fn maintenance_on(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<MaintenanceRequest>, JsonRejection>,
) -> Result<Json<MaintenanceAnswer>, ApiError> {
    let Json(request) = body?;
    set_maintenance(state, caller, name, true, request).await
}

/// Takes a service out of maintenance (deploy scope).
#[utoipa::path(post, path = "/services/{name}/live", params(("name" = String, Path, description = "The service"), DestinationQuery),
    responses((status = 200, body = MaintenanceAnswer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 502, body = Problem)),
    security(("bearer" = [])))]
async fn maintenance_off(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DestinationQuery>,
) -> Result<Json<MaintenanceAnswer>, ApiError> {
    let request = MaintenanceRequest { destination: query.destination, ..MaintenanceRequest::default() };
    set_maintenance(state, caller, name, false, request).await
}

pub(super) async fn set_maintenance(
    state: AppState,
    caller: Caller,
    name: String,
    on: bool,
    request: MaintenanceRequest,
) -> Result<Json<MaintenanceAnswer>, ApiError> {
    if !state.config.services.contains_key(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, unknown_service(&state.config, &name)));
    }
    caller.require(Scope::Deploy, Some(&name))?;
    check_destination(&state, &name, &request.destination)?;
    let mode = if on { "maintenance" } else { "live" };
    let action = format!("POST /services/{{name}}/{mode}");
    let done = state.hosts.maintenance(&name, request.destination, on, request.message, request.drain_timeout).await;
    let status = if done.is_ok() { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
    caller.audit(&state.store, &action, Some(&name), status).await;
    let output =
        done.map_err(|error| ApiError::new(StatusCode::BAD_GATEWAY, format!("the hosts of `{name}`: {error}")))?;
    Ok(Json(MaintenanceAnswer { service: name, mode: mode.to_string(), output }))
}

/// The services the daemon deploys, with what each of their hosts runs (read from the hosts, every service
/// and destination at once; a read at most 15 s old is reused unless one of the service's deploys changed
/// state since).
#[utoipa::path(get, path = "/services",
    responses((status = 200, body = [ServiceSummary]), (status = 401, body = Problem)), security(("bearer" = [])))]
async fn list_services(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ServiceSummary>>, ApiError> {
    Ok(Json(services(&state, &caller).await?))
}

/// The services the caller may see, with what their hosts run (`GET /services` and the dashboard).
pub(super) async fn services(state: &AppState, caller: &Caller) -> Result<Vec<ServiceSummary>, ApiError> {
    caller.require(Scope::Read, caller.token.service.clone().as_deref())?;
    let names = state
        .config
        .services
        .keys()
        .filter(|name| caller.token.service.as_ref().is_none_or(|only| only == *name))
        .cloned()
        .collect::<Vec<_>>();
    let summaries = futures_util::future::join_all(names.iter().map(|name| async {
        let mut summary = service_summary(state, name).await?;
        let deploys_seen =
            summary.last_deploy.as_ref().map_or(String::new(), |last| format!("{} {}", last.id, last.state.name()));
        let destinations = match summary.destinations.as_slice() {
            [] => vec![None],
            some => some.iter().cloned().map(Some).collect(),
        };
        let reads = futures_util::future::join_all(
            destinations
                .iter()
                .map(|destination| state.hosts.recent_status(name, destination.clone(), deploys_seen.clone())),
        )
        .await;
        let last_hosts = std::mem::take(&mut summary.hosts);
        for (destination, read) in destinations.into_iter().zip(reads) {
            match read {
                Ok(hosts) => summary.hosts.extend(hosts.into_iter().map(|host| live_host(host, destination.clone()))),
                Err(error) => {
                    // What the last deploy left, marked as not read now, and why.
                    summary.hosts.extend(last_hosts.iter().map(|host| ServiceHost {
                        host: host.host.clone(),
                        role: None,
                        destination: destination.clone(),
                        version: host.version.clone(),
                        state: "unreachable".to_string(),
                        error: Some(error.clone()),
                    }));
                    summary.hosts_error.get_or_insert(error);
                }
            }
        }
        Ok::<_, ApiError>(summary)
    }))
    .await;
    summaries.into_iter().collect::<Result<Vec<_>, _>>()
}

fn live_host(host: super::hosts::HostStatus, destination: Option<String>) -> ServiceHost {
    ServiceHost {
        host: host.host,
        role: Some(host.role),
        destination,
        version: host.version,
        state: host.state,
        error: host.error,
    }
}

/// One service, with what each of its hosts runs now (read from the hosts over SSH).
#[utoipa::path(get, path = "/services/{name}", params(("name" = String, Path, description = "The service"), DestinationQuery),
    responses((status = 200, body = ServiceSummary), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 502, description = "The service's configuration could not be read", body = Problem)),
    security(("bearer" = [])))]
async fn get_service(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DestinationQuery>,
) -> Result<Json<ServiceSummary>, ApiError> {
    if !state.config.services.contains_key(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, unknown_service(&state.config, &name)));
    }
    caller.require(Scope::Read, Some(&name))?;
    check_destination(&state, &name, &query.destination)?;
    let mut summary = service_summary(&state, &name).await?;
    let hosts =
        state.hosts.status(&name, query.destination.clone()).await.map_err(|error| {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("reading the hosts of `{name}`: {error}"))
        })?;
    summary.hosts = hosts.into_iter().map(|host| live_host(host, query.destination.clone())).collect();
    Ok(Json(summary))
}

async fn service_summary(state: &AppState, name: &str) -> Result<ServiceSummary, ApiError> {
    let config = &state.config.services[name];
    let last_deploy = state.store.last_deploy(name).await?;
    let mut hosts = Vec::new();
    if let Some(last) = &last_deploy
        && let Some(full) = state.store.deploy(last.id).await?
        && let Some(boot) = full.stages.iter().find(|stage| stage.name == "boot")
    {
        for host in &boot.hosts {
            hosts.push(ServiceHost {
                host: host.host.clone(),
                role: None,
                destination: full.destination.clone(),
                version: full.version.clone(),
                state: full.state.name().to_string(),
                error: None,
            });
        }
    }
    Ok(ServiceSummary {
        name: name.to_string(),
        repo: config.repo.clone(),
        branch: config.branch.clone(),
        destinations: config.destinations.clone(),
        queue: config.queue.name().to_string(),
        last_deploy,
        hosts,
        hosts_error: None,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Audit, health, metrics

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<i64>,
}

/// Who asked for what, when and from where (admin scope).
#[utoipa::path(get, path = "/audit", params(("cursor" = Option<i64>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100)")),
    responses((status = 200, body = AuditPage), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let number = |key: &str| -> Result<Option<i64>, ApiError> {
        query
            .get(key)
            .map(|value| {
                value.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("`{key}` must be a number")))
            })
            .transpose()
    };
    let limit = number("limit")?.unwrap_or(100).clamp(1, 1000);
    let mut entries = state.store.list_audit(number("cursor")?, limit + 1).await?;
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    let next_cursor = if more { entries.last().map(|entry| entry.id) } else { None };
    Ok(Json(AuditPage { entries, next_cursor }))
}

/// The daemon's health (no token needed).
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the database does not answer.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// Deploys running in this daemon.
    pub running: usize,
    pub database: String,
    /// This daemon's name (`instance:` in berth.yml, `--instance`): the `runner` of the deploys it runs.
    pub instance: String,
}

/// Whether the daemon is up and its database answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn healthz(State(state): State<AppState>) -> Response {
    let database = match state.store.running_count().await {
        Ok(_) => "ok".to_string(),
        Err(error) => error.to_string(),
    };
    let healthy = database == "ok";
    let health = Health {
        status: if healthy { "ok" } else { "degraded" }.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: state.started.elapsed().as_secs(),
        running: state.queue.running_ids().len(),
        database,
        instance: state.config.instance.clone(),
    };
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health)).into_response()
}

/// Prometheus metrics: deploys by state, stage durations, queue depth.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = Problem)),
    security(("bearer" = [])))]
async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::Read, None)?;
    let mut text = String::new();
    text.push_str("# HELP berth_deploys Deploys by state.\n# TYPE berth_deploys gauge\n");
    let counts: HashMap<DeployState, i64> = state.store.deploys_by_state().await?.into_iter().collect();
    for deploy_state in DeployState::ALL {
        let count = counts.get(&deploy_state).copied().unwrap_or(0);
        text.push_str(&format!("berth_deploys{{state=\"{}\"}} {count}\n", deploy_state.name()));
    }
    text.push_str("# HELP berth_queue_depth Deploys waiting to run.\n# TYPE berth_queue_depth gauge\n");
    text.push_str(&format!("berth_queue_depth {}\n", counts.get(&DeployState::Queued).copied().unwrap_or(0)));
    text.push_str(
        "# HELP berth_stage_duration_seconds Time spent in each deploy stage.\n# TYPE berth_stage_duration_seconds summary\n",
    );
    for (stage, count, seconds) in state.store.stage_durations().await? {
        text.push_str(&format!("berth_stage_duration_seconds_sum{{stage=\"{stage}\"}} {seconds:.3}\n"));
        text.push_str(&format!("berth_stage_duration_seconds_count{{stage=\"{stage}\"}} {count}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

// ---------------------------------------------------------------------------------------------------------
// The spec

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "berth", description = "The berth deploy daemon: queue deploys, follow them live, see what runs where."),
    paths(maintenance_on, maintenance_off, create_deploy, list_deploys, get_deploy, cancel_deploy, deploy_deliveries, deploy_logs, list_services, get_service,
          rollback_service, list_audit, healthz, metrics, service_badge, webhooks::github_webhook, chatops::slack_command),
    components(schemas(MaintenanceRequest, MaintenanceAnswer, Deploy, DeployRequest, RollbackRequest, DeployPage, CancelAnswer, ServiceSummary, ServiceHost,
                       AuditPage, Health, Problem, Delivery, webhooks::WebhookAnswer, webhooks::WebhookOutcome)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from `berth token create --scope read|deploy|admin [--service NAME]`"))
                    .build(),
            ),
        );
    }
}

/// The spec as committed under `openapi/` (pretty JSON, one trailing newline).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("the spec serialises");
    text.push('\n');
    text
}
