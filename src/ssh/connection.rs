//! One authenticated SSH connection (russh): TCP or through jump hosts, host key verified against known_hosts,
//! then public-key authentication with key files, in-memory keys and the agent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::client::{self, Handle, Msg};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, MethodKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{SshError, connect_hint, is_lookup_failure};
use super::known_hosts::{self, Verdict};
use super::route::{Endpoint, Route, default_identity_files};
use super::{HostKeyPolicy, SshConfig};

/// An open, authenticated connection; channels are opened on it concurrently (up to the server's MaxSessions).
pub(crate) struct Connection {
    handle: Handle<HostKeyCheck>,
    /// The host as the caller named it (in messages).
    label: String,
    /// One permit per open session channel: sshd refuses channels beyond its `MaxSessions` (10 by default).
    session_slots: Arc<Semaphore>,
    /// The jump host connection this one runs through, kept open as long as this one is.
    _via: Option<Arc<Connection>>,
    /// The `proxy_command` process carrying this connection, killed when it is dropped.
    _proxy_process: Option<tokio::process::Child>,
    /// When a channel was last opened or a command ended, for closing connections left idle (see
    /// [`Connection::is_idle_for`]).
    last_used: Arc<std::sync::Mutex<std::time::Instant>>,
    /// How many session channels may be open at once.
    session_capacity: usize,
}

/// A session channel and its slot on the connection.
pub(crate) struct SessionChannel {
    pub channel: Channel<Msg>,
    // Dropped in this order: marked used, then the slot freed, so the connection never looks idle in between.
    _marks_used: MarksUsedOnDrop,
    _slot: OwnedSemaphorePermit,
}

/// When the command ends (its channel's slot is released), the connection's idle time starts anew.
struct MarksUsedOnDrop(Arc<std::sync::Mutex<std::time::Instant>>);

impl Drop for MarksUsedOnDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }
}

impl Connection {
    /// Connects along `route` (each jump host, then the target), all within `config.connect_timeout`.
    pub async fn open(
        config: &SshConfig,
        route: &Route,
        known_hosts_writes: &Arc<Mutex<()>>,
    ) -> Result<Connection, SshError> {
        let target = &route.target;
        let attempt = async {
            let mut via: Option<Arc<Connection>> = None;
            for jump in &route.jumps {
                let hop = connect_endpoint(config, jump, via.clone(), known_hosts_writes).await;
                let hop = hop.map_err(|e| SshError::Jump {
                    target: target.label.clone(),
                    jump: jump.label.clone(),
                    source: Box::new(e),
                })?;
                via = Some(Arc::new(hop));
            }
            connect_endpoint(config, target, via, known_hosts_writes).await
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SshError::ConnectTimeout {
                host: target.label.clone(),
                addr: route.jumps.first().unwrap_or(target).addr(),
                after: config.connect_timeout,
            }),
        }
    }

    /// Whether no command has run on this connection for `idle` and none runs now. Unix-socket streams hold
    /// their own reference to the connection; the caller checks for those.
    pub fn is_idle_for(&self, idle: std::time::Duration) -> bool {
        let last_used = *self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        self.session_slots.available_permits() == self.session_capacity && last_used.elapsed() >= idle
    }

    fn mark_used(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Opens a session channel, waiting for a free slot first.
    pub async fn open_session(&self) -> Result<SessionChannel, SshError> {
        let slot = Arc::clone(&self.session_slots).acquire_owned().await.expect("the slots are never closed");
        self.mark_used();
        let channel = self.handle.channel_open_session().await.map_err(|e| self.channel_error("session", e))?;
        Ok(SessionChannel { channel, _marks_used: MarksUsedOnDrop(Arc::clone(&self.last_used)), _slot: slot })
    }

    /// Opens a channel to a Unix socket on the host (`direct-streamlocal@openssh.com`).
    pub async fn open_unix_socket(&self, path: &str) -> Result<Channel<Msg>, SshError> {
        self.mark_used();
        self.handle.channel_open_direct_streamlocal(path).await.map_err(|e| self.channel_error("unix socket", e))
    }

    fn channel_error(&self, kind: &'static str, error: russh::Error) -> SshError {
        if self.is_closed() || matches!(error, russh::Error::SendError | russh::Error::Disconnect) {
            SshError::Disconnected {
                host: self.label.clone(),
                during: format!("while opening a {kind} channel"),
                cause: error.to_string(),
            }
        } else {
            SshError::Channel { host: self.label.clone(), kind, cause: error.to_string() }
        }
    }

    pub async fn disconnect(&self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "berth is done", "en").await;
    }
}

