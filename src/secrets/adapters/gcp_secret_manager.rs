//! Google Cloud Secret Manager (`gcloud`): `gcloud secrets versions access VERSION --secret=NAME … --format=json`.
//!
//! Secrets are `[PROJECT/]NAME[/VERSION]` (project `default` and version `latest` when left out), keyed
//! `PROJECT/NAME`. `--account` is a gcloud account or `default`, optionally followed by `|SERVICE_ACCOUNT[,…]` to
//! impersonate.

use serde_json::Value;

use super::{Results, VendorCli, prefixed};
use crate::secrets::{SecretsError, ruby};

pub(super) fn fetch(
    cli: &VendorCli<'_>,
    secrets: &[String],
    account: &str,
    from: Option<&str>,
) -> Result<Results, SecretsError> {
    if !logged_in(cli)? {
        cli.run(&["auth", "login"])?;
        if !logged_in(cli)? {
            return Err(cli.error("could not login to gcloud"));
        }
    }
    let (user, service_account) = match account.split_once('|') {
        Some((user, service_account)) => (user, Some(service_account)),
        None => (account, None),
    };
    let mut results = Results::new();
    for secret in prefixed(secrets, from) {
        let mut parts = ruby::split_slash(&secret);
        if parts.len() == 1 {
            parts.insert(0, "default");
        }
        let [project, name, rest @ ..] = parts.as_slice() else {
            return Err(cli.error(format!("'{secret}' names no secret: write [PROJECT/]NAME[/VERSION]")));
        };
        let version = rest.first().copied().unwrap_or("latest");
        let item_name = format!("{project}/{name}");
        let secret_flag = format!("--secret={name}");
        let mut args = vec!["secrets", "versions", "access", version, &secret_flag];
        let project_flag = format!("--project={project}");
        let account_flag = format!("--account={user}");
        let impersonate_flag =
            service_account.map(|service_account| format!("--impersonate-service-account={service_account}"));
        if *project != "default" {
            args.push(&project_flag);
        }
        if user != "default" {
            args.push(&account_flag);
        }
        if let Some(flag) = &impersonate_flag {
            args.push(flag);
        }
        args.push("--format=json");
        let output = cli.run(&args)?;
        if !output.success {
            return Err(cli.error(format!("Could not read {item_name} from Google Secret Manager")));
        }
        let json = cli.parse_json(&args, ruby::strip(&output.stdout))?;
        let Some(data) = json.pointer("/payload/data").and_then(Value::as_str) else {
            return Err(cli.unexpected_output(&args, &output.stdout, "JSON with `payload.data`"));
        };
        let value = String::from_utf8_lossy(&ruby::decode64(data)).into_owned();
        results.insert(item_name, Value::String(value));
    }
    Ok(results)
}

/// Whether `gcloud auth list` lists any account.
fn logged_in(cli: &VendorCli<'_>) -> Result<bool, SecretsError> {
    let args = ["auth", "list", "--format=json"];
    let output = cli.run(&args)?;
    Ok(cli.parse_json(&args, &output.stdout)?.as_array().is_some_and(|accounts| !accounts.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const ACCOUNTS: &str = r#"[{"account":"me@example.com","status":"ACTIVE"}]"#;

    fn payload(value: &str) -> String {
        let encoded = match value {
            "secret1" => "c2VjcmV0MQ==",
            "secret2" => "c2VjcmV0Mg==",
            other => other,
        };
        format!(r#"{{"name":"projects/1/secrets/x/versions/1","payload":{{"data":"{encoded}","dataCrc32c":"1"}}}}"#)
    }

    fn run(fake: FakeCli, secrets: &[&str], account: &str, from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::GcpSecretManager, fake, secrets, Some(account), from)
    }

    #[test]
    fn fetch_with_projects_versions_and_defaults() {
        let fake = FakeCli::new("gcloud")
            .on("auth list --format=json", ACCOUNTS)
            .on("secrets versions access latest --secret=my-secret --format=json", &payload("secret1"))
            .on("secrets versions access 123 --secret=other --project=some-project --format=json", &payload("secret2"));
        let results = run(fake, &["my-secret", "some-project/other/123"], "default", None).unwrap();
        assert_eq!(results["default/my-secret"], "secret1");
        assert_eq!(results["some-project/other"], "secret2");
    }

    #[test]
    fn fetch_with_account_and_impersonation() {
        let fake = FakeCli::new("gcloud").on("auth list --format=json", ACCOUNTS).on(
            "secrets versions access latest --secret=s --project=p --account=me@example.com \
             --impersonate-service-account=sa@example.com --format=json",
            &payload("secret1"),
        );
        let results = run(fake, &["s"], "me@example.com|sa@example.com", Some("p")).unwrap();
        assert_eq!(results["p/s"], "secret1");
    }

    #[test]
    fn login_failure() {
        let fake = FakeCli::new("gcloud").on("auth list --format=json", "[]").on("auth login", "");
        assert_eq!(
            run(fake, &["s"], "default", None).unwrap_err().to_string(),
            "gcp adapter: could not login to gcloud"
        );
    }
}
