//! Pure command builders: every `docker …`/shell command berth runs on a host, as `Cmd` values, named and
//! labelled exactly as Kamal names them so a host can pass between Kamal and berth.
//!
//! Nothing here does I/O: each function maps (config, role, host, version, …) to a [`Cmd`] (or plain data such
//! as a path or an env-file's text), and the engine runs it. Modules follow Kamal's `lib/kamal/commands/*.rb`:
//! - [`names`]: container names, labels' values, on-host paths (`.kamal/…`), image tags.
//! - [`env_file`]: the docker env-file text holding a role's or accessory's secrets.
//! - [`app`]: app containers (run, stop, versions, logs, exec, assets, error pages).
//! - [`proxy`]: `kamal-proxy deploy|remove|stop|resume` and the `kamal-proxy` container itself.
//! - [`accessory`], [`lock`], [`prune`], [`registry`], [`auditor`], [`server`].
//! - [`builder`]: local `docker buildx build` commands, run on the deployer.
//! - [`hook`]: the `KAMAL_*` environment of a hook.
//!
//! Where Kamal escapes a value with `escape_shell_value` (double quotes, `${VAR}` left to the host's shell), berth
//! uses [`quote_keeping_braced_vars`], so the script text matches Kamal's for ordinary values; plain words Kamal
//! writes unescaped are quoted by [`Cmd::arg`] only when they need it.

pub mod accessory;
pub mod app;
pub mod auditor;
pub mod builder;
pub mod env_file;
pub mod hook;
pub mod lock;
pub mod names;
pub mod proxy;
pub mod prune;
pub mod registry;
pub mod server;

#[cfg(test)]
mod test_config;

use indexmap::IndexMap;
use yaml_serde::{Mapping, Value};

use crate::command::{Cmd, quote, quote_keeping_braced_vars};
use crate::config::model::Logging;
use crate::config::schema::{is_present, scalar_text};

/// `docker`: where almost every host command starts.
fn docker() -> Cmd {
    Cmd::new("docker")
}

/// One shell word `key="value"` as Kamal's `argumentize` writes it (`--env K="v"`, `--label k="v"`). Both halves
/// are quoted by `crate::command`, so the word is safe to append with [`Cmd::raw`].
fn key_value_word(key: &str, value: &str) -> String {
    format!("{}={}", quote(key), quote_keeping_braced_vars(value))
}

/// Kamal's `argumentize(flag, hash)`: `flag key="value"` per entry; a blank value gives the bare key (so
/// `--label destination` without a destination, and `--env K` passing the host's `K`, as Kamal does).
fn with_key_values<'a>(mut cmd: Cmd, flag: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Cmd {
    for (key, value) in pairs {
        cmd = cmd.arg(flag);
        cmd = if value.trim().is_empty() { cmd.arg(key) } else { cmd.raw(key_value_word(key, value)) };
    }
    cmd
}

/// `cmd` followed by a user's command (`app exec`, `accessory exec`): Kamal joins its words with spaces and
/// leaves them to the host's shell, so `exec 'bin/rails console'` runs `bin/rails` with `console`, and pipes or
/// `$VARS` in it are the shell's.
fn with_user_command(cmd: Cmd, command: &[String]) -> Cmd {
    if command.is_empty() { cmd } else { cmd.raw(command.join(" ")) }
}

/// Kamal's `optionize(hash)` for `docker run` options: `--key "value"`, `--key` for `true`, one pair per element
/// of a list; null values are dropped.
fn with_options(mut cmd: Cmd, options: &Mapping) -> Cmd {
    for (key, value) in options {
        let key = scalar_text(key);
        let values: Vec<&Value> = match value {
            Value::Sequence(items) => items.iter().collect(),
            other => vec![other],
        };
        for value in values {
            match value {
                Value::Null => {}
                Value::Bool(true) => cmd = cmd.arg(format!("--{key}")),
                other => cmd = cmd.arg(format!("--{key}")).arg_expanding_braced_vars(scalar_text(other)),
            }
        }
    }
    cmd
}

/// Kamal's `optionize(hash, with: "=")` for one option: `--key="value"`, or `--key` for `true`.
fn with_equals_option(cmd: Cmd, key: &str, value: &OptionValue) -> Cmd {
    match value {
        OptionValue::Flag => cmd.arg(format!("--{key}")),
        OptionValue::Text(text) => cmd.raw(format!("--{}={}", key, quote_keeping_braced_vars(text))),
    }
}

/// A value of a `--key=value` option: a bare flag or text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OptionValue {
    Flag,
    Text(String),
}

