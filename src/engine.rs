//! The engine: runs Kamal's commands (deploy, rollback, app …, accessory …, proxy …) against hosts.
//!
//! Async and cancellable between steps; everything it does is reported as `output::Event`s to a `Sink`, so the
//! CLI prints it and the daemon can persist and stream it. Hosts are reached through `remote::Remote` (SSH);
//! every command text comes from the pure builders in `crate::commands`.

pub mod app;
pub mod build;
pub mod flows;
pub mod hooks;
pub mod image_transfer;
pub mod inventory;
pub mod lock;
pub mod operations;
pub mod output;
pub mod proxy_host;
pub mod proxy_image;
pub mod remote;
pub mod remote_build;
pub mod selection;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::Config;
use crate::environment::Environment;
use crate::secrets::{Secrets, SecretsError};
use crate::ssh::{HostKeyPolicy, SshConfig, SshError, SshPool};
use hooks::{HookError, Hooks};
use output::{DeployStage, Event, ProgressState, Redactor, Sink};
use remote::Remote;
use selection::{Filters, Selection, SelectionError};

/// Everything that can stop an engine command, each saying what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("on {host}: `{command}` exited with status {status}{}", indented(output))]
    CommandFailed { host: String, command: String, status: u32, output: String },
    #[error("Deploy lock found on {host}:\n{details}\nIt is released when that command ends; if it was killed, run `berth lock release`{}", if *.waited { " (gave up waiting)" } else { "" })]
    LockHeld { host: String, details: String, waited: bool },
    #[error("Exceptions on {} hosts:\n{}", .0.len(), .0.iter().map(|(host, err)| format!("  {host}: {err}")).collect::<Vec<_>>().join("\n"))]
    OnHosts(Vec<(String, EngineError)>),
    #[error("{0}")]
    Unhealthy(String),
    #[error("{0}")]
    Refused(String),
    #[error("cancelled (Ctrl-C); the hosts were left serving the version they served before")]
    Cancelled,
    #[error("{what}: {source}")]
    Local { what: String, source: std::io::Error },
}

fn indented(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", output.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n"))
    }
}

/// How a command runs, from the command line (or a daemon request).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub filters: Filters,
    pub skip_hooks: bool,
    /// `--lock-wait`: (timeout, interval)
    pub lock_wait: Option<(Duration, Duration)>,
    pub trust_new_host_keys: bool,
    /// `KAMAL_COMMAND` / `KAMAL_SUBCOMMAND` for hooks, e.g. ("app", "boot").
    pub command: String,
    pub subcommand: Option<String>,
}

/// A flag that a Ctrl-C handler raises. The engine looks at it between steps; work that changes no host
/// (build, pull, the hooks before the boot) is abandoned at once (see [`Engine::unless_cancelled`]).
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    raised: AtomicBool,
    raised_now: tokio::sync::Notify,
}

impl Cancel {
    pub fn cancel(&self) {
        self.0.raised.store(true, Ordering::SeqCst);
        self.0.raised_now.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }

    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_cancelled() { Err(EngineError::Cancelled) } else { Ok(()) }
    }

    /// Resolves once the flag is raised.
    pub async fn raised(&self) {
        // Registered before the check, so a `cancel` between the two still wakes it.
        let notified = self.0.raised_now.notified();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }
}

/// One engine per command: the configuration, the selected hosts, the SSH connections and the sink.
pub struct Engine {
    pub config: Arc<Config>,
    pub selection: Selection,
    pub options: RunOptions,
    env: Environment,
    remote: Remote,
    sink: Arc<dyn Sink>,
    secrets: OnceCell<Arc<Secrets>>,
    redactor: Redactor,
    /// Who runs this (git email or login), for the lock, the audit log and hooks.
    performer: String,
    hooks: Hooks,
    cancel: Cancel,
    started: Instant,
    /// berth's own proxy image, read from the binary the first time a host needs it.
    proxy_image: std::sync::OnceLock<Arc<proxy_image::ProxyImage>>,
    /// Set while this process holds the deploy lock (nested steps don't take it again).
    holding_lock: AtomicBool,
}

impl Engine {
    /// `redactor` is shared with the sink: once secrets are read, their values vanish from every event.
    pub fn new(
        config: Config,
        env: Environment,
        sink: Arc<dyn Sink>,
        redactor: Redactor,
        options: RunOptions,
    ) -> Result<Engine, EngineError> {
        let selection = Selection::new(&config, &options.filters)?;
        // `ssh.key_data` names secrets: then they are needed before the first connection.
        let early_secrets = match config.ssh.key_data.as_ref().filter(|keys| !keys.is_empty()) {
            Some(_) => {
                Some(Arc::new(Secrets::load(&config.root, &config.secrets_path, config.destination.as_deref(), &env)?))
            }
            None => None,
        };
        if let Some(secrets) = &early_secrets {
            redactor.set(secrets.clone());
        }
        let ssh = SshPool::new(ssh_config(&config, &env, options.trust_new_host_keys, early_secrets.as_deref())?);
        let hooks = Hooks::new(&config.root, &config.hooks_path, env.clone(), options.skip_hooks);
        let performer = performer(&env);
        Ok(Engine {
            config: Arc::new(config),
            selection,
            options,
            env,
            remote: Remote::new(ssh, sink.clone()),
            sink,
            secrets: OnceCell::new_with(early_secrets),
            redactor,
            performer,
            hooks,
            cancel: Cancel::default(),
            started: Instant::now(),
            proxy_image: std::sync::OnceLock::new(),
            holding_lock: AtomicBool::new(false),
        })
    }

