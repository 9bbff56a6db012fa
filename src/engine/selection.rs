//! Which hosts and roles a command acts on: Kamal's `-h/--hosts`, `-r/--roles` and `-p/--primary` filters
//! (`lib/kamal/commander/specifics.rb`), with `*`, `?` and `{a,b}` wildcards as Ruby's `File.fnmatch`.

use crate::config::model::{Config, Role};

/// The hosts and roles selected for one command, primary role (and its hosts) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Selected role names, primary role first, then the config's order.
    pub roles: Vec<String>,
    /// Selected hosts, hosts of the primary role first, no duplicates.
    pub hosts: Vec<String>,
    /// The host that holds the deploy lock: the first selected host of the first selected role.
    pub primary_host: Option<String>,
}

/// A filter that matched nothing, worded as Kamal words it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("No --hosts match for {0}")]
    NoHosts(String),
    #[error("No --roles match for {0}")]
    NoRoles(String),
}

/// The user's filters, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub hosts: Option<String>,
    pub roles: Option<String>,
    pub primary: bool,
}

impl Selection {
    pub fn new(config: &Config, filters: &Filters) -> Result<Selection, SelectionError> {
        let mut roles: Vec<&Role> = config.roles.iter().collect();
        // Primary role first, keeping the rest in order (Kamal's stable sort).
        roles.sort_by_key(|role| role.name != config.primary_role);

        if let Some(patterns) = &filters.roles {
            let patterns = split_list(patterns);
            roles.retain(|role| patterns.iter().any(|pattern| glob_match(pattern, &role.name)));
            if roles.is_empty() {
                return Err(SelectionError::NoRoles(patterns.join(",")));
            }
        }

        let host_patterns = filters.hosts.as_deref().map(split_list);
        let host_selected = |host: &str| match &host_patterns {
            Some(patterns) => patterns.iter().any(|pattern| glob_match(pattern, host)),
            None => true,
        };

        if host_patterns.is_some() {
            // Roles intersecting the selected hosts.
            roles.retain(|role| role.host_names().any(host_selected));
            let all_hosts = config.all_hosts();
            if !all_hosts.iter().any(|host| host_selected(host)) {
                return Err(SelectionError::NoHosts(host_patterns.unwrap_or_default().join(",")));
            }
        }

        let mut hosts: Vec<String> = Vec::new();
        for role in &roles {
            for host in role.host_names().filter(|host| host_selected(host)) {
                if !hosts.iter().any(|known| known == host) {
                    hosts.push(host.to_string());
                }
            }
        }
        // Accessory-only hosts selected explicitly still count (e.g. `accessory boot db -h dbhost`).
        if host_patterns.is_some() {
            for host in config.all_hosts() {
                if host_selected(host) && !hosts.iter().any(|known| known == host) {
                    hosts.push(host.to_string());
                }
            }
        }

        let primary_host = roles
            .first()
            .and_then(|role| role.host_names().find(|host| host_selected(host)))
            .map(str::to_string)
            .or_else(|| hosts.first().cloned());

        let mut selection =
            Selection { roles: roles.iter().map(|role| role.name.clone()).collect(), hosts, primary_host };
        if filters.primary {
            selection.hosts = selection.primary_host.iter().cloned().collect();
        }
        Ok(selection)
    }

    /// Selected hosts that run `role`, in selection order.
    pub fn hosts_of_role<'a>(&'a self, role: &'a Role) -> impl Iterator<Item = &'a str> + 'a {
        self.hosts.iter().map(String::as_str).filter(move |host| role.host_names().any(|name| name == *host))
    }

    /// Selected roles, as config values.
    pub fn roles<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = &'a Role> + 'a {
        self.roles.iter().filter_map(|name| config.role(name))
    }

    /// Selected roles running on `host`.
    pub fn roles_on<'a>(&'a self, config: &'a Config, host: &'a str) -> impl Iterator<Item = &'a Role> + 'a {
        self.roles(config).filter(move |role| role.host_names().any(|name| name == host))
    }

    /// Selected hosts that run at least one selected role (app hosts).
    pub fn app_hosts(&self, config: &Config) -> Vec<String> {
        self.hosts.iter().filter(|host| self.roles_on(config, host).next().is_some()).cloned().collect()
    }

    /// Selected hosts where a selected role is behind the proxy.
    pub fn proxy_hosts(&self, config: &Config) -> Vec<String> {
        self.hosts.iter().filter(|host| self.roles_on(config, host).any(|role| role.runs_proxy())).cloned().collect()
    }
}

