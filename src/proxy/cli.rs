//! kamal-proxy's command line (`kamal-proxy run|deploy|remove|pause|stop|resume|list|rollout …`), with its
//! flag names and value forms (`--deploy-timeout=30s`, `--target=a:80,b:80` or repeated, `--tls`,
//! `--buffer-requests=false`), so Kamal's exact invocations work against the berth proxy.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use super::control::{self, ControlRequest};
use super::http1::HeadLimits;
use super::options::{HealthCheckOptions, ServiceOptions, parse_duration, parse_size};
use super::router::{DeployReport, ServiceSummary};
use super::server::{self, ServerConfig};
use super::tls::acme::ChallengeKind;
use super::{ProxyError, default_state_dir, socket_path};

const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The proxy's command line when the binary runs as `kamal-proxy`.
#[derive(Debug, Parser)]
#[command(
    name = "kamal-proxy",
    about = "berth's zero-downtime reverse proxy (kamal-proxy compatible)",
    max_term_width = 110
)]
struct KamalProxyCli {
    #[command(subcommand)]
    command: ProxyCommand,
}

/// `run` plus the control commands: what `kamal-proxy …` and `berth proxy …` accept.
// Parsed once per process, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Run the proxy server
    Run(RunArgs),
    #[command(flatten)]
    Control(ControlCommand),
}

/// The commands that drive a running proxy over its control socket.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Deploy a target host (health-gated switch, then drain of the old target)
    Deploy(DeployArgs),
    /// Remove a service and drain its targets
    #[command(alias = "rm")]
    Remove(ServiceArg),
    /// Pause a service: hold new requests, drain in-flight ones
    Pause(PauseArgs),
    /// Stop a service (maintenance mode): answer 503 with a message
    Stop(StopArgs),
    /// Resume a paused or stopped service
    Resume(ServiceArg),
    /// List the services
    #[command(alias = "ls")]
    List(ListArgs),
    /// Canary rollouts: a second set of targets for a share of traffic
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Deploy targets into the rollout slot (health-gated)
    Deploy(RolloutDeployArgs),
    /// Send a percentage and/or allow-listed cookie values to the rollout slot
    Set(RolloutSetArgs),
    /// Send all traffic back to the active slot
    Stop(ServiceArg),
}

/// `run`'s flags. Ports also come from `HTTP_PORT`/`HTTPS_PORT`/`METRICS_PORT` (or with a `KAMAL_PROXY_` prefix).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Port for HTTP (default 80; env HTTP_PORT)
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Port for HTTPS (default 443; env HTTPS_PORT)
    #[arg(long)]
    pub https_port: Option<u16>,
    /// Port for Prometheus metrics at /metrics (default off; env METRICS_PORT)
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Worker threads, each with its own event loop and listeners (default: one per CPU)
    #[arg(long)]
    pub workers: Option<usize>,
    /// Directory for state and certificates (default $HOME/.config/kamal-proxy)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Control socket (default $KAMAL_PROXY_SOCKET, $XDG_RUNTIME_DIR/kamal-proxy.sock or $TMPDIR/kamal-proxy.sock)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Time allowed for request headers, and between requests on a keep-alive connection
    #[arg(long, value_parser = duration_arg, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Time allowed to receive a request body that is buffered
    #[arg(long, value_parser = duration_arg, default_value = "60s")]
    pub read_timeout: Duration,
    /// Time allowed for a request head once its first byte arrived (then 408 and close)
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub header_timeout: Duration,
    /// Longest request line or header line in bytes (request line: 414, header line: 431)
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(256..=1024 * 1024))]
    pub max_header_line_size: u32,
    /// Largest request head in bytes, request line and headers (431)
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_size: u32,
    /// Most header lines in a request (431)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_header_count: u16,
    /// Most client connections open at once (more are closed at once; 0: no limit)
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (more are closed at once; 0: no limit)
    #[arg(long, default_value_t = 1024)]
    pub max_connections_per_ip: usize,
    /// Memory all incomplete request heads may hold beyond their first 16 KiB, in all (more: 503)
    #[arg(long, value_parser = size_arg, default_value = "32MB")]
    pub max_pending_header_memory: u64,
    /// Time in-flight requests get to finish on SIGTERM
    #[arg(long, value_parser = duration_arg, default_value = "10s")]
    pub shutdown_timeout: Duration,
    /// Write a JSON line per request to stdout
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    pub access_log: bool,
    /// ACME directory for automatic certificates (default Let's Encrypt)
    #[arg(long, env = "ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account
    #[arg(long, env = "ACME_CONTACT")]
    pub acme_contact: Option<String>,
    /// Extra PEM root certificate trusted for the ACME directory's HTTPS (e.g. pebble's test CA)
    #[arg(long, env = "ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// ACME challenges to try, in order
    #[arg(long, default_value = "tls-alpn-01,http-01")]
    pub acme_challenges: String,
    /// Debug-level logging (accepted for kamal-proxy compatibility)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub debug: bool,
    /// HTTP/3 (accepted for compatibility; berth serves HTTP/1.1 and HTTP/2)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub http3: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArg {
    /// The service name (Kamal uses <service>-<role>[-<destination>])
    pub service: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    pub service: String,
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Longest a held request waits before it gets a 504
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub max_pause: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    pub service: String,
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Text shown on the 503 maintenance page
    #[arg(long, default_value = "", value_parser = unquoted)]
    pub message: String,
}

