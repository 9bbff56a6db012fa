//! The `berth` command line: Kamal's commands and flags, parsed with clap. The only module that prints.
//!
//! Errors from lower layers arrive as typed errors; here they become a message on stderr and an exit code
//! (1 for a failed command, 2 for bad usage, as clap does).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

mod daemon_commands;
mod hosts_commands;
mod on_hosts;
mod server_client;

use hosts_commands::*;

use crate::config::{Config, LoadOptions, kamal_summary, resolved_view};
use crate::environment::Environment;
use crate::project;
use crate::secrets::Secrets;

/// berth: deploy web apps to any Linux host with Docker, with zero downtime. Reads Kamal's config/deploy.yml.
#[derive(Debug, Parser)]
#[command(name = "berth", disable_version_flag = true, disable_help_flag = true, max_term_width = 110)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Kamal's global options, accepted by every command.
#[derive(Clone, Debug, Args)]
pub struct GlobalArgs {
    /// Path to the configuration file
    #[arg(short = 'c', long = "config-file", global = true, default_value = "config/deploy.yml", value_name = "FILE")]
    pub config_file: PathBuf,

    /// Destination: also reads config/deploy.DESTINATION.yml and .kamal/secrets.DESTINATION
    #[arg(short = 'd', long, global = true, value_name = "DESTINATION")]
    pub destination: Option<String>,

    /// Version to deploy (default: $VERSION, else the git commit of HEAD)
    #[arg(long = "version", global = true, value_name = "VERSION")]
    pub version: Option<String>,

    /// Detailed logging
    #[arg(short = 'v', long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Minimal logging
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,

    /// Print help (kamal's `-h` selects hosts, so help is `--help` only)
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    #[command(flatten)]
    pub hosts: HostArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up all accessories, the proxy and deploy the app to servers
    Setup(DeployArgs),

    /// Deploy the app to servers: build, push, pull, boot with a health-gated cutover, prune
    Deploy(DeployArgs),

    /// Deploy the app to servers without the proxy check and pruning (faster)
    Redeploy(DeployArgs),

    /// Roll back the app to a version whose containers are still on the servers
    Rollback {
        /// The version to go back to (see `berth app containers`)
        version: String,

        #[command(flatten)]
        server: server_client::ServerArgs,
    },

    /// Remove the app, the proxy (where no other app uses it), accessories and registry sessions from servers
    Remove(ConfirmArgs),

    /// Show details about all containers
    Details,

    /// Show the audit log from servers
    Audit,

    /// Manage the application
    #[command(subcommand)]
    App(AppCommand),

    /// Manage accessories (db, redis, search, …)
    #[command(subcommand)]
    Accessory(AccessoryCommand),

    /// Manage the proxy on servers; `run`, `deploy`, `pause`, … are kamal-proxy's own commands
    #[command(subcommand)]
    Proxy(ProxyCommand),

    /// Prune old application images and containers
    #[command(subcommand)]
    Prune(PruneCommand),

    /// Bootstrap servers with Docker, or run commands on them
    #[command(subcommand)]
    Server(ServerCommand),

    /// Manage the deploy lock
    #[command(subcommand)]
    Lock(LockCommand),

    /// Log in and out of the image registry
    #[command(subcommand)]
    Registry(RegistryCommand),

    /// Build, push and pull the application image
    #[command(subcommand)]
    Build(BuildCommand),

    /// Show the resolved configuration (secrets are never printed)
    Config(ConfigArgs),

    /// Create config/deploy.yml, .kamal/secrets and sample hooks in the current directory
    Init(InitArgs),

    /// Show the documentation of the configuration, or of one section
    Docs(DocsArgs),

    /// Helpers for extracting secrets from password managers (used inside .kamal/secrets)
    #[command(subcommand)]
    Secrets(crate::secrets::cli::SecretsCommand),

    /// Print a shell completion script
    Completions(CompletionsArgs),

    /// Run the deploy daemon: HTTP API, durable queue (SQLite), live logs (until SIGTERM)
    Serve(daemon_commands::ServeArgs),

    /// Manage the daemon's API tokens
    #[command(subcommand)]
    Token(daemon_commands::TokenCommand),

    /// Show berth's own version
    Version,

    /// An alias from the configuration's `aliases:`
    #[command(external_subcommand)]
    Alias(Vec<String>),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Output format: berth's resolved view (yaml, json), or the summary `kamal config` prints (kamal)
    #[arg(long, value_enum, default_value_t = ConfigFormat::Yaml)]
    pub format: ConfigFormat,

