//! Doppler (`doppler`): `doppler secrets get NAME… --json [-p PROJECT -c CONFIG]`, values from `computed`.
//!
//! Secrets are `PROJECT/CONFIG/NAME` (usually `--from PROJECT/CONFIG`), except with a service token
//! (`DOPPLER_TOKEN=dp.st…`), which already names both.

use serde_json::Value;

use super::{Results, RunOptions, VendorCli, prefixed, string_value};
use crate::secrets::{SecretsError, ruby};

pub(super) fn fetch(cli: &VendorCli<'_>, secrets: &[String], from: Option<&str>) -> Result<Results, SecretsError> {
    let quiet = RunOptions { quiet: true, ..RunOptions::default() };
    if !cli.run_with(&["me", "--json"], quiet)?.success && !cli.run(&["login", "-y"])?.success {
        return Err(cli.error("Failed to login to Doppler"));
    }
    let secrets = prefixed(secrets, from);
    let Some(first) = secrets.first() else {
        return Err(cli.error("no secrets to fetch: name them, e.g. `--from PROJECT/CONFIG SECRET…`"));
    };
    let mut args = vec!["secrets", "get"];
    args.extend(secrets.iter().map(|secret| ruby::split_slash(secret).last().copied().unwrap_or_default()));
    args.push("--json");
    let service_token = cli_env_token(cli).is_some_and(|token| token.starts_with("dp.st"));
    if !service_token {
        let parts = ruby::split_slash(first);
        let [project, config, ..] = parts.as_slice() else {
            return Err(SecretsError::MissingFrom {
                adapter: cli.adapter.name(),
                hint: "Missing project or config from '--from=project/config' option",
            });
        };
        args.extend(["-p", project, "-c", config]);
    }
    let output = cli.run(&args)?;
    if !output.success {
        return Err(cli.error(format!("Could not read {} from Doppler", secrets.join(", "))));
    }
    let Value::Object(items) = cli.parse_json(&args, &output.stdout)? else {
        return Err(cli.unexpected_output(&args, &output.stdout, "a JSON object of secrets"));
    };
    Ok(items
        .iter()
        .map(|(name, item)| (name.clone(), string_value(item.get("computed").unwrap_or(&Value::Null))))
        .collect())
}

fn cli_env_token<'a>(cli: &VendorCli<'a>) -> Option<&'a str> {
    cli.environment().get("DOPPLER_TOKEN")
}

#[cfg(test)]
mod tests {
    use super::super::{Adapter, fetch as adapter_fetch};
    use super::*;
    use crate::secrets::test_support::{FakeCli, TempDir, env_in};

    const ITEMS: &str = r#"{"SECRET1":{"computed":"secret1","computedVisibility":"unmasked","note":""},
      "FSECRET1":{"computed":"fsecret1","note":""}}"#;

    fn run(
        fake: FakeCli,
        secrets: &[&str],
        from: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Results, SecretsError> {
        let dir = TempDir::new("doppler");
        fake.install(dir.path());
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        adapter_fetch(Adapter::Doppler, &secrets, None, from, &env_in(dir.path(), vars))
    }

    #[test]
    fn fetch_with_from_or_in_the_secret() {
        let fake = || {
            FakeCli::new("doppler")
                .on("me --json", "{}")
                .on("secrets get SECRET1 FSECRET1 --json -p my-project -c prd", ITEMS)
        };
        let results = run(fake(), &["SECRET1", "FSECRET1"], Some("my-project/prd"), &[]).unwrap();
        assert_eq!(results["FSECRET1"], "fsecret1");
        let results = run(fake(), &["my-project/prd/SECRET1", "my-project/prd/FSECRET1"], None, &[]).unwrap();
        assert_eq!(results["SECRET1"], "secret1");
    }

    #[test]
    fn service_token_needs_no_project() {
        let fake = FakeCli::new("doppler").on("me --json", "{}").on("secrets get SECRET1 FSECRET1 --json", ITEMS);
        let results = run(fake, &["SECRET1", "FSECRET1"], None, &[("DOPPLER_TOKEN", "dp.st.xxxx")]).unwrap();
        assert_eq!(results.len(), 2);
    }

    #[test]
    fn login_when_needed_and_missing_project() {
        let fake = FakeCli::new("doppler")
            .on_status("me --json", "", 1)
            .on("login -y", "")
            .on("secrets get SECRET1 --json -p p -c c", ITEMS);
        assert_eq!(run(fake, &["SECRET1"], Some("p/c"), &[]).unwrap()["SECRET1"], "secret1");
        let fake = FakeCli::new("doppler").on("me --json", "{}");
        let error = run(fake, &["FSECRET1"], None, &[]).unwrap_err().to_string();
        assert_eq!(
            error,
            "the doppler adapter needs `--from`: Missing project or config from '--from=project/config' option"
        );
    }
}
