//! Pruning on hosts: old stopped containers beyond `retain_containers`, dangling images, and tagged images no
//! container uses — Kamal's `Commands::Prune`, scoped by destination as in Kamal PR #1923 (issue #1922), so one
//! destination's prune keeps another's rollback containers and `latest-<dest>` tags on a shared host.

use super::names;
use super::{docker, with_filters};
use crate::command::{Cmd, quote};
use crate::config::Config;

/// `docker image prune --force --filter label=service=<svc>`: dangling images of the service.
pub fn dangling_images(config: &Config) -> Cmd {
    docker().args(["image", "prune", "--force", "--filter"]).arg(service_filter(config))
}

/// Removes the service's tagged images that no container (running or stopped) uses, keeping every
/// `…:latest[-dest]` tag and `<none>` images in use.
pub fn tagged_images(config: &Config) -> Cmd {
    let images_in_use = docker()
        .args(["container", "ls", "-a", "--format", "{{.Image}}\\|", "--filter"])
        .arg(service_filter(config))
        .pipe(Cmd::new("tr").args(["-d", "\\n"]));
    let always_kept = format!("{}:<none>\\|[^ ]*:latest\\(-[^ ]*\\)\\?$", names::repository(config));
    // `"$(…)"'…'` is one word: the images in use, then the fixed alternatives.
    let pattern = format!("\"$({})\"{}", images_in_use.script(), quote(&always_kept));
    docker()
        .args(["image", "ls", "--filter"])
        .arg(service_filter(config))
        .args(["--format", "{{.ID}} {{.Repository}}:{{.Tag}}"])
        .pipe(Cmd::new("grep").args(["-v", "-w"]).raw(pattern))
        .pipe(Cmd::raw_script("while read image tag; do docker rmi $tag; done"))
}

/// `docker rmi <references…>`.
pub fn remove_image_references(references: &[String]) -> Cmd {
    docker().arg("rmi").args(references)
}

/// Removes this app's (and destination's) stopped containers except the newest `retain`.
pub fn app_containers(config: &Config, retain: u64) -> Cmd {
    let filters = [
        service_filter(config),
        format!("label=destination={}", config.destination.as_deref().unwrap_or("")),
        "status=created".to_string(),
        "status=exited".to_string(),
        "status=dead".to_string(),
    ];
    with_filters(docker().args(["ps", "-q", "-a"]), &filters)
        .pipe(Cmd::new("tail").arg("-n").arg(format!("+{}", retain + 1)))
        .pipe(Cmd::raw_script("while read container_id; do docker rm $container_id; done"))
}

fn service_filter(config: &Config) -> String {
    format!("label=service={}", config.service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{config, config_with_destination};

    #[test]
    fn dangling() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(dangling_images(&config).script(), "docker image prune --force --filter label=service=app");
    }

    #[test]
    fn tagged() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(
            tagged_images(&config).script(),
            "docker image ls --filter label=service=app --format '{{.ID}} {{.Repository}}:{{.Tag}}' | grep -v -w \"$(docker container ls -a --format '{{.Image}}\\|' --filter label=service=app | tr -d '\\n')\"'dhh/app:<none>\\|[^ ]*:latest\\(-[^ ]*\\)\\?$' | while read image tag; do docker rmi $tag; done"
        );
    }

    #[test]
    fn the_tagged_images_pattern_keeps_used_and_latest_tags() {
        let config = config("servers: [1.1.1.1]\n");
        // A fake `docker`: image ls lists four tags, container ls says one is in use.
        let fake = "case \"$1\" in\n  image) printf 'i1 dhh/app:1\\ni2 dhh/app:2\\ni3 dhh/app:latest\\ni4 dhh/app:latest-staging\\n' ;;\n  container) printf 'dhh/app:2\\\\|\\n' ;;\n  rmi) echo \"removed $2\" ;;\nesac";
        let out = crate::commands::test_config::run_with_fake_docker(tagged_images(&config).script(), fake);
        assert_eq!(out, "removed dhh/app:1\n");
    }

    #[test]
    fn containers_keep_the_newest_and_stay_in_their_destination() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(
            app_containers(&config, 5).script(),
            "docker ps -q -a --filter label=service=app --filter label=destination= --filter status=created --filter status=exited --filter status=dead | tail -n +6 | while read container_id; do docker rm $container_id; done"
        );
        let config = config_with_destination("servers: [1.1.1.1]\n", "staging");
        assert_eq!(
            app_containers(&config, 3).script(),
            "docker ps -q -a --filter label=service=app --filter label=destination=staging --filter status=created --filter status=exited --filter status=dead | tail -n +4 | while read container_id; do docker rm $container_id; done"
        );
    }
}
