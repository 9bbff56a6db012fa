//! The web dashboard at `/` and `/ui/`: server-rendered pages ([`pages`]) over the same calls the JSON API
//! makes, a session kept in an HttpOnly cookie, CSRF-checked forms ([`forms`]) and a little script and CSS
//! built into the binary. The page script polls the JSON API and follows logs over SSE with the session
//! cookie, which the API accepts for GET and HEAD only; whatever changes something goes through a form here.

mod forms;
mod pages;

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub(super) use forms::session_cookie;

use super::api::{self, ApiError, AppState, Caller, DeployRequest, MaintenanceRequest, RollbackRequest};
use super::auth;
use super::model::{Deploy, Scope};
use super::store::{DeployFilter, NewAudit, StoreError};
use forms::Form;
use pages::Viewer;

/// The dashboard's routes, with its own body limit, timeout and security headers (the API's problem+json
/// layers do not apply: these answer in HTML).
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { see_other("/ui/") }))
        .route("/ui", get(|| async { see_other("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/services/{name}", get(service_page))
        .route("/ui/services/{name}/rollback", post(rollback))
        .route("/ui/services/{name}/maintenance", post(maintenance_on))
        .route("/ui/services/{name}/live", post(maintenance_off))
        .route("/ui/deploys", get(deploys_page).post(deploy))
        .route("/ui/deploys/{id}", get(deploy_page))
        .route("/ui/deploys/{id}/cancel", post(cancel))
        .route("/ui/audit", get(audit_page))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/{*rest}", get(not_found))
        // Reading the hosts of every service may take up to its own 30 s limit: a little more here.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(45),
        ))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(api::MAX_BODY))
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::map_response(security_headers))
}

