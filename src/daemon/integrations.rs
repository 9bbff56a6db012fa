//! The values of the secrets `berth.yml` names for its integrations (GitHub webhook secrets and tokens,
//! notification signing secrets, Slack's signing secret and webhook URLs), read once at start: per service
//! from its `secrets` directory (`secrets-common`, then `secrets`), then from the daemon-wide dotenv file
//! of the top-level `secrets:`. A name found in neither refuses the start, with its YAML path.
//!
//! Values stay in memory only; `Debug` shows names.

use std::collections::HashMap;
use std::path::Path;

use super::config::{DaemonConfig, DaemonConfigError, NotifyTarget};
use crate::config::schema::Problem;
use crate::environment::Environment;
use crate::secrets::Secrets;

/// A secret's value, never shown by `Debug`.
#[derive(Clone, Default)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(…)")
    }
}

/// The resolved secrets of every integration.
#[derive(Clone, Debug, Default)]
pub struct IntegrationSecrets {
    services: HashMap<String, ServiceSecrets>,
    pub slack_signing_secret: Option<SecretValue>,
}

/// One service's integration secrets.
#[derive(Clone, Debug, Default)]
pub struct ServiceSecrets {
    pub github_webhook: Option<SecretValue>,
    pub github_token: Option<SecretValue>,
    /// Per `notify` entry, in order: the signing secret of a `url` target, the URL of a `slack_webhook`.
    pub notify: Vec<Option<SecretValue>>,
}

impl IntegrationSecrets {
    /// Reads every secret the configuration names; every missing one is reported at once.
    pub fn load(config: &DaemonConfig, env: &Environment) -> Result<IntegrationSecrets, DaemonConfigError> {
        let mut problems = Vec::new();
        let daemon_wide = match &config.secrets {
            Some(file) => match load_file(file, env) {
                Ok(secrets) => Some(secrets),
                Err(error) => {
                    problems.push(problem("secrets", format!("{} could not be read: {error}", file.display())));
                    None
                }
            },
            None => None,
        };
        let mut resolved = IntegrationSecrets::default();
        for (name, service) in &config.services {
            if service.github.is_none() && service.notify.is_empty() {
                continue;
            }
            let own = match &service.secrets {
                Some(dir) => match Secrets::load(dir, "secrets", None, env) {
                    Ok(secrets) => Some(secrets),
                    Err(error) => {
                        problems.push(problem(&format!("services/{name}/secrets"), error.to_string()));
                        None
                    }
                },
                None => None,
            };
            let mut lookup = |path: String, secret: &str| -> Option<SecretValue> {
                for source in [own.as_ref(), daemon_wide.as_ref()].into_iter().flatten() {
                    if let Ok(value) = source.get(secret) {
                        return Some(SecretValue(value.to_string()));
                    }
                }
                problems.push(missing(&path, secret, service.secrets.as_deref(), config.secrets.as_deref()));
                None
            };
            let mut secrets = ServiceSecrets::default();
            if let Some(github) = &service.github {
                secrets.github_webhook =
                    lookup(format!("services/{name}/github/webhook_secret"), &github.webhook_secret);
                if let Some(token) = &github.token {
                    secrets.github_token = lookup(format!("services/{name}/github/token"), token);
                }
            }
            for (index, notify) in service.notify.iter().enumerate() {
                secrets.notify.push(match &notify.target {
                    NotifyTarget::Webhook { secret: Some(secret), .. } => {
                        lookup(format!("services/{name}/notify/{index}/secret"), secret)
                    }
                    NotifyTarget::Webhook { secret: None, .. } => None,
                    NotifyTarget::Slack { webhook } => {
                        lookup(format!("services/{name}/notify/{index}/slack_webhook"), webhook)
                    }
                });
            }
            resolved.services.insert(name.clone(), secrets);
        }
        if let Some(slack) = &config.slack {
            match daemon_wide.as_ref().and_then(|secrets| secrets.get(&slack.signing_secret).ok()) {
                Some(value) => resolved.slack_signing_secret = Some(SecretValue(value.to_string())),
                None => problems.push(match &config.secrets {
                    Some(file) => problem(
                        "slack/signing_secret",
                        format!(
                            "no secret `{}` in {}: add `{}=…` (the Signing Secret on the Slack app's Basic Information page)",
                            slack.signing_secret,
                            file.display(),
                            slack.signing_secret
                        ),
                    ),
                    None => problem(
                        "slack/signing_secret",
                        format!(
                            "Slack's secrets are read from the daemon-wide file: set top-level `secrets: FILE` and put `{}=…` in it",
                            slack.signing_secret
                        ),
                    ),
                }),
            }
        }
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(DaemonConfigError::Invalid {
                path: config.file.clone().unwrap_or_else(|| "berth.yml".into()),
                problems,
            })
        }
    }

    /// A service's secrets (empty for a service without integrations).
    pub fn service(&self, name: &str) -> ServiceSecrets {
        self.services.get(name).cloned().unwrap_or_default()
    }

    /// Every value, to scrub from text that could carry one (errors of outgoing calls).
    pub fn values(&self) -> Vec<String> {
        let services = self.services.values().flat_map(|service| {
            [&service.github_webhook, &service.github_token].into_iter().chain(service.notify.iter()).flatten()
        });
        services
            .chain(self.slack_signing_secret.iter())
            .map(|value| value.0.clone())
            .filter(|value| !value.is_empty())
            .collect()
    }
}

