//! Passbolt (`passbolt`): `passbolt verify`, folders looked up with `passbolt list folders --filter … --json`, then
//! `passbolt list resources --filter … --folder ID… --json`; results are keyed by resource name.
//!
//! Secrets are `Name` or `Folder/…/Name` (or relative to `--from Folder`). Filters are built exactly as Kamal
//! builds them (`Name == "x" && FolderParentID == "id"`), quoted with Ruby's `shellescape.inspect`.

use serde_json::Value;

use super::{Results, VendorCli, prefixed, string_value};
use crate::secrets::{SecretsError, ruby};

/// A folder as `passbolt list folders` prints it.
struct Folder {
    id: String,
    name: String,
    parent_id: String,
}

pub(super) fn fetch(cli: &VendorCli<'_>, secrets: &[String], from: Option<&str>) -> Result<Results, SecretsError> {
    if !cli.run(&["verify"])?.success {
        return Err(cli.error("Failed to login to Passbolt"));
    }
    let secrets = prefixed(secrets, from);
    if secrets.is_empty() {
        return Err(cli.error("No secrets given to fetch"));
    }
    let folders = folders(cli, &secrets)?;
    let mut conditions = Vec::new();
    for secret in &secrets {
        let parts: Vec<&str> = secret.split('/').collect();
        let (name, folder_path) = parts.split_last().unwrap_or((&"", &[]));
        if folder_path.is_empty() {
            conditions.push(format!("Name == {}", quote(name)));
            continue;
        }
        // The most nested folder of the path that exists.
        let mut current = None;
        for depth in 1..=folder_path.len() {
            let path = folder_path[..depth].join("/");
            if let Some(folder) = folders.iter().find(|folder| folder_path_of(folder, &folders) == path) {
                current = Some(folder);
            }
        }
        if let Some(folder) = current {
            conditions.push(format!("(Name == {} && FolderParentID == {})", quote(name), quote(&folder.id)));
        }
    }
    let filter = conditions.join(" || ");
    let mut args = vec!["list", "resources"];
    if !conditions.is_empty() {
        args.extend(["--filter", &filter]);
    }
    for folder in &folders {
        args.extend(["--folder", &folder.id]);
    }
    args.push("--json");
    let output = cli.run(&args)?;
    if !output.success {
        return Err(cli.error(format!("Could not read {} from Passbolt", secrets.join(", "))));
    }
    let Value::Array(items) = cli.parse_json(&args, &output.stdout)? else {
        return Err(cli.unexpected_output(&args, &output.stdout, "a JSON list of resources"));
    };
    let found: Vec<&str> = items.iter().filter_map(|item| item.get("name").and_then(Value::as_str)).collect();
    let missing: Vec<&str> = secrets
        .iter()
        .map(|secret| secret.rsplit('/').next().unwrap_or_default())
        .filter(|name| !found.contains(name))
        .collect();
    if !missing.is_empty() {
        return Err(cli.error(format!("Could not find the following secrets in Passbolt: {}", missing.join(", "))));
    }
    Ok(items
        .iter()
        .map(|item| {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            (name, string_value(item.get("password").unwrap_or(&Value::Null)))
        })
        .collect())
}

/// Ruby's `text.shellescape.inspect`, which is how Kamal quotes names and ids into filter expressions.
fn quote(text: &str) -> String {
    ruby::inspect(&ruby::shellescape(text))
}

