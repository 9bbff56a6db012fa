//! `build push`: the app image built on the deployer with the local `docker`, from the committed tree
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
        if builder.remote.is_some() && !builder.local {
            return Err(EngineError::Refused(format!(
                "builder.remote ({}) is not supported by berth yet: build and push the image in CI, then deploy with --skip-push",
                builder.remote.as_deref().unwrap_or_default()
            )));
        }
        let local_arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        self.run_hook("pre-build", &[]).await?;

        let started = Instant::now();
        let docker_ok = self.local("docker --version", None).await;
        if docker_ok.is_err() {
            return Err(EngineError::Refused(
                "`docker` is not available on this machine; install Docker to build, or build in CI and deploy with --skip-push".into(),
            ));
        }
        if self.local("docker buildx version", None).await.is_err() {
            return Err(EngineError::Refused(format!(
                "building needs `docker buildx` (berth builds and pushes in one step, for {}), which is not installed here: install the buildx plugin, or build in CI and deploy with --skip-push",
                builder.arch.join(", ")
            )));
        }
        if let Some(login) = self.registry_login_cmd().await? {
            self.local(login.script(), login.stdin()).await?;
        }

        let image = names::image(config, &config.version);
        let context_from_git = builder.context.is_none() && config.root.join(".git").exists();
        let build = if context_from_git {
            let root = config.root.display().to_string();
            commands::builder::push_from_git_archive(
                config,
                &config.version,
                local_arch,
                options.no_cache,
                &root,
                "HEAD",
            )
        } else {
            commands::builder::push(
                config,
                &config.version,
                local_arch,
                options.no_cache,
                commands::builder::context(config),
            )
        };
        self.sink().emit(Event::Command { host: None, text: build.to_string() });
        self.local(build.script(), None).await?;
        self.sink().emit(Event::Step {
            host: None,
            text: format!("Built and pushed {image}"),
            elapsed: started.elapsed(),
            ok: true,
        });
        Ok(())
    }

    /// Runs a shell command on the deployer in the project root; its output lines go to the sink.
    async fn local(&self, script: &str, stdin: Option<&[u8]>) -> Result<String, EngineError> {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env_clear()
            .envs(self.env().vars())
            .current_dir(&self.config.root)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
