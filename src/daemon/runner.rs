//! Running one deploy in the daemon with the engine the command line uses: the service's repository
//! mirrored under `data_dir/git`, the commit to deploy checked out under `data_dir/work/deploy-ID`, its
//! Kamal configuration loaded from there with the service's own secrets directory, then `deploy` (build and
//! push at that commit, or only pull a given version) or `rollback`, over SSH, reporting to the deploy's sink.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use indexmap::IndexMap;

use super::config::ServiceConfig;
use super::logs::DeploySink;
use super::queue::{Job, Outcome, Runner};
use crate::config::{Config, LoadOptions};
use crate::engine::flows::DeployOptions;
use crate::engine::{Engine, EngineError, RunOptions};
use crate::environment::Environment;

/// Deploys with the engine, over SSH.
pub struct EngineRunner {
    services: Arc<IndexMap<String, ServiceConfig>>,
    data_dir: PathBuf,
    env: Environment,
}

impl EngineRunner {
    pub fn new(services: Arc<IndexMap<String, ServiceConfig>>, data_dir: PathBuf, env: Environment) -> EngineRunner {
        EngineRunner { services, data_dir, env }
    }

    async fn deploy(&self, job: &Job) -> Result<(), String> {
        let deploy = &job.deploy;
        let sink = &job.sink;
        let service = self
            .services
            .get(&deploy.service)
            .ok_or_else(|| format!("service {} is no longer in the daemon's configuration", deploy.service))?;
        // The code: the ref asked for, else the branch's head (a given version still reads its configuration
        // from the branch's head).
        let reference = deploy.git_ref.clone().unwrap_or_else(|| service.branch.clone());
        sink.line(format!("Fetching {} ({reference})", service.repo));
        let checkout = self.data_dir.join("work").join(format!("deploy-{}", deploy.id));
        let commit = check_out_reference(&self.data_dir, service, &reference, &checkout).await?;
        let result = self.deploy_checkout(job, service, &commit, &checkout).await;
        // The checkout is only needed while the deploy runs.
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        result
    }

    async fn deploy_checkout(
        &self,
        job: &Job,
        service: &ServiceConfig,
        commit: &str,
        checkout: &Path,
    ) -> Result<(), String> {
        let deploy = &job.deploy;
        let sink = &job.sink;
        let prebuilt = deploy.version.is_some();
        let version = deploy.version.clone().unwrap_or_else(|| commit.to_string());
        sink.resolved(&version, Some(commit));
        sink.line(format!("Deploying {} version {version} from commit {commit}", service.name));
        let sink_dyn: Arc<dyn crate::engine::output::Sink> = Arc::clone(sink) as Arc<DeploySink>;
        let place = Place { data_dir: &self.data_dir, env: &self.env, service, checkout, commit };
        let engine = engine_at(&place, deploy.destination.clone(), &version, sink_dyn, job.redactor.clone(), "deploy")?
            .with_cancel(job.cancel.clone());
        let result = if deploy.kind == "rollback" {
            engine.rollback(&version).await
        } else {
            engine.deploy(DeployOptions { skip_push: prebuilt, no_cache: false }).await
        };
        engine.close().await;
        result.map_err(|error| match error {
            EngineError::Cancelled => CANCELLED.to_string(),
            other => other.to_string(),
        })
    }
}

const CANCELLED: &str = "cancelled";

/// Where an engine for a service runs: the daemon's directories, and a checkout of the service at a commit.
pub(super) struct Place<'a> {
    pub data_dir: &'a Path,
    pub env: &'a Environment,
    pub service: &'a ServiceConfig,
    pub checkout: &'a Path,
    pub commit: &'a str,
}

