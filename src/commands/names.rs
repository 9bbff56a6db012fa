//! Kamal's names: container names and prefixes, image tags, and every on-host path under `.kamal/`.
//!
//! Paths are relative to the SSH user's login directory, where commands run (Kamal's `run_directory` is always
//! `.kamal`, whatever the config says).

use crate::config::Config;

/// Kamal's run directory on hosts (relative to the login directory).
pub const RUN_DIRECTORY: &str = ".kamal";
/// The Docker network app, proxy and (by default) accessory containers share.
pub const NETWORK: &str = "kamal";
/// The proxy container, shared by every app on a host.
pub const PROXY_CONTAINER: &str = "kamal-proxy";
/// The proxy's named volume holding its routes, so they survive a proxy restart.
pub const PROXY_CONFIG_VOLUME: &str = "kamal-proxy-config";
/// Where the proxy container sees `.kamal/proxy/apps-config`.
pub const PROXY_APPS_CONTAINER_DIRECTORY: &str = "/home/kamal-proxy/.apps-config";

/// `service[-destination]`: the app directory, lock and audit-log name.
pub fn service_and_destination(config: &Config) -> String {
    config.service_and_destination()
}

/// `<service>-<role>[-<dest>]`: the container-name prefix, also the kamal-proxy service name.
pub fn container_prefix(config: &Config, role: &str) -> String {
    match &config.destination {
        Some(dest) => format!("{}-{role}-{dest}", config.service),
        None => format!("{}-{role}", config.service),
    }
}

/// `<prefix>-<version>`.
pub fn container_name(config: &Config, role: &str, version: &str) -> String {
    format!("{}-{version}", container_prefix(config, role))
}

/// `<prefix>-<version>_replaced_<hex>`: where a clashing container goes before a same-version boot (Kamal uses
/// 16 random hex digits).
pub fn replaced_container_name(config: &Config, role: &str, version: &str, random_hex: &str) -> String {
    format!("{}_replaced_{random_hex}", container_name(config, role, version))
}

/// `<prefix>-exec-<version>-<hex6>`: a one-off `app exec` container.
pub fn exec_container_name(config: &Config, role: &str, version: &str, random_hex: &str) -> String {
    format!("{}-exec-{version}-{random_hex}", container_prefix(config, role))
}

/// `<prefix>-assets`: the transient container assets are copied out of.
pub fn assets_container_name(config: &Config, role: &str) -> String {
    format!("{}-assets", container_prefix(config, role))
}

/// `<host, at most 51 characters, without trailing dots>-<hex>`: the container's hostname, at most 64 characters
/// with Kamal's 12 hex digits.
pub fn container_hostname(host: &str, random_hex: &str) -> String {
    let short: String = host.chars().take(51).collect();
    format!("{}-{random_hex}", short.trim_end_matches('.'))
}

/// `[registry/]image` (Kamal's `repository`).
pub fn repository(config: &Config) -> String {
    config.repository()
}

/// `repository:version`.
pub fn image(config: &Config, version: &str) -> String {
    format!("{}:{version}", config.repository())
}

/// `latest` or `latest-<dest>`.
pub fn latest_tag(config: &Config) -> String {
    match &config.destination {
        Some(dest) => format!("latest-{dest}"),
        None => "latest".to_string(),
    }
}

/// `repository:latest[-dest]`.
pub fn latest_image(config: &Config) -> String {
    format!("{}:{}", config.repository(), latest_tag(config))
}

/// Kamal's `abbreviated_version`: 7 characters, unless the version has a `_` (`<sha>_uncommitted_<hex>`).
pub fn abbreviated_version(version: &str) -> String {
    if version.contains('_') { version.to_string() } else { version.chars().take(7).collect() }
}

/// `.kamal/apps`: one directory per app on the host (`proxy remove` counts them).
pub fn apps_directory() -> String {
    format!("{RUN_DIRECTORY}/apps")
}

