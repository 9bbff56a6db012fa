//! The dashboard in a real headless Chromium (phone-sized), against `berth serve` deploying to a real bench
//! host: sign in, see the service, deploy and watch the deploy succeed without a reload, cancel a slow one
//! mid-boot, roll back, toggle maintenance; a read-only token sees no action and is refused if it posts
//! anyway. Screenshots of each page go to `target/test-artifacts/dashboard/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::support::bench::Bench;
use crate::support::http;
use crate::support::served::{Served, app_config, json, version_served};
use crate::support::webdriver::Browser;

/// The id in a deploy page's URL (`…/ui/deploys/ID`).
fn deploy_id(url: &str) -> Option<i64> {
    url.rsplit_once("/ui/deploys/").and_then(|(_, id)| id.parse().ok())
}

/// Fills the service page's deploy form with `version`, sends it, and waits for the new deploy's page.
fn deploy_from_the_form(browser: &Browser, base: &str, version: &str, after: i64) -> i64 {
    browser.goto(&format!("{base}/ui/services/app"));
    browser.fill(".deploy-form input[name=version]", version);
    browser.fill(".deploy-form input[name=reason]", &format!("browser test: {version}"));
    browser.click(".deploy-form button[type=submit]");
    browser.wait_for("the new deploy's page", Duration::from_secs(30), |b| deploy_id(&b.url()).filter(|id| *id > after))
}

/// Waits until the deploy page shows `state` (updated by its script: the page is not reloaded).
fn wait_for_state(browser: &Browser, state: &str, timeout: Duration) {
    browser.wait_for(&format!("the deploy to be {state}"), timeout, |b| {
        b.text("#deploy-state").filter(|shown| shown.trim() == state)
    });
}

fn deploy_count(daemon: &Served) -> usize {
    let (status, body) = daemon.curl("GET", "/deploys?limit=500", None, &[]);
    assert_eq!(status, 200, "{body}");
    json(&body)["deploys"].as_array().unwrap().len()
}

