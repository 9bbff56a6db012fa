//! The dashboard's HTML, as pure functions of what the handlers read: every interpolated value goes through
//! [`escape`] (attribute values too), URLs built from names through `url_encode` first; forms that change
//! something carry the session's CSRF field and are rendered only for a token whose scope allows them.

use std::fmt::Write;

use super::forms::{CSRF_FIELD, url_encode};
use crate::daemon::api::{ServiceHost, ServiceSummary};
use crate::daemon::auth;
use crate::daemon::model::{AuditEntry, Deploy, Scope, TokenInfo};

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Who is looking: their token (scope, service limit) and the session's CSRF field for forms.
pub struct Viewer<'a> {
    pub token: &'a TokenInfo,
    pub csrf: &'a str,
}

impl Viewer<'_> {
    /// Whether the token may do what needs `needed` (on `service`): a form is shown only then.
    pub fn may(&self, needed: Scope, service: Option<&str>) -> bool {
        auth::allows(self.token, needed, service).is_ok()
    }
}

/// A whole page. `body_data` is `data-*` attributes of `<body>` for the page script (already escaped).
fn layout(title: &str, viewer: Option<&Viewer>, body_data: &str, main: &str) -> String {
    let mut html = String::with_capacity(main.len() + 1500);
    html.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
    );
    let _ = write!(html, "<title>{} · berth</title>", escape(title));
    html.push_str(
        "<link rel=\"stylesheet\" href=\"/ui/assets/app.css\"><script src=\"/ui/assets/app.js\" defer></script>\
         </head>",
    );
    let _ = write!(html, "<body{body_data}><header><a class=\"brand\" href=\"/ui/\">berth</a>");
    if let Some(viewer) = viewer {
        html.push_str("<nav><a href=\"/ui/\">Services</a><a href=\"/ui/deploys\">Deploys</a>");
        if viewer.may(Scope::Admin, None) {
            html.push_str("<a href=\"/ui/audit\">Audit</a>");
        }
        html.push_str("</nav>");
        let limit = viewer.token.service.as_deref().map(|only| format!(", {only} only")).unwrap_or_default();
        let _ = write!(
            html,
            "<form class=\"who\" method=\"post\" action=\"/ui/sign-out\">{}<span>{} ({}{})</span>\
             <button type=\"submit\">Sign out</button></form>",
            csrf_input(viewer),
            escape(&viewer.token.name),
            viewer.token.scope.name(),
            escape(&limit)
        );
    }
    let _ = writeln!(html, "</header><main>{main}</main></body></html>");
    html
}

fn csrf_input(viewer: &Viewer) -> String {
    format!("<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">", escape(viewer.csrf))
}

/// A deploy's state as a badge (the page script updates these by their class).
fn state_badge(state: &str) -> String {
    format!("<span class=\"state s-{0}\">{0}</span>", escape(state))
}

/// A stored timestamp (RFC 3339, UTC) as `YYYY-MM-DD HH:MM:SS`.
pub fn short_time(time: &str) -> String {
    let trimmed = time.trim_end_matches('Z');
    let without_fraction = trimmed.split_once('.').map_or(trimmed, |(whole, _)| whole);
    without_fraction.replacen('T', " ", 1)
}

fn optional(value: Option<&str>) -> String {
    value.map(escape).unwrap_or_else(|| "—".to_string())
}

/// The sign-in page: one field, `token`; `message` says why the last attempt failed.
pub fn sign_in(message: Option<&str>, next: &str) -> String {
    let mut main = String::from("<section class=\"card narrow\"><h1>Sign in</h1>");
    if let Some(message) = message {
        let _ = write!(main, "<p class=\"error\" role=\"alert\">{}</p>", escape(message));
    }
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/ui/sign-in\" class=\"stack\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>API token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required \
         autofocus spellcheck=\"false\"></label><button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">A token from <code>berth token create --scope read|deploy|admin</code>. It is kept in an \
         HttpOnly cookie for this browser session.</p></section>",
        escape(next)
    );
    layout("Sign in", None, "", &main)
}

/// An error page: what went wrong and the way back.
pub fn error(viewer: Option<&Viewer>, status: u16, title: &str, message: &str) -> String {
    let main = format!(
        "<section class=\"card narrow\"><h1>{status} {}</h1><p class=\"error\" role=\"alert\">{}</p>\
         <p><a href=\"/ui/\">Back to the dashboard</a></p></section>",
        escape(title),
        escape(message)
    );
    layout(title, viewer, "", &main)
}

