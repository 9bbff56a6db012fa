//! Kamal's top-level flows — `setup`, `deploy`, `redeploy`, `rollback`, `remove`, `build pull`, `prune`,
//! `registry login` — composed from the engine's steps, in Kamal's order (`lib/kamal/cli/main.rb`).

use std::time::Instant;

use super::app::BootOptions;
use super::output::{DeployStage, Event, ProgressState};
use super::remote::on_hosts;
use super::{Engine, EngineError};
use crate::command::Cmd;
use crate::commands::auditor::Message;
use crate::commands::{self, app, names};

/// What `deploy`/`setup`/`redeploy` were asked to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeployOptions {
    /// `-P`: the image is already in the registry; only pull it.
    pub skip_push: bool,
    pub no_cache: bool,
}

impl Engine {
    /// `berth deploy`: build and push (unless -P), pull everywhere, then under the lock: pre-deploy hook, proxy,
    /// boot with the fleet-wide cutover, prune; then the post-deploy hook.
    pub async fn deploy(&self, options: DeployOptions) -> Result<(), EngineError> {
        self.run_hook("pre-connect", &[]).await?;
        self.deliver(options).await?;
        self.with_lock(async {
            self.run_hook("pre-deploy", &[]).await?;
            // The proxy ensured, app booted and old containers pruned host by host, in the boot's own stages.
            self.boot_app(&self.config.version, BootOptions { ensure_proxy: true, prune: true }).await
        })
        .await?;
        self.run_hook("post-deploy", &[("KAMAL_RUNTIME", self.elapsed().as_secs().to_string())]).await
    }

    /// `berth redeploy`: deploy without proxy boot and prune (Kamal's quick path).
    pub async fn redeploy(&self, options: DeployOptions) -> Result<(), EngineError> {
        self.run_hook("pre-connect", &[]).await?;
        self.deliver(options).await?;
        self.with_lock(async {
            self.run_hook("pre-deploy", &[]).await?;
            self.boot_app(&self.config.version, BootOptions::default()).await
        })
        .await?;
        self.run_hook("post-deploy", &[("KAMAL_RUNTIME", self.elapsed().as_secs().to_string())]).await
    }

    /// `berth setup`: under one lock, bootstrap the servers, then deploy and boot every accessory.
    pub async fn setup(&self, options: DeployOptions) -> Result<(), EngineError> {
        self.run_hook("pre-connect", &[]).await?;
        self.with_lock(async {
            self.bootstrap_servers().await?;
            self.deliver(options).await?;
            self.run_hook("pre-deploy", &[]).await?;
            self.boot_proxy().await?;
            self.boot_accessories(None).await?;
            self.boot_app(&self.config.version, BootOptions { ensure_proxy: false, prune: true }).await?;
            self.run_hook("post-deploy", &[("KAMAL_RUNTIME", self.elapsed().as_secs().to_string())]).await
        })
        .await
    }

    /// `berth rollback VERSION`: boot a version whose containers are still on every host (no pull).
    pub async fn rollback(&self, version: &str) -> Result<(), EngineError> {
        self.run_hook("pre-connect", &[]).await?;
        self.with_lock(async {
            let hosts = self.selection.app_hosts(&self.config);
            let missing = on_hosts(&hosts, |host| async move {
                let mut missing = Vec::new();
                for role in self.selection.roles_on(&self.config, &host) {
                    let found = self.remote().run(&host, &app::container_id_for_version(&self.config, role, version, false)).await?;
                    if found.stdout.trim().is_empty() {
                        missing.push(format!("{host} ({})", role.name));
                    }
                }
                Ok(missing)
            })
            .await?;
            let missing: Vec<String> = missing.into_iter().flatten().collect();
            if !missing.is_empty() {
                return Err(EngineError::Refused(format!(
                    "The app version '{version}' is not available as a container on {} (use 'berth app containers' for available versions)",
                    missing.join(", ")
                )));
            }
            self.run_hook("pre-deploy", &[]).await?;
            self.boot_app(version, BootOptions::default()).await
        })
        .await?;
        self.run_hook("post-deploy", &[("KAMAL_RUNTIME", self.elapsed().as_secs().to_string())]).await
    }

    /// `build deliver` (push then pull), or only `build pull` with `-P`.
    pub async fn deliver(&self, options: DeployOptions) -> Result<(), EngineError> {
        // Nothing has changed on a host yet: Ctrl-C abandons the build or pull at once.
        if options.skip_push {
            self.progress(DeployStage::Build, None, ProgressState::Skipped);
            self.progress(DeployStage::Push, None, ProgressState::Skipped);
        } else {
            // Built and pushed by one command (buildx --push, or the builder's build and push): one span.
            self.progress(DeployStage::Build, None, ProgressState::Started);
            self.progress(DeployStage::Push, None, ProgressState::Started);
            let built = self.unless_cancelled(self.build_push(options)).await;
            let state = if built.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
            self.progress(DeployStage::Build, None, state);
            self.progress(DeployStage::Push, None, state);
            built?;
        }
        self.unless_cancelled(self.pull_image()).await
    }

