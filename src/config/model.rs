//! Stage two, second half: the validated YAML tree resolved into typed values with Kamal's defaults.
//!
//! The cross-field rules Kamal checks after its schema (the primary role exists and has hosts, accessories name
//! known roles, SSL roles have one host, proxy `run` settings agree per host, ...) live here, and like the
//! schema they report every problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use yaml_serde::{Mapping, Value};

use crate::config::schema::{Problem, is_local_registry, is_present, scalar_text};
use crate::config::source::{SourceFiles, deep_merge};
use crate::config::{ConfigError, LoadOptions};
use crate::environment::Environment;

/// The version of Kamal whose behaviour berth reproduces; `minimum_version` is compared with it.
pub const KAMAL_COMPATIBLE_VERSION: &str = "2.12.0";

/// A resolved configuration. The raw merged tree is kept for what Kamal prints verbatim (`builder`, `accessories`).
#[derive(Clone, Debug)]
pub struct Config {
    pub service: String,
    pub image: String,
    pub destination: Option<String>,
    pub version: String,
    /// Roles in Kamal's order: sorted by name.
    pub roles: Vec<Role>,
    pub primary_role: String,
    pub allow_empty_roles: bool,
    pub registry: Registry,
    pub env: Env,
    pub labels: IndexMap<String, String>,
    pub volumes: Vec<String>,
    pub proxy: Option<Mapping>,
    pub builder: Builder,
    pub ssh: Ssh,
    pub sshkit: Sshkit,
    pub accessories: Vec<Accessory>,
    pub boot: Boot,
    pub logging: Logging,
    pub aliases: IndexMap<String, String>,
    pub asset_path: Option<String>,
    pub hooks_path: String,
    pub secrets_path: String,
    pub error_pages_path: Option<String>,
    pub retain_containers: u64,
    pub readiness_delay: u64,
    pub deploy_timeout: u64,
    pub drain_timeout: u64,
    pub stop_timeout: Option<u64>,
    pub minimum_version: Option<String>,
    /// The directory holding `config/` (where `.kamal/` lives and local commands run).
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    pub raw: Mapping,
}

/// A host and the tags that select extra env for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    pub hosts: Vec<Host>,
    pub cmd: Option<String>,
    pub options: Mapping,
    pub labels: IndexMap<String, String>,
    pub env: Env,
    /// The proxy settings when this role runs behind the proxy: the root `proxy` deep-merged with the role's.
    pub proxy: Option<Mapping>,
    pub logging: Logging,
    pub asset_path: Option<String>,
    pub stop_timeout: Option<u64>,
}

impl Role {
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str())
    }

    pub fn runs_proxy(&self) -> bool {
        self.proxy.is_some()
    }
}

/// A registry credential: given literally, or the name of a secret to look up (`password: [SECRET_NAME]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Literal(String),
    Secret(String),
}

#[derive(Clone, Debug)]
pub struct Registry {
    /// `None` means Docker Hub.
    pub server: Option<String>,
    pub username: Option<Credential>,
    pub password: Option<Credential>,
}

impl Registry {
    pub fn is_local(&self) -> bool {
        self.server.as_deref().is_some_and(is_local_registry)
    }
}

/// Environment variables: clear values, secrets by name (`ENV_NAME` -> `SECRET_NAME`), and per-tag extras.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub clear: IndexMap<String, String>,
    pub secrets: IndexMap<String, String>,
    pub tags: IndexMap<String, Env>,
}

impl Env {
    /// This env with `other` layered on top: clear values merge (later wins), secret lists union.
    pub fn merged_with(&self, other: &Env) -> Env {
        let mut merged = self.clone();
        merged.clear.extend(other.clear.clone());
        merged.secrets.extend(other.secrets.clone());
        merged
    }
}

#[derive(Clone, Debug)]
pub struct Builder {
    pub arch: Vec<String>,
    pub remote: Option<String>,
    pub local: bool,
    pub driver: String,
    pub context: Option<String>,
    pub dockerfile: String,
    pub target: Option<String>,
    pub args: Mapping,
    pub secrets: Vec<String>,
    pub raw: Mapping,
}

