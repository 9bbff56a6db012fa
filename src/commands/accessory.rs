//! Accessory containers (databases, caches, …): run, start/stop, logs, exec, files and directories, images —
//! Kamal's `Commands::Accessory` and `Configuration::Accessory`.
//!
//! An accessory's container is named after its service (`<service>-<name>` by default) and lives until removed;
//! deploys never touch it. Its data lives in `~/<service>/` on the host.

use yaml_serde::Value;

use super::app::{LogOptions, container_id_for, with_log_options};
use super::names;
use super::proxy::{self, TlsOwner};
use super::{
    command_words, docker, options_without_restart, restart_policy, with_clear_env, with_key_values, with_logging,
    with_options, with_user_command, with_volume,
};
use crate::command::{Cmd, quote};
use crate::config::schema::scalar_text;
use crate::config::{Accessory, Config};

/// A file to upload for an accessory (`files:`): the engine reads (or renders, for `.erb`) `local`, writes it
/// to `host_path` with `mode`/`owner`, and the container sees it at `container_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessoryFile {
    /// The local file, relative to the project root (ERB-rendered first when it ends in `erb`).
    pub local: String,
    /// Where it goes on the host, relative to the login directory: `<service>/<remote>`.
    pub host_path: String,
    pub container_path: String,
    /// Octal mode, `755` unless given.
    pub mode: String,
    pub owner: Option<String>,
    /// Mount options (`ro`, …).
    pub options: Option<String>,
}

impl AccessoryFile {
    /// Kamal renders local files ending in `erb` with ERB before uploading them.
    pub fn is_template(&self) -> bool {
        self.local.ends_with("erb")
    }
}

/// A data directory of an accessory (`directories:`), created on the host and mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessoryDirectory {
    /// On the host: absolute, or relative to the login directory (`<service>/<name>`).
    pub host_path: String,
    pub container_path: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub options: Option<String>,
}

/// One `files`/`directories` entry: `local:remote[:options]` or `{local, remote, mode, owner, options}`.
struct PathEntry {
    local: String,
    remote: String,
    mode: Option<String>,
    owner: Option<String>,
    options: Option<String>,
}

fn path_entries(values: &[Value]) -> Vec<PathEntry> {
    values
        .iter()
        .filter_map(|value| match value {
            Value::Mapping(map) => {
                let text = |key: &str| map.get(key).filter(|v| !v.is_null()).map(scalar_text);
                Some(PathEntry {
                    local: text("local")?,
                    remote: text("remote")?,
                    mode: text("mode"),
                    owner: text("owner"),
                    options: text("options"),
                })
            }
            other => {
                let text = scalar_text(other);
                let mut parts = text.splitn(3, ':');
                let (local, remote) = (parts.next()?.to_string(), parts.next()?.to_string());
                let options = parts.next().map(str::to_string);
                Some(PathEntry { local, remote, mode: None, owner: None, options })
            }
        })
        .collect()
}

/// The accessory's `files:` as upload instructions.
pub fn files(accessory: &Accessory) -> Vec<AccessoryFile> {
    path_entries(&accessory.files)
        .into_iter()
        .map(|entry| AccessoryFile {
            host_path: format!("{}{}", accessory.service, entry.remote),
            container_path: entry.remote,
            local: entry.local,
            mode: entry.mode.unwrap_or_else(|| "755".to_string()),
            owner: entry.owner,
            options: entry.options,
        })
        .collect()
}

/// The accessory's `directories:`; relative names live under `<service>/`.
pub fn directories(accessory: &Accessory) -> Vec<AccessoryDirectory> {
    path_entries(&accessory.directories)
        .into_iter()
        .map(|entry| AccessoryDirectory {
            host_path: if entry.local.starts_with('/') {
                entry.local
            } else {
                format!("{}/{}", accessory.service, entry.local)
            },
            container_path: entry.remote,
            mode: entry.mode,
            owner: entry.owner,
            options: entry.options,
        })
        .collect()
}

/// A host path as a shell word: relative paths anchored at `$PWD` (left for the host's shell).
fn host_path_word(path: &str) -> String {
    if path.starts_with('/') { quote(path) } else { format!("$PWD/{}", quote(path)) }
}

