//! Where a host string leads: the address, port, user, keys and known_hosts files for it and for each jump host
//! on the way, from [`SshConfig`] and the OpenSSH configuration files it names.
//!
//! Precedence follows Kamal (net-ssh): what `SshConfig` says explicitly (user, port, keys, proxy) wins; the
//! OpenSSH files add `HostName`, `IdentityFile`s, `UserKnownHostsFile`s, and a `ProxyJump` when no proxy is set.
//! For jump hosts, which carry no explicit user or port of their own when written `host`, the files' `User` and
//! `Port` apply; then Kamal's defaults (root, 22).

use std::path::{Path, PathBuf};

use super::error::SshError;
use super::known_hosts::entry_name;
use super::openssh_config::{self, HostSettings};
use super::{JumpHost, SshConfig};

/// One SSH server to authenticate to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// The host as the caller named it (in messages).
    pub label: String,
    /// What is connected to (after `HostName`).
    pub hostname: String,
    pub port: u16,
    pub user: String,
    /// Key files from the configuration files, tried after `SshConfig::keys`.
    pub identity_files: Vec<PathBuf>,
    pub known_hosts_files: Vec<PathBuf>,
}

impl Endpoint {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn addr(&self) -> String {
        if self.hostname.contains(':') {
            format!("[{}]:{}", self.hostname, self.port)
        } else {
            format!("{}:{}", self.hostname, self.port)
        }
    }

    /// The host's name in known_hosts files.
    pub fn known_hosts_name(&self) -> String {
        entry_name(&self.hostname, self.port)
    }
}

/// The jump hosts to go through, in order, then the target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route {
    pub jumps: Vec<Endpoint>,
    pub target: Endpoint,
}

/// `host`, `host:port`, `[ipv6]`, `[ipv6]:port`, or a bare IPv6 address.
pub(crate) fn parse_host(host: &str) -> Result<(String, Option<u16>), SshError> {
    let invalid = |reason: &str| SshError::InvalidHost { host: host.to_string(), reason: reason.to_string() };
    let host_trimmed = host.trim();
    if host_trimmed.is_empty() {
        return Err(invalid("empty host name"));
    }
    if host_trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("host names cannot contain spaces"));
    }
    let parse_port = |text: &str| {
        text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| invalid("the port after ':' must be 1-65535"))
    };
    if let Some(rest) = host_trimmed.strip_prefix('[') {
        let (address, after) = rest.split_once(']').ok_or_else(|| invalid("missing ']' after an IPv6 address"))?;
        return match after {
            "" => Ok((address.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((address.to_string(), Some(parse_port(port)?))),
                None => Err(invalid("expected ':port' after ']'")),
            },
        };
    }
    match host_trimmed.matches(':').count() {
        0 => Ok((host_trimmed.to_string(), None)),
        1 => {
            let (name, port) = host_trimmed.split_once(':').unwrap_or_default();
            if name.is_empty() {
                return Err(invalid("empty host name before ':'"));
            }
            Ok((name.to_string(), Some(parse_port(port)?)))
        }
        _ => Ok((host_trimmed.to_string(), None)), // a bare IPv6 address
    }
}

/// Where `host` leads under `config`.
pub(crate) fn resolve(config: &SshConfig, host: &str) -> Result<Route, SshError> {
    let (alias, explicit_port) = parse_host(host)?;
    let home = std::env::home_dir();
    let settings = openssh_config::settings_for(&config.ssh_config_files, &alias, home.as_deref())?;
    let target = endpoint(
        config,
        host.to_string(),
        &alias,
        Some(config.user.clone()),
        Some(explicit_port.unwrap_or(config.port)),
        &settings,
    );

    let jump_specs: Vec<JumpHost> = match (&config.proxy, settings.proxy_jump.as_deref()) {
        (Some(jump), _) => vec![jump.clone()],
        (None, None) => Vec::new(),
        (None, Some(none)) if none.eq_ignore_ascii_case("none") => Vec::new(),
        (None, Some(list)) => list.split(',').map(JumpHost::parse).collect::<Result<_, _>>()?,
    };
    let mut jumps = Vec::new();
    for jump in jump_specs {
        let jump_settings = openssh_config::settings_for(&config.ssh_config_files, &jump.host, home.as_deref())?;
        let label = jump.to_string();
        jumps.push(endpoint(config, label, &jump.host, jump.user.clone(), jump.port, &jump_settings));
    }
    Ok(Route { jumps, target })
}

