//! Vault adapters behind `berth secrets fetch --adapter NAME`: each drives its vendor's CLI with the commands and
//! argument order Kamal's adapter uses, and returns the same keys and values.
//!
//! Vendor CLIs are run directly (no shell) with the load's environment; session tokens travel in environment
//! variables (`BW_SESSION`, `OP_SESSION_*`), never in arguments.

mod aws_secrets_manager;
mod bitwarden;
mod bitwarden_secrets_manager;
mod doppler;
mod enpass;
mod gcp_secret_manager;
mod last_pass;
mod one_password;
mod passbolt;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use indexmap::IndexMap;
use serde_json::Value;

use super::{SecretsError, ruby};
use crate::environment::Environment;

/// A fetch's results: secret key to value, in the order the vault returned them (a value may be JSON `null`).
pub(crate) type Results = IndexMap<String, Value>;

/// The adapters Kamal ships, under the names `--adapter` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Adapter {
    OnePassword,
    Bitwarden,
    BitwardenSecretsManager,
    AwsSecretsManager,
    Doppler,
    GcpSecretManager,
    LastPass,
    Enpass,
    Passbolt,
    Test,
}

const ALL: [Adapter; 10] = [
    Adapter::OnePassword,
    Adapter::Bitwarden,
    Adapter::BitwardenSecretsManager,
    Adapter::AwsSecretsManager,
    Adapter::Doppler,
    Adapter::GcpSecretManager,
    Adapter::LastPass,
    Adapter::Enpass,
    Adapter::Passbolt,
    Adapter::Test,
];

/// A vendor CLI an adapter needs, and how to tell the user to get it.
pub(crate) struct Vendor {
    pub program: &'static str,
    pub cli: &'static str,
    /// The arguments Kamal runs to check that the CLI is installed.
    pub version_args: &'static [&'static str],
    pub install: &'static str,
}

impl Adapter {
    /// The name `--adapter` takes (Kamal also accepts its class names, see [`lookup`]).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Adapter::OnePassword => "1password",
            Adapter::Bitwarden => "bitwarden",
            Adapter::BitwardenSecretsManager => "bitwarden-sm",
            Adapter::AwsSecretsManager => "aws_secrets_manager",
            Adapter::Doppler => "doppler",
            Adapter::GcpSecretManager => "gcp",
            Adapter::LastPass => "lastpass",
            Adapter::Enpass => "enpass",
            Adapter::Passbolt => "passbolt",
            Adapter::Test => "test",
        }
    }

    /// Kamal's class name in snake case, which `--adapter` accepts too.
    fn class_name(self) -> &'static str {
        match self {
            Adapter::OnePassword => "one_password",
            Adapter::BitwardenSecretsManager => "bitwarden_secrets_manager",
            Adapter::GcpSecretManager => "gcp_secret_manager",
            Adapter::LastPass => "last_pass",
            other => other.name(),
        }
    }

    pub(crate) fn requires_account(self) -> bool {
        !matches!(
            self,
            Adapter::BitwardenSecretsManager
                | Adapter::AwsSecretsManager
                | Adapter::Doppler
                | Adapter::Enpass
                | Adapter::Passbolt
        )
    }

    fn account_hint(self) -> &'static str {
        match self {
            Adapter::OnePassword => "pass your 1Password account (sign-in address, email or account ID)",
            Adapter::Bitwarden => "pass the email address of your Bitwarden account",
            Adapter::GcpSecretManager => "pass a gcloud account, `default`, or `USER|SERVICE_ACCOUNT` to impersonate",
            Adapter::LastPass => "pass the email address of your LastPass account",
            _ => "pass the account identifier or username",
        }
    }

    pub(crate) fn vendor(self) -> Option<Vendor> {
        let vendor = |program, cli, version_args, install| Some(Vendor { program, cli, version_args, install });
        match self {
            Adapter::OnePassword => {
                vendor("op", "1Password CLI", &["--version"], "https://developer.1password.com/docs/cli/get-started/")
            }
            Adapter::Bitwarden => vendor(
                "bw",
                "Bitwarden CLI",
                &["--version"],
                "`npm install -g @bitwarden/cli`, https://bitwarden.com/help/cli/",
            ),
            Adapter::BitwardenSecretsManager => vendor(
                "bws",
                "Bitwarden Secrets Manager CLI",
                &["--version"],
                "https://bitwarden.com/help/secrets-manager-cli/",
            ),
            Adapter::AwsSecretsManager => vendor(
                "aws",
                "AWS CLI",
                &["--version"],
                "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html",
            ),
            Adapter::Doppler => {
                vendor("doppler", "Doppler CLI", &["--version"], "https://docs.doppler.com/docs/install-cli")
            }
            Adapter::GcpSecretManager => {
                vendor("gcloud", "gcloud CLI", &["--version"], "https://cloud.google.com/sdk/docs/install")
            }
            Adapter::LastPass => vendor(
                "lpass",
                "LastPass CLI",
                &["--version"],
                "`brew install lastpass-cli` or `apt install lastpass-cli`, https://github.com/lastpass/lastpass-cli",
            ),
            Adapter::Enpass => vendor("enpass-cli", "Enpass CLI", &["version"], "https://github.com/hazcod/enpass-cli"),
            Adapter::Passbolt => {
                vendor("passbolt", "Passbolt CLI", &["--version"], "https://github.com/passbolt/go-passbolt-cli")
            }
            Adapter::Test => None,
        }
    }
}

