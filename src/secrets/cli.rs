//! `berth secrets`: placeholder until the secrets module lands.
use std::io::Write;
use std::path::Path;

use crate::environment::Environment;

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Print all secrets
    Print,
}

pub fn run(
    _command: &SecretsCommand,
    _root: &Path,
    _secrets_path: &str,
    _destination: Option<&str>,
    _env: &Environment,
    _out: &mut dyn Write,
) -> Result<(), std::io::Error> {
    Ok(())
}
