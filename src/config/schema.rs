//! Stage two, first half: the merged YAML tree checked against Kamal 2's schema, every problem at once.
//!
//! Kamal validates each section against the example YAML in its documentation: unknown keys are errors and
//! each value must have the example's type, where a string also accepts numbers, booleans and symbols. The
//! tables below are that schema, written out as data. Kamal stops at the first problem; berth collects them
//! all, each with its YAML path (`servers/job/stop_timeout`) in Kamal's own words, plus a way to fix it.

use yaml_serde::{Mapping, Value};

/// One thing wrong with the configuration, at one YAML path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Kamal's path notation: keys and indexes joined with `/`, empty for the top level.
    pub path: String,
    pub message: String,
    /// How to fix it, when berth can say more than Kamal does.
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// The shape a value must have: Kamal's example value for that key, and the special cases of its validator.
#[derive(Debug)]
enum Shape {
    /// A string, number, boolean or symbol (Kamal's "stringish").
    Str,
    Int,
    Bool,
    /// A hash with known keys, each checked against its own shape.
    Keys(&'static [(&'static str, Shape)]),
    /// An array whose every item has the shape.
    ListOf(&'static Shape),
    /// A hash of anything (`options`, `args`, `additional_contexts`): passed through to Docker.
    AnyHash,
    /// A hash whose values are strings (`labels`).
    HashOfStr,
    /// `arch`: a string or an array of strings.
    StrOrList,
    /// `hosts`: strings, or single-key hashes of host -> tag or tags.
    Hosts,
    /// `ssh.config`: a boolean, a string or an array of strings.
    SshConfig,
    /// Accessory `files` and `directories`: strings, or hashes of local, remote, mode, owner and options.
    Paths,
    /// `proxy.ssl`: a boolean or a hash.
    Ssl,
    /// `hooks_output`: a level, or a hash of hook -> level.
    HooksOutput,
    /// A section documented on its own page ("..." in Kamal's example): a hash, checked by its own rules.
    Section(Section),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Registry,
    Servers,
    Env,
    Ssh,
    Sshkit,
    Builder,
    Accessories,
    Proxy,
    Boot,
    Logging,
    Output,
    Aliases,
}

use Shape::*;

const TOP_LEVEL: &[(&str, Shape)] = &[
    ("service", Str),
    ("image", Str),
    ("labels", HashOfStr),
    ("volumes", ListOf(&Str)),
    ("registry", Section(Section::Registry)),
    ("servers", Section(Section::Servers)),
    ("env", Section(Section::Env)),
    ("asset_path", Str),
    ("hooks_path", Str),
    ("hooks_output", HooksOutput),
    ("secrets_path", Str),
    ("error_pages_path", Str),
    ("require_destination", Bool),
    ("primary_role", Str),
    ("allow_empty_roles", Bool),
    ("retain_containers", Int),
    ("minimum_version", Str),
    ("readiness_delay", Int),
    ("deploy_timeout", Int),
    ("drain_timeout", Int),
    ("stop_timeout", Int),
    ("run_directory", Str),
    ("ssh", Section(Section::Ssh)),
    ("builder", Section(Section::Builder)),
    ("accessories", Section(Section::Accessories)),
    ("proxy", Section(Section::Proxy)),
    ("sshkit", Section(Section::Sshkit)),
    ("boot", Section(Section::Boot)),
    ("logging", Section(Section::Logging)),
    ("output", Section(Section::Output)),
    ("aliases", Section(Section::Aliases)),
];

const ROLE: &[(&str, Shape)] = &[
    ("hosts", Hosts),
    ("cmd", Str),
    ("stop_timeout", Int),
    ("options", AnyHash),
    ("logging", Section(Section::Logging)),
    ("proxy", Section(Section::Proxy)),
    ("labels", HashOfStr),
    ("env", Section(Section::Env)),
    ("asset_path", Str),
];