    /// `build pull`: log in and pull the app image on every app host in parallel, and check its `service` label
    /// (local registry mode: send it from the local engine instead, and check it the same way). As Kamal's
    /// `pull_on_hosts`: audit, `docker image rm --force` the tag (tolerated: it may not be there), pull, check.
    pub async fn pull_image(&self) -> Result<(), EngineError> {
        if self.config.registry.is_local() {
            let hosts = self.selection.app_hosts(&self.config);
            for host in &hosts {
                self.progress(DeployStage::Pull, Some(host), ProgressState::Started);
            }
            let sent = self.send_image_to_hosts().await;
            let state = if sent.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
            for host in &hosts {
                self.progress(DeployStage::Pull, Some(host), state);
            }
            return sent;
        }
        let hosts = self.selection.app_hosts(&self.config);
        let image = names::image(&self.config, &self.config.version);
        let login = self.registry_login_cmd().await?;
        self.stage(&format!("Pull {image}"), hosts.len(), async {
            on_hosts(&hosts, |host| {
                let login = login.clone();
                let image = image.clone();
                async move {
                    let started = Instant::now();
                    self.progress(DeployStage::Pull, Some(&host), ProgressState::Started);
                    let version = &self.config.version;
                    let pulled = async {
                        let mut audit = self.audit_record(&[], Message::PulledImage { version });
                        if let Some(login) = login {
                            audit = login.and(audit);
                        }
                        self.remote().run(&host, &audit).await?;
                        let clean = commands::builder::remove_image_before_pull(&self.config, version);
                        self.remote().run_tolerating_exit(&host, &clean).await?;
                        self.remote().run(&host, &commands::builder::pull(&self.config, version)).await?;
                        // Kamal refuses an image without the `service` label its prune selects images by.
                        self.remote().run(&host, &commands::builder::validate_image(&self.config, version)).await
                    }
                    .await;
                    let state = if pulled.is_ok() { ProgressState::Succeeded } else { ProgressState::Failed };
                    self.progress(DeployStage::Pull, Some(&host), state);
                    pulled?;
                    self.remote().report(&host, &format!("Pulled {image}"), started, true);
                    Ok(())
                }
            })
            .await
        })
        .await?;
        Ok(())
    }

    /// `docker login` for the app's registry with the password on stdin, or None for a registry without auth.
    pub(crate) async fn registry_login_cmd(&self) -> Result<Option<Cmd>, EngineError> {
        let registry = &self.config.registry;
        if registry.password.is_none() || registry.is_local() {
            return Ok(None);
        }
        let secrets = self.secrets().await?;
        let login = commands::registry::login(registry, commands::env_file::lookup_in(&secrets))
            .map_err(|missing| EngineError::Refused(missing.to_string()))?;
        Ok(Some(login))
    }

    /// `registry login` on one host.
    pub async fn registry_login(&self, host: &str) -> Result<(), EngineError> {
        if let Some(login) = self.registry_login_cmd().await? {
            self.remote().run(host, &login).await?;
        }
        Ok(())
    }

    /// `prune all`: stopped containers beyond `retain_containers`, then unused images, on every selected host.
    pub async fn prune_all(&self) -> Result<(), EngineError> {
        self.prune_containers(None).await?;
        self.prune_images().await
    }

    pub async fn prune_containers(&self, retain: Option<u64>) -> Result<(), EngineError> {
        let retain = retain.unwrap_or(self.config.retain_containers).max(1);
        let hosts = self.selection.hosts.clone();
        self.stage("Prune old containers", hosts.len(), async {
            on_hosts(&hosts, |host| async move {
                let prune = self
                    .audit_record(&[], Message::PrunedContainers)
                    .and(commands::prune::app_containers(&self.config, retain));
                self.remote().step(&host, &format!("Pruned stopped containers (kept {retain})"), &prune).await?;
                Ok(())
            })
            .await
        })
        .await?;
        Ok(())
    }

    pub async fn prune_images(&self) -> Result<(), EngineError> {
        let hosts = self.selection.hosts.clone();
        self.stage("Prune unused images", hosts.len(), async {
            on_hosts(&hosts, |host| async move {
                let prune = self
                    .audit_record(&[], Message::PrunedImages)
                    .and(commands::prune::dangling_images(&self.config))
                    .and(commands::prune::tagged_images(&self.config));
                self.remote().step(&host, "Pruned unused images", &prune).await?;
                Ok(())
            })
            .await
        })
        .await?;
        Ok(())
    }

