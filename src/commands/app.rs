//! App containers on a host: run, start/stop, versions, logs, exec, images, assets and error pages — Kamal's
//! `Kamal::Commands::App` (and its `Assets`, `Containers`, `Execution`, `Images`, `Logging`, `ErrorPages`).

use indexmap::IndexMap;

use super::names::{self, NETWORK};
use super::{
    command_words, docker, options_without_restart, restart_policy, with_clear_env, with_filters, with_key_values,
    with_logging, with_options, with_user_command, with_volume,
};
use crate::command::{Cmd, quote};
use crate::commands::env_file::role_env;
use crate::config::{Config, Role};

/// The `docker inspect` template giving a container's health, or its state when it has no health check.
pub const HEALTH_STATUS_FORMAT: &str = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}";
/// The `docker inspect` template giving a container's health-check log, for failure reports.
pub const HEALTH_LOG_FORMAT: &str = "{{json .State.Health}}";

/// Container statuses Kamal counts as "running" when looking for the current version.
const ACTIVE_STATUSES: [&str; 2] = ["running", "restarting"];

/// `docker run --detach …` of `version` for `role` on `host`: Kamal's `App#run`, with the hostname
/// `<host>-<hostname_hex>` (Kamal uses 12 random hex digits; the caller picks them so tests can too).
pub fn run(config: &Config, role: &Role, host: &str, version: &str, hostname_hex: &str) -> Cmd {
    let name = names::container_name(config, &role.name, version);
    let mut cmd = docker()
        .args(["run", "--detach", "--restart"])
        .arg(restart_policy(&role.options))
        .arg("--name")
        .arg(&name)
        .args(["--network", NETWORK, "--hostname"])
        .arg(names::container_hostname(host, hostname_hex));
    let mut kamal_env = vec![("KAMAL_CONTAINER_NAME", name.as_str()), ("KAMAL_VERSION", version), ("KAMAL_HOST", host)];
    if let Some(dest) = &config.destination {
        kamal_env.push(("KAMAL_DESTINATION", dest));
    }
    cmd = with_key_values(cmd, "--env", kamal_env);
    cmd = with_env_args(cmd, config, role, host);
    cmd = with_logging(cmd, &role.logging);
    for volume in &config.volumes {
        cmd = cmd.arg("--volume").arg(volume);
    }
    if let Some((asset_path, options)) = asset_path(role, config) {
        let host_path = names::asset_volume_directory(config, &role.name, version);
        cmd = with_volume(cmd, &host_path, &asset_path, options.as_deref());
    }
    cmd = with_key_values(cmd, "--label", labels(config, role).iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd = with_options(cmd, &options_without_restart(&role.options));
    cmd = cmd.arg(names::image(config, version));
    cmd.args(role.cmd.as_deref().map(command_words).unwrap_or_default())
}

/// `--env K="v"…` for the clear env of `role` on `host`, then `--env-file <role env file>`.
fn with_env_args(cmd: Cmd, config: &Config, role: &Role, host: &str) -> Cmd {
    with_clear_env(cmd, &role_env(config, role, host).clear)
        .arg("--env-file")
        .arg(names::role_env_file(config, &role.name))
}

/// Labels: `service`, `role`, `destination` (empty without one), then the root's and the role's own labels.
pub fn labels(config: &Config, role: &Role) -> IndexMap<String, String> {
    let mut labels = IndexMap::new();
    labels.insert("service".to_string(), config.service.clone());
    labels.insert("role".to_string(), role.name.clone());
    labels.insert("destination".to_string(), config.destination.clone().unwrap_or_default());
    labels.extend(config.labels.clone());
    labels.extend(role.labels.clone());
    labels
}

/// The role's `asset_path` split into container path and mount options, when the role has assets (an asset
/// path and the proxy — Kamal's `Role#assets?`).
pub fn asset_path(role: &Role, config: &Config) -> Option<(String, Option<String>)> {
    if !role.runs_proxy() {
        return None;
    }
    let full = role.asset_path.as_ref().or(config.asset_path.as_ref()).filter(|p| !p.trim().is_empty())?;
    Some(match full.split_once(':') {
        Some((path, options)) => (path.to_string(), Some(options.to_string())),
        None => (full.clone(), None),
    })
}

/// `docker start <container>`.
pub fn start(config: &Config, role: &Role, version: &str) -> Cmd {
    docker().arg("start").arg(names::container_name(config, &role.name, version))
}

/// Stops `version`'s container, or the current running one when `version` is `None`: `… | xargs docker stop
/// [-t N]`.
pub fn stop(config: &Config, role: &Role, version: Option<&str>) -> Cmd {
    let ids = match version {
        Some(version) => container_id_for_version(config, role, version, false),
        None => current_running_container_id(config, role),
    };
    let mut stop = Cmd::new("xargs").args(["docker", "stop"]);
    if let Some(timeout) = stop_timeout(config, role) {
        stop = stop.arg("-t").arg(timeout.to_string());
    }
    ids.pipe(stop)
}

/// `docker stop -t`: the role's or root `stop_timeout`, else `drain_timeout` for roles without the proxy (the
/// proxy has drained proxied ones already), else Docker's default.
pub fn stop_timeout(config: &Config, role: &Role) -> Option<u64> {
    role.stop_timeout.or(config.stop_timeout).or((!role.runs_proxy()).then_some(config.drain_timeout))
}

/// `docker container ls --all --filter 'name=^<name>$' --quiet`: the id of a container by exact name.
pub fn container_id_for(container_name: &str, only_running: bool) -> Cmd {
    let mut cmd = docker().args(["container", "ls"]);
    if !only_running {
        cmd = cmd.arg("--all");
    }
    cmd.arg("--filter").arg(format!("name=^{container_name}$")).arg("--quiet")
}

/// The id of `version`'s container for `role` (empty output: no such container).
pub fn container_id_for_version(config: &Config, role: &Role, version: &str, only_running: bool) -> Cmd {
    container_id_for(&names::container_name(config, &role.name, version), only_running)
}

/// The filters selecting this app's (role's) containers: `label=service=…`, `label=destination=…` (empty
/// without a destination, so other destinations' containers don't match), `label=role=…`, then statuses.
pub fn filters(config: &Config, role: Option<&Role>, statuses: &[&str]) -> Vec<String> {
    let mut filters = vec![
        format!("label=service={}", config.service),
        format!("label=destination={}", config.destination.as_deref().unwrap_or("")),
    ];
    if let Some(role) = role {
        filters.push(format!("label=role={}", role.name));
    }
    filters.extend(statuses.iter().map(|status| format!("status={status}")));
    filters
}

/// The `docker ps` template of [`inventory`]: name, id, state, image reference and role, tab-separated.
pub const INVENTORY_FORMAT: &str = "{{.Names}}\t{{.ID}}\t{{.State}}\t{{.Image}}\t{{.Label \"role\"}}";

/// `docker image ls --filter reference=<image:latest> --format '{{.ID}}'`: the id of the image tagged `latest`.
fn latest_image_id(config: &Config) -> Cmd {
    docker()
        .args(["image", "ls", "--filter"])
        .arg(format!("reference={}", names::latest_image(config)))
        .args(["--format", "{{.ID}}"])
}

/// The line in [`inventory`]'s output after which come the ids of the containers made from the `latest` image.
pub const INVENTORY_FROM_LATEST: &str = "# made from latest:";

/// Every container of the app (this destination, all roles, any state), newest first, one per line in
/// [`INVENTORY_FORMAT`]; then [`INVENTORY_FROM_LATEST`] and, when some role runs more than one container, the
/// ids of the containers made from the image tagged `latest` (Kamal prefers those for the current version).
/// One SSH command from which the engine reads the running version, the clash with a same-named container,
/// what to stop and what to prune (Kamal spends a call on each); the second `docker` call is made only in the
/// rare case that needs it.
pub fn inventory(config: &Config) -> Cmd {
    let app_filters = filters(config, None, &[]);
    let all = with_filters(docker().args(["ps", "--all"]), &app_filters).args(["--format", INVENTORY_FORMAT]);
    // No `latest` yet (a first deploy): the filter is refused, and no container is from it.
    let from_latest = with_filters(docker().args(["ps", "--all", "--quiet"]), &app_filters)
        .raw(format!("--filter ancestor=$({}) 2>/dev/null", latest_image_id(config).script()));
    let some_role_runs_twice = "printf '%s\\n' \"$listing\" | awk -F '\\t' '$3 == \"running\" || $3 == \"restarting\" { print $5 }' | sort | uniq -d | grep -q .";
    Cmd::raw_script(format!(
        "listing=$({}) && printf '%s\\n' \"$listing\" && echo {} && if {some_role_runs_twice}; then {} || true; fi",
        all.script(),
        quote(INVENTORY_FROM_LATEST),
        from_latest.script()
    ))
}

/// `docker stop [-t N] <ids…>`.
pub fn stop_containers(ids: &[String], timeout: Option<u64>) -> Cmd {
    let mut cmd = docker().arg("stop");
    if let Some(timeout) = timeout {
        cmd = cmd.arg("-t").arg(timeout.to_string());
    }
    cmd.args(ids)
}

/// `docker rm <ids…>`.
pub fn remove_containers_by_id(ids: &[String]) -> Cmd {
    docker().arg("rm").args(ids)
}

/// Kamal's `current_running_container(format:)`: the newest running container of the role built from the
/// image tagged `latest`, else the newest running one — `sh -c '…' | head -1`.
fn current_running_container(config: &Config, role: &Role, format_args: &[&str]) -> Cmd {
    let filters = filters(config, Some(role), &ACTIVE_STATUSES);
    let ps = || with_filters(docker().args(["ps", "--latest"]).args(format_args), &filters);
    let from_latest = ps().raw(format!("--filter ancestor=$({})", latest_image_id(config).script()));
    from_latest.then(ps()).in_subshell().pipe(Cmd::new("head").arg("-1"))
}

/// The id of the role's current running container.
pub fn current_running_container_id(config: &Config, role: &Role) -> Cmd {
    current_running_container(config, role, &["--quiet"])
}

/// The version of the role's current running container (empty output: none running).
pub fn current_running_version(config: &Config, role: &Role) -> Cmd {
    current_running_container(config, role, &["--format", "{{.Names}}"]).pipe(strip_prefix(config, role))
}

/// The versions of the role's containers with `statuses` (all containers `docker ps` shows when empty, i.e.
/// running ones): the engine subtracts the current version to find stale ones.
pub fn list_versions(config: &Config, role: &Role, statuses: &[&str]) -> Cmd {
    with_filters(docker().arg("ps"), &filters(config, Some(role), statuses))
        .args(["--format", "{{.Names}}"])
        .pipe(strip_prefix(config, role))
}

/// `while read line; do echo ${line#<prefix>-}; done`: container names to versions.
fn strip_prefix(config: &Config, role: &Role) -> Cmd {
    let prefix = quote(&format!("{}-", names::container_prefix(config, &role.name)));
    Cmd::raw_script(format!("while read line; do echo ${{line#{prefix}}}; done"))
}

/// `docker ps` of the role's containers (`app details`).
pub fn info(config: &Config, role: &Role) -> Cmd {
    with_filters(docker().arg("ps"), &filters(config, Some(role), &[]))
}

/// `docker container ls --all` of the role's containers (`app containers`).
pub fn list_containers(config: &Config, role: &Role) -> Cmd {
    with_filters(docker().args(["container", "ls", "--all"]), &filters(config, Some(role), &[]))
}

/// The names of the role's containers, one per line.
pub fn list_container_names(config: &Config, role: &Role) -> Cmd {
    list_containers(config, role).args(["--format", "{{ .Names }}"])
}

/// Health (or state) of `version`'s container, for polling roles without the proxy: `healthy`, `running`, …
pub fn status(config: &Config, role: &Role, version: &str) -> Cmd {
    container_id_for_version(config, role, version, false).pipe(Cmd::new("xargs").args([
        "docker",
        "inspect",
        "--format",
        HEALTH_STATUS_FORMAT,
    ]))
}

/// The health-check log of `version`'s container, as JSON.
pub fn container_health_log(config: &Config, role: &Role, version: &str) -> Cmd {
    container_id_for_version(config, role, version, false).pipe(Cmd::new("xargs").args([
        "docker",
        "inspect",
        "--format",
        HEALTH_LOG_FORMAT,
    ]))
}

/// The last `lines` log lines of `version`'s container, for the report when it fails to boot.
pub fn container_logs_tail(config: &Config, role: &Role, version: &str, lines: u64) -> Cmd {
    container_id_for_version(config, role, version, false)
        .pipe(Cmd::new("xargs").args(["docker", "logs", "--timestamps", "--tail"]).arg(lines.to_string()))
        .raw("2>&1")
}

/// `docker container ls … | xargs docker container rm` of `version`'s container.
pub fn remove_container(config: &Config, role: &Role, version: &str) -> Cmd {
    container_id_for_version(config, role, version, false).pipe(Cmd::new("xargs").args(["docker", "container", "rm"]))
}

/// `docker container prune --force` of the role's stopped containers.
pub fn remove_containers(config: &Config, role: &Role) -> Cmd {
    with_filters(docker().args(["container", "prune", "--force"]), &filters(config, Some(role), &[]))
}

/// `docker rename <prefix>-<version> <new_name>` (a same-version container moved out of the way).
pub fn rename_container(config: &Config, role: &Role, version: &str, new_name: &str) -> Cmd {
    docker().arg("rename").arg(names::container_name(config, &role.name, version)).arg(new_name)
}

/// `docker image ls <repository>`.
pub fn list_images(config: &Config) -> Cmd {
    docker().args(["image", "ls"]).arg(names::repository(config))
}

/// `docker image prune --all --force --filter label=service=…`: every image of the service not in use.
pub fn remove_images(config: &Config) -> Cmd {
    docker().args(["image", "prune", "--all", "--force", "--filter"]).arg(format!("label=service={}", config.service))
}

/// `docker tag <repo>:<version> <repo>:latest[-dest]`.
pub fn tag_latest_image(config: &Config, version: &str) -> Cmd {
    docker().arg("tag").arg(names::image(config, version)).arg(names::latest_image(config))
}

/// What `app logs` asks for.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// `--since` (`5m`, a timestamp, …).
    pub since: Option<String>,
    /// `--tail N`.
    pub lines: Option<u64>,
    /// Filter lines with `grep <pattern> [grep_options]` on the host.
    pub grep: Option<String>,
    /// Extra `grep` arguments as shell text (`-C 2`), split into words.
    pub grep_options: Option<String>,
    /// `--timestamps` (Kamal's default).
    pub timestamps: bool,
    /// `--follow` (the engine streams the output).
    pub follow: bool,
    /// A specific container instead of the current running one.
    pub container_id: Option<String>,
}

