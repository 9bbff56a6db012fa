//! Docker env files: the text of `.kamal/apps/…/env/{roles,accessories}/<name>.env`, holding secret values.
//!
//! Secret values go only into these files (uploaded with mode 0600 and passed with `--env-file`), never into a
//! command's script. The text is Kamal's `Kamal::EnvFile`: `KEY=value` lines, ASCII escaped like Ruby's
//! `String#dump` with the surrounding quotes dropped (docker reads quotes literally), non-ASCII kept as is.

use indexmap::IndexMap;

use crate::config::model::Env;
use crate::config::{Accessory, Config, Role};
use crate::secrets::Secrets;

/// A secret the env names that the lookup could not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret {secret} (for {env_name}) is not in the secrets files: add `{secret}=…` to .kamal/secrets \
     (or .kamal/secrets.<destination>)"
)]
pub struct MissingSecret {
    /// What needs it: the env var, or `registry/password`.
    pub env_name: String,
    pub secret: String,
}

/// A lookup over loaded [`Secrets`], for the `*_env_file` functions.
pub fn lookup_in(secrets: &Secrets) -> impl Fn(&str) -> Option<String> + '_ {
    |name| secrets.get(name).ok().map(str::to_string)
}

/// The effective env of `role` on `host`: root env, then the role's, then each of the host's tags in order
/// (clear values merge with later ones winning; secret names are united) — Kamal's `Role#env(host)`.
pub fn role_env(config: &Config, role: &Role, host: &str) -> Env {
    let mut env = config.env.merged_with(&role.env);
    let tags = role.hosts.iter().find(|h| h.name == host).map(|h| h.tags.as_slice()).unwrap_or_default();
    for tag in tags {
        if let Some(tag_env) = config.env.tags.get(tag) {
            env = env.merged_with(tag_env);
        }
    }
    env
}