/// The adapter called `name`, in any case: Kamal's `--adapter` names, or its adapters' class names in snake case
/// (`one_password`, `last_pass`, `gcp_secret_manager`, `bitwarden_secrets_manager`), which Kamal accepts too.
pub(crate) fn lookup(name: &str) -> Result<Adapter, SecretsError> {
    let lower = name.to_ascii_lowercase();
    if let Some(adapter) = ALL.into_iter().find(|adapter| lower == adapter.name() || lower == adapter.class_name()) {
        return Ok(adapter);
    }
    let closest = ALL
        .into_iter()
        .map(|adapter| (strsim::jaro_winkler(&lower, adapter.name()), adapter.name()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score >= 0.8);
    Err(SecretsError::UnknownAdapter {
        name: name.to_string(),
        suggestion: closest.map(|(_, name)| format!(" (did you mean '{name}'?)")).unwrap_or_default(),
        known: ALL.map(Adapter::name).join(", "),
    })
}

/// Kamal's `Adapters::Base#fetch`: the account check, the CLI check, login, then the adapter's own fetch.
pub(crate) fn fetch(
    adapter: Adapter,
    secrets: &[String],
    account: Option<&str>,
    from: Option<&str>,
    env: &Environment,
) -> Result<Results, SecretsError> {
    if adapter.requires_account() && account.is_none() {
        return Err(SecretsError::MissingAccount { adapter: adapter.name(), hint: adapter.account_hint() });
    }
    let Some(vendor) = adapter.vendor() else {
        return Ok(test_fetch(secrets, from));
    };
    let cli = VendorCli::locate(adapter, &vendor, env)?;
    let account = account.unwrap_or_default();
    match adapter {
        Adapter::OnePassword => one_password::fetch(&cli, secrets, account, from),
        Adapter::Bitwarden => bitwarden::fetch(&cli, secrets, account, from),
        Adapter::BitwardenSecretsManager => bitwarden_secrets_manager::fetch(&cli, secrets, from),
        Adapter::AwsSecretsManager => {
            aws_secrets_manager::fetch(&cli, secrets, (!account.is_empty()).then_some(account), from)
        }
        Adapter::Doppler => doppler::fetch(&cli, secrets, from),
        Adapter::GcpSecretManager => gcp_secret_manager::fetch(&cli, secrets, account, from),
        Adapter::LastPass => last_pass::fetch(&cli, secrets, account, from),
        Adapter::Enpass => enpass::fetch(&cli, secrets, from),
        Adapter::Passbolt => passbolt::fetch(&cli, secrets, from),
        Adapter::Test => Ok(test_fetch(secrets, from)),
    }
}

/// Kamal's test adapter: each secret maps to its own name reversed (`LPAREN`/`RPAREN` spelled as parentheses
/// first, so tests can produce values that need escaping).
fn test_fetch(secrets: &[String], from: Option<&str>) -> Results {
    prefixed(secrets, from)
        .into_iter()
        .map(|secret| {
            let value: String = secret.replace("LPAREN", "(").replace("RPAREN", ")").chars().rev().collect();
            (secret, Value::String(value))
        })
        .collect()
}

/// Kamal's `prefixed_secrets`: each secret under `from/`, when there is a `from`.
pub(crate) fn prefixed(secrets: &[String], from: Option<&str>) -> Vec<String> {
    secrets.iter().map(|secret| from.map_or_else(|| secret.clone(), |from| format!("{from}/{secret}"))).collect()
}

/// What a vendor command printed and whether it succeeded.
pub(crate) struct Captured {
    pub success: bool,
    pub stdout: String,
}

/// How to run one vendor command.
#[derive(Default)]
pub(crate) struct RunOptions<'a> {
    /// Extra environment, such as a session token.
    pub env: &'a [(String, String)],
    /// Send stderr to /dev/null, as Kamal does for its probing commands (`2> /dev/null`).
    pub quiet: bool,
}

/// A vendor CLI found on the environment's PATH.
pub(crate) struct VendorCli<'a> {
    pub adapter: Adapter,
    program: &'static str,
    path: PathBuf,
    env: &'a Environment,
}

