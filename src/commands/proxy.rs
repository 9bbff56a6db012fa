//! kamal-proxy: the deploy/remove/stop/resume commands sent into the proxy container, and the `kamal-proxy`
//! container itself (network, run, start/stop, logs, legacy boot config) — Kamal's `Commands::Proxy`,
//! `Commands::App::Proxy` and `Configuration::Proxy{,::Run}`.

use yaml_serde::{Mapping, Value};

use super::app::{LogOptions, with_log_options};
use super::names::{self, NETWORK, PROXY_APPS_CONTAINER_DIRECTORY, PROXY_CONFIG_VOLUME, PROXY_CONTAINER};
use super::{OptionValue, docker, seconds, with_equals_option, with_filters, with_options};
use crate::command::Cmd;
use crate::config::Config;
use crate::config::model::proxy_hosts;
use crate::config::schema::{is_present, scalar_text};

/// The oldest kamal-proxy Kamal 2.12 works with, and the image version it runs by default.
pub const MINIMUM_VERSION: &str = "v0.9.2";
/// The proxy image's repository when `proxy.run.repository` is not set.
pub const DEFAULT_REPOSITORY: &str = "basecamp/kamal-proxy";
/// The label kamal-proxy images carry, which `proxy remove` prunes by.
const IMAGE_TITLE_FILTER: &str = "label=org.opencontainers.image.title=kamal-proxy";
/// Request headers kamal-proxy logs unless `logging.request_headers` says otherwise.
const DEFAULT_LOG_REQUEST_HEADERS: [&str; 3] = ["Cache-Control", "Last-Modified", "User-Agent"];

/// `docker exec kamal-proxy kamal-proxy <words…>`.
fn proxy_exec(words: &[&str]) -> Cmd {
    docker().args(["exec", PROXY_CONTAINER, "kamal-proxy"]).args(words)
}

/// Where a deployed service's custom TLS files live, when its proxy config has `ssl: {certificate_pem, …}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOwner<'a> {
    /// An app role: files under `tls/<role>/`.
    Role(&'a str),
    /// An accessory: files directly under `tls/`.
    Accessory,
}

/// `kamal-proxy deploy <service> --target=<target>:<app_port> …`: registers `target` (a container id) for
/// `service` (the container prefix, or an accessory's service name) with the options of `proxy` (a role's
/// merged proxy mapping). The proxy health-checks it, switches traffic to it and drains the old target.
pub fn deploy(config: &Config, service: &str, proxy: &Mapping, target: &str, version: &str, tls: TlsOwner) -> Cmd {
    let mut cmd = proxy_exec(&["deploy", service]);
    for (key, value) in deploy_options(config, proxy, target, version, tls) {
        cmd = with_equals_option(cmd, key, &value);
    }
    cmd
}