/// Connects to `endpoint` directly or through `via`, verifies its host key and authenticates.
async fn connect_endpoint(
    config: &SshConfig,
    endpoint: &Endpoint,
    via: Option<Arc<Connection>>,
    known_hosts_writes: &Arc<Mutex<()>>,
) -> Result<Connection, SshError> {
    let check = HostKeyCheck {
        label: endpoint.label.clone(),
        name: endpoint.known_hosts_name(),
        port: endpoint.port,
        files: endpoint.known_hosts_files.clone(),
        policy: config.host_key_policy,
        writes: Arc::clone(known_hosts_writes),
        forward_agent_to: config.forward_agent.then(|| agent_socket(config)).flatten(),
    };
    let client_config = Arc::new(client_config(config, endpoint));
    let mut proxy_process = None;
    let handshake = match &via {
        None if config.proxy_command.is_some() => {
            let command = proxy_command_line(config.proxy_command.as_deref().unwrap_or_default(), endpoint);
            let connect_error = |cause: String| SshError::Connect {
                host: endpoint.label.clone(),
                addr: format!("proxy_command `{command}`"),
                cause,
                hint: "Check ssh.proxy_command: it must run here and connect its stdin/stdout to the host's sshd."
                    .into(),
            };
            let (mut child, stream) = spawn_proxy_command(&command).map_err(|e| connect_error(e.to_string()))?;
            let handshake = client::connect_stream(client_config, stream, check).await;
            if let Err(HandshakeError::Ssh(error)) = &handshake {
                // What the command printed says more than a handshake that found nothing on its end.
                let printed = proxy_command_stderr(&mut child).await;
                let printed = if printed.is_empty() { String::new() } else { format!("; it printed: {printed}") };
                return Err(connect_error(format!("SSH handshake failed: {error}{printed}")));
            }
            discard_stderr(&mut child);
            proxy_process = Some(child);
            handshake
        }
        None => {
            let stream = connect_tcp(endpoint, config.dns_retries).await.map_err(|e| SshError::Connect {
                host: endpoint.label.clone(),
                addr: endpoint.addr(),
                cause: e.to_string(),
                hint: connect_hint(&e),
            })?;
            let _ = stream.set_nodelay(true);
            client::connect_stream(client_config, stream, check).await
        }
        Some(jump) => {
            let tunnel = jump
                .handle
                .channel_open_direct_tcpip(endpoint.hostname.as_str(), u32::from(endpoint.port), "127.0.0.1", 0)
                .await
                .map_err(|e| SshError::JumpChannel {
                    jump: jump.label.clone(),
                    target: endpoint.addr(),
                    cause: e.to_string(),
                })?;
            client::connect_stream(client_config, tunnel.into_stream(), check).await
        }
    };
    let mut handle = handshake.map_err(|e| match e {
        HandshakeError::HostKey(error) => error,
        HandshakeError::Ssh(error) => SshError::Connect {
            host: endpoint.label.clone(),
            addr: endpoint.addr(),
            cause: format!("SSH handshake failed: {error}"),
            hint: "Is an SSH server listening on that port?".into(),
        },
    })?;
    authenticate(&mut handle, config, endpoint).await?;
    Ok(Connection {
        handle,
        label: endpoint.label.clone(),
        session_slots: Arc::new(Semaphore::new(config.max_sessions_per_connection.max(1))),
        last_used: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        session_capacity: config.max_sessions_per_connection.max(1),
        _via: via,
        _proxy_process: proxy_process,
    })
}

/// A TCP connection to `endpoint`; a failed name lookup is tried again up to `dns_retries` times (SSHKit's
/// `dns_retries`: resolvers fail transiently, e.g. when many hosts are looked up at once).
async fn connect_tcp(endpoint: &Endpoint, dns_retries: u32) -> std::io::Result<tokio::net::TcpStream> {
    let mut attempt = 0;
    loop {
        match tokio::net::TcpStream::connect((endpoint.hostname.as_str(), endpoint.port)).await {
            Err(error) if is_lookup_failure(&error) && attempt < dns_retries => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(4))).await;
            }
            Err(error) if is_lookup_failure(&error) && attempt > 0 => {
                return Err(std::io::Error::new(error.kind(), format!("{error} (after {attempt} retries)")));
            }
            result => return result,
        }
    }
}

