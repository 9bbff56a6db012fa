//! Running the real `berth` binary in a directory of its own, with exactly the environment a test gives it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary project directory and the environment `berth` runs with in it.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
}

impl Project {
    /// An empty project whose environment has only a basic PATH.
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("create a temporary project directory");
        let env = BTreeMap::from([("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string())]);
        Project { dir, env }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative` inside the project, creating directories.
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Runs `berth ARGS` in the project directory and returns what it printed.
    pub fn berth(&self, args: &[&str]) -> BerthOutput {
        let output = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(self.path())
            .env_clear()
            .envs(&self.env)
            .output()
            .expect("run the berth binary");
        BerthOutput::from(output)
    }
}

/// What one run of `berth` printed, as text.
#[derive(Debug)]
pub struct BerthOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for BerthOutput {
    fn from(output: Output) -> BerthOutput {
        BerthOutput {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl BerthOutput {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success, "berth failed ({:?}):\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(!self.success, "berth succeeded but should have failed:\nstdout:\n{}", self.stdout);
        &self.stderr
    }
}