    /// Also read .kamal/secrets* and fail if a secret the configuration names is missing (values stay hidden)
    #[arg(long)]
    pub check_secrets: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    Yaml,
    Json,
    Kamal,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to initialise (default: the current directory)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DocsArgs {
    /// A section: configuration, servers, role, env, proxy, registry, builder, ssh, sshkit, accessory, boot, logging, alias
    pub section: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Environment::from_process();
    let mut stdout = std::io::stdout().lock();
    match run(&cli, &env, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = stdout.flush();
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command, writing its output to `out`.
pub fn run(cli: &Cli, env: &Environment, out: &mut dyn Write) -> anyhow::Result<()> {
    let global = &cli.global;
    if let Some(submission) = server_submission(cli, env)? {
        return server_client::run(submission, out);
    }
    if on_hosts::run(cli, env)? {
        return Ok(());
    }
    match &cli.command {
        Command::Config(args) => {
            let config = load_config(global, env)?;
            if args.check_secrets {
                check_secrets(&config, env)?;
            }
            let text = match args.format {
                ConfigFormat::Kamal => kamal_summary::render(&config),
                // Quoted where Psych would misread a string, so Kamal's own YAML reader sees the same values.
                ConfigFormat::Yaml => {
                    kamal_summary::to_psych_yaml(&yaml_serde::to_value(resolved_view::resolved(&config))?)
                }
                ConfigFormat::Json => serde_json::to_string_pretty(&resolved_view::resolved(&config))? + "\n",
            };
            out.write_all(text.as_bytes())?;
        }
        Command::Init(args) => {
            let dir = env.cwd().join(&args.dir);
            for line in project::init(&dir)? {
                writeln!(out, "{line}")?;
            }
        }
        Command::Docs(args) => out.write_all(project::docs(args.section.as_deref())?.as_bytes())?,
        Command::Secrets(command) => {
            let root = project_root(&global.config_file, env);
            let secrets_path = secrets_path(global, env);
            crate::secrets::cli::run(command, &root, &secrets_path, global.destination.as_deref(), env, out)?;
        }
        Command::Completions(args) => {
            let mut command = Cli::command();
            let mut buffer = Vec::new();
            clap_complete::generate(args.shell, &mut command, "berth", &mut buffer);
            out.write_all(&buffer)?;
        }
        Command::Version => writeln!(out, "berth {}", env!("CARGO_PKG_VERSION"))?,
        Command::Serve(args) => daemon_commands::serve(args, env, out)?,
        Command::Token(command) => daemon_commands::token(command, env, out)?,
        Command::Proxy(proxy) => return run_proxy_control(proxy),
        Command::Alias(words) => return run_alias(global, env, words, out),
        _ => unreachable!("host commands run in on_hosts"),
    }
    Ok(())
}

/// `deploy`, `redeploy` or `rollback` with `--server`: the request for the daemon, or None.
fn server_submission(cli: &Cli, env: &Environment) -> anyhow::Result<Option<server_client::Submission>> {
    let global = &cli.global;
    let (server_args, rollback_version, skip_push) = match &cli.command {
        Command::Deploy(args) | Command::Redeploy(args) => (&args.server, None, args.skip_push),
        Command::Rollback { version, server } => (server, Some(version), false),
        _ => return Ok(None),
    };
    let Some(server) = &server_args.server else { return Ok(None) };
    let token = env
        .get("BERTH_TOKEN")
        .filter(|token| !token.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--server needs the daemon's token in $BERTH_TOKEN (never on the command line); create one with `berth token create --scope deploy`"))?
        .to_string();
    let service = match &server_args.service {
        Some(service) => service.clone(),
        None => load_config_without_version(global, env).map(|config| config.service).map_err(|error| {
            anyhow::anyhow!("name the service with --service (the configuration here does not load: {error})")
        })?,
    };
    let (path, body) = match rollback_version {
        Some(version) => (
            format!("/services/{service}/rollback"),
            serde_json::json!({"version": version, "destination": global.destination, "reason": server_args.reason}),
        ),
        None => {
            if skip_push && global.version.is_none() {
                anyhow::bail!("with --server, -P needs --version VERSION: the image tag already in the registry");
            }
            if global.version.is_some() && server_args.git_ref.is_some() {
                anyhow::bail!(
                    "give --version (an image already in the registry) or --ref (build that commit), not both"
                );
            }
            let body = serde_json::json!({
                "service": service,
                "destination": global.destination,
                "version": global.version,
                "ref": server_args.git_ref,
                "reason": server_args.reason,
            });
            ("/deploys".to_string(), body)
        }
    };
    // JSON nulls for what was not given: the daemon takes them as absent.
    let body = match body {
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    };
    Ok(Some(server_client::Submission { server: server.clone(), token, path, body }))
}

/// kamal-proxy's own commands (`berth proxy run|deploy|pause|…`), for the proxy on this machine.
fn run_proxy_control(proxy: &ProxyCommand) -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec!["kamal-proxy".into()];
    match proxy {
        ProxyCommand::Control(words) => args.extend(words.iter().map(Into::into)),
        ProxyCommand::Stop { service: Some(service), rest } => {
            args.extend(["stop".into(), service.into()]);
            args.extend(rest.iter().map(Into::into));
        }
        ProxyCommand::Remove { service: Some(service), .. } => args.extend(["remove".into(), service.into()]),
        _ => unreachable!("host proxy commands run in on_hosts"),
    }
    match crate::proxy::cli::main(args) {
        code if code == ExitCode::SUCCESS => Ok(()),
        _ => anyhow::bail!("the proxy command failed"),
    }
}

/// `berth NAME …` where NAME is in `aliases:`: the alias's command line with the rest appended, run again.
fn run_alias(global: &GlobalArgs, env: &Environment, words: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let (name, rest) = words.split_first().expect("clap gives the subcommand name");
    let config = load_config_without_version(global, env)?;
    let Some(alias) = config.aliases.get(name) else {
        let mut known: Vec<&str> = config.aliases.keys().map(String::as_str).collect();
        known.sort();
        anyhow::bail!(
            "unknown command '{name}' (and no alias of that name in the configuration{}); see `berth --help`",
            if known.is_empty() { String::new() } else { format!(": aliases are {}", known.join(", ")) }
        );
    };
    let alias_words = shell_words::split(alias).map_err(|err| anyhow::anyhow!("alias '{name}': {err}"))?;
    // The original command line with the alias name replaced by its words (global flags keep their place).
    let original: Vec<String> = std::env::args().collect();
    let at = original.iter().position(|word| word == name).unwrap_or(original.len());
    let mut argv: Vec<String> = original[..at].to_vec();
    if argv.is_empty() {
        argv.push("berth".into());
    }
    argv.extend(alias_words);
    argv.extend(rest.iter().cloned());
    let cli = Cli::try_parse_from(&argv)?;
    if matches!(cli.command, Command::Alias(_)) {
        anyhow::bail!("alias '{name}' refers to another alias or an unknown command: {alias}");
    }
    run(&cli, env, out)
}

/// Resolves every secret the configuration names, reporting all missing ones at once.
fn check_secrets(config: &Config, env: &Environment) -> anyhow::Result<()> {
    let secrets = Secrets::load(&config.root, &config.secrets_path, config.destination.as_deref(), env)?;
    let mut missing = Vec::new();
    for (path, name) in config.secret_references() {
        if let Err(err) = secrets.get(&name) {
            missing.push(format!("{path}: {err}"));
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("{} missing secret(s):\n  - {}", missing.len(), missing.join("\n  - "));
    }
    Ok(())
}

fn load_config(global: &GlobalArgs, env: &Environment) -> Result<Config, crate::config::ConfigError> {
    let options = LoadOptions {
        config_file: env.cwd().join(&global.config_file),
        destination: global.destination.clone(),
        version: global.version.clone(),
    };
    Config::load(&options, env)
}

/// The configuration for commands that never use the version: with no version to be found, `latest` stands in.
fn load_config_without_version(global: &GlobalArgs, env: &Environment) -> Result<Config, crate::config::ConfigError> {
    match load_config(global, env) {
        Err(crate::config::ConfigError::NoVersion { .. }) => {
            load_config(&GlobalArgs { version: Some("latest".into()), ..global.clone() }, env)
        }
        other => other,
    }
}

/// The project root for commands that don't need the whole configuration (the parent of `config/`).
fn project_root(config_file: &std::path::Path, env: &Environment) -> PathBuf {
    let file = env.cwd().join(config_file);
    match file.parent() {
        Some(dir) if dir.file_name().is_some_and(|n| n == "config") => dir.parent().unwrap_or(dir).to_path_buf(),
        Some(dir) => dir.to_path_buf(),
        None => env.cwd().to_path_buf(),
    }
}

/// `secrets_path` from the configuration when it loads, else Kamal's default.
fn secrets_path(global: &GlobalArgs, env: &Environment) -> String {
    load_config(global, env).map(|c| c.secrets_path).unwrap_or_else(|_| ".kamal/secrets".to_string())
}