#[derive(Clone, Debug)]
pub struct Ssh {
    pub user: String,
    pub port: Value,
    pub proxy: Option<String>,
    pub proxy_command: Option<String>,
    pub log_level: Option<String>,
    pub keys_only: Option<bool>,
    pub keys: Option<Vec<String>>,
    /// Names of secrets holding private keys (inline PEM is accepted too, as Kamal does).
    pub key_data: Option<Vec<String>>,
    pub config: Option<Value>,
    pub forward_agent: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Sshkit {
    pub max_concurrent_starts: u64,
    pub pool_idle_timeout: u64,
    pub dns_retries: u64,
    pub raw: Mapping,
}

#[derive(Clone, Debug)]
pub struct Accessory {
    pub name: String,
    pub service: String,
    pub image: String,
    pub hosts: Vec<String>,
    pub cmd: Option<String>,
    pub port: Option<String>,
    pub labels: IndexMap<String, String>,
    pub options: Mapping,
    pub env: Env,
    pub files: Vec<Value>,
    pub directories: Vec<Value>,
    pub volumes: Vec<String>,
    pub network: String,
    pub proxy: Option<Mapping>,
    pub registry: Option<Registry>,
}

#[derive(Clone, Debug, Default)]
pub struct Boot {
    /// `limit: 2` or `limit: "25%"` (of all hosts), as written.
    pub limit: Option<String>,
    pub wait: Option<u64>,
    pub parallel_roles: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: IndexMap<String, String>,
}

impl Logging {
    /// Docker arguments: `--log-driver D --log-opt k="v"`, with Kamal's default `max-size=10m` when unset.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(driver) = &self.driver {
            args.push("--log-driver".to_string());
            args.push(format!("\"{driver}\""));
        }
        if self.driver.is_none() && self.options.is_empty() {
            args.push("--log-opt".to_string());
            args.push("max-size=\"10m\"".to_string());
        }
        for (key, value) in &self.options {
            args.push("--log-opt".to_string());
            args.push(format!("{key}=\"{value}\""));
        }
        args
    }
}

impl Config {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    pub fn primary_role(&self) -> Option<&Role> {
        self.role(&self.primary_role)
    }

    pub fn primary_host(&self) -> Option<&str> {
        self.primary_role().and_then(|r| r.hosts.first()).map(|h| h.name.as_str())
    }

    /// Hosts of every role, then of every accessory, each once (Kamal's `all_hosts`).
    pub fn all_hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = Vec::new();
        let role_hosts = self.roles.iter().flat_map(|r| r.host_names());
        let accessory_hosts = self.accessories.iter().flat_map(|a| a.hosts.iter().map(String::as_str));
        for host in role_hosts.chain(accessory_hosts) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }

    /// `[registry server/]image`.
    pub fn repository(&self) -> String {
        match &self.registry.server {
            Some(server) => format!("{server}/{}", self.image),
            None => self.image.clone(),
        }
    }

    pub fn absolute_image(&self) -> String {
        format!("{}:{}", self.repository(), self.version)
    }

    pub fn service_with_version(&self) -> String {
        format!("{}-{}", self.service, self.version)
    }

    /// `service[-destination]`: the lock name and the app directory on hosts.
    pub fn service_and_destination(&self) -> String {
        match &self.destination {
            Some(dest) => format!("{}-{dest}", self.service),
            None => self.service.clone(),
        }
    }

    /// Every secret the configuration names, with the YAML path that names it: env secrets (root, roles,
    /// tags, accessories), registry credentials, builder secrets, SSH key data and proxy certificates.
    pub fn secret_references(&self) -> Vec<(String, String)> {
        let mut refs = Vec::new();
        let mut env_refs = |path: String, env: &Env| {
            for secret in env.secrets.values() {
                refs.push((format!("{path}/secret"), secret.clone()));
            }
            for (tag, tag_env) in &env.tags {
                for secret in tag_env.secrets.values() {
                    refs.push((format!("{path}/tags/{tag}/secret"), secret.clone()));
                }
            }
        };
        env_refs("env".into(), &self.env);
        for role in &self.roles {
            env_refs(format!("servers/{}/env", role.name), &role.env);
        }
        for accessory in &self.accessories {
            env_refs(format!("accessories/{}/env", accessory.name), &accessory.env);
        }
        for (key, credential) in [("username", &self.registry.username), ("password", &self.registry.password)] {
            if let Some(Credential::Secret(name)) = credential {
                refs.push((format!("registry/{key}"), name.clone()));
            }
        }
        refs.extend(self.builder.secrets.iter().map(|name| ("builder/secrets".to_string(), name.clone())));
        let key_data = self.ssh.key_data.iter().flatten().filter(|k| !k.contains("-----BEGIN"));
        refs.extend(key_data.map(|name| ("ssh/key_data".to_string(), name.clone())));
        let proxies =
            self.roles.iter().filter_map(|r| r.proxy.as_ref().map(|p| (format!("servers/{}/proxy", r.name), p)));
        for (path, proxy) in proxies {
            if let Some(Value::Mapping(ssl)) = proxy.get("ssl") {
                for key in ["certificate_pem", "private_key_pem"] {
                    if let Some(name) = ssl.get(key).filter(|v| !v.is_null()) {
                        refs.push((format!("{path}/ssl/{key}"), scalar_text(name)));
                    }
                }
            }
        }
        refs
    }

    pub fn volume_args(&self) -> Vec<String> {
        self.volumes.iter().flat_map(|v| ["--volume".to_string(), v.clone()]).collect()
    }
}