/// The overview: every service the token sees with what runs on its hosts, then the latest deploys.
pub fn overview(viewer: &Viewer, services: &[ServiceSummary], deploys: &[Deploy]) -> String {
    let mut main = String::from("<h1>Services</h1>");
    if services.is_empty() {
        main.push_str("<p class=\"hint\">No services: add one under <code>services:</code> in berth.yml.</p>");
    }
    main.push_str("<div class=\"grid\">");
    for service in services {
        let link = format!("/ui/services/{}", url_encode(&service.name));
        let _ = write!(
            main,
            "<section class=\"card service\"><h2><a href=\"{}\">{}</a></h2><p class=\"meta\">{} @ {}{}</p>",
            escape(&link),
            escape(&service.name),
            escape(&service.repo),
            escape(&service.branch),
            destinations_note(service)
        );
        if let Some(last) = &service.last_deploy {
            let _ = write!(
                main,
                "<p>Last deploy: <a href=\"/ui/deploys/{0}\">#{0}</a> {1} {2}</p>",
                last.id,
                optional(last.version.as_deref()),
                state_badge(last.state.name())
            );
        }
        main.push_str(&hosts_table(service));
        if viewer.may(Scope::Deploy, Some(&service.name)) {
            let _ = write!(main, "<p><a class=\"button\" href=\"{}\">Deploy, roll back…</a></p>", escape(&link));
        }
        main.push_str("</section>");
    }
    main.push_str("</div><h2>Latest deploys</h2>");
    main.push_str(&deploys_table(deploys, "/deploys?limit=20"));
    main.push_str("<p><a href=\"/ui/deploys\">All deploys</a></p>");
    layout("Services", Some(viewer), " data-page=\"overview\" data-poll-services=\"/services\"", &main)
}

fn destinations_note(service: &ServiceSummary) -> String {
    if service.destinations.is_empty() {
        String::new()
    } else {
        format!(" · destinations: {}", escape(&service.destinations.join(", ")))
    }
}

