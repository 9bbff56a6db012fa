//! clap definitions of Kamal's commands that act on hosts (deploy, rollback, app, accessory, proxy, prune,
//! server, lock, registry, build, …), with Kamal's flag names.

use clap::{Args, Subcommand};

/// Kamal's host filters and run options, accepted by every command that touches hosts.
#[derive(Clone, Debug, Default, Args)]
pub struct HostArgs {
    /// Run commands on these hosts instead of all (separate by comma, supports wildcards with *)
    #[arg(short = 'h', long = "hosts", global = true, value_name = "HOSTS")]
    pub hosts: Option<String>,

    /// Run commands for these roles instead of all (separate by comma, supports wildcards with *)
    #[arg(short = 'r', long = "roles", global = true, value_name = "ROLES")]
    pub roles: Option<String>,

    /// Run commands only on primary host instead of all
    #[arg(short = 'p', long = "primary", global = true)]
    pub primary: bool,

    /// Don't run hooks
    #[arg(short = 'H', long = "skip-hooks", global = true)]
    pub skip_hooks: bool,

    /// Wait for the deploy lock instead of failing when another deploy holds it
    #[arg(long = "lock-wait", global = true)]
    pub lock_wait: bool,

    /// Seconds to wait for the deploy lock
    #[arg(long = "lock-wait-timeout", global = true, default_value_t = 900, value_name = "SECONDS")]
    pub lock_wait_timeout: u64,

    /// Seconds between tries for the deploy lock
    #[arg(long = "lock-wait-interval", global = true, default_value_t = 15, value_name = "SECONDS")]
    pub lock_wait_interval: u64,

    /// Trust host keys not yet in known_hosts and record them there (first connection to new hosts).
    /// A host whose key CHANGED is always refused.
    #[arg(long = "trust-new-host-keys", global = true)]
    pub trust_new_host_keys: bool,
}

#[derive(Clone, Debug, Default, Args)]
pub struct DeployArgs {
    /// Skip image build and push (the image must already be in the registry)
    #[arg(short = 'P', long = "skip-push")]
    pub skip_push: bool,

    /// Build without the Docker build cache
    #[arg(long = "no-cache")]
    pub no_cache: bool,

    #[command(flatten)]
    pub server: super::server_client::ServerArgs,
}

#[derive(Clone, Debug, Args)]
pub struct ConfirmArgs {
    /// Proceed without confirmation question
    #[arg(short = 'y', long = "confirmed")]
    pub confirmed: bool,
}

#[derive(Clone, Debug, Default, Args)]
pub struct LogsArgs {
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m for 42 minutes)
    #[arg(short = 's', long = "since")]
    pub since: Option<String>,

    /// Number of lines to show from each server (default 100, 10 with --follow)
    #[arg(short = 'n', long = "lines")]
    pub lines: Option<u64>,

    /// Show lines with this text only (grep)
    #[arg(short = 'g', long = "grep")]
    pub grep: Option<String>,

    /// Additional options for grep
    #[arg(long = "grep-options")]
    pub grep_options: Option<String>,

    /// Follow log on primary server (or the host given with --hosts)
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,

    /// Skip appending timestamps to logging output
    #[arg(short = 'T', long = "skip-timestamps")]
    pub skip_timestamps: bool,

    /// Show logs of this container (default: the running version's)
    #[arg(long = "container-id")]
    pub container_id: Option<String>,
}

#[derive(Clone, Debug, Default, Args)]
pub struct ExecArgs {
    /// Execute command over ssh for an interactive shell (use for console/bash)
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,

    /// Reuse currently running container instead of starting a new one
    #[arg(long = "reuse")]
    pub reuse: bool,

    /// Set environment variables for the command (KEY=VALUE)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Run the command in the background (a new container, detached)
    #[arg(long = "detach")]
    pub detach: bool,

    /// The command's output unmodified (no host prefix), for binary output
    #[arg(long = "raw")]
    pub raw: bool,

