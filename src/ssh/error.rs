//! `SshError`: every way the SSH layer fails, each message saying what failed, on which host, and how to fix it.

use std::path::PathBuf;
use std::time::Duration;

/// An error of the SSH executor. Messages are complete sentences meant for the person running the deploy.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host} ({addr}): {cause}. {hint}")]
    Connect { host: String, addr: String, cause: String, hint: String },

    #[error(
        "connecting to {host} ({addr}) timed out after {after:?}: is the host up and is port {port} reachable \
         from here? (a firewall that drops packets looks like this; raise ssh connect_timeout if the network is \
         just slow)",
        port = addr.rsplit(':').next().unwrap_or("22")
    )]
    ConnectTimeout { host: String, addr: String, after: Duration },

    #[error(
        "command on {host} timed out after {after:?} and was stopped: `{command}` (raise the command timeout if \
         it is expected to take longer)"
    )]
    CommandTimeout { host: String, command: String, after: Duration },

    #[error(
        "the host key of {host} ({key_type} {fingerprint}) is unknown: it is in none of {}. Check the fingerprint \
         with the host's administrator, then add it with `ssh-keyscan{port_flag} {keyscan_host} >> {}`, or \
         trust new hosts on first connection explicitly (host key policy AcceptNew)",
        display_paths(known_hosts),
        known_hosts.first().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.ssh/known_hosts".into()),
        port_flag = if *port == 22 { String::new() } else { format!(" -p {port}") },
        keyscan_host = host_without_port(host)
    )]
    HostKeyUnknown { host: String, port: u16, key_type: String, fingerprint: String, known_hosts: Vec<PathBuf> },

    #[error(
        "the host key of {host} has CHANGED: {file}:{line} expects {expected}, the host presented \
         {got}. Refusing to connect: someone may be intercepting the connection (man in the middle), or the host \
         was reinstalled. If you know the host was reinstalled, remove the old entry with `ssh-keygen -R {} -f {file}` \
         and add the new key",
        host_without_port(host),
        file = file.display()
    )]
    HostKeyChanged {
        host: String,
        /// `type SHA256:…` recorded in known_hosts.
        expected: String,
        /// `type SHA256:…` the host presented.
        got: String,
        file: PathBuf,
        line: usize,
    },

    #[error(
        "the host key of {host} ({fingerprint}) is marked @revoked at {file}:{line}: refusing to connect. The host \
         must get a new key",
        file = file.display()
    )]
    HostKeyRevoked { host: String, fingerprint: String, file: PathBuf, line: usize },

    #[error("cannot {action} known_hosts file {}: {cause}", path.display())]
    KnownHosts { action: &'static str, path: PathBuf, cause: String },

    #[error("{}:{line}: {message}", path.display())]
    SshConfigFile { path: PathBuf, line: usize, message: String },

    #[error(
        "authentication as {user}@{host} failed; tried: {}. Check that one of these keys is in \
         ~{user}/.ssh/authorized_keys on the host, or set ssh.keys / ssh.key_data / an agent (SSH_AUTH_SOCK)",
        if tried.is_empty() { "nothing (no key files, no key_data, no agent)".to_string() } else { tried.join("; ") }
    )]
    Auth { user: String, host: String, tried: Vec<String> },

    #[error("reaching {target} through jump host {jump}: {source}")]
    Jump { target: String, jump: String, source: Box<SshError> },

    #[error(
        "jump host {jump} could not open a connection to {target}: {cause} (is the target reachable from the \
         jump host, and does its sshd allow TCP forwarding: AllowTcpForwarding yes?)"
    )]
    JumpChannel { jump: String, target: String, cause: String },

    #[error("the connection to {host} dropped {during}: {cause}")]
    Disconnected { host: String, during: String, cause: String },

    #[error("{host} refused to open a {kind} channel: {cause}")]
    Channel { host: String, kind: &'static str, cause: String },

    #[error("SSH protocol error with {host}: {cause}")]
    Protocol { host: String, cause: String },

    #[error("saving the output of `{command}` on {host} failed: {source}")]
    StdoutWrite {
        host: String,
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("reading the input to stream to `{command}` on {host} failed: {source}")]
    StdinRead {
        host: String,
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("writing {path} on {host} failed (exit status {exit_status}): {stderr}")]
    WriteFile { host: String, path: String, exit_status: u32, stderr: String },

    #[error("invalid host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "the known_hosts files (none configured)".into();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// `[host]:port` -> `host` (for `ssh-keygen -R` / `ssh-keyscan`, which take the port separately or in brackets).
fn host_without_port(known_hosts_name: &str) -> &str {
    known_hosts_name
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
        .map(|(host, _)| host)
        .unwrap_or(known_hosts_name)
}

/// Whether connecting failed because the host name did not resolve.
pub(crate) fn is_lookup_failure(error: &std::io::Error) -> bool {
    error.to_string().contains("lookup address")
}

/// A hint for a failed TCP connect, from the I/O error kind.
pub(crate) fn connect_hint(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if is_lookup_failure(error) {
        return "The host name does not resolve: check it, and the DNS server this machine uses.".into();
    }
    match error.kind() {
        ErrorKind::ConnectionRefused => "Nothing listens on that port: is sshd running, and is ssh.port right?".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "The host cannot be reached from here: check its address and the route to it.".into()
        }
        ErrorKind::NotFound | ErrorKind::InvalidInput => "Check the host name (DNS) and ssh.port.".into(),
        _ => "Check the host's address, that sshd runs on it, and the network in between.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_message_says_how_to_add_it_with_the_port() {
        let error = SshError::HostKeyUnknown {
            host: "[10.0.0.1]:2222".into(),
            port: 2222,
            key_type: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            known_hosts: vec![PathBuf::from("/root/.ssh/known_hosts")],
        };
        let text = error.to_string();
        assert!(text.contains("ssh-keyscan -p 2222 10.0.0.1 >> /root/.ssh/known_hosts"), "{text}");
        assert!(text.contains("AcceptNew"), "{text}");
    }

    #[test]
    fn changed_key_message_names_file_line_and_both_fingerprints() {
        let error = SshError::HostKeyChanged {
            host: "web1".into(),
            expected: "ssh-ed25519 SHA256:old".into(),
            got: "SHA256:new".into(),
            file: PathBuf::from("/k"),
            line: 3,
        };
        let text = error.to_string();
        for part in ["/k:3", "SHA256:old", "SHA256:new", "man in the middle", "ssh-keygen -R web1 -f /k"] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
