//! 1Password (`op`): `op item get ITEM --vault VAULT --format json --account ACCOUNT [--fields label=…]`.
//!
//! Secrets are `Vault/Item[/Section]/Field` (with an optional `op://`); a missing field means `password`, and
//! without secrets `--from Vault/Item` fetches every field of the item. Results are keyed by each field's
//! `reference` without `op://` and without a trailing `/password`.

use indexmap::IndexMap;
use serde_json::Value;

use super::{Results, RunOptions, VendorCli, prefixed, string_value};
use crate::secrets::{SecretsError, ruby};

pub(super) fn fetch(
    cli: &VendorCli<'_>,
    secrets: &[String],
    account: &str,
    from: Option<&str>,
) -> Result<Results, SecretsError> {
    let session = login(cli, account)?;
    if secrets.is_empty() {
        fetch_all(cli, account, from, &session)
    } else {
        fetch_specified(cli, &prefixed(secrets, from), account, &session)
    }
}

/// Signs in unless `op account get` says the account is already signed in; the session `op signin` prints (as a
/// shell `export OP_SESSION_…="…"`) is kept for the environment of later calls.
fn login(cli: &VendorCli<'_>, account: &str) -> Result<Vec<(String, String)>, SecretsError> {
    let quiet = RunOptions { quiet: true, ..RunOptions::default() };
    if cli.run_with(&["account", "get", "--account", account], quiet)?.success {
        return Ok(Vec::new());
    }
    let signin = cli.run(&["signin", "--account", account, "--force"])?;
    if !signin.success {
        return Err(cli.error("Failed to login to 1Password"));
    }
    Ok(session_env(&signin.stdout).into_iter().collect())
}

/// `\b(OP_SESSION_\w+)\W+([^"\s]+)` in `op signin`'s output.
fn session_env(output: &str) -> Option<(String, String)> {
    const PREFIX: &str = "OP_SESSION_";
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    output.match_indices(PREFIX).find_map(|(start, _)| {
        if output[..start].chars().next_back().is_some_and(is_word) {
            return None;
        }
        let name_len = PREFIX.len() + output[start + PREFIX.len()..].chars().take_while(|&c| is_word(c)).count();
        let rest = &output[start + name_len..];
        let value_start = rest.find(is_word).filter(|&at| at > 0)?;
        let value: String = rest[value_start..].chars().take_while(|&c| c != '"' && !c.is_whitespace()).collect();
        (name_len > PREFIX.len() && !value.is_empty()).then(|| (output[start..start + name_len].to_string(), value))
    })
}

fn fetch_specified(
    cli: &VendorCli<'_>,
    secrets: &[String],
    account: &str,
    session: &[(String, String)],
) -> Result<Results, SecretsError> {
    let mut vaults: IndexMap<&str, IndexMap<&str, Vec<String>>> = IndexMap::new();
    for secret in secrets {
        let parts = ruby::split_slash(secret.strip_prefix("op://").unwrap_or(secret));
        let [vault, item, fields @ ..] = parts.as_slice() else {
            return Err(cli.error(format!(
                "'{secret}' names no item: write secrets as Vault/Item/Field, or pass --from Vault/Item"
            )));
        };
        let field = if fields.is_empty() { "password".to_string() } else { fields.join(".") };
        vaults.entry(vault).or_default().entry(item).or_default().push(field);
    }
    let mut results = Results::new();
    for (vault, items) in vaults {
        for (item, fields) in items {
            let labels = fields.iter().map(|field| format!("label={field}")).collect::<Vec<_>>().join(",");
            let args =
                ["item", "get", item, "--vault", vault, "--format", "json", "--account", account, "--fields", &labels];
            let output = cli.run_with(&args, RunOptions { env: session, ..RunOptions::default() })?;
            if !output.success {
                return Err(cli.error(format!(
                    "Could not read {} from {item} in the {vault} 1Password vault",
                    fields.join(", ")
                )));
            }
            let json = cli.parse_json(&args, &output.stdout)?;
            let fields_json = if fields.len() == 1 { vec![json] } else { array(cli, &args, &output.stdout, json)? };
            add_fields(cli, &args, &output.stdout, &fields_json, &mut results)?;
        }
    }
    Ok(results)
}

fn fetch_all(
    cli: &VendorCli<'_>,
    account: &str,
    from: Option<&str>,
    session: &[(String, String)],
) -> Result<Results, SecretsError> {
    let from = from.unwrap_or_default();
    let parts = ruby::split_slash(from.strip_prefix("op://").unwrap_or(from));
    let [vault, item, ..] = parts.as_slice() else {
        return Err(SecretsError::MissingFrom {
            adapter: cli.adapter.name(),
            hint: "without secrets to fetch, pass the item to read every field of as --from Vault/Item",
        });
    };
    let args = ["item", "get", item, "--vault", vault, "--format", "json", "--account", account];
    let output = cli.run_with(&args, RunOptions { env: session, ..RunOptions::default() })?;
    if !output.success {
        return Err(cli.error(format!("Could not read from {item} in the {vault} 1Password vault")));
    }
    let json = cli.parse_json(&args, &output.stdout)?;
    let fields = json.get("fields").cloned().unwrap_or(Value::Null);
    let fields = array(cli, &args, &output.stdout, fields)?;
    let mut results = Results::new();
    add_fields(cli, &args, &output.stdout, &fields, &mut results)?;
    Ok(results)
}

fn array(cli: &VendorCli<'_>, args: &[&str], stdout: &str, json: Value) -> Result<Vec<Value>, SecretsError> {
    match json {
        Value::Array(values) => Ok(values),
        _ => Err(cli.unexpected_output(args, stdout, "a JSON list of fields")),
    }
}

