//! Kamal-compatible configuration: `config/deploy.yml` (+ `deploy.<dest>.yml`) read exactly as Kamal 2 reads it.
//!
//! Loading happens in two stages. [`source`] turns files into one merged YAML tree (ERB, YAML, destination
//! merge). Then [`schema`] checks that tree against Kamal's schema and [`model`] resolves it into typed values
//! with Kamal's defaults; both collect every problem before failing, so a user fixes them all in one go.
//! Loading reads files and runs the commands the user's own ERB asks for, and nothing else: no network, no SSH.

mod erb;
pub mod kamal_summary;
pub mod model;
pub mod psych_scalar;
pub mod resolved_view;
pub mod schema;
pub mod source;

use std::path::{Path, PathBuf};

pub use model::{Accessory, Config, Host, Role};
pub use schema::Problem;
pub use source::SourceFiles;

use crate::environment::Environment;

/// What to load: the base file, the destination, and a version given on the command line.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub config_file: PathBuf,
    pub destination: Option<String>,
    pub version: Option<String>,
}

impl LoadOptions {
    pub fn new(config_file: impl Into<PathBuf>) -> LoadOptions {
        LoadOptions { config_file: config_file.into(), destination: None, version: None }
    }
}

/// Everything that can go wrong while loading a configuration. Each message says what, where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration file not found: {}\n  create it with `berth init`, or point to another file with `-c FILE`",
        path.display()
    )]
    FileNotFound { path: PathBuf },

    #[error("could not read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("{}", yaml_error_message(path, *line, *column, message))]
    Yaml { path: PathBuf, line: Option<usize>, column: Option<usize>, message: String },

    #[error("{}: the configuration must be a YAML hash of keys (service:, image:, servers:, ...), found {found}", path.display())]
    NotAMapping { path: PathBuf, found: String },

    #[error(transparent)]
    Erb(#[from] erb::ErbError),

    #[error(
        "You must specify a destination: {} sets `require_destination: true`\n  run with `-d DESTINATION` (e.g. `-d production`, reading config/deploy.production.yml)",
        path.display()
    )]
    DestinationRequired { path: PathBuf },

    #[error("{}", invalid_message(files, problems))]
    Invalid { files: Vec<PathBuf>, problems: Vec<Problem> },

    #[error(
        "Can't use commit hash as version, no git repository found in {}\n  pass `--version VERSION`, set the VERSION environment variable, or run inside a git repository",
        dir.display()
    )]
    NoVersion { dir: PathBuf },
}

fn yaml_error_message(path: &Path, line: Option<usize>, column: Option<usize>, message: &str) -> String {
    let location = match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    };
    format!(
        "{}{location}: invalid YAML: {message}\n  fix the YAML syntax at line {} (check indentation, quotes and brackets)",
        path.display(),
        line.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
    )
}

fn invalid_message(files: &[PathBuf], problems: &[Problem]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let noun = if problems.len() == 1 { "problem" } else { "problems" };
    let mut message = format!("invalid configuration ({}): {} {noun}", names.join(" + "), problems.len());
    for problem in problems {
        message.push_str("\n  - ");
        message.push_str(&problem.to_string());
    }
    message
}

impl Config {
    /// Loads, validates and resolves the configuration as Kamal would for `-c FILE [-d DEST] [--version V]`.
    pub fn load(options: &LoadOptions, env: &Environment) -> Result<Config, ConfigError> {
        let mut env = env.clone();
        // Kamal sets KAMAL_DESTINATION before rendering, so that ERB can branch on it.
        match &options.destination {
            Some(dest) => env.set("KAMAL_DESTINATION", dest.as_str()),
            None => env.remove("KAMAL_DESTINATION"),
        }
        let files = SourceFiles::new(&options.config_file, options.destination.as_deref());
        let tree = source::load_merged(&files, &env)?;
        let problems = schema::validate(&tree);
        if problems.is_empty()
            && options.destination.is_none()
            && tree.get("require_destination") == Some(&yaml_serde::Value::Bool(true))
        {
            return Err(ConfigError::DestinationRequired { path: options.config_file.clone() });
        }
        // The cross-field rules run even when the schema found problems, so that all are reported at once.
        model::resolve(tree, options, &files, &env, problems)
    }
}
