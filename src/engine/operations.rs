//! The rest of Kamal's command set on hosts: accessories, app queries (details, versions, logs, exec),
//! proxy container actions, lock, registry, server exec, remove — each a few builder commands run per host.

use std::time::Instant;

use indexmap::IndexMap;

use super::app::random_hex;
use super::output::Event;
use super::remote::on_hosts;
use super::{Engine, EngineError};
use crate::command::Cmd;
use crate::commands::app::{ExecMode, LogOptions};
use crate::commands::auditor::Message;
use crate::commands::{self, accessory, app, names, proxy};
use crate::config::Accessory;

/// A simple action on accessory containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessoryAction {
    Start,
    Stop,
    Details,
}

/// A simple action on the proxy container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyAction {
    Start,
    Stop,
    Details,
}

impl Engine {
    /// The accessories `name` means (`all`, or one), or an error listing the ones that exist.
    fn accessories_named(&self, name: &str) -> Result<Vec<Accessory>, EngineError> {
        if name == "all" {
            return Ok(self.config.accessories.clone());
        }
        match self.config.accessories.iter().find(|accessory| accessory.name == name) {
            Some(accessory) => Ok(vec![accessory.clone()]),
            None => Err(EngineError::Refused(format!(
                "No accessory by the name of '{name}' (options: {})",
                self.config.accessories.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// An accessory's hosts that are selected (`-h` narrows them).
    fn accessory_hosts(&self, accessory: &Accessory) -> Vec<String> {
        let filtered = self.options.filters.hosts.is_some() || self.options.filters.roles.is_some();
        accessory.hosts.iter().filter(|host| !filtered || self.selection.hosts.contains(host)).cloned().collect()
    }

    /// `accessory boot NAME|all` (also part of `setup`): skips hosts where the accessory's container exists.
    pub async fn boot_accessories(&self, name: Option<&str>) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name.unwrap_or("all"))? {
            let hosts = self.accessory_hosts(&accessory);
            self.stage(&format!("Boot accessory {}", accessory.name), hosts.len(), async {
                on_hosts(&hosts, |host| {
                    let accessory = accessory.clone();
                    async move { self.boot_accessory_on(&host, &accessory, false).await }
                })
                .await
            })
            .await?;
        }
        Ok(())
    }

    async fn boot_accessory_on(&self, host: &str, accessory: &Accessory, replace: bool) -> Result<(), EngineError> {
        let started = Instant::now();
        let remote = self.remote();
        let exists = remote.run(host, &accessory::container_exists(accessory)).await?;
        if !exists.stdout.trim().is_empty() && !replace {
            remote.report(
                host,
                &format!("Skipping booting {}: a container already exists", accessory.service),
                started,
                true,
            );
            return Ok(());
        }
        self.registry_login(host).await?;
        remote.run(host, &proxy::ensure_network()).await?;
        if let Some(make) = accessory::make_directories(accessory) {
            remote.run(host, &make).await?;
        }
        for file in accessory::files(accessory) {
            let local = self.config.root.join(&file.local);
            let contents = std::fs::read(&local).map_err(|source| EngineError::Local {
                what: format!("reading {} for accessory {}", local.display(), accessory.name),
                source,
            })?;
            remote.run(host, &accessory::make_file_directory(&file)).await?;
            let mode = u32::from_str_radix(&file.mode, 8).unwrap_or(0o755);
            remote.write_file(host, &host_path_for_upload(&file.host_path), &contents, mode).await?;
            remote.run(host, &accessory::set_file_permissions(&file)).await?;
        }
        let secrets = self.secrets().await?;
        let env_text = commands::env_file::accessory_env_file(accessory, commands::env_file::lookup_in(&secrets))
            .map_err(|missing| EngineError::Refused(missing.to_string()))?;
        remote.run(host, &accessory::ensure_env_directory(&self.config)).await?;
        remote
            .write_file(host, &names::accessory_env_file(&self.config, &accessory.name), env_text.as_bytes(), 0o600)
            .await?;
        let audit = self.audit_record(&[], Message::BootedAccessory { name: &accessory.name });
        let output = remote.run(host, &audit.and(accessory::run(&self.config, accessory, host))).await?;
        if let Some(port) = accessory_app_port(accessory) {
            let id: String = output.stdout.trim().chars().take(12).collect();
            if let Some(deploy) = accessory::deploy_to_proxy(&self.config, accessory, &format!("{id}:{port}")) {
                remote.run(host, &deploy).await?;
            }
        }
        remote.report(host, &format!("Booted {}", accessory.service), started, true);
        Ok(())
    }

    /// `accessory reboot NAME`: pull, stop, remove, boot again (data directories stay).
    pub async fn reboot_accessory(&self, name: &str) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name)? {
            let hosts = self.accessory_hosts(&accessory);
            self.stage(&format!("Reboot accessory {}", accessory.name), hosts.len(), async {
                on_hosts(&hosts, |host| {
                    let accessory = accessory.clone();
                    async move {
                        let name = &accessory.name;
                        self.registry_login(&host).await?;
                        let pull = self
                            .audit_record(&[], Message::PulledAccessoryImage { name })
                            .and(accessory::pull_image(&accessory));
                        self.remote().run(&host, &pull).await?;
                        if accessory.proxy.is_some() {
                            self.remote().run_unchecked(&host, &accessory::remove_from_proxy(&accessory)).await?;
                        }
                        self.remote().run(&host, &self.audit_record(&[], Message::StoppedAccessory { name })).await?;
                        self.remote().run_tolerating_exit(&host, &accessory::stop(&accessory)).await?;
                        let remove = self
                            .audit_record(&[], Message::RemovedAccessoryContainer { name })
                            .and(accessory::remove_container(&accessory));
                        self.remote().run(&host, &remove).await?;
                        self.boot_accessory_on(&host, &accessory, true).await
                    }
                })
                .await
            })
            .await?;
        }
        Ok(())
    }

    pub async fn accessory_action(&self, name: &str, action: AccessoryAction) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name)? {
            let hosts = self.accessory_hosts(&accessory);
            let outputs = on_hosts(&hosts, |host| {
                let accessory = accessory.clone();
                async move {
                    let cmd = match action {
                        AccessoryAction::Start => accessory::start(&accessory),
                        AccessoryAction::Stop => accessory::stop(&accessory),
                        AccessoryAction::Details => accessory::info(&accessory),
                    };
                    if action == AccessoryAction::Stop && accessory.proxy.is_some() {
                        self.remote().run_unchecked(&host, &accessory::remove_from_proxy(&accessory)).await?;
                    }
                    let text = format!("{action:?} {}", accessory.service);
                    let name = accessory.name.as_str();
                    let audited = match action {
                        AccessoryAction::Start => Some(Message::StartedAccessory { name }),
                        AccessoryAction::Stop => Some(Message::StoppedAccessory { name }),
                        AccessoryAction::Details => None,
                    };
                    if let Some(message) = audited {
                        self.remote().run(&host, &self.audit_record(&[], message)).await?;
                    }
                    let output = if action == AccessoryAction::Stop {
                        // Kamal tolerates stopping an accessory that is not running.
                        self.remote().step_tolerating_exit(&host, &text, &cmd).await?
                    } else {
                        self.remote().step(&host, &text, &cmd).await?
                    };
                    Ok((host, output.stdout))
                }
            })
            .await?;
            if action == AccessoryAction::Details {
                for (host, text) in outputs {
                    self.show(&format!("Accessory {} Host: {host}", accessory.name), &text);
                }
            }
        }
        Ok(())
    }

    pub async fn accessory_logs(&self, name: &str, options: &LogOptions) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name)? {
            let hosts = self.accessory_hosts(&accessory);
            let cmd = accessory::logs(&accessory, options);
            self.stream_or_show(&format!("Accessory {} Host", accessory.name), &hosts, &cmd, options.follow).await?;
        }
        Ok(())
    }

    pub async fn accessory_exec(
        &self,
        name: &str,
        reuse: bool,
        env: &[String],
        command: &[String],
    ) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name)? {
            let hosts = self.accessory_hosts(&accessory);
            let cmd = if reuse {
                accessory::execute_in_existing_container(&accessory, command, false)
            } else {
                let _ = parse_env(env)?;
                accessory::execute_in_new_container(
                    &self.config,
                    &accessory,
                    hosts.first().map(String::as_str).unwrap_or_default(),
                    command,
                    false,
                )
            };
            let cmd_text = command.join(" ");
            let audit = self.audit_record(&[], Message::ExecutedOnAccessory { cmd: &cmd_text, name: &accessory.name });
            self.show_per_host(&format!("Accessory {} Host", accessory.name), &hosts, &audit.and(cmd)).await?;
        }
        Ok(())
    }

    /// `accessory remove NAME|all`: container, image and data directory.
    pub async fn remove_accessories(&self, name: &str) -> Result<(), EngineError> {
        for accessory in self.accessories_named(name)? {
            let hosts = self.accessory_hosts(&accessory);
            on_hosts(&hosts, |host| {
                let accessory = accessory.clone();
                async move {
                    if accessory.proxy.is_some() {
                        self.remote().run_unchecked(&host, &accessory::remove_from_proxy(&accessory)).await?;
                    }
                    // Kamal's `remove_accessory`: only the stop may fail (nothing running); the rest may not.
                    let started = Instant::now();
                    let name = &accessory.name;
                    self.remote().run(&host, &self.audit_record(&[], Message::StoppedAccessory { name })).await?;
                    self.remote().run_tolerating_exit(&host, &accessory::stop(&accessory)).await?;
                    let remove = self
                        .audit_record(&[], Message::RemovedAccessoryContainer { name })
                        .and(accessory::remove_container(&accessory))
                        .and(self.audit_record(&[], Message::RemovedAccessoryImage { name }))
                        .and(accessory::remove_image(&accessory))
                        .and(accessory::remove_service_directory(&accessory));
                    self.remote().run(&host, &remove).await?;
                    self.remote().report(&host, &format!("Removed {}", accessory.service), started, true);
                    Ok(())
                }
            })
            .await?;
        }
        Ok(())
    }

    /// `app images`.
    pub async fn app_images(&self) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        self.show_per_host("App Host", &hosts, &app::list_images(&self.config)).await
    }

    /// `app version`: the version running on each host.
    pub async fn app_version(&self) -> Result<(), EngineError> {
        self.show_per_role(|role| app::current_running_version(&self.config, role)).await
    }

    /// What each selected app host runs now, per role (for the daemon's service status): the version, or
    /// why the host could not tell (one unreachable host does not hide the others).
    pub async fn running_versions(&self) -> Vec<RunningVersion> {
        let hosts = self.selection.app_hosts(&self.config);
        let listings = futures_util::future::join_all(hosts.iter().map(|host| async move {
            let listing = self.remote().run(host, &app::inventory(&self.config)).await;
            (host.clone(), listing.map(|out| super::inventory::Inventory::parse(&out.stdout)))
        }))
        .await;
        let mut versions = Vec::new();
        for (host, listing) in listings {
            for role in self.selection.roles_on(&self.config, &host) {
                let (version, error) = match &listing {
                    Ok(inventory) => {
                        let prefix = names::container_prefix(&self.config, &role.name);
                        (inventory.running_version(&role.name, &prefix).map(|(version, _)| version), None)
                    }
                    Err(error) => (None, Some(error.to_string())),
                };
                versions.push(RunningVersion { host: host.clone(), role: role.name.clone(), version, error });
            }
        }
        versions
    }

    /// `app logs`: per (host, role); with `--follow`, streamed live from every selected host and role at once,
    /// each line prefixed with its host (Kamal follows the primary host only).
    pub async fn app_logs(&self, options: &LogOptions) -> Result<(), EngineError> {
        if options.follow {
            let hosts = self.selection.app_hosts(&self.config);
            let streams = hosts
                .iter()
                .flat_map(|host| {
                    self.selection
                        .roles_on(&self.config, host)
                        .map(move |role| (host.clone(), app::logs(&self.config, role, options)))
                })
                .collect();
            return self.follow(streams).await;
        }
        // A `--grep` that matches nothing exits 1: that is an empty answer, not a failure.
        self.show_per_role(|role| app::logs(&self.config, role, options).or(Cmd::new("true"))).await
    }

    /// `app exec`: in a new container of the running version (default), or in the running one (`--reuse`).
    pub async fn app_exec(
        &self,
        reuse: bool,
        interactive: bool,
        env: &[String],
        command: &[String],
    ) -> Result<(), EngineError> {
        let env = parse_env(env)?;
        if interactive {
            // As Kamal: a terminal session on the primary host through the OpenSSH client (`ssh -t`).
            let host =
                self.selection.primary_host.clone().ok_or_else(|| EngineError::Refused("no host selected".into()))?;
            let role = self.selection.roles_on(&self.config, &host).next().expect("the primary host has a role");
            let running = self.remote().run(&host, &app::current_running_version(&self.config, role)).await?;
            let running = running.stdout.trim().to_string();
            let cmd = if reuse {
                app::execute_in_existing_container(&self.config, role, &running, command, &env, true)
            } else {
                let version = if running.is_empty() { self.config.version.clone() } else { running };
                app::execute_in_new_container(
                    &self.config,
                    role,
                    &host,
                    &version,
                    command,
                    &env,
                    ExecMode::Interactive,
                    &random_hex(3),
                )
            };
            return self.interactive_ssh(&host, &cmd);
        }
        let hosts = self.selection.app_hosts(&self.config);
        let version = self.config.version.clone();
        let outputs = on_hosts(&hosts, |host| {
            let env = env.clone();
            let version = version.clone();
            async move {
                let mut text = String::new();
                for role in self.selection.roles_on(&self.config, &host) {
                    let cmd_text = command.join(" ");
                    let executed = |version| Message::ExecutedOnApp { cmd: &cmd_text, version };
                    let cmd =
                        if reuse {
                            let running =
                                self.remote().run(&host, &app::current_running_version(&self.config, role)).await?;
                            let running = running.stdout.trim().to_string();
                            self.audit_record(&[&role.name], executed(&running)).and(
                                app::execute_in_existing_container(&self.config, role, &running, command, &env, false),
                            )
                        } else {
                            let running =
                                self.remote().run(&host, &app::current_running_version(&self.config, role)).await?;
                            let running = running.stdout.trim();
                            let version = if running.is_empty() { version.as_str() } else { running };
                            self.audit_record(&[], executed(version)).and(app::execute_in_new_container(
                                &self.config,
                                role,
                                &host,
                                version,
                                command,
                                &env,
                                ExecMode::Attached,
                                &random_hex(3),
                            ))
                        };
                    let output = self.remote().run(&host, &cmd).await?;
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

    /// `app stale_containers [--stop]`: running containers of a role that are not its current version.
    pub async fn stale_containers(&self, stop: bool) -> Result<(), EngineError> {
        let hosts = self.selection.app_hosts(&self.config);
        on_hosts(&hosts, |host| async move {
            for role in self.selection.roles_on(&self.config, &host) {
                let current = self.remote().run(&host, &app::current_running_version(&self.config, role)).await?;
                let current = current.stdout.trim().to_string();
                let running = self.remote().run(&host, &app::list_versions(&self.config, role, &[])).await?;
                for version in running.stdout.lines().map(str::trim).filter(|v| !v.is_empty() && *v != current) {
                    let name = names::container_name(&self.config, &role.name, version);
                    if stop {
                        self.remote()
                            .step_tolerating_exit(
                                &host,
                                &format!("Stopped stale container {name}"),
                                &app::stop(&self.config, role, Some(version)),
                            )
                            .await?;
                    } else {
                        self.sink().emit(Event::Output(format!(
                            "Detected stale container for role {} with version {version} on {host}",
                            role.name
                        )));
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `app remove`: leave the proxy, stop, remove containers; then, on hosts where every role of the host is
    /// being removed (Kamal's `hosts_removing_all_roles`), the images and the app's directories. Idempotent as
    /// Kamal's: stopping nothing and removing directories that are gone are tolerated failures.
    pub async fn remove_app(&self) -> Result<(), EngineError> {
        self.stop_app().await?;
        let hosts = self.selection.app_hosts(&self.config);
        on_hosts(&hosts, |host| async move {
            let started = Instant::now();
            for role in self.selection.roles_on(&self.config, &host) {
                let remove = self
                    .audit_record(&[&role.name], Message::RemovedAllAppContainers)
                    .and(app::remove_containers(&self.config, role));
                self.remote().run(&host, &remove).await?;
            }
            let selected = self.selection.roles_on(&self.config, &host).count();
            let on_host = self.config.roles.iter().filter(|role| role.host_names().any(|name| name == host)).count();
            if selected < on_host {
                self.remote().report(&host, "Removed the selected roles' containers", started, true);
                return Ok(());
            }
            let images = self.audit_record(&[], Message::RemovedAllAppImages).and(app::remove_images(&self.config));
            self.remote().run(&host, &images).await?;
            self.remote().run_tolerating_exit(&host, &app::remove_app_directory(&self.config)).await?;
            let path = names::app_directory(&self.config);
            let audit = self.audit_record(&[], Message::RemovedAppDirectory { path: &path });
            self.remote().run(&host, &audit).await?;
            self.remote().run_tolerating_exit(&host, &app::remove_proxy_app_directory(&self.config)).await?;
            self.remote().report(&host, "Removed the app's containers, images and directories", started, true);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `berth remove`: app, proxy (where no other app remains), accessories, registry logout.
    pub async fn remove_everything(&self) -> Result<(), EngineError> {
        self.with_lock(async {
            self.remove_app().await?;
            self.remove_proxy(false).await?;
            self.remove_accessories("all").await?;
            self.registry_logout_all(true, false).await
        })
        .await
    }

    /// `proxy start|stop|details`.
    pub async fn proxy_action(&self, action: ProxyAction) -> Result<(), EngineError> {
        let hosts = self.proxy_hosts();
        let cmd = match action {
            ProxyAction::Start => proxy::start(),
            ProxyAction::Stop => proxy::stop_container(),
            ProxyAction::Details => proxy::info(),
        };
        if action == ProxyAction::Details {
            return self.show_per_host("Proxy Host", &hosts, &cmd).await;
        }
        on_hosts(&hosts, |host| {
            let cmd = cmd.clone();
            async move {
                let text = format!("Proxy {action:?}");
                if action == ProxyAction::Stop {
                    self.remote().run(&host, &self.audit_record(&[], Message::StoppedProxy)).await?;
                    // Kamal tolerates stopping a proxy that is not running.
                    self.remote().step_tolerating_exit(&host, &text, &cmd).await?;
                } else {
                    self.remote().run(&host, &self.audit_record(&[], Message::StartedProxy)).await?;
                    self.remote().step(&host, &text, &cmd).await?;
                }
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    pub async fn proxy_logs(&self, options: &LogOptions) -> Result<(), EngineError> {
        let hosts = self.proxy_hosts();
        self.stream_or_show("Proxy Host", &hosts, &proxy::logs(options), options.follow).await
    }

    /// `proxy remove`: only on hosts where no app is installed any more, unless `force`.
    pub async fn remove_proxy(&self, force: bool) -> Result<(), EngineError> {
        let hosts = self.proxy_hosts();
        on_hosts(&hosts, |host| async move {
            if !force {
                let apps = self.remote().run_unchecked(&host, &Cmd::new("ls").arg(names::apps_directory())).await?;
                if apps.exit_status == 0 && !apps.stdout.trim().is_empty() {
                    self.info(format!(
                        "{host}: keeping the proxy, other apps are installed ({})",
                        apps.stdout.split_whitespace().collect::<Vec<_>>().join(", ")
                    ));
                    return Ok(());
                }
            }
            // Kamal's `proxy remove`: stop (tolerated), remove the container and the image (prunes, which do not
            // fail on nothing), then `rm -r .kamal/proxy` (tolerated: it may be gone already).
            let started = Instant::now();
            self.remote().run(&host, &self.audit_record(&[], Message::StoppedProxy)).await?;
            self.remote().run_tolerating_exit(&host, &proxy::stop_container()).await?;
            let remove = self
                .audit_record(&[], Message::RemovedProxyContainer)
                .and(proxy::remove_container())
                .and(self.audit_record(&[], Message::RemovedProxyImage))
                .and(proxy::remove_image());
            self.remote().run(&host, &remove).await?;
            self.remote().run_tolerating_exit(&host, &proxy::remove_proxy_directory()).await?;
            self.remote().report(&host, "Removed the proxy", started, true);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `details`: proxy, app and accessories.
    pub async fn details(&self) -> Result<(), EngineError> {
        self.proxy_action(ProxyAction::Details).await?;
        self.show_per_role(|role| app::info(&self.config, role)).await?;
        if !self.config.accessories.is_empty() {
            self.accessory_action("all", AccessoryAction::Details).await?;
        }
        Ok(())
    }

    /// `audit`: the last lines of the audit log on each host.
    pub async fn audit(&self) -> Result<(), EngineError> {
        let hosts = self.selection.hosts.clone();
        self.show_per_host("App Host", &hosts, &commands::auditor::reveal(&self.config)).await
    }

    /// Runs `cmd` on `host` in a terminal session of the OpenSSH client (`ssh -t`), attached to this terminal,
    /// with berth's own address, keys, known_hosts files and host key policy for that host.
    fn interactive_ssh(&self, host: &str, cmd: &Cmd) -> Result<(), EngineError> {
        let ssh = self.remote().ssh().config();
        // `ssh.key_data` lives in memory; `ssh` needs files: private ones, removed when the session ends.
        let key_files = PrivateKeyFiles::write(&ssh.key_data).map_err(|source| EngineError::Local {
            what: "writing ssh.key_data for the `ssh` client".into(),
            source,
        })?;
        let args = crate::ssh::terminal_session_args(ssh, host, &key_files.paths, cmd.script())?;
        self.sink().emit(Event::Command { host: Some(host.to_string()), text: cmd.to_string() });
        let status = std::process::Command::new("ssh")
            .args(&args)
            .status()
            .map_err(|source| EngineError::Local { what: "running the OpenSSH client `ssh`".into(), source })?;
        drop(key_files);
        if !status.success() {
            return Err(EngineError::CommandFailed {
                host: host.to_string(),
                command: cmd.to_string(),
                status: status.code().unwrap_or(1) as u32,
                output: String::new(),
            });
        }
        Ok(())
    }

    /// `server exec CMD`: a shell command on every selected host (`-i`: a terminal session on the primary host).
    pub async fn server_exec(&self, interactive: bool, command: &str) -> Result<(), EngineError> {
        if interactive {
            let host =
                self.selection.primary_host.clone().ok_or_else(|| EngineError::Refused("no host selected".into()))?;
            return self.interactive_ssh(&host, &Cmd::raw_script(command));
        }
        let hosts = self.selection.hosts.clone();
        let outputs = on_hosts(&hosts, |host| async move {
            let audit = self.audit_record(&[], Message::ExecutedOnHost { cmd: command, host: &host });
            self.remote().run(&host, &audit).await?;
            let output = self.remote().run(&host, &Cmd::raw_script(command)).await?;
            Ok((host, output.stdout))
        })
        .await?;
        for (host, text) in outputs {
            self.show(&format!("App Host: {host}"), &text);
        }
        Ok(())
    }

    pub async fn lock_acquire(&self, message: &str) -> Result<(), EngineError> {
        if self.acquire_lock(message).await? {
            self.info(format!("Acquired the deploy lock on {}", self.selection.primary_host.as_deref().unwrap_or("?")));
        }
        Ok(())
    }

    pub async fn lock_release(&self) -> Result<(), EngineError> {
        let Some(host) = self.selection.primary_host.clone() else { return Ok(()) };
        match self.lock_details(&host).await? {
            Some(_) => {
                self.remote().step(&host, "Released the deploy lock", &commands::lock::release(&self.config)).await?;
            }
            None => self.info("There is no deploy lock"),
        }
        Ok(())
    }

    pub async fn lock_status(&self) -> Result<(), EngineError> {
        let Some(host) = self.selection.primary_host.clone() else { return Ok(()) };
        match self.lock_details(&host).await? {
            Some(details) => self.show(&format!("Lock on {host}:"), &details),
            None => self.sink().emit(Event::Output("There is no deploy lock".into())),
        }
        Ok(())
    }

    pub async fn registry_login_all(&self, _skip_local: bool, skip_remote: bool) -> Result<(), EngineError> {
        if skip_remote {
            return Ok(());
        }
        let hosts = self.selection.hosts.clone();
        on_hosts(&hosts, |host| async move {
            let started = Instant::now();
            self.registry_login(&host).await?;
            self.remote().report(&host, "Logged in to the registry", started, true);
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn registry_logout_all(&self, _skip_local: bool, skip_remote: bool) -> Result<(), EngineError> {
        if skip_remote {
            return Ok(());
        }
        let hosts = self.selection.hosts.clone();
        on_hosts(&hosts, |host| async move {
            self.remote()
                .step(&host, "Logged out of the registry", &commands::registry::logout(&self.config.registry))
                .await?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Shows a command's output per host, or with `follow` streams it from every host at once until it ends.
    async fn stream_or_show(&self, header: &str, hosts: &[String], cmd: &Cmd, follow: bool) -> Result<(), EngineError> {
        if !follow {
            return self.show_per_host(header, hosts, cmd).await;
        }
        self.follow(hosts.iter().map(|host| (host.clone(), cmd.clone())).collect()).await
    }

    /// Runs each `(host, command)` at once, every output line shown as it arrives as `host: line`, until all
    /// end or Ctrl-C (which ends following, not an error).
    async fn follow(&self, streams: Vec<(String, Cmd)>) -> Result<(), EngineError> {
        let lines = super::remote::OutputLines { sink: self.sink() };
        let all = futures_util::future::join_all(
            streams.iter().map(|(host, cmd)| self.remote().ssh().run(host, cmd, &lines)),
        );
        tokio::select! {
            results = all => {
                for result in results {
                    result?;
                }
                Ok(())
            }
            () = self.cancel().raised() => Ok(()),
        }
    }
}

/// `-e K=V` arguments as an env map.
fn parse_env(pairs: &[String]) -> Result<IndexMap<String, String>, EngineError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(EngineError::Refused(format!("--env takes KEY=VALUE, got '{pair}'"))),
        })
        .collect()
}

/// The port the proxy reaches a proxied accessory on (`proxy.app_port`, default 80).
fn accessory_app_port(accessory: &Accessory) -> Option<String> {
    let proxy = accessory.proxy.as_ref()?;
    Some(proxy.get("app_port").map(crate::config::schema::scalar_text).unwrap_or_else(|| "80".into()))
}

/// Uploads go through the login directory; `$PWD/x` in a builder path means `x` relative to it.
fn host_path_for_upload(path: &str) -> String {
    path.strip_prefix("$PWD/").unwrap_or(path).to_string()
}

/// Private key texts written to files only their owner can read, in a private directory that goes away with
/// this value.
struct PrivateKeyFiles {
    dir: Option<std::path::PathBuf>,
    paths: Vec<std::path::PathBuf>,
}

impl PrivateKeyFiles {
    fn write(keys: &[String]) -> std::io::Result<PrivateKeyFiles> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if keys.is_empty() {
            return Ok(PrivateKeyFiles { dir: None, paths: Vec::new() });
        }
        let dir = std::env::temp_dir().join(format!("berth-ssh-keys-{}", random_hex(8)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let mut files = PrivateKeyFiles { dir: Some(dir.clone()), paths: Vec::new() };
        for (index, key) in keys.iter().enumerate() {
            let path = dir.join(format!("key-{index}"));
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            file.write_all(key.trim_end().as_bytes())?;
            file.write_all(b"\n")?;
            files.paths.push(path);
        }
        Ok(files)
    }
}

impl Drop for PrivateKeyFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What one role runs on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningVersion {
    pub host: String,
    pub role: String,
    /// None when no container of the role runs there (or the host could not be asked).
    pub version: Option<String>,
    /// Why the host could not be asked.
    pub error: Option<String>,
}
