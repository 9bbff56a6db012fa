//! The deploy lock: Kamal's `mkdir .kamal/lock-<service[-dest]>` on the primary host, so berth and Kamal
//! exclude each other — plus what Kamal lacks: the lock is released on Ctrl-C and on errors, and a lock left by
//! a berth process that no longer exists (killed) is recognised and cleared by the next run.
//!
//! The details file is Kamal's (`Locked by: … at …`, `Version:`, `Message:`) with one more line,
//! `Holder: berth pid=<pid> host=<hostname> boot=<boot id>`, that says which process holds it.

use std::time::{Duration, Instant};

use super::output::Event;
use super::{Engine, EngineError};
use crate::commands::lock;

/// The message of locks taken automatically by deploys (Kamal's wording; `--lock-wait` keys on it).
pub const AUTOMATIC_MESSAGE: &str = "Automatic deploy lock";

/// Which process holds a lock, from its `Holder:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub boot_id: String,
}

impl Holder {
    /// This process.
    pub fn current() -> Holder {
        Holder { pid: std::process::id(), host: local_hostname(), boot_id: boot_id() }
    }

    pub fn line(&self) -> String {
        format!("Holder: berth pid={} host={} boot={}", self.pid, self.host, self.boot_id)
    }

    /// Finds the `Holder:` line in lock details.
    pub fn parse(details: &str) -> Option<Holder> {
        let line = details.lines().find_map(|line| line.strip_prefix("Holder: berth "))?;
        let field = |name: &str| {
            line.split_whitespace().find_map(|word| word.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        };
        Some(Holder {
            pid: field("pid")?.parse().ok()?,
            host: field("host")?.to_string(),
            boot_id: field("boot")?.to_string(),
        })
    }

    /// True when the holder was a berth process on this machine that is gone (killed, or the machine rebooted).
    /// A lock held elsewhere or by a live process is never stale.
    pub fn is_gone(&self) -> bool {
        if self.host != local_hostname() {
            return false;
        }
        if self.boot_id != boot_id() {
            return true;
        }
        !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl Engine {
    /// Takes the deploy lock on the primary host (waiting with `--lock-wait`), unless this process holds it.
    /// Returns whether it took it (then the caller must release it).
    pub async fn acquire_lock(&self, message: &str) -> Result<bool, EngineError> {
        if self.holding_lock() || self.env().get("KAMAL_LOCK") == Some("true") {
            return Ok(false);
        }
        let Some(host) = self.selection.primary_host.clone() else { return Ok(false) };
        let config = &self.config;
        let details = lock::LockDetails {
            locked_by: self.performer.clone(),
            locked_at: super::now_iso8601(),
            version: config.version.clone(),
            // Only a lock held for the length of a command names its process; a lock taken by hand (`lock
            // acquire`) is held by a person, outlives the process, and is never "stale".
            message: if message == AUTOMATIC_MESSAGE {
                format!("{message}\n{}", Holder::current().line())
            } else {
                message.to_string()
            },
        };
        let started = Instant::now();
        let deadline = self.options.lock_wait.map(|(timeout, _)| Instant::now() + timeout);
        let interval = self.options.lock_wait.map(|(_, interval)| interval).unwrap_or(Duration::from_secs(15));
        let mut cleared_stale = false;
        loop {
            self.cancel().check()?;
            let acquire = lock::ensure_run_directory().and(lock::acquire(config, &details));
            let output = self.remote().run_unchecked(&host, &acquire).await?;
            if output.exit_status == 0 {
                self.set_holding_lock(true);
                self.remote().report(&host, "Acquired the deploy lock", started, true);
                return Ok(true);
            }
            let held = self.lock_details(&host).await?;
            let Some(current) = held else {
                // mkdir failed but no details: someone is between mkdir and writing them, or a broken lock.
                if !output.stderr.contains("File exists") {
                    return Err(EngineError::CommandFailed {
                        host: host.clone(),
                        command: "mkdir .kamal/lock-…".into(),
                        status: output.exit_status,
                        output: output.stderr,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !cleared_stale && Holder::parse(&current).is_some_and(|holder| holder.is_gone()) {
                self.sink().emit(Event::Warning(format!(
                    "clearing a stale deploy lock on {host}: the berth process that took it is gone\n{}",
                    indent(&current)
                )));
                self.remote().run(&host, &lock::release(config)).await?;
                cleared_stale = true;
                continue;
            }
            let manual = !current.contains(&format!("Message: {AUTOMATIC_MESSAGE}"));
            match deadline {
                Some(deadline) if !manual && Instant::now() + interval < deadline => {
                    self.info(format!("Waiting for the deploy lock on {host}, held by:\n{}", indent(&current)));
                    tokio::time::sleep(interval).await;
                }
                _ => return Err(EngineError::LockHeld { host, details: indent(&current), waited: deadline.is_some() }),
            }
        }
    }

    /// Releases the lock if this process took it.
    pub async fn release_lock(&self) -> Result<(), EngineError> {
        if !self.holding_lock() {
            return Ok(());
        }
        let Some(host) = self.selection.primary_host.clone() else { return Ok(()) };
        let started = Instant::now();
        self.remote().run(&host, &lock::release(&self.config)).await?;
        self.set_holding_lock(false);
        self.remote().report(&host, "Released the deploy lock", started, true);
        Ok(())
    }

    /// Clears the deploy lock when the berth process that took it is gone (a daemon killed mid-deploy, then
    /// started again on the same machine). Returns the host it was on, or None when there was no such lock
    /// (no lock, a live holder, or one taken by hand).
    pub async fn clear_stale_lock(&self) -> Result<Option<String>, EngineError> {
        let Some(host) = self.selection.primary_host.clone() else { return Ok(None) };
        let Some(current) = self.lock_details(&host).await? else { return Ok(None) };
        if !Holder::parse(&current).is_some_and(|holder| holder.is_gone()) {
            return Ok(None);
        }
        let started = Instant::now();
        self.remote().run(&host, &lock::release(&self.config)).await?;
        self.remote().report(&host, "Cleared the deploy lock of a berth process that is gone", started, true);
        Ok(Some(host))
    }

    /// Releases the service's deploy lock if the process named by `holder` (its `Holder:` line) holds it:
    /// that process is known gone (its daemon's lease expired), wherever it ran. Any other lock is left as it
    /// is. Returns the host it was on.
    pub async fn release_lock_held_by(&self, holder: &str) -> Result<Option<String>, EngineError> {
        let Some(host) = self.selection.primary_host.clone() else { return Ok(None) };
        let Some(current) = self.lock_details(&host).await? else { return Ok(None) };
        let (Some(held_by), Some(named)) = (Holder::parse(&current), Holder::parse(holder)) else { return Ok(None) };
        if (held_by.pid, &held_by.host, &held_by.boot_id) != (named.pid, &named.host, &named.boot_id) {
            return Ok(None);
        }
        let started = Instant::now();
        self.remote().run(&host, &lock::release(&self.config)).await?;
        self.remote().report(&host, "Cleared the deploy lock of a berth daemon whose lease expired", started, true);
        Ok(Some(host))
    }

    /// The decoded details of the lock on `host`, or None when there is no lock.
    pub async fn lock_details(&self, host: &str) -> Result<Option<String>, EngineError> {
        let output = self.remote().run_unchecked(host, &lock::status(&self.config)).await?;
        Ok((output.exit_status == 0 && !output.stdout.trim().is_empty()).then(|| output.stdout.trim_end().to_string()))
    }

    /// Runs `work` holding the lock; the lock is released whatever `work` returns (errors, Ctrl-C).
    pub async fn with_lock<T>(&self, work: impl Future<Output = Result<T, EngineError>>) -> Result<T, EngineError> {
        let took = self.acquire_lock(AUTOMATIC_MESSAGE).await?;
        let result = work.await;
        if took && let Err(err) = self.release_lock().await {
            self.sink().emit(Event::Warning(format!("could not release the deploy lock: {err}")));
        }
        result
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Changes on every boot of the machine, so a lock from before a reboot is known to be stale.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_line_round_trips_and_this_process_is_alive() {
        let holder = Holder::current();
        let details = format!("Locked by: me at 2026-11-26T00:00:00Z\nVersion: v1\nMessage: x\n{}", holder.line());
        assert_eq!(Holder::parse(&details), Some(holder.clone()));
        assert!(!holder.is_gone());
    }

    #[test]
    fn a_dead_process_or_an_earlier_boot_is_gone_but_another_machine_is_not() {
        let mut holder = Holder::current();
        holder.pid = u32::MAX - 1;
        assert!(holder.is_gone());
        let mut holder = Holder::current();
        holder.boot_id = "earlier".into();
        assert!(holder.is_gone());
        let mut holder = Holder::current();
        holder.host = "elsewhere".into();
        holder.pid = u32::MAX - 1;
        assert!(!holder.is_gone());
        assert_eq!(Holder::parse("Locked by: kamal\nVersion: v1\nMessage: m"), None);
    }
}
