//! The process environment as a value, so that loading configuration is testable without touching the real one.
//!
//! Loading reads environment variables (ERB's `ENV`, `${VAR}` in secrets files) and runs local commands
//! (ERB backticks, `$(...)` in secrets files). Both go through an [`Environment`], which tests build from a map.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables plus the directory that relative paths and local commands start from.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    cwd: PathBuf,
}

impl Environment {
    /// The environment of this process and its current directory.
    pub fn from_process() -> Environment {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Environment { vars: std::env::vars().collect(), cwd }
    }

    /// An environment holding exactly `vars`, rooted at `cwd`.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>, cwd: impl Into<PathBuf>) -> Environment
    where
        K: Into<String>,
        V: Into<String>,
    {
        Environment { vars: vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect(), cwd: cwd.into() }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) {
        self.vars.remove(key);
    }

    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// A copy of this environment whose relative paths and commands start from `cwd`.
    pub fn with_cwd(&self, cwd: impl Into<PathBuf>) -> Environment {
        Environment { vars: self.vars.clone(), cwd: cwd.into() }
    }

    /// A `/bin/sh -c SCRIPT` command that sees exactly this environment and starts in its directory.
    ///
    /// This is how local commands named by the user's own files (ERB backticks, `$(...)` in secrets files)
    /// run: they are shell text the user wrote, so they go to a shell, with nothing inherited from berth.
    pub fn shell(&self, script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script).env_clear().envs(&self.vars).current_dir(&self.cwd);
        command
    }

    /// `program` looked up on this environment's `PATH`, if it is there and executable.
    pub fn find_program(&self, program: &str) -> Option<PathBuf> {
        let path = self.get("PATH")?;
        std::env::split_paths(path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
