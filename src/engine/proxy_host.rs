//! The proxy container on each host (`kamal-proxy`, on the `kamal` network): ensured before a deploy, rebooted,
//! removed. berth's own proxy image is imported from the running binary when a host lacks it; a host that
//! already runs a proxy (berth's or Kamal's kamal-proxy) keeps it — both answer the same control commands.

use std::time::Instant;

use super::proxy_image::ProxyImage;
use super::remote::on_hosts;
use super::{Engine, EngineError};
use crate::commands::auditor::Message;
use crate::commands::proxy;

impl Engine {
    /// The proxy image to run: the one `proxy.run` names (`registry`/`repository`/`version`), else berth's own.
    fn configured_proxy_image(&self) -> Option<String> {
        let names_an_image = |proxy: &yaml_serde::Mapping| {
            let run = proxy.get("run").and_then(yaml_serde::Value::as_mapping);
            run.is_some_and(|run| ["registry", "repository", "version"].iter().any(|key| run.contains_key(*key)))
        };
        let configured = self.config.roles.iter().filter_map(|role| role.proxy.as_ref()).any(names_an_image);
        let host = self.proxy_hosts().into_iter().next()?;
        configured.then(|| proxy::run_config_for_host(&self.config, &host).unwrap_or_default().image())
    }

    /// `proxy.run` settings for `host` (Kamal's defaults when there are none).
    fn proxy_run(&self, host: &str) -> proxy::ProxyRun {
        proxy::run_config_for_host(&self.config, host).unwrap_or_default()
    }

    /// Where the proxy image comes from (berth's own is read from the binary once, when first needed).
    fn proxy_image_source(&self) -> Result<ImageSource, EngineError> {
        if let Some(image) = self.configured_proxy_image() {
            return Ok(ImageSource::Registry(image));
        }
        if let Some(image) = self.proxy_image.get() {
            return Ok(ImageSource::Berth(image.clone()));
        }
        let image = ProxyImage::from_current_exe().map_err(|source| EngineError::Local {
            what: "reading the berth binary for the proxy image".into(),
            source,
        })?;
        Ok(ImageSource::Berth(self.proxy_image.get_or_init(|| std::sync::Arc::new(image)).clone()))
    }

    /// `proxy boot`: the `kamal` network on every selected host; on proxy hosts, start the proxy container
    /// (importing berth's proxy image if needed). A running proxy is left as it is.
    pub async fn boot_proxy(&self) -> Result<(), EngineError> {
        let hosts = self.selection.hosts.clone();
        let proxy_hosts = self.proxy_hosts();
        self.stage("Ensure the proxy", proxy_hosts.len(), async {
            on_hosts(&hosts, |host| {
                let proxied = proxy_hosts.contains(&host);
                async move { self.ensure_proxy_on(&host, proxied).await }
            })
            .await
        })
        .await?;
        Ok(())
    }

    /// On one host: the `kamal` network, and on a proxy host a running proxy. One `docker` call when the proxy
    /// runs already (then its network exists too).
    pub(crate) async fn ensure_proxy_on(&self, host: &str, proxied: bool) -> Result<(), EngineError> {
        let started = Instant::now();
        if !proxied {
            self.remote().run(host, &proxy::ensure_network()).await?;
            return Ok(());
        }
        let state = self.remote().run_unchecked(host, &container_state()).await?;
        let state = state.stdout.trim();
        if state == "running" {
            self.remote().report(host, "Proxy already running", started, true);
            return Ok(());
        }
        self.remote().run(host, &proxy::ensure_network()).await?;
        if !state.is_empty() {
            self.remote().run(host, &proxy::start()).await?;
            self.remote().report(host, "Started the proxy", started, true);
            return Ok(());
        }
        let image_name = self.ensure_proxy_image(host, &self.proxy_image_source()?).await?;
        let run = proxy::ensure_apps_config_directory().and(proxy::run(&self.proxy_run(host), &image_name));
        self.remote().run(host, &run).await?;
        self.remote().report(host, &format!("Booted the proxy ({image_name})"), started, true);
        Ok(())
    }

