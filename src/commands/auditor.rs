//! The audit log on each host: `.kamal/<svc[-dest]>-audit.log`, one line per mutating step — Kamal's
//! `Commands::Auditor`.

use super::names::{self, RUN_DIRECTORY};
use crate::command::Cmd;
use crate::config::Config;

/// Appends `[<recorded_at>] [<performer>] [<dest>] [<detail>]… <message>` to the audit log (creating `.kamal`).
/// `details` are Kamal's extra tags, usually the role.
pub fn record(config: &Config, recorded_at: &str, performer: &str, details: &[&str], message: &str) -> Cmd {
    Cmd::new("mkdir")
        .arg("-p")
        .arg(RUN_DIRECTORY)
        .and(Cmd::new("echo").arg(line(config, recorded_at, performer, details, message)))
        .raw(">>")
        .arg(names::audit_log_file(config))
}

/// One audit line without its newline.
pub fn line(config: &Config, recorded_at: &str, performer: &str, details: &[&str], message: &str) -> String {
    let mut tags = vec![recorded_at, performer];
    tags.extend(config.destination.as_deref());
    tags.extend(details.iter().copied());
    let tags: Vec<String> = tags.iter().map(|tag| format!("[{tag}]")).collect();
    format!("{} {message}", tags.join(" "))
}

/// A line Kamal 2.12 writes to the audit log (`KAMAL.auditor.record(…)` in `lib/kamal/cli/`), worded as Kamal
/// words it, so a host's log reads the same whichever tool deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// `build pull`.
    PulledImage {
        version: &'a str,
    },
    /// `app boot`, per role.
    BootedApp {
        version: &'a str,
    },
    /// `app boot`, per role: a container of the same version moved aside (`<version>_replaced_<hex>`).
    RenamingContainer {
        version: &'a str,
        renamed_version: &'a str,
    },
    /// `app boot`, once every host booted (`image` is `<repository>:<version>`).
    TaggingLatest {
        image: &'a str,
    },
    StartedApp {
        version: &'a str,
    },
    /// `app stop`, per role.
    StoppedApp,
    /// `app exec` (per role with `--reuse`).
    ExecutedOnApp {
        cmd: &'a str,
        version: &'a str,
    },
    /// `app remove`, per role.
    RemovedAllAppContainers,
    RemovedAllAppImages,
    /// `app remove`: the app directory (`.kamal/apps/<svc[-dest]>`).
    RemovedAppDirectory {
        path: &'a str,
    },
    PrunedContainers,
    PrunedImages,
    RebootedProxy,
    StartedProxy,
    StoppedProxy,
    RemovedProxyContainer,
    RemovedProxyImage,
    BootedAccessory {
        name: &'a str,
    },
    StartedAccessory {
        name: &'a str,
    },
    StoppedAccessory {
        name: &'a str,
    },
    PulledAccessoryImage {
        name: &'a str,
    },
    RemovedAccessoryContainer {
        name: &'a str,
    },
    RemovedAccessoryImage {
        name: &'a str,
    },
    ExecutedOnAccessory {
        cmd: &'a str,
        name: &'a str,
    },
    /// `server exec`.
    ExecutedOnHost {
        cmd: &'a str,
        host: &'a str,
    },
}

impl std::fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::PulledImage { version } => write!(f, "Pulled image with version {version}"),
            Message::BootedApp { version } => write!(f, "Booted app version {version}"),
            Message::RenamingContainer { version, renamed_version } => {
                write!(f, "Renaming container {version} to {renamed_version}")
            }
            Message::TaggingLatest { image } => write!(f, "Tagging {image} as the latest image"),
            Message::StartedApp { version } => write!(f, "Started app version {version}"),
            Message::StoppedApp => f.write_str("Stopped app"),
            Message::ExecutedOnApp { cmd, version } => write!(f, "Executed cmd '{cmd}' on app version {version}"),
            Message::RemovedAllAppContainers => f.write_str("Removed all app containers"),
            Message::RemovedAllAppImages => f.write_str("Removed all app images"),
            Message::RemovedAppDirectory { path } => write!(f, "Removed {path}"),
            Message::PrunedContainers => f.write_str("Pruned containers"),
            Message::PrunedImages => f.write_str("Pruned images"),
            Message::RebootedProxy => f.write_str("Rebooted proxy"),
            Message::StartedProxy => f.write_str("Started proxy"),
            Message::StoppedProxy => f.write_str("Stopped proxy"),
            Message::RemovedProxyContainer => f.write_str("Removed proxy container"),
            Message::RemovedProxyImage => f.write_str("Removed proxy image"),
            Message::BootedAccessory { name } => write!(f, "Booted {name} accessory"),
            Message::StartedAccessory { name } => write!(f, "Started {name} accessory"),
            Message::StoppedAccessory { name } => write!(f, "Stopped {name} accessory"),
            Message::PulledAccessoryImage { name } => write!(f, "Pull {name} accessory image"),
            Message::RemovedAccessoryContainer { name } => write!(f, "Remove {name} accessory container"),
            Message::RemovedAccessoryImage { name } => write!(f, "Removed {name} accessory image"),
            Message::ExecutedOnAccessory { cmd, name } => write!(f, "Executed cmd '{cmd}' on {name} accessory"),
            Message::ExecutedOnHost { cmd, host } => write!(f, "Executed cmd '{cmd}' on {host}"),
        }
    }
}

