//! Booting an app version on the selected hosts with a fleet-wide, health-gated cutover.
//!
//! Kamal switches each host as soon as its new container is healthy and stops the old one right away, so a
//! failure on a later host leaves a fleet of mixed versions. berth boots every (host, role) first — the proxy
//! switches a host only once the new container passes its health check — and stops old containers only after
//! **all** hosts passed. If any host fails (or the user cancels), every host that already switched is switched
//! back to the container it ran before, which is still running, and the new containers are stopped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::inventory::Inventory;
use super::output::{DeployStage, ProgressState};
use super::remote::on_hosts;
use super::{Engine, EngineError};
use crate::command::Cmd;
use crate::commands::auditor::Message;
use crate::commands::proxy::TlsOwner;
use crate::commands::{self, app, names};
use crate::config::Role;

/// A new container booted on one host for one role, and what it replaced.
#[derive(Clone, Debug)]
pub struct Booted {
    pub host: String,
    pub role: String,
    pub proxied: bool,
    /// Short id of the new container (the proxy's target).
    pub container_id: String,
    /// The version running before (None on a first deploy).
    pub previous_version: Option<String>,
    /// Short id of the previous container, if it was running.
    pub previous_id: Option<String>,
    /// Containers of the role running before, stopped once every host passed.
    pub stop_ids: Vec<String>,
    /// Whether the proxy on that host now routes to the new container.
    pub switched: bool,
}

/// What booting does besides booting.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootOptions {
    /// Make sure each host runs the proxy (deploy); `setup` and `proxy boot` do it separately.
    pub ensure_proxy: bool,
    /// Prune old containers and images on each host afterwards (deploy, setup).
    pub prune: bool,
}

