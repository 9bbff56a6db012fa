//! `berth secrets fetch|extract|print`: Kamal's `kamal secrets` commands, for the terminal and for `$(...)` in
//! secrets files, which runs them in-process ([`run_inline`]) with the same code.
//!
//! As in Kamal, `fetch` prints its result as shell-escaped JSON (so that `$SECRETS` can be passed unquoted to
//! `extract`), with or without `--inline`; `--inline` only hands the text back instead of printing it.

use std::fmt;
use std::io::Write;
use std::path::Path;

use clap::{Parser, Subcommand};
use indexmap::IndexMap;
use serde_json::Value;

use super::{Secrets, SecretsError, adapters, ruby};
use crate::environment::Environment;

/// `berth secrets …`.
#[derive(Clone, PartialEq, Eq, Subcommand)]
pub enum SecretsCommand {
    /// Fetch secrets from a vault and print them as one shell-escaped JSON object
    Fetch {
        /// Which vault adapter to use: 1password, bitwarden, bitwarden-sm, aws_secrets_manager, doppler, gcp,
        /// lastpass, enpass, passbolt or test
        #[arg(short = 'a', long)]
        adapter: String,
        /// The account identifier or username (required by 1password, bitwarden, gcp, lastpass and test)
        #[arg(long)]
        account: Option<String>,
        /// A vault, item, project or folder that each SECRET is relative to
        #[arg(long)]
        from: Option<String>,
        /// Hand the result back to the secrets file being read instead of printing it (what `$(...)` does)
        #[arg(long, hide = true)]
        inline: bool,
        /// The secrets to fetch, in the adapter's notation (for example Vault/Item/Field for 1password)
        secrets: Vec<String>,
    },
    /// Print one secret out of the JSON that `fetch` printed
    Extract {
        /// The secret's key, or the last `/` segment of its key
        name: String,
        /// The JSON object printed by `fetch` (in a secrets file: unquoted `$SECRETS`)
        secrets: String,
        /// Hand the value back to the secrets file being read instead of printing it (what `$(...)` does)
        #[arg(long, hide = true)]
        inline: bool,
    },
    /// Print every secret of the current secrets files as KEY=value (this shows the values)
    Print,
}

/// Hand-written so that the JSON given to `extract`, which holds secret values, never reaches a debug print.
impl fmt::Debug for SecretsCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsCommand::Fetch { adapter, account, from, inline, secrets } => f
                .debug_struct("Fetch")
                .field("adapter", adapter)
                .field("account", account)
                .field("from", from)
                .field("inline", inline)
                .field("secrets", secrets)
                .finish(),
            SecretsCommand::Extract { name, inline, .. } => f
                .debug_struct("Extract")
                .field("name", name)
                .field("secrets", &"[REDACTED]")
                .field("inline", inline)
                .finish(),
            SecretsCommand::Print => f.write_str("Print"),
        }
    }
}

/// Runs `berth secrets …`, writing what Kamal's `kamal secrets …` prints to `out`.
///
/// `root`, `secrets_path` and `destination` say which secrets files `print` reads; `fetch` runs vendor CLIs with
/// `env`'s variables, in `root`.
pub fn run(
    command: &SecretsCommand,
    root: &Path,
    secrets_path: &str,
    destination: Option<&str>,
    env: &Environment,
    out: &mut dyn Write,
) -> Result<(), SecretsError> {
    let text = match command {
        SecretsCommand::Fetch { adapter, account, from, secrets, .. } => {
            fetch(adapter, account.as_deref(), from.as_deref(), secrets, &env.with_cwd(root))?
        }
        SecretsCommand::Extract { name, secrets, .. } => extract(name, secrets)?,
        SecretsCommand::Print => {
            let secrets = Secrets::load(root, secrets_path, destination, env)?;
            for (name, value) in secrets.iter() {
                ruby::puts(out, &format!("{name}={value}")).map_err(SecretsError::Output)?;
            }
            return Ok(());
        }
    };
    ruby::puts(out, &text).map_err(SecretsError::Output)
}

/// The words of a `$(kamal secrets …)` command, as clap sees them: `secrets` plays the program name.
#[derive(Parser)]
#[command(name = "secrets", disable_help_subcommand = true)]
struct InlineCommand {
    #[command(subcommand)]
    command: SecretsCommand,
}