impl<'a> VendorCli<'a> {
    /// Finds the CLI and runs Kamal's installed-check (`op --version`, …) on it.
    fn locate(adapter: Adapter, vendor: &Vendor, env: &'a Environment) -> Result<VendorCli<'a>, SecretsError> {
        let not_installed = || SecretsError::NotInstalled {
            adapter: adapter.name(),
            cli: vendor.cli,
            program: vendor.program,
            install: vendor.install,
        };
        let path = env.find_program(vendor.program).ok_or_else(not_installed)?;
        let cli = VendorCli { adapter, program: vendor.program, path, env };
        if !cli.run_with(vendor.version_args, RunOptions { quiet: true, ..RunOptions::default() })?.success {
            return Err(not_installed());
        }
        Ok(cli)
    }

    /// Runs the CLI with `args`; stdin and stderr are the user's, for password prompts and the CLI's own errors.
    pub(crate) fn run(&self, args: &[&str]) -> Result<Captured, SecretsError> {
        self.run_with(args, RunOptions::default())
    }

    pub(crate) fn run_with(&self, args: &[&str], options: RunOptions<'_>) -> Result<Captured, SecretsError> {
        let mut command = Command::new(&self.path);
        command
            .args(args)
            .env_clear()
            .envs(self.env.vars())
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.env.cwd())
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(if options.quiet { Stdio::null() } else { Stdio::inherit() });
        let output = super::spawn_output(&mut command)
            .map_err(|source| SecretsError::Spawn { program: self.program.to_string(), source })?;
        Ok(Captured { success: output.status.success(), stdout: String::from_utf8_lossy(&output.stdout).into_owned() })
    }

    /// The environment the CLI runs in, for adapters that read it (a Doppler service token).
    pub(crate) fn environment(&self) -> &'a Environment {
        self.env
    }

    /// Kamal's `raise RuntimeError, message`.
    pub(crate) fn error(&self, message: impl Into<String>) -> SecretsError {
        SecretsError::Vendor { adapter: self.adapter.name(), message: message.into() }
    }

    /// The JSON a command printed, or an error saying the CLI printed nothing or something else.
    pub(crate) fn parse_json(&self, args: &[&str], stdout: &str) -> Result<Value, SecretsError> {
        serde_json::from_str(stdout).map_err(|error| self.unexpected_output(args, stdout, &format!("JSON ({error})")))
    }

    /// An error for output that is not what Kamal's adapter expects (shown without the output: it may hold secrets).
    pub(crate) fn unexpected_output(&self, args: &[&str], stdout: &str, expected: &str) -> SecretsError {
        let problem = if ruby::strip(stdout).is_empty() {
            format!("printed nothing where {expected} was expected")
        } else {
            format!("printed something other than {expected}")
        };
        SecretsError::VendorOutput {
            adapter: self.adapter.name(),
            command: std::iter::once(self.program).chain(args.iter().copied()).collect::<Vec<_>>().join(" "),
            problem,
            fix: "run that command yourself to see what the vault says (is the CLI logged in and up to date?)",
        }
    }
}

/// `value` as Ruby would put it into the results: strings as they are, anything else as JSON.
pub(crate) fn string_value(value: &Value) -> Value {
    match value {
        Value::String(_) | Value::Null => value.clone(),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_accepts_kamal_names_and_class_names() {
        for (name, adapter) in [
            ("1password", Adapter::OnePassword),
            ("1Password", Adapter::OnePassword),
            ("one_password", Adapter::OnePassword),
            ("LastPass", Adapter::LastPass),
            ("gcp", Adapter::GcpSecretManager),
            ("gcp_secret_manager", Adapter::GcpSecretManager),
            ("bitwarden-sm", Adapter::BitwardenSecretsManager),
            ("bitwarden_secrets_manager", Adapter::BitwardenSecretsManager),
            ("aws_secrets_manager", Adapter::AwsSecretsManager),
            ("doppler", Adapter::Doppler),
            ("enpass", Adapter::Enpass),
            ("passbolt", Adapter::Passbolt),
            ("bitwarden", Adapter::Bitwarden),
            ("test", Adapter::Test),
        ] {
            assert_eq!(lookup(name).unwrap(), adapter, "{name}");
        }
        let error = lookup("vault").unwrap_err().to_string();
        assert!(error.starts_with("unknown secrets adapter 'vault': use one of 1password,"), "{error}");
        assert!(lookup("bitwarden_sm").unwrap_err().to_string().contains("did you mean 'bitwarden-sm'"));
    }

    #[test]
    fn test_adapter_reverses_names() {
        let results = test_fetch(&["LPARENa".into(), "b".into()], Some("v"));
        assert_eq!(results["v/LPARENa"], "a(/v");
        assert_eq!(results["v/b"], "b/v");
    }

    #[test]
    fn missing_cli_names_it_and_how_to_install_it() {
        let dir = super::super::test_support::TempDir::new("empty-path");
        let env = Environment::from_vars([("PATH", dir.path().to_str().unwrap())], dir.path());
        let error = fetch(Adapter::OnePassword, &["a/b".into()], Some("acct"), None, &env).unwrap_err();
        assert_eq!(
            error.to_string(),
            "1password adapter: 1Password CLI (`op`) is not installed or not on PATH: install it \
             (https://developer.1password.com/docs/cli/get-started/), or fix PATH"
        );
    }
}