impl Engine {
    /// `app boot`: boots `version` on every selected app host, all-or-nothing (see the module doc).
    pub async fn boot_app(&self, version: &str, options: BootOptions) -> Result<(), EngineError> {
        let config = self.config.clone();
        let hosts = self.selection.app_hosts(&config);
        let secrets = self.secrets().await?;
        let proxy_hosts = if options.ensure_proxy { self.proxy_hosts() } else { Vec::new() };

        // Every host prepared before any container starts: its proxy, its env files (so no container starts
        // before every host has its secrets), error pages, certificates, and what it runs now.
        let inventories = self
            .stage("Prepare hosts", hosts.len(), async {
                on_hosts(&hosts, |host| {
                    let secrets = secrets.clone();
                    let proxied = proxy_hosts.contains(&host);
                    async move {
                        if options.ensure_proxy {
                            self.ensure_proxy_on(&host, proxied).await?;
                        }
                        let started = Instant::now();
                        for role in self.selection.roles_on(&self.config, &host) {
                            let lookup = commands::env_file::lookup_in(&secrets);
                            let text = commands::env_file::role_env_file(&self.config, role, &host, lookup)
                                .map_err(|missing| EngineError::Refused(missing.to_string()))?;
                            let path = names::role_env_file(&self.config, &role.name);
                            self.remote().write_file(&host, &path, text.as_bytes(), 0o600).await?;
                            self.upload_custom_certificate(&host, role, &secrets).await?;
                        }
                        self.upload_error_pages(&host, version).await?;
                        let listing = self.remote().run(&host, &app::inventory(&self.config)).await?;
                        self.remote().report(&host, "Wrote env files", started, true);
                        Ok((host, Inventory::parse(&listing.stdout)))
                    }
                })
                .await
            })
            .await?;
        let inventories: HashMap<String, Inventory> = inventories.into_iter().collect();

        let mut booted: Vec<Booted> = Vec::new();
        let groups = boot_groups(&config, &hosts);
        let group_count = groups.len();
        for (index, group) in groups.into_iter().enumerate() {
            let result = self.boot_group(&group, version, &inventories, &mut booted).await;
            if let Err(err) = result {
                self.roll_back(&booted).await;
                return Err(err);
            }
            if index + 1 < group_count
                && let Some(wait) = config.boot.wait.filter(|seconds| *seconds > 0)
            {
                self.info(format!("Waiting {wait}s before booting the next group (boot.wait)"));
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }

        // Every host passed: now the old containers can go, `latest` moves, and old ones are pruned.
        self.stage("Finish", hosts.len(), async {
            on_hosts(&hosts, |host| {
                let booted = &booted;
                let inventories = &inventories;
                async move {
                    let started = Instant::now();
                    self.progress(DeployStage::Cutover, Some(&host), ProgressState::Started);
                    let image = names::image(&self.config, version);
                    let mut finish = self
                        .audit_record(&[], Message::TaggingLatest { image: &image })
                        .and(app::tag_latest_image(&self.config, version));
                    let mut stopped = Vec::new();
                    for boot in booted.iter().filter(|boot| boot.host == host && !boot.stop_ids.is_empty()) {
                        let role = self.config.role(&boot.role).expect("booted roles exist");
                        let timeout = app::stop_timeout(&self.config, role);
                        // `;`: Kamal's `stop_old_version` tolerates the stop failing (e.g. the container is gone).
                        finish = app::stop_containers(&boot.stop_ids, timeout).then(finish);
                        stopped.extend(
                            boot.previous_version.iter().map(|v| names::container_name(&self.config, &role.name, v)),
                        );
                    }
                    for role in self.selection.roles_on(&self.config, &host) {
                        if app::asset_path(role, &self.config).is_some() && role.runs_proxy() {
                            finish = finish.and(app::clean_up_assets(&self.config, role, version));
                        }
                    }
                    if self.config.error_pages_path.is_some() {
                        finish = finish.and(app::clean_up_error_pages(&self.config, version));
                    }
                    let finished = self.remote().run(&host, &finish).await;
                    let state = if finished.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
                    self.progress(DeployStage::Cutover, Some(&host), state);
                    finished?;
                    let what = if stopped.is_empty() {
                        "Tagged latest".to_string()
                    } else {
                        format!("Stopped {}", stopped.join(", "))
                    };
                    self.remote().report(&host, &what, started, true);
                    if options.prune {
                        let mut stopped_ids = Vec::new();
                        for boot in booted.iter().filter(|boot| boot.host == host) {
                            stopped_ids.extend(boot.stop_ids.iter().cloned());
                        }
                        let after = inventories.get(&host).cloned().unwrap_or_default().after_stopping(&stopped_ids);
                        self.progress(DeployStage::Prune, Some(&host), ProgressState::Started);
                        let pruned = self.prune_after_deploy(&host, &after, version).await;
                        let state = if pruned.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
                        self.progress(DeployStage::Prune, Some(&host), state);
                        pruned?;
                    } else {
                        self.progress(DeployStage::Prune, Some(&host), ProgressState::Skipped);
                    }
                    Ok(())
                }
            })
            .await
        })
        .await?;
        Ok(())
    }

    /// Kamal's `prune all` for one host, decided from what the host ran before the deploy and what the deploy
    /// stopped (no listing): stopped containers beyond `retain_containers`, and the images only they used.
    /// Best effort: a prune that fails is a warning, not a failed deploy. Kamal's audit lines are written
    /// whether or not there is anything to prune.
    async fn prune_after_deploy(&self, host: &str, inventory: &Inventory, version: &str) -> Result<(), EngineError> {
        let started = Instant::now();
        let removed = inventory.prunable(self.config.retain_containers.max(1) as usize);
        let ids: Vec<String> = removed.iter().map(|container| container.id.clone()).collect();
        let images = inventory.images_freed_by(&removed, &names::image(&self.config, version));
        let mut prune = self.audit_record(&[], Message::PrunedContainers);
        if !ids.is_empty() {
            prune = prune.and(app::remove_containers_by_id(&ids));
        }
        prune = prune.and(self.audit_record(&[], Message::PrunedImages));
        if !images.is_empty() {
            prune = prune.and(commands::prune::remove_image_references(&images));
        }
        let output = self.remote().run_unchecked(host, &prune).await?;
        if output.exit_status != 0 {
            let why = output.stderr.trim();
            self.sink().emit(super::output::Event::Warning(format!("{host}: pruning failed: {why}")));
            return Ok(());
        }
        if ids.is_empty() {
            return Ok(());
        }
        let text = format!("Pruned {} container(s) and {} image(s)", ids.len(), images.len());
        self.remote().report(host, &text, started, true);
        Ok(())
    }

    /// One boot group: hook, every host in parallel (roles on a host in order, primary first), hook.
    async fn boot_group(
        &self,
        group: &[String],
        version: &str,
        inventories: &HashMap<String, Inventory>,
        booted: &mut Vec<Booted>,
    ) -> Result<(), EngineError> {
        self.cancel().check()?;
        let hosts_var = group.join(",");
        self.run_hook("pre-app-boot", &[("KAMAL_HOSTS", hosts_var.clone())]).await?;
        let results = self
            .stage(&format!("Boot {version}"), group.len(), async {
                Ok(futures_util::future::join_all(
                    group
                        .iter()
                        .map(|host| self.boot_host(host, version, inventories.get(host).cloned().unwrap_or_default())),
                )
                .await)
            })
            .await?;
        let mut failures = Vec::new();
        for (host, (host_booted, result)) in group.iter().zip(results) {
            booted.extend(host_booted);
            if let Err(err) = result {
                failures.push((host.clone(), err));
            }
        }
        match failures.len() {
            0 => {}
            1 => return Err(failures.pop().expect("one").1),
            _ => return Err(EngineError::OnHosts(failures)),
        }
        self.cancel().check()?;
        self.run_hook("post-app-boot", &[("KAMAL_HOSTS", hosts_var)]).await?;
        Ok(())
    }

    /// Boots the selected roles on one host, primary role first; stops at the first failure.
    async fn boot_host(
        &self,
        host: &str,
        version: &str,
        inventory: Inventory,
    ) -> (Vec<Booted>, Result<(), EngineError>) {
        let mut booted = Vec::new();
        for role in self.selection.roles_on(&self.config, host) {
            if let Err(err) = self.cancel().check() {
                return (booted, Err(err));
            }
            match self.boot_role(host, role, version, &inventory).await {
                Ok(boot) => booted.push(boot),
                Err((boot, err)) => {
                    booted.extend(boot);
                    return (booted, Err(err));
                }
            }
        }
        (booted, Ok(()))
    }

    /// Starts `version` of `role` on `host` and waits until it is ready (the proxy switched to it, or the
    /// container is healthy). On failure the new container is stopped and its last log lines are reported.
    async fn boot_role(
        &self,
        host: &str,
        role: &Role,
        version: &str,
        inventory: &Inventory,
    ) -> Result<Booted, (Option<Booted>, EngineError)> {
        let config = &self.config;
        let remote = self.remote();
        let name = names::container_name(config, &role.name, version);
        let started = Instant::now();
        self.progress(DeployStage::Boot, Some(host), ProgressState::Started);
        let boot_failed = |err: EngineError| {
            self.progress(DeployStage::Boot, Some(host), ProgressState::Failed);
            (None, err)
        };

        let prefix = names::container_prefix(config, &role.name);
        let previous = inventory.running_version(&role.name, &prefix);
        let previous_version = previous.as_ref().map(|(version, _)| version.clone());
        let previous_id = previous.as_ref().map(|(_, container)| short_id(&container.id));
        // Everything of this role that runs now stops once every host passed (the previous version, and any
        // container an interrupted deploy left running).
        let stop_ids: Vec<String> = inventory.running(&role.name).map(|container| short_id(&container.id)).collect();

        // Same version already there (redeploy, rollback): move it out of the way, as Kamal does (audited).
        let mut run = self.audit_record(&[&role.name], Message::BootedApp { version }).and(app::run(
            config,
            role,
            host,
            version,
            &random_hex(6),
        ));
        if inventory.named(&name).is_some() {
            let hex = random_hex(8);
            let renamed = names::replaced_container_name(config, &role.name, version, &hex);
            let renamed_version = format!("{version}_replaced_{hex}");
            self.info(format!("Renaming container {version} to {renamed_version} as already deployed on {host}"));
            run = self
                .audit_record(&[&role.name], Message::RenamingContainer { version, renamed_version: &renamed_version })
                .and(app::rename_container(config, role, version, &renamed))
                .and(run);
        }

        // Asset bridging: the new container mounts a volume holding its assets and the running version's.
        if let Some((asset_path, _)) = app::asset_path(role, config).filter(|_| role.runs_proxy()) {
            let bridge = app::extract_assets(config, role, version, &asset_path).and(app::sync_asset_volumes(
                config,
                role,
                version,
                previous_version.as_deref(),
            ));
            remote.run(host, &bridge).await.map_err(boot_failed)?;
        }

        let output = remote.run(host, &run).await.map_err(boot_failed)?;
        let container_id = output.stdout.lines().last().map(short_id).unwrap_or_default();
        let mut boot = Booted {
            host: host.to_string(),
            role: role.name.clone(),
            proxied: role.runs_proxy(),
            container_id: container_id.clone(),
            previous_version,
            previous_id,
            stop_ids: stop_ids.into_iter().filter(|id| *id != container_id).collect(),
            switched: false,
        };
        remote.report(host, &format!("Started {name}"), started, true);
        self.progress(DeployStage::Boot, Some(host), ProgressState::Succeeded);
        // The health-gated switch: the proxy routes to the new container once it passed its health check.
        self.progress(DeployStage::Healthcheck, Some(host), ProgressState::Started);

        let ready = if boot.proxied {
            let started = Instant::now();
            let result = remote.run(host, &self.proxy_deploy(role, &container_id, version)).await;
            remote.report(host, &format!("Switched the proxy to {name} (health-checked)"), started, result.is_ok());
            result.map(|_| ())
        } else {
            self.wait_until_ready(host, role, version).await
        };
        let state = if ready.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
        self.progress(DeployStage::Healthcheck, Some(host), state);
        match ready {
            Ok(()) => {
                boot.switched = boot.proxied;
                Ok(boot)
            }
            Err(err) => {
                let logs = remote.run_unchecked(host, &app::container_logs_tail(config, role, version, 20)).await;
                let _ = remote.run_tolerating_exit(host, &app::stop(config, role, Some(version))).await;
                let logs = logs.map(|out| out.stdout).unwrap_or_default();
                let message = format!(
                    "{name} on {host} did not become healthy: {err}\nIts last log lines:\n{}",
                    logs.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
                );
                Err((None, EngineError::Unhealthy(message)))
            }
        }
    }

    /// Kamal's poller for roles without the proxy: the container's health if it has a HEALTHCHECK, else it must
    /// still be running `readiness_delay` seconds after it started; gives up after `deploy_timeout`.
    async fn wait_until_ready(&self, host: &str, role: &Role, version: &str) -> Result<(), EngineError> {
        let config = &self.config;
        let deadline = Instant::now() + Duration::from_secs(config.deploy_timeout);
        let readiness = Duration::from_secs(config.readiness_delay);
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let status = self.remote().run(host, &app::status(config, role, version)).await?.stdout.trim().to_string();
            match status.as_str() {
                "healthy" => return Ok(()),
                "running" if started.elapsed() >= readiness => return Ok(()),
                "unhealthy" | "exited" | "dead" => {
                    return Err(EngineError::Unhealthy(format!("container is {status}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Unhealthy(format!(
                    "still `{status}` after deploy_timeout ({}s)",
                    config.deploy_timeout
                )));
            }
            let wait = if status == "running" { readiness.saturating_sub(started.elapsed()).min(pause) } else { pause };
            tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Undoes a failed boot everywhere: hosts whose proxy switched go back to their previous container (still
    /// running, so it passes its health check at once), then every new container is stopped.
    pub(crate) async fn roll_back(&self, booted: &[Booted]) {
        if booted.is_empty() {
            return;
        }
        let hosts: Vec<String> = {
            let mut hosts: Vec<String> = booted.iter().map(|boot| boot.host.clone()).collect();
            hosts.dedup();
            hosts
        };
        // Even (above all) after a cancel: a Ctrl-C or an API cancel mid-boot must leave no host switched.
        let result = self
            .stage_even_if_cancelled("Roll back", hosts.len(), async {
                on_hosts(&hosts, |host| async move {
                    for boot in booted.iter().filter(|boot| boot.host == host).rev() {
                        let role = self.config.role(&boot.role).expect("booted roles exist");
                        let started = Instant::now();
                        if boot.switched {
                            match &boot.previous_id {
                                Some(previous_id) => {
                                    let previous = boot.previous_version.as_deref().unwrap_or(&self.config.version);
                                    self.remote().run(&host, &self.proxy_deploy(role, previous_id, previous)).await?;
                                    self.remote().report(&host, &format!("Switched the proxy back to {}", boot.previous_version.as_deref().unwrap_or("?")), started, true);
                                }
                                None => {
                                    self.info(format!("{host}: no previous version of {} to switch back to; the new one keeps running", role.name));
                                    continue;
                                }
                            }
                        }
                        let stop = Cmd::new("docker").arg("stop").arg(&boot.container_id);
                        self.remote().run_tolerating_exit(&host, &stop).await?;
                        self.remote().report(&host, &format!("Stopped the new {} container", role.name), started, true);
                    }
                    Ok(())
                })
                .await
            })
            .await;
        if let Err(err) = result {
            self.sink().emit(super::output::Event::Warning(format!("rolling back failed: {err}")));
        }
    }
}

impl Engine {
    /// `kamal-proxy deploy <service> --target=<container>:<app_port> …` for `role`.
    pub(crate) fn proxy_deploy(&self, role: &Role, container_id: &str, version: &str) -> Cmd {
        let service = names::container_prefix(&self.config, &role.name);
        let proxy = role.proxy.clone().unwrap_or_default();
        commands::proxy::deploy(&self.config, &service, &proxy, container_id, version, TlsOwner::Role(&role.name))
    }

    /// Uploads `error_pages_path`'s `4xx.html`/`5xx.html` pages for the proxy (`--error-pages`).
    async fn upload_error_pages(&self, host: &str, version: &str) -> Result<(), EngineError> {
        let Some(dir) = &self.config.error_pages_path else { return Ok(()) };
        let local = self.config.root.join(dir);
        let entries = std::fs::read_dir(&local).map_err(|source| EngineError::Local {
            what: format!("reading error_pages_path {}", local.display()),
            source,
        })?;
        self.remote().run(host, &app::create_error_pages_directory(&self.config, version)).await?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_page =
                name.len() == 8 && name.ends_with(".html") && (name.starts_with('4') || name.starts_with('5'));
            if !is_page {
                continue;
            }
            let contents = std::fs::read(entry.path())
                .map_err(|source| EngineError::Local { what: format!("reading {}", entry.path().display()), source })?;
            let remote_path = format!("{}/{version}/{name}", names::error_pages_directory(&self.config));
            self.remote().write_file(host, &remote_path, &contents, 0o644).await?;
        }
        Ok(())
    }

    /// Uploads a role's own TLS certificate and key (`proxy.ssl.certificate_pem`/`private_key_pem` secrets).
    async fn upload_custom_certificate(
        &self,
        host: &str,
        role: &Role,
        secrets: &crate::secrets::Secrets,
    ) -> Result<(), EngineError> {
        let Some(proxy) = role.proxy.as_ref().filter(|_| role.runs_proxy()) else { return Ok(()) };
        let Some((certificate, key)) = commands::proxy::custom_certificate_secrets(proxy) else { return Ok(()) };
        let directory = names::tls_directory(&self.config, &role.name);
        self.remote().run(host, &commands::proxy::create_tls_directory(&self.config, &role.name)).await?;
        self.remote()
            .write_file(host, &format!("{directory}/cert.pem"), secrets.get(&certificate)?.as_bytes(), 0o644)
            .await?;
        self.remote().write_file(host, &format!("{directory}/key.pem"), secrets.get(&key)?.as_bytes(), 0o600).await?;
        // kamal-proxy runs as its own user and needs to own them; berth's proxy runs as root and has no chown.
        let _ = self
            .remote()
            .run_unchecked(host, &commands::proxy::set_certificate_permissions(&self.config, &role.name))
            .await;
        Ok(())
    }
}

/// App hosts in slices of `boot.limit` (a count, or a percentage of all hosts), primary-role hosts first.
pub fn boot_groups(config: &crate::config::Config, hosts: &[String]) -> Vec<Vec<String>> {
    let size = match config.boot.limit.as_deref() {
        Some(limit) if limit.ends_with('%') => {
            let percent: usize = limit.trim_end_matches('%').trim().parse().unwrap_or(100);
            (config.all_hosts().len() * percent / 100).max(1)
        }
        Some(limit) => limit.trim().parse::<usize>().unwrap_or(hosts.len()).max(1),
        None => hosts.len().max(1),
    };
    hosts.chunks(size).map(<[String]>::to_vec).collect()
}

/// Docker's 12-character short id.
fn short_id(id: &str) -> String {
    id.trim().chars().take(12).collect()
}

/// `n` random bytes as hex (container hostnames, `_replaced_` names).
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;
    use crate::environment::Environment;

    fn config(boot: &str) -> crate::config::Config {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "service: app\nimage: app\nregistry: {{server: r:5000, username: u, password: p}}\nbuilder: {{arch: amd64}}\n\
             servers: [h1, h2, h3, h4, h5]\n{boot}"
        );
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/deploy.yml"), yaml).unwrap();
        let env = Environment::from_vars([("VERSION", "v1")], dir.path());
        let options =
            LoadOptions { config_file: dir.path().join("config/deploy.yml"), destination: None, version: None };
        crate::config::Config::load(&options, &env).unwrap()
    }

    fn hosts() -> Vec<String> {
        ["h1", "h2", "h3", "h4", "h5"].map(String::from).to_vec()
    }

    #[test]
    fn boot_groups_follow_boot_limit_as_a_count_or_a_share_of_all_hosts() {
        assert_eq!(boot_groups(&config(""), &hosts()).len(), 1);
        let groups = boot_groups(&config("boot: {limit: 2}\n"), &hosts());
        assert_eq!(groups, [vec!["h1", "h2"], vec!["h3", "h4"], vec!["h5"]]);
        let groups = boot_groups(&config("boot: {limit: 40%}\n"), &hosts());
        assert_eq!(groups.len(), 3, "40% of 5 hosts = 2 per group");
        let groups = boot_groups(&config("boot: {limit: 10%}\n"), &hosts());
        assert_eq!(groups.len(), 5, "at least one host per group");
    }
}