/// The env-file text for `role` on `host`: its secret env vars with their values.
pub fn role_env_file(
    config: &Config,
    role: &Role,
    host: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingSecret> {
    secrets_file(&role_env(config, role, host), lookup)
}

/// The env-file text for `accessory`.
pub fn accessory_env_file(
    accessory: &Accessory,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingSecret> {
    secrets_file(&accessory.env, lookup)
}

/// The env-file text of `env`'s secrets (`ENV_NAME` -> value of `SECRET_NAME`).
pub fn secrets_file(env: &Env, lookup: impl Fn(&str) -> Option<String>) -> Result<String, MissingSecret> {
    let mut values = IndexMap::new();
    for (env_name, secret) in &env.secrets {
        let value =
            lookup(secret).ok_or_else(|| MissingSecret { env_name: env_name.clone(), secret: secret.clone() })?;
        values.insert(env_name.clone(), value);
    }
    Ok(render(values.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

/// `KEY=value\n` per pair; an empty file is a single newline (as Kamal writes it).
pub fn render<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (key, value) in pairs {
        text.push_str(key);
        text.push('=');
        text.push_str(&escape_value(value));
        text.push('\n');
    }
    if text.is_empty() { "\n".to_string() } else { text }
}

/// One value as Kamal's `escape_docker_env_file_value`: ASCII as Ruby's `dump` writes it inside the quotes,
/// then `\"` and `\#` unescaped (docker env files take quotes literally); non-ASCII characters unchanged.
pub fn escape_value(value: &str) -> String {
    let mut dumped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => dumped.push_str("\\\""),
            '\\' => dumped.push_str("\\\\"),
            '\n' => dumped.push_str("\\n"),
            '\r' => dumped.push_str("\\r"),
            '\t' => dumped.push_str("\\t"),
            '\x0c' => dumped.push_str("\\f"),
            '\x0b' => dumped.push_str("\\v"),
            '\x08' => dumped.push_str("\\b"),
            '\x07' => dumped.push_str("\\a"),
            '\x1b' => dumped.push_str("\\e"),
            c if c.is_ascii_control() => dumped.push_str(&format!("\\x{:02X}", c as u32)),
            c => dumped.push(c),
        }
    }
    // Ruby's gsub scans left to right without overlaps, as `str::replace` does.
    dumped.replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::config;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "RAILS_MASTER_KEY" => Some("456".into()),
            "DB_PASSWORD" => Some("s3cr\"et".into()),
            "TAGGED" => Some("t".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_kamal_env_file_lines() {
        assert_eq!(render([("foo", "bar"), ("baz", "haz")]), "foo=bar\nbaz=haz\n");
        assert_eq!(render([]), "\n");
    }

    #[test]
    fn escapes_like_ruby_dump_without_quotes() {
        assert_eq!(escape_value("hello\nthere"), "hello\\nthere");
        assert_eq!(escape_value("with \"quotes\""), "with \"quotes\"");
        assert_eq!(escape_value("back\\slash"), "back\\\\slash");
        assert_eq!(escape_value("#{interpolate} $var"), "#{interpolate} $var");
        assert_eq!(escape_value("bell\x07 nul\x00 del\x7f"), "bell\\a nul\\x00 del\\x7F");
        assert_eq!(escape_value("tab\there"), "tab\\there");
    }

    #[test]
    fn keeps_non_ascii() {
        assert_eq!(render([("foo", "ÅÄÖ\nå"), ("bar", "日本語")]), "foo=ÅÄÖ\\nå\nbar=日本語\n");
    }

    #[test]
    fn role_env_merges_root_role_and_host_tags() {
        let config = config(
            "servers:\n  web:\n    hosts:\n      - 1.1.1.1: tag1\n      - 1.1.1.2\n    env:\n      clear: {ROLE: r}\n      secret: [DB_PASSWORD]\n\
             env:\n  clear: {ROOT: a, ROLE: root}\n  secret: [RAILS_MASTER_KEY]\n  tags:\n    tag1:\n      clear: {T: x}\n      secret: [TAGGED]\n",
        );
        let role = config.role("web").unwrap();
        let env = role_env(&config, role, "1.1.1.1");
        assert_eq!(
            env.clear.iter().collect::<Vec<_>>(),
            [(&"ROOT".into(), &"a".into()), (&"ROLE".into(), &"r".into()), (&"T".into(), &"x".into())]
        );
        assert_eq!(
            role_env_file(&config, role, "1.1.1.1", lookup).unwrap(),
            "RAILS_MASTER_KEY=456\nDB_PASSWORD=s3cr\"et\nTAGGED=t\n"
        );
        assert_eq!(
            role_env_file(&config, role, "1.1.1.2", lookup).unwrap(),
            "RAILS_MASTER_KEY=456\nDB_PASSWORD=s3cr\"et\n"
        );
    }

    #[test]
    fn aliased_and_missing_secrets() {
        let config = config("servers: [1.1.1.1]\nenv:\n  secret: [\"DATABASE_PASSWORD:DB_PASSWORD\", NOPE]\n");
        let role = config.role("web").unwrap();
        let err = role_env_file(&config, role, "1.1.1.1", lookup).unwrap_err();
        assert_eq!(err, MissingSecret { env_name: "NOPE".into(), secret: "NOPE".into() });
        let config = crate::commands::test_config::config(
            "servers: [1.1.1.1]\nenv:\n  secret: [\"DATABASE_PASSWORD:DB_PASSWORD\"]\n",
        );
        let role = config.role("web").unwrap();
        assert_eq!(role_env_file(&config, role, "1.1.1.1", lookup).unwrap(), "DATABASE_PASSWORD=s3cr\"et\n");
    }

    #[test]
    fn secrets_adapter_looks_up_loaded_secrets() {
        let secrets = Secrets::from_pairs([("RAILS_MASTER_KEY", "v")]);
        let config = config("servers: [1.1.1.1]\nenv:\n  secret: [RAILS_MASTER_KEY]\n");
        let role = config.role("web").unwrap();
        assert_eq!(role_env_file(&config, role, "1.1.1.1", lookup_in(&secrets)).unwrap(), "RAILS_MASTER_KEY=v\n");
    }
}