const ACCESSORY: &[(&str, Shape)] = &[
    ("service", Str),
    ("image", Str),
    ("registry", Section(Section::Registry)),
    ("host", Str),
    ("hosts", Hosts),
    ("role", Str),
    ("roles", ListOf(&Str)),
    ("tag", Str),
    ("tags", ListOf(&Str)),
    ("cmd", Str),
    ("port", Str),
    ("labels", HashOfStr),
    ("options", AnyHash),
    ("env", Section(Section::Env)),
    ("files", Paths),
    ("directories", Paths),
    ("volumes", ListOf(&Str)),
    ("network", Str),
    ("proxy", Section(Section::Proxy)),
];

const PROXY: &[(&str, Shape)] = &[
    ("host", Str),
    ("hosts", Hosts),
    ("app_port", Int),
    ("ssl", Ssl),
    ("ssl_redirect", Bool),
    ("forward_headers", Bool),
    ("response_timeout", Int),
    ("path_prefix", Str),
    ("path_prefixes", ListOf(&Str)),
    ("strip_path_prefix", Bool),
    ("healthcheck", Keys(&[("interval", Int), ("path", Str), ("timeout", Int)])),
    (
        "buffering",
        Keys(&[
            ("requests", Bool),
            ("responses", Bool),
            ("max_request_body", Int),
            ("max_response_body", Int),
            ("memory", Int),
        ]),
    ),
    ("logging", Keys(&[("request_headers", ListOf(&Str)), ("response_headers", ListOf(&Str))])),
    (
        "run",
        Keys(&[
            ("http_port", Int),
            ("https_port", Int),
            ("metrics_port", Int),
            ("debug", Bool),
            ("log_max_size", Str),
            ("publish", Bool),
            ("bind_ips", ListOf(&Str)),
            ("registry", Str),
            ("repository", Str),
            ("version", Str),
            ("options", AnyHash),
        ]),
    ),
];

const REGISTRY: &[(&str, Shape)] = &[("server", Str)];

const SSH: &[(&str, Shape)] = &[
    ("user", Str),
    ("port", Str),
    ("proxy", Str),
    ("proxy_command", Str),
    ("log_level", Str),
    ("keys_only", Bool),
    ("keys", ListOf(&Str)),
    ("key_data", ListOf(&Str)),
    ("config", SshConfig),
    ("forward_agent", Bool),
];

const SSHKIT: &[(&str, Shape)] = &[("max_concurrent_starts", Int), ("pool_idle_timeout", Int), ("dns_retries", Int)];

const BUILDER: &[(&str, Shape)] = &[
    ("driver", Str),
    ("arch", StrOrList),
    ("remote", Str),
    ("local", Bool),
    ("pack", Keys(&[("builder", Str), ("buildpacks", ListOf(&Str))])),
    ("cache", Keys(&[("type", Str), ("options", Str), ("image", Str)])),
    ("context", Str),
    ("dockerfile", Str),
    ("target", Str),
    ("args", AnyHash),
    ("secrets", ListOf(&Str)),
    ("ssh", Str),
    ("provenance", Str),
    ("sbom", Bool),
    ("additional_contexts", AnyHash),
];

const BOOT: &[(&str, Shape)] = &[("limit", Str), ("wait", Int), ("parallel_roles", Bool)];

const LOGGING: &[(&str, Shape)] = &[("driver", Str), ("options", AnyHash)];

const OUTPUT: &[(&str, Shape)] = &[("file", Keys(&[("path", Str)])), ("otel", Keys(&[("endpoint", Str)]))];

const ENV_KEYS: &[&str] = &["clear", "secret", "tags"];

/// Keys that Kamal 1 accepted and Kamal 2 does not, with what replaced them.
const KAMAL_1_KEYS: &[(&str, &str)] = &[
    (
        "traefik",
        "Kamal 2 replaced Traefik with its own proxy: move routing settings under `proxy:` (see `berth docs proxy`)",
    ),
    (
        "healthcheck",
        "Kamal 2 checks health through the proxy: use `proxy: { healthcheck: { path: /up, interval: 1, timeout: 5 } }`",
    ),
    ("stop_wait_time", "Kamal 2 calls it `drain_timeout`"),
    ("hooks", "hooks are executable files in `.kamal/hooks` (or `hooks_path`), not a configuration key"),
];

