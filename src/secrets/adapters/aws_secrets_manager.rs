//! AWS Secrets Manager (`aws`): one `aws secretsmanager batch-get-secret-value --secret-id-list …` for all secrets.
//!
//! A secret whose string is a JSON object becomes one result per member, keyed `name/member`; any other secret
//! string is the value of `name` (JSON scalars as their JSON text, non-JSON as it is). `--account` is the profile.

use serde_json::Value;

use super::{Results, VendorCli, prefixed};
use crate::secrets::SecretsError;

pub(super) fn fetch(
    cli: &VendorCli<'_>,
    secrets: &[String],
    profile: Option<&str>,
    from: Option<&str>,
) -> Result<Results, SecretsError> {
    let secrets = prefixed(secrets, from);
    let mut args = vec!["secretsmanager", "batch-get-secret-value", "--secret-id-list"];
    args.extend(secrets.iter().map(String::as_str));
    if let Some(profile) = profile {
        args.extend(["--profile", profile]);
    }
    args.extend(["--output", "json"]);
    let output = cli.run(&args)?;
    if !output.success {
        return Err(cli.error(format!("Could not read {} from AWS Secrets Manager", secrets.join(", "))));
    }
    let response = cli.parse_json(&args, &output.stdout)?;
    if let Some(errors) = response.get("Errors").and_then(Value::as_array).filter(|errors| !errors.is_empty()) {
        let field = |error: &Value, name: &str| error.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let messages: Vec<String> =
            errors.iter().map(|error| format!("{}: {}", field(error, "SecretId"), field(error, "Message"))).collect();
        return Err(cli.error(messages.join(" ")));
    }
    let Some(values) = response.get("SecretValues").and_then(Value::as_array) else {
        return Err(cli.unexpected_output(&args, &output.stdout, "JSON with `SecretValues`"));
    };
    let mut results = Results::new();
    for secret in values {
        let name = secret.get("Name").and_then(Value::as_str).unwrap_or_default();
        let Some(string) = secret.get("SecretString").and_then(Value::as_str) else {
            return Err(cli.error(format!("{name} has no SecretString (binary secrets are not supported)")));
        };
        match serde_json::from_str::<Value>(string) {
            Ok(Value::Object(members)) => {
                for (key, value) in members {
                    results.insert(format!("{name}/{key}"), Value::String(stringify(&value)));
                }
            }
            Ok(other) => {
                results.insert(name.to_string(), Value::String(stringify(&other)));
            }
            Err(_) => {
                results.insert(name.to_string(), Value::String(string.to_string()));
            }
        }
    }
    Ok(results)
}

/// Strings as they are, anything else as JSON (Kamal's `stringify_secret_value`).
fn stringify(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Adapter, fetch as adapter_fetch};
    use super::*;
    use crate::secrets::test_support::{FakeCli, TempDir, env_in};

    fn run(
        fake: FakeCli,
        secrets: &[&str],
        account: Option<&str>,
        from: Option<&str>,
    ) -> Result<Results, SecretsError> {
        let dir = TempDir::new("aws");
        fake.install(dir.path());
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        adapter_fetch(Adapter::AwsSecretsManager, &secrets, account, from, &env_in(dir.path(), &[]))
    }

    const RESPONSE: &str = r#"{"SecretValues":[
      {"ARN":"arn:1","Name":"secret/KEY1","VersionId":"v",
       "SecretString":"{\"KEY1\":\"VALUE1\",\"KEY2\":\"VALUE2\",\"NESTED\":{\"a\":1}}"},
      {"ARN":"arn:2","Name":"secret/KEY3","SecretString":"VALUE3"},
      {"ARN":"arn:3","Name":"num","SecretString":"42"}],"Errors":[]}"#;

    #[test]
    fn fetch_expands_json_secrets() {
        let fake = FakeCli::new("aws").on(
            "secretsmanager batch-get-secret-value --secret-id-list secret/KEY1 secret/KEY3 num \
             --profile default --output json",
            RESPONSE,
        );
        let results = run(fake, &["secret/KEY1", "secret/KEY3", "num"], Some("default"), None).unwrap();
        assert_eq!(
            results.into_iter().collect::<Vec<_>>(),
            vec![
                ("secret/KEY1/KEY1".to_string(), Value::from("VALUE1")),
                ("secret/KEY1/KEY2".to_string(), Value::from("VALUE2")),
                ("secret/KEY1/NESTED".to_string(), Value::from(r#"{"a":1}"#)),
                ("secret/KEY3".to_string(), Value::from("VALUE3")),
                ("num".to_string(), Value::from("42")),
            ]
        );
    }

    #[test]
    fn fetch_with_from_and_no_profile() {
        let fake = FakeCli::new("aws")
            .on("secretsmanager batch-get-secret-value --secret-id-list secret/KEY3 --output json", RESPONSE);
        assert_eq!(run(fake, &["KEY3"], None, Some("secret")).unwrap()["secret/KEY3"], "VALUE3");
    }

    #[test]
    fn vault_errors_are_reported() {
        let response = r#"{"SecretValues":[],"Errors":[{"SecretId":"unknown",
          "ErrorCode":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}]}"#;
        let fake = FakeCli::new("aws")
            .on("secretsmanager batch-get-secret-value --secret-id-list unknown --output json", response);
        assert_eq!(
            run(fake, &["unknown"], None, None).unwrap_err().to_string(),
            "aws_secrets_manager adapter: unknown: Secrets Manager can't find the specified secret."
        );
    }
}
