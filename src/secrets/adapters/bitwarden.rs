//! Bitwarden (`bw`): `bw status`, then `bw login` / `bw unlock --raw` as needed, `bw sync`, and `bw get item ITEM`.
//!
//! Secrets are `item` (the login's password, or every custom field if it has no password) or `item/field`; field
//! results are keyed `item/field`. The unlock session travels in `BW_SESSION`.

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
    let session_env: Vec<(String, String)> =
        session.into_iter().map(|token| ("BW_SESSION".to_string(), token)).collect();
    let with_session = || RunOptions { env: &session_env, ..RunOptions::default() };

    // `item, field = secret.split("/")`: only the first two segments count.
    let secrets = prefixed(secrets, from);
    let mut items: IndexMap<&str, Vec<Option<&str>>> = IndexMap::new();
    for secret in &secrets {
        let parts = ruby::split_slash(secret);
        items.entry(parts.first().copied().unwrap_or_default()).or_default().push(parts.get(1).copied());
    }

    let mut results = Results::new();
    for (item, fields) in items {
        let args = ["get", "item", item];
        let output = cli.run_with(&args, with_session())?;
        if !output.success {
            return Err(cli.error(format!("Could not read {item} from Bitwarden")));
        }
        let item_json = cli.parse_json(&args, ruby::strip(&output.stdout))?;
        let password =
            item_json.pointer("/login/password").filter(|value| !matches!(value, Value::Null | Value::Bool(false)));
        let custom_fields = item_json.get("fields").and_then(Value::as_array).filter(|fields| !fields.is_empty());
        if fields.iter().any(Option::is_some) {
            add_fields(cli, item, &item_json, &fields, &mut results)?;
        } else if let Some(password) = password {
            results.insert(item.to_string(), string_value(password));
        } else if let Some(custom_fields) = custom_fields {
            let names: Vec<Option<&str>> =
                custom_fields.iter().map(|field| field.get("name").and_then(Value::as_str)).collect();
            add_fields(cli, item, &item_json, &names, &mut results)?;
        } else {
            return Err(cli.error(format!("Item {item} is not a login type item and no fields were specified")));
        }
    }
    Ok(results)
}

fn add_fields(
    cli: &VendorCli<'_>,
    item: &str,
    item_json: &Value,
    fields: &[Option<&str>],
    results: &mut Results,
) -> Result<(), SecretsError> {
    let custom_fields = item_json.get("fields").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for field in fields {
        let found = custom_fields.iter().find(|candidate| candidate.get("name").and_then(Value::as_str) == *field);
        let field = field.unwrap_or_default();
        let Some(found) = found else {
            return Err(cli.error(format!("Could not find field {field} in item {item} in Bitwarden")));
        };
        results.insert(format!("{item}/{field}"), string_value(found.get("value").unwrap_or(&Value::Null)));
    }
    Ok(())
}

/// `bw status` as JSON; its `status` is `unauthenticated`, `locked` or `unlocked`.
fn status(cli: &VendorCli<'_>, session: &[(String, String)]) -> Result<String, SecretsError> {
    let output = cli.run_with(&["status"], RunOptions { env: session, ..RunOptions::default() })?;
    let json = cli.parse_json(&["status"], ruby::strip(&output.stdout))?;
    Ok(json.get("status").and_then(Value::as_str).unwrap_or_default().to_string())
}

