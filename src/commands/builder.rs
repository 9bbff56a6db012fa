//! Image builds, run locally on the deployer: `docker buildx build` for the config's builder (local, remote,
//! hybrid or Docker Build Cloud), builder creation, and on hosts the pull and label check — Kamal's
//! `Commands::Builder::*` and `Configuration::Builder`.
//!
//! Build secrets are passed by name (`--secret id=NAME`); the engine puts their values in the build process's
//! environment, never in the script.

use yaml_serde::{Mapping, Value};

use super::names;
use super::{docker, with_key_values};
use crate::command::Cmd;
use crate::config::Config;
use crate::config::schema::scalar_text;

/// Which builder a config uses, given the deployer's architecture (Kamal's `Commands::Builder#target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuilderKind {
    /// Every arch built on the deployer.
    Local,
    /// Every arch built on `builder.remote`.
    Remote,
    /// The deployer's arch locally, the others on `builder.remote`.
    Hybrid,
    /// Docker Build Cloud (`driver: cloud org/name`).
    Cloud,
}

/// This machine's architecture as Docker names it (`amd64`, `arm64`, …): what builds here without emulation.
pub fn deployer_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The arches to build: `builder.arch`, else amd64 and arm64 (none with the `docker` driver).
pub fn arches(config: &Config) -> Vec<String> {
    if !config.builder.arch.is_empty() {
        return config.builder.arch.clone();
    }
    if is_docker_driver(config) { Vec::new() } else { vec!["amd64".into(), "arm64".into()] }
}

/// Arches built on the deployer (`local_arch` is its own, `amd64`/`arm64`).
pub fn local_arches(config: &Config, local_arch: &str) -> Vec<String> {
    let arches = arches(config);
    if !config.builder.local {
        Vec::new()
    } else if config.builder.remote.is_some() {
        arches.into_iter().filter(|a| a == local_arch).collect()
    } else {
        arches
    }
}

/// Arches built on the remote builder.
pub fn remote_arches(config: &Config, local_arch: &str) -> Vec<String> {
    if config.builder.remote.is_none() {
        return Vec::new();
    }
    let local = local_arches(config, local_arch);
    arches(config).into_iter().filter(|a| !local.contains(a)).collect()
}

/// The builder kind for this config on a deployer of `local_arch`.
pub fn kind(config: &Config, local_arch: &str) -> BuilderKind {
    if !remote_arches(config, local_arch).is_empty() {
        if local_arches(config, local_arch).is_empty() { BuilderKind::Remote } else { BuilderKind::Hybrid }
    } else if config.builder.driver.starts_with("cloud") {
        BuilderKind::Cloud
    } else {
        BuilderKind::Local
    }
}

fn is_docker_driver(config: &Config) -> bool {
    config.builder.driver == "docker"
}

/// `ssh://app@1.1.1.5` -> `ssh---app-1-1-1-5`: a remote as part of a builder name.
fn sanitized(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' })
        .collect()
}

/// The buildx builder's name, `None` with the `docker` driver (it builds with the daemon's own builder).
pub fn builder_name(config: &Config, local_arch: &str) -> Option<String> {
    let driver = &config.builder.driver;
    let remote = config.builder.remote.as_deref().map(sanitized).unwrap_or_default();
    let local_registry = config.registry.is_local();
    let suffix = if local_registry { "-local-registry" } else { "" };
    match kind(config, local_arch) {
        BuilderKind::Local if is_docker_driver(config) => None,
        BuilderKind::Local if local_registry => Some(format!("kamal-local-registry-{driver}")),
        BuilderKind::Local => Some(format!("kamal-local-{driver}")),
        BuilderKind::Remote => Some(format!("kamal-remote-{remote}{suffix}")),
        BuilderKind::Hybrid => Some(format!("kamal-hybrid-{driver}-{remote}{suffix}")),
        BuilderKind::Cloud => Some(driver.replace([' ', '/'], "-")),
    }
}

/// `--platform`'s value for `arches`, e.g. `linux/amd64,linux/arm64`.
pub fn platforms(arches: &[String]) -> Option<String> {
    (!arches.is_empty()).then(|| arches.iter().map(|a| format!("linux/{a}")).collect::<Vec<_>>().join(","))
}