/// Runs `kamal secrets …` / `berth secrets …` from a `$(...)` in a secrets file and returns what replaces it, the
/// way Kamal's inline substitution calls its own CLI with `--inline`.
pub(crate) fn run_inline(command: &str, env: &Environment) -> Result<String, SecretsError> {
    let words = ruby::shellsplit(command).map_err(|error| SecretsError::Usage {
        command: "secrets".to_string(),
        reason: match error {
            ruby::ShellsplitError::UnmatchedQuote => "unmatched quote".to_string(),
            ruby::ShellsplitError::NulCharacter => "NUL character".to_string(),
        },
        fix: "close every quote of the command".to_string(),
    })?;
    // Name the command by its program and subcommand only: its other words may hold secret JSON.
    let label = words.iter().take(3).map(String::as_str).collect::<Vec<_>>().join(" ");
    match words.get(1..3) {
        Some([secrets, print]) if secrets == "secrets" && print == "print" => {
            return Err(SecretsError::PrintInsideSecretsFile);
        }
        Some([secrets, _]) if secrets == "secrets" => {}
        _ => {
            return Err(SecretsError::Usage {
                command: label,
                reason: "not a secrets subcommand".to_string(),
                fix: "write `kamal secrets fetch …` or `kamal secrets extract …`".to_string(),
            });
        }
    }
    let arguments = words.iter().skip(1).map(String::as_str).chain(["--inline"]);
    let parsed = InlineCommand::try_parse_from(arguments).map_err(|error| SecretsError::Usage {
        command: label,
        reason: usage_reason(&error),
        fix: "see `berth secrets --help` for the arguments".to_string(),
    })?;
    match parsed.command {
        SecretsCommand::Fetch { adapter, account, from, secrets, .. } => {
            fetch(&adapter, account.as_deref(), from.as_deref(), &secrets, env)
        }
        SecretsCommand::Extract { name, secrets, .. } => extract(&name, &secrets),
        SecretsCommand::Print => Err(SecretsError::PrintInsideSecretsFile),
    }
}

/// What clap found wrong, without echoing arguments (they may be secret JSON); a missing option is named.
fn usage_reason(error: &clap::Error) -> String {
    let reason = error.kind().as_str().unwrap_or("invalid arguments").to_string();
    match (error.kind(), error.get(clap::error::ContextKind::InvalidArg)) {
        (clap::error::ErrorKind::MissingRequiredArgument, Some(missing)) => format!("{reason}: {missing}"),
        _ => reason,
    }
}

/// `kamal secrets fetch`: the adapter's results as JSON, shell-escaped.
fn fetch(
    adapter: &str,
    account: Option<&str>,
    from: Option<&str>,
    secrets: &[String],
    env: &Environment,
) -> Result<String, SecretsError> {
    let adapter = adapters::lookup(adapter)?;
    let account = account.filter(|account| !ruby::strip(account).is_empty());
    let results = adapters::fetch(adapter, secrets, account, from, env)?;
    Ok(ruby::shellescape(&json_object(&results)))
}

/// `JSON.dump` of a Ruby hash: keys in insertion order, whatever serde_json's map ordering is.
fn json_object(results: &IndexMap<String, Value>) -> String {
    let members: Vec<String> =
        results.iter().map(|(key, value)| format!("{}:{}", Value::String(key.clone()), value)).collect();
    format!("{{{}}}", members.join(","))
}