fn endpoint(
    config: &SshConfig,
    label: String,
    alias: &str,
    user: Option<String>,
    port: Option<u16>,
    settings: &HostSettings,
) -> Endpoint {
    let hostname = settings.hostname.as_deref().map(|h| h.replace("%h", alias)).unwrap_or_else(|| alias.to_string());
    let mut known_hosts_files = config.known_hosts_files.clone();
    for file in &settings.user_known_hosts_files {
        if !known_hosts_files.contains(file) {
            known_hosts_files.push(file.clone());
        }
    }
    Endpoint {
        label,
        hostname,
        port: port.or(settings.port).unwrap_or(22),
        user: user.or_else(|| settings.user.clone()).unwrap_or_else(|| "root".to_string()),
        identity_files: settings.identity_files.clone(),
        known_hosts_files,
    }
}

/// The default key files OpenSSH tries when none is configured, those that exist.
pub(crate) fn default_identity_files(home: Option<&Path>) -> Vec<PathBuf> {
    let Some(home) = home else { return Vec::new() };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .filter(|p| p.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_strings() {
        assert_eq!(parse_host("web1").unwrap(), ("web1".into(), None));
        assert_eq!(parse_host("10.0.0.1:2222").unwrap(), ("10.0.0.1".into(), Some(2222)));
        assert_eq!(parse_host("[fe80::1]:22").unwrap(), ("fe80::1".into(), Some(22)));
        assert_eq!(parse_host("[fe80::1]").unwrap(), ("fe80::1".into(), None));
        assert_eq!(parse_host("fe80::1").unwrap(), ("fe80::1".into(), None));
        for bad in ["", "a b", "web1:0", "web1:x", ":22", "[fe80::1", "[::1]x"] {
            assert!(parse_host(bad).is_err(), "{bad:?} is refused");
        }
        let error = parse_host("web1:99999").unwrap_err().to_string();
        assert_eq!(error, "invalid host \"web1:99999\": the port after ':' must be 1-65535");
    }

    #[test]
    fn explicit_settings_win_and_the_config_file_fills_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "Host web1\n HostName 10.0.0.11\n User ignored\n Port 2200\n IdentityFile /k/web\n ProxyJump ops@bastion\n\
             Host bastion\n HostName 10.0.0.2\n Port 2201\n UserKnownHostsFile /kh/bastion\n",
        )
        .unwrap();
        let config = SshConfig {
            user: "app".into(),
            port: 22,
            ssh_config_files: vec![file],
            known_hosts_files: vec![PathBuf::from("/kh/main")],
            ..SshConfig::default()
        };
        let route = resolve(&config, "web1").unwrap();
        assert_eq!(route.target.hostname, "10.0.0.11");
        assert_eq!((route.target.user.as_str(), route.target.port), ("app", 22), "explicit user and port win");
        assert_eq!(route.target.identity_files, vec![PathBuf::from("/k/web")]);
        assert_eq!(route.jumps.len(), 1);
        let jump = &route.jumps[0];
        assert_eq!((jump.hostname.as_str(), jump.port, jump.user.as_str()), ("10.0.0.2", 2201, "ops"));
        assert_eq!(jump.known_hosts_files, vec![PathBuf::from("/kh/main"), PathBuf::from("/kh/bastion")]);

        let with_proxy = SshConfig { proxy: Some(JumpHost::parse("jump.example.com").unwrap()), ..config };
        let route = resolve(&with_proxy, "web1:2022").unwrap();
        assert_eq!(route.target.port, 2022, "a port in the host string wins");
        assert_eq!(route.jumps[0].hostname, "jump.example.com");
        assert_eq!(route.jumps[0].user, "root", "Kamal's default proxy user");
        assert_eq!(route.target.addr(), "10.0.0.11:2022");
    }
}