/// Every dashboard answer: scripts and styles from the daemon only (none inline), never framed, no
/// referrer sent elsewhere.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Refuses a state-changing request whose `Origin` is another site's (a second line behind the CSRF field and
/// SameSite cookie; browsers send `Origin` with every POST). The daemon's host is the request's `Host`, or the
/// `X-Forwarded-Host` a proxy in front sets (a page on another site cannot set that header on a form post).
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let headers = request.headers();
        let mut hosts: Vec<String> = [header::HOST.as_str(), "x-forwarded-host"]
            .into_iter()
            .filter_map(|name| headers.get(name).and_then(|value| value.to_str().ok()))
            .map(|value| value.split(',').next().unwrap_or_default().trim().to_string())
            .collect();
        hosts.extend(request.uri().authority().map(|authority| authority.as_str().to_string()));
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !hosts.iter().any(|host| forms::same_origin(origin, host)) {
                return DashboardError::page(
                    StatusCode::FORBIDDEN,
                    "this form was sent from another site (its Origin is not this daemon); use the dashboard itself",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

// ---------------------------------------------------------------------------------------------------------
// Errors and sessions

/// What a dashboard request ends with when it does not succeed: the sign-in page, or an error page.
#[derive(Debug)]
pub(super) enum DashboardError {
    /// No session: a page is redirected to the sign-in form (and back after); a form post gets the sign-in
    /// page (401). `message` says why when a session was there but is no longer valid.
    SignIn { next: String, redirect: bool, message: Option<&'static str> },
    /// An error page with its status.
    Page { status: StatusCode, message: String },
}

impl DashboardError {
    fn page(status: StatusCode, message: impl Into<String>) -> DashboardError {
        DashboardError::Page { status, message: message.into() }
    }
}

impl From<ApiError> for DashboardError {
    fn from(error: ApiError) -> DashboardError {
        DashboardError::Page { status: error.status, message: error.detail }
    }
}

impl From<StoreError> for DashboardError {
    fn from(error: StoreError) -> DashboardError {
        ApiError::from(error).into()
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        match self {
            DashboardError::SignIn { next, redirect: true, .. } => {
                see_other(&format!("/ui/sign-in?next={}", forms::url_encode(&next)))
            }
            DashboardError::SignIn { next, redirect: false, message } => {
                let message = message.unwrap_or("sign in first");
                let mut response =
                    html(StatusCode::UNAUTHORIZED, pages::sign_in(Some(message), &forms::safe_next(Some(&next))));
                set_cookie(&mut response, &forms::session_clear_cookie());
                response
            }
            DashboardError::Page { status, message } => {
                let title = status.canonical_reason().unwrap_or("Error");
                html(status, pages::error(None, status.as_u16(), title, &message))
            }
        }
    }
}

/// A signed-in browser: the caller as the API sees it, and the session's token (for the CSRF field).
struct Session {
    caller: Caller,
    token: String,
    csrf: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = DashboardError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, DashboardError> {
        let page = parts.method == Method::GET || parts.method == Method::HEAD;
        // After signing in, back to the page asked for; a form's target is no page to return to.
        let next = match parts.uri.path_and_query() {
            Some(path) if page => path.as_str().to_string(),
            _ => "/ui/".to_string(),
        };
        let Some(token) = session_cookie(&parts.headers).map(str::to_string) else {
            return Err(DashboardError::SignIn { next, redirect: page, message: None });
        };
        let remote = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip().to_string());
        match state.store.token_by_hash(&auth::hash(&token)).await? {
            Some(info) => {
                Ok(Session { caller: Caller { token: info, remote }, csrf: forms::csrf_token(&token), token })
            }
            None => Err(DashboardError::SignIn {
                next,
                redirect: false,
                message: Some("this session's token is unknown or was revoked: sign in again"),
            }),
        }
    }
}

impl Session {
    fn viewer(&self) -> Viewer<'_> {
        Viewer { token: &self.caller.token, csrf: &self.csrf }
    }

    /// A posted form, once its CSRF field is the session's (403 and nothing done otherwise).
    fn form(&self, body: &[u8]) -> Result<Form, DashboardError> {
        let form = Form::parse(body);
        if !forms::csrf_matches(&self.token, form.get(forms::CSRF_FIELD)) {
            return Err(DashboardError::page(
                StatusCode::FORBIDDEN,
                "this form's CSRF field is missing or is not this session's: reload the page and try again",
            ));
        }
        Ok(form)
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Pages hold the session's CSRF field: never kept by caches.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Signing in and out

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn sign_in_page(Query(query): Query<NextQuery>) -> Response {
    html(StatusCode::OK, pages::sign_in(None, &forms::safe_next(query.next.as_deref())))
}

/// Checks the token as the API would and keeps it in the session cookie.
async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DashboardError> {
    let form = Form::parse(&body);
    let next = forms::safe_next(form.get("next"));
    let refuse = |message: &str| html(StatusCode::UNAUTHORIZED, pages::sign_in(Some(message), &next));
    let Some(token) = form.get("token") else {
        return Ok(refuse("paste a token (create one with `berth token create --scope read|deploy|admin`)"));
    };
    let known = if forms::cookie_safe(token) { state.store.token_by_hash(&auth::hash(token)).await? } else { None };
    let Some(info) = known else {
        return Ok(refuse("unknown or revoked token: check it, or create one with `berth token create`"));
    };
    let remote = remote.ip().to_string();
    let entry = NewAudit {
        token_id: Some(info.id),
        actor: &info.name,
        action: "POST /ui/sign-in",
        target: None,
        status: StatusCode::SEE_OTHER.as_u16(),
        remote_addr: Some(&remote),
    };
    // Signing in happened whether or not its audit line could be stored.
    let _ = state.store.audit(&entry).await;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let mut response = see_other(&next);
    set_cookie(&mut response, &forms::session_set_cookie(token, https));
    Ok(response)
}

async fn sign_out(session: Session, body: Bytes) -> Result<Response, DashboardError> {
    session.form(&body)?;
    let mut response = see_other("/ui/sign-in");
    set_cookie(&mut response, &forms::session_clear_cookie());
    Ok(response)
}

// ---------------------------------------------------------------------------------------------------------
// Pages

/// The caller's latest deploys (of one service, or of the one its token is limited to).
async fn latest_deploys(
    state: &AppState,
    session: &Session,
    service: Option<String>,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Deploy>, Option<i64>), DashboardError> {
    let service = service.or_else(|| session.caller.token.service.clone());
    session.caller.require(Scope::Read, service.as_deref())?;
    let filter = DeployFilter { service, state: None, before, limit: limit + 1 };
    let mut deploys = state.store.list_deploys(&filter).await?;
    let more = deploys.len() as i64 > limit;
    deploys.truncate(limit as usize);
    let next = if more { deploys.last().map(|deploy| deploy.id) } else { None };
    Ok((deploys, next))
}

async fn overview(State(state): State<AppState>, session: Session) -> Result<Response, DashboardError> {
    let services = api::services(&state, &session.caller).await?;
    let (deploys, _) = latest_deploys(&state, &session, None, None, 20).await?;
    Ok(html(StatusCode::OK, pages::overview(&session.viewer(), &services, &deploys)))
}

#[derive(Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn service_page(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, DashboardError> {
    let services = api::services(&state, &session.caller).await?;
    let Some(service) = services.iter().find(|service| service.name == name) else {
        return Err(DashboardError::page(
            StatusCode::NOT_FOUND,
            format!("no service `{name}` (or not for this token)"),
        ));
    };
    let (deploys, _) = latest_deploys(&state, &session, Some(name.clone()), None, 20).await?;
    let nonce = auth::new_token()["berth_".len()..][..32].to_string();
    let notice = query.notice.as_deref().and_then(pages::notice);
    Ok(html(StatusCode::OK, pages::service(&session.viewer(), service, &deploys, &nonce, notice)))
}

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<i64>,
}

async fn deploys_page(
    State(state): State<AppState>,
    session: Session,
    query: Result<Query<CursorQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DashboardError> {
    let cursor = query.ok().and_then(|Query(query)| query.cursor);
    let (deploys, next) = latest_deploys(&state, &session, None, cursor, 50).await?;
    Ok(html(StatusCode::OK, pages::deploys(&session.viewer(), &deploys, next)))
}

async fn deploy_page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, DashboardError> {
    let deploy = api::find_deploy(&state, &id).await?;
    session.caller.require(Scope::Read, Some(&deploy.service))?;
    Ok(html(StatusCode::OK, pages::deploy(&session.viewer(), &deploy)))
}

async fn audit_page(
    State(state): State<AppState>,
    session: Session,
    query: Result<Query<CursorQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DashboardError> {
    session.caller.require(Scope::Admin, None)?;
    let cursor = query.ok().and_then(|Query(query)| query.cursor);
    let mut entries = state.store.list_audit(cursor, 101).await?;
    let more = entries.len() > 100;
    entries.truncate(100);
    let next = if more { entries.last().map(|entry| entry.id) } else { None };
    Ok(html(StatusCode::OK, pages::audit(&session.viewer(), &entries, next)))
}

async fn not_found(session: Session) -> Response {
    html(StatusCode::NOT_FOUND, pages::error(Some(&session.viewer()), 404, "Not Found", "no such page"))
}

// ---------------------------------------------------------------------------------------------------------
// Actions: the API's own handlers (scope checks, queue, store, hosts, audit), then 303 to the page to watch.

/// The idempotency key of a deploy form: the page's nonce and what was asked, so a double submission is one
/// deploy while the same page sent again with other values is another.
fn idempotency(form: &Form, fields: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(nonce) = form.get("nonce") {
        let asked: Vec<&str> = fields.iter().map(|field| form.get(field).unwrap_or_default()).collect();
        let key = format!("ui-{}", &auth::hash(&format!("{nonce}\n{}", asked.join("\n")))[..32]);
        if let Ok(value) = HeaderValue::from_str(&key) {
            headers.insert("idempotency-key", value);
        }
    }
    headers
}

/// The dashboard page of the deploy an API answer (202, `Location: /deploys/ID`) made.
fn to_deploy_page(answer: &Response) -> Response {
    let location = answer.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()).unwrap_or("/deploys");
    see_other(&format!("/ui{location}"))
}

async fn deploy(State(state): State<AppState>, session: Session, body: Bytes) -> Result<Response, DashboardError> {
    let form = session.form(&body)?;
    let headers = idempotency(&form, &["service", "destination", "version", "ref", "reason"]);
    let request = DeployRequest {
        service: form.string("service").unwrap_or_default(),
        destination: form.string("destination"),
        version: form.string("version"),
        git_ref: form.string("ref"),
        reason: form.string("reason"),
    };
    let answer = api::create_deploy(State(state), session.caller, headers, Ok(Json(request))).await?;
    Ok(to_deploy_page(&answer))
}

async fn rollback(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashboardError> {
    let form = session.form(&body)?;
    let headers = idempotency(&form, &["destination", "version", "reason"]);
    let Some(version) = form.string("version") else {
        return Err(DashboardError::page(StatusCode::BAD_REQUEST, "name the version to roll back to"));
    };
    let request = RollbackRequest { version, destination: form.string("destination"), reason: form.string("reason") };
    let answer = api::rollback_service(State(state), session.caller, headers, Path(name), Ok(Json(request))).await?;
    Ok(to_deploy_page(&answer))
}

async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, DashboardError> {
    session.form(&body)?;
    api::cancel_deploy(State(state), session.caller, Path(id.clone())).await?;
    Ok(see_other(&format!("/ui/deploys/{}", forms::url_encode(&id))))
}

async fn maintenance_on(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashboardError> {
    set_maintenance(state, session, name, true, body).await
}

async fn maintenance_off(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashboardError> {
    set_maintenance(state, session, name, false, body).await
}

async fn set_maintenance(
    state: AppState,
    session: Session,
    name: String,
    on: bool,
    body: Bytes,
) -> Result<Response, DashboardError> {
    let form = session.form(&body)?;
    let request = MaintenanceRequest {
        destination: form.string("destination"),
        message: if on { form.string("message") } else { None },
        drain_timeout: None,
    };
    // What each host printed is the JSON API's answer; the page says what changed.
    let _output = api::set_maintenance(state, session.caller, name.clone(), on, request).await?;
    let notice = if on { "maintenance" } else { "live" };
    Ok(see_other(&format!("/ui/services/{}?notice={notice}", forms::url_encode(&name))))
}

// ---------------------------------------------------------------------------------------------------------
// Assets

const APP_JS: &str = include_str!("dashboard/assets/app.js");
const APP_CSS: &str = include_str!("dashboard/assets/app.css");

/// Each asset's ETag: browsers revalidate (`no-cache`) and get 304 until the binary changes.
static ETAGS: LazyLock<[String; 2]> =
    LazyLock::new(|| [APP_JS, APP_CSS].map(|text| format!("\"{}\"", &auth::hash(text)[..16])));

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let (text, etag, content_type) = match file.as_str() {
        "app.js" => (APP_JS, &ETAGS[0], "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, &ETAGS[1], "text/css; charset=utf-8"),
        _ => return DashboardError::page(StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|value| value.as_bytes() == etag.as_bytes());
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { text.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    response
}
