//! Running Kamal's host commands from the command line: builds the engine (config, host selection, SSH, the
//! console sink), turns Ctrl-C into a clean cancel (the lock is released, hosts keep a running version), and
//! maps each subcommand to the engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::hosts_commands::*;
use super::{Cli, Command, load_config, load_config_without_version};
use crate::commands::app::LogOptions;
use crate::engine::flows::DeployOptions;
use crate::engine::output::{ConsoleSink, Redactor, Verbosity};
use crate::engine::selection::Filters;
use crate::engine::{Engine, RunOptions};
use crate::environment::Environment;

/// Runs a host command; returns Ok(false) when `cli.command` is not one.
pub fn run(cli: &Cli, env: &Environment) -> anyhow::Result<bool> {
    let (command, subcommand) = match &cli.command {
        Command::Setup(_) => ("setup", None),
        Command::Deploy(_) => ("deploy", None),
        Command::Redeploy(_) => ("redeploy", None),
        Command::Rollback { .. } => ("rollback", None),
        Command::Remove(_) => ("remove", None),
        Command::Details => ("details", None),
        Command::Audit => ("audit", None),
        Command::App(sub) => ("app", Some(app_subcommand(sub))),
        Command::Accessory(_) => ("accessory", None),
        Command::Proxy(ProxyCommand::Control(_)) => return Ok(false),
        Command::Proxy(ProxyCommand::Stop { service: Some(_), .. } | ProxyCommand::Remove { service: Some(_), .. }) => {
            return Ok(false);
        }
        Command::Proxy(_) => ("proxy", None),
        Command::Prune(_) => ("prune", None),
        Command::Server(_) => ("server", None),
        Command::Lock(_) => ("lock", None),
        Command::Registry(_) => ("registry", None),
        Command::Build(_) => ("build", None),
        _ => return Ok(false),
    };
    let global = &cli.global;
    let mut global_for_config = global.clone();
    if let Command::Rollback { version, .. } = &cli.command {
        global_for_config.version = Some(version.clone());
    }
    let needs_version =
        matches!(cli.command, Command::Setup(_) | Command::Deploy(_) | Command::Redeploy(_) | Command::Build(_));
    // Like Kamal, only commands that deploy need a version; the others use the `latest` tag's.
    let config = if needs_version {
        load_config(&global_for_config, env)?
    } else {
        load_config_without_version(&global_for_config, env)?
    };
    let verbosity = if global.quiet {
        Verbosity::Quiet
    } else if global.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let redactor = Redactor::default();
    let sink = Arc::new(ConsoleSink::new(verbosity, redactor.clone(), Box::new(std::io::stdout())));
    let hosts = &global.hosts;
    let options = RunOptions {
        filters: Filters { hosts: hosts.hosts.clone(), roles: hosts.roles.clone(), primary: hosts.primary },
        skip_hooks: hosts.skip_hooks,
        lock_wait: hosts
            .lock_wait
            .then(|| (Duration::from_secs(hosts.lock_wait_timeout), Duration::from_secs(hosts.lock_wait_interval))),
        trust_new_host_keys: hosts.trust_new_host_keys,
        command: command.to_string(),
        subcommand: subcommand.map(str::to_string),
    };
    let engine = Engine::new(config, env.clone(), sink.clone(), redactor, options)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let cancel = engine.cancel_handle();
        // Ctrl-C or SIGTERM (a CI runner stopping the job): abandon a build, pull or early hook, or finish the
        // current boot step; roll back what switched; release the lock. A second signal exits at once.
        tokio::spawn(async move {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match terminate.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
            eprintln!(
                "\nCancelling (again to abort at once): what changes no host (build, pull, early hooks, following logs) stops now; a boot step finishes, then what switched is rolled back and the lock released"
            );
            cancel.cancel();
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        });
        let result = dispatch(&engine, &cli.command).await;
        engine.close().await;
        result
    });
    result?;
    sink.finished();
    Ok(true)
}

fn app_subcommand(command: &AppCommand) -> &'static str {
    match command {
        AppCommand::Boot => "boot",
        AppCommand::Start => "start",
        AppCommand::Stop => "stop",
        AppCommand::Restart => "restart",
        AppCommand::Details => "details",
        AppCommand::Containers => "containers",
        AppCommand::Images => "images",
        AppCommand::Logs(_) => "logs",
        AppCommand::Exec(_) => "exec",
        AppCommand::Version => "version",
        AppCommand::Maintenance(_) => "maintenance",
        AppCommand::Live => "live",
        AppCommand::Remove => "remove",
        AppCommand::StaleContainers { .. } => "stale_containers",
    }
}