/// `builder.cache` as `(--cache-to, --cache-from)` values.
pub fn cache_options(config: &Config) -> Option<(String, String)> {
    let cache = config.builder.raw.get("cache")?.as_mapping()?;
    let text = |key: &str| cache.get(key).filter(|v| !v.is_null()).map(scalar_text);
    let options = text("options");
    match text("type").as_deref() {
        Some("gha") => {
            let to = ["type=gha".to_string()].into_iter().chain(options).collect::<Vec<_>>().join(",");
            Some((to, "type=gha".to_string()))
        }
        Some("registry") => {
            let image = text("image").unwrap_or_else(|| format!("{}-build-cache", config.image));
            let reference = match &config.registry.server {
                Some(server) => format!("ref={server}/{image}"),
                None => format!("ref={image}"),
            };
            let to = ["type=registry".to_string()].into_iter().chain(options).chain([reference.clone()]);
            Some((to.collect::<Vec<_>>().join(","), format!("type=registry,{reference}")))
        }
        _ => None,
    }
}

/// The build options shared by every builder: cache, `--label service=…`, build args, secrets, `--file`,
/// `--target`, `--ssh`, `--provenance`, `--sbom`.
pub fn with_build_options(cmd: Cmd, config: &Config) -> Cmd {
    with_build_options_and_secrets_from(cmd, config, None)
}

