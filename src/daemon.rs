//! `berth serve`: the deploy daemon. An HTTP API ([`api`]) takes deploy requests, a durable queue in SQLite
//! ([`store`], [`queue`]) runs them one per service and destination with the engine over SSH ([`runner`]),
//! and every log line is stored and streamed live ([`logs`]).
//!
//! Layers look down only: the API calls the queue and the store; the queue runs [`queue::Runner`]s; the
//! runner drives the engine; SQL lives in [`store`] alone; nothing here prints (the `serve` command does).

pub mod api;
pub mod auth;
pub mod badge;
pub mod config;
pub mod dashboard;
pub mod form;
pub mod github;
pub mod hosts;
pub mod integrations;
pub mod logs;
pub mod model;
pub mod notifications;
pub mod notifier;
pub mod queue;
pub mod runner;
pub mod signature;
pub mod slack;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use config::DaemonConfig;
use logs::LogHub;
use queue::{Queue, Runner};
use store::{Store, StoreError};

use crate::environment::Environment;

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::DaemonConfigError),
    #[error("creating the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}: {source} (set `listen:` in berth.yml to a free address)")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("setting up outgoing HTTPS (notifications, GitHub): {0}")]
    Outbound(String),
    #[error(
        "another `berth serve` uses {data_dir} ({holder}): one daemon per SQLite database — stop it first, or \
         run several daemons on PostgreSQL (`database_url:` in berth.yml)"
    )]
    AlreadyRunning { data_dir: String, holder: String },
    #[error("BERTH_DATABASE_URL must be a PostgreSQL URL, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")]
    DatabaseUrl,
    #[error("locking {path}: {source}")]
    Lock { path: String, source: std::io::Error },
}

/// A started daemon: its address, and how to stop it.
pub struct Daemon {
    pub address: SocketAddr,
    pub state: api::AppState,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    dispatcher: tokio::task::JoinHandle<()>,
    notifier: tokio::task::JoinHandle<()>,
    leases: Option<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// What happened at start that the operator should know (deploys found interrupted).
    pub notices: Vec<String>,
    /// Held while the daemon runs: the OS lock that keeps a second daemon off the same SQLite database.
    _data_dir_lock: Option<std::fs::File>,
}