/// `docker logs` of the current container (or `container_id`): `… | xargs docker logs [--timestamps] [--since
/// S] [--tail N] [--follow] 2>&1 [| grep …]`.
pub fn logs(config: &Config, role: &Role, options: &LogOptions) -> Cmd {
    let ids = match &options.container_id {
        Some(id) => Cmd::new("echo").arg(id),
        None => current_running_container_id(config, role),
    };
    ids.pipe(with_log_options(Cmd::new("xargs").args(["docker", "logs"]), options))
}

/// `[--timestamps] [--since S] [--tail N] [--follow] 2>&1 [| grep P opts]`, shared with proxy and accessories.
pub(crate) fn with_log_options(mut cmd: Cmd, options: &LogOptions) -> Cmd {
    if options.timestamps {
        cmd = cmd.arg("--timestamps");
    }
    if let Some(since) = &options.since {
        cmd = cmd.arg("--since").arg(since);
    }
    if let Some(lines) = options.lines {
        cmd = cmd.arg("--tail").arg(lines.to_string());
    }
    if options.follow {
        cmd = cmd.arg("--follow");
    }
    cmd = cmd.raw("2>&1");
    match &options.grep {
        Some(pattern) => {
            let grep = Cmd::new("grep").arg(pattern);
            cmd.pipe(grep.args(options.grep_options.as_deref().map(command_words).unwrap_or_default()))
        }
        None => cmd,
    }
}

