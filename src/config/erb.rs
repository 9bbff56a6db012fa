//! ERB templates in configuration files, evaluated natively for the subset real configs use.
// TEMPORARY shim until the native evaluator lands (being written in /work/scratch/erb).
use std::path::{Path, PathBuf};

use crate::environment::Environment;

#[derive(Debug, thiserror::Error)]
pub enum ErbError {
    #[error("{}:{line}: ERB is not supported yet: {construct}", file.display())]
    Unsupported { file: PathBuf, line: usize, construct: String },
}

pub fn render(source: &str, file: &Path, _env: &Environment) -> Result<String, ErbError> {
    if let Some(idx) = source.find("<%") {
        let line = source[..idx].lines().count() + 1;
        return Err(ErbError::Unsupported { file: file.to_path_buf(), line, construct: "<%".into() });
    }
    Ok(source.to_string())
}
