//! `berth config --format kamal`: the summary `kamal config` prints, field for field, so the two can be diffed.
//!
//! Kamal prints `Kamal::Configuration#to_h` as Ruby YAML: symbol keys (`:roles:`), and `builder` and
//! `accessories` as written in the file. berth builds the same tree and prints it the same way. Secret values
//! never appear: where Kamal would print a resolved secret (`ssh.key_data`), berth prints a placeholder.

use yaml_serde::{Mapping, Value};

use crate::config::Config;

/// The placeholder printed instead of any secret value.
pub const REDACTED: &str = "[REDACTED]";

/// The summary as (field, value) pairs in Kamal's order; fields Kamal omits when empty are left out.
pub fn summary(config: &Config) -> Vec<(&'static str, Value)> {
    let strings = |items: Vec<String>| Value::Sequence(items.into_iter().map(Value::String).collect());
    let mut fields = vec![
        ("roles", strings(config.roles.iter().map(|r| r.name.clone()).collect())),
        ("hosts", strings(config.all_hosts().into_iter().map(str::to_string).collect())),
    ];
    if let Some(primary) = config.primary_host() {
        fields.push(("primary_host", Value::String(primary.to_string())));
    }
    fields.extend([
        ("version", Value::String(config.version.clone())),
        ("repository", Value::String(config.repository())),
        ("absolute_image", Value::String(config.absolute_image())),
        ("service_with_version", Value::String(config.service_with_version())),
        ("volume_args", strings(config.volume_args())),
        ("ssh_options", ssh_options(config)),
        ("sshkit", Value::Mapping(config.sshkit.raw.clone())),
        ("builder", Value::Mapping(config.builder.raw.clone())),
    ]);
    if let Some(accessories) = config.raw.get("accessories").filter(|v| !v.is_null()) {
        fields.push(("accessories", accessories.clone()));
    }
    fields.push(("logging", strings(config.logging.args())));
    fields
}

/// Kamal's `Ssh#to_h`: user, port, proxy, keepalive, keys..., then log_level (a symbol when defaulted).
fn ssh_options(config: &Config) -> Value {
    let ssh = &config.ssh;
    let mut map = Mapping::new();
    let mut put = |key: &str, value: Value| {
        map.insert(Value::String(format!(":{key}")), value);
    };
    put("user", Value::String(ssh.user.clone()));
    put("port", ssh.port.clone());
    if let Some(proxy) = &ssh.proxy {
        let jump = if proxy.contains('@') { proxy.clone() } else { format!("root@{proxy}") };
        put("proxy", Value::String(jump));
    } else if let Some(command) = &ssh.proxy_command {
        put("proxy", Value::String(command.clone()));
    }
    put("keepalive", Value::Bool(true));
    put("keepalive_interval", Value::Number(30.into()));
    if let Some(keys_only) = ssh.keys_only {
        put("keys_only", Value::Bool(keys_only));
    }
    if let Some(keys) = &ssh.keys {
        put("keys", Value::Sequence(keys.iter().cloned().map(Value::String).collect()));
    }
    if let Some(key_data) = &ssh.key_data {
        put("key_data", Value::Sequence(key_data.iter().map(|_| Value::String(REDACTED.into())).collect()));
    }
    if let Some(ssh_config) = &ssh.config {
        put("config", ssh_config.clone());
    }
    put("log_level", Value::String(ssh.log_level.clone().unwrap_or_else(|| ":fatal".to_string())));
    Value::Mapping(map)
}

/// Renders the summary as Kamal prints it: a YAML document with `:symbol` keys at the top level.
pub fn render(config: &Config) -> String {
    let mut out = String::from("---\n");
    for (key, value) in summary(config) {
        out.push_str(&format!(":{key}:"));
        match &value {
            Value::Sequence(items) if items.is_empty() => out.push_str(" []\n"),
            Value::Mapping(map) if map.is_empty() => out.push_str(" {}\n"),
            Value::Sequence(_) | Value::Mapping(_) => {
                out.push('\n');
                let body = yaml_serde::to_string(&value).unwrap_or_default();
                let indent = if value.is_mapping() { "  " } else { "" };
                for line in body.lines() {
                    out.push_str(indent);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            scalar => {
                out.push(' ');
                out.push_str(yaml_serde::to_string(scalar).unwrap_or_default().trim_end());
                out.push('\n');
            }
        }
    }
    out
}
