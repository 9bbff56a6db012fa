//! Registry login and logout on hosts (and locally), and the local registry container of `localhost:PORT`
//! registries — Kamal's `Commands::Registry`.
//!
//! The password goes to `docker login --password-stdin` on the command's stdin, never into its script, so it
//! reaches neither logs nor the host's process list. A username kept in a secret is read from stdin too.

use super::docker;
use crate::command::Cmd;
use crate::commands::env_file::MissingSecret;
use crate::config::model::{Credential, Registry};

/// The container serving a `localhost:PORT` registry on the deployer.
pub const LOCAL_REGISTRY_CONTAINER: &str = "kamal-docker-registry";
/// Its image.
pub const LOCAL_REGISTRY_IMAGE: &str = "registry:3";

/// `docker login [<server>] -u <user> --password-stdin`, the password (and a secret username) on stdin.
pub fn login(registry: &Registry, lookup: impl Fn(&str) -> Option<String>) -> Result<Cmd, MissingSecret> {
    let resolve = |credential: &Option<Credential>, what: &str| -> Result<String, MissingSecret> {
        match credential {
            Some(Credential::Literal(value)) => Ok(value.clone()),
            Some(Credential::Secret(name)) => {
                lookup(name).ok_or_else(|| MissingSecret { env_name: format!("registry/{what}"), secret: name.clone() })
            }
            None => Ok(String::new()),
        }
    };
    let password = resolve(&registry.password, "password")?;
    let login = |cmd: Cmd| {
        let cmd = cmd.arg("login");
        match &registry.server {
            Some(server) => cmd.arg(server),
            None => cmd,
        }
    };
    Ok(match &registry.username {
        Some(Credential::Secret(_)) => {
            let username = resolve(&registry.username, "username")?;
            // `read` takes the first line (the username); docker reads the rest (the password).
            let docker_login = login(docker()).raw("-u \"$username\" --password-stdin");
            Cmd::raw_script("read -r username &&")
                .raw(docker_login.script())
                .with_stdin(format!("{username}\n{password}"))
        }
        _ => {
            let username = resolve(&registry.username, "username")?;
            login(docker()).arg("-u").arg(username).arg("--password-stdin").with_stdin(password)
        }
    })
}

/// `docker logout [<server>]`.
pub fn logout(registry: &Registry) -> Cmd {
    let cmd = docker().arg("logout");
    match &registry.server {
        Some(server) => cmd.arg(server),
        None => cmd,
    }
}

/// Starts the local registry on the deployer, creating it at `127.0.0.1:<port>` the first time.
pub fn setup_local(port: &str) -> Cmd {
    docker().args(["start", LOCAL_REGISTRY_CONTAINER]).or(docker()
        .args(["run", "--detach", "-p"])
        .arg(format!("127.0.0.1:{port}:5000"))
        .args(["--name", LOCAL_REGISTRY_CONTAINER, LOCAL_REGISTRY_IMAGE]))
}

/// Stops and removes the local registry.
pub fn remove_local() -> Cmd {
    docker().args(["stop", LOCAL_REGISTRY_CONTAINER]).and(docker().args(["rm", LOCAL_REGISTRY_CONTAINER]))
}

/// The port of a `localhost:PORT` registry server.
pub fn local_port(registry: &Registry) -> Option<&str> {
    registry.server.as_deref()?.rsplit_once(':').map(|(_, port)| port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(server: Option<&str>, username: Credential, password: Credential) -> Registry {
        Registry { server: server.map(str::to_string), username: Some(username), password: Some(password) }
    }

    fn lookup(name: &str) -> Option<String> {
        match name {
            "KAMAL_REGISTRY_PASSWORD" => Some("more-secret'\"".into()),
            "KAMAL_REGISTRY_USERNAME" => Some("also-secret".into()),
            _ => None,
        }
    }

    #[test]
    fn password_goes_to_stdin() {
        let registry = registry(
            Some("hub.docker.com"),
            Credential::Literal("dhh".into()),
            Credential::Secret("KAMAL_REGISTRY_PASSWORD".into()),
        );
        let cmd = login(&registry, lookup).unwrap();
        assert_eq!(cmd.script(), "docker login hub.docker.com -u dhh --password-stdin");
        assert_eq!(cmd.stdin(), Some("more-secret'\"".as_bytes()));
    }

    #[test]
    fn docker_hub_has_no_server_and_literal_passwords_work() {
        let registry = registry(None, Credential::Literal("dhh".into()), Credential::Literal("secret".into()));
        let cmd = login(&registry, lookup).unwrap();
        assert_eq!(cmd.script(), "docker login -u dhh --password-stdin");
        assert_eq!(cmd.stdin(), Some(&b"secret"[..]));
        assert_eq!(logout(&registry).script(), "docker logout");
    }

    #[test]
    fn secret_usernames_stay_out_of_the_script() {
        let registry = registry(
            Some("ghcr.io"),
            Credential::Secret("KAMAL_REGISTRY_USERNAME".into()),
            Credential::Secret("KAMAL_REGISTRY_PASSWORD".into()),
        );
        let cmd = login(&registry, lookup).unwrap();
        assert_eq!(cmd.script(), "read -r username && docker login ghcr.io -u \"$username\" --password-stdin");
        assert!(!cmd.to_string().contains("also-secret"));
        // On a shell, the username comes from the first line and the password from the rest.
        let script = cmd.script().replace("docker login", "printf '%s|' login");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace("--password-stdin", "--password-stdin \"$(cat)\""))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(cmd.stdin().unwrap()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "login|ghcr.io|-u|also-secret|--password-stdin|more-secret'\"|"
        );
    }

    #[test]
    fn missing_secrets_are_reported() {
        let registry = registry(None, Credential::Literal("dhh".into()), Credential::Secret("NOPE".into()));
        let err = login(&registry, lookup).unwrap_err();
        assert_eq!(err.secret, "NOPE");
    }

    #[test]
    fn local_registry() {
        assert_eq!(
            setup_local("5000").script(),
            "docker start kamal-docker-registry || docker run --detach -p 127.0.0.1:5000:5000 --name kamal-docker-registry registry:3"
        );
        assert_eq!(remove_local().script(), "docker stop kamal-docker-registry && docker rm kamal-docker-registry");
        let registry = Registry { server: Some("localhost:5000".into()), username: None, password: None };
        assert_eq!(local_port(&registry), Some("5000"));
    }
}