async fn dispatch(engine: &Engine, command: &Command) -> anyhow::Result<()> {
    let deploy_options = |args: &DeployArgs| DeployOptions { skip_push: args.skip_push, no_cache: args.no_cache };
    match command {
        Command::Setup(args) => engine.setup(deploy_options(args)).await?,
        Command::Deploy(args) => engine.deploy(deploy_options(args)).await?,
        Command::Redeploy(args) => engine.redeploy(deploy_options(args)).await?,
        Command::Rollback { version, .. } => engine.rollback(version).await?,
        Command::Remove(confirm) => {
            confirmed(confirm, "This will remove all containers and images. Are you sure?")?;
            engine.remove_everything().await?
        }
        Command::Details => engine.details().await?,
        Command::Audit => engine.audit().await?,
        Command::App(app) => match app {
            AppCommand::Boot => engine.with_lock(engine.boot_app(&engine.config.version, Default::default())).await?,
            AppCommand::Start => engine.start_app().await?,
            AppCommand::Stop => engine.stop_app().await?,
            AppCommand::Restart => {
                engine.stop_app().await?;
                engine.start_app().await?
            }
            AppCommand::Details => {
                engine.show_per_role(|role| crate::commands::app::info(&engine.config, role)).await?
            }
            AppCommand::Containers => {
                engine.show_per_role(|role| crate::commands::app::list_containers(&engine.config, role)).await?
            }
            AppCommand::Images => engine.app_images().await?,
            AppCommand::Logs(args) => engine.app_logs(&log_options(args)).await?,
            AppCommand::Exec(args) => engine.app_exec(args.reuse, args.interactive, &args.env, &args.cmd).await?,
            AppCommand::Version => engine.app_version().await?,
            AppCommand::Maintenance(args) => {
                engine.set_maintenance(true, args.drain_timeout, args.message.as_deref()).await?
            }
            AppCommand::Live => engine.set_maintenance(false, None, None).await?,
            AppCommand::Remove => engine.with_lock(engine.remove_app()).await?,
            AppCommand::StaleContainers { stop } => engine.stale_containers(*stop).await?,
        },
        Command::Accessory(accessory) => match accessory {
            AccessoryCommand::Boot { name } => engine.with_lock(engine.boot_accessories(Some(name))).await?,
            AccessoryCommand::Reboot { name } => engine.with_lock(engine.reboot_accessory(name)).await?,
            AccessoryCommand::Start { name } => engine.accessory_action(name, AccessoryAction::Start).await?,
            AccessoryCommand::Stop { name } => engine.accessory_action(name, AccessoryAction::Stop).await?,
            AccessoryCommand::Restart { name } => {
                engine.accessory_action(name, AccessoryAction::Stop).await?;
                engine.accessory_action(name, AccessoryAction::Start).await?
            }
            AccessoryCommand::Details { name } => engine.accessory_action(name, AccessoryAction::Details).await?,
            AccessoryCommand::Logs { name, logs } => engine.accessory_logs(name, &log_options(logs)).await?,
            AccessoryCommand::Exec { name, exec } => {
                engine.accessory_exec(name, exec.reuse, &exec.env, &exec.cmd).await?
            }
            AccessoryCommand::Remove { name, confirm } => {
                confirmed(
                    confirm,
                    &format!(
                        "This will remove the accessory {name}, its image and its data directories. Are you sure?"
                    ),
                )?;
                engine.with_lock(engine.remove_accessories(name)).await?
            }
        },
        Command::Proxy(proxy) => match proxy {
            ProxyCommand::Boot => engine.with_lock(engine.boot_proxy()).await?,
            ProxyCommand::Reboot { rolling, confirm } => {
                confirmed(confirm, "This will cause a brief outage on each host. Are you sure?")?;
                engine.with_lock(engine.reboot_proxy(*rolling)).await?
            }
            ProxyCommand::Start => engine.proxy_action(ProxyAction::Start).await?,
            ProxyCommand::Stop { .. } => engine.proxy_action(ProxyAction::Stop).await?,
            ProxyCommand::Restart => {
                engine.proxy_action(ProxyAction::Stop).await?;
                engine.proxy_action(ProxyAction::Start).await?
            }
            ProxyCommand::Details => engine.proxy_action(ProxyAction::Details).await?,
            ProxyCommand::Logs(args) => engine.proxy_logs(&log_options(args)).await?,
            ProxyCommand::Remove { force, .. } => engine.with_lock(engine.remove_proxy(*force)).await?,
            ProxyCommand::Control(_) => unreachable!("handled by the proxy's own CLI"),
        },
        Command::Prune(prune) => match prune {
            PruneCommand::All => engine.with_lock(engine.prune_all()).await?,
            PruneCommand::Images => engine.with_lock(engine.prune_images()).await?,
            PruneCommand::Containers { retain } => engine.with_lock(engine.prune_containers(*retain)).await?,
        },
        Command::Server(server) => match server {
            ServerCommand::Exec { interactive, cmd } => engine.server_exec(*interactive, &cmd.join(" ")).await?,
            ServerCommand::Bootstrap => engine.with_lock(engine.bootstrap_servers()).await?,
        },
        Command::Lock(lock) => match lock {
            LockCommand::Acquire { message } => engine.lock_acquire(message).await?,
            LockCommand::Release => engine.lock_release().await?,
            LockCommand::Status => engine.lock_status().await?,
        },
        Command::Registry(registry) => match registry {
            RegistryCommand::Login(args) => engine.registry_login_all(args.skip_local, args.skip_remote).await?,
            RegistryCommand::Logout(args) => engine.registry_logout_all(args.skip_local, args.skip_remote).await?,
        },
        Command::Build(build) => match build {
            BuildCommand::Deliver(args) => engine.deliver(deploy_options(args)).await?,
            BuildCommand::Push(args) => engine.build_push(deploy_options(args)).await?,
            BuildCommand::Pull => engine.pull_image().await?,
        },
        _ => unreachable!("not a host command"),
    }
    Ok(())
}

use crate::engine::operations::{AccessoryAction, ProxyAction};

fn log_options(args: &LogsArgs) -> LogOptions {
    LogOptions {
        since: args.since.clone(),
        lines: args.lines.or(if args.follow { Some(10) } else { Some(100) }),
        grep: args.grep.clone(),
        grep_options: args.grep_options.clone(),
        follow: args.follow,
        timestamps: !args.skip_timestamps,
        container_id: args.container_id.clone(),
    }
}

/// Destructive commands need `-y`, or a "y" typed at the question when berth runs in a terminal (as Kamal
/// asks); without a terminal (CI, the daemon) berth never waits on a prompt and refuses instead.
fn confirmed(confirm: &ConfirmArgs, question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if confirm.confirmed {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!("{question} Run again with -y/--confirmed to proceed");
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).context("reading the answer")?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => anyhow::bail!("Aborted: nothing was changed"),
    }
}
