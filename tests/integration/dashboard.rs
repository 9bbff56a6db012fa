//! The dashboard (`/`, `/ui/`) from the outside: on a port-0 daemon (`daemon.rs`'s `App`), its sign-in,
//! session cookie, CSRF and Origin checks, scopes and escaping, read as a browser would get them; then a real
//! headless Chromium, driven over WebDriver, against a daemon deploying to a real bench host.

use berth::daemon::model::Scope;
use http::StatusCode;

use crate::daemon::{Answer, App, ONE_SERVICE};

mod browser;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Signs in with `token` through the form; the session cookie to send back (`berth_session=…`).
async fn sign_in(app: &App, token: &str) -> String {
    let answer =
        app.request_with("POST", "/ui/sign-in", None, Some(format!("token={token}").as_bytes()), &[FORM]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = answer.headers["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn get(app: &App, path: &str, cookie: &str) -> Answer {
    app.request_with("GET", path, None, None, &[("cookie", cookie)]).await
}

async fn post(app: &App, path: &str, cookie: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![FORM, ("cookie", cookie)];
    headers.extend_from_slice(extra);
    app.request_with("POST", path, None, Some(body.as_bytes()), &headers).await
}

/// The CSRF field a page's forms carry.
fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF field") + "name=\"csrf\" value=\"".len();
    page[start..][..64].to_string()
}

async fn deploy_count(app: &App, admin: &str) -> usize {
    app.request("GET", "/deploys", Some(admin), None).await.json()["deploys"].as_array().unwrap().len()
}

fn assert_secure_headers(answer: &Answer) {
    let header = |name: &str| answer.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(header("content-security-policy").starts_with("default-src 'self'"), "{:?}", answer.headers);
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "same-origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_keeps_the_token_in_an_http_only_cookie_and_a_wrong_token_gets_the_form_again() {
    let app = App::spawn(ONE_SERVICE).await;
    let read = app.token(Scope::Read, None).await;

    let root = app.request("GET", "/", None, None).await;
    assert_eq!((root.status, root.headers["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/"));
    let overview = app.request("GET", "/ui/", None, None).await;
    assert_eq!(overview.status, StatusCode::SEE_OTHER);
    assert_eq!(overview.headers["location"], "/ui/sign-in?next=%2Fui%2F");
    let deploy_page = app.request("GET", "/ui/deploys/3", None, None).await;
    assert_eq!(deploy_page.headers["location"], "/ui/sign-in?next=%2Fui%2Fdeploys%2F3");
    let form = app.request("GET", "/ui/sign-in?next=/ui/deploys/3", None, None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert_eq!(form.headers["content-type"], "text/html; charset=utf-8");
    assert!(form.body.contains("name=\"token\"") && form.body.contains("value=\"/ui/deploys/3\""), "{}", form.body);
    assert!(form.body.contains("name=\"viewport\""), "usable on a phone");
    assert_secure_headers(&form);

    let wrong = app.request_with("POST", "/ui/sign-in", None, Some(b"token=berth_nope"), &[FORM]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("unknown or revoked token") && wrong.body.contains("name=\"token\""), "{}", wrong.body);
    assert!(wrong.headers.get("set-cookie").is_none());
    let empty = app.request_with("POST", "/ui/sign-in", None, Some(b"token="), &[FORM]).await;
    assert_eq!(empty.status, StatusCode::UNAUTHORIZED);

    let body = format!("token={read}&next=%2Fui%2Fdeploys");
    let signed = app.request_with("POST", "/ui/sign-in", None, Some(body.as_bytes()), &[FORM]).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    assert_eq!(signed.headers["location"], "/ui/deploys");
    let cookie = signed.headers["set-cookie"].to_str().unwrap();
    assert_eq!(cookie, format!("berth_session={read}; HttpOnly; SameSite=Strict; Path=/"));
    let secure = app
        .request_with("POST", "/ui/sign-in", None, Some(body.as_bytes()), &[FORM, ("x-forwarded-proto", "https")])
        .await;
    assert!(secure.headers["set-cookie"].to_str().unwrap().ends_with("; Secure"));
    // Only the daemon's own pages are returned to.
    let body = format!("token={read}&next=%2F%2Fevil.example%2Fui%2F");
    let elsewhere = app.request_with("POST", "/ui/sign-in", None, Some(body.as_bytes()), &[FORM]).await;
    assert_eq!(elsewhere.headers["location"], "/ui/");

    let session = format!("berth_session={read}");
    let page = get(&app, "/ui/", &session).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("href=\"/ui/services/app\""), "{}", page.body);
    assert_secure_headers(&page);
    assert_eq!(page.headers["cache-control"], "no-store");
    // The JSON API takes the cookie for reads (the page script polls it) and never for changes.
    let polled = get(&app, "/deploys", &session).await;
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.body);
    let posted = app
        .request_with("POST", "/deploys", None, Some(br#"{"service":"app"}"#), &[("cookie", session.as_str())])
        .await;
    posted.assert_problem(StatusCode::UNAUTHORIZED, "Authorization: Bearer");

    // Signing out clears the cookie; a cookie whose token is unknown gets the sign-in form and is cleared.
    let out = post(&app, "/ui/sign-out", &session, &format!("csrf={}", csrf_of(&page.body)), &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers["set-cookie"].to_str().unwrap().starts_with("berth_session=; Max-Age=0"));
    let stale = get(&app, "/ui/", "berth_session=berth_revoked").await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    assert!(stale.body.contains("sign in again"), "{}", stale.body);
    assert!(stale.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));

    // The assets are built in, revalidated by ETag.
    for (path, kind) in [("/ui/assets/app.js", "text/javascript"), ("/ui/assets/app.css", "text/css")] {
        let asset = app.request("GET", path, None, None).await;
        assert_eq!(asset.status, StatusCode::OK);
        assert!(asset.headers["content-type"].to_str().unwrap().starts_with(kind));
        let etag = asset.headers["etag"].to_str().unwrap().to_string();
        let again = app.request_with("GET", path, None, None, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    }
    // The dashboard is not part of the API's spec.
    let spec = app.request("GET", "/openapi.json", None, None).await.json();
    assert!(spec["paths"].as_object().unwrap().keys().all(|path| !path.starts_with("/ui")), "{spec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_without_csrf_from_another_origin_or_beyond_the_scope_are_refused_and_queue_nothing() {
    let app = App::spawn(ONE_SERVICE).await;
    let admin = app.token(Scope::Admin, None).await;
    let deployer = sign_in(&app, &app.token(Scope::Deploy, None).await).await;
    let reader = sign_in(&app, &app.token(Scope::Read, None).await).await;
    let page = get(&app, "/ui/services/app", &deployer).await;
    assert!(page.body.contains("class=\"card stack deploy-form\""), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let reader_page = get(&app, "/ui/services/app", &reader).await;
    assert_eq!(reader_page.status, StatusCode::OK);
    assert!(!reader_page.body.contains("deploy-form") && !reader_page.body.contains("rollback-form"));
    assert!(!reader_page.body.contains("maintenance-form"));
    let reader_csrf = csrf_of(&reader_page.body);
    let origin = ("origin", "http://berth.test");

    let no_csrf = post(&app, "/ui/deploys", &deployer, "service=app&version=v1", &[origin]).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    assert!(no_csrf.body.contains("CSRF"), "{}", no_csrf.body);
    assert_secure_headers(&no_csrf);
    let wrong_csrf = format!("service=app&version=v1&csrf={reader_csrf}");
    assert_eq!(post(&app, "/ui/deploys", &deployer, &wrong_csrf, &[origin]).await.status, StatusCode::FORBIDDEN);
    let good = format!("service=app&version=v1&csrf={csrf}&nonce=n1");
    let cross = post(&app, "/ui/deploys", &deployer, &good, &[("origin", "http://evil.example")]).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(cross.body.contains("another site"), "{}", cross.body);
    let null = post(&app, "/ui/deploys", &deployer, &good, &[("origin", "null")]).await;
    assert_eq!(null.status, StatusCode::FORBIDDEN);
    let proxied = [("origin", "https://evil.example"), ("x-forwarded-host", "berth.example")];
    assert_eq!(post(&app, "/ui/deploys", &deployer, &good, &proxied).await.status, StatusCode::FORBIDDEN);
    let read_only = format!("service=app&version=v1&csrf={reader_csrf}");
    let refused = post(&app, "/ui/deploys", &reader, &read_only, &[origin]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("needs `deploy`"), "{}", refused.body);
    for path in ["/ui/services/app/rollback", "/ui/services/app/maintenance", "/ui/services/app/live"] {
        let body = format!("version=v1&csrf={reader_csrf}");
        assert_eq!(post(&app, path, &reader, &body, &[origin]).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    let anonymous = post(&app, "/ui/deploys", "", &good, &[origin]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(deploy_count(&app, &admin).await, 0, "nothing was queued");
    let audit = app.request("GET", "/audit", Some(&admin), None).await.json();
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.iter().all(|action| *action == "POST /ui/sign-in"), "{actions:?}");

    // The same form, rightly sent: queued through the API's own path (audit included), then its page; sent
    // twice (a double click), one deploy.
    let queued = post(&app, "/ui/deploys", &deployer, &good, &[origin]).await;
    assert_eq!(queued.status, StatusCode::SEE_OTHER, "{}", queued.body);
    let location = queued.headers["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/ui/deploys/"), "{location}");
    // Behind a proxy that sends its own Host, the public host it was asked for counts.
    let proxied = [("origin", "https://berth.example"), ("x-forwarded-host", "berth.example")];
    let via_proxy = post(&app, "/ui/deploys", &deployer, &good, &proxied).await;
    assert_eq!(via_proxy.headers["location"].to_str().unwrap(), location, "the same form again: the same deploy");
    let again = post(&app, "/ui/deploys", &deployer, &good, &[]).await;
    assert_eq!(again.headers["location"].to_str().unwrap(), location, "no Origin (an older browser): CSRF suffices");
    assert_eq!(deploy_count(&app, &admin).await, 1);
    let audit = app.request("GET", "/audit", Some(&admin), None).await.json();
    assert_eq!(audit["entries"][0]["action"], "POST /deploys");
    assert_eq!(audit["entries"][0]["actor"], "test-deploy");
    let page = get(&app, &location, &deployer).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("data-deploy-id=") && page.body.contains("id=\"log\""), "{}", page.body);
    // An admin sees the audit page; a deployer is refused it.
    let admin_session = sign_in(&app, &admin).await;
    let audit_page = get(&app, "/ui/audit", &admin_session).await;
    assert_eq!(audit_page.status, StatusCode::OK);
    assert!(audit_page.body.contains("POST /deploys"));
    assert_eq!(get(&app, "/ui/audit", &deployer).await.status, StatusCode::FORBIDDEN);
    // Errors of the API's checks come back as pages.
    let body = format!("service=app&version=v1&ref=main&csrf={csrf}");
    let both = post(&app, "/ui/deploys", &deployer, &body, &[origin]).await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    assert!(both.body.contains("not both") && both.headers["content-type"] == "text/html; charset=utf-8");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_escape_hostile_input() {
    let app = App::spawn(ONE_SERVICE).await;
    let admin = app.token(Scope::Admin, None).await;
    let body = serde_json::json!({
        "service": "app",
        "version": "\"><img/src=x/onerror=alert(1)>",
        "reason": "<script>alert('reason')</script> & more",
    });
    let answer = app.request("POST", "/deploys", Some(&admin), Some(body.to_string().as_bytes())).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.json()["id"].as_i64().unwrap();
    let session = sign_in(&app, &admin).await;
    for path in [format!("/ui/deploys/{id}"), "/ui/".into(), "/ui/services/app".into(), "/ui/deploys".into()] {
        let page = get(&app, &path, &session).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
        assert!(!page.body.contains("alert('reason')"), "{path}: {}", page.body);
        assert!(page.body.contains("&quot;&gt;&lt;img/src=x/onerror=alert(1)&gt;"), "{path}: {}", page.body);
        assert_eq!(page.body.matches("<script").count(), 1, "only the page's own script: {path}");
    }
    let page = get(&app, &format!("/ui/deploys/{id}"), &session).await;
    assert!(page.body.contains("&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt; &amp; more"), "{}", page.body);
    // A path that is not a deploy is a page, not an echo of the path.
    let odd = get(&app, "/ui/deploys/%3Cb%3Ex", &session).await;
    assert_eq!(odd.status, StatusCode::NOT_FOUND);
    assert!(!odd.body.contains("<b>"), "{}", odd.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_with_destinations_asks_for_one() {
    let app = App::spawn(
        "services:\n  app:\n    repo: app\n    secrets: secrets/app\n    destinations: [staging, production]\n",
    )
    .await;
    let admin = app.token(Scope::Admin, None).await;
    let session = sign_in(&app, &app.token(Scope::Deploy, None).await).await;
    let page = get(&app, "/ui/services/app", &session).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let chooser = "<select name=\"destination\" required><option value=\"staging\">staging</option>\
                   <option value=\"production\">production</option></select>";
    assert_eq!(page.body.matches(chooser).count(), 4, "deploy, rollback, maintenance, live: {}", page.body);
    let csrf = csrf_of(&page.body);
    let without = post(&app, "/ui/deploys", &session, &format!("service=app&version=v1&csrf={csrf}"), &[]).await;
    assert_eq!(without.status, StatusCode::BAD_REQUEST);
    assert!(without.body.contains("name one of staging, production"), "{}", without.body);
    assert_eq!(deploy_count(&app, &admin).await, 0);
    let body = format!("service=app&destination=production&version=v1&csrf={csrf}");
    let queued = post(&app, "/ui/deploys", &session, &body, &[]).await;
    assert_eq!(queued.status, StatusCode::SEE_OTHER, "{}", queued.body);
    let id = queued.headers["location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    let deploy = app.request("GET", &format!("/deploys/{id}"), Some(&admin), None).await.json();
    assert_eq!(deploy["destination"], "production");
}