/// The documented sections and their keys with the type each accepts, for `berth docs`.
pub fn documented_sections() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let keys = |schema: &'static [(&'static str, Shape)]| -> Vec<(&'static str, String)> {
        schema.iter().map(|(key, shape)| (*key, describe_shape(shape))).collect()
    };
    vec![
        ("configuration", keys(TOP_LEVEL)),
        ("role", keys(ROLE)),
        ("accessory", keys(ACCESSORY)),
        ("proxy", keys(PROXY)),
        (
            "registry",
            vec![
                ("server", "a string".into()),
                ("username", "a string, or [SECRET_NAME]".into()),
                ("password", "a string, or [SECRET_NAME]".into()),
            ],
        ),
        ("ssh", keys(SSH)),
        ("sshkit", keys(SSHKIT)),
        ("builder", keys(BUILDER)),
        ("boot", keys(BOOT)),
        ("logging", keys(LOGGING)),
        ("output", keys(OUTPUT)),
        (
            "env",
            vec![
                ("clear", "a hash of NAME: value".into()),
                ("secret", "an array of NAME or NAME:SECRET_NAME".into()),
                ("tags", "a hash of tag: env (root env only)".into()),
            ],
        ),
    ]
}

fn describe_shape(shape: &Shape) -> String {
    match shape {
        Str => "a string".into(),
        Int => "an integer".into(),
        Bool => "a boolean".into(),
        Keys(keys) => {
            let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            format!("a hash of {}", names.join(", "))
        }
        ListOf(item) => {
            format!("an array of {}", describe_shape(item).trim_start_matches("a ").trim_start_matches("an "))
        }
        AnyHash => "a hash of docker options".into(),
        HashOfStr => "a hash of strings".into(),
        StrOrList => "a string or an array of strings".into(),
        Hosts => "an array of hosts (`- host` or `- host: [tag, ...]`)".into(),
        SshConfig => "true, false, a file or an array of files".into(),
        Paths => "an array of `local:remote[:options]` or {local, remote, mode, owner, options}".into(),
        Ssl => "true, false, or {certificate_pem, private_key_pem}".into(),
        HooksOutput => "quiet or verbose, or a hash of hook: level".into(),
        Section(section) => format!("a section (see `berth docs {}`)", format!("{section:?}").to_lowercase()),
    }
}