/// Splits `a,b,{c,d}` at the commas outside braces.
fn split_list(list: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0usize;
    for c in list.chars() {
        match c {
            ',' if depth == 0 => items.push(String::new()),
            _ => {
                depth = match c {
                    '{' => depth + 1,
                    '}' => depth.saturating_sub(1),
                    _ => depth,
                };
                items.last_mut().expect("never empty").push(c);
            }
        }
    }
    items.into_iter().map(|item| item.trim().to_string()).filter(|item| !item.is_empty()).collect()
}

/// Ruby's `File.fnmatch(pattern, text, File::FNM_EXTGLOB)` for the forms used with hosts and roles:
/// `*`, `?`, `{a,b}` and literal text.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if let Some(open) = pattern.find('{')
        && let Some(close) = pattern[open..].find('}').map(|offset| open + offset)
    {
        let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
        return pattern[open + 1..close]
            .split(',')
            .any(|alternative| glob_match(&format!("{head}{alternative}{tail}"), text));
    }
    wildcard_match(pattern.as_bytes(), text.as_bytes())
}

fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], text) || (!text.is_empty() && wildcard_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => wildcard_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;
    use crate::environment::Environment;

    fn config(yaml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/deploy.yml"), yaml).unwrap();
        let env = Environment::from_vars([("VERSION", "v1")], dir.path());
        let config_file = dir.path().join("config/deploy.yml");
        let options = LoadOptions { config_file, destination: None, version: None };
        Config::load(&options, &env).unwrap()
    }

    const ROLES: &str = "service: app\nimage: app\nregistry: {server: r:5000, username: u, password: p}\n\
        builder: {arch: amd64}\nservers:\n  workers: [1.1.1.3, 1.1.1.1]\n  web: [1.1.1.1, 1.1.1.2]\n";

    fn select(filters: Filters) -> Result<Selection, SelectionError> {
        Selection::new(&config(ROLES), &filters)
    }

    #[test]
    fn primary_role_and_its_hosts_come_first() {
        let selection = select(Filters::default()).unwrap();
        assert_eq!(selection.roles, ["web", "workers"]);
        assert_eq!(selection.hosts, ["1.1.1.1", "1.1.1.2", "1.1.1.3"]);
        assert_eq!(selection.primary_host.as_deref(), Some("1.1.1.1"));
    }

    #[test]
    fn host_filter_moves_the_primary_host_and_selects_intersecting_roles() {
        let selection = select(Filters { hosts: Some("1.1.1.3".into()), ..Filters::default() }).unwrap();
        assert_eq!(selection.roles, ["workers"]);
        assert_eq!(selection.hosts, ["1.1.1.3"]);
        assert_eq!(selection.primary_host.as_deref(), Some("1.1.1.3"));
        let selection = select(Filters { hosts: Some("1.1.1.{2,3}".into()), ..Filters::default() }).unwrap();
        assert_eq!(selection.hosts, ["1.1.1.2", "1.1.1.3"]);
    }

    #[test]
    fn role_filter_with_wildcards_and_primary_flag() {
        let selection = select(Filters { roles: Some("work*".into()), ..Filters::default() }).unwrap();
        assert_eq!(selection.hosts, ["1.1.1.3", "1.1.1.1"]);
        let selection = select(Filters { primary: true, ..Filters::default() }).unwrap();
        assert_eq!(selection.hosts, ["1.1.1.1"]);
    }

    #[test]
    fn filters_that_match_nothing_are_errors() {
        assert_eq!(
            select(Filters { hosts: Some("9.9.9.9".into()), ..Filters::default() }),
            Err(SelectionError::NoHosts("9.9.9.9".into()))
        );
        assert_eq!(
            select(Filters { roles: Some("db".into()), ..Filters::default() }),
            Err(SelectionError::NoRoles("db".into()))
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("web*", "web-1"));
        assert!(glob_match("h?", "h1"));
        assert!(!glob_match("h?", "h12"));
        assert!(glob_match("{a,b}c", "bc"));
        assert!(!glob_match("a", "ab"));
    }
}
