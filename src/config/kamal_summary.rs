//! `berth config --format kamal`: the summary `kamal config` prints, field for field, so the two can be diffed.
//!
//! Kamal prints `Kamal::Configuration#to_h` as Ruby YAML: symbol keys (`:roles:`), and `builder` and
//! `accessories` as written in the file. berth builds the same tree and prints it the same way. Secret values
//! never appear: where Kamal would print a resolved secret (`ssh.key_data`), berth prints a placeholder.

use yaml_serde::{Mapping, Value};

use crate::config::Config;
use crate::config::psych_scalar::{self, Plain};
use crate::config::source::{DATE_TAG, TIME_TAG};

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
                let body = to_psych_yaml(&value);
                let indent = if value.is_mapping() { "  " } else { "" };
                for line in body.lines() {
                    out.push_str(indent);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            scalar => {
                out.push(' ');
                out.push_str(to_psych_yaml(scalar).trim_end());
                out.push('\n');
            }
        }
    }
    out
}

/// Marks a string that would read back as something else (see [`to_psych_yaml`]).
const QUOTE_TAG: &str = "!berth-psych-quote";

/// YAML text that Ruby's Psych reads back as `value`, as Psych writes it: strings Psych would read as
/// something else (`'yes'`, `'0755'`, `'1:30'`, `'2001-12-14'`) quoted, dates and times plain.
///
/// `yaml_serde` quotes by YAML 1.2's rules only, so such strings are first marked with a tag, then the tag is
/// replaced by quotes in its output; the tags berth gives dates and times are dropped.
pub fn to_psych_yaml(value: &Value) -> String {
    let text = yaml_serde::to_string(&mark_misread_strings(value.clone())).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let marker = format!("{QUOTE_TAG} ");
    for line in text.split_inclusive('\n') {
        let mut line = line.replace(&format!("{DATE_TAG} "), "").replace(&format!("{TIME_TAG} "), "");
        // A key and its value may both be marked.
        while let Some(at) = line.find(&marker) {
            let rest = &line[at + marker.len()..];
            // A plain scalar is never followed by `: ` on its line unless it is the key.
            let end = rest.find(": ").unwrap_or_else(|| rest.trim_end_matches('\n').len());
            let (scalar, tail) = rest.split_at(end);
            let quoted = match scalar.starts_with(['\'', '"']) {
                true => scalar.to_string(),
                false => format!("'{}'", scalar.replace('\'', "''")),
            };
            line = format!("{}{quoted}{tail}", &line[..at]);
        }
        out.push_str(&line);
    }
    out
}

fn mark_misread_strings(value: Value) -> Value {
    match value {
        // `:name` strings stay plain: the summary writes Ruby's symbols that way (`:log_level: :fatal`).
        Value::String(s)
            if !s.contains('\n') && !matches!(psych_scalar::resolve(&s), Ok(Plain::Str(_) | Plain::Symbol(_))) =>
        {
            Value::Tagged(Box::new(yaml_serde::value::TaggedValue {
                tag: yaml_serde::value::Tag::new(QUOTE_TAG),
                value: Value::String(s),
            }))
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(mark_misread_strings).collect()),
        Value::Mapping(map) => {
            Value::Mapping(map.into_iter().map(|(k, v)| (mark_misread_strings(k), mark_misread_strings(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::parse_psych;

    /// Whatever berth holds, Psych reads the printed summary back to the same values.
    #[test]
    fn printed_values_read_back_the_same_under_psych() {
        let yaml = "a: 'yes'\nb: '0755'\nc: \"1:30\"\nd: 2001-12-14\ne: yes\nf: 0755\ng: '2001-12-14'\nh: 'y'\n\
                    i: 2001-12-14 21:59:43.10 -5\nj: '1,000'\nk: \"~\"\nl: '1.5'\nm: 1e3\nn: x\no: [\"on\", 'it''s', ok]\n\
                    'true': 'null'\n";
        let value = parse_psych(yaml).unwrap();
        let printed = to_psych_yaml(&value);
        assert_eq!(parse_psych(&printed).unwrap(), value, "{printed}");
        assert!(printed.contains("a: 'yes'\n") && printed.contains("d: 2001-12-14\n"), "{printed}");
        assert!(printed.contains("i: 2001-12-14 21:59:43.100000000 -05:00\n"), "{printed}");
    }
}