/// Each field under its reference (`op://vault/item/field` without `op://` and a trailing `/password`).
fn add_fields(
    cli: &VendorCli<'_>,
    args: &[&str],
    stdout: &str,
    fields: &[Value],
    results: &mut Results,
) -> Result<(), SecretsError> {
    for field in fields {
        let Some(reference) = field.get("reference").and_then(Value::as_str) else {
            return Err(cli.unexpected_output(args, stdout, "fields with a `reference`"));
        };
        let key = reference.strip_prefix("op://").unwrap_or(reference);
        let key = key.strip_suffix("/password").unwrap_or(key);
        results.insert(key.to_string(), string_value(field.get("value").unwrap_or(&Value::Null)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const ITEM_GET: &str = "item get myitem --vault myvault --format json --account myaccount";

    fn field(section: &str, label: &str, value: &str, item: &str) -> String {
        format!(
            r#"{{"id":"a","section":{{"id":"c","label":"{section}"}},"type":"CONCEALED","label":"{label}",
                "value":"{value}","reference":"op://myvault/{item}/{section}/{label}"}}"#
        )
    }

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::OnePassword, fake, secrets, Some("myaccount"), from)
    }

    #[test]
    fn fetch_fields_of_one_item() {
        let json = format!(
            "[{},{},{}]",
            field("section", "SECRET1", "VALUE1", "myitem"),
            field("section", "SECRET2", "VALUE2", "myitem"),
            field("section2", "SECRET3", "VALUE3", "myitem")
        );
        let fake = FakeCli::new("op").on("account get --account myaccount", "").on(
            &format!("{ITEM_GET} --fields label=section.SECRET1,label=section.SECRET2,label=section2.SECRET3"),
            &json,
        );
        let results =
            run(fake, &["section/SECRET1", "section/SECRET2", "section2/SECRET3"], Some("op://myvault/myitem"));
        let results = results.unwrap();
        assert_eq!(
            results.keys().collect::<Vec<_>>(),
            ["myvault/myitem/section/SECRET1", "myvault/myitem/section/SECRET2", "myvault/myitem/section2/SECRET3"]
        );
        assert_eq!(results["myvault/myitem/section2/SECRET3"], "VALUE3");
    }

    #[test]
    fn fetch_from_several_items_and_default_password_field() {
        let two = format!(
            "[{},{}]",
            field("section", "SECRET1", "V1", "myitem"),
            field("section", "SECRET2", "V2", "myitem")
        );
        let password = r#"{"label":"password","value":"pw","reference":"op://myvault/myitem2/password"}"#;
        let fake = FakeCli::new("op")
            .on("account get --account myaccount", "")
            .on(&format!("{ITEM_GET} --fields label=section.SECRET1,label=section.SECRET2"), &two)
            .on("item get myitem2 --vault myvault --format json --account myaccount --fields label=password", password);
        let results =
            run(fake, &["myitem/section/SECRET1", "myitem/section/SECRET2", "myitem2"], Some("op://myvault")).unwrap();
        assert_eq!(results["myvault/myitem/section/SECRET2"], "V2");
        assert_eq!(results["myvault/myitem2"], "pw");
    }

    #[test]
    fn fetch_all_fields_of_the_from_item() {
        let item =
            format!(r#"{{"id":"u","title":"A title","fields":[{}]}}"#, field("section", "SECRET1", "VALUE1", "myitem"));
        let fake = FakeCli::new("op").on("account get --account myaccount", "").on(ITEM_GET, &item);
        let results = run(fake, &[], Some("op://myvault/myitem")).unwrap();
        assert_eq!(results["myvault/myitem/section/SECRET1"], "VALUE1");
    }

    #[test]
    fn signin_session_goes_to_the_environment_not_argv() {
        let fake = FakeCli::new("op")
            .keyed_by("${OP_SESSION_abc:+session=$OP_SESSION_abc }$*")
            .on_status("account get --account myaccount", "", 1)
            .on("signin --account myaccount --force", "export OP_SESSION_abc=\"tok123\"\n# comment")
            .on(&format!("session=tok123 {ITEM_GET} --fields label=password"), &field("s", "password", "pw", "myitem"));
        let results = run(fake, &["myvault/myitem"], None).unwrap();
        // The reference's trailing `/password` is dropped, as Kamal does.
        assert_eq!(results["myvault/myitem/s"], "pw");
    }

    #[test]
    fn failures_use_kamals_messages() {
        let fake = FakeCli::new("op").on_status("account get --account myaccount", "", 1).on_status(
            "signin --account myaccount --force",
            "",
            1,
        );
        assert_eq!(
            run(fake, &["v/i"], None).unwrap_err().to_string(),
            "1password adapter: Failed to login to 1Password"
        );
        let fake = FakeCli::new("op").on("account get --account myaccount", "").on_status(
            &format!("{ITEM_GET} --fields label=a.B"),
            "",
            1,
        );
        assert_eq!(
            run(fake, &["myvault/myitem/a/B"], None).unwrap_err().to_string(),
            "1password adapter: Could not read a.B from myitem in the myvault 1Password vault"
        );
        let fake = FakeCli::new("op")
            .on("account get --account myaccount", "")
            .on(&format!("{ITEM_GET} --fields label=password"), "");
        let error = run(fake, &["myvault/myitem"], None).unwrap_err().to_string();
        assert!(error.contains("printed nothing where JSON"), "{error}");
    }

    #[test]
    fn session_env_reads_signin_output() {
        assert_eq!(
            session_env("export OP_SESSION_my_team=\"abc-123\""),
            Some(("OP_SESSION_my_team".into(), "abc-123".into()))
        );
        assert_eq!(session_env("nothing here"), None);
    }
}