/// How `app exec` runs a command in a new container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecMode {
    /// `docker run --rm` and wait for it.
    #[default]
    Attached,
    /// `docker run -it --rm`, with a terminal (the engine gives the SSH channel a pty).
    Interactive,
    /// `docker run -i --rm`: stdin piped in without a terminal (Kamal's `-i` when its stdin is not a tty).
    Piped,
    /// `docker run --detach`, left running.
    Detached,
}

/// `docker run [--rm|-it --rm|--detach] --name <prefix>-exec-<version>-<hex6> --network kamal <env>
/// <extra env> <logging> <volumes> <options> <image> <command…>`: Kamal's `execute_in_new_container`.
#[allow(clippy::too_many_arguments)]
pub fn execute_in_new_container(
    config: &Config,
    role: &Role,
    host: &str,
    version: &str,
    command: &[String],
    env: &IndexMap<String, String>,
    mode: ExecMode,
    random_hex: &str,
) -> Cmd {
    let mut cmd = docker().arg("run");
    cmd = match mode {
        ExecMode::Attached => cmd.arg("--rm"),
        ExecMode::Interactive => cmd.args(["-it", "--rm"]),
        ExecMode::Piped => cmd.args(["-i", "--rm"]),
        ExecMode::Detached => cmd.arg("--detach"),
    };
    cmd = cmd.arg("--name").arg(names::exec_container_name(config, &role.name, version, random_hex));
    cmd = cmd.args(["--network", NETWORK]);
    cmd = with_env_args(cmd, config, role, host);
    cmd = with_clear_env(cmd, env);
    cmd = with_logging(cmd, &role.logging);
    for volume in &config.volumes {
        cmd = cmd.arg("--volume").arg(volume);
    }
    cmd = with_options(cmd, &options_without_restart(&role.options));
    with_user_command(cmd.arg(names::image(config, version)), command)
}