/// Resolves a schema-valid tree. Cross-field problems are collected and returned together.
pub fn resolve(
    tree: Mapping,
    options: &LoadOptions,
    files: &SourceFiles,
    env: &Environment,
    schema_problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let mut problems = schema_problems;
    let mut problem = |path: &str, message: String, hint: Option<&str>| {
        problems.push(Problem { path: path.to_string(), message, hint: hint.map(str::to_string) })
    };
    let root = project_root(&options.config_file);

    let registry = resolve_registry(tree.get("registry").and_then(Value::as_mapping));
    let service = str_at(&tree, "service");
    let image = match str_at(&tree, "image") {
        Some(image) => Some(image),
        None if registry.is_local() => service.clone(),
        None => None,
    };
    for (key, present) in [
        ("service", service.is_some()),
        ("image", image.is_some()),
        ("registry", tree.get("registry").is_some_and(is_present)),
    ] {
        if !present {
            problem("", format!("Missing required configuration for {key}"), Some(required_hint(key)));
        }
    }
    if let Some(service) = &service
        && (service.is_empty() || !service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        problem(
            "service",
            "Service name can only include alphanumeric characters, hyphens, and underscores".into(),
            Some("it prefixes container names, e.g. `service: my-app`"),
        );
    }

    let root_proxy = tree.get("proxy").and_then(Value::as_mapping).cloned();
    let root_env = resolve_env(tree.get("env"));
    let root_logging = tree.get("logging").and_then(Value::as_mapping).cloned().unwrap_or_default();
    let primary_role = str_at(&tree, "primary_role").unwrap_or_else(|| "web".to_string());
    let allow_empty_roles = tree.get("allow_empty_roles") == Some(&Value::Bool(true));

    let roles = match tree.get("servers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(hosts)) => vec![resolve_role(
            "web",
            &Value::Sequence(hosts.clone()),
            &primary_role,
            root_proxy.as_ref(),
            &root_logging,
        )],
        Some(Value::Mapping(servers)) => {
            let mut roles: Vec<Role> = servers
                .iter()
                .map(|(name, role)| {
                    resolve_role(&scalar_text(name), role, &primary_role, root_proxy.as_ref(), &root_logging)
                })
                .collect();
            roles.sort_by(|a, b| a.name.cmp(&b.name));
            roles
        }
        Some(_) => Vec::new(),
    };

    let accessories_tree = tree.get("accessories").and_then(Value::as_mapping).cloned().unwrap_or_default();
    let mut accessories = Vec::new();
    for (name, raw) in &accessories_tree {
        let name = scalar_text(name);
        let raw = raw.as_mapping().cloned().unwrap_or_default();
        let (accessory, accessory_problems) = resolve_accessory(&name, &raw, service.as_deref().unwrap_or(""), &roles);
        for message in accessory_problems {
            problem(&format!("accessories/{name}"), message, None);
        }
        accessories.push(accessory);
    }

    if tree.get("servers").is_none_or(Value::is_null) {
        if accessories.is_empty() {
            problem(
                "",
                "No servers or accessories specified".into(),
                Some("add `servers: [your.host]` (or roles under `servers:`)"),
            );
        }
    } else {
        match roles.iter().find(|r| r.name == primary_role) {
            None => problem(
                "",
                format!("The primary_role {primary_role} isn't defined"),
                Some("name an existing role in `primary_role:` or add that role under `servers:`"),
            ),
            Some(role) if role.hosts.is_empty() => problem(
                "",
                format!("No servers specified for the {primary_role} primary_role"),
                Some("list at least one host for it"),
            ),
            Some(_) => (),
        }
        if !allow_empty_roles {
            for role in roles.iter().filter(|r| r.hosts.is_empty() && r.name != primary_role) {
                problem(
                    "",
                    format!(
                        "No servers specified for the {} role. You can ignore this with allow_empty_roles: true",
                        role.name
                    ),
                    None,
                );
            }
        }
    }

    let minimum_version = str_at(&tree, "minimum_version");
    if let Some(minimum) = &minimum_version
        && version_is_newer(minimum, KAMAL_COMPATIBLE_VERSION)
    {
        problem(
            "minimum_version",
            format!("Current version is {KAMAL_COMPATIBLE_VERSION}, minimum required is {minimum}"),
            Some("berth behaves as this Kamal version; lower `minimum_version` if the config works with it"),
        );
    }
    let retain_containers = int_at(&tree, "retain_containers").unwrap_or(5);
    if retain_containers < 1 {
        problem("retain_containers", "Must retain at least 1 container".into(), Some("set it to 1 or more"));
    }

    let hooks_path = str_at(&tree, "hooks_path").unwrap_or_else(|| ".kamal/hooks".to_string());
    let traefik_hooks: Vec<&str> = ["pre-traefik-reboot", "post-traefik-reboot"]
        .into_iter()
        .filter(|hook| root.join(&hooks_path).join(hook).exists())
        .collect();
    if !traefik_hooks.is_empty() {
        problem(
            "hooks_path",
            format!("Found {}, these should be renamed to (pre|post)-proxy-reboot", traefik_hooks.join(", ")),
            None,
        );
    }

    check_ssl_roles(&roles, &mut problem);
    check_proxy_run_conflicts(&roles, &accessories, &mut problem);

    let builder = resolve_builder(tree.get("builder").and_then(Value::as_mapping).cloned().unwrap_or_default());
    if registry.is_local()
        && let Some(remote) = &builder.remote
        && !remote.starts_with("ssh://")
    {
        problem(
            "builder/remote",
            "Local registry with remote builder requires an ssh:// remote".into(),
            Some("use `remote: ssh://user@builder-host`"),
        );
    }

    let aliases: IndexMap<String, String> = tree
        .get("aliases")
        .and_then(Value::as_mapping)
        .map(|m| m.iter().map(|(k, v)| (scalar_text(k), scalar_text(v))).collect())
        .unwrap_or_default();
    for name in aliases.keys() {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            problem(
                &format!("aliases/{name}"),
                "Invalid alias name: can only contain lowercase letters, numbers, dashes and underscores".into(),
                None,
            );
        }
    }

    if !problems.is_empty() {
        return Err(ConfigError::Invalid { files: files.iter().map(Path::to_path_buf).collect(), problems });
    }

    let version = resolve_version(options.version.as_deref(), env, &root, builder.context.is_some())?;
    Ok(Config {
        service: service.unwrap_or_default(),
        image: image.unwrap_or_default(),
        destination: options.destination.clone(),
        version,
        roles,
        primary_role,
        allow_empty_roles,
        registry,
        env: root_env,
        labels: string_map(tree.get("labels")),
        volumes: string_list(tree.get("volumes")),
        proxy: root_proxy,
        builder,
        ssh: resolve_ssh(tree.get("ssh").and_then(Value::as_mapping).cloned().unwrap_or_default()),
        sshkit: resolve_sshkit(tree.get("sshkit").and_then(Value::as_mapping).cloned().unwrap_or_default()),
        accessories,
        boot: resolve_boot(tree.get("boot").and_then(Value::as_mapping)),
        logging: resolve_logging(&root_logging),
        aliases,
        asset_path: str_at(&tree, "asset_path"),
        hooks_path,
        secrets_path: str_at(&tree, "secrets_path").unwrap_or_else(|| ".kamal/secrets".to_string()),
        error_pages_path: str_at(&tree, "error_pages_path"),
        retain_containers: retain_containers.max(1) as u64,
        readiness_delay: int_at(&tree, "readiness_delay").unwrap_or(7).max(0) as u64,
        deploy_timeout: int_at(&tree, "deploy_timeout").unwrap_or(30).max(0) as u64,
        drain_timeout: int_at(&tree, "drain_timeout").unwrap_or(30).max(0) as u64,
        stop_timeout: int_at(&tree, "stop_timeout").map(|t| t.max(0) as u64),
        minimum_version,
        root,
        files: files.iter().map(Path::to_path_buf).collect(),
        raw: tree,
    })
}