/// The options of `kamal-proxy deploy`, in Kamal's order (`Configuration::Proxy#deploy_options`).
fn deploy_options(
    config: &Config,
    proxy: &Mapping,
    target: &str,
    version: &str,
    tls: TlsOwner,
) -> Vec<(&'static str, OptionValue)> {
    let text = |value: String| Some(OptionValue::Text(value));
    let get = |path: &[&str]| -> Option<&Value> {
        let mut value = proxy.get(path[0])?;
        for key in &path[1..] {
            value = value.as_mapping()?.get(*key)?;
        }
        Some(value).filter(|v| !v.is_null())
    };
    let as_option = |path: &[&str]| get(path).and_then(OptionValue::from_yaml);
    let duration = |path: &[&str]| get(path).map(|v| OptionValue::Text(seconds(scalar_text(v))));
    let list = |path: &[&str]| -> Vec<String> {
        match get(path) {
            Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
            Some(value) => vec![scalar_text(value)],
            None => Vec::new(),
        }
    };

    let app_port = get(&["app_port"]).map(scalar_text).unwrap_or_else(|| "80".to_string());
    let mut options = vec![("target", OptionValue::Text(format!("{target}:{app_port}")))];
    options.extend(proxy_hosts(proxy).into_iter().map(|host| ("host", OptionValue::Text(host))));
    let ssl = get(&["ssl"]);
    if ssl.is_some_and(|ssl| ssl == &Value::Bool(true) || ssl.is_mapping()) {
        options.push(("tls", OptionValue::Flag));
    }
    if has_custom_certificate(proxy) {
        let directory = match tls {
            TlsOwner::Role(role) => names::tls_container_directory(config, role),
            TlsOwner::Accessory => format!("{}/tls", names::proxy_app_container_directory(config)),
        };
        options.push(("tls-certificate-path", OptionValue::Text(format!("{directory}/cert.pem"))));
        options.push(("tls-private-key-path", OptionValue::Text(format!("{directory}/key.pem"))));
    }
    options.push(("deploy-timeout", OptionValue::Text(seconds(config.deploy_timeout))));
    options.push(("drain-timeout", OptionValue::Text(seconds(config.drain_timeout))));
    let optional = [
        ("health-check-interval", duration(&["healthcheck", "interval"])),
        ("health-check-timeout", duration(&["healthcheck", "timeout"])),
        ("health-check-path", get(&["healthcheck", "path"]).and_then(|v| text(scalar_text(v)))),
        ("target-timeout", duration(&["response_timeout"])),
        ("buffer-requests", Some(as_option(&["buffering", "requests"]).unwrap_or(OptionValue::Flag))),
        ("buffer-responses", Some(as_option(&["buffering", "responses"]).unwrap_or(OptionValue::Flag))),
        ("buffer-memory", as_option(&["buffering", "memory"])),
        ("max-request-body", as_option(&["buffering", "max_request_body"])),
        ("max-response-body", as_option(&["buffering", "max_response_body"])),
    ];
    options.extend(optional.into_iter().filter_map(|(key, value)| value.map(|v| (key, v))));
    let path_prefixes =
        if get(&["path_prefixes"]).is_some() { list(&["path_prefixes"]) } else { path_prefix(get(&["path_prefix"])) };
    options.extend(path_prefixes.into_iter().map(|prefix| ("path-prefix", OptionValue::Text(prefix))));
    let optional = [
        ("strip-path-prefix", as_option(&["strip_path_prefix"])),
        ("forward-headers", as_option(&["forward_headers"])),
        ("tls-redirect", as_option(&["ssl_redirect"])),
    ];
    options.extend(optional.into_iter().filter_map(|(key, value)| value.map(|v| (key, v))));
    let request_headers = match get(&["logging", "request_headers"]) {
        Some(_) => list(&["logging", "request_headers"]),
        None => DEFAULT_LOG_REQUEST_HEADERS.iter().map(|h| h.to_string()).collect(),
    };
    options.extend(request_headers.into_iter().map(|h| ("log-request-header", OptionValue::Text(h))));
    let response_headers = list(&["logging", "response_headers"]);
    options.extend(response_headers.into_iter().map(|h| ("log-response-header", OptionValue::Text(h))));
    if config.error_pages_path.is_some() {
        options.push(("error-pages", OptionValue::Text(names::error_pages_container_directory(config, version))));
    }
    options
}

/// `path_prefix: /a,/b` or `path_prefix: [/a, /b]` as a list of prefixes.
fn path_prefix(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
        Some(value) => scalar_text(value).split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        None => Vec::new(),
    }
}

/// Whether `proxy.ssl` names both a certificate and a private key secret.
pub fn has_custom_certificate(proxy: &Mapping) -> bool {
    match proxy.get("ssl") {
        Some(Value::Mapping(ssl)) => {
            ["certificate_pem", "private_key_pem"].iter().all(|k| ssl.get(*k).is_some_and(is_present))
        }
        _ => false,
    }
}

/// The secret names of a custom certificate and key (`ssl: {certificate_pem: A, private_key_pem: B}`).
pub fn custom_certificate_secrets(proxy: &Mapping) -> Option<(String, String)> {
    let Some(Value::Mapping(ssl)) = proxy.get("ssl") else { return None };
    let secret = |key: &str| ssl.get(key).map(scalar_text).unwrap_or_default();
    has_custom_certificate(proxy).then(|| (secret("certificate_pem"), secret("private_key_pem")))
}

/// `kamal-proxy remove <service>`: requests then get 404.
pub fn remove(service: &str) -> Cmd {
    proxy_exec(&["remove", service])
}