/// `docker exec [-it] [--env K="v"…] <prefix>-<version> <command…>`: Kamal's `execute_in_existing_container`.
pub fn execute_in_existing_container(
    config: &Config,
    role: &Role,
    version: &str,
    command: &[String],
    env: &IndexMap<String, String>,
    interactive: bool,
) -> Cmd {
    let mut cmd = docker().arg("exec");
    if interactive {
        cmd = cmd.arg("-it");
    }
    cmd = with_clear_env(cmd, env);
    with_user_command(cmd.arg(names::container_name(config, &role.name, version)), command)
}

/// `mkdir -p .kamal/apps/<svc[-dest]>/env/roles`, before uploading a role's env file.
pub fn make_env_directory(config: &Config) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::role_env_directory(config))
}

/// `rm -f <role env file>`.
pub fn remove_env_file(config: &Config, role: &Role) -> Cmd {
    Cmd::new("rm").arg("-f").arg(names::role_env_file(config, &role.name))
}

/// Copies `version`'s assets out of its image into `…/assets/extracted/<role>-<version>` (§3.8, step 1).
pub fn extract_assets(config: &Config, role: &Role, version: &str, asset_path: &str) -> Cmd {
    let container = names::assets_container_name(config, &role.name);
    let extracted = names::asset_extracted_directory(config, &role.name, version);
    Cmd::new("mkdir")
        .arg("-p")
        .arg(&extracted)
        .and(docker().args(["container", "rm"]).arg(&container).raw("2> /dev/null").or(Cmd::new("true")))
        .and(docker().args(["container", "create", "--name"]).arg(&container).arg(names::image(config, version)))
        .and(docker().args(["container", "cp", "-L"]).arg(format!("{container}:{asset_path}/.")).arg(&extracted))
        .and(docker().args(["container", "rm"]).arg(&container))
}

/// Fills `version`'s asset volume with its own assets and, when a version runs already, crosses old and new
/// assets both ways without overwriting (§3.8, step 2), so either container serves both versions' files.
pub fn sync_asset_volumes(config: &Config, role: &Role, version: &str, old_version: Option<&str>) -> Cmd {
    let extracted = |v: &str| names::asset_extracted_directory(config, &role.name, v);
    let volume = |v: &str| names::asset_volume_directory(config, &role.name, v);
    let copy = |from: String, to: String| Cmd::new("cp").arg("-rnT").arg(from).arg(to);
    let mut cmd = Cmd::new("mkdir").arg("-p").arg(volume(version)).then(copy(extracted(version), volume(version)));
    if let Some(old) = old_version.filter(|v| !v.is_empty()) {
        cmd = cmd
            .then(copy(extracted(version), volume(old)).or(Cmd::new("true")))
            .then(copy(extracted(old), volume(version)).or(Cmd::new("true")));
    }
    cmd
}

/// Removes other versions' extracted assets and asset volumes of the role (after the old container stopped).
pub fn clean_up_assets(config: &Config, role: &Role, version: &str) -> Cmd {
    let remove_siblings = |directory: String| {
        let (parent, keep) = directory.rsplit_once('/').unwrap_or((".", directory.as_str()));
        Cmd::new("find")
            .arg(parent)
            .args(["-maxdepth", "1", "-name"])
            .arg(format!("{}-*", role.name))
            .args(["!", "-name"])
            .arg(keep)
            .args(["-exec", "rm", "-rf", "{}", "+"])
    };
    remove_siblings(names::asset_extracted_directory(config, &role.name, version))
        .then(remove_siblings(names::asset_volume_directory(config, &role.name, version)))
}

/// `mkdir -p .kamal/proxy/apps-config/<svc[-dest]>/error_pages/<version>`, before uploading error pages.
pub fn create_error_pages_directory(config: &Config, version: &str) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(format!("{}/{version}", names::error_pages_directory(config)))
}

/// Removes every other version's error pages.
pub fn clean_up_error_pages(config: &Config, version: &str) -> Cmd {
    Cmd::new("find")
        .arg(names::error_pages_directory(config))
        .args(["-mindepth", "1", "-maxdepth", "1", "!", "-name"])
        .arg(version)
        .args(["-exec", "rm", "-rf", "{}", "+"])
}

/// `rm -r .kamal/apps/<svc[-dest]>` (`app remove`).
pub fn remove_app_directory(config: &Config) -> Cmd {
    Cmd::new("rm").arg("-r").arg(names::app_directory(config))
}

