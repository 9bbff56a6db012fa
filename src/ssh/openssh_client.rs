//! The OpenSSH client's command line for a terminal session (`app exec -i`, `server exec -i`, as Kamal hands
//! those to `ssh -t`): the same address, user, keys, jump host and known_hosts files as berth's own connections,
//! and the same host key policy, so handing over to `ssh` never trusts a host berth would refuse.

use std::path::PathBuf;

use super::error::SshError;
use super::{HostKeyPolicy, SshConfig, route};

/// `ssh`'s arguments to run `script` on `host` in a terminal. `extra_keys` are key files beyond
/// `config.keys` (e.g. `ssh.key_data` written to private temporary files by the caller).
pub fn terminal_session_args(
    config: &SshConfig,
    host: &str,
    extra_keys: &[PathBuf],
    script: &str,
) -> Result<Vec<String>, SshError> {
    let (hostname, port) = route::parse_host(host)?;
    let mut args: Vec<String> = vec!["-t".into(), "-p".into(), port.unwrap_or(config.port).to_string()];
    let mut option = |text: String| {
        args.push("-o".into());
        args.push(text);
    };
    let known_hosts: Vec<String> = config.known_hosts_files.iter().map(|path| path.display().to_string()).collect();
    option(format!("UserKnownHostsFile={}", known_hosts.join(" ")));
    option(format!(
        "StrictHostKeyChecking={}",
        match config.host_key_policy {
            HostKeyPolicy::Strict => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
        }
    ));
    if config.keys_only {
        option("IdentitiesOnly=yes".into());
    }
    if !config.use_agent {
        option("IdentityAgent=none".into());
    }
    if config.forward_agent {
        option("ForwardAgent=yes".into());
    }
    // berth reads only the configuration files `ssh.config` names; so does this session (`ssh` takes one -F).
    args.push("-F".into());
    args.push(config.ssh_config_files.first().map_or_else(|| "/dev/null".into(), |path| path.display().to_string()));
    for key in config.keys.iter().chain(extra_keys) {
        args.push("-i".into());
        args.push(key.display().to_string());
    }
    if let Some(proxy) = &config.proxy {
        args.push("-J".into());
        args.push(proxy.to_string());
    } else if let Some(command) = &config.proxy_command {
        // OpenSSH expands the same %h/%p/%r tokens itself.
        args.push("-o".into());
        args.push(format!("ProxyCommand={command}"));
    }
    args.push(format!("{}@{hostname}", config.user));
    args.push(script.to_string());
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::JumpHost;

    #[test]
    fn a_session_uses_berths_address_keys_and_host_key_policy() {
        let mut config = SshConfig {
            user: "deploy".into(),
            port: 2222,
            keys: vec![PathBuf::from("/home/a/.ssh/id_ed25519")],
            known_hosts_files: vec![PathBuf::from("/k/one"), PathBuf::from("/k/two")],
            use_agent: true,
            ..SshConfig::default()
        };
        let args =
            terminal_session_args(&config, "10.0.0.5:2200", &[PathBuf::from("/tmp/key-data-0")], "docker ps").unwrap();
        assert_eq!(
            args.join(" "),
            "-t -p 2200 -o UserKnownHostsFile=/k/one /k/two -o StrictHostKeyChecking=yes -F /dev/null \
             -i /home/a/.ssh/id_ed25519 -i /tmp/key-data-0 deploy@10.0.0.5 docker ps"
        );
        config.host_key_policy = HostKeyPolicy::AcceptNew;
        config.keys_only = true;
        config.use_agent = false;
        config.proxy = Some(JumpHost::parse("jump@bastion:22").unwrap());
        config.ssh_config_files = vec![PathBuf::from("/p/ssh_config")];
        config.proxy_command = Some("ignored: the jump host wins".into());
        let args = terminal_session_args(&config, "[2001:db8::1]", &[], "sh").unwrap();
        assert_eq!(
            args.join(" "),
            "-t -p 2222 -o UserKnownHostsFile=/k/one /k/two -o StrictHostKeyChecking=accept-new -o IdentitiesOnly=yes \
             -o IdentityAgent=none -F /p/ssh_config -i /home/a/.ssh/id_ed25519 -J jump@bastion:22 deploy@2001:db8::1 sh"
        );
        config.proxy = None;
        config.forward_agent = true;
        config.proxy_command = Some("cloudflared access ssh --hostname %h".into());
        let args = terminal_session_args(&config, "app1", &[], "sh").unwrap();
        assert!(args.windows(2).any(|w| w == ["-o", "ProxyCommand=cloudflared access ssh --hostname %h"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["-o", "ForwardAgent=yes"]), "{args:?}");
    }
}