/// [`with_build_options`], with each build secret read from the file `<secrets_dir>/<NAME>` instead of the
/// build process's environment (a remote builder, where berth writes them over SSH).
fn with_build_options_and_secrets_from(mut cmd: Cmd, config: &Config, secrets_dir: Option<&str>) -> Cmd {
    let builder = &config.builder;
    if let Some((to, from)) = cache_options(config) {
        cmd = cmd.arg("--cache-to").arg(to).arg("--cache-from").arg(from);
    }
    cmd = with_key_values(cmd, "--label", [("service", config.service.as_str())]);
    let args: Vec<(String, String)> = builder.args.iter().map(|(k, v)| (scalar_text(k), scalar_text(v))).collect();
    cmd = with_key_values(cmd, "--build-arg", args.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd = match secrets_dir {
        None => with_key_values(cmd, "--secret", builder.secrets.iter().map(|name| ("id", name.as_str()))),
        Some(dir) => {
            builder.secrets.iter().fold(cmd, |cmd, name| cmd.arg("--secret").arg(format!("id={name},src={dir}/{name}")))
        }
    };
    cmd = cmd.arg("--file").arg(&builder.dockerfile);
    if let Some(target) = builder.target.as_deref().filter(|t| !t.is_empty()) {
        cmd = cmd.arg("--target").arg(target);
    }
    let raw_text = |key: &str| builder.raw.get(key).filter(|v| !v.is_null()).map(scalar_text);
    if let Some(ssh) = raw_text("ssh").filter(|s| !s.is_empty()) {
        // Kamal leaves `$SSH_AUTH_SOCK` to the local shell; `${…}` is how `Cmd` keeps a variable expandable.
        cmd = cmd.arg("--ssh").arg_expanding_braced_vars(brace_bare_vars(&ssh));
    }
    for key in ["provenance", "sbom"] {
        if let Some(value) = raw_text(key) {
            cmd = cmd.arg(format!("--{key}")).arg(value);
        }
    }
    cmd
}

/// `$NAME` -> `${NAME}`, so the variable stays expandable through [`Cmd::arg_expanding_braced_vars`].
fn brace_bare_vars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') {
            let mut name = String::new();
            while let Some(&n) = chars.peek().filter(|n| n.is_ascii_alphanumeric() || **n == '_') {
                name.push(n);
                chars.next();
            }
            out.push_str(&format!("${{{name}}}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The names of `builder.secrets`: the engine exports their values into the build's environment.
pub fn build_secret_names(config: &Config) -> &[String] {
    &config.builder.secrets
}

/// `docker buildx build --output=type=registry --platform … [--builder …] -t <image:version> -t <image:latest>
/// <options> [--no-cache] <context> 2>&1`: build and push in one step. `context` is the build context
/// directory (`builder.context`, default `.`), or `-` for a tar on stdin (see [`push_from_git_archive`]).
pub fn push(config: &Config, version: &str, local_arch: &str, no_cache: bool, context: &str) -> Cmd {
    let platforms = platforms(&arches(config));
    buildx_build(config, version, platforms, builder_name(config, local_arch), None, no_cache, context)
}

/// `docker buildx build <output> [--platform …] [--builder …] -t <image:version> -t <image:latest> <options>
/// [--no-cache] <context> 2>&1`, where the output is the registry, or, in local registry mode, the building
/// engine (berth then sends the image to the hosts itself, see [`load`]).
fn buildx_build(
    config: &Config,
    version: &str,
    platforms: Option<String>,
    builder: Option<String>,
    secrets_dir: Option<&str>,
    no_cache: bool,
    context: &str,
) -> Cmd {
    let output = if config.registry.is_local() { "--load" } else { "--output=type=registry" };
    let mut cmd = docker().args(["buildx", "build", output]);
    if let Some(platforms) = platforms {
        cmd = cmd.arg("--platform").arg(platforms);
    }
    if let Some(builder) = builder {
        cmd = cmd.arg("--builder").arg(builder);
    }
    cmd = cmd.arg("-t").arg(names::image(config, version)).arg("-t").arg(names::latest_image(config));
    cmd = with_build_options_and_secrets_from(cmd, config, secrets_dir);
    if no_cache {
        cmd = cmd.arg("--no-cache");
    }
    cmd.arg(context).raw("2>&1")
}

/// The build context of [`push`]: `builder.context`, else `.`.
pub fn context(config: &Config) -> &str {
    config.builder.context.as_deref().unwrap_or(".")
}

/// `git -C <repository> archive --format=tar <tree> | docker buildx build … -`: builds exactly the committed
/// tree (`HEAD`, or `HEAD:sub/dir` for a project below the repository root) without cloning, so uncommitted
/// changes stay out of the image as with Kamal's clone.
pub fn push_from_git_archive(
    config: &Config,
    version: &str,
    local_arch: &str,
    no_cache: bool,
    repository: &str,
    tree: &str,
) -> Cmd {
    git_archive(repository, tree).pipe(push(config, version, local_arch, no_cache, "-"))
}

/// `git -C <repository> archive --format=tar <tree>`: the committed tree as a tar on stdout.
fn git_archive(repository: &str, tree: &str) -> Cmd {
    Cmd::new("git").arg("-C").arg(repository).args(["archive", "--format=tar"]).arg(tree)
}

/// Without buildx: `DOCKER_BUILDKIT=0 docker build -t <image:version> -t <image:latest> <options> [--no-cache]
/// <context>` — Docker's classic builder, for the local architecture only and without build secrets or cache
/// export (the engine refuses those), followed by [`push_tags`].
pub fn classic_build(config: &Config, version: &str, no_cache: bool, context: &str) -> Cmd {
    let mut cmd = Cmd::raw_script("DOCKER_BUILDKIT=0").raw(docker().args(["build", "--quiet"]).script());
    cmd = cmd.arg("-t").arg(names::image(config, version)).arg("-t").arg(names::latest_image(config));
    cmd = with_build_options(cmd, config);
    if no_cache {
        cmd = cmd.arg("--no-cache");
    }
    cmd.arg(context)
}

/// [`classic_build`] of the committed tree: `git -C <repository> archive --format=tar <tree> | … -`.
pub fn classic_build_from_git_archive(
    config: &Config,
    version: &str,
    no_cache: bool,
    repository: &str,
    tree: &str,
) -> Cmd {
    git_archive(repository, tree).pipe(classic_build(config, version, no_cache, "-"))
}

/// `docker push <image:version> && docker push <image:latest>`.
pub fn push_tags(config: &Config, version: &str) -> Cmd {
    docker().arg("push").arg(names::image(config, version)).and(docker().arg("push").arg(names::latest_image(config)))
}

/// Where `builder.remote` is reached over SSH: `ssh://[user@]host[:port]` (`host` keeps its `:port`, as hosts
/// are written in `servers`). `None` for other endpoints (`tcp://…`), which only a local buildx can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshBuilderAddress {
    /// The login user from the URL; without one, `ssh.user` applies.
    pub user: Option<String>,
    pub host: String,
}

pub fn ssh_builder_address(remote: &str) -> Option<SshBuilderAddress> {
    let rest = remote.trim().strip_prefix("ssh://")?.trim_end_matches('/');
    let (user, host) = match rest.rsplit_once('@') {
        Some((user, host)) => (Some(user.to_string()).filter(|u| !u.is_empty()), host),
        None => (None, rest),
    };
    (!host.is_empty()).then(|| SshBuilderAddress { user, host: host.to_string() })
}

/// On a remote builder: its engine's architecture, then `buildx` or `classic` (whether the buildx plugin is
/// there), one per line.
pub fn remote_builder_probe() -> Cmd {
    docker()
        .args(["version", "--format", "{{.Server.Arch}}"])
        .and(Cmd::raw_script("{ docker buildx version >/dev/null 2>&1 && echo buildx || echo classic; }"))
}

/// How a remote builder builds, from what [`remote_builder_probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteBuild {
    /// Docker's classic builder: the builder's own architecture, no build secrets or cache export.
    Classic,
    /// buildx: `platforms` when more than the builder's own architecture is wanted (then `builder` names a
    /// docker-container builder, see [`remote_multiarch_builder`]); build secrets read from `secrets_dir`.
    Buildx { platforms: Option<String>, builder: Option<String>, secrets_dir: Option<String> },
}

/// The buildx builder a remote builder uses for several architectures.
pub const REMOTE_MULTIARCH_BUILDER: &str = "berth-multiarch-docker-container";

/// `docker buildx inspect B >/dev/null 2>&1 || docker buildx create --name B --driver=docker-container`.
pub fn remote_multiarch_builder() -> Cmd {
    docker().args(["buildx", "inspect", REMOTE_MULTIARCH_BUILDER]).raw(">/dev/null 2>&1").or(docker().args([
        "buildx",
        "create",
        "--name",
        REMOTE_MULTIARCH_BUILDER,
        "--driver=docker-container",
    ]))
}

/// On a remote builder, with the build context as a tar on stdin: build `image:version` and `image:latest`
/// and push both (buildx: in one step; classic: `docker build` then `docker push`).
pub fn remote_build_push(config: &Config, version: &str, no_cache: bool, how: &RemoteBuild) -> Cmd {
    match how {
        // Local registry mode: the image stays in the builder's engine, for berth to send to the hosts.
        RemoteBuild::Classic if config.registry.is_local() => classic_build(config, version, no_cache, "-"),
        RemoteBuild::Classic => classic_build(config, version, no_cache, "-").and(push_tags(config, version)),
        RemoteBuild::Buildx { platforms, builder, secrets_dir } => {
            buildx_build(config, version, platforms.clone(), builder.clone(), secrets_dir.as_deref(), no_cache, "-")
        }
    }
}

/// `docker image inspect --format '{{.Id}}' <image:version>`: which image a tag names (empty output and a
/// failure when the engine lacks it).
pub fn image_id(config: &Config, version: &str) -> Cmd {
    docker().args(["image", "inspect", "--format", "{{.Id}}"]).arg(names::image(config, version))
}

/// `docker save --output <file> <image:version>`: the image as a tar, on the deployer (local registry mode).
pub fn save(config: &Config, version: &str, file: &str) -> Cmd {
    docker().args(["save", "--output"]).arg(file).arg(names::image(config, version))
}

/// On a remote builder: `docker save <image:version>`, the tar on stdout.
pub fn save_to_stdout(config: &Config, version: &str) -> Cmd {
    docker().arg("save").arg(names::image(config, version))
}

/// On a host: `docker load --quiet`, the image tar on stdin (local registry mode, instead of a pull).
pub fn load() -> Cmd {
    docker().args(["load", "--quiet"])
}

/// `docker --version && docker buildx version`: the deployer can build.
pub fn ensure_docker_installed() -> Cmd {
    docker().arg("--version").and(docker().args(["buildx", "version"]))
}

/// `docker buildx inspect <builder>` (fails when it needs creating); `None` with the `docker` driver.
pub fn inspect_builder(config: &Config, local_arch: &str) -> Option<Cmd> {
    Some(docker().args(["buildx", "inspect"]).arg(builder_name(config, local_arch)?))
}

/// Creates the buildx builder (and the docker context of a remote one); `None` with the `docker` driver.
pub fn create(config: &Config, local_arch: &str) -> Option<Cmd> {
    let name = builder_name(config, local_arch)?;
    let driver = &config.builder.driver;
    let host_network =
        |cmd: Cmd| if config.registry.is_local() { cmd.args(["--driver-opt", "network=host"]) } else { cmd };
    let context_name = format!("{name}-context");
    let create_context = || {
        docker()
            .args(["context", "create"])
            .arg(&context_name)
            .arg("--description")
            .arg(format!("{name} host"))
            .arg("--docker")
            .arg(format!("host={}", config.builder.remote.as_deref().unwrap_or_default()))
    };
    Some(match kind(config, local_arch) {
        BuilderKind::Local => {
            host_network(docker().args(["buildx", "create", "--name"]).arg(&name).arg(format!("--driver={driver}")))
        }
        BuilderKind::Remote => create_context()
            .then(host_network(docker().args(["buildx", "create", "--name"]).arg(&name)).arg(&context_name)),
        BuilderKind::Hybrid => {
            let local_platform = platforms(&local_arches(config, local_arch)).unwrap_or_default();
            let remote_platform = platforms(&remote_arches(config, local_arch)).unwrap_or_default();
            host_network(
                docker()
                    .args(["buildx", "create", "--platform"])
                    .arg(local_platform)
                    .arg("--name")
                    .arg(&name)
                    .arg(format!("--driver={driver}")),
            )
            .and(create_context())
            .and(
                host_network(
                    docker()
                        .args(["buildx", "create", "--platform"])
                        .arg(remote_platform)
                        .args(["--append", "--name"])
                        .arg(&name),
                )
                .arg(&context_name),
            )
        }
        BuilderKind::Cloud => {
            let endpoint = driver.strip_prefix("cloud").unwrap_or(driver).trim();
            docker().args(["buildx", "create", "--driver", "cloud"]).arg(endpoint)
        }
    })
}

/// Removes the buildx builder (and the docker context of a remote one).
pub fn remove(config: &Config, local_arch: &str) -> Option<Cmd> {
    let name = builder_name(config, local_arch)?;
    let remove_builder = docker().args(["buildx", "rm"]).arg(&name);
    Some(match kind(config, local_arch) {
        BuilderKind::Remote | BuilderKind::Hybrid => {
            remove_builder.then(docker().args(["context", "rm"]).arg(format!("{name}-context")))
        }
        _ => remove_builder,
    })
}

/// `docker context ls && docker buildx ls` (`build details`).
pub fn info() -> Cmd {
    docker().args(["context", "ls"]).and(docker().args(["buildx", "ls"]))
}

/// On a host: `docker image rm --force <image>`, so the pull below fetches the registry's image.
pub fn remove_image_before_pull(config: &Config, version: &str) -> Cmd {
    docker().args(["image", "rm", "--force"]).arg(names::image(config, version))
}

/// On a host: `docker pull <image>`.
pub fn pull(config: &Config, version: &str) -> Cmd {
    docker().arg("pull").arg(names::image(config, version))
}

/// On a host: fails unless the image has the `service` label prune and Kamal rely on.
pub fn validate_image(config: &Config, version: &str) -> Cmd {
    let image = names::image(config, version);
    let complain =
        Cmd::new("echo").arg(format!("Image {image} is missing the 'service' label")).and(Cmd::raw_script("exit 1"));
    docker()
        .args(["inspect", "-f", "{{ .Config.Labels.service }}"])
        .arg(&image)
        .pipe(Cmd::new("grep").arg("-x").arg(&config.service))
        .or(Cmd::raw_script(format!("({})", complain.script())))
}

/// On a host: the first registry mirror it pulls through (hosts sharing one are pulled one after another).
pub fn first_mirror() -> Cmd {
    docker().args(["info", "--format", "{{index .RegistryConfig.Mirrors 0}}"])
}

/// A builder `args:` mapping read as text pairs (for engines that pass them elsewhere).
pub fn build_args(config: &Config) -> Vec<(String, String)> {
    let args: &Mapping = &config.builder.args;
    args.iter().filter(|(_, v)| !matches!(v, Value::Null)).map(|(k, v)| (scalar_text(k), scalar_text(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::load;

    fn builder_config(builder: &str, registry: &str) -> Config {
        load(&format!("service: app\nimage: dhh/app\n{registry}servers: [1.1.1.1]\nbuilder:\n{builder}"), None)
    }

    const REGISTRY: &str = "registry:\n  username: dhh\n  password: secret\n";
    const LOCAL_REGISTRY: &str = "registry:\n  server: localhost:5000\n";

    #[test]
    fn local_build_with_gha_cache() {
        let config = builder_config("  arch: amd64\n  cache:\n    type: gha\n", REGISTRY);
        assert_eq!(kind(&config, "amd64"), BuilderKind::Local);
        assert_eq!(
            push(&config, "123", "amd64", false, context(&config)).script(),
            "docker buildx build --output=type=registry --platform linux/amd64 --builder kamal-local-docker-container -t dhh/app:123 -t dhh/app:latest --cache-to type=gha --cache-from type=gha --label service=\"app\" --file Dockerfile . 2>&1"
        );
    }

    #[test]
    fn hybrid_and_remote_builders() {
        let config = builder_config("  arch: [amd64, arm64]\n  remote: ssh://app@127.0.0.1\n", REGISTRY);
        assert_eq!(kind(&config, "amd64"), BuilderKind::Hybrid);
        assert_eq!(builder_name(&config, "amd64").unwrap(), "kamal-hybrid-docker-container-ssh---app-127-0-0-1");
        let config =
            builder_config("  arch: [amd64, arm64]\n  remote: ssh://app@127.0.0.1\n  local: false\n", REGISTRY);
        assert_eq!(kind(&config, "amd64"), BuilderKind::Remote);
        assert_eq!(
            push(&config, "123", "amd64", false, ".").script(),
            "docker buildx build --output=type=registry --platform linux/amd64,linux/arm64 --builder kamal-remote-ssh---app-127-0-0-1 -t dhh/app:123 -t dhh/app:latest --label service=\"app\" --file Dockerfile . 2>&1"
        );
        let config = builder_config("  arch: arm64\n  remote: ssh://app@host\n", REGISTRY);
        assert_eq!(kind(&config, "amd64"), BuilderKind::Remote);
        assert_eq!(kind(&config, "arm64"), BuilderKind::Local);
    }

    #[test]
    fn ssh_builder_addresses() {
        let address = |text: &str| ssh_builder_address(text);
        assert_eq!(
            address("ssh://app@127.0.0.1"),
            Some(SshBuilderAddress { user: Some("app".into()), host: "127.0.0.1".into() })
        );
        assert_eq!(
            address("ssh://builder.example.com:2222/"),
            Some(SshBuilderAddress { user: None, host: "builder.example.com:2222".into() })
        );
        assert_eq!(
            address("ssh://docker@[2001:db8::1]:22"),
            Some(SshBuilderAddress { user: Some("docker".into()), host: "[2001:db8::1]:22".into() })
        );
        assert_eq!(address("tcp://10.0.0.1:2375"), None);
        assert_eq!(address("ssh://"), None);
    }

    #[test]
    fn remote_builds_read_the_context_from_stdin() {
        let config = builder_config(
            "  arch: amd64
  remote: ssh://app@host
  local: false
  secrets: [token]
  args:
    a: 1
",
            REGISTRY,
        );
        assert_eq!(
            remote_builder_probe().script(),
            "docker version --format '{{.Server.Arch}}' && { docker buildx version >/dev/null 2>&1 && echo buildx || echo classic; }"
        );
        assert_eq!(
            remote_build_push(&config, "123", false, &RemoteBuild::Classic).script(),
            "DOCKER_BUILDKIT=0 docker build --quiet -t dhh/app:123 -t dhh/app:latest --label service=\"app\" --build-arg a=\"1\" --secret id=\"token\" --file Dockerfile - && docker push dhh/app:123 && docker push dhh/app:latest"
        );
        let buildx = RemoteBuild::Buildx {
            platforms: Some(platforms(&["amd64".into(), "arm64".into()]).unwrap()),
            builder: Some(REMOTE_MULTIARCH_BUILDER.into()),
            secrets_dir: Some("/tmp/berth-build-secrets-ab12".into()),
        };
        assert_eq!(
            remote_build_push(&config, "123", true, &buildx).script(),
            "docker buildx build --output=type=registry --platform linux/amd64,linux/arm64 --builder berth-multiarch-docker-container -t dhh/app:123 -t dhh/app:latest --label service=\"app\" --build-arg a=\"1\" --secret id=token,src=/tmp/berth-build-secrets-ab12/token --file Dockerfile --no-cache - 2>&1"
        );
        assert_eq!(
            remote_multiarch_builder().script(),
            "docker buildx inspect berth-multiarch-docker-container >/dev/null 2>&1 || docker buildx create --name berth-multiarch-docker-container --driver=docker-container"
        );
    }

    #[test]
    fn local_registry_builds_stay_in_the_engine_and_travel_by_save_and_load() {
        let config = builder_config("  arch: amd64\n", LOCAL_REGISTRY);
        assert_eq!(
            push(&config, "123", "amd64", false, ".").script(),
            "docker buildx build --load --platform linux/amd64 --builder kamal-local-registry-docker-container -t localhost:5000/dhh/app:123 -t localhost:5000/dhh/app:latest --label service=\"app\" --file Dockerfile . 2>&1"
        );
        assert_eq!(
            image_id(&config, "123").script(),
            "docker image inspect --format '{{.Id}}' localhost:5000/dhh/app:123"
        );
        assert_eq!(
            save(&config, "123", "/tmp/berth-image-1.tar").script(),
            "docker save --output /tmp/berth-image-1.tar localhost:5000/dhh/app:123"
        );
        assert_eq!(super::load().script(), "docker load --quiet");
        assert_eq!(save_to_stdout(&config, "123").script(), "docker save localhost:5000/dhh/app:123");
        let remote = builder_config("  arch: amd64\n  remote: ssh://app@host\n  local: false\n", LOCAL_REGISTRY);
        assert_eq!(
            remote_build_push(&remote, "123", false, &RemoteBuild::Classic).script(),
            "DOCKER_BUILDKIT=0 docker build --quiet -t localhost:5000/dhh/app:123 -t localhost:5000/dhh/app:latest --label service=\"app\" --file Dockerfile -"
        );
    }

    #[test]
    fn cloud_and_docker_drivers() {
        let config = builder_config("  arch: amd64\n  driver: cloud docker-org-name/builder-name\n", REGISTRY);
        assert_eq!(kind(&config, "amd64"), BuilderKind::Cloud);
        assert_eq!(builder_name(&config, "amd64").unwrap(), "cloud-docker-org-name-builder-name");
        assert_eq!(
            create(&config, "amd64").unwrap().script(),
            "docker buildx create --driver cloud docker-org-name/builder-name"
        );
        let config = builder_config("  arch: amd64\n  driver: docker\n", REGISTRY);
        assert_eq!(builder_name(&config, "amd64"), None);
        assert!(create(&config, "amd64").is_none());
        assert!(!push(&config, "123", "amd64", false, ".").script().contains("--builder"));
    }

    #[test]
    fn build_options() {
        let config = builder_config(
            "  arch: amd64\n  args:\n    a: 1\n    b: 2\n  secrets: [token_a, token_b]\n  dockerfile: Dockerfile.xyz\n  target: prod\n  ssh: default=$SSH_AUTH_SOCK\n  provenance: mode=max\n  sbom: false\n",
            REGISTRY,
        );
        assert_eq!(
            with_build_options(Cmd::new("x"), &config).script(),
            "x --label service=\"app\" --build-arg a=\"1\" --build-arg b=\"2\" --secret id=\"token_a\" --secret id=\"token_b\" --file Dockerfile.xyz --target prod --ssh \"default=${SSH_AUTH_SOCK}\" --provenance mode=max --sbom false"
        );
        assert_eq!(build_secret_names(&config), ["token_a", "token_b"]);
        assert_eq!(build_args(&config), [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
    }

    #[test]
    fn registry_cache_and_no_cache() {
        let config = builder_config(
            "  arch: amd64\n  cache:\n    type: registry\n    options: mode=max\n",
            "registry:\n  server: ghcr.io\n  username: dhh\n  password: secret\n",
        );
        assert_eq!(
            cache_options(&config),
            Some((
                "type=registry,mode=max,ref=ghcr.io/dhh/app-build-cache".into(),
                "type=registry,ref=ghcr.io/dhh/app-build-cache".into()
            ))
        );
        assert!(push(&config, "123", "amd64", true, "..").script().ends_with("--file Dockerfile --no-cache .. 2>&1"));
    }

    #[test]
    fn git_archive_context() {
        let config = builder_config("  arch: amd64\n", REGISTRY);
        assert_eq!(
            push_from_git_archive(&config, "123", "amd64", false, "/src/app", "HEAD").script(),
            "git -C /src/app archive --format=tar HEAD | docker buildx build --output=type=registry --platform linux/amd64 --builder kamal-local-docker-container -t dhh/app:123 -t dhh/app:latest --label service=\"app\" --file Dockerfile - 2>&1"
        );
    }

    #[test]
    fn create_builders_with_a_local_registry() {
        let config = builder_config("  arch: amd64\n", LOCAL_REGISTRY);
        assert_eq!(
            create(&config, "amd64").unwrap().script(),
            "docker buildx create --name kamal-local-registry-docker-container --driver=docker-container --driver-opt network=host"
        );
        let config = builder_config("  arch: arm64\n  remote: ssh://app@1.1.1.5\n", LOCAL_REGISTRY);
        assert_eq!(
            create(&config, "amd64").unwrap().script(),
            "docker context create kamal-remote-ssh---app-1-1-1-5-local-registry-context --description 'kamal-remote-ssh---app-1-1-1-5-local-registry host' --docker host=ssh://app@1.1.1.5 ; docker buildx create --name kamal-remote-ssh---app-1-1-1-5-local-registry --driver-opt network=host kamal-remote-ssh---app-1-1-1-5-local-registry-context"
        );
        let config = builder_config("  arch: [amd64, arm64]\n  remote: ssh://app@1.1.1.5\n", LOCAL_REGISTRY);
        assert_eq!(
            create(&config, "amd64").unwrap().script(),
            "docker buildx create --platform linux/amd64 --name kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry --driver=docker-container --driver-opt network=host && docker context create kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry-context --description 'kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry host' --docker host=ssh://app@1.1.1.5 && docker buildx create --platform linux/arm64 --append --name kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry --driver-opt network=host kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry-context"
        );
        assert_eq!(
            remove(&config, "amd64").unwrap().script(),
            "docker buildx rm kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry ; docker context rm kamal-hybrid-docker-container-ssh---app-1-1-1-5-local-registry-context"
        );
    }

    #[test]
    fn host_side_commands() {
        let config = builder_config("  arch: amd64\n", REGISTRY);
        assert_eq!(pull(&config, "123").script(), "docker pull dhh/app:123");
        assert_eq!(remove_image_before_pull(&config, "123").script(), "docker image rm --force dhh/app:123");
        assert_eq!(
            validate_image(&config, "123").script(),
            "docker inspect -f '{{ .Config.Labels.service }}' dhh/app:123 | grep -x app || (echo 'Image dhh/app:123 is missing the '\\''service'\\'' label' && exit 1)"
        );
        assert_eq!(first_mirror().script(), "docker info --format '{{index .RegistryConfig.Mirrors 0}}'");
        assert_eq!(ensure_docker_installed().script(), "docker --version && docker buildx version");
        assert_eq!(info().script(), "docker context ls && docker buildx ls");
    }

    /// Kamal's check at pull: the image's `service` label must be the config's service, else its message.
    #[test]
    fn validate_image_refuses_an_image_without_the_service_label() {
        use crate::commands::test_config::run_with_fake_docker_status;
        let config = builder_config("  arch: amd64\n", REGISTRY);
        let validate = |label: &str| {
            run_with_fake_docker_status(validate_image(&config, "123").script(), &format!("echo '{label}'"))
        };
        assert_eq!(validate("app"), ("app\n".to_string(), 0));
        for label in ["", "other"] {
            assert_eq!(validate(label), ("Image dhh/app:123 is missing the 'service' label\n".to_string(), 1));
        }
    }
}