/// `kamal-proxy stop <service> [--drain-timeout=Ns] [--message=…]`: maintenance mode (503).
pub fn stop(service: &str, drain_timeout: Option<u64>, message: Option<&str>) -> Cmd {
    let mut cmd = proxy_exec(&["stop", service]);
    if let Some(timeout) = drain_timeout {
        cmd = with_equals_option(cmd, "drain-timeout", &OptionValue::Text(seconds(timeout)));
    }
    if let Some(message) = message {
        cmd = with_equals_option(cmd, "message", &OptionValue::Text(message.to_string()));
    }
    cmd
}

/// `kamal-proxy resume <service>`: back from maintenance.
pub fn resume(service: &str) -> Cmd {
    proxy_exec(&["resume", service])
}

/// `mkdir -p .kamal/proxy/apps-config/<svc[-dest]>/tls/<role>`, before uploading a custom certificate.
pub fn create_tls_directory(config: &Config, role: &str) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::tls_directory(config, role))
}

/// Gives the uploaded TLS files to the proxy's user (`docker exec --user root kamal-proxy chown -R …`).
pub fn set_certificate_permissions(config: &Config, role: &str) -> Cmd {
    docker()
        .args(["exec", "--user", "root", PROXY_CONTAINER, "chown", "-R", "kamal-proxy:kamal-proxy"])
        .arg(names::tls_container_directory(config, role))
}

/// `docker network create kamal` (fails when it exists; Kamal ignores "already exists" — see
/// [`ensure_network`]).
pub fn create_network() -> Cmd {
    docker().args(["network", "create", NETWORK])
}

/// Creates the `kamal` network unless it exists, so the command succeeds either way.
pub fn ensure_network() -> Cmd {
    docker().args(["network", "inspect", NETWORK]).raw("> /dev/null 2>&1").or(create_network())
}

/// The running proxy's image (`basecamp/kamal-proxy:v0.9.2`), empty when there is no proxy container.
pub fn image_probe() -> Cmd {
    docker().args(["inspect", PROXY_CONTAINER, "--format", "{{.Config.Image}}"])
}

/// The running proxy's image tag (`v0.9.2`): Kamal's version probe.
pub fn version() -> Cmd {
    image_probe().pipe(Cmd::new("awk").args(["-F:", "{print $NF}"]))
}

