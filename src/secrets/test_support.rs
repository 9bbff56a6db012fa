//! Test helpers: throwaway directories, and fake vendor CLIs that check their arguments and print canned output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::environment::Environment;

/// A directory under the system's temporary directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("berth-secrets-{label}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell script standing in for a vendor CLI: for each exact argument list it knows, it prints the canned
/// output(s) and exits with the given status; anything else fails loudly with status 97.
pub(crate) struct FakeCli {
    program: String,
    key: String,
    cases: Vec<(String, Vec<(String, i32)>)>,
}

impl FakeCli {
    /// A fake `program` that answers the installed-check (`--version`, or `version` for enpass-cli).
    pub(crate) fn new(program: &str) -> FakeCli {
        let version = if program == "enpass-cli" { "version" } else { "--version" };
        FakeCli { program: program.to_string(), key: "$*".to_string(), cases: Vec::new() }.on(version, "1.0.0")
    }

    /// Match on this shell expression instead of the arguments alone, e.g. to see an environment variable.
    pub(crate) fn keyed_by(mut self, expression: &str) -> FakeCli {
        self.key = expression.to_string();
        self
    }

    pub(crate) fn on(self, args: &str, stdout: &str) -> FakeCli {
        self.on_status(args, stdout, 0)
    }

    pub(crate) fn on_status(mut self, args: &str, stdout: &str, status: i32) -> FakeCli {
        self.cases.push((args.to_string(), vec![(stdout.to_string(), status)]));
        self
    }

    /// Successive calls with `args` print each output in turn, then the last one again.
    pub(crate) fn on_each(mut self, args: &str, outputs: &[&str]) -> FakeCli {
        self.cases.push((args.to_string(), outputs.iter().map(|out| (out.to_string(), 0)).collect()));
        self
    }

    /// Writes the script into `dir` (only shell builtins are used, so `dir` can be the whole PATH).
    pub(crate) fn install(self, dir: &Path) {
        let quote = |text: &str| format!("'{}'", text.replace('\'', "'\\''"));
        let counter = dir.join(format!(".{}-calls", self.program));
        let mut script = format!("#!/bin/sh\nkey=\"{}\"\ncase \"$key\" in\n", self.key);
        for (index, (args, replies)) in self.cases.iter().enumerate() {
            let state = quote(&format!("{}-{index}", counter.display()));
            script
                .push_str(&format!("  {})\n    n=0\n    if [ -f {state} ]; then read n < {state}; fi\n", quote(args)));
            script.push_str(&format!("    echo $((n + 1)) > {state}\n    case $n in\n"));
            for (call, (stdout, status)) in replies.iter().enumerate() {
                let pattern = if call + 1 == replies.len() { "*".to_string() } else { call.to_string() };
                script.push_str(&format!("      {pattern}) printf '%s\\n' {}; exit {status} ;;\n", quote(stdout)));
            }
            script.push_str("    esac ;;\n");
        }
        script.push_str(&format!(
            "  *) echo \"fake {}: unexpected arguments: $key\" >&2; exit 97 ;;\nesac\n",
            self.program
        ));
        let path = dir.join(&self.program);
        std::fs::write(&path, script).expect("write a fake CLI");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make a fake CLI executable");
    }
}

/// An environment whose PATH is only `dir` (where fake CLIs live), plus `vars`.
pub(crate) fn env_in(dir: &Path, vars: &[(&str, &str)]) -> Environment {
    let mut env = Environment::from_vars(vars.iter().copied(), dir);
    env.set("PATH", dir.display().to_string());
    env
}

/// Runs `adapter`'s fetch with `fake` as its only vendor CLI, as `berth secrets fetch` would.
pub(crate) fn fetch_with_fake(
    adapter: crate::secrets::adapters::Adapter,
    fake: FakeCli,
    secrets: &[&str],
    account: Option<&str>,
    from: Option<&str>,
) -> Result<crate::secrets::adapters::Results, crate::secrets::SecretsError> {
    let dir = TempDir::new(&fake.program);
    fake.install(dir.path());
    let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    crate::secrets::adapters::fetch(adapter, &secrets, account, from, &env_in(dir.path(), &[]))
}