fn required_hint(key: &str) -> &'static str {
    match key {
        "service" => "add `service: my-app` (it prefixes container names)",
        "image" => "add `image: my-user/my-app` (the repository on your registry)",
        _ => "add `registry: { server: ghcr.io, username: me, password: [KAMAL_REGISTRY_PASSWORD] }`",
    }
}

/// The project root: the parent of the `config/` directory holding the file, else the file's directory.
fn project_root(config_file: &Path) -> PathBuf {
    let dir = config_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "config") {
        dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    } else if dir == Path::new("config") {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}

/// `--version` › `$VERSION` › `git rev-parse HEAD`, with `_uncommitted_<hex>` when the tree is dirty and the
/// image is built from the working tree (`builder.context` set); otherwise the build uses the commit itself.
fn resolve_version(
    declared: Option<&str>,
    env: &Environment,
    root: &Path,
    builds_from_working_tree: bool,
) -> Result<String, ConfigError> {
    if let Some(version) = declared.filter(|v| !v.is_empty()) {
        return Ok(version.to_string());
    }
    if let Some(version) = env.get("VERSION") {
        return Ok(version.to_string());
    }
    let git = |args: &str| -> Option<String> {
        let output = env.with_cwd(root).shell(&format!("git {args} 2>/dev/null")).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let Some(revision) = git("rev-parse HEAD").filter(|r| !r.is_empty()) else {
        return Err(ConfigError::NoVersion { dir: root.to_path_buf() });
    };
    let dirty =
        builds_from_working_tree && git("status --porcelain --untracked-files=no").is_some_and(|s| !s.is_empty());
    if dirty {
        let suffix: String = format!("{:016x}", random_u64());
        return Ok(format!("{revision}_uncommitted_{suffix}"));
    }
    Ok(revision)
}

/// A random number for the dirty-tree version suffix, from the standard library's per-process random hasher.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// Ruby's `Gem::Version` comparison, for plain dotted numbers: is `a` newer than `b`?
fn version_is_newer(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.trim().parse().unwrap_or(0)).collect() };
    let (mut a, mut b) = (parse(a), parse(b));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    a > b
}