/// The hosts that run the proxy: hosts of roles behind the proxy and of accessories with `proxy:`.
pub fn proxy_hosts_of(config: &Config) -> Vec<&str> {
    let mut hosts: Vec<&str> = Vec::new();
    let role_hosts = config.roles.iter().filter(|r| r.runs_proxy()).flat_map(|r| r.host_names());
    let accessory_hosts =
        config.accessories.iter().filter(|a| a.proxy.is_some()).flat_map(|a| a.hosts.iter().map(String::as_str));
    for host in role_hosts.chain(accessory_hosts) {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// The `proxy.run` settings that apply on `host` (validation guarantees at most one distinct value), if any.
pub fn run_config_for_host(config: &Config, host: &str) -> Option<ProxyRun> {
    let role_runs = config
        .roles
        .iter()
        .filter(|r| r.host_names().any(|h| h == host))
        .filter_map(|r| r.proxy.as_ref()?.get("run")?.as_mapping());
    let accessory_runs = config
        .accessories
        .iter()
        .filter(|a| a.hosts.iter().any(|h| h == host))
        .filter_map(|a| a.proxy.as_ref()?.get("run")?.as_mapping());
    role_runs.chain(accessory_runs).next().map(ProxyRun::from_mapping)
}

/// `proxy.run`: how the proxy container is started on a host.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyRun {
    pub http_port: String,
    pub https_port: String,
    pub bind_ips: Vec<String>,
    pub publish: bool,
    pub http3: bool,
    pub log_max_size: String,
    pub registry: Option<String>,
    pub repository: String,
    pub version: String,
    pub metrics_port: Option<String>,
    pub debug: bool,
    /// Extra `docker run` options.
    pub options: Mapping,
}

impl Default for ProxyRun {
    fn default() -> ProxyRun {
        ProxyRun::from_mapping(&Mapping::new())
    }
}

impl ProxyRun {
    /// `proxy.run` with Kamal's defaults (`Configuration::Proxy::Run`).
    pub fn from_mapping(run: &Mapping) -> ProxyRun {
        let text = |key: &str| run.get(key).filter(|v| !v.is_null()).map(scalar_text);
        ProxyRun {
            http_port: text("http_port").unwrap_or_else(|| "80".into()),
            https_port: text("https_port").unwrap_or_else(|| "443".into()),
            bind_ips: match run.get("bind_ips") {
                Some(Value::Sequence(ips)) => ips.iter().map(scalar_text).collect(),
                _ => Vec::new(),
            },
            publish: run.get("publish") != Some(&Value::Bool(false)),
            http3: run.get("http3") == Some(&Value::Bool(true)),
            log_max_size: text("log_max_size").unwrap_or_else(|| "10m".into()),
            registry: text("registry"),
            repository: text("repository").unwrap_or_else(|| DEFAULT_REPOSITORY.into()),
            version: text("version").unwrap_or_else(|| MINIMUM_VERSION.into()),
            metrics_port: text("metrics_port"),
            debug: run.get("debug") == Some(&Value::Bool(true)),
            options: run.get("options").and_then(Value::as_mapping).cloned().unwrap_or_default(),
        }
    }

    /// `[registry/]repository:version`.
    pub fn image(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}:{}", self.repository, self.version),
            None => format!("{}:{}", self.repository, self.version),
        }
    }

    /// `host:80`/`host:443` publish specs, once per bind IP (IPv6 in brackets), nothing when `publish: false`.
    pub fn publish_specs(&self) -> Vec<String> {
        if !self.publish {
            return Vec::new();
        }
        let ips: Vec<Option<String>> = if self.bind_ips.is_empty() {
            vec![None]
        } else {
            self.bind_ips.iter().map(|ip| Some(bracket_ipv6(ip))).collect()
        };
        let mut specs = Vec::new();
        for ip in ips {
            let prefix = ip.map(|ip| format!("{ip}:")).unwrap_or_default();
            specs.push(format!("{prefix}{}:80", self.http_port));
            let https = format!("{prefix}{}:443", self.https_port);
            specs.push(https.clone());
            if self.http3 {
                specs.push(format!("{https}/udp"));
            }
        }
        specs
    }
}

/// `::1` -> `[::1]`; IPv4 and bracketed addresses unchanged.
fn bracket_ipv6(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') { format!("[{ip}]") } else { ip.to_string() }
}

/// `docker run --name kamal-proxy --network kamal --detach --restart unless-stopped <volumes>`: the part of
/// every proxy `docker run` that makes it Kamal's proxy.
fn run_prefix() -> Cmd {
    docker()
        .args(["run", "--name", PROXY_CONTAINER, "--network", NETWORK, "--detach", "--restart", "unless-stopped"])
        .arg("--volume")
        .arg(format!("{PROXY_CONFIG_VOLUME}:/home/kamal-proxy/.config/kamal-proxy"))
        .arg("--volume")
        .raw(format!("$PWD/{}:{PROXY_APPS_CONTAINER_DIRECTORY}", names::proxy_apps_config_directory()))
}

/// The proxy container from `proxy.run` settings, running `image` (normally [`ProxyRun::image`]).
pub fn run(run: &ProxyRun, image: &str) -> Cmd {
    let mut cmd = run_prefix();
    for spec in run.publish_specs() {
        cmd = cmd.arg("--publish").arg(spec);
    }
    if !run.log_max_size.is_empty() {
        cmd = cmd.arg("--log-opt").arg(format!("max-size={}", run.log_max_size));
    }
    if let Some(port) = &run.metrics_port {
        cmd = cmd.arg(format!("--expose={port}"));
    }
    cmd = with_options(cmd, &run.options);
    cmd = cmd.arg(image).args(["kamal-proxy", "run"]);
    if run.debug {
        cmd = cmd.arg("--debug");
    }
    if let Some(port) = &run.metrics_port {
        cmd = cmd.arg("--metrics-port").arg_expanding_braced_vars(port);
    }
    if run.http3 {
        cmd = cmd.arg("--http3");
    }
    cmd
}