/// Checks the merged configuration and returns every problem found.
pub fn validate(config: &Mapping) -> Vec<Problem> {
    let mut checker = Checker { problems: Vec::new(), path: Vec::new() };
    checker.check_keys(config, TOP_LEVEL, KeyContext::TopLevel);
    // Kamal builds these sections even when the file leaves them out, so their required keys are still checked.
    let empty = Value::Mapping(Mapping::new());
    if !config.contains_key("registry") {
        checker.at("registry", |c| c.check_registry(&empty));
    }
    if !config.contains_key("builder") {
        checker.at("builder", |c| c.check_builder(mapping(&empty)));
    }
    checker.problems
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyContext {
    TopLevel,
    Nested,
}

struct Checker {
    problems: Vec<Problem>,
    path: Vec<String>,
}

impl Checker {
    fn error(&mut self, message: impl Into<String>) {
        self.problems.push(Problem { path: self.path.join("/"), message: message.into(), hint: None });
    }

    fn error_with_hint(&mut self, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem { path: self.path.join("/"), message: message.into(), hint: Some(hint.into()) });
    }

    fn at<R>(&mut self, segment: impl Into<String>, f: impl FnOnce(&mut Checker) -> R) -> R {
        self.path.push(segment.into());
        let result = f(self);
        self.path.pop();
        result
    }

    fn check_keys(&mut self, map: &Mapping, schema: &'static [(&'static str, Shape)], context: KeyContext) {
        let mut unknown = Vec::new();
        for (key, value) in map {
            let name = scalar_text(key);
            if context == KeyContext::TopLevel && name.starts_with("x-") {
                continue;
            }
            match schema.iter().find(|(known, _)| *known == name) {
                Some((_, shape)) => self.at(name.clone(), |c| c.check(value, shape, &name)),
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            self.unknown_keys(&unknown, schema.iter().map(|(k, _)| *k).collect());
        }
    }

    fn unknown_keys(&mut self, unknown: &[String], known: Vec<&str>) {
        let noun = if unknown.len() == 1 { "key" } else { "keys" };
        let message = format!("unknown {noun}: {}", unknown.join(", "));
        let mut hints = Vec::new();
        for key in unknown {
            if let Some((_, replacement)) = KAMAL_1_KEYS.iter().find(|(old, _)| old == key)
                && self.path.is_empty()
            {
                hints.push(format!("`{key}` is a Kamal 1 key; {replacement}"));
                continue;
            }
            if let Some(suggestion) = did_you_mean(key, &known) {
                hints.push(format!("did you mean `{suggestion}` instead of `{key}`?"));
            }
        }
        if hints.is_empty() {
            let listed = known.join(", ");
            self.error_with_hint(message, format!("known keys here: {listed}"));
        } else {
            self.error_with_hint(message, hints.join("; "));
        }
    }

    fn check(&mut self, value: &Value, shape: &'static Shape, key: &str) {
        match shape {
            Str => self.expect(is_stringish(value), &["a string"]),
            Int => self.expect(is_integer(value), &["an integer"]),
            Bool => self.expect(matches!(value, Value::Bool(_)), &["a boolean"]),
            Keys(schema) => match value {
                Value::Mapping(map) => self.check_keys(map, schema, KeyContext::Nested),
                _ => self.type_error(&["a hash"]),
            },
            ListOf(item) => self.check_list(value, item, key),
            AnyHash => self.expect(value.is_mapping(), &["a hash"]),
            HashOfStr => match value {
                Value::Mapping(map) => {
                    for (k, v) in map {
                        self.at(scalar_text(k), |c| c.expect(is_stringish(v), &["a string"]));
                    }
                }
                _ => self.type_error(&["a hash"]),
            },
            StrOrList => match value {
                Value::Sequence(items) if items.iter().all(is_stringish) => (),
                v if is_stringish(v) => (),
                _ => self.type_error(&["an array", "a string"]),
            },
            Hosts => self.check_hosts(value),
            SshConfig => match value {
                Value::Sequence(_) => self.check_list(value, &Str, key),
                Value::Bool(_) | Value::String(_) => (),
                _ => self.type_error(&["a boolean", "a string", "an array"]),
            },
            Paths => self.check_paths(value),
            Ssl => self.expect(matches!(value, Value::Bool(_) | Value::Mapping(_)), &["a boolean", "a hash"]),
            HooksOutput => match value {
                Value::Mapping(map) => {
                    for (hook, level) in map {
                        self.at(scalar_text(hook), |c| c.expect(is_stringish(level), &["a string"]));
                    }
                }
                v => self.expect(is_stringish(v), &["a string"]),
            },
            Section(section) => self.check_section(value, *section, key),
        }
    }

    fn expect(&mut self, ok: bool, types: &[&str]) {
        if !ok {
            self.type_error(types);
        }
    }

    fn type_error(&mut self, types: &[&str]) {
        self.error(format!("should be {}", types.join(" or ")));
    }

    fn check_list(&mut self, value: &Value, item: &'static Shape, key: &str) {
        let Value::Sequence(items) = value else {
            return self.type_error(&["an array"]);
        };
        for (idx, v) in items.iter().enumerate() {
            self.at(idx.to_string(), |c| c.check(v, item, key));
        }
    }

    fn check_hosts(&mut self, value: &Value) {
        let Value::Sequence(hosts) = value else {
            return self.type_error(&["an array"]);
        };
        for (idx, host) in hosts.iter().enumerate() {
            self.at(idx.to_string(), |c| match host {
                Value::Mapping(map) if map.len() != 1 => c.error_with_hint(
                    "multiple hosts found",
                    "write one host per list item, e.g. `- 10.0.0.1: [tag1, tag2]`",
                ),
                Value::Mapping(map) => {
                    let (name, tags) = map.iter().next().expect("one entry");
                    c.at(scalar_text(name), |c| match tags {
                        Value::Sequence(_) => c.check_list(tags, &Str, "tags"),
                        t => c.expect(is_stringish(t), &["a string", "an array"]),
                    });
                }
                h => c.expect(is_stringish(h), &["a string", "a hash"]),
            });
        }
    }

    fn check_paths(&mut self, value: &Value) {
        let Value::Sequence(paths) = value else {
            return self.type_error(&["an array"]);
        };
        for (idx, path) in paths.iter().enumerate() {
            self.at(idx.to_string(), |c| match path {
                Value::Mapping(map) => {
                    for key in ["local", "remote", "mode", "owner", "options"] {
                        if let Some(v) = map.get(key) {
                            c.at(key, |c| c.expect(is_stringish(v), &["a string"]));
                        }
                    }
                }
                p => c.expect(is_stringish(p), &["a string", "a hash"]),
            });
        }
    }

    /// A "..." section: first the generic type check Kamal makes from the parent's example, then its own rules.
    fn check_section(&mut self, value: &Value, section: Section, key: &str) {
        let proxy_switch = key == "proxy" && matches!(value, Value::Bool(_));
        if proxy_switch {
            return;
        }
        let servers_list = section == Section::Servers && value.is_sequence();
        if !value.is_mapping() && !servers_list {
            let types: &[&str] = if section == Section::Servers { &["an array", "a hash"] } else { &["a hash"] };
            return self.type_error(types);
        }
        match section {
            Section::Registry => self.check_registry(value),
            Section::Servers => self.check_servers(value),
            Section::Env => self.check_env(value, self.path.len() == 1),
            Section::Ssh => self.check_keys(mapping(value), SSH, KeyContext::Nested),
            Section::Sshkit => self.check_keys(mapping(value), SSHKIT, KeyContext::Nested),
            Section::Builder => self.check_builder(mapping(value)),
            Section::Accessories => {
                for (name, accessory) in mapping(value) {
                    self.at(scalar_text(name), |c| c.check_accessory(accessory));
                }
            }
            Section::Proxy => self.check_proxy(mapping(value)),
            Section::Boot => self.check_keys(mapping(value), BOOT, KeyContext::Nested),
            Section::Logging => self.check_keys(mapping(value), LOGGING, KeyContext::Nested),
            Section::Output => self.check_keys(mapping(value), OUTPUT, KeyContext::Nested),
            Section::Aliases => {
                for (name, command) in mapping(value) {
                    self.at(scalar_text(name), |c| c.expect(is_stringish(command), &["a string"]));
                }
            }
        }
    }

    fn check_registry(&mut self, value: &Value) {
        let map = mapping(value);
        let mut rest = map.clone();
        rest.remove("username");
        rest.remove("password");
        self.check_keys(&rest, REGISTRY, KeyContext::Nested);
        let local = map.get("server").and_then(Value::as_str).is_some_and(is_local_registry);
        if local {
            return;
        }
        for key in ["username", "password"] {
            self.at(key, |c| match map.get(key) {
                None | Some(Value::Null) => c.error_with_hint(
                    "is required",
                    format!("set `registry.{key}` to a value or to a one-item list naming a secret, e.g. [KAMAL_REGISTRY_PASSWORD]"),
                ),
                Some(Value::String(s)) if s.trim().is_empty() => {
                    c.error_with_hint("is required", format!("`registry.{key}` is empty"))
                }
                Some(Value::String(_)) => (),
                Some(Value::Sequence(items)) if items.len() == 1 && items[0].is_string() => (),
                Some(_) => c.error("should be a string or an array with one string (for secret lookup)"),
            });
        }
    }

    fn check_servers(&mut self, value: &Value) {
        match value {
            Value::Sequence(_) => self.check_hosts(value),
            Value::Mapping(roles) => {
                for (name, role) in roles {
                    self.at(scalar_text(name), |c| c.check_role(role));
                }
            }
            _ => self.type_error(&["an array", "a hash"]),
        }
    }

    fn check_role(&mut self, role: &Value) {
        match role {
            Value::Sequence(_) => self.check_hosts(role),
            Value::Mapping(map) => {
                self.check_reserved_labels(map);
                self.check_keys(map, ROLE, KeyContext::Nested);
                self.check_restart_policy(map);
            }
            _ => self.type_error(&["an array", "a hash"]),
        }
    }

    fn check_reserved_labels(&mut self, map: &Mapping) {
        let Some(Value::Mapping(labels)) = map.get("labels") else { return };
        for (key, _) in labels {
            let name = scalar_text(key);
            if ["destination", "role", "service"].contains(&name.as_str()) {
                self.at("labels", |c| {
                    c.at(name, |c| c.error("invalid label. destination, role, and service are reserved labels"))
                });
            }
        }
    }

    fn check_restart_policy(&mut self, map: &Mapping) {
        let Some(Value::Mapping(options)) = map.get("options") else { return };
        let Some(policy) = options.get("restart") else { return };
        self.at("options", |c| {
            c.at("restart", |c| match policy {
                Value::String(s) if is_restart_policy(s) => (),
                Value::String(_) => c.error("should be no, always, unless-stopped, on-failure, or on-failure:N"),
                _ => c.error(r#"should be a string. Use "no" to disable restarts"#),
            })
        });
    }

    fn check_env(&mut self, value: &Value, root: bool) {
        let map = mapping(value);
        let complex = map.keys().any(|k| ENV_KEYS.contains(&scalar_text(k).as_str()));
        if !complex {
            for (k, v) in map {
                self.at(scalar_text(k), |c| c.expect(is_stringish(v), &["a string"]));
            }
            return;
        }
        let unknown: Vec<String> = map.keys().map(scalar_text).filter(|k| !ENV_KEYS.contains(&k.as_str())).collect();
        if !unknown.is_empty() {
            self.unknown_keys(&unknown, ENV_KEYS.to_vec());
        }
        if let Some(clear) = map.get("clear") {
            self.at("clear", |c| c.check(clear, &HashOfStr, "clear"));
        }
        if let Some(secret) = map.get("secret") {
            self.at("secret", |c| c.check_list(secret, &Str, "secret"));
        }
        if let Some(tags) = map.get("tags") {
            if !root {
                return self.error_with_hint(
                    "tags are only allowed in the root env",
                    "move `tags:` to the top-level `env:` section",
                );
            }
            self.at("tags", |c| match tags {
                Value::Mapping(tags) => {
                    for (tag, tag_env) in tags {
                        c.at(scalar_text(tag), |c| match tag_env {
                            Value::Mapping(_) => c.check_env(tag_env, false),
                            _ => c.type_error(&["a hash"]),
                        });
                    }
                }
                _ => c.type_error(&["a hash"]),
            });
        }
    }

    fn check_builder(&mut self, map: &Mapping) {
        self.check_keys(map, BUILDER, KeyContext::Nested);
        if let Some(cache_type) = map.get("cache").and_then(|c| c.get("type")).and_then(Value::as_str)
            && !["gha", "registry"].contains(&cache_type)
        {
            self.error_with_hint(format!("Invalid cache type: {cache_type}"), "use `gha` or `registry`");
        }
        if !map.get("arch").is_some_and(is_present) {
            self.error_with_hint(
                "Builder arch not set",
                "add `builder: { arch: amd64 }` (or arm64, or a list of both)",
            );
        }
        let remote_blank = !map.get("remote").is_some_and(is_present);
        if map.get("local") == Some(&Value::Bool(false)) && remote_blank {
            self.error_with_hint(
                "Cannot disable local builds, no remote is set",
                "set `builder.remote: ssh://user@host`",
            );
        }
    }

    fn check_accessory(&mut self, value: &Value) {
        let Value::Mapping(map) = value else {
            return self.type_error(&["a hash"]);
        };
        self.check_keys(map, ACCESSORY, KeyContext::Nested);
        let placements = ["host", "hosts", "role", "roles", "tag", "tags"];
        let n_placements = placements.iter().filter(|k| map.contains_key(**k)).count();
        if n_placements != 1 {
            self.error_with_hint(
                "specify one of `host`, `hosts`, `role`, `roles`, `tag` or `tags`",
                if n_placements == 0 { "say where the accessory runs" } else { "keep only one of them" },
            );
        }
        self.check_reserved_labels(map);
        self.check_restart_policy(map);
    }

    fn check_proxy(&mut self, map: &Mapping) {
        self.check_keys(map, PROXY, KeyContext::Nested);
        let has_host = map.get("host").is_some_and(is_present) || map.get("hosts").is_some_and(is_present);
        let ssl = map.get("ssl").is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)));
        if !has_host && ssl {
            self.error_with_hint(
                "Must set a host to enable automatic SSL",
                "add `host: app.example.com` (the name the certificate is for)",
            );
        }
        if map.contains_key("host") && map.contains_key("hosts") {
            self.error_with_hint(
                "Specify one of 'host' or 'hosts', not both",
                "if a destination file sets `hosts` over a base `host`, use the same key in both",
            );
        }
    }
}