    /// Closes the SSH connections.
    pub async fn close(&self) {
        self.remote.ssh().close().await;
    }

    /// Uses `cancel` (raised by whoever runs the engine: the daemon's queue) instead of a flag of its own.
    pub fn with_cancel(mut self, cancel: Cancel) -> Engine {
        self.cancel = cancel;
        self
    }

    pub fn cancel_handle(&self) -> Cancel {
        self.cancel.clone()
    }

    pub fn sink(&self) -> &dyn Sink {
        self.sink.as_ref()
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn env(&self) -> &Environment {
        &self.env
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn info(&self, text: impl Into<String>) {
        self.sink.emit(Event::Info(text.into()));
    }

    /// The secrets, read on first use (so commands that need none work without a vault, as in Kamal).
    pub async fn secrets(&self) -> Result<Arc<Secrets>, EngineError> {
        let config = &self.config;
        let secrets = self
            .secrets
            .get_or_try_init(|| async {
                let secrets =
                    Secrets::load(&config.root, &config.secrets_path, config.destination.as_deref(), &self.env)?;
                let secrets = Arc::new(secrets);
                self.redactor.set(secrets.clone());
                Ok::<_, SecretsError>(secrets)
            })
            .await?;
        Ok(secrets.clone())
    }

    /// The command appending Kamal's audit line `message` (tagged with `details`, usually the role) to the
    /// host's audit log, stamped now by this performer.
    pub fn audit_record(&self, details: &[&str], message: crate::commands::auditor::Message) -> crate::command::Cmd {
        crate::commands::auditor::record(&self.config, &now_iso8601(), &self.performer, details, &message.to_string())
    }

    /// Reports where a deploy is, for the daemon's stage timeline (the console ignores it).
    pub fn progress(&self, stage: DeployStage, host: Option<&str>, state: ProgressState) {
        self.sink.emit(Event::Progress { stage, host: host.map(str::to_string), state });
    }

    /// Runs a stage: announces it, times it, reports how it ended. Not started once cancelled.
    pub async fn stage<T>(
        &self,
        name: &str,
        hosts: usize,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.cancel.check()?;
        self.stage_even_if_cancelled(name, hosts, work).await
    }

    /// [`Engine::stage`] for the work a cancel must not skip: undoing what switched.
    pub async fn stage_even_if_cancelled<T>(
        &self,
        name: &str,
        hosts: usize,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.sink.emit(Event::StageStarted { stage: name.to_string(), hosts });
        let started = Instant::now();
        let result = work.await;
        self.sink.emit(Event::StageFinished {
            stage: name.to_string(),
            elapsed: started.elapsed(),
            ok: result.is_ok(),
        });
        result
    }

    pub fn holding_lock(&self) -> bool {
        self.holding_lock.load(Ordering::SeqCst)
    }

    fn set_holding_lock(&self, held: bool) {
        self.holding_lock.store(held, Ordering::SeqCst);
    }

    /// Runs `work` unless Ctrl-C comes first: then `work` is dropped (a local process it started is killed)
    /// and the result is [`EngineError::Cancelled`]. Only for work that leaves no host half-changed when
    /// abandoned: building, pulling, the hooks before the boot.
    pub async fn unless_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        tokio::select! {
            result = work => result,
            () = self.cancel.raised() => Err(EngineError::Cancelled),
        }
    }

    /// Runs a hook with the `KAMAL_*` variables (and the secrets, for the hooks that get them). The hooks that
    /// run before anything changes on a host are abandoned (their process killed) on Ctrl-C.
    pub async fn run_hook(&self, name: &str, extra: &[(&str, String)]) -> Result<(), EngineError> {
        if !self.hooks.exists(name) {
            return Ok(());
        }
        let mut vars = self.hook_vars();
        if matches!(name, "pre-connect" | "pre-deploy" | "post-deploy") {
            for (key, value) in self.secrets().await?.iter() {
                vars.insert(key.to_string(), value.to_string());
            }
        }
        for (key, value) in extra {
            vars.insert(key.to_string(), value.clone());
        }
        let run = async { Ok(self.hooks.run(name, &vars, self.sink.as_ref()).await?) };
        if matches!(name, "pre-connect" | "pre-build" | "pre-deploy") {
            self.unless_cancelled(run).await?;
        } else {
            run.await?;
        }
        Ok(())
    }

    fn hook_vars(&self) -> BTreeMap<String, String> {
        let context = crate::commands::hook::HookContext {
            recorded_at: now_iso8601(),
            performer: self.performer.clone(),
            version: self.config.version.clone(),
            hosts: self.selection.hosts.clone(),
            roles: self.options.filters.roles.is_some().then(|| self.selection.roles.clone()),
            lock: self.holding_lock(),
            command: self.options.command.clone(),
            subcommand: self.options.subcommand.clone(),
            runtime: None,
        };
        crate::commands::hook::env(&self.config, &context).into_iter().collect()
    }
}

/// The SSH settings from `ssh:`/`sshkit:` and the environment.
fn ssh_config(
    config: &Config,
    env: &Environment,
    trust_new_host_keys: bool,
    secrets: Option<&Secrets>,
) -> Result<SshConfig, EngineError> {
    let ssh = &config.ssh;
    let home = env.get("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let expand = |path: &str| match path.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => config.root.join(path),
    };
    let port = match &ssh.port {
        yaml_serde::Value::Number(number) => number.as_u64().unwrap_or(22) as u16,
        yaml_serde::Value::String(text) => text.parse().unwrap_or(22),
        _ => 22,
    };
    let mut ssh_config = SshConfig::default();
    ssh_config.user = ssh.user.clone();
    ssh_config.port = port;
    ssh_config.keys = ssh.keys.iter().flatten().map(|key| expand(key)).collect();
    ssh_config.keys_only = ssh.keys_only.unwrap_or(false);
    ssh_config.use_agent = !ssh_config.keys_only && env.get("SSH_AUTH_SOCK").is_some();
    ssh_config.agent_socket = env.get("SSH_AUTH_SOCK").map(PathBuf::from);
    ssh_config.forward_agent = ssh.forward_agent.unwrap_or(false);
    ssh_config.proxy = ssh.proxy.as_deref().map(crate::ssh::JumpHost::parse).transpose()?;
    // As Kamal: a jump host (`proxy`) wins over `proxy_command`.
    if ssh_config.proxy.is_none() {
        ssh_config.proxy_command = ssh.proxy_command.clone().filter(|command| !command.trim().is_empty());
    }
    if let Some(files) = env.get("BERTH_KNOWN_HOSTS") {
        ssh_config.known_hosts_files = files.split(':').map(PathBuf::from).collect();
    } else {
        ssh_config.known_hosts_files = vec![home.join(".ssh/known_hosts")];
    }
    if ssh_config.keys.is_empty() && !ssh_config.keys_only {
        ssh_config.keys = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|name| home.join(".ssh").join(name))
            .filter(|p| p.is_file())
            .collect();
    }
    // `key_data`: secret names (Kamal 2), or inline PEM (deprecated but accepted).
    for key in ssh.key_data.iter().flatten() {
        if key.contains("-----BEGIN") {
            ssh_config.key_data.push(key.clone());
        } else if let Some(secrets) = secrets {
            ssh_config.key_data.push(secrets.get(key)?.to_string());
        }
    }
    // `config`: true = the user's OpenSSH config, false/absent = none, a path or a list = those files.
    ssh_config.ssh_config_files = match &ssh.config {
        Some(yaml_serde::Value::Bool(true)) => vec![home.join(".ssh/config"), PathBuf::from("/etc/ssh/ssh_config")],
        Some(yaml_serde::Value::String(path)) => vec![expand(path)],
        Some(yaml_serde::Value::Sequence(paths)) => {
            paths.iter().filter_map(yaml_serde::Value::as_str).map(&expand).collect()
        }
        _ => Vec::new(),
    };
    ssh_config.host_key_policy = if trust_new_host_keys { HostKeyPolicy::AcceptNew } else { HostKeyPolicy::Strict };
    ssh_config.max_concurrent_starts = config.sshkit.max_concurrent_starts.max(1) as usize;
    ssh_config.dns_retries = config.sshkit.dns_retries.min(10) as u32;
    ssh_config.idle_timeout = Some(Duration::from_secs(config.sshkit.pool_idle_timeout.max(1)));
    if let Some(seconds) = env.get("BERTH_SSH_CONNECT_TIMEOUT").and_then(|s| s.parse().ok()) {
        ssh_config.connect_timeout = Duration::from_secs(seconds);
    }
    // No limit by default (an image pull may take long; a dead connection is noticed by keepalives); a CI job
    // that must never hang on a stuck Docker daemon can set one.
    if let Some(seconds) = env.get("BERTH_SSH_COMMAND_TIMEOUT").and_then(|s| s.parse().ok()).filter(|s| *s > 0) {
        ssh_config.command_timeout = Some(Duration::from_secs(seconds));
    }
    Ok(ssh_config)
}

/// `git config user.name`-like identity Kamal records: the git email, else the login name.
pub fn performer(env: &Environment) -> String {
    let git = env.shell("git config user.email").output();
    if let Ok(output) = git
        && output.status.success()
    {
        let email = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !email.is_empty() {
            return email;
        }
    }
    env.get("USER").or_else(|| env.get("LOGNAME")).unwrap_or("root").to_string()
}

/// UTC now as `2026-11-26T15:40:17Z`.
pub fn now_iso8601() -> String {
    crate::utc::now_seconds()
}
