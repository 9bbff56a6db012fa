//! The SSH executor: one persistent, multiplexed connection per host (russh); runs `Cmd`s and writes files.
//!
//! [`SshPool`] is the only thing the rest of berth uses. A host's connection is opened on first use, shared by
//! every command to that host (each command is a channel on it, up to the server's `MaxSessions` at once),
//! kept alive with keepalives, and reopened transparently when it dropped. Connection starts are capped
//! (`max_concurrent_starts`, Kamal's SSHKit default 30). Host keys are always verified against known_hosts
//! files; trusting a host on first sight is an explicit choice ([`HostKeyPolicy::AcceptNew`]).
//!
//! Inside: [`route`] turns a host string into addresses (OpenSSH config files, jump hosts), [`connection`]
//! connects and authenticates, [`known_hosts`] verifies host keys, [`exec`] runs one command on a channel.

mod connection;
mod error;
mod exec;
mod known_hosts;
mod openssh_client;
mod openssh_config;
mod route;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::ChannelStream;
use russh::client::Msg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use crate::command::{Cmd, quote};
use connection::Connection;
pub use error::SshError;
use exec::{Stdin, Stdout};
pub use openssh_client::terminal_session_args;

/// How SSH reaches the hosts: Kamal's `ssh:` settings plus berth's own (host key policy, timeouts).
#[derive(Clone)]
pub struct SshConfig {
    /// The login user on every host (Kamal's `ssh.user`, default `root`).
    pub user: String,
    /// The SSH port (Kamal's `ssh.port`, default 22); a host written `host:port` overrides it.
    pub port: u16,
    /// Private key files to offer (Kamal's `ssh.keys`).
    pub keys: Vec<PathBuf>,
    /// Private keys as PEM/OpenSSH text (Kamal's `ssh.key_data`, from secrets). Never shown by `Debug`.
    pub key_data: Vec<String>,
    /// Offer only `keys`/`key_data` (and the agent's copies of them), not the agent's other keys or default key
    /// files (Kamal's `ssh.keys_only`).
    pub keys_only: bool,
    /// Also offer the agent's keys.
    pub use_agent: bool,
    /// The agent's socket; `None` reads `SSH_AUTH_SOCK` when connecting.
    pub agent_socket: Option<PathBuf>,
    /// Let commands on the hosts use this machine's agent (Kamal's `ssh.forward_agent`, OpenSSH's `-A`).
    pub forward_agent: bool,
    /// A jump host every connection goes through (Kamal's `ssh.proxy`).
    pub proxy: Option<JumpHost>,
    /// A local command whose stdin/stdout carry each connection instead of TCP (Kamal's `ssh.proxy_command`,
    /// OpenSSH's `ProxyCommand`: `%h` host, `%p` port, `%r` user, `%%` a percent sign), e.g.
    /// `aws ssm start-session --target %h …` or `cloudflared access ssh --hostname %h`.
    pub proxy_command: Option<String>,
    /// Where host keys are looked up, in order; [`HostKeyPolicy::AcceptNew`] records into the first.
    pub known_hosts_files: Vec<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    /// For the whole connection set-up (TCP, jump hosts, handshake, authentication).
    pub connect_timeout: Duration,
    /// For each command; `None`: commands may run as long as they need.
    pub command_timeout: Option<Duration>,
    /// Keepalives are sent after this much silence; three unanswered ones drop the connection.
    pub keepalive_interval: Duration,
    /// A connection on which no command ran for this long is closed (SSHKit's `pool_idle_timeout`, default
    /// 900 s; `None` keeps connections open); the next command to that host opens a new one.
    pub idle_timeout: Option<Duration>,
    /// How many times a host name that did not resolve is looked up again (SSHKit's `dns_retries`, default 3).
    pub dns_retries: u32,
    /// How many connections may be in set-up at once (SSHKit's `max_concurrent_starts`).
    pub max_concurrent_starts: usize,
    /// How many commands run at once on one connection: sshd refuses session channels beyond its `MaxSessions`
    /// (default 10), so more wait for a free one.
    pub max_sessions_per_connection: usize,
    /// OpenSSH client configuration files to read (Kamal's `ssh.config`): `Host` blocks with `HostName`, `User`,
    /// `Port`, `IdentityFile`, `ProxyJump`, `UserKnownHostsFile`.
    pub ssh_config_files: Vec<PathBuf>,
}

impl Default for SshConfig {
    fn default() -> Self {
        let home = std::env::home_dir();
        SshConfig {
            user: "root".into(),
            port: 22,
            keys: Vec::new(),
            key_data: Vec::new(),
            keys_only: false,
            use_agent: true,
            agent_socket: None,
            forward_agent: false,
            proxy: None,
            proxy_command: None,
            known_hosts_files: home.iter().map(|h| h.join(".ssh/known_hosts")).collect(),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            command_timeout: None,
            keepalive_interval: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(900)),
            dns_retries: 3,
            max_concurrent_starts: 30,
            max_sessions_per_connection: 10,
            ssh_config_files: Vec::new(),
        }
    }
}

