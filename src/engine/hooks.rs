//! Kamal's hooks: executables in `hooks_path` (default `.kamal/hooks/<name>`) run on the deployer with the
//! `KAMAL_*` variables; a non-zero exit aborts the command (Kamal's `HookError`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::output::{Event, Sink};
use crate::environment::Environment;

/// The nine hooks Kamal runs.
pub const HOOK_NAMES: [&str; 9] = [
    "pre-connect",
    "docker-setup",
    "pre-build",
    "pre-deploy",
    "pre-app-boot",
    "post-app-boot",
    "post-deploy",
    "pre-proxy-reboot",
    "post-proxy-reboot",
];

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("Hook `{name}` failed: {path} exited with {status}{output}")]
    Failed { name: String, path: String, status: String, output: String },
    #[error(
        "Hook `{name}` could not be started ({path}): {source}. Check that it is executable (chmod +x) and its #! line"
    )]
    Start { name: String, path: String, source: std::io::Error },
}

/// Runs hooks of one project.
pub struct Hooks {
    dir: PathBuf,
    env: Environment,
    skip: bool,
}

impl Hooks {
    /// `hooks_path` relative to the project root; `skip` is `-H/--skip-hooks`.
    pub fn new(root: &Path, hooks_path: &str, env: Environment, skip: bool) -> Hooks {
        Hooks { dir: root.join(hooks_path), env, skip }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the hook would run (it exists and hooks are not skipped).
    pub fn exists(&self, name: &str) -> bool {
        !self.skip && self.path(name).is_file()
    }

    /// Runs hook `name` if it exists, with `vars` added to the environment. Its output goes to the sink, shown
    /// unless quiet. Returns whether it ran.
    pub async fn run(&self, name: &str, vars: &BTreeMap<String, String>, sink: &dyn Sink) -> Result<bool, HookError> {
        if !self.exists(name) {
            return Ok(false);
        }
        let path = self.path(name);
        let display = path.display().to_string();
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .envs(self.env.vars())
            .envs(vars)
            .current_dir(self.env.cwd())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A hook abandoned on Ctrl-C must not run on after berth gave up on it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HookError::Start { name: name.into(), path: display.clone(), source })?;

        let (out_lines, err_lines) = tokio::join!(
            forward_lines(child.stdout.take(), false, sink),
            forward_lines(child.stderr.take(), true, sink)
        );
        let mut collected = out_lines;
        collected.extend(err_lines);
        let status = child.wait().await.map_err(|source| HookError::Start {
            name: name.into(),
            path: display.clone(),
            source,
        })?;
        let ok = status.success();
        sink.emit(Event::Step { host: None, text: format!("Ran {name} hook"), elapsed: started.elapsed(), ok });
        if !ok {
            let tail: Vec<&String> = collected.iter().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
            let output = if tail.is_empty() {
                String::new()
            } else {
                format!("\n{}", tail.iter().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n"))
            };
            return Err(HookError::Failed { name: name.into(), path: display, status: status.to_string(), output });
        }
        Ok(true)
    }
}

/// Sends each line of a hook's output to the sink as it comes, and keeps them for the error message.
async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, stderr: bool, sink: &dyn Sink) -> Vec<String> {
    let mut seen = Vec::new();
    if let Some(pipe) = pipe {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.emit(Event::Line { host: None, stderr, text: line.clone(), always: true });
            seen.push(line);
        }
    }
    seen
}