fn resolve_registry(map: Option<&Mapping>) -> Registry {
    let credential = |key: &str| match map.and_then(|m| m.get(key)) {
        Some(Value::Sequence(items)) => items.first().map(|v| Credential::Secret(scalar_text(v))),
        Some(v) if !v.is_null() => Some(Credential::Literal(scalar_text(v))),
        _ => None,
    };
    Registry {
        server: map.and_then(|m| m.get("server")).filter(|v| !v.is_null()).map(scalar_text),
        username: credential("username"),
        password: credential("password"),
    }
}

fn resolve_role(
    name: &str,
    raw: &Value,
    primary_role: &str,
    root_proxy: Option<&Mapping>,
    root_logging: &Mapping,
) -> Role {
    let empty = Mapping::new();
    let (hosts, map) = match raw {
        Value::Sequence(_) => (resolve_hosts(raw), &empty),
        Value::Mapping(map) => (map.get("hosts").map(resolve_hosts).unwrap_or_default(), map),
        _ => (Vec::new(), &empty),
    };
    let proxy = match map.get("proxy") {
        Some(Value::Bool(false)) => None,
        Some(Value::Mapping(role_proxy)) => {
            let mut merged = root_proxy.cloned().unwrap_or_default();
            deep_merge(&mut merged, role_proxy.clone());
            Some(merged)
        }
        Some(Value::Bool(true)) => Some(root_proxy.cloned().unwrap_or_default()),
        _ if name == primary_role => Some(root_proxy.cloned().unwrap_or_default()),
        _ => None,
    };
    let mut logging = root_logging.clone();
    if let Some(Value::Mapping(role_logging)) = map.get("logging") {
        deep_merge(&mut logging, role_logging.clone());
    }
    Role {
        name: name.to_string(),
        hosts,
        cmd: map.get("cmd").filter(|v| !v.is_null()).map(scalar_text),
        options: map.get("options").and_then(Value::as_mapping).cloned().unwrap_or_default(),
        labels: string_map(map.get("labels")),
        env: resolve_env(map.get("env")),
        proxy,
        logging: resolve_logging(&logging),
        asset_path: map.get("asset_path").filter(|v| !v.is_null()).map(scalar_text),
        stop_timeout: map.get("stop_timeout").and_then(Value::as_u64),
    }
}

