//! Host preparation: Docker checks and installation, and the `.kamal` directories — Kamal's `Commands::Server`
//! and `Commands::Docker`.

use super::docker;
use super::names::{self, RUN_DIRECTORY};
use crate::command::Cmd;
use crate::config::Config;

/// `docker -v`: fails when Docker is not installed.
pub fn docker_installed() -> Cmd {
    docker().arg("-v")
}

/// `docker version`: fails when the Docker daemon is not reachable.
pub fn docker_running() -> Cmd {
    docker().arg("version")
}

/// Succeeds when the user is root or can `sudo` without a password (so Docker can be installed).
pub fn superuser() -> Cmd {
    Cmd::raw_script("[ \"${EUID:-$(id -u)}\" -eq 0 ] || sudo -nl usermod >/dev/null")
}

/// Installs Docker with the get.docker.com convenience script.
pub fn install_docker() -> Cmd {
    Cmd::new("curl")
        .args(["-fsSL", "https://get.docker.com"])
        .or(Cmd::new("wget").args(["-O", "-", "https://get.docker.com"]))
        .or(Cmd::new("echo").arg("exit 1"))
        .in_subshell()
        .pipe(Cmd::new("sh"))
}

/// Adds the SSH user to the `docker` group (when not root), so it can use Docker without sudo.
pub fn add_user_to_docker_group() -> Cmd {
    Cmd::raw_script("[ \"${EUID:-$(id -u)}\" -eq 0 ] || sudo -n usermod -aG docker \"${USER:-$(id -un)}\"")
}

/// `mkdir -p .kamal`.
pub fn ensure_run_directory() -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(RUN_DIRECTORY)
}

/// `mkdir -p .kamal/apps/<svc[-dest]>`.
pub fn ensure_app_directory(config: &Config) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::app_directory(config))
}

/// `mkdir -p .kamal/apps/<svc[-dest]>/env/roles`.
pub fn ensure_role_env_directory(config: &Config) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::role_env_directory(config))
}

/// `rm -r .kamal/apps/<svc[-dest]>`.
pub fn remove_app_directory(config: &Config) -> Cmd {
    Cmd::new("rm").arg("-r").arg(names::app_directory(config))
}

/// `ls .kamal/apps | wc -l`: how many apps a host still has (the proxy stays while there are any).
pub fn app_directory_count() -> Cmd {
    Cmd::new("ls").arg(names::apps_directory()).pipe(Cmd::new("wc").arg("-l"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::config;

    #[test]
    fn docker_checks() {
        assert_eq!(docker_installed().script(), "docker -v");
        assert_eq!(docker_running().script(), "docker version");
        assert_eq!(
            install_docker().script(),
            "sh -c 'curl -fsSL https://get.docker.com || wget -O - https://get.docker.com || echo '\\''exit 1'\\''' | sh"
        );
    }

    #[test]
    fn directories() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(ensure_run_directory().script(), "mkdir -p .kamal");
        assert_eq!(ensure_app_directory(&config).script(), "mkdir -p .kamal/apps/app");
        assert_eq!(ensure_role_env_directory(&config).script(), "mkdir -p .kamal/apps/app/env/roles");
        assert_eq!(remove_app_directory(&config).script(), "rm -r .kamal/apps/app");
        assert_eq!(app_directory_count().script(), "ls .kamal/apps | wc -l");
    }
}