#[derive(Debug, Clone, Args)]
pub struct RolloutDeployArgs {
    pub service: String,
    #[arg(long, required = true, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub target: Vec<String>,
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub read_target: Vec<String>,
    #[arg(long, value_parser = duration_arg)]
    pub deploy_timeout: Option<Duration>,
    #[arg(long, value_parser = duration_arg)]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct RolloutSetArgs {
    pub service: String,
    /// Share of cookie holders (kamal-rollout cookie) sent to the rollout slot
    #[arg(long, default_value_t = 0)]
    pub percent: u32,
    /// Cookie values always sent to the rollout slot
    #[arg(long, alias = "list", value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub allowlist: Vec<String>,
}

/// `deploy`'s flags, named as kamal-proxy names them.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    pub service: String,
    /// Target host(s) as HOST:PORT (comma-separated or repeated)
    #[arg(long, required = true, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub target: Vec<String>,
    /// Read-only targets (not supported by berth: rejected with an explanation)
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub read_target: Vec<String>,
    /// Host(s) to serve (empty: any host)
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub host: Vec<String>,
    /// Path prefix(es) to serve (default /)
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub path_prefix: Vec<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    pub strip_path_prefix: bool,
    /// Serve HTTPS (automatic certificates unless certificate files are given)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub tls: bool,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub tls_staging: bool,
    #[arg(long, value_parser = unquoted)]
    pub tls_certificate_path: Option<String>,
    #[arg(long, value_parser = unquoted)]
    pub tls_private_key_path: Option<String>,
    /// Accepted for compatibility; certificates are cached in the state directory
    #[arg(long, value_parser = unquoted)]
    pub tls_acme_cache_path: Option<String>,
    /// On-demand TLS (not supported by berth: rejected with an explanation)
    #[arg(long, value_parser = unquoted)]
    pub tls_on_demand_url: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    pub tls_redirect: bool,
    #[arg(long, value_parser = unquoted)]
    pub canonical_host: Option<String>,
    /// Time allowed for all new targets to become healthy
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub deploy_timeout: Duration,
    /// Time in-flight requests on the old targets get to finish
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Switch without waiting for health checks
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub force: bool,
    #[arg(long, default_value = "/up", value_parser = unquoted)]
    pub health_check_path: String,
    #[arg(long, value_parser = duration_arg, default_value = "1s")]
    pub health_check_interval: Duration,
    #[arg(long, value_parser = duration_arg, default_value = "5s")]
    pub health_check_timeout: Duration,
    #[arg(long, default_value_t = 0)]
    pub health_check_port: u16,
    #[arg(long, default_value = "", value_parser = unquoted)]
    pub health_check_host: String,
    /// Consecutive passing checks before a target takes traffic (berth)
    #[arg(long, default_value_t = 2)]
    pub health_check_healthy_threshold: u32,
    /// Consecutive failing checks before a serving target leaves rotation (berth)
    #[arg(long, default_value_t = 3)]
    pub health_check_unhealthy_threshold: u32,
    /// Accepted for compatibility (read targets are not supported)
    #[arg(long, value_parser = duration_arg)]
    pub writer_affinity_timeout: Option<Duration>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub read_target_websockets: bool,
    /// Time allowed for a target's response headers
    #[arg(long, value_parser = duration_arg, default_value = "30s")]
    pub target_timeout: Duration,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub buffer_requests: bool,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub buffer_responses: bool,
    #[arg(long, value_parser = size_arg, default_value = "1048576")]
    pub buffer_memory: u64,
    #[arg(long, value_parser = size_arg, default_value = "0")]
    pub max_request_body: u64,
    #[arg(long, value_parser = size_arg, default_value = "0")]
    pub max_response_body: u64,
    /// Trust and extend incoming X-Forwarded-* headers (default: on unless --tls)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub forward_headers: Option<bool>,
    /// Accepted for compatibility
    #[arg(long, value_parser = unquoted)]
    pub client_ip_header: Option<String>,
    /// Accepted for compatibility
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub scope_cookie_paths: bool,
    /// Request headers to include in the access log
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub log_request_header: Vec<String>,
    /// Response headers to include in the access log
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub log_response_header: Vec<String>,
    /// Accepted for compatibility
    #[arg(long, value_delimiter = ',', action = ArgAction::Append, value_parser = unquoted)]
    pub exclude_metrics_path: Vec<String>,
    /// Directory with custom NNN.html error pages
    #[arg(long, value_parser = unquoted)]
    pub error_pages: Option<String>,
}