/// `[a, {b: tag}, {c: [t1, t2]}]` -> hosts with their tags. Host names are trimmed, as Kamal does.
fn resolve_hosts(value: &Value) -> Vec<Host> {
    let Value::Sequence(items) = value else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Mapping(map) => map.iter().next().map(|(host, tags)| Host {
                name: scalar_text(host).trim().to_string(),
                tags: match tags {
                    Value::Sequence(tags) => tags.iter().map(scalar_text).collect(),
                    tag => vec![scalar_text(tag)],
                },
            }),
            host if !host.is_null() => Some(Host { name: scalar_text(host).trim().to_string(), tags: Vec::new() }),
            _ => None,
        })
        .collect()
}

fn resolve_env(value: Option<&Value>) -> Env {
    let Some(Value::Mapping(map)) = value else { return Env::default() };
    let complex = ["clear", "secret", "tags"].iter().any(|k| map.contains_key(*k));
    if !complex {
        return Env { clear: string_map(Some(&Value::Mapping(map.clone()))), ..Env::default() };
    }
    let secrets = string_list(map.get("secret"))
        .into_iter()
        .map(|entry| match entry.split_once(':') {
            Some((env_name, secret_name)) => (env_name.to_string(), secret_name.to_string()),
            None => (entry.clone(), entry),
        })
        .collect();
    let tags = match map.get("tags") {
        Some(Value::Mapping(tags)) => tags.iter().map(|(k, v)| (scalar_text(k), resolve_env(Some(v)))).collect(),
        _ => IndexMap::new(),
    };
    Env { clear: string_map(map.get("clear")), secrets, tags }
}

fn resolve_builder(raw: Mapping) -> Builder {
    let arch = match raw.get("arch") {
        Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
        Some(v) if !v.is_null() => vec![scalar_text(v)],
        _ => Vec::new(),
    };
    Builder {
        arch,
        remote: str_at(&raw, "remote"),
        local: raw.get("local") != Some(&Value::Bool(false)),
        driver: str_at(&raw, "driver").unwrap_or_else(|| "docker-container".to_string()),
        context: str_at(&raw, "context"),
        dockerfile: str_at(&raw, "dockerfile").unwrap_or_else(|| "Dockerfile".to_string()),
        target: str_at(&raw, "target"),
        args: raw.get("args").and_then(Value::as_mapping).cloned().unwrap_or_default(),
        secrets: string_list(raw.get("secrets")),
        raw,
    }
}