    /// Hosts of the selected roles that run the proxy, and of proxied accessories.
    pub fn proxy_hosts(&self) -> Vec<String> {
        let mut hosts = self.selection.proxy_hosts(&self.config);
        for accessory in self.config.accessories.iter().filter(|accessory| accessory.proxy.is_some()) {
            for host in &accessory.hosts {
                if self.selection.hosts.contains(host) && !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
        }
        hosts
    }

    /// Makes sure `host` has the proxy image; returns its name.
    async fn ensure_proxy_image(&self, host: &str, image: &ImageSource) -> Result<String, EngineError> {
        match image {
            ImageSource::Registry(name) => {
                self.registry_login(host).await?;
                self.remote().run(host, &crate::command::Cmd::new("docker").arg("pull").arg(name)).await?;
                Ok(name.clone())
            }
            ImageSource::Berth(proxy_image) => {
                let present = self.remote().run_unchecked(host, &proxy_image.exists_cmd()).await?;
                if present.exit_status != 0 {
                    let started = Instant::now();
                    let tarball: &[u8] = &proxy_image.tarball;
                    let lines = super::remote::DiscardLines;
                    let output = self
                        .remote()
                        .ssh()
                        .run_with_stdin_stream(host, &proxy_image.import_cmd(), tarball, &lines)
                        .await?;
                    if output.exit_status != 0 {
                        return Err(EngineError::CommandFailed {
                            host: host.to_string(),
                            command: proxy_image.import_cmd().to_string(),
                            status: output.exit_status,
                            output: output.stderr,
                        });
                    }
                    self.remote().report(host, &format!("Imported {}", proxy_image.image), started, true);
                }
                Ok(proxy_image.image.clone())
            }
        }
    }

    /// `proxy reboot`: replace the proxy container on each host (brief outage per host; routes come back from
    /// the proxy's state volume). `rolling`: one host at a time.
    pub async fn reboot_proxy(&self, rolling: bool) -> Result<(), EngineError> {
        let hosts = self.proxy_hosts();
        let image = self.proxy_image_source()?;
        let groups: Vec<Vec<String>> =
            if rolling { hosts.iter().map(|h| vec![h.clone()]).collect() } else { vec![hosts.clone()] };
        for group in groups {
            let hosts_var = group.join(",");
            self.run_hook("pre-proxy-reboot", &[("KAMAL_HOSTS", hosts_var.clone())]).await?;
            self.stage("Reboot the proxy", group.len(), async {
                on_hosts(&group, |host| {
                    let image = image.clone();
                    async move {
                        let started = Instant::now();
                        let image_name = self.ensure_proxy_image(&host, &image).await?;
                        self.remote().run(&host, &proxy::ensure_network()).await?;
                        self.remote().run(&host, &self.audit_record(&[], Message::RebootedProxy)).await?;
                        // As Kamal: the proxy may not be running (stopped, or never booted here).
                        self.remote().run_tolerating_exit(&host, &proxy::stop_container()).await?;
                        self.remote().run(&host, &proxy::remove_container()).await?;
                        self.remote().run(&host, &proxy::ensure_apps_config_directory()).await?;
                        self.remote().run(&host, &proxy::run(&self.proxy_run(&host), &image_name)).await?;
                        self.remote().report(&host, &format!("Rebooted the proxy ({image_name})"), started, true);
                        Ok(())
                    }
                })
                .await
            })
            .await?;
            self.run_hook("post-proxy-reboot", &[("KAMAL_HOSTS", hosts_var)]).await?;
        }
        Ok(())
    }
}

/// Where the proxy image comes from.
#[derive(Clone)]
pub(crate) enum ImageSource {
    /// Pulled from a registry (`proxy.run.registry/repository/version`).
    Registry(String),
    /// berth's own, imported from the running binary.
    Berth(std::sync::Arc<ProxyImage>),
}

/// `running`, `exited`, … of the proxy container; empty output (and a failure) when there is none.
fn container_state() -> crate::command::Cmd {
    crate::command::Cmd::new("docker").args([
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        crate::commands::names::PROXY_CONTAINER,
    ])
}