/// `tail -n 50 <audit log>` (`berth audit`).
pub fn reveal(config: &Config) -> Cmd {
    Cmd::new("tail").args(["-n", "50"]).arg(names::audit_log_file(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{config, config_with_destination};

    const AT: &str = "2026-11-26T15:45:07Z";

    #[test]
    fn record() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(
            super::record(&config, AT, "deployer@example.com", &[], "app removed container").script(),
            "mkdir -p .kamal && echo '[2026-11-26T15:45:07Z] [deployer@example.com] app removed container' >> .kamal/app-audit.log"
        );
    }

    #[test]
    fn messages_are_worded_as_kamal_words_them() {
        let cases = [
            (Message::PulledImage { version: "999" }, "Pulled image with version 999"),
            (Message::BootedApp { version: "999" }, "Booted app version 999"),
            (
                Message::RenamingContainer { version: "999", renamed_version: "999_replaced_0123456789abcdef" },
                "Renaming container 999 to 999_replaced_0123456789abcdef",
            ),
            (Message::TaggingLatest { image: "dhh/app:999" }, "Tagging dhh/app:999 as the latest image"),
            (Message::StartedApp { version: "999" }, "Started app version 999"),
            (Message::StoppedApp, "Stopped app"),
            (
                Message::ExecutedOnApp { cmd: "bin/rails db:migrate", version: "999" },
                "Executed cmd 'bin/rails db:migrate' on app version 999",
            ),
            (Message::RemovedAllAppContainers, "Removed all app containers"),
            (Message::RemovedAllAppImages, "Removed all app images"),
            (Message::RemovedAppDirectory { path: ".kamal/apps/app" }, "Removed .kamal/apps/app"),
            (Message::PrunedContainers, "Pruned containers"),
            (Message::PrunedImages, "Pruned images"),
            (Message::RebootedProxy, "Rebooted proxy"),
            (Message::StartedProxy, "Started proxy"),
            (Message::StoppedProxy, "Stopped proxy"),
            (Message::RemovedProxyContainer, "Removed proxy container"),
            (Message::RemovedProxyImage, "Removed proxy image"),
            (Message::BootedAccessory { name: "db" }, "Booted db accessory"),
            (Message::StartedAccessory { name: "db" }, "Started db accessory"),
            (Message::StoppedAccessory { name: "db" }, "Stopped db accessory"),
            (Message::PulledAccessoryImage { name: "db" }, "Pull db accessory image"),
            (Message::RemovedAccessoryContainer { name: "db" }, "Remove db accessory container"),
            (Message::RemovedAccessoryImage { name: "db" }, "Removed db accessory image"),
            (
                Message::ExecutedOnAccessory { cmd: "mysql -e 'x'", name: "db" },
                "Executed cmd 'mysql -e 'x'' on db accessory",
            ),
            (Message::ExecutedOnHost { cmd: "uptime", host: "1.1.1.1" }, "Executed cmd 'uptime' on 1.1.1.1"),
        ];
        for (message, text) in cases {
            assert_eq!(message.to_string(), text);
        }
    }

    #[test]
    fn record_with_destination_and_role() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "staging");
        assert_eq!(
            super::record(&config, AT, "deployer@example.com", &["web"], "Booted app version 999").script(),
            "mkdir -p .kamal && echo '[2026-11-26T15:45:07Z] [deployer@example.com] [staging] [web] Booted app version 999' >> .kamal/app-staging-audit.log"
        );
        assert_eq!(reveal(&config).script(), "tail -n 50 .kamal/app-staging-audit.log");
    }
}