#[test]
fn a_browser_signs_in_deploys_live_cancels_rolls_back_and_a_reader_is_refused() {
    let bench = Bench::start(1);
    for version in ["v1", "v2"] {
        bench.push_test_app_with(version, &[("SERVICE", "app")]);
    }
    // A version whose container takes 8 s to listen: a boot long enough to cancel.
    bench.push_test_app_with("slow", &[("SERVICE", "app"), ("BOOT_DELAY_MS", "8000")]);
    let h1 = bench.host(1).clone();
    let daemon = Served::new(&bench, &app_config(&bench, &[bench.host(1)], None, 60));
    let reader = daemon.create_token("read");
    let base = format!("http://127.0.0.1:{}", daemon.port);
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    let browser = Browser::start(&artifacts);
    let long = Duration::from_secs(240);

    // Signed out: any page is the sign-in form; a wrong token gets it again, with why.
    browser.goto(&format!("{base}/ui/"));
    browser.wait_for("the sign-in form", Duration::from_secs(10), |b| b.find("input[name=token]"));
    browser.screenshot("sign-in");
    browser.fill("input[name=token]", "berth_not-a-token");
    browser.click("form button[type=submit]");
    browser.wait_for("the refusal", Duration::from_secs(10), |b| {
        b.text(".error").filter(|text| text.contains("unknown or revoked token"))
    });
    browser.fill("input[name=token]", &daemon.token);
    browser.click("form button[type=submit]");
    browser.wait_for("the services", Duration::from_secs(60), |b| b.find("a[href='/ui/services/app']"));
    assert_eq!(browser.script("return document.cookie;", vec![]), "", "the session cookie is HttpOnly");
    browser.screenshot("services");

    browser.goto(&format!("{base}/ui/services/app"));
    browser.wait_for("the service's forms", Duration::from_secs(60), |b| b.find(".deploy-form"));
    browser.screenshot("service");

    // A deploy from the form, watched until it succeeds without a reload: the stages and the log fill in.
    let first = deploy_from_the_form(&browser, &base, "v1", 0);
    browser.script("window.berthNotReloaded = true;", vec![]);
    wait_for_state(&browser, "succeeded", long);
    assert_eq!(browser.script("return window.berthNotReloaded === true;", vec![]), true, "the page was not reloaded");
    let log = browser.wait_for("the whole log", Duration::from_secs(30), |b| {
        b.find("#log[data-ended='true']").and_then(|_| b.text("#log"))
    });
    assert!(log.contains("Deploying app version v1") || log.contains("v1"), "{log}");
    let stages = browser.text("#stages").unwrap();
    assert!(stages.contains("boot") && stages.contains("cutover") && stages.contains(&h1.ip), "{stages}");
    assert_eq!(browser.text("#deploy-reason").unwrap(), "browser test: v1");
    browser.screenshot("deploy-succeeded");
    assert_eq!(version_served(&h1), "v1");
    // The overview shows what the host runs now.
    browser.goto(&format!("{base}/ui/"));
    browser.wait_for("v1 on the host", Duration::from_secs(60), |b| {
        b.text("tbody[data-service-hosts='app']").filter(|hosts| hosts.contains(&h1.ip) && hosts.contains("v1"))
    });
    browser.screenshot("services-after-deploy");

    // A slow version, cancelled from its page in the middle of its boot: the host keeps serving v1.
    let slow = deploy_from_the_form(&browser, &base, "slow", first);
    browser.wait_for("the boot to run", long, |b| {
        b.text("#stages .stage.st-running .name").filter(|stage| ["boot", "healthcheck"].contains(&stage.as_str()))
    });
    browser.screenshot("deploy-booting");
    browser.click("#cancel-form button");
    wait_for_state(&browser, "cancelled", long);
    assert_eq!(deploy_id(&browser.url()), Some(slow));
    assert!(
        browser.find("#cancel-form").is_none_or(|_| {
            browser.script("return document.getElementById('cancel-form').hidden;", vec![]) == true
        })
    );
    browser.screenshot("deploy-cancelled");
    assert_eq!(version_served(&h1), "v1");

    // v2, then a rollback to v1 from the service page.
    let second = deploy_from_the_form(&browser, &base, "v2", slow);
    wait_for_state(&browser, "succeeded", long);
    assert_eq!(version_served(&h1), "v2");
    browser.goto(&format!("{base}/ui/services/app"));
    browser.fill(".rollback-form input[name=version]", "v1");
    browser.click(".rollback-form button[type=submit]");
    let rollback = browser
        .wait_for("the rollback's page", Duration::from_secs(30), |b| deploy_id(&b.url()).filter(|id| *id > second));
    wait_for_state(&browser, "succeeded", long);
    assert_eq!(deploy_id(&browser.url()), Some(rollback));
    assert_eq!(browser.text("#deploy-kind").unwrap(), "rollback");
    browser.screenshot("rollback-succeeded");
    assert_eq!(version_served(&h1), "v1");

    // Maintenance on, then live again.
    browser.goto(&format!("{base}/ui/services/app"));
    browser.fill(".maintenance-form input[name=message]", "Back at noon");
    browser.click(".maintenance-form button[type=submit]");
    browser.wait_for("maintenance to be on", long, |b| {
        b.text(".notice").filter(|text| text.contains("Maintenance is on"))
    });
    let answer = http::get(&format!("{}:80", h1.ip), "/").unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("Back at noon"), "{answer:?}");
    browser.screenshot("maintenance");
    browser.click(".live-form button[type=submit]");
    browser.wait_for("the service to be live", long, |b| b.text(".notice").filter(|text| text.contains("live again")));
    assert_eq!(version_served(&h1), "v1");

    browser.goto(&format!("{base}/ui/deploys"));
    browser.wait_for("the deploys", Duration::from_secs(10), |b| b.find(&format!("tr[data-id='{rollback}']")));
    browser.screenshot("deploys");

    // A read-only token: no action shown, and a deploy posted anyway (with its own valid CSRF field) is refused.
    browser.click(".who button[type=submit]");
    browser.wait_for("the sign-in form", Duration::from_secs(10), |b| b.find("input[name=token]"));
    browser.fill("input[name=token]", &reader);
    browser.click("form button[type=submit]");
    browser.wait_for("the services", Duration::from_secs(60), |b| b.find("a[href='/ui/services/app']"));
    browser.goto(&format!("{base}/ui/services/app"));
    for form in [".deploy-form", ".rollback-form", ".maintenance-form", ".live-form"] {
        assert!(browser.find(form).is_none(), "a reader sees no {form}");
    }
    browser.screenshot("read-only");
    browser.goto(&format!("{base}/ui/deploys/{first}"));
    wait_for_state(&browser, "succeeded", Duration::from_secs(30));
    assert!(browser.find("#cancel-form").is_none());
    let before = deploy_count(&daemon);
    let status = browser.script_async(
        "const done = arguments[arguments.length - 1];
         const csrf = document.querySelector('input[name=csrf]').value;
         fetch('/ui/deploys', { method: 'POST', body: new URLSearchParams({ csrf, service: 'app', version: 'v2' }) })
           .then((r) => done(r.status), (e) => done(String(e)));",
        vec![],
    );
    assert_eq!(status, json!(403), "a reader's deploy is refused");
    assert_eq!(deploy_count(&daemon), before, "and nothing is queued");
    assert_eq!(version_served(&h1), "v1");

    // An admin sees the audit log: the browser's actions are there as the API's own.
    browser.click(".who button[type=submit]");
    browser.wait_for("the sign-in form", Duration::from_secs(10), |b| b.find("input[name=token]"));
    browser.fill("input[name=token]", &daemon.create_token("admin"));
    browser.click("form button[type=submit]");
    browser.wait_for("the services", Duration::from_secs(60), |b| b.find("a[href='/ui/audit']"));
    browser.click("a[href='/ui/audit']");
    let audit = browser.wait_for("the audit log", Duration::from_secs(10), |b| b.text("table.audit"));
    for action in [
        "POST /deploys",
        "POST /deploys/{id}/cancel",
        "POST /services/{name}/rollback",
        "POST /services/{name}/maintenance",
        "POST /services/{name}/live",
        "POST /ui/sign-in",
    ] {
        assert!(audit.contains(action), "{action} audited: {audit}");
    }
    browser.screenshot("audit");
}