/// `proxy_command` with OpenSSH's tokens for `endpoint` replaced: `%h` host, `%p` port, `%r` user, `%%` `%`.
fn proxy_command_line(template: &str, endpoint: &Endpoint) -> String {
    let mut line = String::with_capacity(template.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            line.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => line.push_str(&endpoint.hostname),
            Some('p') => line.push_str(&endpoint.port.to_string()),
            Some('r') => line.push_str(&endpoint.user),
            Some('%') => line.push('%'),
            Some(other) => {
                line.push('%');
                line.push(other);
            }
            None => line.push('%'),
        }
    }
    line
}

/// Starts `command` through `sh -c`; its stdout and stdin are the connection's byte stream (its stderr stays
/// in the child, see [`proxy_command_stderr`]).
fn spawn_proxy_command(
    command: &str,
) -> std::io::Result<(tokio::process::Child, tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>)>
{
    use std::process::Stdio;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stdin = child.stdin.take().expect("stdin is piped");
    Ok((child, tokio::io::join(stdout, stdin)))
}

/// What a failed `proxy_command` printed on stderr: it is stopped, then its output read (briefly: a process it
/// left behind may hold the pipe open).
async fn proxy_command_stderr(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), child.wait()).await;
    let mut printed = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut stderr = stderr.take(4096);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stderr.read_to_end(&mut printed)).await;
    }
    String::from_utf8_lossy(&printed).trim().to_string()
}

/// Reads and drops a working `proxy_command`'s stderr, so a chatty command never blocks on a full pipe.
fn discard_stderr(child: &mut tokio::process::Child) {
    if let Some(mut stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        });
    }
}

fn client_config(config: &SshConfig, endpoint: &Endpoint) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // Ask for a key type known_hosts has for this host first, as OpenSSH does: a host with several keys then
    // presents the one that can be verified.
    let known = known_hosts::recorded_algorithms(&endpoint.known_hosts_files, &endpoint.known_hosts_name());
    if !known.is_empty() {
        let is_rsa = |a: &Algorithm| matches!(a, Algorithm::Rsa { .. });
        let is_known = |a: &Algorithm| known.iter().any(|k| k == a || (is_rsa(k) && is_rsa(a)));
        let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = preferred.key.iter().cloned().partition(is_known);
        first.extend(rest);
        preferred.key = first.into();
    }
    client::Config {
        preferred,
        keepalive_interval: Some(config.keepalive_interval),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    }
}

/// The russh handler: decides whether the host key is trusted (see [`HostKeyPolicy`]).
struct HostKeyCheck {
    label: String,
    name: String,
    port: u16,
    files: Vec<PathBuf>,
    policy: HostKeyPolicy,
    /// Serialises recording new keys, so two connections do not append at once.
    writes: Arc<Mutex<()>>,
    /// The local agent that forwarded-agent channels from the host reach (`ssh.forward_agent`), if any.
    forward_agent_to: Option<PathBuf>,
}

#[derive(Debug)]
enum HandshakeError {
    Ssh(russh::Error),
    HostKey(SshError),
}

impl From<russh::Error> for HandshakeError {
    fn from(error: russh::Error) -> Self {
        HandshakeError::Ssh(error)
    }
}

impl HostKeyCheck {
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let _writing = self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match known_hosts::check(&self.files, &self.name, key)? {
            Verdict::Trusted => Ok(()),
            Verdict::Unknown => match (self.policy, self.files.first()) {
                (HostKeyPolicy::AcceptNew, Some(file)) => known_hosts::record(file, &self.name, key),
                _ => Err(SshError::HostKeyUnknown {
                    host: self.name.clone(),
                    port: self.port,
                    key_type: key.algorithm().to_string(),
                    fingerprint: known_hosts::fingerprint(key),
                    known_hosts: self.files.clone(),
                }),
            },
            Verdict::Changed { expected, file, line } => Err(SshError::HostKeyChanged {
                host: self.name.clone(),
                expected: format!("{} {}", expected.algorithm(), known_hosts::fingerprint(&expected)),
                got: format!("{} {}", key.algorithm(), known_hosts::fingerprint(key)),
                file,
                line,
            }),
            Verdict::Revoked { file, line } => Err(SshError::HostKeyRevoked {
                host: self.label.clone(),
                fingerprint: known_hosts::fingerprint(key),
                file,
                line,
            }),
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = HandshakeError;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, HandshakeError> {
        match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.verify(key).map(|()| true).map_err(HandshakeError::HostKey)
            }
            // berth does not advertise certificate algorithms, so a server has no reason to send one.
            PublicKeyOrCertificate::Certificate(_) => Ok(false),
        }
    }

    /// A program on the host talks to the forwarded agent: relay the channel to the local agent's socket.
    /// Without `ssh.forward_agent` (or without an agent here) the channel is refused.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), HandshakeError> {
        let Some(socket) = self.forward_agent_to.clone() else { return Ok(()) };
        reply.accept().await;
        tokio::spawn(async move {
            if let Ok(mut agent) = tokio::net::UnixStream::connect(&socket).await {
                let mut stream = channel.into_stream();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
            }
        });
        Ok(())
    }
}