/// The legacy (pre-`proxy.run`) boot: options, image and command read from `.kamal/proxy/{options,image,
/// image_version,run_command}` with Kamal's defaults, piped to `xargs docker run …`. Only for hosts whose config
/// has no `proxy.run`, so a host set up with `kamal proxy boot_config` keeps its settings.
pub fn run_from_legacy_boot_config() -> Cmd {
    let dir = names::proxy_directory();
    let read = |file: &str, default: &str| format!("$(cat {dir}/{file} 2> /dev/null || echo \"{default}\")");
    let options = read("options", "--publish 80:80 --publish 443:443 --log-opt max-size=10m");
    let image = read("image", DEFAULT_REPOSITORY);
    let version = read("image_version", MINIMUM_VERSION);
    let command = read("run_command", "");
    let run = run_prefix();
    Cmd::raw_script(format!("echo {options} {image}:{version} {command}")).pipe(Cmd::new("xargs").raw(run.script()))
}

/// `docker container start kamal-proxy || <run>`: boot never replaces an existing proxy.
pub fn start_or_run(run_cmd: Cmd) -> Cmd {
    start().or(run_cmd)
}

/// `docker container start kamal-proxy`.
pub fn start() -> Cmd {
    docker().args(["container", "start", PROXY_CONTAINER])
}

/// `docker container stop kamal-proxy`.
pub fn stop_container() -> Cmd {
    docker().args(["container", "stop", PROXY_CONTAINER])
}

/// `docker ps --filter 'name=^kamal-proxy$'`.
pub fn info() -> Cmd {
    docker().arg("ps").arg("--filter").arg(format!("name=^{PROXY_CONTAINER}$"))
}

/// `docker logs kamal-proxy …`.
pub fn logs(options: &LogOptions) -> Cmd {
    with_log_options(docker().args(["logs", PROXY_CONTAINER]), options)
}

/// `docker container prune --force --filter label=org.opencontainers.image.title=kamal-proxy`.
pub fn remove_container() -> Cmd {
    with_filters(docker().args(["container", "prune", "--force"]), &[IMAGE_TITLE_FILTER.to_string()])
}

/// `docker image prune --all --force --filter label=org.opencontainers.image.title=kamal-proxy`.
pub fn remove_image() -> Cmd {
    with_filters(docker().args(["image", "prune", "--all", "--force"]), &[IMAGE_TITLE_FILTER.to_string()])
}

/// `mkdir -p .kamal/proxy/apps-config`.
pub fn ensure_apps_config_directory() -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::proxy_apps_config_directory())
}