    /// `server bootstrap`: Docker must be there (berth does not install it: say how), `.kamal` exists; then the
    /// `docker-setup` hook.
    pub async fn bootstrap_servers(&self) -> Result<(), EngineError> {
        let hosts = self.selection.hosts.clone();
        self.stage("Check Docker on the servers", hosts.len(), async {
            on_hosts(&hosts, |host| async move {
                let started = Instant::now();
                let version = self.remote().run_unchecked(&host, &commands::server::docker_installed()).await?;
                if version.exit_status != 0 {
                    return Err(EngineError::Refused(format!(
                        "Docker is not installed on {host} (or `docker` is not on the deploy user's PATH). Install it, e.g. `curl -fsSL https://get.docker.com | sh`, and add the user to the docker group"
                    )));
                }
                self.remote().run(&host, &commands::server::ensure_run_directory()).await?;
                self.remote().report(&host, version.stdout.trim(), started, true);
                Ok(())
            })
            .await
        })
        .await?;
        self.run_hook("docker-setup", &[]).await
    }

    /// `app stop` on every selected (host, role): leave the proxy first, then stop the container. Both are
    /// tolerated failures as in Kamal, so stopping what is not running (again) succeeds.
    pub async fn stop_app(&self) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        on_hosts(&hosts, |host| async move {
            for role in self.selection.roles_on(&self.config, &host) {
                self.remote().run(&host, &self.audit_record(&[&role.name], Message::StoppedApp)).await?;
                if role.runs_proxy() {
                    let service = names::container_prefix(&self.config, &role.name);
                    self.remote().run_tolerating_exit(&host, &commands::proxy::remove(&service)).await?;
                }
                self.remote()
                    .step_tolerating_exit(
                        &host,
                        &format!("Stopped {}", role.name),
                        &app::stop(&self.config, role, None),
                    )
                    .await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `app start`: start the version's container again (tolerated, as in Kamal: it may run already) and give
    /// the container that runs now back to the proxy.
    pub async fn start_app(&self) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        let version = self.config.version.clone();
        on_hosts(&hosts, |host| {
            let version = version.clone();
            async move {
                for role in self.selection.roles_on(&self.config, &host) {
                    let started = Instant::now();
                    let audit = self.audit_record(&[], Message::StartedApp { version: &version });
                    self.remote().run(&host, &audit).await?;
                    self.remote().run_tolerating_exit(&host, &app::start(&self.config, role, &version)).await?;
                    if role.runs_proxy() {
                        let running =
                            self.remote().run(&host, &app::current_running_version(&self.config, role)).await?;
                        let running = running.stdout.trim().to_string();
                        let id = self
                            .remote()
                            .run(&host, &app::container_id_for_version(&self.config, role, &running, false))
                            .await?;
                        let id: String = id.stdout.trim().chars().take(12).collect();
                        if id.is_empty() {
                            return Err(EngineError::Refused(format!(
                                "Failed to get endpoint for {} on {host}, did the container boot?",
                                role.name
                            )));
                        }
                        self.remote().run(&host, &self.proxy_deploy(role, &id, &running)).await?;
                    }
                    self.remote().report(
                        &host,
                        &format!("Started {}", names::container_name(&self.config, &role.name, &version)),
                        started,
                        true,
                    );
                }
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// `app maintenance` / `app live`.
    pub async fn set_maintenance(
        &self,
        on: bool,
        drain_timeout: Option<u64>,
        message: Option<&str>,
    ) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        on_hosts(&hosts, |host| async move {
            for role in self.selection.roles_on(&self.config, &host).filter(|role| role.runs_proxy()) {
                let service = names::container_prefix(&self.config, &role.name);
                let cmd = if on {
                    commands::proxy::stop(&service, drain_timeout, message)
                } else {
                    commands::proxy::resume(&service)
                };
                let what = if on { "Maintenance mode on" } else { "Live again" };
                self.remote().step(&host, &format!("{what} ({})", role.name), &cmd).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Runs `build` for each (host, role) and prints what it printed, under a `App Host: h` header as Kamal does.
    pub async fn show_per_role(&self, build: impl Fn(&crate::config::Role) -> Cmd + Sync) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        let outputs = on_hosts(&hosts, |host| {
            let build = &build;
            async move {
                let mut text = String::new();
                for role in self.selection.roles_on(&self.config, &host) {
                    let output = self.remote().run(&host, &build(role)).await?;
                    text.push_str(&output.stdout);
                }
                Ok((host, text))
            }
        })
        .await?;
        for (host, text) in outputs {
            self.show(&format!("App Host: {host}"), &text);
        }
        Ok(())
    }

    /// Runs `cmd` on every selected host and prints each host's output under `header: host`.
    pub async fn show_per_host(&self, header: &str, hosts: &[String], cmd: &Cmd) -> Result<(), EngineError> {
        let outputs = on_hosts(hosts, |host| async move {
            let output = self.remote().run(&host, cmd).await?;
            Ok((host, output.stdout))
        })
        .await?;
        for (host, text) in outputs {
            self.show(&format!("{header}: {host}"), &text);
        }
        Ok(())
    }

    /// Output the user asked for (details, versions, logs): always shown, even with -q.
    pub fn show(&self, header: &str, text: &str) {
        self.sink().emit(Event::Output(header.to_string()));
        for line in text.trim_end().lines() {
            self.sink().emit(Event::Output(line.to_string()));
        }
    }
}