/// A private key to offer, with where it came from (for the error message).
struct OfferedKey {
    source: String,
    key: Arc<PrivateKey>,
}

/// Public-key authentication: `key_data`, then key files (configured, then the OpenSSH files', then the default
/// ones when nothing is configured), then the agent. Each distinct key is offered once (sshd counts every
/// offer against `MaxAuthTries`).
async fn authenticate(
    handle: &mut Handle<HostKeyCheck>,
    config: &SshConfig,
    endpoint: &Endpoint,
) -> Result<(), SshError> {
    let user = endpoint.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let mut offered: HashSet<Vec<u8>> = HashSet::new();
    let (keys, mut configured_public_keys) = collect_keys(config, endpoint, &mut tried);
    let auth_error = |e: russh::Error| SshError::Disconnected {
        host: endpoint.label.clone(),
        during: format!("while authenticating as {user}"),
        cause: e.to_string(),
    };

    let mut rsa_hash = None;
    for offered_key in keys {
        let public = offered_key.key.public_key().clone();
        configured_public_keys.push(public.clone());
        if !offered.insert(public_key_bytes(&public)) {
            continue;
        }
        if offered_key.key.algorithm().is_rsa() && rsa_hash.is_none() {
            rsa_hash = Some(handle.best_supported_rsa_hash().await.map_err(auth_error)?.flatten());
        }
        let hash = if offered_key.key.algorithm().is_rsa() { rsa_hash.flatten() } else { None };
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::clone(&offered_key.key), hash))
            .await
            .map_err(auth_error)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("{} ({}): refused by the host", offered_key.source, known_hosts::fingerprint(&public)));
        if !publickey_still_allowed(&result) || handle.is_closed() {
            return Err(SshError::Auth { user: user.into(), host: endpoint.label.clone(), tried });
        }
    }

    if config.use_agent {
        match agent_socket(config) {
            None => tried.push("the agent: SSH_AUTH_SOCK is not set".into()),
            Some(socket) => {
                let only: Option<&[PublicKey]> = config.keys_only.then_some(configured_public_keys.as_slice());
                if try_agent(handle, endpoint, &socket, only, &mut offered, &mut tried).await? {
                    return Ok(());
                }
            }
        }
    }
    Err(SshError::Auth { user: user.into(), host: endpoint.label.clone(), tried })
}

fn publickey_still_allowed(result: &client::AuthResult) -> bool {
    match result {
        client::AuthResult::Success => true,
        client::AuthResult::Failure { remaining_methods, .. } => remaining_methods.contains(&MethodKind::PublicKey),
    }
}

