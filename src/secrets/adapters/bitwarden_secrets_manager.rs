//! Bitwarden Secrets Manager (`bws`): `bws secret list [PROJECT]` for `all` / `PROJECT/all`, else
//! `bws secret get UUID` per secret; results are keyed by each secret's `key`.

use serde_json::Value;

use super::{Results, RunOptions, VendorCli, prefixed, string_value};
use crate::secrets::SecretsError;

pub(super) fn fetch(cli: &VendorCli<'_>, secrets: &[String], from: Option<&str>) -> Result<Results, SecretsError> {
    // Kamal checks the access token by listing projects before anything else.
    let quiet_stdout = RunOptions::default();
    if !cli.run_with(&["project", "list"], quiet_stdout)?.success {
        return Err(cli.error("Could not authenticate to Bitwarden Secrets Manager. Did you set a valid access token?"));
    }
    if secrets.is_empty() {
        return Err(cli.error("You must specify what to retrieve from Bitwarden Secrets Manager"));
    }
    let secrets = prefixed(secrets, from);
    let list_args: Option<Vec<&str>> = match secrets.as_slice() {
        [all] if all == "all" => Some(vec!["secret", "list"]),
        [project_all] if project_all.ends_with("/all") => {
            // Ruby's `split("/all").first`: the text before the first `/all`.
            let project = project_all.split("/all").next().unwrap_or_default();
            Some(vec!["secret", "list", project])
        }
        _ => None,
    };
    let mut results = Results::new();
    match list_args {
        Some(args) => {
            let output = cli.run(&args)?;
            if !output.success {
                return Err(cli.error("Could not read secrets from Bitwarden Secrets Manager"));
            }
            let Value::Array(items) = cli.parse_json(&args, &output.stdout)? else {
                return Err(cli.unexpected_output(&args, &output.stdout, "a JSON list of secrets"));
            };
            for item in &items {
                add(cli, &args, &output.stdout, item, &mut results)?;
            }
        }
        None => {
            for uuid in &secrets {
                let args = ["secret", "get", uuid.as_str()];
                let output = cli.run(&args)?;
                if !output.success {
                    return Err(cli.error(format!("Could not read {uuid} from Bitwarden Secrets Manager")));
                }
                let item = cli.parse_json(&args, &output.stdout)?;
                add(cli, &args, &output.stdout, &item, &mut results)?;
            }
        }
    }
    Ok(results)
}

fn add(
    cli: &VendorCli<'_>,
    args: &[&str],
    stdout: &str,
    item: &Value,
    results: &mut Results,
) -> Result<(), SecretsError> {
    let Some(key) = item.get("key").and_then(Value::as_str) else {
        return Err(cli.unexpected_output(args, stdout, "secrets with a `key`"));
    };
    results.insert(key.to_string(), string_value(item.get("value").unwrap_or(&Value::Null)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const LIST: &str = r#"[{"key":"KAMAL_REGISTRY_PASSWORD","value":"some_password"},
      {"key":"MY_OTHER_SECRET","value":"my=wierd\"secret"}]"#;

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::BitwardenSecretsManager, fake, secrets, None, from)
    }

    fn logged_in() -> FakeCli {
        FakeCli::new("bws").on("project list", "[]")
    }

    #[test]
    fn fetch_all_and_all_of_a_project() {
        let results = run(logged_in().on("secret list", LIST), &["all"], None).unwrap();
        assert_eq!(results["MY_OTHER_SECRET"], "my=wierd\"secret");
        let project = "82aeb5bd-6958-4a89-8197-eacab758acce";
        let results = run(logged_in().on(&format!("secret list {project}"), LIST), &["all"], Some(project)).unwrap();
        assert_eq!(results.len(), 2);
    }

    #[test]
    fn fetch_items_by_uuid() {
        let fake = logged_in()
            .on("secret get 82aeb5bd", r#"{"key":"KAMAL_REGISTRY_PASSWORD","value":"some_password"}"#)
            .on("secret get 6f8cdf27", r#"{"key":"SSH_PRIVATE_KEY","value":"some_key\nwith_linebreak"}"#);
        let results = run(fake, &["82aeb5bd", "6f8cdf27"], None).unwrap();
        assert_eq!(results["SSH_PRIVATE_KEY"], "some_key\nwith_linebreak");
    }

    #[test]
    fn errors_use_kamals_messages() {
        let error = run(logged_in(), &[], None).unwrap_err().to_string();
        assert_eq!(error, "bitwarden-sm adapter: You must specify what to retrieve from Bitwarden Secrets Manager");
        let error = run(logged_in().on_status("secret list", "Error:\n0: Received error", 1), &["all"], None);
        assert_eq!(
            error.unwrap_err().to_string(),
            "bitwarden-sm adapter: Could not read secrets from Bitwarden Secrets Manager"
        );
        let error = run(FakeCli::new("bws").on_status("project list", "", 1), &["all"], None).unwrap_err();
        assert!(error.to_string().contains("Did you set a valid access token?"));
        let error = run(logged_in().on_status("secret get x", "", 1), &["x"], None).unwrap_err();
        assert_eq!(error.to_string(), "bitwarden-sm adapter: Could not read x from Bitwarden Secrets Manager");
    }
}
