//! A service's options (routing, health check, timeouts, buffering, TLS) and parsing of kamal-proxy's value forms.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ProxyError;

/// How a service is routed and how its targets are treated. Persisted as part of the proxy's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceOptions {
    /// Hosts routed to the service; empty means every host (the default service).
    pub hosts: Vec<String>,
    /// Path prefixes routed to the service; empty means `/`.
    pub path_prefixes: Vec<String>,
    pub strip_path_prefix: bool,
    pub tls: bool,
    pub tls_certificate_path: Option<String>,
    pub tls_private_key_path: Option<String>,
    pub tls_redirect: bool,
    pub tls_acme_directory: Option<String>,
    pub canonical_host: Option<String>,
    pub health_check: HealthCheckOptions,
    #[serde(with = "millis")]
    pub deploy_timeout: Duration,
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
    /// Time allowed for a target to send response headers.
    #[serde(with = "millis")]
    pub target_timeout: Duration,
    pub buffer_requests: bool,
    pub buffer_responses: bool,
    /// Largest request body accepted when buffering (0 = no limit).
    pub max_request_body: u64,
    /// Largest response body accepted when buffering (0 = no limit).
    pub max_response_body: u64,
    /// Bodies up to this size are buffered in memory; the rest streams through.
    pub buffer_memory: u64,
    /// Trust and append to incoming X-Forwarded-*; `None` means kamal-proxy's default, `!tls`.
    pub forward_headers: Option<bool>,
    pub log_request_headers: Vec<String>,
    pub log_response_headers: Vec<String>,
    pub error_pages: Option<String>,
    /// Skip the health gate (kamal-proxy's `--force`).
    pub force: bool,
}

impl Default for ServiceOptions {
    fn default() -> ServiceOptions {
        ServiceOptions {
            hosts: Vec::new(),
            path_prefixes: Vec::new(),
            strip_path_prefix: true,
            tls: false,
            tls_certificate_path: None,
            tls_private_key_path: None,
            tls_redirect: true,
            tls_acme_directory: None,
            canonical_host: None,
            health_check: HealthCheckOptions::default(),
            deploy_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            target_timeout: Duration::from_secs(30),
            buffer_requests: false,
            buffer_responses: false,
            max_request_body: 0,
            max_response_body: 0,
            buffer_memory: 1 << 20,
            forward_headers: None,
            log_request_headers: Vec::new(),
            log_response_headers: Vec::new(),
            error_pages: None,
            force: false,
        }
    }
}

impl ServiceOptions {
    /// Checks the options and normalizes hosts (lowercase) and paths (leading slash, no trailing slash).
    pub fn normalize(&mut self) -> Result<(), ProxyError> {
        for host in &mut self.hosts {
            *host = host.trim().to_ascii_lowercase();
            if host.is_empty() || host.contains('/') || host.contains(' ') {
                return Err(ProxyError::invalid("--host", host.clone(), "expected a host name like app.example.com"));
            }
            if let Some(rest) = host.strip_prefix("*.")
                && (rest.is_empty() || rest.contains('*'))
            {
                return Err(ProxyError::invalid("--host", host.clone(), "a wildcard is only allowed as `*.domain`"));
            }
        }
        self.hosts.sort();
        self.hosts.dedup();
        for path in &mut self.path_prefixes {
            *path = normalize_path_prefix(path);
        }
        self.path_prefixes.sort();
        self.path_prefixes.dedup();
        if self.tls && self.hosts.is_empty() && self.tls_certificate_path.is_none() {
            return Err(ProxyError::invalid("--tls", "true", "automatic TLS needs at least one --host"));
        }
        if self.tls_certificate_path.is_some() != self.tls_private_key_path.is_some() {
            return Err(ProxyError::invalid(
                "--tls-certificate-path",
                self.tls_certificate_path.clone().unwrap_or_default(),
                "--tls-certificate-path and --tls-private-key-path must be given together",
            ));
        }
        if self.tls && self.tls_certificate_path.is_none() && self.hosts.iter().any(|h| h.starts_with("*.")) {
            return Err(ProxyError::invalid(
                "--host",
                self.hosts.join(","),
                "automatic TLS does not support wildcard hosts; pass --tls-certificate-path/--tls-private-key-path",
            ));
        }
        if let Some(canonical) = &self.canonical_host
            && !self.hosts.contains(&canonical.to_ascii_lowercase())
        {
            return Err(ProxyError::invalid(
                "--canonical-host",
                canonical.clone(),
                "it must be one of the --host values",
            ));
        }
        if self.max_request_body > 0 && !self.buffer_requests {
            return Err(ProxyError::invalid(
                "--max-request-body",
                self.max_request_body.to_string(),
                "needs --buffer-requests",
            ));
        }
        if self.max_response_body > 0 && !self.buffer_responses {
            return Err(ProxyError::invalid(
                "--max-response-body",
                self.max_response_body.to_string(),
                "needs --buffer-responses",
            ));
        }
        self.health_check.validate()?;
        Ok(())
    }