fn resolve_ssh(raw: Mapping) -> Ssh {
    let optional_list = |key: &str| raw.get(key).filter(|v| !v.is_null()).map(|v| string_list(Some(v)));
    Ssh {
        user: str_at(&raw, "user").unwrap_or_else(|| "root".to_string()),
        port: raw.get("port").cloned().unwrap_or(Value::Number(22.into())),
        proxy: str_at(&raw, "proxy"),
        proxy_command: str_at(&raw, "proxy_command"),
        log_level: str_at(&raw, "log_level"),
        keys_only: raw.get("keys_only").and_then(Value::as_bool),
        keys: optional_list("keys"),
        key_data: optional_list("key_data"),
        config: raw.get("config").filter(|v| !v.is_null()).cloned(),
        forward_agent: raw.get("forward_agent").and_then(Value::as_bool),
    }
}

fn resolve_sshkit(raw: Mapping) -> Sshkit {
    Sshkit {
        max_concurrent_starts: raw.get("max_concurrent_starts").and_then(Value::as_u64).unwrap_or(30),
        pool_idle_timeout: raw.get("pool_idle_timeout").and_then(Value::as_u64).unwrap_or(900),
        dns_retries: raw.get("dns_retries").and_then(Value::as_u64).unwrap_or(3),
        raw,
    }
}

fn resolve_boot(raw: Option<&Mapping>) -> Boot {
    let Some(raw) = raw else { return Boot::default() };
    Boot {
        limit: raw.get("limit").filter(|v| !v.is_null()).map(scalar_text),
        wait: raw.get("wait").and_then(Value::as_u64),
        parallel_roles: raw.get("parallel_roles") == Some(&Value::Bool(true)),
    }
}

fn resolve_logging(raw: &Mapping) -> Logging {
    Logging { driver: str_at(raw, "driver"), options: string_map(raw.get("options")) }
}

fn resolve_accessory(name: &str, raw: &Mapping, service: &str, roles: &[Role]) -> (Accessory, Vec<String>) {
    let mut problems = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |host: &str| {
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
    };
    if let Some(host) = str_at(raw, "host") {
        add(&host);
    }
    for host in resolve_hosts(raw.get("hosts").unwrap_or(&Value::Null)) {
        add(&host.name);
    }
    let mut role_names = string_list(raw.get("roles"));
    role_names.extend(str_at(raw, "role"));
    let unknown_roles: Vec<&str> =
        role_names.iter().filter(|r| !roles.iter().any(|role| &role.name == *r)).map(String::as_str).collect();
    if !unknown_roles.is_empty() {
        problems.push(format!("unknown roles {}", unknown_roles.join(", ")));
    }
    for role in roles.iter().filter(|r| role_names.contains(&r.name)) {
        role.host_names().for_each(&mut add);
    }
    let mut tags = string_list(raw.get("tags"));
    tags.extend(str_at(raw, "tag"));
    for host in roles.iter().flat_map(|r| r.hosts.iter()) {
        if host.tags.iter().any(|t| tags.contains(t)) {
            add(&host.name);
        }
    }
    let registry = raw.get("registry").and_then(Value::as_mapping).map(|m| resolve_registry(Some(m)));
    let image = str_at(raw, "image").unwrap_or_default();
    let image = match registry.as_ref().and_then(|r| r.server.clone()) {
        Some(server) => format!("{server}/{image}"),
        None => image,
    };
    let accessory = Accessory {
        name: name.to_string(),
        service: str_at(raw, "service").unwrap_or_else(|| format!("{service}-{name}")),
        image,
        hosts,
        cmd: str_at(raw, "cmd"),
        port: str_at(raw, "port"),
        labels: string_map(raw.get("labels")),
        options: raw.get("options").and_then(Value::as_mapping).cloned().unwrap_or_default(),
        env: resolve_env(raw.get("env")),
        files: raw.get("files").and_then(Value::as_sequence).cloned().unwrap_or_default(),
        directories: raw.get("directories").and_then(Value::as_sequence).cloned().unwrap_or_default(),
        volumes: string_list(raw.get("volumes")),
        network: str_at(raw, "network").unwrap_or_else(|| "kamal".to_string()),
        proxy: raw.get("proxy").and_then(Value::as_mapping).cloned(),
        registry,
    };
    (accessory, problems)
}

