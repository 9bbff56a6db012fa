//! A project's own files: `berth init` writes a starting configuration, `berth docs` explains every key.

use std::path::Path;

use crate::config::schema;

/// Why `berth init` or `berth docs` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("could not write {}: {source}", path.display())]
    Write { path: std::path::PathBuf, source: std::io::Error },

    #[error("unknown docs section `{section}`; known sections: {known}")]
    UnknownSection { section: String, known: String },
}

const DEPLOY_YML: &str = include_str!("project/deploy.yml");
const SECRETS: &str = include_str!("project/secrets");

/// The hooks Kamal runs, each written as a sample that does nothing until the user renames it.
const HOOKS: &[&str] = &[
    "docker-setup",
    "pre-connect",
    "pre-build",
    "pre-deploy",
    "post-deploy",
    "pre-app-boot",
    "post-app-boot",
    "pre-proxy-reboot",
    "post-proxy-reboot",
];

/// Writes `config/deploy.yml`, `.kamal/secrets` and sample hooks into `dir`, never overwriting a file.
/// Returns one line per file saying what happened to it.
pub fn init(dir: &Path) -> Result<Vec<String>, ProjectError> {
    let mut report = Vec::new();
    let mut write = |relative: &str, contents: &str, mode: u32| -> Result<(), ProjectError> {
        let path = dir.join(relative);
        if path.exists() {
            report.push(format!("{relative} already exists, left as it is"));
            return Ok(());
        }
        let wrap = |source| ProjectError::Write { path: path.clone(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(wrap)?;
        }
        std::fs::write(&path, contents).map_err(wrap)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(wrap)?;
        report.push(format!("created {relative}"));
        Ok(())
    };
    write("config/deploy.yml", DEPLOY_YML, 0o644)?;
    write(".kamal/secrets", SECRETS, 0o600)?;
    for hook in HOOKS {
        let sample = format!(
            "#!/bin/sh\n# The {hook} hook: rename this file to `{hook}` (drop .sample) to enable it.\n# berth runs it with KAMAL_* variables: KAMAL_SERVICE, KAMAL_VERSION, KAMAL_HOSTS, KAMAL_DESTINATION, ...\necho \"{hook}: $KAMAL_SERVICE $KAMAL_VERSION on $KAMAL_HOSTS\"\n"
        );
        write(&format!(".kamal/hooks/{hook}.sample"), &sample, 0o755)?;
    }
    ensure_gitignored(dir, &mut report)?;
    Ok(report)
}

/// Secrets files must never be committed: add them to `.gitignore` unless it already covers them.
fn ensure_gitignored(dir: &Path, report: &mut Vec<String>) -> Result<(), ProjectError> {
    let path = dir.join(".gitignore");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let wanted = [".kamal/secrets*", "!.kamal/secrets-common"];
    let missing: Vec<&str> =
        wanted.iter().copied().filter(|line| !existing.lines().any(|l| l.trim() == *line)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut contents = existing.clone();
    if !contents.is_empty() && !contents.ends_with('\n') {
        contents.push('\n');
    }
    contents.push_str("# Secrets for berth/Kamal: never commit them\n");
    for line in &missing {
        contents.push_str(line);
        contents.push('\n');
    }
    std::fs::write(&path, contents).map_err(|source| ProjectError::Write { path: path.clone(), source })?;
    report.push(format!("added {} to .gitignore", missing.join(" and ")));
    Ok(())
}

/// The reference for one section (or the list of sections), generated from the schema berth validates with.
pub fn docs(section: Option<&str>) -> Result<String, ProjectError> {
    let sections = schema::documented_sections();
    let Some(wanted) = section else {
        let mut out = String::from("berth reads Kamal 2's config/deploy.yml. Sections (berth docs SECTION):\n");
        for (name, keys) in &sections {
            out.push_str(&format!("  {name:<14} {} keys\n", keys.len()));
        }
        out.push_str(
            "\nValues are read as Kamal reads them (Ruby's Psych, YAML 1.1): unquoted yes/no/on/off are booleans,\n\
             0755 is octal (493), 1:30 is 5400, 2001-12-14 is a date; quote a value to keep it a string.\n",
        );
        out.push_str("\nA starting configuration with comments: `berth init`.\n");
        return Ok(out);
    };
    let wanted = match wanted {
        "servers" | "roles" => "role",
        "accessories" => "accessory",
        "config" | "deploy" => "configuration",
        other => other,
    };
    let Some((name, keys)) = sections.iter().find(|(name, _)| *name == wanted) else {
        let known: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
        return Err(ProjectError::UnknownSection { section: wanted.to_string(), known: known.join(", ") });
    };
    let mut out = format!("{name}:\n");
    for (key, shape) in keys {
        out.push_str(&format!("  {key:<22} {shape}\n"));
    }
    Ok(out)
}