/// `rm -r .kamal/proxy/apps-config/<svc[-dest]>` (`app remove`).
pub fn remove_proxy_app_directory(config: &Config) -> Cmd {
    Cmd::new("rm").arg("-r").arg(names::proxy_app_directory(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{config, config_with_destination};

    const TWO_ROLES: &str = "servers:\n  web: [1.1.1.1]\n  workers: [1.1.1.2]\nenv:\n  secret: [RAILS_MASTER_KEY]\n";
    const HEX: &str = "0123456789ab";

    fn words(command: &[&str]) -> Vec<String> {
        command.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn inventory_lists_every_container_of_the_app_with_its_role() {
        let config = config("servers: [1.1.1.1]\n");
        let script = inventory(&config).script().to_string();
        assert!(
            script.starts_with(
                "listing=$(docker ps --all --filter label=service=app --filter label=destination= --format \
                 '{{.Names}}\t{{.ID}}\t{{.State}}\t{{.Image}}\t{{.Label \"role\"}}') && "
            ),
            "{script}"
        );
        assert!(script.contains("--filter ancestor=$(docker image ls --filter reference=dhh/app:latest"), "{script}");
        let ids = ["a1".to_string(), "b2".to_string()];
        assert_eq!(stop_containers(&ids, Some(7)).script(), "docker stop -t 7 a1 b2");
        assert_eq!(remove_containers_by_id(&ids).script(), "docker rm a1 b2");
    }

    /// The inventory script run by `sh` against a stand-in `docker` that answers from canned listings and
    /// records its calls: the `latest` query is made only when some role runs two containers.
    #[test]
    fn inventory_asks_for_the_latest_image_only_when_a_role_runs_twice() {
        let config = config("servers: [1.1.1.1]\n");
        let run = |listing: &str| {
            let dir = tempfile::tempdir().unwrap();
            let fake = format!(
                "#!/bin/sh\necho \"$*\" >> {calls}\ncase \"$*\" in\n  *--quiet*ancestor=img3*) echo c3 ;;\n  \
                 image\\ ls*) echo img3 ;;\n  ps\\ --all*) printf '{listing}' ;;\nesac\n",
                calls = dir.path().join("calls").display()
            );
            let docker = dir.path().join("docker");
            std::fs::write(&docker, fake).unwrap();
            std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let out = std::process::Command::new("sh")
                .args(["-c", inventory(&config).script()])
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
            (String::from_utf8_lossy(&out.stdout).into_owned(), calls.lines().count())
        };
        let two_web = "app-web-v4\\tc4\\trunning\\tr/app:v4\\tweb\\napp-web-v3\\tc3\\trunning\\tr/app:v3\\tweb\\n";
        let (output, calls) = run(two_web);
        assert_eq!(
            output,
            "app-web-v4\tc4\trunning\tr/app:v4\tweb\napp-web-v3\tc3\trunning\tr/app:v3\tweb\n# made from latest:\nc3\n"
        );
        assert_eq!(calls, 3, "ps, image ls, ps --quiet");
        let one_each = "app-web-v4\\tc4\\trunning\\tr/app:v4\\tweb\\napp-web-v3\\tc3\\texited\\tr/app:v3\\tweb\\n\
                        app-workers-v4\\tw4\\trunning\\tr/app:v4\\tworkers\\n";
        let (output, calls) = run(one_each);
        assert!(output.ends_with("# made from latest:\n"), "{output}");
        assert_eq!(calls, 1, "only the listing");
    }

    #[test]
    fn run() {
        let config = config(TWO_ROLES);
        assert_eq!(
            super::run(&config, config.role("web").unwrap(), "1.1.1.1", "999", HEX).script(),
            "docker run --detach --restart unless-stopped --name app-web-999 --network kamal --hostname 1.1.1.1-0123456789ab --env KAMAL_CONTAINER_NAME=\"app-web-999\" --env KAMAL_VERSION=\"999\" --env KAMAL_HOST=\"1.1.1.1\" --env-file .kamal/apps/app/env/roles/web.env --log-opt max-size=\"10m\" --label service=\"app\" --label role=\"web\" --label destination dhh/app:999"
        );
    }

    #[test]
    fn run_with_destination() {
        let config = config_with_destination(TWO_ROLES, "staging");
        assert_eq!(
            super::run(&config, config.role("web").unwrap(), "1.1.1.1", "999", HEX).script(),
            "docker run --detach --restart unless-stopped --name app-web-staging-999 --network kamal --hostname 1.1.1.1-0123456789ab --env KAMAL_CONTAINER_NAME=\"app-web-staging-999\" --env KAMAL_VERSION=\"999\" --env KAMAL_HOST=\"1.1.1.1\" --env KAMAL_DESTINATION=\"staging\" --env-file .kamal/apps/app-staging/env/roles/web.env --log-opt max-size=\"10m\" --label service=\"app\" --label role=\"web\" --label destination=\"staging\" dhh/app:999"
        );
    }

    #[test]
    fn run_with_volumes_labels_options_cmd_and_restart() {
        let config = config(
            "volumes: [/local/path:/container/path]\nlabels: {team: a}\nservers:\n  web: [1.1.1.1]\n  jobs:\n    hosts: [1.1.1.2]\n    cmd: bin/jobs --queue 'a b'\n    labels: {kind: jobs}\n    options:\n      mount: somewhere\n      cap-add: true\n      restart: on-failure:3\n",
        );
        assert_eq!(
            super::run(&config, config.role("jobs").unwrap(), "1.1.1.2", "999", HEX).script(),
            "docker run --detach --restart on-failure:3 --name app-jobs-999 --network kamal --hostname 1.1.1.2-0123456789ab --env KAMAL_CONTAINER_NAME=\"app-jobs-999\" --env KAMAL_VERSION=\"999\" --env KAMAL_HOST=\"1.1.1.2\" --env-file .kamal/apps/app/env/roles/jobs.env --log-opt max-size=\"10m\" --volume /local/path:/container/path --label service=\"app\" --label role=\"jobs\" --label destination --label team=\"a\" --label kind=\"jobs\" --mount \"somewhere\" --cap-add dhh/app:999 bin/jobs --queue 'a b'"
        );
    }

    #[test]
    fn run_with_logging_clear_env_and_tags() {
        let config = config(
            "servers:\n  - 1.1.1.1: tag1\nlogging:\n  driver: local\n  options:\n    max-size: 100m\n    max-file: 3\nenv:\n  clear:\n    HOST_TOKEN: \"${HOST_TOKEN}\"\n    QUOTED: 'say \"hi\" $USER'\n  tags:\n    tag1:\n      ENV1: value1\n",
        );
        assert_eq!(
            super::run(&config, config.role("web").unwrap(), "1.1.1.1", "999", HEX).script(),
            "docker run --detach --restart unless-stopped --name app-web-999 --network kamal --hostname 1.1.1.1-0123456789ab --env KAMAL_CONTAINER_NAME=\"app-web-999\" --env KAMAL_VERSION=\"999\" --env KAMAL_HOST=\"1.1.1.1\" --env HOST_TOKEN=\"${HOST_TOKEN}\" --env QUOTED=\"say \\\"hi\\\" \\$USER\" --env ENV1=\"value1\" --env-file .kamal/apps/app/env/roles/web.env --log-driver \"local\" --log-opt max-size=\"100m\" --log-opt max-file=\"3\" --label service=\"app\" --label role=\"web\" --label destination dhh/app:999"
        );
    }

    #[test]
    fn run_mounts_the_asset_volume_of_proxied_roles() {
        let config = config("servers: [1.1.1.1]\nasset_path: /public/assets:ro\n");
        let cmd = super::run(&config, config.role("web").unwrap(), "1.1.1.1", "999", HEX);
        assert!(
            cmd.script().contains(
                " --log-opt max-size=\"10m\" --volume $PWD/.kamal/apps/app/assets/volumes/web-999:/public/assets:ro --label "
            ),
            "{cmd}"
        );
    }

    #[test]
    fn start_and_stop() {
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        assert_eq!(start(&config, web, "999").script(), "docker start app-web-999");
        assert_eq!(
            stop(&config, web, None).script(),
            "sh -c 'docker ps --latest --quiet --filter label=service=app --filter label=destination= --filter label=role=web --filter status=running --filter status=restarting --filter ancestor=$(docker image ls --filter reference=dhh/app:latest --format '\\''{{.ID}}'\\'') ; docker ps --latest --quiet --filter label=service=app --filter label=destination= --filter label=role=web --filter status=running --filter status=restarting' | head -1 | xargs docker stop"
        );
        assert_eq!(
            stop(&config, web, Some("123")).script(),
            "docker container ls --all --filter 'name=^app-web-123$' --quiet | xargs docker stop"
        );
    }

    #[test]
    fn stop_timeouts() {
        let config = config(&format!("drain_timeout: 20\n{TWO_ROLES}"));
        // Proxied roles were drained by the proxy; others get drain_timeout.
        assert!(stop(&config, config.role("web").unwrap(), Some("1")).script().ends_with("| xargs docker stop"));
        assert!(
            stop(&config, config.role("workers").unwrap(), Some("1")).script().ends_with("| xargs docker stop -t 20")
        );
        let config = crate::commands::test_config::config(
            "stop_timeout: 5\nservers:\n  web: [1.1.1.1]\n  workers:\n    hosts: [1.1.1.2]\n    stop_timeout: 9\n",
        );
        assert_eq!(stop_timeout(&config, config.role("web").unwrap()), Some(5));
        assert_eq!(stop_timeout(&config, config.role("workers").unwrap()), Some(9));
    }

    #[test]
    fn current_running_version_with_destination() {
        let config = config_with_destination(TWO_ROLES, "staging");
        assert_eq!(
            current_running_version(&config, config.role("web").unwrap()).script(),
            "sh -c 'docker ps --latest --format '\\''{{.Names}}'\\'' --filter label=service=app --filter label=destination=staging --filter label=role=web --filter status=running --filter status=restarting --filter ancestor=$(docker image ls --filter reference=dhh/app:latest-staging --format '\\''{{.ID}}'\\'') ; docker ps --latest --format '\\''{{.Names}}'\\'' --filter label=service=app --filter label=destination=staging --filter label=role=web --filter status=running --filter status=restarting' | head -1 | while read line; do echo ${line#app-web-staging-}; done"
        );
    }

    #[test]
    fn versions_are_container_names_without_the_prefix() {
        let config = config_with_destination(TWO_ROLES, "staging");
        let web = config.role("web").unwrap();
        // `docker ps` with an ancestor filter finds nothing (no latest image yet); the plain one finds a container.
        let fake = "case \"$*\" in\n  *ancestor=*) ;;\n  'image ls'*) echo sha ;;\n  ps*) echo app-web-staging-abc_uncommitted_1 ;;\nesac";
        let out =
            crate::commands::test_config::run_with_fake_docker(current_running_version(&config, web).script(), fake);
        assert_eq!(out, "abc_uncommitted_1\n");
        let fake = "echo app-web-staging-v1; echo app-web-staging-v2";
        let out = crate::commands::test_config::run_with_fake_docker(list_versions(&config, web, &[]).script(), fake);
        assert_eq!(out, "v1\nv2\n");
    }

    #[test]
    fn list_versions_and_containers() {
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        assert_eq!(
            list_versions(&config, web, &[]).script(),
            "docker ps --filter label=service=app --filter label=destination= --filter label=role=web --format '{{.Names}}' | while read line; do echo ${line#app-web-}; done"
        );
        assert_eq!(
            list_versions(&config, web, &["running", "restarting"]).script(),
            "docker ps --filter label=service=app --filter label=destination= --filter label=role=web --filter status=running --filter status=restarting --format '{{.Names}}' | while read line; do echo ${line#app-web-}; done"
        );
        assert_eq!(
            list_containers(&config, web).script(),
            "docker container ls --all --filter label=service=app --filter label=destination= --filter label=role=web"
        );
        assert_eq!(
            list_container_names(&config, web).script(),
            "docker container ls --all --filter label=service=app --filter label=destination= --filter label=role=web --format '{{ .Names }}'"
        );
        assert_eq!(
            info(&config, web).script(),
            "docker ps --filter label=service=app --filter label=destination= --filter label=role=web"
        );
    }

    #[test]
    fn container_ids_status_and_removal() {
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        assert_eq!(
            container_id_for("app-999", false).script(),
            "docker container ls --all --filter 'name=^app-999$' --quiet"
        );
        assert_eq!(container_id_for("app-999", true).script(), "docker container ls --filter 'name=^app-999$' --quiet");
        assert_eq!(
            status(&config, web, "999").script(),
            "docker container ls --all --filter 'name=^app-web-999$' --quiet | xargs docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}'"
        );
        assert_eq!(
            container_health_log(&config, web, "999").script(),
            "docker container ls --all --filter 'name=^app-web-999$' --quiet | xargs docker inspect --format '{{json .State.Health}}'"
        );
        assert_eq!(
            container_logs_tail(&config, web, "999", 20).script(),
            "docker container ls --all --filter 'name=^app-web-999$' --quiet | xargs docker logs --timestamps --tail 20 2>&1"
        );
        assert_eq!(
            remove_container(&config, web, "999").script(),
            "docker container ls --all --filter 'name=^app-web-999$' --quiet | xargs docker container rm"
        );
        assert_eq!(
            remove_containers(&config, web).script(),
            "docker container prune --force --filter label=service=app --filter label=destination= --filter label=role=web"
        );
        assert_eq!(
            rename_container(&config, web, "999", "app-web-999_replaced_0123456789abcdef").script(),
            "docker rename app-web-999 app-web-999_replaced_0123456789abcdef"
        );
    }

    #[test]
    fn images() {
        let config = config_with_destination(TWO_ROLES, "staging");
        assert_eq!(list_images(&config).script(), "docker image ls dhh/app");
        assert_eq!(remove_images(&config).script(), "docker image prune --all --force --filter label=service=app");
        assert_eq!(tag_latest_image(&config, "999").script(), "docker tag dhh/app:999 dhh/app:latest-staging");
    }

    #[test]
    fn logs() {
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        let current = "sh -c 'docker ps --latest --quiet --filter label=service=app --filter label=destination= --filter label=role=web --filter status=running --filter status=restarting --filter ancestor=$(docker image ls --filter reference=dhh/app:latest --format '\\''{{.ID}}'\\'') ; docker ps --latest --quiet --filter label=service=app --filter label=destination= --filter label=role=web --filter status=running --filter status=restarting' | head -1";
        let options = LogOptions { timestamps: true, ..LogOptions::default() };
        assert_eq!(
            super::logs(&config, web, &options).script(),
            format!("{current} | xargs docker logs --timestamps 2>&1")
        );
        let options = LogOptions {
            timestamps: true,
            since: Some("5m".into()),
            lines: Some(100),
            grep: Some("my-id".into()),
            grep_options: Some("-C 2".into()),
            ..LogOptions::default()
        };
        assert_eq!(
            super::logs(&config, web, &options).script(),
            format!("{current} | xargs docker logs --timestamps --since 5m --tail 100 2>&1 | grep my-id -C 2")
        );
        let options =
            LogOptions { container_id: Some("C137".into()), follow: true, lines: Some(10), ..LogOptions::default() };
        assert_eq!(
            super::logs(&config, web, &options).script(),
            "echo C137 | xargs docker logs --tail 10 --follow 2>&1"
        );
    }

    #[test]
    fn an_exec_command_is_shell_text_as_in_kamal() {
        // `kamal app exec -i 'bin/rails console'`: one argument, two words for the host's shell.
        let config = config("servers:\n  - 1.1.1.1\n");
        let web = config.role("web").unwrap();
        let command = ["bin/rails console".to_string()];
        let cmd = super::execute_in_existing_container(&config, web, "123", &command, &IndexMap::new(), true);
        assert_eq!(cmd.script(), "docker exec -it app-web-123 bin/rails console");
    }

    #[test]
    fn execute_in_new_container() {
        let config = config("servers:\n  - 1.1.1.1: tag1\nenv:\n  tags:\n    tag1:\n      ENV1: value1\n");
        let web = config.role("web").unwrap();
        let mut env = IndexMap::new();
        env.insert("foo".to_string(), "bar".to_string());
        let cmd = super::execute_in_new_container(
            &config,
            web,
            "1.1.1.1",
            "999",
            &words(&["bin/rails", "db:setup"]),
            &env,
            ExecMode::Attached,
            "a1b2c3",
        );
        assert_eq!(
            cmd.script(),
            "docker run --rm --name app-web-exec-999-a1b2c3 --network kamal --env ENV1=\"value1\" --env-file .kamal/apps/app/env/roles/web.env --env foo=\"bar\" --log-opt max-size=\"10m\" dhh/app:999 bin/rails db:setup"
        );
        let cmd = super::execute_in_new_container(
            &config,
            web,
            "1.1.1.1",
            "999",
            &words(&["bin/rails", "c"]),
            &IndexMap::new(),
            ExecMode::Interactive,
            "a1b2c3",
        );
        assert!(
            cmd.script().starts_with("docker run -it --rm --name app-web-exec-999-a1b2c3 --network kamal "),
            "{cmd}"
        );
        let cmd = super::execute_in_new_container(
            &config,
            web,
            "1.1.1.1",
            "999",
            &words(&["x"]),
            &IndexMap::new(),
            ExecMode::Detached,
            "a1b2c3",
        );
        assert!(cmd.script().starts_with("docker run --detach --name app-web-exec-999-a1b2c3 "), "{cmd}");
        let cmd = super::execute_in_new_container(
            &config,
            web,
            "1.1.1.1",
            "999",
            &words(&["x"]),
            &IndexMap::new(),
            ExecMode::Piped,
            "a1b2c3",
        );
        assert!(cmd.script().starts_with("docker run -i --rm --name app-web-exec-999-a1b2c3 "), "{cmd}");
    }

    #[test]
    fn execute_in_existing_container() {
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        let mut env = IndexMap::new();
        env.insert("foo".to_string(), "bar".to_string());
        assert_eq!(
            super::execute_in_existing_container(&config, web, "999", &words(&["bin/rails", "db:setup"]), &env, false)
                .script(),
            "docker exec --env foo=\"bar\" app-web-999 bin/rails db:setup"
        );
        assert_eq!(
            super::execute_in_existing_container(
                &config,
                web,
                "999",
                &words(&["bin/rails", "c"]),
                &IndexMap::new(),
                true
            )
            .script(),
            "docker exec -it app-web-999 bin/rails c"
        );
    }

    #[test]
    fn env_directory_and_file() {
        let config = config(TWO_ROLES);
        assert_eq!(make_env_directory(&config).script(), "mkdir -p .kamal/apps/app/env/roles");
        assert_eq!(
            remove_env_file(&config, config.role("web").unwrap()).script(),
            "rm -f .kamal/apps/app/env/roles/web.env"
        );
    }

    #[test]
    fn assets() {
        let config = config("servers: [1.1.1.1]\nasset_path: /public/assets\n");
        let web = config.role("web").unwrap();
        assert_eq!(asset_path(web, &config), Some(("/public/assets".to_string(), None)));
        assert_eq!(
            extract_assets(&config, web, "999", "/public/assets").script(),
            "mkdir -p .kamal/apps/app/assets/extracted/web-999 && docker container rm app-web-assets 2> /dev/null || true && docker container create --name app-web-assets dhh/app:999 && docker container cp -L app-web-assets:/public/assets/. .kamal/apps/app/assets/extracted/web-999 && docker container rm app-web-assets"
        );
        assert_eq!(
            sync_asset_volumes(&config, web, "999", None).script(),
            "mkdir -p .kamal/apps/app/assets/volumes/web-999 ; cp -rnT .kamal/apps/app/assets/extracted/web-999 .kamal/apps/app/assets/volumes/web-999"
        );
        assert_eq!(
            sync_asset_volumes(&config, web, "999", Some("998")).script(),
            "mkdir -p .kamal/apps/app/assets/volumes/web-999 ; cp -rnT .kamal/apps/app/assets/extracted/web-999 .kamal/apps/app/assets/volumes/web-999 ; cp -rnT .kamal/apps/app/assets/extracted/web-999 .kamal/apps/app/assets/volumes/web-998 || true ; cp -rnT .kamal/apps/app/assets/extracted/web-998 .kamal/apps/app/assets/volumes/web-999 || true"
        );
        assert_eq!(
            clean_up_assets(&config, web, "999").script(),
            "find .kamal/apps/app/assets/extracted -maxdepth 1 -name 'web-*' '!' -name web-999 -exec rm -rf '{}' + ; find .kamal/apps/app/assets/volumes -maxdepth 1 -name 'web-*' '!' -name web-999 -exec rm -rf '{}' +"
        );
    }

    #[test]
    fn roles_without_the_proxy_have_no_assets() {
        let config = config("servers:\n  web: [1.1.1.1]\n  workers: [1.1.1.2]\nasset_path: /public/assets\n");
        assert_eq!(asset_path(config.role("workers").unwrap(), &config), None);
    }

    #[test]
    fn error_pages_and_app_directories() {
        let config = config(TWO_ROLES);
        assert_eq!(
            create_error_pages_directory(&config, "999").script(),
            "mkdir -p .kamal/proxy/apps-config/app/error_pages/999"
        );
        assert_eq!(
            clean_up_error_pages(&config, "999").script(),
            "find .kamal/proxy/apps-config/app/error_pages -mindepth 1 -maxdepth 1 '!' -name 999 -exec rm -rf '{}' +"
        );
        assert_eq!(remove_app_directory(&config).script(), "rm -r .kamal/apps/app");
        assert_eq!(remove_proxy_app_directory(&config).script(), "rm -r .kamal/proxy/apps-config/app");
    }

    /// Why the engine tolerates `app stop`'s exit status, as Kamal does: with nothing running, GNU `xargs` still
    /// runs `docker stop` once without ids, which refuses, and `xargs` exits 123.
    #[test]
    fn stop_exits_123_when_nothing_runs_and_0_when_something_does() {
        use crate::commands::test_config::run_with_fake_docker_status;
        let config = config(TWO_ROLES);
        let web = config.role("web").unwrap();
        let stop = |running: &str| {
            let fake = format!(
                "case \"$1\" in\n  ps) printf '{running}' ;;\n  stop) [ $# -gt 1 ] || exit 1; echo \"stopped $2\" ;;\nesac"
            );
            run_with_fake_docker_status(stop(&config, web, None).script(), &fake)
        };
        assert_eq!(stop(""), (String::new(), 123));
        assert_eq!(stop("abc\\n"), ("stopped abc\n".to_string(), 0));
    }
}
