//! A service's hosts outside the queue: what each runs now (`GET /services`, `GET /services/{name}`), and
//! maintenance mode (`POST /services/{name}/maintenance`, `/live`) — the engine over SSH, with the service's
//! configuration at its branch's head, as the command line's `app version` and `app maintenance|live` do.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde::Serialize;
use utoipa::ToSchema;

use super::config::ServiceConfig;
use super::runner::{Place, check_out_reference, engine_at};
use crate::engine::output::{ConsoleSink, Redactor, Verbosity};
use crate::environment::Environment;

/// What one role runs on one host.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct HostStatus {
    pub host: String,
    pub role: String,
    /// The version running (None: nothing of the role runs there, or the host did not answer).
    pub version: Option<String>,
    /// `running`, `stopped` (no container of the role runs), or `unreachable`.
    pub state: String,
    /// Why the host did not answer.
    pub error: Option<String>,
}

/// How long a read of a service's hosts answers the service list (a dashboard polling every few seconds
/// must not open SSH connections to every host each time); a deploy that changed state since reads again.
pub const STATUS_FRESH_FOR: Duration = Duration::from_secs(15);

/// How long one read of a service's hosts may take before the list shows its hosts as not answering.
pub const STATUS_READ_TIMEOUT: Duration = Duration::from_secs(30);

type StatusRead = Result<Vec<HostStatus>, String>;

/// The last read of one service and destination, behind a lock held while it is read again.
type ReadSlot = Arc<tokio::sync::Mutex<Option<LastRead>>>;

/// The last read of one service and destination: when, what the service's deploys looked like then (so a
/// deploy that changed state makes it stale), and what the hosts said.
struct LastRead {
    at: Instant,
    deploys_seen: String,
    read: StatusRead,
}

/// The engine on a service's hosts, for the API's reads and maintenance.
pub struct ServiceHosts {
    services: Arc<IndexMap<String, ServiceConfig>>,
    data_dir: PathBuf,
    env: Environment,
    next: AtomicU64,
    /// Per (service, destination): one read at a time (concurrent list requests wait for it and share it).
    last_reads: Mutex<HashMap<(String, Option<String>), ReadSlot>>,
}

impl ServiceHosts {
    pub fn new(services: Arc<IndexMap<String, ServiceConfig>>, data_dir: PathBuf, env: Environment) -> ServiceHosts {
        ServiceHosts { services, data_dir, env, next: AtomicU64::new(0), last_reads: Mutex::default() }
    }

    /// What the hosts ran at most [`STATUS_FRESH_FOR`] ago, unless `deploys_seen` (the caller's summary of the
    /// service's deploys) changed since: then, and otherwise, read now (within [`STATUS_READ_TIMEOUT`]).
    pub async fn recent_status(&self, service: &str, destination: Option<String>, deploys_seen: String) -> StatusRead {
        let slot = {
            let mut reads = self.last_reads.lock().unwrap_or_else(|poison| poison.into_inner());
            Arc::clone(reads.entry((service.to_string(), destination.clone())).or_default())
        };
        let mut last = slot.lock().await;
        if let Some(read) = last.as_ref()
            && read.at.elapsed() < STATUS_FRESH_FOR
            && read.deploys_seen == deploys_seen
        {
            return read.read.clone();
        }
        let read = match tokio::time::timeout(STATUS_READ_TIMEOUT, self.status(service, destination)).await {
            Ok(read) => read,
            Err(_) => Err(format!("the hosts did not answer within {} s", STATUS_READ_TIMEOUT.as_secs())),
        };
        *last = Some(LastRead { at: Instant::now(), deploys_seen, read: read.clone() });
        read
    }

    /// What every app host of the service runs now, per role.
    pub async fn status(&self, service: &str, destination: Option<String>) -> Result<Vec<HostStatus>, String> {
        let versions = self
            .with_engine(service, destination, "version", |engine| async move {
                let versions = engine.running_versions().await;
                Ok(versions)
            })
            .await?
            .0;
        Ok(versions
            .into_iter()
            .map(|running| HostStatus {
                state: match (&running.error, &running.version) {
                    (Some(_), _) => "unreachable",
                    (None, Some(_)) => "running",
                    (None, None) => "stopped",
                }
                .to_string(),
                host: running.host,
                role: running.role,
                version: running.version,
                error: running.error,
            })
            .collect())
    }

    /// Maintenance mode on (the proxy answers 503 with `message`) or off; returns what was done, per host.
    pub async fn maintenance(
        &self,
        service: &str,
        destination: Option<String>,
        on: bool,
        message: Option<String>,
        drain_timeout: Option<u64>,
    ) -> Result<Vec<String>, String> {
        let subcommand = if on { "maintenance" } else { "live" };
        self.with_engine(service, destination, subcommand, |engine| async move {
            engine.set_maintenance(on, drain_timeout, message.as_deref()).await.map_err(|error| error.to_string())
        })
        .await
        .map(|((), lines)| lines)
    }

    /// Clears the service's deploy lock if the process that took it is gone (at the daemon's start, for a
    /// deploy a killed daemon left `running`); returns the host it was on.
    pub async fn clear_stale_lock(&self, service: &str, destination: Option<String>) -> Result<Option<String>, String> {
        self.with_engine(service, destination, "lock", |engine| async move {
            engine.clear_stale_lock().await.map_err(|error| error.to_string())
        })
        .await
        .map(|(host, _)| host)
    }

    /// Releases the service's deploy lock if the process `holder` (a `Holder:` line) took it: for a deploy
    /// whose daemon's lease expired. Returns the host it was on.
    pub async fn release_lock_held_by(
        &self,
        service: &str,
        destination: Option<String>,
        holder: String,
    ) -> Result<Option<String>, String> {
        self.with_engine(service, destination, "lock", |engine| async move {
            engine.release_lock_held_by(&holder).await.map_err(|error| error.to_string())
        })
        .await
        .map(|(host, _)| host)
    }

    /// Runs `work` with an engine for the service at its branch's head; returns its result and what it
    /// reported, as the console would show it (secrets redacted).
    async fn with_engine<T, F, Fut>(
        &self,
        service: &str,
        destination: Option<String>,
        command: &str,
        work: F,
    ) -> Result<(T, Vec<String>), String>
    where
        F: FnOnce(Arc<crate::engine::Engine>) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let service = self.services.get(service).ok_or_else(|| format!("no service `{service}`"))?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let checkout =
            self.data_dir.join("work").join(format!("{command}-{}-{}-{n}", service.name, std::process::id()));
        let commit = check_out_reference(&self.data_dir, service, &service.branch, &checkout).await;
        let result = match commit {
            Ok(commit) => {
                let output = Arc::new(Mutex::new(Vec::new()));
                let redactor = Redactor::default();
                let sink = Arc::new(ConsoleSink::new(
                    Verbosity::Normal,
                    redactor.clone(),
                    Box::new(Collected(Arc::clone(&output))),
                ));
                let place =
                    Place { data_dir: &self.data_dir, env: &self.env, service, checkout: &checkout, commit: &commit };
                // The version only names containers for commands that start some; these read or toggle.
                match engine_at(&place, destination, "latest", sink, redactor, command) {
                    Ok(engine) => {
                        let engine = Arc::new(engine);
                        let result = work(Arc::clone(&engine)).await;
                        engine.close().await;
                        let text =
                            String::from_utf8_lossy(&output.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
                        result.map(|value| (value, text.lines().map(str::to_string).collect()))
                    }
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        result
    }
}

/// A writer into a shared buffer (the engine's console output, collected for the API's answer).
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Write for Collected {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
