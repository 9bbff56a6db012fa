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
    fn record_with_destination_and_role() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "staging");
        assert_eq!(
            super::record(&config, AT, "deployer@example.com", &["web"], "Booted app version 999").script(),
            "mkdir -p .kamal && echo '[2026-11-26T15:45:07Z] [deployer@example.com] [staging] [web] Booted app version 999' >> .kamal/app-staging-audit.log"
        );
        assert_eq!(reveal(&config).script(), "tail -n 50 .kamal/app-staging-audit.log");
    }
}