/// `kamal secrets extract NAME JSON`: the value at key `NAME`, or at the first key ending in `/NAME`.
fn extract(name: &str, secrets: &str) -> Result<String, SecretsError> {
    let parsed: Value = serde_json::from_str(secrets)
        .map_err(|error| SecretsError::ExtractInput { reason: format!("it is not JSON: {error}") })?;
    let Value::Object(object) = parsed else {
        return Err(SecretsError::ExtractInput { reason: "it is JSON but not an object".to_string() });
    };
    // Ruby's `hash[name] || hash.find { … }`: a null (or false) value falls through to the suffix search.
    let suffix = format!("/{name}");
    let value = object
        .get(name)
        .filter(|value| !matches!(value, Value::Null | Value::Bool(false)))
        .or_else(|| object.iter().find(|(key, _)| key.ends_with(&suffix)).map(|(_, value)| value));
    match value {
        None | Some(Value::Null) => Err(SecretsError::ExtractNotFound { name: name.to_string() }),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Ok(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment::from_vars([("PATH", "/usr/bin:/bin")], "/")
    }

    fn run_to_string(command: &SecretsCommand, root: &Path, destination: Option<&str>) -> Result<String, SecretsError> {
        let mut out = Vec::new();
        run(command, root, ".kamal/secrets", destination, &env(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn fetch_command(adapter: &str, account: Option<&str>, from: Option<&str>, secrets: &[&str]) -> SecretsCommand {
        SecretsCommand::Fetch {
            adapter: adapter.to_string(),
            account: account.map(str::to_string),
            from: from.map(str::to_string),
            inline: false,
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn fetch_prints_shell_escaped_json() {
        let out = run_to_string(&fetch_command("test", Some("acct"), None, &["A/b", "C"]), Path::new("/"), None);
        assert_eq!(out.unwrap(), "\\{\\\"A/b\\\":\\\"b/A\\\",\\\"C\\\":\\\"C\\\"\\}\n");
    }

    #[test]
    fn fetch_requires_an_account_where_the_adapter_does() {
        let error = run_to_string(&fetch_command("test", Some("  "), None, &["A"]), Path::new("/"), None).unwrap_err();
        assert!(matches!(error, SecretsError::MissingAccount { adapter: "test", .. }), "{error}");
    }

    #[test]
    fn unknown_adapter_suggests_the_closest() {
        let error = run_to_string(&fetch_command("1pasword", None, None, &[]), Path::new("/"), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown secrets adapter '1pasword' (did you mean '1password'?): use one of 1password, bitwarden, \
             bitwarden-sm, aws_secrets_manager, doppler, gcp, lastpass, enpass, passbolt, test"
        );
    }

    #[test]
    fn extract_by_key_or_last_segment() {
        let json = r#"{"Vault/Item/TOKEN":"t","NULLED":null,"Other/NULLED":"n","PORT":5432,"TOKEN2":"x"}"#;
        assert_eq!(extract("TOKEN", json).unwrap(), "t");
        assert_eq!(extract("Vault/Item/TOKEN", json).unwrap(), "t");
        assert_eq!(extract("NULLED", json).unwrap(), "n");
        assert_eq!(extract("PORT", json).unwrap(), "5432");
        assert!(matches!(extract("Item", json), Err(SecretsError::ExtractNotFound { .. })));
        assert!(matches!(extract("X", "[1]"), Err(SecretsError::ExtractInput { .. })));
        // Quoted `"$SECRETS"` keeps the backslashes of the escaped JSON, which is then not JSON: as in Kamal.
        let error = extract("X", r#"\{"X":"1"\}"#).unwrap_err();
        assert!(error.to_string().contains("it is not JSON") && !error.to_string().contains("\"1\""), "{error}");
    }

    #[test]
    fn extract_takes_the_first_matching_key_in_file_order() {
        assert_eq!(extract("K", r#"{"b/K":"first","a/K":"second"}"#).unwrap(), "first");
    }

    #[test]
    fn print_shows_every_secret() {
        let dir = super::super::test_support::TempDir::new("print");
        std::fs::create_dir_all(dir.path().join(".kamal")).unwrap();
        std::fs::write(dir.path().join(".kamal/secrets-common"), "A=1\nB=\"two words\"").unwrap();
        std::fs::write(dir.path().join(".kamal/secrets.prod"), "B=3").unwrap();
        assert_eq!(run_to_string(&SecretsCommand::Print, dir.path(), Some("prod")).unwrap(), "A=1\nB=3\n");
    }

    #[test]
    fn inline_usage_errors_do_not_echo_arguments() {
        let error = run_inline("kamal secrets extract A '{\"A\":\"s3cret\"}' extra", &env()).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("`kamal secrets extract`: unexpected argument"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        let error = run_inline("kamal secrets fetch A", &env()).unwrap_err();
        assert!(error.to_string().contains("--adapter"), "{error}");
        assert!(matches!(run_inline("kamal secrets print", &env()), Err(SecretsError::PrintInsideSecretsFile)));
        assert!(matches!(run_inline("kamal secrets 'x", &env()), Err(SecretsError::Usage { .. })));
    }

    #[test]
    fn debug_hides_the_extract_json() {
        let command = SecretsCommand::Extract { name: "A".into(), secrets: "{\"A\":\"s3cret\"}".into(), inline: true };
        assert!(!format!("{command:?}").contains("s3cret"));
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        InlineCommand::command().debug_assert();
    }
}