impl DeployArgs {
    /// The service options this deploy asks for, validated the way kamal-proxy validates them.
    pub fn options(&self) -> Result<ServiceOptions, ProxyError> {
        if !self.read_target.is_empty() {
            return Err(ProxyError::invalid(
                "--read-target",
                self.read_target.join(","),
                "read targets are not supported by the berth proxy",
            ));
        }
        if let Some(url) = &self.tls_on_demand_url {
            return Err(ProxyError::invalid(
                "--tls-on-demand-url",
                url.clone(),
                "on-demand TLS is not supported by the berth proxy; list the hosts with --host",
            ));
        }
        let mut options = ServiceOptions {
            hosts: self.host.iter().filter(|h| !h.is_empty()).cloned().collect(),
            path_prefixes: self.path_prefix.iter().filter(|p| !p.is_empty()).cloned().collect(),
            strip_path_prefix: self.strip_path_prefix,
            tls: self.tls,
            tls_certificate_path: self.tls_certificate_path.clone(),
            tls_private_key_path: self.tls_private_key_path.clone(),
            tls_redirect: self.tls_redirect,
            tls_acme_directory: self.tls_staging.then(|| LETS_ENCRYPT_STAGING.to_string()),
            canonical_host: self.canonical_host.clone(),
            health_check: HealthCheckOptions {
                path: self.health_check_path.clone(),
                interval: self.health_check_interval,
                timeout: self.health_check_timeout,
                port: self.health_check_port,
                host: self.health_check_host.clone(),
                healthy_threshold: self.health_check_healthy_threshold,
                unhealthy_threshold: self.health_check_unhealthy_threshold,
            },
            deploy_timeout: self.deploy_timeout,
            drain_timeout: self.drain_timeout,
            target_timeout: self.target_timeout,
            buffer_requests: self.buffer_requests,
            buffer_responses: self.buffer_responses,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            buffer_memory: self.buffer_memory,
            forward_headers: self.forward_headers,
            log_request_headers: self.log_request_header.clone(),
            log_response_headers: self.log_response_header.clone(),
            error_pages: self.error_pages.clone(),
            force: self.force,
        };
        options.normalize()?;
        Ok(options)
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text.trim_matches('"')).map_err(|e| e.to_string())
}

/// Values may arrive still wrapped in the quotes Kamal writes (`--target="id:80"`) when no shell strips them.
fn unquoted(text: &str) -> Result<String, String> {
    let text = text.trim();
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    Ok(text.to_string())
}