fn mapping(value: &Value) -> &Mapping {
    static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    value.as_mapping().unwrap_or_else(|| EMPTY.get_or_init(Mapping::new))
}

/// A scalar as the text Ruby would interpolate (`to_s`), other values as compact YAML. Also how mapping keys
/// print in paths: YAML allows any scalar as a key, Kamal prints them as strings.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other if let Some(text) = crate::config::source::date_or_time_to_s(other) => text,
        other => yaml_serde::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// Kamal's "stringish": strings, symbols, numbers and booleans all pass where a string is expected.
fn is_stringish(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn is_integer(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.is_i64() || n.is_u64())
}

/// ActiveSupport's `present?`: not null, not an empty or blank string, not an empty collection, not `false`.
pub fn is_present(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => !map.is_empty(),
        _ => true,
    }
}

/// `server: localhost:5555` makes Kamal run a registry on the deployer and forward it to the hosts.
pub fn is_local_registry(server: &str) -> bool {
    server == "localhost" || server.starts_with("localhost:")
}

fn is_restart_policy(policy: &str) -> bool {
    match policy {
        "no" | "always" | "unless-stopped" | "on-failure" => true,
        _ => policy.strip_prefix("on-failure:").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// The closest known key, if it is close enough to be a likely typo.
fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems in `yaml`, with a valid registry and builder added where it names none.
    fn problems(yaml: &str) -> Vec<String> {
        let mut text = yaml.to_string();
        if !yaml.contains("registry") {
            text.push_str("\nregistry: {username: u, password: p}");
        }
        if !yaml.contains("builder") {
            text.push_str("\nbuilder: {arch: amd64}");
        }
        let map = crate::config::source::parse_yaml(&text, std::path::Path::new("test.yml")).unwrap();
        validate(&map).iter().map(|p| p.to_string()).collect()
    }

    #[track_caller]
    fn check(yaml: &str, expected: &[&str]) {
        let found = problems(yaml);
        assert_eq!(found.len(), expected.len(), "problems: {found:#?}");
        for (found, expected) in found.iter().zip(expected) {
            assert!(found.starts_with(expected), "expected {expected:?}, found {found:?}");
        }
    }

    const VALID: &str = "service: app\nimage: app\nservers: [1.1.1.1]\nregistry: {username: u, password: [P]}\nbuilder: {arch: amd64}\n";

    #[test]
    fn a_minimal_valid_config_has_no_problems() {
        check(VALID, &[]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let yaml = "builder: {arch: a}\nservers: {job: {hosts: [h], stop_timeout: 30s}}\nproxy: {host_port: 3000}\nx-anything: 1\ntraefik: {}\n";
        check(
            yaml,
            &[
                "servers/job/stop_timeout: should be an integer",
                "proxy: unknown key: host_port (did you mean `host` instead of `host_port`?",
                "unknown key: traefik (`traefik` is a Kamal 1 key",
            ],
        );
    }

    #[test]
    fn registry_credentials_are_required_unless_the_registry_is_local() {
        check(
            "service: a\nregistry: {server: ghcr.io}\nbuilder: {arch: amd64}",
            &["registry/username: is required", "registry/password: is required"],
        );
        check("service: a\nregistry: {server: localhost:5555}\nbuilder: {arch: amd64}", &[]);
        check(
            "service: a\nregistry: {username: [A, B], password: p}\nbuilder: {arch: amd64}",
            &["registry/username: should be a string or an array with one string"],
        );
    }

    #[test]
    fn builder_needs_an_arch_and_a_known_cache_type() {
        check("builder: {cache: {type: s3}}", &["builder: Invalid cache type: s3", "builder: Builder arch not set"]);
        check("builder: {arch: [amd64, arm64], local: false}", &["builder: Cannot disable local builds"]);
    }

    #[test]
    fn env_tags_belong_to_the_root_env_only() {
        check("builder: {arch: a}\nenv: {clear: {A: 1}, tags: {t: {B: 2}}}", &[]);
        check(
            "builder: {arch: a}\nservers: {web: {hosts: [h], env: {tags: {t: {}}}}}",
            &["servers/web/env: tags are only allowed in the root env"],
        );
        check(
            "builder: {arch: a}\naccessories: {db: {host: h, env: {clear: {}, files: [], directories: []}}}",
            &["accessories/db/env: unknown keys: files, directories"],
        );
    }

    #[test]
    fn accessories_need_exactly_one_placement() {
        check("builder: {arch: a}\naccessories: {db: {image: pg}}", &["accessories/db: specify one of `host`"]);
        check(
            "builder: {arch: a}\naccessories: {db: {image: pg, host: a, roles: [web]}}",
            &["accessories/db: specify one of `host`"],
        );
    }

    #[test]
    fn proxy_rules() {
        check("builder: {arch: a}\nproxy: {ssl: true}", &["proxy: Must set a host to enable automatic SSL"]);
        check("builder: {arch: a}\nproxy: {host: a, hosts: [b]}", &["proxy: Specify one of 'host' or 'hosts'"]);
        check("builder: {arch: a}\nservers: {web: {hosts: [h], proxy: false}}", &[]);
        check("builder: {arch: a}\nproxy: {ssl: {certificate_pem: C, private_key_pem: K}, host: a}", &[]);
    }

    #[test]
    fn restart_policy_and_reserved_labels() {
        check(
            "builder: {arch: a}\nservers: {web: {hosts: [h], options: {restart: sometimes}, labels: {role: x}}}",
            &["servers/web/labels/role: invalid label", "servers/web/options/restart: should be no, always"],
        );
    }

    /// Psych's YAML 1.1 reading decides the types checked: `yes` is true, `no` false, a date a `Date`.
    #[test]
    fn values_are_checked_as_psych_reads_them() {
        check("builder: {arch: a}\nproxy: {ssl: yes}", &["proxy: Must set a host to enable automatic SSL"]);
        check("builder: {arch: a}\nproxy: {ssl: Yes, host: a}", &[]);
        check(
            "builder: {arch: a}\nservers: {web: {hosts: [h], options: {restart: no}}}",
            &[r#"servers/web/options/restart: should be a string. Use "no" to disable restarts"#],
        );
        check("builder: {arch: a}\nservers: {web: {hosts: [h], options: {restart: 'no'}}}", &[]);
        check(
            "builder: {arch: a}\nenv: {clear: {BUILT: 2001-12-14, PORT: 0755}}",
            &["env/clear/BUILT: should be a string"],
        );
    }

    #[test]
    fn hosts_may_carry_tags() {
        check("builder: {arch: a}\nservers: [a, {b: t}, {c: [t, u]}]", &[]);
        check("builder: {arch: a}\nservers: [{b: t, c: u}]", &["servers/0: multiple hosts found"]);
        check("builder: {arch: a}\nservers: {web: 1.1.1.1}", &["servers/web: should be an array or a hash"]);
    }
}