/// Automatic SSL needs one host per role (Let's Encrypt validates one server), and a name can't be on two roles.
fn check_ssl_roles(roles: &[Role], problem: &mut impl FnMut(&str, String, Option<&str>)) {
    let mut ssl_hosts: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for role in roles {
        let Some(proxy) = &role.proxy else { continue };
        let ssl = proxy.get("ssl");
        let automatic = ssl == Some(&Value::Bool(true));
        if !automatic && !ssl.is_some_and(Value::is_mapping) {
            continue;
        }
        if automatic && role.hosts.len() > 1 {
            problem(
                &format!("servers/{}", role.name),
                format!(
                    "SSL is only supported on a single server unless you provide custom certificates, found {} servers for role {}",
                    role.hosts.len(),
                    role.name
                ),
                Some(
                    "use one host for this role, or give `proxy.ssl: { certificate_pem: SECRET, private_key_pem: SECRET }`",
                ),
            );
        }
        for host in proxy_hosts(proxy) {
            ssl_hosts.entry(host).or_default().push(&role.name);
        }
    }
    let duplicates: Vec<&String> = ssl_hosts.iter().filter(|(_, roles)| roles.len() > 1).map(|(h, _)| h).collect();
    if !duplicates.is_empty() {
        let listed: Vec<&str> = duplicates.iter().map(|h| h.as_str()).collect();
        problem("", format!("Different roles can't share the same host for SSL: {}", listed.join(", ")), None);
    }
}

/// The names a proxy config routes: `host` (comma-separated) or `hosts`.
pub fn proxy_hosts(proxy: &Mapping) -> Vec<String> {
    if let Some(hosts) = proxy.get("hosts").filter(|v| v.is_sequence()) {
        return string_list(Some(hosts));
    }
    match proxy.get("host") {
        Some(host) if !host.is_null() => {
            scalar_text(host).split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect()
        }
        _ => Vec::new(),
    }
}

/// One proxy container serves a host, so all roles and accessories on it must agree on its `proxy.run`.
fn check_proxy_run_conflicts(
    roles: &[Role],
    accessories: &[Accessory],
    problem: &mut impl FnMut(&str, String, Option<&str>),
) {
    let mut by_host: IndexMap<&str, Vec<&Value>> = IndexMap::new();
    let role_runs = roles.iter().filter_map(|r| {
        r.proxy.as_ref().and_then(|p| p.get("run")).map(|run| (r.host_names().collect::<Vec<_>>(), run))
    });
    let accessory_runs = accessories.iter().filter_map(|a| {
        a.proxy.as_ref().and_then(|p| p.get("run")).map(|run| (a.hosts.iter().map(String::as_str).collect(), run))
    });
    for (hosts, run) in role_runs.chain(accessory_runs) {
        for host in hosts {
            let runs = by_host.entry(host).or_default();
            if !runs.contains(&run) {
                runs.push(run);
            }
        }
    }
    for (host, runs) in by_host {
        if runs.len() > 1 {
            problem(
                "",
                format!("Conflicting proxy run configurations for host {host}"),
                Some("every role and accessory on one host shares its proxy: give them the same `proxy.run` settings"),
            );
        }
    }
}

fn str_at(map: &Mapping, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_null()).map(scalar_text)
}

fn int_at(map: &Mapping, key: &str) -> Option<i64> {
    map.get(key).and_then(Value::as_i64)
}

fn string_map(value: Option<&Value>) -> IndexMap<String, String> {
    match value {
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar_text(k), scalar_text(v))).collect(),
        _ => IndexMap::new(),
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
        Some(v) if !v.is_null() => vec![scalar_text(v)],
        _ => Vec::new(),
    }
}