fn public_key_bytes(key: &PublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

/// The private keys to offer, and the public halves of configured keys that could not be loaded (an encrypted
/// key file whose `.pub` is next to it: with `keys_only`, the agent may still sign with it).
fn collect_keys(config: &SshConfig, endpoint: &Endpoint, tried: &mut Vec<String>) -> (Vec<OfferedKey>, Vec<PublicKey>) {
    let mut keys = Vec::new();
    let mut public_only = Vec::new();
    for (index, pem) in config.key_data.iter().enumerate() {
        let source = format!("key_data #{}", index + 1);
        match russh::keys::decode_secret_key(pem, None) {
            Ok(key) => keys.push(OfferedKey { source, key: Arc::new(key) }),
            Err(russh::keys::Error::KeyIsEncrypted) => {
                tried.push(format!("{source}: encrypted with a passphrase (load it into an agent instead)"))
            }
            Err(e) => tried.push(format!("{source}: not a private key berth can read ({e})")),
        }
    }
    let mut files: Vec<PathBuf> = config.keys.clone();
    files.extend(endpoint.identity_files.iter().cloned());
    let explicit = !files.is_empty() || !config.key_data.is_empty();
    if !explicit && !config.keys_only {
        files = default_identity_files(std::env::home_dir().as_deref());
    }
    let mut seen = HashSet::new();
    for file in files.into_iter().filter(|f| seen.insert(f.clone())) {
        let source = file.display().to_string();
        match russh::keys::load_secret_key(&file, None) {
            Ok(key) => keys.push(OfferedKey { source, key: Arc::new(key) }),
            Err(russh::keys::Error::KeyIsEncrypted) => {
                tried.push(format!("{source}: encrypted with a passphrase (load it into an agent instead)"));
                if let Ok(public) = russh::keys::load_public_key(public_key_path(&file)) {
                    public_only.push(public);
                }
            }
            Err(russh::keys::Error::IO(e)) => tried.push(format!("{source}: cannot read ({e})")),
            Err(e) => tried.push(format!("{source}: not a private key berth can read ({e})")),
        }
    }
    (keys, public_only)
}

fn public_key_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn agent_socket(config: &SshConfig) -> Option<PathBuf> {
    config
        .agent_socket
        .clone()
        .or_else(|| std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(PathBuf::from))
}

/// Offers the agent's keys (only those in `only`, with `keys_only`). `Ok(true)` once one is accepted.
async fn try_agent(
    handle: &mut Handle<HostKeyCheck>,
    endpoint: &Endpoint,
    socket: &Path,
    only: Option<&[PublicKey]>,
    offered: &mut HashSet<Vec<u8>>,
    tried: &mut Vec<String>,
) -> Result<bool, SshError> {
    let user = endpoint.user.as_str();
    let where_ = socket.display();
    let mut agent = match AgentClient::connect_uds(socket).await {
        Ok(agent) => agent,
        Err(e) => {
            tried.push(format!("the agent at {where_}: cannot connect ({e})"));
            return Ok(false);
        }
    };
    let identities = match agent.request_identities().await {
        Ok(identities) => identities,
        Err(e) => {
            tried.push(format!("the agent at {where_}: cannot list its keys ({e})"));
            return Ok(false);
        }
    };
    let mut offered_any = false;
    for identity in identities {
        let AgentIdentity::PublicKey { key, comment } = identity else { continue };
        if only.is_some_and(|allowed| !allowed.iter().any(|k| k.key_data() == key.key_data())) {
            continue;
        }
        if !offered.insert(public_key_bytes(&key)) {
            continue;
        }
        offered_any = true;
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await.ok().flatten().flatten()
        } else {
            None
        };
        let described = format!("the agent's key {comment} ({})", known_hosts::fingerprint(&key));
        match handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
            Ok(result) if result.success() => return Ok(true),
            Ok(result) => {
                tried.push(format!("{described}: refused by the host"));
                if !publickey_still_allowed(&result) || handle.is_closed() {
                    return Ok(false);
                }
            }
            Err(e) => tried.push(format!("{described}: the agent did not sign ({e:?})")),
        }
    }
    if !offered_any {
        let filter = if only.is_some() { " matching the configured keys (keys_only)" } else { "" };
        tried.push(format!("the agent at {where_}: no keys{filter}"));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(hostname: &str, port: u16, user: &str) -> Endpoint {
        Endpoint {
            label: "app1".into(),
            hostname: hostname.into(),
            port,
            user: user.into(),
            identity_files: Vec::new(),
            known_hosts_files: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_looked_up_again_dns_retries_times() {
        let endpoint = endpoint("no-such-host.invalid", 22, "root");
        let error = connect_tcp(&endpoint, 2).await.unwrap_err();
        assert!(is_lookup_failure(&error) && error.to_string().ends_with("(after 2 retries)"), "{error}");
        let error = connect_tcp(&endpoint, 0).await.unwrap_err();
        assert!(!error.to_string().contains("retries"), "{error}");
    }

    #[test]
    fn proxy_command_tokens_are_replaced_as_openssh_does() {
        let endpoint = endpoint("10.0.0.5", 2222, "deploy");
        assert_eq!(
            proxy_command_line("ssh -W %h:%p %r@bastion # 100%% %x%", &endpoint),
            "ssh -W 10.0.0.5:2222 deploy@bastion # 100% %x%"
        );
    }
}
