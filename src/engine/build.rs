//! `build push`: the app image built on the deployer with the local `docker` (or on `builder.remote`, see
//! [`super::remote_build`]), from the committed tree
//! (`git archive HEAD` streamed into `docker build -`, so uncommitted files never leak into an image) or from
//! `builder.context`, then pushed to the registry.

use std::process::Stdio;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::flows::DeployOptions;
use super::output::Event;
use super::{Engine, EngineError};
use crate::commands::{self, names};

impl Engine {
    pub async fn build_push(&self, options: DeployOptions) -> Result<(), EngineError> {
        let config = &self.config;
        let builder = &config.builder;
        let local_arch = commands::builder::deployer_arch();
        self.run_hook("pre-build", &[]).await?;
        // Local registry mode: the image goes from the engine that built it (here, or the remote builder's) to
        // each host with `docker save`/`docker load` (see `image_transfer`), which carries one architecture.
        let arches = commands::builder::arches(config);
        if config.registry.is_local() && arches.len() > 1 {
            return Err(EngineError::Refused(format!(
                "local registry mode sends one image to the hosts, but builder.arch asks for {}: build the hosts' architecture only, or use a real registry",
                arches.join(", ")
            )));
        }
        // Every arch on an `ssh://` remote builder: berth drives it over its own SSH connection. A hybrid build
        // (some arches here, some there) needs one buildx builder with both nodes: Kamal's way, below.
        if let Some(address) = self.ssh_remote_builder() {
            return self.build_push_on_remote_builder(&address, options).await;
        }

        let started = Instant::now();
        let docker_ok = self.local("docker --version", None).await;
        if docker_ok.is_err() {
            return Err(EngineError::Refused(
                "`docker` is not available on this machine; install Docker to build, or build in CI and deploy with --skip-push".into(),
            ));
        }
        let has_buildx = self.local("docker buildx version", None).await.is_ok();
        let only_local_arch = builder.arch.iter().all(|arch| arch == local_arch);
        if !has_buildx {
            // The classic builder can still do a single-architecture build without BuildKit features.
            let needs_buildkit = !only_local_arch
                || !builder.secrets.is_empty()
                || commands::builder::cache_options(config).is_some()
                || builder.raw.contains_key("ssh");
            if needs_buildkit {
                let why = if only_local_arch {
                    "build secrets, cache export or ssh".to_string()
                } else {
                    format!("{} on an {local_arch} machine", builder.arch.join(", "))
                };
                return Err(EngineError::Refused(format!(
                    "this build needs `docker buildx` ({why}), which is not installed here: install the buildx plugin, or build in CI and deploy with --skip-push"
                )));
            }
        }
        if let Some(login) = self.registry_login_cmd().await? {
            self.local(login.script(), login.stdin()).await?;
        }
        if has_buildx
            && let Some(inspect) = commands::builder::inspect_builder(config, local_arch)
            && self.local(inspect.script(), None).await.is_err()
            && let Some(create) = commands::builder::create(config, local_arch)
        {
            self.local(create.script(), None).await?;
        }

        let image = names::image(config, &config.version);
        // Without `builder.context`, the committed tree of HEAD (Kamal builds from a clean clone).
        let git_tree = match builder.context {
            None => self.git_tree().await,
            Some(_) => None,
        };
        let no_cache = options.no_cache;
        let version = &config.version;
        let build = match (has_buildx, &git_tree) {
            (true, Some((repository, tree))) => {
                commands::builder::push_from_git_archive(config, version, local_arch, no_cache, repository, tree)
            }
            (true, None) => {
                commands::builder::push(config, version, local_arch, no_cache, commands::builder::context(config))
            }
            (false, Some((repository, tree))) => {
                commands::builder::classic_build_from_git_archive(config, version, no_cache, repository, tree)
            }
            (false, None) => {
                commands::builder::classic_build(config, version, no_cache, commands::builder::context(config))
            }
        };
        // The classic builder only builds: push unless the image stays here (local registry mode).
        let build = if has_buildx || config.registry.is_local() {
            build
        } else {
            build.and(commands::builder::push_tags(config, version))
        };
        self.sink().emit(Event::Command { host: None, text: build.to_string() });
        // `--secret id=NAME` reads NAME from the build's environment (Kamal exports `builder.secrets` there).
        let mut build_env = Vec::new();
        if !builder.secrets.is_empty() {
            let secrets = self.secrets().await?;
            for name in &builder.secrets {
                build_env.push((name.clone(), secrets.get(name)?.to_string()));
            }
        }
        self.local_with_env(build.script(), None, &build_env).await?;
        self.sink().emit(Event::Step {
            host: None,
            text: if config.registry.is_local() {
                format!("Built {image}")
            } else {
                format!("Built and pushed {image}")
            },
            elapsed: started.elapsed(),
            ok: true,
        });
        Ok(())
    }

    /// The git repository holding the project and the tree of HEAD for the project's directory
    /// (`HEAD`, or `HEAD:sub/dir`), or None outside git.
    pub(super) async fn git_tree(&self) -> Option<(String, String)> {
        let top = self.local("git rev-parse --show-toplevel", None).await.ok()?;
        let prefix = self.local("git rev-parse --show-prefix", None).await.unwrap_or_default();
        let prefix = prefix.trim().trim_end_matches('/');
        let tree = if prefix.is_empty() { "HEAD".to_string() } else { format!("HEAD:{prefix}") };
        Some((top.trim().to_string(), tree))
    }

    /// Runs a shell command on the deployer in the project root; its output lines go to the sink.
    pub(super) async fn local(&self, script: &str, stdin: Option<&[u8]>) -> Result<String, EngineError> {
        self.local_with_env(script, stdin, &[]).await
    }

    /// [`Engine::local`] with `extra_env` added to the command's environment.
    async fn local_with_env(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        extra_env: &[(String, String)],
    ) -> Result<String, EngineError> {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env_clear()
            .envs(self.env().vars())
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.config.root)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            command.spawn().map_err(|source| EngineError::Local { what: format!("running `{script}`"), source })?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(bytes).await;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| EngineError::Local { what: format!("running `{script}`"), source })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        for line in stdout.lines().chain(stderr.lines()) {
            self.sink().emit(Event::Line { host: None, stderr: false, text: line.to_string(), always: false });
        }
        if !output.status.success() {
            return Err(EngineError::CommandFailed {
                host: "localhost".into(),
                command: script.to_string(),
                status: output.status.code().unwrap_or(1) as u32,
                output: if stderr.trim().is_empty() { stdout } else { stderr },
            });
        }
        Ok(stdout)
    }
}
