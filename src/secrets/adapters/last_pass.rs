//! LastPass (`lpass`): `lpass status`, `lpass login ACCOUNT` if needed, then one `lpass show NAME… --json`;
//! results are keyed by each entry's `fullname`.

use serde_json::Value;

use super::{Results, VendorCli, prefixed, string_value};
use crate::secrets::{SecretsError, ruby};

pub(super) fn fetch(
    cli: &VendorCli<'_>,
    secrets: &[String],
    account: &str,
    from: Option<&str>,
) -> Result<Results, SecretsError> {
    let status = cli.run(&["status", "--color", "never"])?;
    if ruby::strip(&status.stdout) != format!("Logged in as {account}.") && !cli.run(&["login", account])?.success {
        return Err(cli.error("Failed to login to LastPass"));
    }
    let secrets = prefixed(secrets, from);
    let mut args = vec!["show"];
    args.extend(secrets.iter().map(String::as_str));
    args.push("--json");
    let output = cli.run(&args)?;
    if !output.success {
        return Err(cli.error(format!("Could not read {} from LastPass", secrets.join(", "))));
    }
    let Value::Array(items) = cli.parse_json(&args, &output.stdout)? else {
        return Err(cli.unexpected_output(&args, &output.stdout, "a JSON list of entries"));
    };
    let mut results = Results::new();
    for item in &items {
        let name = item.get("fullname").and_then(Value::as_str).unwrap_or_default();
        results.insert(name.to_string(), string_value(item.get("password").unwrap_or(&Value::Null)));
    }
    let missing: Vec<&str> =
        secrets.iter().filter(|secret| !results.contains_key(*secret)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(cli.error(format!("Could not find {} in LastPass", missing.join(", "))));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const ENTRIES: &str = r#"[
      {"id":"1","name":"SECRET1","fullname":"Folder/SECRET1","username":"","password":"secret1"},
      {"id":"2","name":"FSECRET1","fullname":"Folder/FSECRET1","password":"fsecret1"}]"#;

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::LastPass, fake, secrets, Some("email@example.com"), from)
    }

    #[test]
    fn fetch_logged_in() {
        let fake = FakeCli::new("lpass")
            .on("status --color never", "Logged in as email@example.com.")
            .on("show Folder/SECRET1 Folder/FSECRET1 --json", ENTRIES);
        let results = run(fake, &["SECRET1", "FSECRET1"], Some("Folder")).unwrap();
        assert_eq!(results["Folder/FSECRET1"], "fsecret1");
    }

    #[test]
    fn login_then_report_missing_entries() {
        let fake = FakeCli::new("lpass")
            .on("status --color never", "Not logged in.")
            .on("login email@example.com", "")
            .on("show Folder/SECRET1 Folder/NOPE --json", &ENTRIES.replace("FSECRET1", "OTHER"));
        let error = run(fake, &["Folder/SECRET1", "Folder/NOPE"], None).unwrap_err();
        assert_eq!(error.to_string(), "lastpass adapter: Could not find Folder/NOPE in LastPass");
        let fake = FakeCli::new("lpass").on("status --color never", "Not logged in.").on_status(
            "login email@example.com",
            "",
            1,
        );
        assert_eq!(run(fake, &["x"], None).unwrap_err().to_string(), "lastpass adapter: Failed to login to LastPass");
    }
}