/// `rm -r .kamal/proxy` (`proxy remove`).
pub fn remove_proxy_directory() -> Cmd {
    Cmd::new("rm").arg("-r").arg(names::proxy_directory())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::config;

    const TAIL: &str = "--deploy-timeout=\"30s\" --drain-timeout=\"30s\" --buffer-requests --buffer-responses --log-request-header=\"Cache-Control\" --log-request-header=\"Last-Modified\" --log-request-header=\"User-Agent\"";
    const VOLUMES: &str = "docker run --name kamal-proxy --network kamal --detach --restart unless-stopped --volume kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy --volume $PWD/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config";

    fn deploy_web(extra: &str) -> String {
        let config = config(&format!("servers: [1.1.1.1]\n{extra}"));
        let web = config.role("web").unwrap();
        deploy(&config, "app-web", web.proxy.as_ref().unwrap(), "172.1.0.2", "999", TlsOwner::Role("web")).to_string()
    }

    #[test]
    fn deploy_defaults() {
        assert_eq!(
            deploy_web(""),
            format!("docker exec kamal-proxy kamal-proxy deploy app-web --target=\"172.1.0.2:80\" {TAIL}")
        );
    }

    #[test]
    fn deploy_with_ssl_and_hosts() {
        assert_eq!(
            deploy_web("proxy:\n  ssl: true\n  host: example.com\n"),
            format!(
                "docker exec kamal-proxy kamal-proxy deploy app-web --target=\"172.1.0.2:80\" --host=\"example.com\" --tls {TAIL}"
            )
        );
        assert_eq!(
            deploy_web("proxy:\n  ssl: true\n  hosts: [example.com, anotherexample.com]\n"),
            format!(
                "docker exec kamal-proxy kamal-proxy deploy app-web --target=\"172.1.0.2:80\" --host=\"example.com\" --host=\"anotherexample.com\" --tls {TAIL}"
            )
        );
        assert_eq!(
            deploy_web("proxy:\n  ssl: false\n"),
            format!("docker exec kamal-proxy kamal-proxy deploy app-web --target=\"172.1.0.2:80\" {TAIL}")
        );
    }

    #[test]
    fn deploy_with_every_option() {
        let yaml = "error_pages_path: public\ndeploy_timeout: 10\nproxy:\n  host: a.example.com,b.example.com\n  app_port: 3000\n  ssl:\n    certificate_pem: CERT\n    private_key_pem: KEY\n  ssl_redirect: false\n  forward_headers: true\n  response_timeout: 10\n  path_prefix: /api\n  strip_path_prefix: false\n  healthcheck:\n    interval: 3\n    path: /health\n    timeout: 4\n  buffering:\n    requests: false\n    responses: true\n    memory: 2000000\n    max_request_body: 40000000\n    max_response_body: 0\n  logging:\n    request_headers: [X-Request-Id]\n    response_headers: [X-Runtime]\n";
        assert_eq!(
            deploy_web(yaml),
            "docker exec kamal-proxy kamal-proxy deploy app-web --target=\"172.1.0.2:3000\" --host=\"a.example.com\" --host=\"b.example.com\" --tls --tls-certificate-path=\"/home/kamal-proxy/.apps-config/app/tls/web/cert.pem\" --tls-private-key-path=\"/home/kamal-proxy/.apps-config/app/tls/web/key.pem\" --deploy-timeout=\"10s\" --drain-timeout=\"30s\" --health-check-interval=\"3s\" --health-check-timeout=\"4s\" --health-check-path=\"/health\" --target-timeout=\"10s\" --buffer-requests=\"false\" --buffer-responses --buffer-memory=\"2000000\" --max-request-body=\"40000000\" --max-response-body=\"0\" --path-prefix=\"/api\" --strip-path-prefix=\"false\" --forward-headers --tls-redirect=\"false\" --log-request-header=\"X-Request-Id\" --log-response-header=\"X-Runtime\" --error-pages=\"/home/kamal-proxy/.apps-config/app/error_pages/999\""
        );
    }

    #[test]
    fn role_proxy_settings_override_the_root_ones() {
        let config = config(
            "servers:\n  web:\n    hosts: [1.1.1.1]\n    proxy:\n      app_port: 4000\nproxy:\n  app_port: 3000\n  host: example.com\n",
        );
        let web = config.role("web").unwrap();
        let cmd = deploy(&config, "app-web", web.proxy.as_ref().unwrap(), "abc", "999", TlsOwner::Role("web"));
        assert!(cmd.script().contains("--target=\"abc:4000\" --host=\"example.com\""), "{cmd}");
    }

    #[test]
    fn custom_certificate_secret_names() {
        let config = config(
            "servers: [1.1.1.1]\nproxy:\n  host: a.example.com\n  ssl:\n    certificate_pem: CERT\n    private_key_pem: KEY\n",
        );
        let proxy = config.role("web").unwrap().proxy.clone().unwrap();
        assert_eq!(custom_certificate_secrets(&proxy), Some(("CERT".into(), "KEY".into())));
        assert_eq!(create_tls_directory(&config, "web").script(), "mkdir -p .kamal/proxy/apps-config/app/tls/web");
        assert_eq!(
            set_certificate_permissions(&config, "web").script(),
            "docker exec --user root kamal-proxy chown -R kamal-proxy:kamal-proxy /home/kamal-proxy/.apps-config/app/tls/web"
        );
    }

    #[test]
    fn remove_stop_resume() {
        assert_eq!(remove("app-web").script(), "docker exec kamal-proxy kamal-proxy remove app-web");
        assert_eq!(resume("app-web").script(), "docker exec kamal-proxy kamal-proxy resume app-web");
        assert_eq!(stop("app-web", None, None).script(), "docker exec kamal-proxy kamal-proxy stop app-web");
        assert_eq!(
            stop("app-web", Some(10), Some("Hi")).script(),
            "docker exec kamal-proxy kamal-proxy stop app-web --drain-timeout=\"10s\" --message=\"Hi\""
        );
    }

    #[test]
    fn container_commands() {
        assert_eq!(create_network().script(), "docker network create kamal");
        assert_eq!(
            ensure_network().script(),
            "docker network inspect kamal > /dev/null 2>&1 || docker network create kamal"
        );
        assert_eq!(
            version().script(),
            "docker inspect kamal-proxy --format '{{.Config.Image}}' | awk -F: '{print $NF}'"
        );
        assert_eq!(start().script(), "docker container start kamal-proxy");
        assert_eq!(stop_container().script(), "docker container stop kamal-proxy");
        assert_eq!(info().script(), "docker ps --filter 'name=^kamal-proxy$'");
        assert_eq!(
            logs(&LogOptions { timestamps: true, ..LogOptions::default() }).script(),
            "docker logs kamal-proxy --timestamps 2>&1"
        );
        assert_eq!(
            logs(&LogOptions { since: Some("2h".into()), grep: Some("hello!".into()), ..LogOptions::default() })
                .script(),
            "docker logs kamal-proxy --since 2h 2>&1 | grep 'hello!'"
        );
        assert_eq!(
            remove_container().script(),
            "docker container prune --force --filter label=org.opencontainers.image.title=kamal-proxy"
        );
        assert_eq!(
            remove_image().script(),
            "docker image prune --all --force --filter label=org.opencontainers.image.title=kamal-proxy"
        );
        assert_eq!(ensure_apps_config_directory().script(), "mkdir -p .kamal/proxy/apps-config");
        assert_eq!(remove_proxy_directory().script(), "rm -r .kamal/proxy");
    }

    #[test]
    fn run_with_defaults_and_settings() {
        let run = ProxyRun::default();
        assert_eq!(
            super::run(&run, &run.image()).script(),
            format!(
                "{VOLUMES} --publish 80:80 --publish 443:443 --log-opt max-size=10m basecamp/kamal-proxy:v0.9.2 kamal-proxy run"
            )
        );
        let yaml = "registry: registry:4443\nversion: v1.2.3\nbind_ips: [0.0.0.0, '::1']\nhttp_port: 8080\nlog_max_size: 50m\ndebug: true\nmetrics_port: 9090\noptions:\n  label: traefik.enable=true\n";
        let run = ProxyRun::from_mapping(&yaml_serde::from_str(yaml).unwrap());
        assert_eq!(
            super::run(&run, &run.image()).script(),
            format!(
                "{VOLUMES} --publish 0.0.0.0:8080:80 --publish 0.0.0.0:443:443 --publish '[::1]:8080:80' --publish '[::1]:443:443' --log-opt max-size=50m --expose=9090 --label \"traefik.enable=true\" registry:4443/basecamp/kamal-proxy:v1.2.3 kamal-proxy run --debug --metrics-port \"9090\""
            )
        );
        let run = ProxyRun::from_mapping(&yaml_serde::from_str("publish: false\nrepository: custom/repo\n").unwrap());
        assert_eq!(
            super::run(&run, &run.image()).script(),
            format!("{VOLUMES} --log-opt max-size=10m custom/repo:v0.9.2 kamal-proxy run")
        );
    }

    #[test]
    fn legacy_boot_config() {
        assert_eq!(
            start_or_run(run_from_legacy_boot_config()).script(),
            format!(
                "docker container start kamal-proxy || echo $(cat .kamal/proxy/options 2> /dev/null || echo \"--publish 80:80 --publish 443:443 --log-opt max-size=10m\") $(cat .kamal/proxy/image 2> /dev/null || echo \"basecamp/kamal-proxy\"):$(cat .kamal/proxy/image_version 2> /dev/null || echo \"v0.9.2\") $(cat .kamal/proxy/run_command 2> /dev/null || echo \"\") | xargs {VOLUMES}"
            )
        );
    }

    #[test]
    fn run_config_and_proxy_hosts() {
        let config = config(
            "servers:\n  web:\n    hosts: [1.1.1.1]\n    proxy:\n      run:\n        http_port: 8080\n  workers: [1.1.1.2]\naccessories:\n  busybox:\n    image: busybox\n    host: 1.1.1.3\n    proxy:\n      host: b.example.com\n",
        );
        assert_eq!(proxy_hosts_of(&config), ["1.1.1.1", "1.1.1.3"]);
        assert_eq!(run_config_for_host(&config, "1.1.1.1").unwrap().http_port, "8080");
        assert_eq!(run_config_for_host(&config, "1.1.1.3"), None);
    }
}
