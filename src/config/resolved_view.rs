//! `berth config`: the resolved configuration as YAML, with every default filled in and no secret value in it.
//!
//! Secrets appear by name only (`secret: [DB_PASSWORD]`); a registry password written literally in the file is
//! printed as a placeholder, since a password is a secret wherever it is written.

use serde_json::{Map, Value as Json, json};

use crate::config::kamal_summary::REDACTED;
use crate::config::model::{Credential, Env, Logging};
use crate::config::{Config, Role};

/// The resolved configuration as a JSON value (printed as YAML or JSON by the CLI).
pub fn resolved(config: &Config) -> Json {
    let roles: Vec<Json> = config.roles.iter().map(|role| role_view(config, role)).collect();
    let accessories: Map<String, Json> = config
        .accessories
        .iter()
        .map(|a| {
            let view = json!({
                "service": a.service,
                "image": a.image,
                "hosts": a.hosts,
                "cmd": a.cmd,
                "port": a.port,
                "network": a.network,
                "labels": a.labels,
                "options": yaml_to_json(&yaml_serde::Value::Mapping(a.options.clone())),
                "env": env_view(&a.env),
                "files": yaml_to_json(&yaml_serde::Value::Sequence(a.files.clone())),
                "directories": yaml_to_json(&yaml_serde::Value::Sequence(a.directories.clone())),
                "volumes": a.volumes,
                "proxy": a.proxy.as_ref().map(|p| yaml_to_json(&yaml_serde::Value::Mapping(p.clone()))),
            });
            (a.name.clone(), view)
        })
        .collect();
    json!({
        "service": config.service,
        "image": config.image,
        "destination": config.destination,
        "version": config.version,
        "absolute_image": config.absolute_image(),
        "primary_role": config.primary_role,
        "primary_host": config.primary_host(),
        "roles": roles,
        "registry": {
            "server": config.registry.server.clone().unwrap_or_else(|| "docker.io (Docker Hub)".to_string()),
            "local": config.registry.is_local(),
            "username": credential_view(config.registry.username.as_ref(), false),
            "password": credential_view(config.registry.password.as_ref(), true),
        },
        "env": env_view(&config.env),
        "builder": {
            "arch": config.builder.arch,
            "driver": config.builder.driver,
            "remote": config.builder.remote,
            "local": config.builder.local,
            "context": config.builder.context.clone().unwrap_or_else(|| "git clone of HEAD".to_string()),
            "dockerfile": config.builder.dockerfile,
            "target": config.builder.target,
            "args": yaml_to_json(&yaml_serde::Value::Mapping(config.builder.args.clone())),
            "secrets": config.builder.secrets,
        },
        "ssh": {
            "user": config.ssh.user,
            "port": yaml_to_json(&config.ssh.port),
            "proxy": config.ssh.proxy,
            "proxy_command": config.ssh.proxy_command,
            "keys": config.ssh.keys,
            "key_data": config.ssh.key_data.as_ref().map(|keys| keys.iter().map(|k| secret_name_or_redacted(k)).collect::<Vec<_>>()),
            "keys_only": config.ssh.keys_only,
            "config": config.ssh.config.as_ref().map(yaml_to_json),
        },
        "sshkit": {
            "max_concurrent_starts": config.sshkit.max_concurrent_starts,
            "pool_idle_timeout": config.sshkit.pool_idle_timeout,
            "dns_retries": config.sshkit.dns_retries,
        },
        "accessories": accessories,
        "boot": { "limit": config.boot.limit, "wait": config.boot.wait, "parallel_roles": config.boot.parallel_roles },
        "logging": logging_view(&config.logging),
        "volumes": config.volumes,
        "labels": config.labels,
        "aliases": config.aliases,
        "asset_path": config.asset_path,
        "hooks_path": config.hooks_path,
        "secrets_path": config.secrets_path,
        "error_pages_path": config.error_pages_path,
        "retain_containers": config.retain_containers,
        "readiness_delay": config.readiness_delay,
        "deploy_timeout": config.deploy_timeout,
        "drain_timeout": config.drain_timeout,
        "stop_timeout": config.stop_timeout,
        "minimum_version": config.minimum_version,
    })
}

fn role_view(config: &Config, role: &Role) -> Json {
    let container_prefix = match &config.destination {
        Some(dest) => format!("{}-{}-{dest}", config.service, role.name),
        None => format!("{}-{}", config.service, role.name),
    };
    json!({
        "name": role.name,
        "hosts": role.hosts.iter().map(|h| if h.tags.is_empty() { json!(h.name) } else { json!({ h.name.clone(): h.tags }) }).collect::<Vec<_>>(),
        "container": format!("{container_prefix}-{}", config.version),
        "cmd": role.cmd,
        "proxy": role.proxy.as_ref().map(|p| yaml_to_json(&yaml_serde::Value::Mapping(p.clone()))),
        "env": env_view(&config.env.merged_with(&role.env)),
        "options": yaml_to_json(&yaml_serde::Value::Mapping(role.options.clone())),
        "labels": role.labels,
        "logging": logging_view(&role.logging),
        "asset_path": role.asset_path.clone().or_else(|| config.asset_path.clone()),
        "stop_timeout": role.stop_timeout.or(config.stop_timeout),
    })
}

fn env_view(env: &Env) -> Json {
    let secrets: Vec<String> = env
        .secrets
        .iter()
        .map(|(name, secret)| if name == secret { name.clone() } else { format!("{name} (from secret {secret})") })
        .collect();
    let tags: Map<String, Json> = env.tags.iter().map(|(tag, env)| (tag.clone(), env_view(env))).collect();
    json!({ "clear": env.clear, "secret": secrets, "tags": tags })
}

fn logging_view(logging: &Logging) -> Json {
    json!({ "driver": logging.driver, "options": logging.options, "docker_args": logging.args() })
}

fn credential_view(credential: Option<&Credential>, is_password: bool) -> Json {
    match credential {
        None => Json::Null,
        Some(Credential::Secret(name)) => json!({ "secret": name }),
        Some(Credential::Literal(_)) if is_password => json!(REDACTED),
        Some(Credential::Literal(value)) => json!(value),
    }
}

/// `key_data` items name secrets; an inline PEM (deprecated in Kamal) is itself a secret.
fn secret_name_or_redacted(item: &str) -> String {
    if item.contains("-----BEGIN") { REDACTED.to_string() } else { format!("secret {item}") }
}

/// YAML values as JSON; a date or time (a tagged value in berth's tree) shows as Psych writes it.
fn yaml_to_json(value: &yaml_serde::Value) -> Json {
    use yaml_serde::Value as Yaml;
    match value {
        Yaml::Tagged(tagged) if crate::config::source::date_or_time_to_s(value).is_some() => {
            yaml_to_json(&tagged.value)
        }
        Yaml::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Json::Object(
            map.iter().map(|(k, v)| (crate::config::schema::scalar_text(k), yaml_to_json(v))).collect::<Map<_, _>>(),
        ),
        other => serde_json::to_value(other).unwrap_or(Json::Null),
    }
}