    /// The path prefixes, `/` when none were given.
    pub fn paths(&self) -> Vec<String> {
        if self.path_prefixes.is_empty() { vec!["/".to_string()] } else { self.path_prefixes.clone() }
    }

    /// Whether incoming X-Forwarded-* headers are trusted (kamal-proxy: off when the proxy terminates TLS).
    pub fn trusts_forwarded_headers(&self) -> bool {
        self.forward_headers.unwrap_or(!self.tls)
    }
}

/// How targets are health-checked, before they take traffic and afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheckOptions {
    pub path: String,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Port to check (0 = the target's own port).
    pub port: u16,
    /// Host header for the check (empty = the target address).
    pub host: String,
    /// Consecutive successes before a target takes traffic.
    pub healthy_threshold: u32,
    /// Consecutive failures before a serving target is taken out of rotation.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckOptions {
    fn default() -> HealthCheckOptions {
        HealthCheckOptions {
            path: "/up".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            port: 0,
            host: String::new(),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl HealthCheckOptions {
    fn validate(&mut self) -> Result<(), ProxyError> {
        if !self.path.starts_with('/') {
            self.path = format!("/{}", self.path);
        }
        if self.interval.is_zero() {
            return Err(ProxyError::invalid("--health-check-interval", "0", "must be more than zero"));
        }
        if self.timeout.is_zero() {
            return Err(ProxyError::invalid("--health-check-timeout", "0", "must be more than zero"));
        }
        self.healthy_threshold = self.healthy_threshold.max(1);
        self.unhealthy_threshold = self.unhealthy_threshold.max(1);
        Ok(())
    }
}

/// `/api/` -> `/api`, `api` -> `/api`, `` -> `/`.
pub fn normalize_path_prefix(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Parses a Go-style duration (`30s`, `1m30s`, `500ms`, `1.5s`, `2h`); a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ProxyError> {
    let bad =
        |reason: &str| ProxyError::invalid("duration", text, format!("{reason} (expected e.g. 30s, 500ms, 1m30s)"));
    let text = text.trim().trim_matches('"');
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return duration_from_secs(seconds).ok_or_else(|| bad("out of range"));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(bad("a number must come before each unit"));
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad("not a number"))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    duration_from_secs(total).ok_or_else(|| bad("out of range"))
}

fn duration_from_secs(seconds: f64) -> Option<Duration> {
    (0.0..1e12).contains(&seconds).then(|| Duration::from_secs_f64(seconds))
}

/// Formats a duration the way Go prints it in kamal-proxy's messages (`30s`, `500ms`, `1m30s`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (minutes, seconds) = (millis / 60_000, (millis % 60_000) as f64 / 1000.0);
    let seconds = if seconds.fract() == 0.0 { format!("{}s", seconds as u64) } else { format!("{seconds}s") };
    match minutes {
        0 => seconds,
        m => format!("{m}m{seconds}"),
    }
}

/// Parses a byte size: `1048576`, `512k`, `10MB`, `1G` (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, ProxyError> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let number: u64 = lower[..digits_end]
        .parse()
        .map_err(|_| ProxyError::invalid("size", text, "expected bytes, e.g. 1048576 or 10m"))?;
    let scale: u64 = match lower[digits_end..].trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(ProxyError::invalid("size", text, "unknown unit (use k, m or g)")),
    };
    number.checked_mul(scale).ok_or_else(|| ProxyError::invalid("size", text, "too large"))
}

/// Durations persist as whole milliseconds, readable in the state file.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("\"30s\"").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("2KB").unwrap(), 2048);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn options_normalize_and_validate() {
        let mut options = ServiceOptions {
            hosts: vec!["App.Example.com".into(), "app.example.com".into()],
            path_prefixes: vec!["api/".into()],
            ..ServiceOptions::default()
        };
        options.normalize().unwrap();
        assert_eq!(options.hosts, vec!["app.example.com"]);
        assert_eq!(options.path_prefixes, vec!["/api"]);

        let mut tls_without_host = ServiceOptions { tls: true, ..ServiceOptions::default() };
        assert!(tls_without_host.normalize().unwrap_err().to_string().contains("--host"));

        let mut max_without_buffer = ServiceOptions { max_request_body: 10, ..ServiceOptions::default() };
        assert!(max_without_buffer.normalize().unwrap_err().to_string().contains("--buffer-requests"));
    }
}