impl Daemon {
    /// Opens the store (running migrations), marks deploys a previous run left `running` as `interrupted`,
    /// binds `listener` and starts serving and running the queue.
    pub async fn start(
        config: DaemonConfig,
        listener: TcpListener,
        runner: Arc<dyn Runner>,
        env: &Environment,
    ) -> Result<Daemon, DaemonError> {
        let secrets = Arc::new(integrations::IntegrationSecrets::load(&config, env)?);
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| DaemonError::DataDir { path: config.data_dir.display().to_string(), source })?;
        // One daemon per SQLite file (the OS lock); on PostgreSQL, as many as share it.
        let data_dir_lock = match &config.database_url {
            None => Some(lock_data_dir(&config)?),
            Some(_) => None,
        };
        let store = open_store(&config).await?;
        let interrupted = store
            .interrupt_running(
                &config.instance,
                "the daemon stopped while this deploy ran (crash or kill); hosts kept serving what they ran, and \
                 the deploy lock it held is cleared by the next deploy",
            )
            .await?;
        let notices = interrupted
            .iter()
            .map(|deploy| format!("deploy {} of {} was interrupted by the daemon's stop", deploy.id, deploy.service))
            .collect();
        let config = Arc::new(config);
        let hub = Arc::new(LogHub::default());
        let queue = Queue::new(store.clone(), Arc::clone(&hub), Arc::clone(&config), runner);
        let hosts =
            Arc::new(hosts::ServiceHosts::new(Arc::new(config.services.clone()), config.data_dir.clone(), env.clone()));
        // The lock an interrupted deploy held is cleared now rather than by the next deploy of its service,
        // and its log says so.
        for deploy in &interrupted {
            let (hosts, store) = (Arc::clone(&hosts), store.clone());
            let (id, service, destination) = (deploy.id, deploy.service.clone(), deploy.destination.clone());
            tokio::spawn(async move {
                let line = match hosts.clear_stale_lock(&service, destination).await {
                    Ok(Some(host)) => {
                        format!("At the daemon's restart: released the deploy lock this deploy held on {host}")
                    }
                    Ok(None) => "At the daemon's restart: no deploy lock of this deploy was left".to_string(),
                    Err(error) => format!(
                        "At the daemon's restart: the deploy lock could not be checked ({error}); the next deploy clears it"
                    ),
                };
                let _ = store.append_note(id, &line).await;
            });
        }
        let state =
            api::AppState { store, queue: Arc::clone(&queue), hub, config, started: Instant::now(), hosts, secrets };
        let address = listener.local_addr().map_err(DaemonError::Serve)?;
        let (shutdown, mut stopping) = tokio::sync::watch::channel(false);
        let app = api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await
        });
        let dispatcher = tokio::spawn(Arc::clone(&queue).dispatch());
        let notifier =
            notifier::Notifier::new(state.store.clone(), Arc::clone(&state.config), Arc::clone(&state.secrets))
                .map_err(DaemonError::Outbound)?;
        let notifier = tokio::spawn(notifier.run());
        // On a shared database: renew this daemon's leases, and take over what daemons that stopped renewing
        // left running (each such deploy becomes `interrupted`, its Kamal lock released).
        let leases = state.store.is_shared().then(|| {
            let (store, hosts, instance) =
                (state.store.clone(), Arc::clone(&state.hosts), state.config.instance.clone());
            tokio::spawn(keep_leases(store, Arc::clone(&queue), hosts, instance))
        });
        // Log lines of deploys older than `log_retention` are deleted, hourly (the deploys are kept).
        let retention = state.config.log_retention;
        let store = state.store.clone();
        tokio::spawn(async move {
            loop {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let cutoff = crate::utc::seconds_since_epoch(now.saturating_sub(retention).as_secs());
                let _ = store.prune_logs(&cutoff).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        Ok(Daemon {
            address,
            state,
            server,
            dispatcher,
            notifier,
            leases,
            shutdown,
            notices,
            _data_dir_lock: data_dir_lock,
        })
    }

    /// Stops taking requests and work; running deploys are stopped and rolled back (`interrupted`), within
    /// `grace`.
    pub async fn stop(self, grace: Duration) {
        self.state.queue.stop(grace).await;
        self.dispatcher.abort();
        // Deliveries not sent yet are in the database: the next start sends them.
        self.notifier.abort();
        if let Some(leases) = self.leases {
            leases.abort();
        }
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.state.store.close().await;
    }
}

/// How often a daemon on a shared database renews its leases and looks for expired ones (a third of
/// [`store::LEASE`]: two renewals can fail before a lease is lost).
const LEASE_RENEWAL: Duration = Duration::from_secs(5);

/// Renews this daemon's leases, and interrupts the deploys of daemons whose leases expired: their Kamal
/// lock (the one their process took, and no other) is released and their log says what happened.
async fn keep_leases(store: Store, queue: Arc<Queue>, hosts: Arc<hosts::ServiceHosts>, instance: String) {
    let mut renewed = Instant::now();
    loop {
        // Runs this daemon can no longer vouch for are stopped: a lease lost (another daemon interrupted the
        // deploy), or not renewed for so long that another daemon may be about to.
        let running = queue.running_ids();
        match store.renew_leases().await {
            Ok(Some(held)) => {
                renewed = Instant::now();
                let lost: Vec<i64> = running.into_iter().filter(|id| !held.contains(id)).collect();
                queue.abandon(&lost);
            }
            Ok(None) => {}
            Err(_) if renewed.elapsed() >= store::LEASE - LEASE_RENEWAL => queue.abandon(&running),
            // A database that does not answer: the next pass tries again (and no deploy starts meanwhile).
            Err(_) => {}
        }
        let error = format!(
            "the daemon running it stopped renewing its lease (dead, frozen or cut off); {instance} marked it \
             interrupted and released its deploy lock; hosts kept serving what they ran"
        );
        if let Ok(expired) = store.expire_leases(&error).await {
            for (deploy, holder) in expired {
                let (store, hosts, instance) = (store.clone(), Arc::clone(&hosts), instance.clone());
                tokio::spawn(async move {
                    let runner = deploy.runner.clone().unwrap_or_default();
                    let line = match holder {
                        Some(holder) => {
                            match hosts.release_lock_held_by(&deploy.service, deploy.destination.clone(), holder).await
                            {
                                Ok(Some(host)) => format!(
                                    "{instance}: {runner} stopped renewing its lease; released the deploy lock it held on {host}"
                                ),
                                Ok(None) => format!(
                                    "{instance}: {runner} stopped renewing its lease; no deploy lock of it was left"
                                ),
                                Err(error) => format!(
                                    "{instance}: {runner} stopped renewing its lease; its deploy lock could not be checked ({error})"
                                ),
                            }
                        }
                        None => format!("{instance}: {runner} stopped renewing its lease"),
                    };
                    let _ = store.append_note(deploy.id, &line).await;
                });
            }
        }
        tokio::time::sleep(LEASE_RENEWAL).await;
    }
}

/// The configured store: PostgreSQL at `database_url`, else SQLite in `data_dir`.
pub async fn open_store(config: &DaemonConfig) -> Result<Store, StoreError> {
    match &config.database_url {
        Some(url) => Store::connect(url, &config.instance, &crate::engine::lock::Holder::current().line()).await,
        None => Store::open(&config.database_path()).await,
    }
}

/// Takes the data directory's OS lock (`berth.lock`, an exclusive `flock`: released by the kernel when the
/// process ends, however it ends) and writes who holds it, for the message a second daemon gets.
fn lock_data_dir(config: &DaemonConfig) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = config.data_dir.join("berth.lock");
    let failed = |source| DaemonError::Lock { path: path.display().to_string(), source };
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(DaemonError::AlreadyRunning {
                data_dir: config.data_dir.display().to_string(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(failed(source)),
    }
    let holder = format!("instance {}, pid {}", config.instance, std::process::id());
    file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(holder.as_bytes())).map_err(failed)?;
    Ok(file)
}

/// Loads the configuration named (or `berth.yml` in `env`'s directory, or `BERTH_CONFIG`); without a file
/// there, a daemon with no services.
pub fn load_config(file: Option<&std::path::Path>, env: &Environment) -> Result<DaemonConfig, DaemonError> {
    let named =
        file.map(|file| env.cwd().join(file)).or_else(|| env.get("BERTH_CONFIG").map(|file| env.cwd().join(file)));
    let mut config = match named {
        Some(path) => DaemonConfig::load(&path)?,
        None => {
            let default = env.cwd().join(config::DEFAULT_FILE);
            if default.exists() { DaemonConfig::load(&default)? } else { DaemonConfig::empty(env.cwd()) }
        }
    };
    if let Some(url) = env.get("BERTH_DATABASE_URL").filter(|url| !url.is_empty()) {
        if !config::is_postgres_url(url) {
            return Err(DaemonError::DatabaseUrl);
        }
        config.database_url = Some(url.to_string());
    }
    Ok(config)
}

/// The runner the daemon uses: the engine, over SSH.
pub fn engine_runner(config: &DaemonConfig, env: &Environment) -> Arc<dyn Runner> {
    Arc::new(runner::EngineRunner::new(Arc::new(config.services.clone()), config.data_dir.clone(), env.clone()))
}
