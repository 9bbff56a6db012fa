//! Test configurations for the command builders: a `deploy.yml` text loaded through the real loader.

use crate::config::{Config, LoadOptions};
use crate::environment::Environment;

/// Kamal's command-test base: service `app`, image `dhh/app`, version `999`, then `extra` YAML appended.
pub const BASE: &str =
    "service: app\nimage: dhh/app\nregistry:\n  username: dhh\n  password: secret\nbuilder:\n  arch: amd64\n";

/// Loads `BASE` + `extra` (which must supply `servers:` or `accessories:`) at version `999`.
pub fn config(extra: &str) -> Config {
    load(&format!("{BASE}{extra}"), None)
}

/// Like [`config`] with destination `dest` (its `deploy.<dest>.yml` is empty).
pub fn config_with_destination(extra: &str, dest: &str) -> Config {
    load(&format!("{BASE}{extra}"), Some(dest))
}

/// Loads `yaml` verbatim as `config/deploy.yml`.
pub fn load(yaml: &str, destination: Option<&str>) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("deploy.yml"), yaml).unwrap();
    if let Some(dest) = destination {
        std::fs::write(config_dir.join(format!("deploy.{dest}.yml")), "{}\n").unwrap();
    }
    let mut options = LoadOptions::new(config_dir.join("deploy.yml"));
    options.destination = destination.map(str::to_string);
    options.version = Some("999".to_string());
    let env = Environment::from_vars(Vec::<(String, String)>::new(), dir.path());
    Config::load(&options, &env).unwrap_or_else(|e| panic!("test config does not load: {e}"))
}

/// Runs `script` with `sh` where `docker` is a fake: a shell script with body `fake_docker` (it sees the real
/// arguments as `$@`). Returns stdout.
pub fn run_with_fake_docker(script: &str, fake_docker: &str) -> String {
    run_with_fake_docker_status(script, fake_docker).0
}

/// [`run_with_fake_docker`], with the script's exit status.
pub fn run_with_fake_docker_status(script: &str, fake_docker: &str) -> (String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("docker");
    std::fs::write(&fake, format!("#!/bin/sh\n{fake_docker}\n")).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new("sh").arg("-c").arg(script).env("PATH", path).output().unwrap();
    (String::from_utf8_lossy(&output.stdout).into_owned(), output.status.code().unwrap_or(-1))
}