/// `mkdir -p <dir>` for every directory, then its `chmod`/`chown` when given.
pub fn make_directories(accessory: &Accessory) -> Option<Cmd> {
    let mut commands = directories(accessory).into_iter().map(|directory| {
        let path = host_path_word(&directory.host_path);
        let mut cmd = Cmd::new("mkdir").arg("-p").raw(&path);
        if let Some(mode) = &directory.mode {
            cmd = cmd.and(Cmd::new("chmod").arg(mode).raw(&path));
        }
        if let Some(owner) = &directory.owner {
            cmd = cmd.and(Cmd::new("chown").arg(owner).raw(&path));
        }
        cmd
    });
    let first = commands.next()?;
    Some(commands.fold(first, Cmd::and))
}

/// `mkdir -p <dirname of file>` before uploading `file`.
pub fn make_file_directory(file: &AccessoryFile) -> Cmd {
    let dir = file.host_path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or(".");
    Cmd::new("mkdir").arg("-p").arg(dir)
}

/// `chmod <mode> <file> [&& chown <owner> <file>]` after uploading `file`.
pub fn set_file_permissions(file: &AccessoryFile) -> Cmd {
    let cmd = Cmd::new("chmod").arg(&file.mode).arg(&file.host_path);
    match &file.owner {
        Some(owner) => cmd.and(Cmd::new("chown").arg(owner).arg(&file.host_path)),
        None => cmd,
    }
}

/// `3306` publishes `3306:3306`; anything with a `:` is used as written.
pub fn publish_spec(accessory: &Accessory) -> Option<String> {
    let port = accessory.port.as_deref().filter(|p| !p.trim().is_empty())?;
    Some(if port.contains(':') { port.to_string() } else { format!("{port}:{port}") })
}

/// `--env KAMAL_HOST="h" --env K="v"… --env-file <accessory env file>`.
fn with_env_args(cmd: Cmd, config: &Config, accessory: &Accessory, host: &str) -> Cmd {
    let cmd = with_key_values(cmd, "--env", [("KAMAL_HOST", host)]);
    with_clear_env(cmd, &accessory.env.clear).arg("--env-file").arg(names::accessory_env_file(config, &accessory.name))
}

/// `--volume` for `volumes:`, then each file, then each directory.
fn with_volume_args(mut cmd: Cmd, accessory: &Accessory) -> Cmd {
    for volume in &accessory.volumes {
        cmd = cmd.arg("--volume").arg(volume);
    }
    for file in files(accessory) {
        cmd = with_volume(cmd, &file.host_path, &file.container_path, file.options.as_deref());
    }
    for directory in directories(accessory) {
        cmd = with_volume(cmd, &directory.host_path, &directory.container_path, directory.options.as_deref());
    }
    cmd
}

