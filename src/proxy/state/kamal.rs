//! kamal-proxy's own state file (`kamal-proxy.state`, a JSON array of services with Go durations in
//! nanoseconds), read and written beside berth's, so that either proxy can replace the other on a host (both
//! keep their state in the same `kamal-proxy-config` volume) and come back with the same routes.
//!
//! Only what both proxies share travels: berth's extras (health thresholds, drain and deploy timeouts,
//! canonical host) take their defaults when importing; kamal-proxy's read targets and writer affinity have no
//! berth counterpart and are reported as dropped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PersistedService;
use crate::proxy::options::{HealthCheckOptions, ServiceOptions};
use crate::proxy::router::{PauseState, RolloutSplit};

/// kamal-proxy's file name inside the state directory.
pub const STATE_FILE: &str = "kamal-proxy.state";

/// Let's Encrypt's directory, kamal-proxy's default for automatic certificates.
const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct KamalService {
    name: String,
    options: KamalServiceOptions,
    target_options: KamalTargetOptions,
    #[serde(deserialize_with = "null_as_empty")]
    active_targets: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    active_readers: Vec<String>,
    rollout_targets: Option<Vec<String>>,
    rollout_readers: Option<Vec<String>>,
    pause_controller: Option<KamalPause>,
    rollout_controller: Option<KamalRollout>,
    // Written by kamal-proxy before 0.9.
    #[serde(skip_serializing_if = "Option::is_none")]
    active_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct KamalServiceOptions {
    #[serde(deserialize_with = "null_as_empty")]
    hosts: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    path_prefixes: Vec<String>,
    tls_enabled: bool,
    tls_certificate_path: String,
    tls_private_key_path: String,
    tls_redirect: bool,
    acme_directory: String,
    acme_cache_path: String,
    error_page_path: String,
    strip_prefix: bool,
    writer_affinity_timeout: u64,
    read_targets_accept_websockets: bool,
}

impl Default for KamalServiceOptions {
    fn default() -> Self {
        KamalServiceOptions {
            hosts: Vec::new(),
            path_prefixes: Vec::new(),
            tls_enabled: false,
            tls_certificate_path: String::new(),
            tls_private_key_path: String::new(),
            tls_redirect: true,
            acme_directory: String::new(),
            acme_cache_path: String::new(),
            error_page_path: String::new(),
            strip_prefix: true,
            writer_affinity_timeout: 0,
            read_targets_accept_websockets: false,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct KamalTargetOptions {
    health_check_config: KamalHealthCheck,
    response_timeout: u64,
    buffer_requests: bool,
    buffer_responses: bool,
    max_memory_buffer_size: u64,
    max_request_body_size: u64,
    max_response_body_size: u64,
    #[serde(deserialize_with = "null_as_empty")]
    log_request_headers: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    log_response_headers: Vec<String>,
    forward_headers: bool,
    scope_cookie_paths: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct KamalHealthCheck {
    path: String,
    port: u16,
    interval: u64,
    timeout: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    host: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct KamalPause {
    /// 0 running, 1 paused, 2 stopped.
    state: u8,
    fail_after: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    stop_message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct KamalRollout {
    percentage: u32,
    percentage_split_point: f64,
    #[serde(deserialize_with = "null_as_empty")]
    allowlist: Vec<String>,
    disabled: bool,
}

/// Go writes a nil slice as `null`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A Go duration, or `default` for zero (an absent field).
fn duration_or(nanoseconds: u64, default: Duration) -> Duration {
    if nanoseconds == 0 { default } else { Duration::from_nanos(nanoseconds) }
}

/// kamal-proxy's file for berth's services; `state_dir` is where kamal-proxy would cache certificates.
pub fn export(services: &[PersistedService], state_dir: &std::path::Path) -> serde_json::Result<Vec<u8>> {
    let services: Vec<KamalService> = services.iter().map(|service| to_kamal(service, state_dir)).collect();
    serde_json::to_vec(&services)
}

fn to_kamal(service: &PersistedService, state_dir: &std::path::Path) -> KamalService {
    let options = &service.options;
    let pause = match &service.pause {
        PauseState::Running => KamalPause::default(),
        PauseState::Paused { max_pause } => {
            KamalPause { state: 1, fail_after: nanos(*max_pause), ..KamalPause::default() }
        }
        PauseState::Stopped { message } => {
            KamalPause { state: 2, stop_message: message.clone(), ..KamalPause::default() }
        }
    };
    let rollout = service.rollout_split.as_ref().map(|split| KamalRollout {
        percentage: split.percent,
        // kamal-proxy's split point: the share of the 32-bit FNV hash space.
        percentage_split_point: f64::from(u32::MAX) * f64::from(split.percent) / 100.0,
        allowlist: split.allowlist.clone(),
        disabled: false,
    });
    KamalService {
        name: service.name.clone(),
        options: KamalServiceOptions {
            hosts: options.hosts.clone(),
            path_prefixes: if options.path_prefixes.is_empty() {
                vec!["/".into()]
            } else {
                options.path_prefixes.clone()
            },
            tls_enabled: options.tls,
            tls_certificate_path: options.tls_certificate_path.clone().unwrap_or_default(),
            tls_private_key_path: options.tls_private_key_path.clone().unwrap_or_default(),
            tls_redirect: options.tls_redirect,
            acme_directory: options.tls_acme_directory.clone().unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.into()),
            acme_cache_path: state_dir.join("certs").display().to_string(),
            error_page_path: options.error_pages.clone().unwrap_or_default(),
            strip_prefix: options.strip_path_prefix,
            writer_affinity_timeout: nanos(Duration::from_secs(3)),
            read_targets_accept_websockets: false,
        },
        target_options: KamalTargetOptions {
            health_check_config: KamalHealthCheck {
                path: options.health_check.path.clone(),
                port: options.health_check.port,
                interval: nanos(options.health_check.interval),
                timeout: nanos(options.health_check.timeout),
                host: options.health_check.host.clone(),
            },
            response_timeout: nanos(options.target_timeout),
            buffer_requests: options.buffer_requests,
            buffer_responses: options.buffer_responses,
            max_memory_buffer_size: options.buffer_memory,
            max_request_body_size: options.max_request_body,
            max_response_body_size: options.max_response_body,
            log_request_headers: options.log_request_headers.clone(),
            log_response_headers: options.log_response_headers.clone(),
            forward_headers: options.forward_headers.unwrap_or(!options.tls),
            scope_cookie_paths: false,
        },
        active_targets: service.targets.clone(),
        active_readers: Vec::new(),
        rollout_targets: (!service.rollout_targets.is_empty()).then(|| service.rollout_targets.clone()),
        rollout_readers: None,
        pause_controller: Some(pause),
        rollout_controller: rollout,
        ..KamalService::default()
    }
}

/// berth's services from kamal-proxy's file: each entry that converts, and a line for each that did not or
/// lost something on the way.
pub fn import(text: &[u8]) -> (Vec<PersistedService>, Vec<String>) {
    let entries: Vec<serde_json::Value> = match serde_json::from_slice(text) {
        Ok(entries) => entries,
        Err(e) => return (Vec::new(), vec![format!("{STATE_FILE} is not a list of services ({e})")]),
    };
    let mut services = Vec::new();
    let mut notes = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let name = entry.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
        match serde_json::from_value::<KamalService>(entry) {
            Ok(kamal) => {
                if !kamal.active_readers.is_empty() || kamal.rollout_readers.as_ref().is_some_and(|r| !r.is_empty()) {
                    notes.push(format!("{STATE_FILE}: service {name:?}: read targets are not supported, dropped"));
                }
                services.push(from_kamal(kamal));
            }
            Err(e) => notes.push(format!("{STATE_FILE} entry {index} (service {name:?}) skipped: {e}")),
        }
    }
    (services, notes)
}

fn from_kamal(kamal: KamalService) -> PersistedService {
    let options = kamal.options;
    let target = kamal.target_options;
    let health = target.health_check_config;
    let defaults = ServiceOptions::default();
    let hosts = if options.hosts.is_empty() { kamal.hosts.unwrap_or_default() } else { options.hosts };
    let mut path_prefixes =
        if options.path_prefixes.is_empty() { kamal.path_prefixes.unwrap_or_default() } else { options.path_prefixes };
    // kamal-proxy writes the root as ["/"]; berth writes it as no prefix.
    path_prefixes.retain(|prefix| prefix != "/");
    let non_empty = |text: String| (!text.is_empty()).then_some(text);
    let service_options = ServiceOptions {
        hosts,
        path_prefixes,
        strip_path_prefix: options.strip_prefix,
        tls: options.tls_enabled,
        tls_certificate_path: non_empty(options.tls_certificate_path),
        tls_private_key_path: non_empty(options.tls_private_key_path),
        tls_redirect: options.tls_redirect,
        tls_acme_directory: non_empty(options.acme_directory).filter(|dir| dir != DEFAULT_ACME_DIRECTORY),
        health_check: HealthCheckOptions {
            path: if health.path.is_empty() { defaults.health_check.path.clone() } else { health.path },
            interval: duration_or(health.interval, defaults.health_check.interval),
            timeout: duration_or(health.timeout, defaults.health_check.timeout),
            port: health.port,
            host: health.host,
            ..defaults.health_check.clone()
        },
        target_timeout: duration_or(target.response_timeout, defaults.target_timeout),
        buffer_requests: target.buffer_requests,
        buffer_responses: target.buffer_responses,
        max_request_body: target.max_request_body_size,
        max_response_body: target.max_response_body_size,
        buffer_memory: if target.max_memory_buffer_size == 0 {
            defaults.buffer_memory
        } else {
            target.max_memory_buffer_size
        },
        forward_headers: Some(target.forward_headers),
        log_request_headers: target.log_request_headers,
        log_response_headers: target.log_response_headers,
        error_pages: non_empty(options.error_page_path),
        ..defaults
    };
    let mut targets = kamal.active_targets;
    if targets.is_empty() {
        targets.extend(kamal.active_target);
    }
    let mut rollout_targets = kamal.rollout_targets.unwrap_or_default();
    if rollout_targets.is_empty() {
        rollout_targets.extend(kamal.rollout_target);
    }
    let pause = match kamal.pause_controller.unwrap_or_default() {
        KamalPause { state: 1, fail_after, .. } => {
            PauseState::Paused { max_pause: duration_or(fail_after, Duration::from_secs(30)) }
        }
        KamalPause { state: 2, stop_message, .. } => PauseState::Stopped { message: stop_message },
        _ => PauseState::Running,
    };
    let rollout_split = kamal
        .rollout_controller
        .filter(|rollout| !rollout.disabled)
        .map(|rollout| RolloutSplit { percent: rollout.percentage, allowlist: rollout.allowlist });
    PersistedService { name: kamal.name, options: service_options, targets, rollout_targets, rollout_split, pause }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file as kamal-proxy v0.9 writes it (field for field from its `marshalledService`).
    const KAMAL_STATE: &str = r#"[{"name":"app-web","options":{"hosts":["app.example.com"],"path_prefixes":["/"],"tls_enabled":true,"tls_certificate_path":"","tls_private_key_path":"","tls_on_demand_url":"","tls_redirect":true,"acme_directory":"https://acme-v02.api.letsencrypt.org/directory","acme_cache_path":"/home/kamal-proxy/.config/kamal-proxy/certs","error_page_path":"/home/kamal-proxy/.apps-config/app/error_pages/abc","strip_prefix":true,"writer_affinity_timeout":3000000000,"read_targets_accept_websockets":false},"target_options":{"health_check_config":{"path":"/up","port":0,"interval":1000000000,"timeout":5000000000},"response_timeout":30000000000,"buffer_requests":true,"buffer_responses":true,"max_memory_buffer_size":1048576,"max_request_body_size":0,"max_response_body_size":0,"log_request_headers":["Cache-Control"],"log_response_headers":null,"forward_headers":false,"scope_cookie_paths":false},"active_targets":["app-web-v2:80"],"active_readers":[],"rollout_targets":null,"rollout_readers":null,"pause_controller":{"state":2,"fail_after":0,"stop_message":"Back at 10"},"rollout_controller":null},
        {"name":"legacy","active_target":"legacy-v1:3000","hosts":["old.example.com"],"options":{},"target_options":{}},
        {"name":"broken","active_targets":"not a list"}]"#;

    #[test]
    fn kamal_proxy_state_is_imported_entry_by_entry() {
        let (services, notes) = import(KAMAL_STATE.as_bytes());
        assert_eq!(services.len(), 2, "{notes:?}");
        let web = &services[0];
        assert_eq!(web.name, "app-web");
        assert_eq!(web.targets, ["app-web-v2:80"]);
        assert_eq!(web.options.hosts, ["app.example.com"]);
        assert!(web.options.path_prefixes.is_empty(), "kamal-proxy's root is berth's no prefix");
        assert!(web.options.tls && web.options.tls_redirect && web.options.buffer_requests);
        assert_eq!(web.options.health_check.timeout, Duration::from_secs(5));
        assert_eq!(web.options.target_timeout, Duration::from_secs(30));
        assert_eq!(web.options.forward_headers, Some(false));
        assert_eq!(web.options.log_request_headers, ["Cache-Control"]);
        assert_eq!(web.options.error_pages.as_deref(), Some("/home/kamal-proxy/.apps-config/app/error_pages/abc"));
        assert_eq!(web.pause, PauseState::Stopped { message: "Back at 10".into() });
        let legacy = &services[1];
        assert_eq!(
            (legacy.targets.as_slice(), legacy.options.hosts.as_slice()),
            (&["legacy-v1:3000".to_string()][..], &["old.example.com".to_string()][..])
        );
        assert_eq!(legacy.options.health_check.path, "/up", "absent fields take kamal-proxy's defaults");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("\"broken\""), "{notes:?}");
    }

    #[test]
    fn berth_services_survive_a_trip_through_kamal_proxys_format() {
        let service = PersistedService {
            name: "app-web".into(),
            options: ServiceOptions {
                hosts: vec!["a.example.com".into()],
                path_prefixes: vec!["/api".into()],
                tls: true,
                tls_certificate_path: Some("/certs/a.pem".into()),
                tls_private_key_path: Some("/certs/a.key".into()),
                forward_headers: Some(true),
                target_timeout: Duration::from_secs(12),
                ..ServiceOptions::default()
            },
            targets: vec!["app-web-v3:80".into()],
            rollout_targets: vec!["app-web-v4:80".into()],
            rollout_split: Some(RolloutSplit { percent: 10, allowlist: vec!["ana".into()] }),
            pause: PauseState::Paused { max_pause: Duration::from_secs(20) },
        };
        let text = export(std::slice::from_ref(&service), std::path::Path::new("/state")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(json[0]["target_options"]["response_timeout"], 12_000_000_000u64, "Go durations are nanoseconds");
        assert_eq!(json[0]["pause_controller"]["state"], 1);
        let (back, notes) = import(&text);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(back, vec![service]);
    }
}