/// A dotenv file given by its path (the secrets module reads `<dir>/<name>-common` and `<dir>/<name>`).
fn load_file(file: &Path, env: &Environment) -> Result<Secrets, String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let name = file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    if !file.is_file() {
        return Err("no such file".to_string());
    }
    Secrets::load(dir, &name, None, env).map_err(|error| error.to_string())
}

fn missing(path: &str, secret: &str, own: Option<&Path>, daemon_wide: Option<&Path>) -> Problem {
    let mut places = Vec::new();
    if let Some(dir) = own {
        places.push(format!("{}/secrets-common", dir.display()));
        places.push(format!("{}/secrets", dir.display()));
    }
    if let Some(file) = daemon_wide {
        places.push(file.display().to_string());
    }
    let message = if places.is_empty() {
        format!(
            "names the secret `{secret}`, but the service has no `secrets` directory and berth.yml no top-level `secrets` file to read it from"
        )
    } else {
        format!("no secret `{secret}` in {}: add a line `{secret}=…` to one of them", places.join(", "))
    };
    problem(path, message)
}

fn problem(path: &str, message: String) -> Problem {
    Problem { path: path.to_string(), message, hint: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_service_directory_then_the_daemon_file_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/secrets"), "HOOK=from-service\n").unwrap();
        std::fs::write(dir.path().join("daemon.env"), "HOOK=from-daemon\nTOKEN=gh-token\nSLACK=signing\n").unwrap();
        let yml = concat!(
            "secrets: daemon.env\n",
            "slack: {signing_secret: SLACK}\n",
            "services:\n",
            "  app:\n",
            "    repo: ./app\n",
            "    secrets: app\n",
            "    github: {repository: me/app, webhook_secret: HOOK, token: TOKEN}\n",
            "    notify: [{url: 'http://x', secret: NOPE}]\n",
        );
        let path = dir.path().join("berth.yml");
        let env = Environment::from_vars(Vec::<(String, String)>::new(), dir.path());
        std::fs::write(&path, yml).unwrap();
        let config = DaemonConfig::load(&path).unwrap();
        let error = IntegrationSecrets::load(&config, &env).unwrap_err().to_string();
        assert!(
            error.contains("services/app/notify/0/secret: no secret `NOPE` in ")
                && error.contains("app/secrets-common, ")
                && error.contains("daemon.env: add a line `NOPE=…`"),
            "{error}"
        );
        std::fs::write(&path, yml.replace("secret: NOPE", "secret: TOKEN")).unwrap();
        let config = DaemonConfig::load(&path).unwrap();
        let secrets = IntegrationSecrets::load(&config, &env).unwrap();
        let app = secrets.service("app");
        assert_eq!(app.github_webhook.as_ref().unwrap().expose(), "from-service", "the service's own file wins");
        assert_eq!(app.github_token.as_ref().unwrap().expose(), "gh-token");
        assert_eq!(secrets.slack_signing_secret.as_ref().unwrap().expose(), "signing");
        assert!(!format!("{secrets:?}").contains("gh-token"), "Debug shows no value");
    }
}