/// Logs in and unlocks as needed (both may prompt on the terminal), then syncs. Returns the unlock session, if any.
fn login(cli: &VendorCli<'_>, account: &str) -> Result<Option<String>, SecretsError> {
    let mut state = status(cli, &[])?;
    if state == "unauthenticated" {
        cli.run(&["login", account])?;
        state = status(cli, &[])?;
    }
    let mut session = None;
    if state == "locked" {
        let unlock = cli.run(&["unlock", "--raw"])?;
        session = Some(ruby::strip(&unlock.stdout).to_string()).filter(|token| !token.is_empty());
        let session_env: Vec<(String, String)> =
            session.iter().map(|t| ("BW_SESSION".to_string(), t.clone())).collect();
        state = status(cli, &session_env)?;
    }
    if state != "unlocked" {
        return Err(cli.error("Failed to login to and unlock Bitwarden"));
    }
    let session_env: Vec<(String, String)> = session.iter().map(|t| ("BW_SESSION".to_string(), t.clone())).collect();
    if !cli.run_with(&["sync"], RunOptions { env: &session_env, ..RunOptions::default() })?.success {
        return Err(cli.error("Failed to sync Bitwarden"));
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const UNLOCKED: &str = r#"{"serverUrl":null,"lastSync":"2024-09-04T10:11:12.433Z",
      "userEmail":"email@example.com","status":"unlocked"}"#;
    const LOCKED: &str = r#"{"serverUrl":null,"userEmail":"email@example.com","status":"locked"}"#;
    const UNAUTHENTICATED: &str = r#"{"serverUrl":null,"lastSync":null,"status":"unauthenticated"}"#;
    const MYPASSWORD: &str =
        r#"{"object":"item","type":1,"name":"mypassword","login":{"username":null,"password":"secret123"}}"#;
    const MYITEM: &str = r#"{"object":"item","name":"myitem","fields":[
      {"name":"field1","value":"secret1","type":1},{"name":"field2","value":"blam","type":1}],
      "login":{"password":null}}"#;
    const MYNOTE: &str = r#"{"object":"item","type":2,"name":"noteitem","notes":"NOTES","secureNote":{"type":0}}"#;

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(
            Adapter::Bitwarden,
            fake.keyed_by("${BW_SESSION:+BW_SESSION=$BW_SESSION }$*"),
            secrets,
            Some("email@example.com"),
            from,
        )
    }

    fn unlocked() -> FakeCli {
        FakeCli::new("bw").on("status", UNLOCKED).on("sync", "")
    }

    #[test]
    fn fetch_passwords_and_fields() {
        let fake = unlocked().on("get item mypassword", MYPASSWORD).on("get item myitem", MYITEM);
        let results = run(fake, &["mypassword", "myitem/field1", "myitem/field2"], None).unwrap();
        assert_eq!(
            results.into_iter().collect::<Vec<_>>(),
            vec![
                ("mypassword".to_string(), Value::from("secret123")),
                ("myitem/field1".to_string(), Value::from("secret1")),
                ("myitem/field2".to_string(), Value::from("blam")),
            ]
        );
    }

    #[test]
    fn fetch_with_from_and_all_fields_of_an_item_without_password() {
        let fake = unlocked().on("get item myitem", MYITEM);
        let results = run(fake, &["field2"], Some("myitem")).unwrap();
        assert_eq!(results["myitem/field2"], "blam");
        let fake = unlocked().on("get item myitem", MYITEM);
        assert_eq!(run(fake, &["myitem"], None).unwrap().len(), 2);
    }

    #[test]
    fn note_without_fields_is_an_error() {
        let fake = unlocked().on("get item mynote", MYNOTE);
        let error = run(fake, &["mynote"], None).unwrap_err().to_string();
        assert_eq!(error, "bitwarden adapter: Item mynote is not a login type item and no fields were specified");
        let fake = unlocked().on("get item myitem", MYITEM);
        let error = run(fake, &["myitem/nope"], None).unwrap_err().to_string();
        assert_eq!(error, "bitwarden adapter: Could not find field nope in item myitem in Bitwarden");
    }

    #[test]
    fn login_and_unlock_with_session() {
        let fake = FakeCli::new("bw")
            .on_each("status", &[UNAUTHENTICATED, LOCKED])
            .on("login email@example.com", "You are logged in!")
            .on("unlock --raw", "0987654321")
            .on("BW_SESSION=0987654321 status", UNLOCKED)
            .on("BW_SESSION=0987654321 sync", "")
            .on("BW_SESSION=0987654321 get item mypassword", MYPASSWORD);
        assert_eq!(run(fake, &["mypassword"], None).unwrap()["mypassword"], "secret123");
    }

    #[test]
    fn still_locked_fails() {
        let fake = FakeCli::new("bw").on("status", LOCKED).on("unlock --raw", "");
        assert_eq!(
            run(fake, &["x"], None).unwrap_err().to_string(),
            "bitwarden adapter: Failed to login to and unlock Bitwarden"
        );
    }
}