/// Entry point when the binary is called `kamal-proxy` (`args[0]` is the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match KamalProxyCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        ProxyCommand::Run(args) => run_server(args),
        ProxyCommand::Control(command) => run_control(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy until SIGTERM/SIGINT.
pub fn run_server(args: RunArgs) -> anyhow::Result<()> {
    let port = |flag: Option<u16>, name: &str, default: u16| -> anyhow::Result<u16> {
        if let Some(port) = flag {
            return Ok(port);
        }
        for var in [format!("KAMAL_PROXY_{name}"), name.to_string()] {
            if let Ok(value) = std::env::var(&var)
                && !value.is_empty()
            {
                return value.parse().map_err(|_| anyhow::anyhow!("{var}={value:?} is not a port number"));
            }
        }
        Ok(default)
    };
    let metrics_port = port(args.metrics_port, "METRICS_PORT", 0)?;
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = ServerConfig {
        bind: args.bind,
        http_port: port(args.http_port, "HTTP_PORT", 80)?,
        https_port: port(args.https_port, "HTTPS_PORT", 443)?,
        metrics_port: (metrics_port != 0).then_some(metrics_port),
        workers,
        state_dir: Some(args.state_dir.unwrap_or_else(default_state_dir)),
        socket: args.socket.unwrap_or_else(socket_path),
        idle_timeout: args.idle_timeout,
        read_timeout: args.read_timeout,
        header_timeout: args.header_timeout,
        head_limits: HeadLimits {
            max_line: args.max_header_line_size as usize,
            max_head: args.max_header_size as usize,
            max_headers: args.max_header_count as usize,
        },
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        shutdown_timeout: args.shutdown_timeout,
        access_log: args.access_log,
        acme_directory: args.acme_directory.unwrap_or_else(|| LETS_ENCRYPT.to_string()),
        acme_contact: args.acme_contact,
        acme_ca_root: args.acme_ca_root,
        acme_challenges: ChallengeKind::parse_list(&args.acme_challenges)
            .map_err(|e| anyhow::anyhow!("--acme-challenges: {e}"))?,
    };
    super::connection_limits::set_pending_head_limit(args.max_pending_header_memory as usize);
    server::run(config)?;
    Ok(())
}

/// Sends a control command to the running proxy and prints its outcome; blocks until the proxy is done.
pub fn run_control(command: ControlCommand) -> anyhow::Result<()> {
    let ms = |d: Duration| d.as_millis() as u64;
    let (request, list_json) = match command {
        ControlCommand::Deploy(args) => {
            let options = args.options()?;
            (ControlRequest::Deploy { service: args.service, targets: args.target, options: Box::new(options) }, false)
        }
        ControlCommand::Remove(args) => (ControlRequest::Remove { service: args.service }, false),
        ControlCommand::Pause(args) => (
            ControlRequest::Pause {
                service: args.service,
                drain_timeout_ms: ms(args.drain_timeout),
                max_pause_ms: ms(args.max_pause),
            },
            false,
        ),
        ControlCommand::Stop(args) => (
            ControlRequest::Stop {
                service: args.service,
                drain_timeout_ms: ms(args.drain_timeout),
                message: args.message,
            },
            false,
        ),
        ControlCommand::Resume(args) => (ControlRequest::Resume { service: args.service }, false),
        ControlCommand::List(args) => (ControlRequest::List, args.json),
        ControlCommand::Rollout(RolloutCommand::Deploy(args)) => {
            if !args.read_target.is_empty() {
                return Err(ProxyError::invalid(
                    "--read-target",
                    args.read_target.join(","),
                    "read targets are not supported by the berth proxy",
                )
                .into());
            }
            (
                ControlRequest::RolloutDeploy {
                    service: args.service,
                    targets: args.target,
                    deploy_timeout_ms: args.deploy_timeout.map(ms),
                    drain_timeout_ms: args.drain_timeout.map(ms),
                },
                false,
            )
        }
        ControlCommand::Rollout(RolloutCommand::Set(args)) => {
            if args.percent == 0 && args.allowlist.is_empty() {
                return Err(ProxyError::invalid("--percent", "0", "give --percent and/or --allowlist").into());
            }
            (
                ControlRequest::RolloutSet { service: args.service, percent: args.percent, allowlist: args.allowlist },
                false,
            )
        }
        ControlCommand::Rollout(RolloutCommand::Stop(args)) => {
            (ControlRequest::RolloutStop { service: args.service }, false)
        }
    };
    let is_list = matches!(request, ControlRequest::List);
    let is_deploy = matches!(request, ControlRequest::Deploy { .. } | ControlRequest::RolloutDeploy { .. });
    let result = control::call(&socket_path(), &request)?;
    if is_list {
        let services: Vec<ServiceSummary> = serde_json::from_value(result.clone()).unwrap_or_default();
        if list_json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        } else {
            print!("{}", list_table(&services));
        }
    } else if is_deploy && let Ok(report) = serde_json::from_value::<DeployReport>(result) {
        for drain in report.drained.iter().filter(|d| !d.completed) {
            eprintln!(
                "Warning: {} request(s) on {} were cut when the drain timeout passed",
                drain.cancelled_requests, drain.target
            );
        }
    }
    Ok(())
}

