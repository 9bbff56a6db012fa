//! `build push` on `builder.remote` (`ssh://[user@]host[:port]`): berth opens its own SSH connection to the
//! builder (host key verified like every host's), streams the build context — the committed tree from
//! `git archive`, or `builder.context` as a tar — into the builder's `docker build -`, and the builder pushes.
//! The deployer needs neither a Docker engine nor buildx nor a docker context, and the registry password and
//! build secrets travel on the channel, never in argv.

use std::process::Stdio;
use std::time::Instant;

use super::flows::DeployOptions;
use super::remote::Remote;
use super::{Engine, EngineError};
use crate::command::Cmd;
use crate::commands::builder::{self, RemoteBuild, SshBuilderAddress};
use crate::commands::names;
use crate::ssh::SshPool;

impl Engine {
    /// Builds and pushes the app image on the remote builder at `address`.
    pub(super) async fn build_push_on_remote_builder(
        &self,
        address: &SshBuilderAddress,
        options: DeployOptions,
    ) -> Result<(), EngineError> {
        let builder_remote = self.builder_connection(address);
        let result = self.build_on(&builder_remote, &address.host, options).await;
        builder_remote.ssh().close().await;
        result.map_err(|error| self.explain_builder_error(error))
    }

    /// The remote builder in use: every arch on an `ssh://` `builder.remote`.
    pub(super) fn ssh_remote_builder(&self) -> Option<SshBuilderAddress> {
        (builder::kind(&self.config, builder::deployer_arch()) == builder::BuilderKind::Remote)
            .then(|| self.config.builder.remote.as_deref().and_then(builder::ssh_builder_address))
            .flatten()
    }

    /// A connection to the remote builder: reached directly (not through `ssh.proxy`, which leads to the app
    /// hosts), as `docker -H ssh://…` would, with the URL's user.
    pub(super) fn builder_connection(&self, address: &SshBuilderAddress) -> Remote {
        let mut ssh_config = self.remote().ssh().config().clone();
        if let Some(user) = &address.user {
            ssh_config.user = user.clone();
        }
        ssh_config.proxy = None;
        Remote::new(SshPool::new(ssh_config), self.sink.clone())
    }

    /// Says which machine an SSH failure was on: the builder is not one of the hosts the output names.
    pub(super) fn explain_builder_error(&self, error: EngineError) -> EngineError {
        match error {
            EngineError::Ssh(ssh) => {
                let remote = self.config.builder.remote.as_deref().unwrap_or_default();
                EngineError::Refused(format!("the remote builder ({remote}) could not be used: {ssh}"))
            }
            other => other,
        }
    }

    async fn build_on(&self, remote: &Remote, host: &str, options: DeployOptions) -> Result<(), EngineError> {
        let config = &self.config;
        let started = Instant::now();
        let probe = remote.step(host, "Checked the remote builder", &builder::remote_builder_probe()).await?;
        let mut probe_lines = probe.stdout.lines().map(str::trim);
        let builder_arch = probe_lines.next().unwrap_or_default().to_string();
        let has_buildx = probe_lines.next() == Some("buildx");

        let wanted = builder::arches(config);
        let only_builder_arch = wanted.iter().all(|arch| *arch == builder_arch);
        let needs_buildx = !only_builder_arch
            || !config.builder.secrets.is_empty()
            || builder::cache_options(config).is_some()
            || config.builder.raw.contains_key("ssh");
        if needs_buildx && !has_buildx {
            let why = if only_builder_arch {
                "build secrets, cache export or ssh".to_string()
            } else {
                format!("{} on an {builder_arch} builder", wanted.join(", "))
            };
            return Err(EngineError::Refused(format!(
                "this build needs `docker buildx` on the remote builder {host} ({why}), which is not installed there: install the docker-buildx plugin on it, or set builder.arch to {builder_arch}"
            )));
        }

        if let Some(login) = self.registry_login_cmd().await? {
            remote.step(host, "Logged in to the registry", &login).await?;
        }

        let secrets_dir =
            if config.builder.secrets.is_empty() { None } else { Some(self.upload_build_secrets(remote, host).await?) };
        let how = if has_buildx && needs_buildx {
            let multiarch = !only_builder_arch;
            if multiarch {
                remote.run(host, &builder::remote_multiarch_builder()).await?;
            }
            RemoteBuild::Buildx {
                platforms: multiarch.then(|| builder::platforms(&wanted)).flatten(),
                builder: multiarch.then(|| builder::REMOTE_MULTIARCH_BUILDER.to_string()),
                secrets_dir: secrets_dir.clone(),
            }
        } else {
            RemoteBuild::Classic
        };
        let build = builder::remote_build_push(config, &config.version, options.no_cache, &how);
        let result = self.stream_context_into(remote, host, &build).await;
        if let Some(dir) = &secrets_dir {
            // Removed whether or not the build worked: the values must not stay on the builder.
            let _ = remote.run(host, &Cmd::new("rm").arg("-rf").arg(dir)).await;
        }
        result?;
        let image = names::image(config, &config.version);
        let done = if config.registry.is_local() { "Built" } else { "Built and pushed" };
        remote.report(host, &format!("{done} {image} on the remote builder"), started, true);
        Ok(())
    }

    /// Writes each `builder.secrets` value to its own private file in a new private directory on the builder,
    /// for `--secret id=NAME,src=DIR/NAME`; returns the directory.
    async fn upload_build_secrets(&self, remote: &Remote, host: &str) -> Result<String, EngineError> {
        let secrets = self.secrets().await?;
        let dir = format!("/tmp/berth-build-secrets-{}", super::app::random_hex(8));
        remote.run(host, &Cmd::new("mkdir").args(["-m", "700"]).arg(&dir)).await?;
        for name in &self.config.builder.secrets {
            remote.write_file(host, &format!("{dir}/{name}"), secrets.get(name)?.as_bytes(), 0o600).await?;
        }
        Ok(dir)
    }

    /// Runs `build` on the builder with the build context on its stdin: `git archive` of the committed tree,
    /// or a tar of `builder.context` when that is set (Kamal builds the working tree then).
    async fn stream_context_into(&self, remote: &Remote, host: &str, build: &Cmd) -> Result<(), EngineError> {
        let config = &self.config;
        let mut source = match (&config.builder.context, self.git_tree().await) {
            (None, Some((repository, tree))) => {
                let mut command = tokio::process::Command::new("git");
                command.arg("-C").arg(repository).args(["archive", "--format=tar"]).arg(tree);
                command
            }
            (context, _) => {
                let mut command = tokio::process::Command::new("tar");
                command.arg("-C").arg(config.root.join(context.as_deref().unwrap_or("."))).args(["-cf", "-", "."]);
                command
            }
        };
        source
            .current_dir(&config.root)
            .env_clear()
            .envs(self.env().vars())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("{source:?}").replace('"', "");
        let mut child =
            source.spawn().map_err(|source| EngineError::Local { what: format!("running {what}"), source })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let built = remote.run_with_stdin_stream(host, build, stdout).await;
        let archived = child
            .wait_with_output()
            .await
            .map_err(|source| EngineError::Local { what: format!("running {what}"), source })?;
        // A context that could not be read explains a failed build better than the builder's complaint about it.
        if !archived.status.success() {
            return Err(EngineError::CommandFailed {
                host: "localhost".into(),
                command: what,
                status: archived.status.code().unwrap_or(1) as u32,
                output: String::from_utf8_lossy(&archived.stderr).trim().to_string(),
            });
        }
        built.map(|_| ())
    }
}