impl fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConfig")
            .field("user", &self.user)
            .field("port", &self.port)
            .field("keys", &self.keys)
            .field("key_data", &format!("<{} keys>", self.key_data.len()))
            .field("keys_only", &self.keys_only)
            .field("use_agent", &self.use_agent)
            .field("agent_socket", &self.agent_socket)
            .field("forward_agent", &self.forward_agent)
            .field("proxy", &self.proxy)
            .field("proxy_command", &self.proxy_command)
            .field("known_hosts_files", &self.known_hosts_files)
            .field("host_key_policy", &self.host_key_policy)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("dns_retries", &self.dns_retries)
            .field("max_concurrent_starts", &self.max_concurrent_starts)
            .field("max_sessions_per_connection", &self.max_sessions_per_connection)
            .field("ssh_config_files", &self.ssh_config_files)
            .finish()
    }
}

/// What to do with a host whose key is in no known_hosts file. A key that differs from the recorded one is
/// refused under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse it (OpenSSH's `StrictHostKeyChecking yes`).
    #[default]
    Strict,
    /// Record it in the first known_hosts file and connect (OpenSSH's `StrictHostKeyChecking accept-new`).
    AcceptNew,
}

/// A jump host, `[user@]host[:port]` (Kamal's `ssh.proxy`, OpenSSH's `ProxyJump`). Unset user and port come from
/// the OpenSSH config files, then default to `root` and 22.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl JumpHost {
    /// Parses `[user@]host[:port]` (an IPv6 address in brackets when a port follows).
    pub fn parse(spec: &str) -> Result<JumpHost, SshError> {
        let spec = spec.trim();
        let spec = spec.strip_prefix("ssh://").unwrap_or(spec);
        let (user, host) = match spec.rsplit_once('@') {
            Some((user, host)) if !user.is_empty() => (Some(user.to_string()), host),
            Some(_) => return Err(SshError::InvalidHost { host: spec.into(), reason: "empty user before '@'".into() }),
            None => (None, spec),
        };
        let (host, port) = route::parse_host(host)?;
        Ok(JumpHost { user, host, port })
    }
}

impl fmt::Display for JumpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status; 128 + N when the command was killed by signal N.
    pub exit_status: u32,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_status == 0
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Receives a command's output line by line as it arrives (without the newline), e.g. to stream a deploy log.
pub trait LineSink: Send + Sync {
    fn line(&self, host: &str, stream: OutputStream, line: &str);
}

/// A [`LineSink`] that drops every line (the output is still in [`CommandOutput`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardLines;

impl LineSink for DiscardLines {
    fn line(&self, _host: &str, _stream: OutputStream, _line: &str) {}
}

/// The connections to every host, shared by all clones. Connections run on the tokio runtime that opened them:
/// use one pool within one runtime.
#[derive(Clone)]
pub struct SshPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    config: SshConfig,
    /// One slot per host string; its lock is held while connecting, so concurrent commands to a host that is not
    /// connected yet wait for the one connection instead of each opening their own.
    hosts: Mutex<HashMap<String, Arc<HostSlot>>>,
    connection_starts: Semaphore,
    known_hosts_writes: Arc<Mutex<()>>,
    /// Set once the task that closes idle connections runs (started with the first connection, on its runtime).
    idle_reaper_started: std::sync::atomic::AtomicBool,
}

/// A host's connection, if open. Locked across connecting.
type HostSlot = tokio::sync::Mutex<Option<Arc<Connection>>>;