    /// The command to run
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Boot app on servers (or reboot app if already running)
    Boot,
    /// Start existing app container on servers
    Start,
    /// Stop app container on servers
    Stop,
    /// Restart app container: stop, then start (no zero downtime)
    Restart,
    /// Show details about app containers
    Details,
    /// Show app containers on servers
    Containers,
    /// Show app images on servers
    Images,
    /// Show log lines from app on servers
    Logs(LogsArgs),
    /// Execute a custom command on servers within the app container
    Exec(ExecArgs),
    /// Show app version currently running on servers
    Version,
    /// Set the app to maintenance mode (requests get 503)
    Maintenance(MaintenanceArgs),
    /// Set the app to live mode (after maintenance)
    Live,
    /// Remove app containers and images from servers
    Remove,
    /// Detect app stale containers (running, but not the current version)
    #[command(name = "stale_containers", alias = "stale-containers")]
    StaleContainers {
        /// Stop the stale containers found
        #[arg(short = 's', long = "stop")]
        stop: bool,
    },
}

#[derive(Clone, Debug, Default, Args)]
pub struct MaintenanceArgs {
    /// How long to wait for in-flight requests to finish (seconds; default: drain_timeout)
    #[arg(long = "drain-timeout", alias = "drain_timeout")]
    pub drain_timeout: Option<u64>,

    /// Message shown on the 503 page
    #[arg(long = "message")]
    pub message: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccessoryCommand {
    /// Boot new accessory service on host (use NAME=all to boot all accessories)
    Boot { name: String },
    /// Reboot existing accessory on host (stop, remove, boot; not zero-downtime)
    Reboot { name: String },
    /// Start existing accessory container on host
    Start { name: String },
    /// Stop existing accessory container on host
    Stop { name: String },
    /// Restart existing accessory container on host
    Restart { name: String },
    /// Show details about accessory on host (use NAME=all to show all accessories)
    Details { name: String },
    /// Show log lines from accessory on host
    Logs {
        name: String,
        #[command(flatten)]
        logs: LogsArgs,
    },
    /// Execute a custom command on servers within the accessory container
    Exec {
        name: String,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Remove accessory container, image and data directory from host (use NAME=all to remove all)
    Remove {
        name: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Boot proxy on servers (keeps a running one)
    Boot,
    /// Reboot proxy on servers (stop container, remove container, start new container)
    Reboot {
        /// Reboot one host at a time
        #[arg(long)]
        rolling: bool,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
    /// Start existing proxy container on servers
    Start,
    /// Restart existing proxy container on servers
    Restart,
    /// Show details about proxy container from servers
    Details,
    /// Show log lines from proxy on servers
    Logs(LogsArgs),
    /// Stop the proxy container on servers; with SERVICE, kamal-proxy's `stop` (maintenance) on this machine's proxy
    Stop {
        service: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Remove proxy container and image from servers; with SERVICE, kamal-proxy's `remove` on this machine's proxy
    Remove {
        service: Option<String>,
        /// Remove even if apps are still installed
        #[arg(long)]
        force: bool,
    },
    /// kamal-proxy's own commands, for the proxy on this machine: run, deploy, pause, resume, list, rollout
    #[command(external_subcommand)]
    Control(Vec<String>),
}

#[derive(Debug, Subcommand)]
pub enum PruneCommand {
    /// Prune unused images and stopped containers
    All,
    /// Prune unused images
    Images,
    /// Prune all stopped containers, except the last n (default: retain_containers)
    Containers {
        #[arg(long)]
        retain: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run a custom command on the servers
    Exec {
        /// Run over ssh for an interactive shell
        #[arg(short = 'i', long = "interactive")]
        interactive: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Check Docker is on the servers and run the docker-setup hook
    Bootstrap,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Acquire the deploy lock
    Acquire {
        /// A message for others: why the lock is held
        #[arg(short = 'm', long = "message", required = true)]
        message: String,
    },
    /// Release the deploy lock
    Release,
    /// Report the deploy lock status
    Status,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Log in to the registry on the servers (and locally unless -L)
    Login(RegistryArgs),
    /// Log out of the registry on the servers (and locally unless -L)
    Logout(RegistryArgs),
}

#[derive(Clone, Debug, Args)]
pub struct RegistryArgs {
    /// Skip the local machine
    #[arg(short = 'L', long = "skip-local")]
    pub skip_local: bool,
    /// Skip the servers
    #[arg(short = 'R', long = "skip-remote")]
    pub skip_remote: bool,
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Build the app image and push it to the registry, then pull it on servers
    Deliver(DeployArgs),
    /// Build the app image and push it to the registry
    Push(DeployArgs),
    /// Pull the app image from the registry onto servers
    Pull,
}