/// What runs on each host of a service (the page script refreshes it from `GET /services`).
fn hosts_table(service: &ServiceSummary) -> String {
    let mut html = String::new();
    if let Some(error) = &service.hosts_error {
        let _ = write!(html, "<p class=\"error\">The hosts did not answer: {}</p>", escape(error));
    }
    let _ = write!(
        html,
        "<div class=\"scroll\"><table class=\"hosts\"><thead><tr><th>Host</th><th>Role</th><th>Version</th>\
         <th>State</th></tr></thead><tbody data-service-hosts=\"{}\">",
        escape(&service.name)
    );
    for host in &service.hosts {
        html.push_str(&host_row(host));
    }
    if service.hosts.is_empty() {
        html.push_str("<tr><td colspan=\"4\" class=\"hint\">No host has run a deploy of it yet.</td></tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

fn host_row(host: &ServiceHost) -> String {
    let name = match &host.destination {
        Some(destination) => format!("{} ({destination})", host.host),
        None => host.host.clone(),
    };
    let title = host.error.as_deref().map(|error| format!(" title=\"{}\"", escape(error))).unwrap_or_default();
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"state s-{3}\"{title}>{3}</span></td></tr>",
        escape(&name),
        optional(host.role.as_deref()),
        optional(host.version.as_deref()),
        escape(&host.state)
    )
}

/// A table of deploys; `poll` is the JSON API's URL the page script refreshes it from.
fn deploys_table(deploys: &[Deploy], poll: &str) -> String {
    let mut html = format!(
        "<div class=\"scroll\"><table class=\"deploys\"><thead><tr><th>#</th><th>Service</th><th>Kind</th>\
         <th>Version</th><th>State</th><th>By</th><th>Created (UTC)</th></tr></thead>\
         <tbody data-poll-deploys=\"{}\">",
        escape(poll)
    );
    for deploy in deploys {
        html.push_str(&deploy_row(deploy));
    }
    html.push_str("</tbody></table></div>");
    if deploys.is_empty() {
        html.push_str("<p class=\"hint empty\">No deploys yet.</p>");
    }
    html
}

fn deploy_row(deploy: &Deploy) -> String {
    let service = match &deploy.destination {
        Some(destination) => format!("{} ({destination})", deploy.service),
        None => deploy.service.clone(),
    };
    let version = deploy.version.as_deref().or(deploy.git_ref.as_deref());
    format!(
        "<tr data-id=\"{0}\"><td><a href=\"/ui/deploys/{0}\">#{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td>\
         <td>{4}</td><td>{5}</td><td>{6}</td></tr>",
        deploy.id,
        escape(&service),
        escape(&deploy.kind),
        optional(version),
        state_badge(deploy.state.name()),
        optional(deploy.requested_by.as_deref()),
        escape(&short_time(&deploy.created_at))
    )
}

/// A notice after an action, from a fixed set (never text from the request).
pub fn notice(code: &str) -> Option<&'static str> {
    match code {
        "maintenance" => Some("Maintenance is on: the service's proxies answer 503 with the message."),
        "live" => Some("The service is live again."),
        _ => None,
    }
}

/// One service: its hosts, the actions the token may take, and its deploys. `nonce` makes a form's repeated
/// submission (a double click) one deploy.
pub fn service(
    viewer: &Viewer,
    service: &ServiceSummary,
    deploys: &[Deploy],
    nonce: &str,
    notice: Option<&str>,
) -> String {
    let name = &service.name;
    let base = format!("/ui/services/{}", url_encode(name));
    let mut main = format!("<h1>{}</h1>", escape(name));
    if let Some(notice) = notice {
        let _ = write!(main, "<p class=\"notice\" role=\"status\">{}</p>", escape(notice));
    }
    let _ = write!(
        main,
        "<p class=\"meta\">{} @ {} · queue: {}{}</p>",
        escape(&service.repo),
        escape(&service.branch),
        escape(&service.queue),
        destinations_note(service)
    );
    main.push_str(&hosts_table(service));
    if viewer.may(Scope::Deploy, Some(name)) {
        let destination = destination_field(service);
        let nonce = format!("<input type=\"hidden\" name=\"nonce\" value=\"{}\">", escape(nonce));
        main.push_str("<div class=\"grid actions\">");
        let _ = write!(
            main,
            "<form method=\"post\" action=\"/ui/deploys\" class=\"card stack deploy-form\"><h2>Deploy</h2>{csrf}{nonce}\
             <input type=\"hidden\" name=\"service\" value=\"{service}\">{destination}\
             <label>Version <small>(an image tag in the registry)</small>\
             <input name=\"version\" autocomplete=\"off\" spellcheck=\"false\"></label>\
             <label>Or ref <small>(branch, tag or commit to build; neither: {branch})</small>\
             <input name=\"ref\" autocomplete=\"off\" spellcheck=\"false\"></label>\
             <label>Reason <input name=\"reason\" maxlength=\"1000\"></label>\
             <button type=\"submit\">Deploy</button></form>",
            csrf = csrf_input(viewer),
            service = escape(name),
            branch = escape(&service.branch),
        );
        let mut versions: Vec<&str> = Vec::new();
        for deploy in deploys {
            if let Some(version) = deploy.version.as_deref()
                && deploy.state.name() == "succeeded"
                && !versions.contains(&version)
            {
                versions.push(version);
            }
        }
        let _ = write!(
            main,
            "<form method=\"post\" action=\"{action}\" class=\"card stack rollback-form\"><h2>Roll back</h2>{csrf}{nonce}\
             {destination}<label>Version <small>(still on the hosts)</small>\
             <input name=\"version\" list=\"versions\" required autocomplete=\"off\" spellcheck=\"false\"></label>\
             <datalist id=\"versions\">{options}</datalist>\
             <label>Reason <input name=\"reason\" maxlength=\"1000\"></label>\
             <button type=\"submit\">Roll back</button></form>",
            action = escape(&format!("{base}/rollback")),
            csrf = csrf_input(viewer),
            options = versions.iter().map(|v| format!("<option value=\"{}\">", escape(v))).collect::<String>(),
        );
        let _ = write!(
            main,
            "<div class=\"card stack\"><h2>Maintenance</h2>\
             <form method=\"post\" action=\"{on}\" class=\"stack maintenance-form\">{csrf}{destination}\
             <label>Message <input name=\"message\" maxlength=\"1000\" placeholder=\"Back soon\"></label>\
             <button type=\"submit\">Maintenance on</button></form>\
             <form method=\"post\" action=\"{off}\" class=\"stack live-form\">{csrf}{destination}\
             <button type=\"submit\">Go live</button></form></div>",
            on = escape(&format!("{base}/maintenance")),
            off = escape(&format!("{base}/live")),
            csrf = csrf_input(viewer),
        );
        main.push_str("</div>");
    }
    main.push_str("<h2>Deploys</h2>");
    main.push_str(&deploys_table(deploys, &format!("/deploys?limit=20&service={}", url_encode(name))));
    layout(name, Some(viewer), " data-page=\"service\"", &main)
}

/// A destination chooser when the service has destinations (the API requires one then).
fn destination_field(service: &ServiceSummary) -> String {
    if service.destinations.is_empty() {
        return String::new();
    }
    let options: String =
        service.destinations.iter().map(|d| format!("<option value=\"{0}\">{0}</option>", escape(d))).collect();
    format!("<label>Destination <select name=\"destination\" required>{options}</select></label>")
}

/// A deploy: what was asked, its state, the stage timeline per host and the live log.
pub fn deploy(viewer: &Viewer, deploy: &Deploy) -> String {
    let service_link = format!("/ui/services/{}", url_encode(&deploy.service));
    let mut main =
        format!("<h1>Deploy #{} <span id=\"deploy-state\">{}</span></h1>", deploy.id, state_badge(deploy.state.name()));
    let _ = write!(
        main,
        "<dl class=\"facts\"><dt>Service</dt><dd><a href=\"{}\">{}</a></dd>",
        escape(&service_link),
        escape(&deploy.service)
    );
    let mut fact = |label: &str, id: &str, value: Option<&str>| {
        let _ = write!(main, "<dt>{label}</dt><dd id=\"{id}\">{}</dd>", optional(value));
    };
    fact("Destination", "deploy-destination", deploy.destination.as_deref());
    fact("Kind", "deploy-kind", Some(&deploy.kind));
    fact("Version", "deploy-version", deploy.version.as_deref());
    fact("Ref", "deploy-ref", deploy.git_ref.as_deref());
    fact("Commit", "deploy-commit", deploy.commit.as_deref());
    fact("Reason", "deploy-reason", deploy.reason.as_deref());
    fact("Requested by", "deploy-by", deploy.requested_by.as_deref());
    fact("Created", "deploy-created", Some(&short_time(&deploy.created_at)));
    fact("Started", "deploy-started", deploy.started_at.as_deref().map(short_time).as_deref());
    fact("Ended", "deploy-ended", deploy.ended_at.as_deref().map(short_time).as_deref());
    main.push_str("</dl>");
    let _ = write!(
        main,
        "<p id=\"deploy-error\" class=\"error\"{}>{}</p>",
        if deploy.error.is_some() { "" } else { " hidden" },
        escape(deploy.error.as_deref().unwrap_or_default())
    );
    if !deploy.state.is_final() && viewer.may(Scope::Deploy, Some(&deploy.service)) {
        let _ = write!(
            main,
            "<form id=\"cancel-form\" class=\"cancel-form\" method=\"post\" action=\"/ui/deploys/{}/cancel\">{}\
             <button type=\"submit\" class=\"danger\">Cancel deploy</button></form>",
            deploy.id,
            csrf_input(viewer)
        );
    }
    main.push_str("<h2>Stages</h2><ol id=\"stages\" class=\"stages\">");
    for stage in &deploy.stages {
        let _ = write!(
            main,
            "<li class=\"stage st-{0}\"><span class=\"name\">{1}</span> <span class=\"state s-{0}\">{0}</span> \
             <span class=\"time\">{2}</span><ul>",
            escape(stage.state.name()),
            escape(&stage.name),
            escape(&span(stage.started_at.as_deref(), stage.ended_at.as_deref()))
        );
        for host in &stage.hosts {
            let _ = write!(
                main,
                "<li><span class=\"host\">{}</span> <span class=\"state s-{1}\">{1}</span> \
                 <span class=\"time\">{2}</span></li>",
                escape(&host.host),
                escape(host.state.name()),
                escape(&span(host.started_at.as_deref(), host.ended_at.as_deref()))
            );
        }
        main.push_str("</ul></li>");
    }
    let _ = write!(
        main,
        "</ol><h2>Log <small><a href=\"/deploys/{0}/logs\">plain text</a></small></h2>\
         <pre id=\"log\" class=\"log\" aria-live=\"polite\"></pre>",
        deploy.id
    );
    layout(
        &format!("Deploy #{}", deploy.id),
        Some(viewer),
        &format!(" data-page=\"deploy\" data-deploy-id=\"{}\"", deploy.id),
        &main,
    )
}

/// When a stage ran: its start and end times of day (the page script shows durations).
fn span(started: Option<&str>, ended: Option<&str>) -> String {
    let time = |t: &str| short_time(t).split_once(' ').map(|(_, time)| time.to_string()).unwrap_or_default();
    match (started, ended) {
        (Some(start), Some(end)) => format!("{}–{}", time(start), time(end)),
        (Some(start), None) => format!("{}–", time(start)),
        _ => String::new(),
    }
}

/// All deploys, a page at a time.
pub fn deploys(viewer: &Viewer, deploys: &[Deploy], next_cursor: Option<i64>) -> String {
    let mut main = String::from("<h1>Deploys</h1>");
    // Only the first page is live: later ones are history.
    let poll = if next_cursor.is_some() || deploys.len() >= 50 { "" } else { "/deploys?limit=50" };
    main.push_str(&deploys_table(deploys, poll));
    if let Some(cursor) = next_cursor {
        let _ = write!(main, "<p><a href=\"/ui/deploys?cursor={cursor}\">Older</a></p>");
    }
    layout("Deploys", Some(viewer), " data-page=\"deploys\"", &main)
}

/// The audit log (admin).
pub fn audit(viewer: &Viewer, entries: &[AuditEntry], next_cursor: Option<i64>) -> String {
    let mut main = String::from(
        "<h1>Audit</h1><div class=\"scroll\"><table class=\"audit\"><thead><tr><th>At (UTC)</th><th>Who</th>\
         <th>Action</th><th>Target</th><th>Status</th><th>From</th></tr></thead><tbody>",
    );
    for entry in entries {
        let _ = write!(
            main,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&short_time(&entry.at)),
            escape(&entry.actor),
            escape(&entry.action),
            optional(entry.target.as_deref()),
            entry.status,
            optional(entry.remote_addr.as_deref())
        );
    }
    main.push_str("</tbody></table></div>");
    if let Some(cursor) = next_cursor {
        let _ = write!(main, "<p><a href=\"/ui/audit?cursor={cursor}\">Older</a></p>");
    }
    layout("Audit", Some(viewer), " data-page=\"audit\"", &main)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::model::{DeployState, HostTiming, Stage, StageState};

    const HOSTILE: &str = "<script>alert('x')</script>\"&";

    fn token(scope: Scope, service: Option<&str>) -> TokenInfo {
        TokenInfo {
            id: 1,
            name: format!("ana {HOSTILE}"),
            scope,
            service: service.map(str::to_string),
            created_at: String::new(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    fn summary(name: &str) -> ServiceSummary {
        ServiceSummary {
            name: name.to_string(),
            repo: format!("git@example.com:{HOSTILE}"),
            branch: "main".into(),
            destinations: vec!["prod".into(), HOSTILE.into()],
            queue: "latest".into(),
            last_deploy: Some(a_deploy(name, DeployState::Succeeded)),
            hosts: vec![ServiceHost {
                host: "10.0.0.1".into(),
                role: Some("web".into()),
                destination: Some("prod".into()),
                version: Some(HOSTILE.into()),
                state: "running".into(),
                error: Some(HOSTILE.into()),
            }],
            hosts_error: Some(HOSTILE.into()),
        }
    }

    fn a_deploy(service: &str, state: DeployState) -> Deploy {
        Deploy {
            id: 7,
            service: service.to_string(),
            destination: Some(HOSTILE.into()),
            kind: "deploy".into(),
            version: Some(HOSTILE.into()),
            git_ref: None,
            commit: None,
            state,
            stage: Some("boot".into()),
            reason: Some(HOSTILE.into()),
            requested_by: Some(HOSTILE.into()),
            created_at: "2026-12-03T19:20:36.123Z".into(),
            started_at: Some("2026-12-03T19:20:37Z".into()),
            ended_at: None,
            error: Some(HOSTILE.into()),
            runner: None,
            stages: vec![Stage {
                name: "boot".into(),
                state: StageState::Running,
                started_at: Some("2026-12-03T19:20:38Z".into()),
                ended_at: None,
                hosts: vec![HostTiming {
                    host: HOSTILE.into(),
                    state: StageState::Running,
                    started_at: None,
                    ended_at: None,
                }],
            }],
        }
    }

    /// No hostile value got through as markup: every `<script` is the page's own script tag.
    fn assert_escaped(html: &str) {
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(html.contains("<script src=\"/ui/assets/app.js\" defer></script>"));
        assert!(!html.contains("alert('x')"), "{html}");
        assert!(!html.contains("\"&<"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"), "{html}");
    }

    #[test]
    fn escaping_covers_markup_and_attribute_quotes() {
        assert_eq!(escape(HOSTILE), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;");
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(short_time("2026-12-03T19:20:36.123Z"), "2026-12-03 19:20:36");
    }

    #[test]
    fn hostile_names_versions_reasons_and_errors_are_escaped_on_every_page() {
        let admin = token(Scope::Admin, None);
        let viewer = Viewer { token: &admin, csrf: "c\"sr<f" };
        let deploys = [a_deploy("web", DeployState::Running)];
        let services = [summary("web")];
        let pages = [
            overview(&viewer, &services, &deploys),
            service(&viewer, &services[0], &deploys, "n\"once", Some(HOSTILE)),
            deploy(&viewer, &deploys[0]),
            self::deploys(&viewer, &deploys, Some(3)),
            error(Some(&viewer), 403, "Forbidden", HOSTILE),
            sign_in(Some(HOSTILE), "/ui/\"><script>"),
            audit(
                &viewer,
                &[AuditEntry {
                    id: 1,
                    at: "2026-12-03T19:20:36Z".into(),
                    actor: HOSTILE.into(),
                    action: HOSTILE.into(),
                    target: Some(HOSTILE.into()),
                    status: 202,
                    remote_addr: None,
                }],
                None,
            ),
        ];
        for page in &pages[..6] {
            if !page.contains("Sign in</h1>") {
                assert!(page.contains("value=\"c&quot;sr&lt;f\""), "the CSRF field, escaped: {page}");
            }
        }
        for page in &pages {
            assert_escaped(page);
        }
        assert!(pages[5].contains("value=\"/ui/&quot;&gt;&lt;script&gt;\""));
        // A name in a URL is percent-encoded, then escaped.
        let odd = summary("a b&c");
        let html = service(&viewer, &odd, &[], "n", None);
        assert!(html.contains("action=\"/ui/services/a%20b%26c/rollback\""), "{html}");
    }

    #[test]
    fn forms_are_shown_by_scope_and_service() {
        let deploys = [a_deploy("web", DeployState::Running)];
        let page_of = |scope: Scope, limit: Option<&str>| {
            let token = token(scope, limit);
            let viewer = Viewer { token: &token, csrf: "x" };
            (
                overview(&viewer, &[summary("web")], &deploys),
                service(&viewer, &summary("web"), &deploys, "n", None),
                deploy(&viewer, &deploys[0]),
            )
        };
        let forms = ["deploy-form", "rollback-form", "maintenance-form", "live-form"];
        let (overview_page, service_page, deploy_page) = page_of(Scope::Read, None);
        for form in forms {
            assert!(!service_page.contains(form), "read: no {form}");
        }
        assert!(!deploy_page.contains("cancel-form"), "read: no cancel");
        assert!(!overview_page.contains("/ui/audit"), "read: no audit");
        assert!(service_page.contains("/ui/sign-out"), "everyone can sign out");
        let (overview_page, service_page, deploy_page) = page_of(Scope::Deploy, None);
        for form in forms {
            assert!(service_page.contains(form), "deploy: {form}");
        }
        assert!(deploy_page.contains("cancel-form"));
        assert!(!overview_page.contains("/ui/audit"), "deploy: no audit");
        let (overview_page, _, _) = page_of(Scope::Admin, None);
        assert!(overview_page.contains("href=\"/ui/audit\""), "admin: audit");
        let (_, service_page, deploy_page) = page_of(Scope::Deploy, Some("other"));
        assert!(!service_page.contains("deploy-form") && !deploy_page.contains("cancel-form"), "another service's");
        let token = token(Scope::Deploy, None);
        let viewer = Viewer { token: &token, csrf: "x" };
        let ended = deploy(&viewer, &a_deploy("web", DeployState::Failed));
        assert!(!ended.contains("cancel-form"), "an ended deploy cannot be cancelled");
        // The destination is asked for when the service has destinations, and only then.
        let with = service(&viewer, &summary("web"), &[], "n", None);
        assert!(with.contains("<select name=\"destination\" required><option value=\"prod\">prod</option>"));
        let mut without = summary("web");
        without.destinations.clear();
        assert!(!service(&viewer, &without, &[], "n", None).contains("name=\"destination\""));
    }
}
