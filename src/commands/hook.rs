//! Hooks: the path of a hook file and the `KAMAL_*` environment it runs with — Kamal's `Commands::Hook` and
//! `Kamal::Tags`.

use std::path::PathBuf;

use indexmap::IndexMap;

use super::names;
use crate::config::Config;

/// What a hook is told about the command running it.
#[derive(Clone, Debug, Default)]
pub struct HookContext {
    /// When the command started, UTC ISO 8601.
    pub recorded_at: String,
    /// The git email of the user, or `whoami`.
    pub performer: String,
    /// The version being deployed.
    pub version: String,
    /// `KAMAL_HOSTS`: the selected hosts (or a boot group's), comma-joined.
    pub hosts: Vec<String>,
    /// `KAMAL_ROLES`: only when `--roles` was given.
    pub roles: Option<Vec<String>>,
    /// `KAMAL_LOCK`: whether the command holds the deploy lock (kamal/berth commands run from the hook reuse it).
    pub lock: bool,
    /// `KAMAL_COMMAND`: `deploy`, or the group (`app`, `proxy`, …).
    pub command: String,
    /// `KAMAL_SUBCOMMAND`: `boot`, `reboot`, … when there is one.
    pub subcommand: Option<String>,
    /// `KAMAL_RUNTIME`: whole seconds the command took (for `post-deploy`).
    pub runtime: Option<u64>,
}

/// `<hooks_path>/<hook>` under the project root.
pub fn hook_file(config: &Config, hook: &str) -> PathBuf {
    config.root.join(&config.hooks_path).join(hook)
}

/// The hook's environment: `KAMAL_RECORDED_AT`, `KAMAL_PERFORMER`, `KAMAL_VERSION`, `KAMAL_SERVICE_VERSION`
/// (`svc@abc1234`), `KAMAL_SERVICE`, `KAMAL_DESTINATION`, then the context's hosts, roles, lock, command,
/// subcommand and runtime. (Secrets, for the hooks that get them, are the engine's to add.)
pub fn env(config: &Config, context: &HookContext) -> IndexMap<String, String> {
    let mut env = IndexMap::new();
    let mut set = |key: &str, value: String| {
        env.insert(format!("KAMAL_{key}"), value);
    };
    set("RECORDED_AT", context.recorded_at.clone());
    set("PERFORMER", context.performer.clone());
    if let Some(dest) = &config.destination {
        set("DESTINATION", dest.clone());
    }
    set("VERSION", context.version.clone());
    set("SERVICE_VERSION", format!("{}@{}", config.service, names::abbreviated_version(&context.version)));
    set("SERVICE", config.service.clone());
    if !context.hosts.is_empty() {
        set("HOSTS", context.hosts.join(","));
    }
    if let Some(roles) = &context.roles {
        set("ROLES", roles.join(","));
    }
    set("LOCK", context.lock.to_string());
    if !context.command.is_empty() {
        set("COMMAND", context.command.clone());
    }
    if let Some(subcommand) = &context.subcommand {
        set("SUBCOMMAND", subcommand.clone());
    }
    if let Some(runtime) = context.runtime {
        set("RUNTIME", runtime.to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{config, config_with_destination};

    #[test]
    fn env_of_a_deploy_hook() {
        let config = config_with_destination("servers: [1.1.1.1, 1.1.1.2]\n", "staging");
        let context = HookContext {
            recorded_at: "2026-11-26T15:45:07Z".into(),
            performer: "deployer@example.com".into(),
            version: "75bf6fa40b975cbd8aec05abf7164e0982f185ac".into(),
            hosts: vec!["1.1.1.1".into(), "1.1.1.2".into()],
            roles: None,
            lock: true,
            command: "deploy".into(),
            subcommand: None,
            runtime: Some(42),
        };
        let env = env(&config, &context);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("KAMAL_RECORDED_AT", "2026-11-26T15:45:07Z"),
                ("KAMAL_PERFORMER", "deployer@example.com"),
                ("KAMAL_DESTINATION", "staging"),
                ("KAMAL_VERSION", "75bf6fa40b975cbd8aec05abf7164e0982f185ac"),
                ("KAMAL_SERVICE_VERSION", "app@75bf6fa"),
                ("KAMAL_SERVICE", "app"),
                ("KAMAL_HOSTS", "1.1.1.1,1.1.1.2"),
                ("KAMAL_LOCK", "true"),
                ("KAMAL_COMMAND", "deploy"),
                ("KAMAL_RUNTIME", "42"),
            ]
        );
    }

    #[test]
    fn env_with_roles_and_subcommand() {
        let config = config("servers: [1.1.1.1]\nhooks_path: custom/hooks/path\n");
        let context = HookContext {
            version: "123".into(),
            roles: Some(vec!["web".into(), "workers".into()]),
            command: "app".into(),
            subcommand: Some("boot".into()),
            ..HookContext::default()
        };
        let env = env(&config, &context);
        assert_eq!(env["KAMAL_SERVICE_VERSION"], "app@123");
        assert_eq!(env["KAMAL_ROLES"], "web,workers");
        assert_eq!(env["KAMAL_SUBCOMMAND"], "boot");
        assert_eq!(env["KAMAL_LOCK"], "false");
        assert!(!env.contains_key("KAMAL_DESTINATION") && !env.contains_key("KAMAL_RUNTIME"));
        assert!(hook_file(&config, "pre-deploy").ends_with("custom/hooks/path/pre-deploy"));
    }
}