/// `list`'s table: Service, Host, Path, Target, State, TLS (kamal-proxy's columns).
fn list_table(services: &[ServiceSummary]) -> String {
    let rows: Vec<[String; 6]> = services
        .iter()
        .map(|s| {
            let targets = s
                .targets
                .iter()
                .zip(s.healthy.iter().chain(std::iter::repeat(&false)))
                .map(|(t, healthy)| if *healthy { t.clone() } else { format!("{t} (unhealthy)") })
                .collect::<Vec<_>>()
                .join(",");
            [
                s.service.clone(),
                if s.hosts.is_empty() { "*".to_string() } else { s.hosts.join(",") },
                s.paths.join(","),
                targets,
                s.state.clone(),
                if s.tls { "yes".to_string() } else { "no".to_string() },
            ]
        })
        .collect();
    let header = ["Service", "Host", "Path", "Target", "State", "TLS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ProxyCommand {
        let mut argv = vec!["kamal-proxy"];
        argv.extend_from_slice(args);
        KamalProxyCli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).command
    }

    #[test]
    fn kamals_exact_deploy_invocation_parses() {
        let command = parse(&[
            "deploy",
            "app-web",
            "--target=\"0123abcd:80\"",
            "--deploy-timeout=\"30s\"",
            "--drain-timeout=\"30s\"",
            "--buffer-requests",
            "--buffer-responses",
            "--log-request-header=\"Cache-Control\"",
            "--log-request-header=\"Last-Modified\"",
            "--log-request-header=\"User-Agent\"",
            "--health-check-interval=1s",
            "--host=a.example.com,b.example.com",
        ]);
        let ProxyCommand::Control(ControlCommand::Deploy(args)) = command else { panic!("not a deploy") };
        assert_eq!(args.target, vec!["0123abcd:80"]);
        let options = args.options().unwrap();
        assert!(options.buffer_requests && options.buffer_responses);
        assert_eq!(options.deploy_timeout, Duration::from_secs(30));
        assert_eq!(options.hosts, vec!["a.example.com", "b.example.com"]);
        assert_eq!(options.log_request_headers, vec!["Cache-Control", "Last-Modified", "User-Agent"]);
    }

    #[test]
    fn bools_take_go_style_values_and_lists_repeat() {
        let command = parse(&[
            "deploy",
            "s",
            "--target",
            "a:80",
            "--target=b:81",
            "--strip-path-prefix=false",
            "--tls-redirect=false",
        ]);
        let ProxyCommand::Control(ControlCommand::Deploy(args)) = command else { panic!("not a deploy") };
        assert_eq!(args.target, vec!["a:80", "b:81"]);
        assert!(!args.strip_path_prefix && !args.tls_redirect);
    }

    #[test]
    fn other_commands_parse() {
        assert!(
            matches!(parse(&["stop", "s", "--message=Back soon"]), ProxyCommand::Control(ControlCommand::Stop(a)) if a.message == "Back soon")
        );
        assert!(matches!(parse(&["rm", "s"]), ProxyCommand::Control(ControlCommand::Remove(_))));
        assert!(matches!(parse(&["ls"]), ProxyCommand::Control(ControlCommand::List(_))));
        assert!(
            matches!(parse(&["rollout", "set", "s", "--percent=20"]), ProxyCommand::Control(ControlCommand::Rollout(RolloutCommand::Set(a))) if a.percent == 20)
        );
        assert!(matches!(parse(&["run", "--http-port=8080"]), ProxyCommand::Run(a) if a.http_port == Some(8080)));
    }

    #[test]
    fn unsupported_flags_are_rejected_with_a_reason() {
        let command = parse(&["deploy", "s", "--target=a:80", "--tls-on-demand-url=/allow"]);
        let ProxyCommand::Control(ControlCommand::Deploy(args)) = command else { panic!("not a deploy") };
        assert!(args.options().unwrap_err().to_string().contains("on-demand"));
    }
}