/// Every folder on the secrets' folder paths: top-level ones by name, then each nested level under its parent.
fn folders(cli: &VendorCli<'_>, secrets: &[String]) -> Result<Vec<Folder>, SecretsError> {
    let mut paths: Vec<Vec<&str>> = Vec::new();
    for secret in secrets.iter().filter(|secret| secret.contains('/')) {
        let parts: Vec<&str> = secret.split('/').collect();
        let path = parts[..parts.len() - 1].to_vec();
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut parents: Vec<&str> = Vec::new();
    for path in &paths {
        if !parents.contains(&path[0]) {
            parents.push(path[0]);
        }
    }
    let filter = parents.iter().map(|name| format!("Name == {}", quote(name))).collect::<Vec<_>>().join(" || ");
    let args = ["list", "folders", "--filter", &filter, "--json"];
    let output = cli.run(&args)?;
    if !output.success {
        return Err(cli.error("Could not read folders from Passbolt"));
    }
    let top_level = parse_folders(cli, &args, &output.stdout)?;
    let mut all = Vec::new();
    for path in paths.iter().filter(|path| path.len() > 1) {
        let Some(parent) = top_level.iter().find(|folder| folder.name == path[0]) else { continue };
        let mut parent_id = parent.id.clone();
        for name in &path[1..] {
            let filter = format!("Name == {} && FolderParentID == {}", quote(name), quote(&parent_id));
            let args = ["list", "folders", "--filter", &filter, "--json"];
            let output = cli.run(&args)?;
            if !output.success {
                continue;
            }
            let nested = parse_folders(cli, &args, &output.stdout)?;
            let Some(first) = nested.first() else { break };
            parent_id = first.id.clone();
            all.extend(nested);
        }
    }
    all.splice(0..0, top_level);
    let found: Vec<String> = all.iter().map(|folder| folder_path_of(folder, &all)).collect();
    let missing: Vec<String> = paths.iter().map(|path| path.join("/")).filter(|path| !found.contains(path)).collect();
    if !missing.is_empty() {
        return Err(cli.error(format!("Could not find the following folders in Passbolt: {}", missing.join(", "))));
    }
    Ok(all)
}

fn parse_folders(cli: &VendorCli<'_>, args: &[&str], stdout: &str) -> Result<Vec<Folder>, SecretsError> {
    let Value::Array(items) = cli.parse_json(args, stdout)? else {
        return Err(cli.unexpected_output(args, stdout, "a JSON list of folders"));
    };
    let text = |item: &Value, name: &str| match item.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(items
        .iter()
        .map(|item| Folder {
            id: text(item, "id"),
            name: text(item, "name"),
            parent_id: text(item, "folder_parent_id"),
        })
        .collect())
}

/// `Parent/Child` names of `folder`, following parent ids among `all` as far as they go.
fn folder_path_of(folder: &Folder, all: &[Folder]) -> String {
    let mut names = vec![folder.name.as_str()];
    let mut current = folder;
    while !current.parent_id.is_empty() {
        match all.iter().find(|candidate| candidate.id == current.parent_id) {
            Some(parent) if names.len() <= all.len() => {
                names.push(&parent.name);
                current = parent;
            }
            _ => break,
        }
    }
    names.reverse();
    names.join("/")
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::Passbolt, fake, secrets, None, from)
    }

    #[test]
    fn fetch_root_level_secrets() {
        let fake = FakeCli::new("passbolt").on("verify", "").on(
            r#"list resources --filter Name == "SECRET1" || Name == "FSECRET1" --json"#,
            r#"[{"id":"1","name":"SECRET1","password":"secret1"},{"id":"2","name":"FSECRET1","password":"fsecret1"}]"#,
        );
        let results = run(fake, &["SECRET1", "FSECRET1"], None).unwrap();
        assert_eq!(results["FSECRET1"], "fsecret1");
    }

    #[test]
    fn fetch_from_nested_folders() {
        let fake = FakeCli::new("passbolt")
            .on("verify", "")
            .on(
                r#"list folders --filter Name == "my-project" --json"#,
                r#"[{"id":"dir-1","name":"my-project","folder_parent_id":""}]"#,
            )
            .on(
                r#"list folders --filter Name == "subfolder" && FolderParentID == "dir-1" --json"#,
                r#"[{"id":"dir-2","name":"subfolder","folder_parent_id":"dir-1"}]"#,
            )
            .on(
                concat!(
                    r#"list resources --filter (Name == "SECRET1" && FolderParentID == "dir-2") "#,
                    "--folder dir-1 --folder dir-2 --json"
                ),
                r#"[{"id":"1","name":"SECRET1","password":"secret1","folder_parent_id":"dir-2"}]"#,
            );
        let results = run(fake, &["subfolder/SECRET1"], Some("my-project")).unwrap();
        assert_eq!(results["SECRET1"], "secret1");
    }

    #[test]
    fn missing_secrets_and_login_failure() {
        let fake = FakeCli::new("passbolt")
            .on("verify", "")
            .on(r#"list resources --filter Name == "A" || Name == "B" --json"#, r#"[{"name":"A","password":"a"}]"#);
        assert_eq!(
            run(fake, &["A", "B"], None).unwrap_err().to_string(),
            "passbolt adapter: Could not find the following secrets in Passbolt: B"
        );
        let fake = FakeCli::new("passbolt").on_status("verify", "", 1);
        assert_eq!(run(fake, &["A"], None).unwrap_err().to_string(), "passbolt adapter: Failed to login to Passbolt");
    }
}
