//! The deploy lock: a directory `.kamal/lock-<svc[-dest]>` on the primary host, taken atomically with `mkdir`,
//! holding a base64 `details` file that says who holds it — Kamal's `Commands::Lock`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::names::{self, RUN_DIRECTORY};
use crate::command::Cmd;
use crate::config::Config;

/// The message of locks taken by deploys; `--lock-wait` gives up at once on locks with any other message.
pub const AUTOMATIC_LOCK_MESSAGE: &str = "Automatic deploy lock";

/// Who holds a lock, as the `details` file records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockDetails {
    /// The git user name of the holder (`Unknown` when git has none).
    pub locked_by: String,
    /// When it was taken, UTC ISO 8601 (`2026-11-26T15:45:07Z`).
    pub locked_at: String,
    pub version: String,
    pub message: String,
}

impl LockDetails {
    /// `Locked by: <name> at <time>\nVersion: <v>\nMessage: <m>`.
    pub fn text(&self) -> String {
        format!(
            "Locked by: {} at {}\nVersion: {}\nMessage: {}",
            self.locked_by, self.locked_at, self.version, self.message
        )
        .trim()
        .to_string()
    }

    /// Reads [`LockDetails::text`] back (from `lock status` output); `None` when it isn't in that shape.
    pub fn parse(text: &str) -> Option<LockDetails> {
        let mut lines = text.trim().lines();
        let (locked_by, locked_at) = lines.next()?.strip_prefix("Locked by: ")?.rsplit_once(" at ")?;
        let version = lines.next()?.strip_prefix("Version: ")?;
        let message: Vec<&str> = lines.collect();
        let message = message.join("\n");
        let message = message.strip_prefix("Message: ")?;
        Some(LockDetails {
            locked_by: locked_by.to_string(),
            locked_at: locked_at.to_string(),
            version: version.to_string(),
            message: message.to_string(),
        })
    }
}

/// `mkdir .kamal/lock-X && echo <base64 details> > .kamal/lock-X/details`; `mkdir` fails when the lock is held.
pub fn acquire(config: &Config, details: &LockDetails) -> Cmd {
    Cmd::new("mkdir")
        .arg(names::lock_directory(config))
        .and(Cmd::new("echo").arg(BASE64.encode(details.text())).raw(">").arg(names::lock_details_file(config)))
}

/// `rm .kamal/lock-X/details && rm -r .kamal/lock-X`.
pub fn release(config: &Config) -> Cmd {
    Cmd::new("rm")
        .arg(names::lock_details_file(config))
        .and(Cmd::new("rm").arg("-r").arg(names::lock_directory(config)))
}

/// `stat .kamal/lock-X > /dev/null && cat .kamal/lock-X/details | base64 -d`: fails when there is no lock.
pub fn status(config: &Config) -> Cmd {
    Cmd::new("stat")
        .arg(names::lock_directory(config))
        .raw("> /dev/null")
        .and(Cmd::new("cat").arg(names::lock_details_file(config)).pipe(Cmd::new("base64").arg("-d")))
}

/// `mkdir -p .kamal`, on every host before taking the lock.
pub fn ensure_run_directory() -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(RUN_DIRECTORY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::config_with_destination;

    fn details() -> LockDetails {
        LockDetails {
            locked_by: "Deployer".into(),
            locked_at: "2026-11-26T15:45:07Z".into(),
            version: "123".into(),
            message: "Hello".into(),
        }
    }

    #[test]
    fn acquire_writes_base64_details() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "production");
        let encoded = BASE64.encode("Locked by: Deployer at 2026-11-26T15:45:07Z\nVersion: 123\nMessage: Hello");
        assert_eq!(
            acquire(&config, &details()).script(),
            format!("mkdir .kamal/lock-app-production && echo {encoded} > .kamal/lock-app-production/details")
        );
    }

    #[test]
    fn release_status_and_run_directory() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "production");
        assert_eq!(
            release(&config).script(),
            "rm .kamal/lock-app-production/details && rm -r .kamal/lock-app-production"
        );
        assert_eq!(
            status(&config).script(),
            "stat .kamal/lock-app-production > /dev/null && cat .kamal/lock-app-production/details | base64 -d"
        );
        assert_eq!(ensure_run_directory().script(), "mkdir -p .kamal");
    }

    #[test]
    fn details_round_trip() {
        assert_eq!(LockDetails::parse(&details().text()), Some(details()));
        let multiline = LockDetails { message: "two\nlines".into(), ..details() };
        assert_eq!(LockDetails::parse(&multiline.text()), Some(multiline));
        assert_eq!(LockDetails::parse("There is no deploy lock"), None);
    }

    #[test]
    fn the_details_decode_on_a_host() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "production");
        let dir = tempfile::tempdir().unwrap();
        let script = format!("{} && {}", acquire(&config, &details()), status(&config));
        let out = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir.path()).output().unwrap();
        std::fs::create_dir_all(dir.path().join(".kamal")).unwrap();
        let script = format!("{} && {}", acquire(&config, &details()), status(&config));
        let out2 = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir.path()).output().unwrap();
        assert!(!out.status.success(), "no .kamal directory yet, so mkdir fails");
        assert_eq!(String::from_utf8_lossy(&out2.stdout), details().text());
    }
}