/// The engine for `place`: the checkout's Kamal configuration (for `destination`, at `version`), the
/// service's secrets from the daemon's directory (never the repository's), host keys as the daemon user's.
pub(super) fn engine_at(
    place: &Place<'_>,
    destination: Option<String>,
    version: &str,
    sink: Arc<dyn crate::engine::output::Sink>,
    redactor: crate::engine::output::Redactor,
    command: &str,
) -> Result<Engine, String> {
    let (service, commit) = (place.service, place.commit);
    let env = place.env.with_cwd(place.checkout);
    let options = LoadOptions {
        config_file: place.checkout.join(&service.config),
        destination,
        version: Some(version.to_string()),
    };
    let mut config = Config::load(&options, &env).map_err(|error| format!("the configuration at {commit}: {error}"))?;
    if config.service != service.name {
        return Err(format!(
            "{} at {commit} is for service `{}`, but the daemon knows it as `{}`: rename the service in berth.yml",
            service.config, config.service, service.name
        ));
    }
    config.secrets_path = match &service.secrets {
        Some(dir) => dir.join("secrets").to_string_lossy().into_owned(),
        None => place.data_dir.join("no-secrets").join("secrets").to_string_lossy().into_owned(),
    };
    let run_options = RunOptions { command: command.to_string(), ..RunOptions::default() };
    Engine::new(config, env, sink, redactor, run_options).map_err(|error| error.to_string())
}

/// Brings the service's mirror up to date and checks `reference` out into `dir`; returns the commit.
pub(super) async fn check_out_reference(
    data_dir: &Path,
    service: &ServiceConfig,
    reference: &str,
    dir: &Path,
) -> Result<String, String> {
    let mirror = data_dir.join("git").join(format!("{}.git", service.name));
    {
        // One fetch at a time: git locks a mirror's refs, and a second fetch of it at once would fail.
        static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _fetching = FETCHING.lock().await;
        fetch_mirror(&service.repo, &mirror).await?;
    }
    let commit = resolve(&mirror, reference).await?;
    check_out(&mirror, &commit, dir).await?;
    Ok(commit)
}

impl Runner for EngineRunner {
    fn run(&self, job: Job) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let result = self.deploy(&job).await;
            match result {
                Ok(()) => Outcome::Succeeded,
                Err(_) if job.cancel.is_cancelled() => Outcome::Cancelled,
                Err(error) if error == CANCELLED => Outcome::Cancelled,
                Err(error) => Outcome::Failed(error),
            }
        })
    }
}

/// Clones the repository as a bare mirror, or fetches what changed.
async fn fetch_mirror(repo: &str, mirror: &Path) -> Result<(), String> {
    if mirror.join("HEAD").exists() {
        git(None, &["--git-dir", &path(mirror), "fetch", "--prune", "--quiet", "origin"]).await?;
    } else {
        if let Some(parent) = mirror.parent() {
            std::fs::create_dir_all(parent).map_err(|error| format!("creating {}: {error}", parent.display()))?;
        }
        git(None, &["clone", "--mirror", "--quiet", repo, &path(mirror)]).await?;
    }
    Ok(())
}

/// The commit a branch, tag or commit names in the mirror.
async fn resolve(mirror: &Path, reference: &str) -> Result<String, String> {
    if reference.starts_with('-') {
        return Err(format!("`{reference}` is not a branch, tag or commit"));
    }
    let spec = format!("{reference}^{{commit}}");
    git(None, &["--git-dir", &path(mirror), "rev-parse", "--verify", "--quiet", &spec])
        .await
        .map(|out| out.trim().to_string())
        .map_err(|_| format!("`{reference}` is not a branch, tag or commit of the repository"))
}

/// A working tree of `commit` (a git repository, so the build can archive the committed tree).
async fn check_out(mirror: &Path, commit: &str, dir: &Path) -> Result<(), String> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("creating {}: {error}", parent.display()))?;
    }
    git(None, &["clone", "--quiet", "--shared", "--no-checkout", &path(mirror), &path(dir)]).await?;
    git(Some(dir), &["checkout", "--quiet", "--detach", commit]).await?;
    Ok(())
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Runs git with arguments (no shell); its stdout, or its stderr as the error.
async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // Never wait for a password or a host-key question: the daemon has no terminal.
    command.env("GIT_TERMINAL_PROMPT", "0");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().await.map_err(|error| format!("running git: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("git {} failed: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&output.stderr).trim()))
    }
}
