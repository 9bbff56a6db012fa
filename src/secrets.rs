//! Secrets: `.kamal/secrets*` files in dotenv syntax, and the vault adapters behind `berth secrets`.
//!
//! A deploy reads `<secrets_path>-common`, then `<secrets_path>` (no destination) or `<secrets_path>.<destination>`,
//! each parsed on its own as Kamal does (`Dotenv.parse(file, overwrite: true)`), later files winning. Values may
//! interpolate variables and run commands; `$(kamal secrets fetch …)` and `$(kamal secrets extract …)` (or `berth
//! secrets …`) run in-process through the vault [`adapters`], exactly like Kamal's inline substitution.
//!
//! Secret values leave this module only through [`Secrets::get`] and [`Secrets::iter`] (for env files and hooks)
//! and `berth secrets print`; `Debug` shows names only and [`Secrets::redact`] scrubs values out of log text.

mod adapters;
pub mod cli;
#[cfg(test)]
mod corpus_tests;
mod dotenv;
mod ruby;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use indexmap::IndexMap;

use crate::environment::Environment;

/// Where Kamal looks for secrets files when the configuration names no `secrets_path`.
pub const DEFAULT_SECRETS_PATH: &str = ".kamal/secrets";

/// Shorter values are left in log text: redacting every `1` or `no` would shred the output for nothing.
const MIN_REDACTED_CHARS: usize = 3;

const REDACTED: &str = "[REDACTED]";

/// The secrets of one destination: every key of its secrets files, with the value it resolved to.
pub struct Secrets {
    values: IndexMap<String, String>,
    root: PathBuf,
    /// The files that existed and were read, named as the user wrote them (relative to the project root).
    files: Vec<String>,
    /// Every file that was looked for, read or not.
    searched: Vec<String>,
}

/// Why secrets could not be loaded, fetched or found. Messages name the file and line where there is one, and say
/// what to do; none of them contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read {file}: {source}: check that the file is readable")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{file}:{line}: `export {key}` exports a key that has no value: assign it first (`{key}=...`) \
         or remove the line"
    )]
    UnsetExport { file: String, line: usize, key: String },
    #[error("{file}:{line}: {source}")]
    InFile {
        file: String,
        line: usize,
        #[source]
        source: Box<SecretsError>,
    },
    #[error("secret '{name}' not found in {files}: add `{name}=...` to one of them (or `{name}=$(berth secrets ...)`)")]
    Missing { name: String, files: String },
    #[error(
        "secret '{name}' not found, no secrets file exists ({files}): create one with `{name}=...` \
         (or `{name}=$(berth secrets ...)`)"
    )]
    NoSecretsFiles { name: String, files: String },
    #[error("unknown secrets adapter '{name}'{suggestion}: use one of {known}")]
    UnknownAdapter { name: String, suggestion: String, known: String },
    #[error("the {adapter} adapter needs `--account`: {hint}")]
    MissingAccount { adapter: &'static str, hint: &'static str },
    #[error("the {adapter} adapter needs `--from`: {hint}")]
    MissingFrom { adapter: &'static str, hint: &'static str },
    #[error(
        "{adapter} adapter: {cli} (`{program}`) is not installed or not on PATH: install it ({install}), or fix PATH"
    )]
    NotInstalled { adapter: &'static str, cli: &'static str, program: &'static str, install: &'static str },
    #[error("{adapter} adapter: {message}")]
    Vendor { adapter: &'static str, message: String },
    #[error("{adapter} adapter: `{command}` {problem}: {fix}")]
    VendorOutput { adapter: &'static str, command: String, problem: String, fix: &'static str },
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "Could not find secret {name} in the JSON given to `secrets extract`: use a key (or a key's last `/` \
         segment) that `secrets fetch` returned"
    )]
    ExtractNotFound { name: String },
    #[error(
        "`secrets extract` needs the JSON object that `secrets fetch` prints ({reason}): pass it unquoted, \
         as `$SECRETS`"
    )]
    ExtractInput { reason: String },
    #[error("`{command}`: {reason}: {fix}")]
    Usage { command: String, reason: String, fix: String },
    #[error(
        "`secrets print` cannot run inside a secrets file (it would read the file that runs it): use \
         `secrets fetch` and `secrets extract` there"
    )]
    PrintInsideSecretsFile,
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