/// `docker run --name <service> --detach --restart … --network … <logging> [--publish p] <env> <volumes>
/// <labels> <options> <image> [cmd]` on `host`.
pub fn run(config: &Config, accessory: &Accessory, host: &str) -> Cmd {
    let mut cmd = docker()
        .args(["run", "--name"])
        .arg(&accessory.service)
        .args(["--detach", "--restart"])
        .arg(restart_policy(&accessory.options))
        .arg("--network")
        .arg(&accessory.network);
    cmd = with_logging(cmd, &config.logging);
    if let Some(spec) = publish_spec(accessory) {
        cmd = cmd.arg("--publish").arg(spec);
    }
    cmd = with_env_args(cmd, config, accessory, host);
    cmd = with_volume_args(cmd, accessory);
    let mut labels = vec![("service", accessory.service.as_str())];
    labels.extend(accessory.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd = with_key_values(cmd, "--label", labels);
    cmd = with_options(cmd, &options_without_restart(&accessory.options));
    cmd.arg(&accessory.image).args(accessory.cmd.as_deref().map(command_words).unwrap_or_default())
}

/// `docker ps --all --quiet --filter label=service=<service>`: non-empty when the accessory's container exists
/// (boot then skips the host, as Kamal does).
pub fn container_exists(accessory: &Accessory) -> Cmd {
    docker().args(["ps", "--all", "--quiet", "--filter"]).arg(service_filter(accessory))
}

/// The id of the accessory's running container (the proxy's target).
pub fn running_container_id(accessory: &Accessory) -> Cmd {
    container_id_for(&accessory.service, true)
}

fn service_filter(accessory: &Accessory) -> String {
    format!("label=service={}", accessory.service)
}

/// `docker container start <service>`.
pub fn start(accessory: &Accessory) -> Cmd {
    docker().args(["container", "start"]).arg(&accessory.service)
}

/// `docker container stop <service>`.
pub fn stop(accessory: &Accessory) -> Cmd {
    docker().args(["container", "stop"]).arg(&accessory.service)
}

/// `docker ps --filter label=service=<service>`.
pub fn info(accessory: &Accessory) -> Cmd {
    docker().args(["ps", "--filter"]).arg(service_filter(accessory))
}

/// `docker logs <service> …`.
pub fn logs(accessory: &Accessory, options: &LogOptions) -> Cmd {
    with_log_options(docker().arg("logs").arg(&accessory.service), options)
}

/// `docker exec [-it] <service> <command…>`.
pub fn execute_in_existing_container(accessory: &Accessory, command: &[String], interactive: bool) -> Cmd {
    let mut cmd = docker().arg("exec");
    if interactive {
        cmd = cmd.arg("-it");
    }
    with_user_command(cmd.arg(&accessory.service), command)
}

/// `docker run [-it] --rm --network … <env> <volumes> <options> <image> <command…>`.
pub fn execute_in_new_container(
    config: &Config,
    accessory: &Accessory,
    host: &str,
    command: &[String],
    interactive: bool,
) -> Cmd {
    let mut cmd = docker().arg("run");
    if interactive {
        cmd = cmd.arg("-it");
    }
    cmd = cmd.args(["--rm", "--network"]).arg(&accessory.network);
    cmd = with_env_args(cmd, config, accessory, host);
    cmd = with_volume_args(cmd, accessory);
    cmd = with_options(cmd, &options_without_restart(&accessory.options));
    with_user_command(cmd.arg(&accessory.image), command)
}

/// Registers the accessory's container `target` with kamal-proxy under its service name.
pub fn deploy_to_proxy(config: &Config, accessory: &Accessory, target: &str) -> Option<Cmd> {
    let proxy = accessory.proxy.as_ref()?;
    Some(proxy::deploy(config, &accessory.service, proxy, target, &config.version, TlsOwner::Accessory))
}

/// `kamal-proxy remove <service>`.
pub fn remove_from_proxy(accessory: &Accessory) -> Cmd {
    proxy::remove(&accessory.service)
}

/// `mkdir -p .kamal/apps/<svc[-dest]>/env/accessories`.
pub fn ensure_env_directory(config: &Config) -> Cmd {
    Cmd::new("mkdir").arg("-p").arg(names::accessory_env_directory(config))
}

/// `docker container prune --force --filter label=service=<service>`.
pub fn remove_container(accessory: &Accessory) -> Cmd {
    docker().args(["container", "prune", "--force", "--filter"]).arg(service_filter(accessory))
}

/// `docker image pull <image>`.
pub fn pull_image(accessory: &Accessory) -> Cmd {
    docker().args(["image", "pull"]).arg(&accessory.image)
}

/// `docker image rm --force <image>`.
pub fn remove_image(accessory: &Accessory) -> Cmd {
    docker().args(["image", "rm", "--force"]).arg(&accessory.image)
}

/// `rm -rf <service>`: the accessory's files and data directories.
pub fn remove_service_directory(accessory: &Accessory) -> Cmd {
    Cmd::new("rm").arg("-rf").arg(&accessory.service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{BASE, load};

    const ACCESSORIES: &str = "registry:\n  server: private.registry\n  username: dhh\n  password: secret\nservers: [1.1.1.1]\naccessories:\n  mysql:\n    image: private.registry/mysql:8.0\n    host: 1.1.1.5\n    port: \"3306\"\n    env:\n      clear:\n        MYSQL_ROOT_HOST: \"%\"\n      secret: [MYSQL_ROOT_PASSWORD]\n    options:\n      cpus: 4\n      memory: 2GB\n  redis:\n    image: redis:latest\n    host: 1.1.1.6\n    port: \"6379:6379\"\n    labels:\n      cache: true\n    env:\n      SOMETHING: else\n    volumes: [/var/lib/redis:/data]\n  busybox:\n    service: custom-busybox\n    image: busybox:latest\n    registry:\n      server: other.registry\n      username: user\n      password: pw\n    host: 1.1.1.7\n    proxy:\n      host: busybox.example.com\n";

    fn config() -> Config {
        // BASE's registry is replaced by the one above (a repeated key keeps the later value).
        load(&format!("{BASE}{ACCESSORIES}"), None)
    }

    fn accessory<'a>(config: &'a Config, name: &str) -> &'a Accessory {
        config.accessories.iter().find(|a| a.name == name).unwrap()
    }

    #[test]
    fn run() {
        let config = config();
        assert_eq!(
            super::run(&config, accessory(&config, "mysql"), "1.1.1.5").script(),
            "docker run --name app-mysql --detach --restart unless-stopped --network kamal --log-opt max-size=\"10m\" --publish 3306:3306 --env KAMAL_HOST=\"1.1.1.5\" --env MYSQL_ROOT_HOST=\"%\" --env-file .kamal/apps/app/env/accessories/mysql.env --label service=\"app-mysql\" --cpus \"4\" --memory \"2GB\" private.registry/mysql:8.0"
        );
        assert_eq!(
            super::run(&config, accessory(&config, "redis"), "1.1.1.6").script(),
            "docker run --name app-redis --detach --restart unless-stopped --network kamal --log-opt max-size=\"10m\" --publish 6379:6379 --env KAMAL_HOST=\"1.1.1.6\" --env SOMETHING=\"else\" --env-file .kamal/apps/app/env/accessories/redis.env --volume /var/lib/redis:/data --label service=\"app-redis\" --label cache=\"true\" redis:latest"
        );
        assert_eq!(
            super::run(&config, accessory(&config, "busybox"), "1.1.1.7").script(),
            "docker run --name custom-busybox --detach --restart unless-stopped --network kamal --log-opt max-size=\"10m\" --env KAMAL_HOST=\"1.1.1.7\" --env-file .kamal/apps/app/env/accessories/busybox.env --label service=\"custom-busybox\" other.registry/busybox:latest"
        );
    }

    #[test]
    fn run_with_files_directories_network_restart_and_cmd() {
        let yaml = format!(
            "{BASE}servers: [1.1.1.1]\naccessories:\n  db:\n    image: mysql:8\n    host: 1.1.1.5\n    network: custom\n    cmd: mysqld --verbose\n    options:\n      restart: always\n    files:\n      - config/my.cnf:/etc/mysql/my.cnf:ro\n      - local: config/init.sql.erb\n        remote: /docker-entrypoint-initdb.d/init.sql\n        mode: \"0640\"\n        owner: \"1000:1000\"\n    directories:\n      - data:/var/lib/mysql\n      - local: /mnt/backups\n        remote: /backups\n        mode: \"750\"\n        options: z\n"
        );
        let config = load(&yaml, None);
        let db = accessory(&config, "db");
        assert_eq!(
            super::run(&config, db, "1.1.1.5").script(),
            "docker run --name app-db --detach --restart always --network custom --log-opt max-size=\"10m\" --env KAMAL_HOST=\"1.1.1.5\" --env-file .kamal/apps/app/env/accessories/db.env --volume $PWD/app-db/etc/mysql/my.cnf:/etc/mysql/my.cnf:ro --volume $PWD/app-db/docker-entrypoint-initdb.d/init.sql:/docker-entrypoint-initdb.d/init.sql --volume $PWD/app-db/data:/var/lib/mysql --volume /mnt/backups:/backups:z --label service=\"app-db\" mysql:8 mysqld --verbose"
        );
        let files = files(db);
        assert_eq!(
            files[1],
            AccessoryFile {
                local: "config/init.sql.erb".into(),
                host_path: "app-db/docker-entrypoint-initdb.d/init.sql".into(),
                container_path: "/docker-entrypoint-initdb.d/init.sql".into(),
                mode: "0640".into(),
                owner: Some("1000:1000".into()),
                options: None,
            }
        );
        assert!(files[1].is_template() && !files[0].is_template());
        assert_eq!(files[0].mode, "755");
        assert_eq!(make_file_directory(&files[1]).script(), "mkdir -p app-db/docker-entrypoint-initdb.d");
        assert_eq!(
            set_file_permissions(&files[1]).script(),
            "chmod 0640 app-db/docker-entrypoint-initdb.d/init.sql && chown 1000:1000 app-db/docker-entrypoint-initdb.d/init.sql"
        );
        assert_eq!(
            make_directories(db).unwrap().script(),
            "mkdir -p $PWD/app-db/data && mkdir -p /mnt/backups && chmod 750 /mnt/backups"
        );
    }

    #[test]
    fn lifecycle() {
        let config = config();
        let mysql = accessory(&config, "mysql");
        assert_eq!(start(mysql).script(), "docker container start app-mysql");
        assert_eq!(stop(mysql).script(), "docker container stop app-mysql");
        assert_eq!(info(mysql).script(), "docker ps --filter label=service=app-mysql");
        assert_eq!(container_exists(mysql).script(), "docker ps --all --quiet --filter label=service=app-mysql");
        assert_eq!(running_container_id(mysql).script(), "docker container ls --filter 'name=^app-mysql$' --quiet");
        assert_eq!(remove_container(mysql).script(), "docker container prune --force --filter label=service=app-mysql");
        assert_eq!(pull_image(mysql).script(), "docker image pull private.registry/mysql:8.0");
        assert_eq!(remove_image(mysql).script(), "docker image rm --force private.registry/mysql:8.0");
        assert_eq!(remove_service_directory(mysql).script(), "rm -rf app-mysql");
        assert_eq!(ensure_env_directory(&config).script(), "mkdir -p .kamal/apps/app/env/accessories");
    }

    #[test]
    fn logs_and_exec() {
        let config = config();
        let mysql = accessory(&config, "mysql");
        let options = LogOptions {
            since: Some("5m".into()),
            lines: Some(100),
            grep: Some("thing".into()),
            grep_options: Some("-C 2".into()),
            timestamps: true,
            ..LogOptions::default()
        };
        assert_eq!(
            logs(mysql, &options).script(),
            "docker logs app-mysql --timestamps --since 5m --tail 100 2>&1 | grep thing -C 2"
        );
        let command = ["mysql".to_string(), "-u".to_string(), "root".to_string()];
        assert_eq!(
            execute_in_existing_container(mysql, &command, false).script(),
            "docker exec app-mysql mysql -u root"
        );
        assert_eq!(
            execute_in_existing_container(mysql, &command, true).script(),
            "docker exec -it app-mysql mysql -u root"
        );
        assert_eq!(
            execute_in_new_container(&config, mysql, "1.1.1.5", &command, true).script(),
            "docker run -it --rm --network kamal --env KAMAL_HOST=\"1.1.1.5\" --env MYSQL_ROOT_HOST=\"%\" --env-file .kamal/apps/app/env/accessories/mysql.env --cpus \"4\" --memory \"2GB\" private.registry/mysql:8.0 mysql -u root"
        );
    }

    #[test]
    fn proxy() {
        let config = config();
        let busybox = accessory(&config, "busybox");
        assert_eq!(
            deploy_to_proxy(&config, busybox, "172.1.0.2").unwrap().script(),
            "docker exec kamal-proxy kamal-proxy deploy custom-busybox --target=\"172.1.0.2:80\" --host=\"busybox.example.com\" --deploy-timeout=\"30s\" --drain-timeout=\"30s\" --buffer-requests --buffer-responses --log-request-header=\"Cache-Control\" --log-request-header=\"Last-Modified\" --log-request-header=\"User-Agent\""
        );
        assert!(deploy_to_proxy(&config, accessory(&config, "mysql"), "x").is_none());
        assert_eq!(remove_from_proxy(busybox).script(), "docker exec kamal-proxy kamal-proxy remove custom-busybox");
    }
}