impl OptionValue {
    /// A YAML value as Kamal's `optionize` sees it: `true` is a bare flag, anything else its text.
    fn from_yaml(value: &Value) -> Option<OptionValue> {
        match value {
            Value::Null => None,
            Value::Bool(true) => Some(OptionValue::Flag),
            other => Some(OptionValue::Text(scalar_text(other))),
        }
    }
}

/// `--log-driver "d" --log-opt k="v"…`, with Kamal's default `--log-opt max-size="10m"` when nothing is set.
fn with_logging(cmd: Cmd, logging: &Logging) -> Cmd {
    let mut cmd = cmd;
    if let Some(driver) = &logging.driver {
        cmd = cmd.arg("--log-driver").arg_expanding_braced_vars(driver);
    }
    if logging.driver.is_none() && logging.options.is_empty() {
        return cmd.arg("--log-opt").raw(key_value_word("max-size", "10m"));
    }
    with_key_values(cmd, "--log-opt", logging.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Kamal's `seconds_duration`: `30` -> `30s`.
fn seconds(value: impl std::fmt::Display) -> String {
    format!("{value}s")
}

/// The `restart` option of a role's or accessory's `options`, which Kamal lifts out as the restart policy.
fn restart_policy(options: &Mapping) -> String {
    options.get("restart").filter(|v| is_present(v)).map(scalar_text).unwrap_or_else(|| "unless-stopped".to_string())
}

/// `options` without `restart` (that one becomes `--restart`).
fn options_without_restart(options: &Mapping) -> Mapping {
    options.iter().filter(|(k, _)| scalar_text(k) != "restart").map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A container command written as shell text in the config (`cmd: bin/jobs --queue x`), split into words the
/// way the host's shell would split it; each word is then quoted, so the text can't run anything else.
fn command_words(text: &str) -> Vec<String> {
    shell_words::split(text).unwrap_or_else(|_| text.split_whitespace().map(str::to_string).collect())
}

/// `--volume host:container[:options]` where a relative host path is anchored at the login directory as
/// `$PWD/…` (Kamal's `Volume#docker_args`); `$PWD` is left for the host's shell to expand.
fn with_volume(cmd: Cmd, host_path: &str, container_path: &str, options: Option<&str>) -> Cmd {
    let mut spec = format!("{host_path}:{container_path}");
    if let Some(options) = options.filter(|o| !o.is_empty()) {
        spec.push(':');
        spec.push_str(options);
    }
    if host_path.starts_with('/') {
        cmd.arg("--volume").arg(spec)
    } else {
        cmd.arg("--volume").raw(format!("$PWD/{}", quote(&spec)))
    }
}

/// Filters `label=k=v` for `docker ps`/`container ls`/`prune`, as `--filter` pairs.
fn with_filters(mut cmd: Cmd, filters: &[String]) -> Cmd {
    for filter in filters {
        cmd = cmd.arg("--filter").arg(filter);
    }
    cmd
}

/// Clear env (`IndexMap` of name -> value) as `--env K="v"` words, `${VAR}` expanded on the host.
fn with_clear_env(cmd: Cmd, clear: &IndexMap<String, String>) -> Cmd {
    with_key_values(cmd, "--env", clear.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{accessory, app, auditor, builder, lock, proxy, prune, server, test_config};

    #[test]
    fn key_values_quote_like_kamal_and_blank_values_give_the_bare_key() {
        let cmd = with_key_values(Cmd::new("x"), "--label", [("service", "app"), ("destination", "")]);
        assert_eq!(cmd.script(), "x --label service=\"app\" --label destination");
    }

    #[test]
    fn options_become_flags_pairs_and_repeats() {
        let options: Mapping =
            yaml_serde::from_str("mount: somewhere\ncap-add: true\nadd-host: [a, b]\nnone: ~").unwrap();
        let cmd = with_options(Cmd::new("x"), &options);
        assert_eq!(cmd.script(), "x --mount \"somewhere\" --cap-add --add-host \"a\" --add-host \"b\"");
    }

    #[test]
    fn relative_volumes_are_anchored_at_the_login_directory() {
        let cmd = with_volume(Cmd::new("x"), "data", "/data", Some("ro"));
        assert_eq!(cmd.script(), "x --volume $PWD/data:/data:ro");
        let cmd = with_volume(Cmd::new("x"), "/abs", "/data", None);
        assert_eq!(cmd.script(), "x --volume /abs:/data");
    }

    #[test]
    fn logging_defaults_to_ten_megabytes() {
        assert_eq!(with_logging(Cmd::new("x"), &Logging::default()).script(), "x --log-opt max-size=\"10m\"");
        let mut logging = Logging { driver: Some("local".into()), ..Logging::default() };
        logging.options.insert("max-file".into(), "3".into());
        assert_eq!(with_logging(Cmd::new("x"), &logging).script(), "x --log-driver \"local\" --log-opt max-file=\"3\"");
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(command_words("bin/jobs --queue 'a b'"), ["bin/jobs", "--queue", "a b"]);
    }

    /// Every builder's script is valid shell, for a config with destinations, tags, assets and odd values.
    #[test]
    fn every_script_parses_as_shell() {
        let config = test_config::config_with_destination(
            "servers:\n  web:\n    hosts:\n      - 1.1.1.1: tag1\n    cmd: bin/web --name 'a b'\n  jobs:\n    hosts: [1.1.1.2]\n    options:\n      add-host: [\"x:1.2.3.4\"]\nasset_path: /public/assets\nerror_pages_path: public\nenv:\n  clear:\n    WEIRD: \"it's $HOME `id` \\\" ${HOST_TOKEN}\"\n  tags:\n    tag1: {T: x}\nproxy:\n  host: a.example.com\n  path_prefix: /api\naccessories:\n  db:\n    image: mysql:8\n    host: 1.1.1.5\n    port: 3306\n    directories: [data:/var/lib/mysql]\n    files: [config/my.cnf:/etc/my.cnf]\n",
            "staging",
        );
        let web = config.role("web").unwrap();
        let jobs = config.role("jobs").unwrap();
        let db = &config.accessories[0];
        let log_options = app::LogOptions {
            since: Some("5m".into()),
            lines: Some(10),
            grep: Some("it's".into()),
            grep_options: Some("-C 2".into()),
            timestamps: true,
            follow: false,
            container_id: None,
        };
        let no_env = IndexMap::new();
        let command = vec!["echo".to_string(), "a b".to_string()];
        let proxy_run = proxy::ProxyRun::default();
        let lock_details = lock::LockDetails {
            locked_by: "Me".into(),
            locked_at: "2026-11-26T00:00:00Z".into(),
            version: "999".into(),
            message: "it's mine".into(),
        };
        let mut scripts = vec![
            app::run(&config, web, "1.1.1.1", "999", "0123456789ab"),
            app::run(&config, jobs, "1.1.1.2", "999", "0123456789ab"),
            app::stop(&config, web, None),
            app::stop(&config, jobs, Some("999")),
            app::current_running_version(&config, web),
            app::list_versions(&config, web, &["running"]),
            app::status(&config, web, "999"),
            app::logs(&config, web, &log_options),
            app::execute_in_new_container(
                &config,
                web,
                "1.1.1.1",
                "999",
                &command,
                &no_env,
                app::ExecMode::Attached,
                "abc123",
            ),
            app::execute_in_existing_container(&config, web, "999", &command, &no_env, true),
            app::extract_assets(&config, web, "999", "/public/assets"),
            app::sync_asset_volumes(&config, web, "999", Some("998")),
            app::clean_up_assets(&config, web, "999"),
            app::clean_up_error_pages(&config, "999"),
            proxy::deploy(
                &config,
                "app-web-staging",
                web.proxy.as_ref().unwrap(),
                "abc",
                "999",
                proxy::TlsOwner::Role("web"),
            ),
            proxy::stop("app-web-staging", Some(5), Some("Back at 5 o'clock")),
            proxy::start_or_run(proxy::run(&proxy_run, &proxy_run.image())),
            proxy::start_or_run(proxy::run_from_legacy_boot_config()),
            proxy::ensure_network(),
            proxy::version(),
            accessory::run(&config, db, "1.1.1.5"),
            accessory::make_directories(db).unwrap(),
            accessory::logs(db, &log_options),
            lock::acquire(&config, &lock_details),
            lock::status(&config),
            prune::tagged_images(&config),
            prune::app_containers(&config, 5),
            auditor::record(&config, "2026-11-26T00:00:00Z", "me", &["web"], "it's \"done\" $now"),
            server::install_docker(),
            server::superuser(),
            server::add_user_to_docker_group(),
            builder::push(&config, "999", "amd64", true, "."),
            builder::validate_image(&config, "999"),
        ];
        scripts.extend(builder::create(&config, "amd64"));
        for cmd in scripts {
            let status = std::process::Command::new("sh").arg("-n").arg("-c").arg(cmd.script()).status().unwrap();
            assert!(status.success(), "not valid shell: {cmd}");
        }
    }
}