/// `.kamal/apps/<svc[-dest]>`.
pub fn app_directory(config: &Config) -> String {
    format!("{}/{}", apps_directory(), config.service_and_destination())
}

/// `.kamal/apps/<svc[-dest]>/env`.
pub fn env_directory(config: &Config) -> String {
    format!("{}/env", app_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/env/roles`.
pub fn role_env_directory(config: &Config) -> String {
    format!("{}/roles", env_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/env/roles/<role>.env`: the role's secrets, mode 0600.
pub fn role_env_file(config: &Config, role: &str) -> String {
    format!("{}/{role}.env", role_env_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/env/accessories`.
pub fn accessory_env_directory(config: &Config) -> String {
    format!("{}/accessories", env_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/env/accessories/<name>.env`.
pub fn accessory_env_file(config: &Config, accessory: &str) -> String {
    format!("{}/{accessory}.env", accessory_env_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/assets`.
pub fn assets_directory(config: &Config) -> String {
    format!("{}/assets", app_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/assets/extracted/<role>-<version>`.
pub fn asset_extracted_directory(config: &Config, role: &str, version: &str) -> String {
    format!("{}/extracted/{role}-{version}", assets_directory(config))
}

/// `.kamal/apps/<svc[-dest]>/assets/volumes/<role>-<version>`: mounted into that version's container.
pub fn asset_volume_directory(config: &Config, role: &str, version: &str) -> String {
    format!("{}/volumes/{role}-{version}", assets_directory(config))
}

/// `.kamal/lock-<svc[-dest]>`: the deploy lock (a directory, so `mkdir` takes it atomically).
pub fn lock_directory(config: &Config) -> String {
    format!("{RUN_DIRECTORY}/lock-{}", config.service_and_destination())
}

/// `.kamal/lock-<svc[-dest]>/details`: who holds the lock, base64-encoded.
pub fn lock_details_file(config: &Config) -> String {
    format!("{}/details", lock_directory(config))
}

/// `.kamal/<svc[-dest]>-audit.log`.
pub fn audit_log_file(config: &Config) -> String {
    format!("{RUN_DIRECTORY}/{}-audit.log", config.service_and_destination())
}

/// `.kamal/proxy`: the proxy's directory (and its legacy boot-config files).
pub fn proxy_directory() -> String {
    format!("{RUN_DIRECTORY}/proxy")
}

/// `.kamal/proxy/apps-config`, mounted into the proxy container.
pub fn proxy_apps_config_directory() -> String {
    format!("{}/apps-config", proxy_directory())
}

/// `.kamal/proxy/apps-config/<svc[-dest]>`.
pub fn proxy_app_directory(config: &Config) -> String {
    format!("{}/{}", proxy_apps_config_directory(), config.service_and_destination())
}

/// `/home/kamal-proxy/.apps-config/<svc[-dest]>`: the same directory as the proxy container sees it.
pub fn proxy_app_container_directory(config: &Config) -> String {
    format!("{PROXY_APPS_CONTAINER_DIRECTORY}/{}", config.service_and_destination())
}

/// `.kamal/proxy/apps-config/<svc[-dest]>/error_pages` (one subdirectory per version).
pub fn error_pages_directory(config: &Config) -> String {
    format!("{}/error_pages", proxy_app_directory(config))
}

/// The error-pages directory of `version` as the proxy container sees it (`--error-pages=`).
pub fn error_pages_container_directory(config: &Config, version: &str) -> String {
    format!("{}/error_pages/{version}", proxy_app_container_directory(config))
}

/// `.kamal/proxy/apps-config/<svc[-dest]>/tls/<role>`: a role's custom certificate and key.
pub fn tls_directory(config: &Config, role: &str) -> String {
    format!("{}/tls/{role}", proxy_app_directory(config))
}

/// The TLS directory of `role` as the proxy container sees it.
pub fn tls_container_directory(config: &Config, role: &str) -> String {
    format!("{}/tls/{role}", proxy_app_container_directory(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_config::{config, config_with_destination};

    #[test]
    fn names_without_destination() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(container_prefix(&config, "web"), "app-web");
        assert_eq!(container_name(&config, "web", "999"), "app-web-999");
        assert_eq!(replaced_container_name(&config, "web", "999", "ab12"), "app-web-999_replaced_ab12");
        assert_eq!(exec_container_name(&config, "web", "999", "a1b2c3"), "app-web-exec-999-a1b2c3");
        assert_eq!(service_and_destination(&config), "app");
        assert_eq!(latest_tag(&config), "latest");
        assert_eq!(latest_image(&config), "dhh/app:latest");
        assert_eq!(image(&config, "999"), "dhh/app:999");
    }

    #[test]
    fn names_with_destination() {
        let config = config_with_destination("servers: [1.1.1.1]\n", "staging");
        assert_eq!(container_prefix(&config, "web"), "app-web-staging");
        assert_eq!(container_name(&config, "web", "999"), "app-web-staging-999");
        assert_eq!(service_and_destination(&config), "app-staging");
        assert_eq!(latest_image(&config), "dhh/app:latest-staging");
        assert_eq!(lock_directory(&config), ".kamal/lock-app-staging");
        assert_eq!(audit_log_file(&config), ".kamal/app-staging-audit.log");
        assert_eq!(role_env_file(&config, "web"), ".kamal/apps/app-staging/env/roles/web.env");
    }

    #[test]
    fn paths_follow_kamal() {
        let config = config("servers: [1.1.1.1]\n");
        assert_eq!(app_directory(&config), ".kamal/apps/app");
        assert_eq!(role_env_file(&config, "web"), ".kamal/apps/app/env/roles/web.env");
        assert_eq!(accessory_env_file(&config, "mysql"), ".kamal/apps/app/env/accessories/mysql.env");
        assert_eq!(asset_extracted_directory(&config, "web", "999"), ".kamal/apps/app/assets/extracted/web-999");
        assert_eq!(asset_volume_directory(&config, "web", "999"), ".kamal/apps/app/assets/volumes/web-999");
        assert_eq!(lock_details_file(&config), ".kamal/lock-app/details");
        assert_eq!(audit_log_file(&config), ".kamal/app-audit.log");
        assert_eq!(proxy_apps_config_directory(), ".kamal/proxy/apps-config");
        assert_eq!(error_pages_directory(&config), ".kamal/proxy/apps-config/app/error_pages");
        assert_eq!(
            error_pages_container_directory(&config, "999"),
            "/home/kamal-proxy/.apps-config/app/error_pages/999"
        );
        assert_eq!(tls_directory(&config, "web"), ".kamal/proxy/apps-config/app/tls/web");
        assert_eq!(tls_container_directory(&config, "web"), "/home/kamal-proxy/.apps-config/app/tls/web");
    }

    #[test]
    fn hostnames_fit_in_64_characters() {
        assert_eq!(container_hostname("1.1.1.1", "0123456789ab"), "1.1.1.1-0123456789ab");
        let long = format!("{}.example.com", "a".repeat(60));
        let hostname = container_hostname(&long, "0123456789ab");
        assert_eq!(hostname.len(), 64);
        assert_eq!(container_hostname(&format!("{}.b", "a".repeat(50)), "x"), format!("{}-x", "a".repeat(50)));
    }

    #[test]
    fn versions_abbreviate_unless_uncommitted() {
        assert_eq!(abbreviated_version("75bf6fa40b975cbd8aec05abf7164e0982f185ac"), "75bf6fa");
        assert_eq!(abbreviated_version("75bf6fa_uncommitted_0123"), "75bf6fa_uncommitted_0123");
        assert_eq!(abbreviated_version("123"), "123");
    }
}
