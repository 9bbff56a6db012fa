//! The part of OpenSSH's client configuration (`~/.ssh/config` format) berth honours for a host: `HostName`,
//! `User`, `Port`, `IdentityFile`, `ProxyJump` and `UserKnownHostsFile`, in `Host` blocks.
//!
//! As in OpenSSH, the first value obtained for a keyword wins, except `IdentityFile`, which accumulates.
//! `Match` blocks cannot be evaluated here (they test local commands, users, ...): only `Match all` applies, every
//! other `Match` block is skipped. Other keywords are ignored.

use std::path::{Path, PathBuf};

use super::error::SshError;
use super::known_hosts::wildcard_match;

/// What the configuration files say about one host.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct HostSettings {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    /// `ProxyJump` as written (`[user@]host[:port][,…]`); `Some("none")` turns jumping off.
    pub proxy_jump: Option<String>,
    pub user_known_hosts_files: Vec<PathBuf>,
}

/// Reads `files` in order (a missing file is skipped, as OpenSSH does for `~/.ssh/config`) for host `alias`.
pub(crate) fn settings_for(files: &[PathBuf], alias: &str, home: Option<&Path>) -> Result<HostSettings, SshError> {
    let mut settings = HostSettings::default();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SshError::SshConfigFile {
                    path: file.clone(),
                    line: 0,
                    message: format!("cannot read: {e}"),
                });
            }
        };
        apply(&text, file, alias, home, &mut settings)?;
    }
    Ok(settings)
}

fn apply(
    text: &str,
    file: &Path,
    alias: &str,
    home: Option<&Path>,
    settings: &mut HostSettings,
) -> Result<(), SshError> {
    let alias = alias.to_ascii_lowercase();
    let mut applies = true; // lines before the first Host block apply to every host
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let problem = |message: String| SshError::SshConfigFile { path: file.to_path_buf(), line, message };
        let Some((keyword, args)) = split_keyword(raw) else { continue };
        let args = split_args(args).map_err(&problem)?;
        match keyword.as_str() {
            "host" => applies = host_patterns_match(&args, &alias),
            "match" => applies = args.len() == 1 && args[0].eq_ignore_ascii_case("all"),
            _ if !applies => {}
            "hostname" => set_once(&mut settings.hostname, single(&keyword, &args).map_err(&problem)?),
            "user" => set_once(&mut settings.user, single(&keyword, &args).map_err(&problem)?),
            "port" => {
                let value = single(&keyword, &args).map_err(&problem)?;
                let port = value.parse::<u16>().ok().filter(|p| *p > 0);
                let port = port.ok_or_else(|| problem(format!("Port must be 1-65535, got {value:?}")))?;
                settings.port.get_or_insert(port);
            }
            "identityfile" => {
                let value = single(&keyword, &args).map_err(&problem)?;
                if !value.eq_ignore_ascii_case("none") {
                    settings.identity_files.push(PathBuf::from(expand_tilde(&value, home)));
                }
            }
            "proxyjump" => set_once(&mut settings.proxy_jump, single(&keyword, &args).map_err(&problem)?),
            "userknownhostsfile" if settings.user_known_hosts_files.is_empty() => {
                let files = args.iter().filter(|a| !a.eq_ignore_ascii_case("none"));
                settings.user_known_hosts_files = files.map(|a| PathBuf::from(expand_tilde(a, home))).collect();
            }
            _ => {} // keywords berth does not use
        }
    }
    Ok(())
}

fn set_once(slot: &mut Option<String>, value: String) {
    slot.get_or_insert(value);
}

fn single(keyword: &str, args: &[String]) -> Result<String, String> {
    match args {
        [value] => Ok(value.clone()),
        [] => Err(format!("{keyword} needs a value")),
        _ => Err(format!("{keyword} takes one value, got {}", args.len())),
    }
}

/// `Keyword args` or `Keyword=args`; `None` for blank lines and comments. The keyword is lowercased.
fn split_keyword(line: &str) -> Option<(String, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let (keyword, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    Some((keyword.to_ascii_lowercase(), rest))
}

/// Whitespace-separated arguments; double quotes group.
fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_arg = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_arg = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_arg {
                    args.push(std::mem::take(&mut current));
                    has_arg = false;
                }
            }
            c => {
                current.push(c);
                has_arg = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    if has_arg {
        args.push(current);
    }
    Ok(args)
}

/// OpenSSH's `Host` rule: some pattern matches and no negated pattern does.
fn host_patterns_match(patterns: &[String], alias: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        let pattern = pattern.to_ascii_lowercase();
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, alias) {
                return false;
            }
        } else {
            matched |= wildcard_match(&pattern, alias);
        }
    }
    matched
}

fn expand_tilde(path: &str, home: Option<&Path>) -> String {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest).display().to_string(),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str, alias: &str) -> HostSettings {
        let mut settings = HostSettings::default();
        apply(text, Path::new("config"), alias, Some(Path::new("/home/me")), &mut settings).unwrap();
        settings
    }

    const CONFIG: &str = r#"
# global
IdentityFile ~/.ssh/global_key

Host web1 web2
    HostName 10.0.0.11
    User deploy
    Port=2222
    IdentityFile "~/.ssh/web key"
    ProxyJump admin@bastion:2200

Host *.internal !secret.internal
    User internal

Match host whatever
    User never

Host *
    User fallback
    Port 22
    UserKnownHostsFile ~/.ssh/kh1 /etc/kh2
"#;

    #[test]
    fn the_first_value_wins_and_identity_files_accumulate() {
        let s = settings(CONFIG, "web1");
        assert_eq!(s.hostname.as_deref(), Some("10.0.0.11"));
        assert_eq!(s.user.as_deref(), Some("deploy"));
        assert_eq!(s.port, Some(2222));
        assert_eq!(
            s.identity_files,
            vec![PathBuf::from("/home/me/.ssh/global_key"), PathBuf::from("/home/me/.ssh/web key")]
        );
        assert_eq!(s.proxy_jump.as_deref(), Some("admin@bastion:2200"));
        assert_eq!(s.user_known_hosts_files, vec![PathBuf::from("/home/me/.ssh/kh1"), PathBuf::from("/etc/kh2")]);
    }

    #[test]
    fn wildcards_negation_and_match_blocks() {
        assert_eq!(settings(CONFIG, "db.internal").user.as_deref(), Some("internal"));
        assert_eq!(settings(CONFIG, "secret.internal").user.as_deref(), Some("fallback"));
        assert_eq!(settings(CONFIG, "other").user.as_deref(), Some("fallback"), "Match blocks are skipped");
        assert_eq!(settings(CONFIG, "other").hostname, None);
    }

    #[test]
    fn a_bad_port_names_the_line() {
        let mut s = HostSettings::default();
        let error = apply("Host a\n  Port x\n", Path::new("/c"), "a", None, &mut s).unwrap_err();
        assert_eq!(error.to_string(), "/c:2: Port must be 1-65535, got \"x\"");
    }
}
