//! `berth serve` (the deploy daemon, until SIGTERM) and `berth token create|list|revoke` (its API tokens).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::daemon::model::Scope;
use crate::daemon::{self, Daemon, auth};
use crate::environment::Environment;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The daemon's configuration (default: berth.yml here, or $BERTH_CONFIG)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This daemon's name among several on one database (default: `instance:` in berth.yml, else the host's
    /// name and the port)
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (alone, on stdout): it is shown this once, and stored hashed
    Create {
        /// What it may do: read (see), deploy (also start, cancel, roll back), admin (also the audit log)
        #[arg(long, value_parser = ["read", "deploy", "admin"])]
        scope: String,
        /// Limit it to one service
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// A name for it (shown in the audit log; default: its scope and service)
        #[arg(long)]
        name: Option<String>,
        /// The daemon's configuration (default: berth.yml here, or $BERTH_CONFIG)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List tokens (never their values)
    List {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Revoke a token by its id (see `berth token list`)
    Revoke {
        id: i64,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub fn serve(args: &ServeArgs, env: &Environment, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut config = daemon::load_config(args.config.as_deref(), env)?;
    if let Some(name) = &args.instance {
        if !daemon::config::valid_instance(name) {
            anyhow::bail!("--instance {name:?}: a name of letters, digits, '.', '-', '_' and ':' (at most 100)");
        }
        config.instance = name.clone();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| daemon::DaemonError::Listen { address: config.listen, source })?;
        let services = config.services.len();
        let data_dir = config.data_dir.clone();
        let file = config.file.clone();
        let runner = daemon::engine_runner(&config, env);
        let daemon = Daemon::start(config, listener, runner, env).await?;
        writeln!(
            out,
            "berth serve: {} listening on http://{} ({services} service(s); data in {}; API docs at /docs)",
            daemon.state.config.instance,
            daemon.address,
            data_dir.display()
        )?;
        if services == 0 {
            writeln!(
                out,
                "berth serve: no services yet: add them under `services:` in {} and restart (see config/berth.yml in berth's repository)",
                file.map_or("berth.yml".to_string(), |file| file.display().to_string())
            )?;
        }
        for notice in &daemon.notices {
            writeln!(out, "berth serve: {notice}")?;
        }
        out.flush()?;
        wait_for_stop().await;
        writeln!(out, "berth serve: stopping: no new deploys start; running ones are stopped at a safe point and rolled back")?;
        out.flush()?;
        daemon.stop(Duration::from_secs(120)).await;
        writeln!(out, "berth serve: stopped")?;
        Ok(())
    })
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}

/// `berth token …`, on the daemon's database directly.
pub fn token(command: &TokenCommand, env: &Environment, out: &mut dyn Write) -> anyhow::Result<()> {
    let config_file = match command {
        TokenCommand::Create { config, .. } | TokenCommand::List { config } | TokenCommand::Revoke { config, .. } => {
            config
        }
    };
    let config = daemon::load_config(config_file.as_deref(), env)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
        let store = daemon::open_store(&config).await?;
        match command {
            TokenCommand::Create { scope, service, name, .. } => {
                let scope = Scope::parse(scope).expect("clap checked the scope");
                if let Some(service) = service
                    && !config.services.contains_key(service)
                {
                    anyhow::bail!(
                        "no service `{service}` in the daemon's configuration{}",
                        if config.services.is_empty() {
                            String::new()
                        } else {
                            format!(" (it has {})", config.services.keys().cloned().collect::<Vec<_>>().join(", "))
                        }
                    );
                }
                let token = auth::new_token();
                let name = name.clone().unwrap_or_else(|| match service {
                    Some(service) => format!("{}@{service}", scope.name()),
                    None => scope.name().to_string(),
                });
                store.insert_token(&name, &auth::hash(&token), scope, service.as_deref()).await?;
                writeln!(out, "{token}")?;
            }
            TokenCommand::List { .. } => {
                for token in store.list_tokens().await? {
                    let status = match &token.revoked_at {
                        Some(at) => format!("revoked {at}"),
                        None => "active".to_string(),
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\tcreated {}\t{status}",
                        token.id,
                        token.name,
                        token.scope.name(),
                        token.service.as_deref().unwrap_or("all services"),
                        token.created_at
                    )?;
                }
            }
            TokenCommand::Revoke { id, .. } => {
                if !store.revoke_token(*id).await? {
                    anyhow::bail!("no active token with id {id} (see `berth token list`)");
                }
                writeln!(out, "revoked token {id}")?;
            }
        }
        store.close().await;
        Ok(())
    })
}