impl Secrets {
    /// Reads the secrets files of `destination` under `root` (the directory holding `config/`), running the commands
    /// they contain. Missing files are fine: they hold no secrets.
    ///
    /// Commands run in `root`, with `env`'s variables and `KAMAL_DESTINATION` set to the destination (unset without
    /// one), as Kamal sets it before it reads secrets.
    pub fn load(
        root: &Path,
        secrets_path: &str,
        destination: Option<&str>,
        env: &Environment,
    ) -> Result<Secrets, SecretsError> {
        Self::load_with(root, secrets_path, destination, env, false)
    }

    fn load_with(
        root: &Path,
        secrets_path: &str,
        destination: Option<&str>,
        env: &Environment,
        quiet_stderr: bool,
    ) -> Result<Secrets, SecretsError> {
        let mut env = env.with_cwd(root);
        match destination {
            Some(destination) => env.set("KAMAL_DESTINATION", destination),
            None => env.remove("KAMAL_DESTINATION"),
        }
        let searched = secrets_filenames(secrets_path, destination);
        let mut values = IndexMap::new();
        let mut files = Vec::new();
        for file in &searched {
            let Some(text) = read_secrets_file(&root.join(file), file)? else { continue };
            let context = dotenv::ParseContext { env: &env, file, quiet_stderr };
            values.extend(dotenv::parse(&text, &context)?);
            files.push(file.clone());
        }
        Ok(Secrets { values, root: root.to_path_buf(), files, searched })
    }

    /// Secrets given directly, for code that needs a [`Secrets`] without files (tests, API-supplied values).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Secrets {
        Secrets {
            values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            root: PathBuf::new(),
            files: Vec::new(),
            searched: Vec::new(),
        }
    }

    /// The value of secret `name`, which may be empty (see [`Secrets::blank_warning`]).
    pub fn get(&self, name: &str) -> Result<&str, SecretsError> {
        if let Some(value) = self.values.get(name) {
            return Ok(value);
        }
        let name = name.to_string();
        if self.files.is_empty() {
            Err(SecretsError::NoSecretsFiles { name, files: self.searched.join(", ") })
        } else {
            Err(SecretsError::Missing { name, files: self.files.join(", ") })
        }
    }

    /// Secret names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Every secret with its value, in file order: for env files on hosts and hooks run with `secrets: true`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The secrets files that existed and were read, as named relative to the project root.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// `text` with every secret value of at least three characters replaced by `[REDACTED]`, and each line of
    /// multi-line values too (a PEM key is logged a line at a time). The longest value wins where values overlap.
    pub fn redact(&self, text: &str) -> String {
        let mut needles: Vec<&str> = self
            .values
            .values()
            .flat_map(|value| std::iter::once(value.as_str()).chain(value.lines().filter(|_| value.contains('\n'))))
            .filter(|needle| needle.chars().count() >= MIN_REDACTED_CHARS)
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        needles.dedup();
        if needles.is_empty() {
            return text.to_string();
        }
        // One left-to-right pass, so that a replacement is never searched again (a secret "DAC" must not eat into an
        // earlier "[REDACTED]").
        let mut redacted = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match needles.iter().find(|needle| rest.starts_with(**needle)) {
                Some(needle) => {
                    redacted.push_str(REDACTED);
                    rest = &rest[needle.len()..];
                }
                None => {
                    redacted.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        redacted
    }

    /// Kamal's warning for a secret that is set but blank, with a tip naming the line that set it: `None` when the
    /// secret has a value (or does not exist).
    pub fn blank_warning(&self, name: &str, env: &Environment) -> Option<String> {
        if !self.values.get(name)?.is_empty() {
            return None;
        }
        let mut warning = format!("Warning: secret {name} is blank.");
        for file in &self.files {
            let Ok(text) = std::fs::read_to_string(self.root.join(file)) else { continue };
            for (index, line) in text.lines().enumerate() {
                let Some(value) = line.trim_start().strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) else {
                    continue;
                };
                warning.push_str(&format!("\nTip: see {file}:{}: {}", index + 1, line.trim()));
                if let Some(command) = value.strip_prefix("$(").and_then(|c| c.split(')').next()) {
                    warning.push_str(&format!("\nTip: the shell command `{command}` returned an empty value."));
                } else if let Some(variable) = value.strip_prefix('$') {
                    let variable: String = variable
                        .trim_start_matches('{')
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let state = if env.get(&variable).is_some() { "blank" } else { "not set" };
                    warning.push_str(&format!(
                        "\nTip: the environment variable {variable} is {state}. Did you forget to set it?"
                    ));
                }
            }
        }
        Some(warning)
    }
}