impl fmt::Debug for SshPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshPool").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl SshPool {
    pub fn new(config: SshConfig) -> SshPool {
        let starts = config.max_concurrent_starts.max(1);
        SshPool {
            shared: Arc::new(PoolShared {
                config,
                hosts: Mutex::new(HashMap::new()),
                connection_starts: Semaphore::new(starts),
                known_hosts_writes: Arc::new(Mutex::new(())),
                idle_reaper_started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &SshConfig {
        &self.shared.config
    }

    /// Runs `cmd` on `host`: its script through the login user's shell, `cmd.stdin()` then EOF on its input.
    /// Output lines go to `lines` as they arrive and are collected in the result. A non-zero exit status is
    /// not an error here (see [`CommandOutput::success`]); failing to run the command at all is.
    pub async fn run(&self, host: &str, cmd: &Cmd, lines: &dyn LineSink) -> Result<CommandOutput, SshError> {
        let stdin = cmd.stdin().unwrap_or_default();
        self.execute(host, cmd.script(), Stdin::Bytes(stdin), Stdout::Lines, lines).await
    }

    /// Like [`SshPool::run`], with `stdin` streamed to the command until its end (e.g. a tarball into
    /// `docker import -`); `cmd.stdin()` is ignored.
    pub async fn run_with_stdin_stream(
        &self,
        host: &str,
        cmd: &Cmd,
        mut stdin: impl AsyncRead + Unpin + Send,
        lines: &dyn LineSink,
    ) -> Result<CommandOutput, SshError> {
        self.execute(host, cmd.script(), Stdin::Stream(&mut stdin), Stdout::Lines, lines).await
    }

    /// Writes `contents` to `remote_path` on `host` with permissions `mode`, creating its directory. The
    /// contents travel on the channel (never in a command line), into a temporary file that is private from its
    /// creation (umask 077), gets `mode`, and is renamed over `remote_path`: no reader ever sees a partial file
    /// or a secret file with looser permissions.
    pub async fn write_file(&self, host: &str, remote_path: &str, contents: &[u8], mode: u32) -> Result<(), SshError> {
        let cmd = write_file_command(remote_path, mode).with_stdin(contents.to_vec());
        let output = self.run(host, &cmd, &DiscardLines).await?;
        if output.success() {
            Ok(())
        } else {
            Err(SshError::WriteFile {
                host: host.into(),
                path: remote_path.into(),
                exit_status: output.exit_status,
                stderr: output.stderr.trim().to_string(),
            })
        }
    }

    /// A byte stream to the Unix socket `path` on `host` (OpenSSH's `direct-streamlocal`), e.g. the Docker
    /// Engine API at `/var/run/docker.sock`.
    pub async fn open_unix_socket(&self, host: &str, path: &str) -> Result<RemoteStream, SshError> {
        let mut retried = false;
        loop {
            let connection = self.connection(host).await?;
            match connection.open_unix_socket(path).await {
                Ok(channel) => return Ok(RemoteStream { stream: channel.into_stream(), _connection: connection }),
                Err(SshError::Disconnected { .. }) if !retried => {
                    retried = true;
                    self.forget(host, &connection);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes every connection (commands still running on them fail).
    pub async fn close(&self) {
        let slots: Vec<_> = self.shared.hosts.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, slot) in slots {
            if let Some(connection) = slot.lock().await.take() {
                connection.disconnect().await;
            }
        }
    }

    /// Like [`SshPool::run`], with the command's standard output written to `stdout` as it arrives (binary, any
    /// size, e.g. `docker save`) instead of being split into lines; stderr lines still go to `lines`.
    pub async fn run_with_stdout_to(
        &self,
        host: &str,
        cmd: &Cmd,
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
        lines: &dyn LineSink,
    ) -> Result<CommandOutput, SshError> {
        let stdin = cmd.stdin().unwrap_or_default();
        self.execute(host, cmd.script(), Stdin::Bytes(stdin), Stdout::Writer(stdout), lines).await
    }

    async fn execute(
        &self,
        host: &str,
        script: &str,
        stdin: Stdin<'_>,
        stdout: Stdout<'_>,
        lines: &dyn LineSink,
    ) -> Result<CommandOutput, SshError> {
        let session = self.session_channel(host).await?;
        exec::run(session.channel, host, script, stdin, stdout, lines, self.shared.config.command_timeout).await
    }

    /// A session channel on `host`'s connection. A connection found dead when opening the channel (nothing has
    /// been sent to the host yet, so nothing can run twice) is replaced once.
    async fn session_channel(&self, host: &str) -> Result<connection::SessionChannel, SshError> {
        let mut retried = false;
        loop {
            let connection = self.connection(host).await?;
            let opened = tokio::time::timeout(self.shared.config.connect_timeout, connection.open_session()).await;
            match opened {
                Ok(Ok(session)) => {
                    if self.shared.config.forward_agent {
                        // Asked per session, as OpenSSH does; the host's sshd then offers SSH_AUTH_SOCK to it.
                        let _ = session.channel.agent_forward(false).await;
                    }
                    return Ok(session);
                }
                Ok(Err(SshError::Disconnected { .. })) | Err(_) if !retried => {
                    retried = true;
                    self.forget(host, &connection);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(SshError::Disconnected {
                        host: host.into(),
                        during: "while opening a session channel".into(),
                        cause: format!("no answer within {:?}", self.shared.config.connect_timeout),
                    });
                }
            }
        }
    }

    fn slot(&self, host: &str) -> Arc<HostSlot> {
        let mut hosts = self.shared.hosts.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(hosts.entry(host.to_string()).or_default())
    }

    /// The open connection to `host`, opened now if there is none or it dropped.
    async fn connection(&self, host: &str) -> Result<Arc<Connection>, SshError> {
        let slot = self.slot(host);
        let mut current = slot.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        *current = None;
        let route = route::resolve(&self.shared.config, host)?;
        let _start = self.shared.connection_starts.acquire().await.expect("the semaphore is never closed");
        let connection =
            Arc::new(Connection::open(&self.shared.config, &route, &self.shared.known_hosts_writes).await?);
        *current = Some(Arc::clone(&connection));
        self.start_idle_reaper();
        Ok(connection)
    }

    /// Drops `dead` from `host`'s slot (unless it was replaced already), so the next use reconnects.
    /// Starts (once) the task that closes connections idle for `idle_timeout`. It holds the pool weakly and ends
    /// with it.
    fn start_idle_reaper(&self) {
        use std::sync::atomic::Ordering;
        let Some(idle) = self.shared.config.idle_timeout else { return };
        if self.shared.idle_reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = Arc::downgrade(&self.shared);
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = pool.upgrade() else { return };
                let slots: Vec<Arc<HostSlot>> =
                    shared.hosts.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                drop(shared);
                for slot in slots {
                    // A slot being connected (locked) is in use.
                    let Ok(mut current) = slot.try_lock() else { continue };
                    // Only the pool holds it (no unix-socket stream), no command runs, none ran for `idle`.
                    if let Some(connection) = current.take_if(|c| Arc::strong_count(c) == 1 && c.is_idle_for(idle)) {
                        drop(current);
                        connection.disconnect().await;
                    }
                }
            }
        });
    }

    fn forget(&self, host: &str, dead: &Arc<Connection>) {
        let slot = self.slot(host);
        if let Ok(mut current) = slot.try_lock()
            && current.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead))
        {
            *current = None;
        }
    }
}

/// `mkdir -p DIR && (umask 077 && cat > TMP) && chmod MODE TMP && mv -f TMP PATH`, removing TMP on failure.
fn write_file_command(remote_path: &str, mode: u32) -> Cmd {
    // Commands run in the login directory, so `~/x` is `x` (a quoted `~` would not expand).
    let remote_path = remote_path.strip_prefix("~/").unwrap_or(remote_path);
    let mut suffix = [0u8; 6];
    let _ = getrandom::fill(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let temporary = format!("{remote_path}.berth-tmp-{suffix}");
    let directory = remote_path.rsplit_once('/').map(|(dir, _)| dir).filter(|dir| !dir.is_empty());
    let write = Cmd::raw_script(format!(
        "(umask 077 && cat > {tmp}) && chmod {mode:o} {tmp} && mv -f {tmp} {path} || {{ rm -f {tmp}; exit 1; }}",
        tmp = quote(&temporary),
        mode = mode & 0o7777,
        path = quote(remote_path),
    ));
    match directory {
        Some(directory) => Cmd::new("mkdir").arg("-p").arg(directory).and(write),
        None => write,
    }
}

/// A byte stream to a Unix socket on a host, through its SSH connection (see [`SshPool::open_unix_socket`]).
pub struct RemoteStream {
    stream: ChannelStream<Msg>,
    /// Keeps the connection open while the stream is in use.
    _connection: Arc<Connection>,
}

impl AsyncRead for RemoteStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for RemoteStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hosts_parse_and_print_back() {
        let jump = JumpHost::parse("ops@bastion:2200").unwrap();
        assert_eq!(jump, JumpHost { user: Some("ops".into()), host: "bastion".into(), port: Some(2200) });
        assert_eq!(jump.to_string(), "ops@bastion:2200");
        assert_eq!(JumpHost::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(JumpHost::parse("root@[fe80::1]:22").unwrap().to_string(), "root@[fe80::1]:22");
        assert!(JumpHost::parse("@host").is_err());
    }

    #[test]
    fn the_write_file_script_keeps_contents_off_the_command_line_and_is_private_from_the_start() {
        let cmd = write_file_command(".kamal/apps/app/env/roles/web.env", 0o600);
        let script = cmd.script();
        assert!(script.starts_with("mkdir -p .kamal/apps/app/env/roles && (umask 077 && cat > "), "{script}");
        assert!(script.contains("&& chmod 600 "), "{script}");
        assert!(script.contains(" && mv -f "), "{script}");
        assert!(!write_file_command("plain", 0o644).script().contains("mkdir"));
        assert!(write_file_command("~/.kamal/x", 0o644).script().starts_with("mkdir -p .kamal && "));
    }

    #[test]
    fn write_file_works_with_a_local_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub dir/it's.txt");
        let cmd = write_file_command(path.to_str().unwrap(), 0o640);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.script())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"secret=1\n").unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&path).unwrap(), b"secret=1\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_pool_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone>() {}
        assert_traits::<SshPool>();
    }
}
