//! Enpass (`enpass-cli`): `enpass-cli -json -vault VAULT show TITLE…`, the vault path given as `--from`.
//!
//! Secrets are `Title` (every password of the item, keyed `Title/label` or `Title`) or `Title/label`.

use indexmap::IndexSet;
use serde_json::Value;

use super::{Results, VendorCli};
use crate::secrets::{SecretsError, ruby};

pub(super) fn fetch(cli: &VendorCli<'_>, secrets: &[String], from: Option<&str>) -> Result<Results, SecretsError> {
    let Some(vault) = from else {
        return Err(SecretsError::MissingFrom {
            adapter: cli.adapter.name(),
            hint: "pass the path of the Enpass vault directory",
        });
    };
    // `rpartition("/")`: `Title/label` asks for one password of `Title`, a bare `Title` for all of them.
    let titles: IndexSet<&str> =
        secrets.iter().map(|secret| secret.rsplit_once('/').map_or(secret.as_str(), |(title, _)| title)).collect();
    let mut args = vec!["-json", "-vault", vault, "show"];
    args.extend(titles.iter().copied());
    // Kamal does not look at enpass-cli's exit status, only at what it printed.
    let output = cli.run(&args)?;
    let Value::Array(items) = cli.parse_json(&args, ruby::strip(&output.stdout))? else {
        return Err(cli.unexpected_output(&args, &output.stdout, "a JSON list of items"));
    };
    let mut results = Results::new();
    for item in &items {
        let text = |name: &str| item.get(name).and_then(Value::as_str);
        let (Some(title), Some(password)) = (text("title"), text("password").filter(|p| !ruby::strip(p).is_empty()))
        else {
            continue;
        };
        let key = match text("label").filter(|label| !label.is_empty()) {
            Some(label) => format!("{title}/{label}"),
            None => title.to_string(),
        };
        if secrets.iter().any(|secret| secret == title || *secret == key) {
            if results.contains_key(&key) {
                return Err(cli.error(format!("{key} is present more than once")));
            }
            results.insert(key, Value::String(password.to_string()));
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::super::Adapter;
    use super::*;
    use crate::secrets::test_support::{FakeCli, fetch_with_fake};

    const ITEMS: &str = r#"[
      {"category":"computer","label":"SECRET_1","login":"","password":"my-password-1","title":"FooBar",
       "type":"password"},
      {"category":"computer","label":"SECRET_2","password":"my-password-2","title":"FooBar","type":"password"},
      {"category":"computer","label":"","password":"my-password-3","title":"Hello","type":"password"},
      {"category":"computer","label":"SECRET_3","password":"","title":"FooBar","type":"password"}
    ]"#;

    fn run(fake: FakeCli, secrets: &[&str], from: Option<&str>) -> Result<Results, SecretsError> {
        fetch_with_fake(Adapter::Enpass, fake, secrets, None, from)
    }

    #[test]
    fn fetch_one_label_or_every_password_of_an_item() {
        let fake = FakeCli::new("enpass-cli").on("-json -vault vault-path show FooBar Hello", ITEMS);
        let results = run(fake, &["FooBar/SECRET_1", "Hello"], Some("vault-path")).unwrap();
        assert_eq!(
            results.into_iter().collect::<Vec<_>>(),
            vec![
                ("FooBar/SECRET_1".to_string(), Value::from("my-password-1")),
                ("Hello".to_string(), Value::from("my-password-3")),
            ]
        );
        let fake = FakeCli::new("enpass-cli").on("-json -vault vault-path show FooBar", ITEMS);
        assert_eq!(run(fake, &["FooBar"], Some("vault-path")).unwrap().len(), 2);
    }

    #[test]
    fn vault_is_required() {
        let error = run(FakeCli::new("enpass-cli"), &["FooBar"], None).unwrap_err();
        assert!(matches!(error, SecretsError::MissingFrom { adapter: "enpass", .. }), "{error}");
    }
}