/// Names only: a `{:?}` of secrets must never print a value.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The files Kamal reads, in order: `<path>-common`, then `<path>` or `<path>.<destination>`.
fn secrets_filenames(secrets_path: &str, destination: Option<&str>) -> Vec<String> {
    let specific = match destination {
        Some(destination) => format!("{secrets_path}.{destination}"),
        None => secrets_path.to_string(),
    };
    vec![format!("{secrets_path}-common"), specific]
}

/// A secrets file's text, `None` if it does not exist. A directory in its place counts as an empty file, as it does
/// for Kamal (dotenv ignores it, Kamal still lists it as read).
fn read_secrets_file(path: &Path, file: &str) -> Result<Option<String>, SecretsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(_) if path.is_dir() => Ok(Some(String::new())),
        Err(source) => Err(SecretsError::Read { file: file.to_string(), source }),
    }
}

/// Runs `command` to completion. A program file written a moment ago can still be open for writing in a child that
/// another thread is forking (`ETXTBSY`); that clears within milliseconds, so it is retried.
fn spawn_output(command: &mut Command) -> io::Result<Output> {
    const TEXT_FILE_BUSY: i32 = 26;
    let mut attempts = 0;
    loop {
        match command.output() {
            Err(error) if error.raw_os_error() == Some(TEXT_FILE_BUSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;

    fn project(files: &[(&str, &str)]) -> TempDir {
        let dir = TempDir::new("project");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn env() -> Environment {
        Environment::from_vars([("PATH", "/usr/bin:/bin"), ("KAMAL_DESTINATION", "stale")], "/")
    }

    fn pairs(secrets: &Secrets) -> Vec<(&str, &str)> {
        secrets.iter().collect()
    }

    #[test]
    fn common_then_default_file_without_destination() {
        let dir = project(&[
            (".kamal/secrets-common", "A=common\nB=common\nDEST=$KAMAL_DESTINATION"),
            (".kamal/secrets", "B=default\nC=default"),
            (".kamal/secrets.staging", "B=staging"),
        ]);
        let secrets = Secrets::load(dir.path(), DEFAULT_SECRETS_PATH, None, &env()).unwrap();
        assert_eq!(pairs(&secrets), vec![("A", "common"), ("B", "default"), ("DEST", ""), ("C", "default")]);
        assert_eq!(secrets.files(), [".kamal/secrets-common", ".kamal/secrets"]);
    }

    #[test]
    fn destination_file_replaces_the_default_file() {
        let dir = project(&[
            (".kamal/secrets-common", "A=common\nB=common\nDEST=$KAMAL_DESTINATION"),
            (".kamal/secrets", "C=default"),
            (".kamal/secrets.staging", "B=staging\nX=$A"),
        ]);
        let secrets = Secrets::load(dir.path(), DEFAULT_SECRETS_PATH, Some("staging"), &env()).unwrap();
        // Each file is parsed on its own: `$A` in the destination file does not see secrets-common's `A`.
        assert_eq!(pairs(&secrets), vec![("A", "common"), ("B", "staging"), ("DEST", "staging"), ("X", "")]);
        assert!(secrets.get("C").is_err());
    }

    #[test]
    fn custom_secrets_path_and_commands_run_in_the_project_root() {
        let dir = project(&[("config/master.key", "k3y\n"), ("secrets/app-common", "KEY=$(cat config/master.key)")]);
        let secrets = Secrets::load(dir.path(), "secrets/app", Some("production"), &env()).unwrap();
        assert_eq!(secrets.get("KEY").unwrap(), "k3y");
        assert_eq!(secrets.files(), ["secrets/app-common"]);
    }

    #[test]
    fn missing_secret_errors_name_the_files() {
        let dir = project(&[(".kamal/secrets-common", "A=1"), (".kamal/secrets", "B=2")]);
        let secrets = Secrets::load(dir.path(), DEFAULT_SECRETS_PATH, None, &env()).unwrap();
        assert_eq!(
            secrets.get("X").unwrap_err().to_string(),
            "secret 'X' not found in .kamal/secrets-common, .kamal/secrets: add `X=...` to one of them \
             (or `X=$(berth secrets ...)`)"
        );
        let empty = project(&[]);
        let secrets = Secrets::load(empty.path(), DEFAULT_SECRETS_PATH, Some("beta"), &env()).unwrap();
        assert!(secrets.is_empty());
        assert_eq!(
            secrets.get("X").unwrap_err().to_string(),
            "secret 'X' not found, no secrets file exists (.kamal/secrets-common, .kamal/secrets.beta): create one \
             with `X=...` (or `X=$(berth secrets ...)`)"
        );
    }

    #[test]
    fn format_errors_name_the_file_and_line() {
        let dir = project(&[(".kamal/secrets.ci", "A=1\n\nexport B\n")]);
        let error = Secrets::load(dir.path(), DEFAULT_SECRETS_PATH, Some("ci"), &env()).unwrap_err();
        assert!(error.to_string().starts_with(".kamal/secrets.ci:3: `export B`"), "{error}");
    }

    #[test]
    fn redact_replaces_values_longest_first() {
        let secrets = Secrets::from_pairs([
            ("SHORT", "ab"),
            ("TOKEN", "s3cr3t"),
            ("LONGER", "s3cr3t-and-more"),
            ("PEM", "-----BEGIN-----\nline-two\n-----END-----"),
            ("EMPTY", ""),
            ("DAC", "DAC"),
        ]);
        assert_eq!(
            secrets.redact("ab s3cr3t s3cr3t-and-more line-two DACDAC"),
            "ab [REDACTED] [REDACTED] [REDACTED] [REDACTED][REDACTED]"
        );
        assert_eq!(Secrets::from_pairs([("E", "")]).redact("unchanged"), "unchanged");
    }

    #[test]
    fn debug_never_shows_values() {
        let secrets = Secrets::from_pairs([("API_KEY", "hunter22")]);
        let debug = format!("{secrets:?}");
        assert!(debug.contains("API_KEY") && !debug.contains("hunter22"), "{debug}");
    }

    #[test]
    fn blank_warning_points_at_the_line() {
        let dir = project(&[(".kamal/secrets", "# c\nTOKEN=$UNSET_VAR\nCMD=$(true)\nSET=x")]);
        let secrets = Secrets::load(dir.path(), DEFAULT_SECRETS_PATH, None, &env()).unwrap();
        let warning = secrets.blank_warning("TOKEN", &env()).unwrap();
        assert_eq!(
            warning,
            "Warning: secret TOKEN is blank.\nTip: see .kamal/secrets:2: TOKEN=$UNSET_VAR\n\
             Tip: the environment variable UNSET_VAR is not set. Did you forget to set it?"
        );
        assert!(secrets.blank_warning("CMD", &env()).unwrap().ends_with("`true` returned an empty value."));
        assert_eq!(secrets.blank_warning("SET", &env()), None);
    }
}
