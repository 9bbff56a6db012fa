//! Local registry mode (`registry.server: localhost:PORT`, Kamal 2.8+): instead of running a registry container
//! on the deployer and tunnelling each host's `localhost:PORT` back to it, berth saves the image once from the
//! engine that built it (the local one, or the remote builder's, over SSH) and streams it into `docker load` on
//! every host that lacks it, over the SSH connection it already has. The image keeps its `localhost:PORT/…`
//! name, so containers, `latest` tags and prune are exactly Kamal's; no registry, port or tunnel is involved.

use std::time::Instant;

use super::remote::{Remote, on_hosts};
use super::{Engine, EngineError};
use crate::commands::auditor::Message;
use crate::commands::{self, names};

impl Engine {
    /// `build pull` in local registry mode: the image from the engine that built it (the local one, or the
    /// remote builder's) to every app host without it.
    pub(super) async fn send_image_to_hosts(&self) -> Result<(), EngineError> {
        let builder = self.ssh_remote_builder().map(|address| (self.builder_connection(&address), address.host));
        let result = self.send_image_from(builder.as_ref().map(|(remote, host)| (remote, host.as_str()))).await;
        if let Some((remote, _)) = &builder {
            remote.ssh().close().await;
        }
        result.map_err(|error| self.explain_builder_error(error))
    }

    /// [`Engine::send_image_to_hosts`] from the local engine (`None`) or a builder host.
    async fn send_image_from(&self, builder: Option<(&Remote, &str)>) -> Result<(), EngineError> {
        let config = &self.config;
        let version = &config.version;
        let image = names::image(config, version);
        let id_query = commands::builder::image_id(config, version);
        let (source_id, source) = match builder {
            None => (
                self.local(id_query.script(), None).await.map(|id| id.trim().to_string()),
                "the local Docker engine".to_string(),
            ),
            Some((remote, host)) => (
                remote.run(host, &id_query).await.map(|output| output.stdout.trim().to_string()),
                format!("the remote builder {host}'s engine"),
            ),
        };
        let Ok(source_id) = source_id else {
            return Err(EngineError::Refused(format!(
                "{image} is not in {source} (registry.server {} is local registry mode: berth sends the image from there): build it with `berth build push`, or deploy without -P",
                config.registry.server.as_deref().unwrap_or_default()
            )));
        };
        let hosts = self.selection.app_hosts(config);
        let archive = ImageArchive::new();
        let result = self
            .stage(&format!("Send {image}"), hosts.len(), async {
                let mut missing = Vec::new();
                // Hosts that already hold this exact image (e.g. a redeploy) are skipped without a transfer, but
                // its `service` label is checked there too: a refused image stays loaded, as Kamal leaves it.
                let id_query = &id_query;
                let source_id = &source_id;
                let present = on_hosts(&hosts, |host| async move {
                    let id = self.remote().run_unchecked(&host, id_query).await?.stdout.trim().to_string();
                    if id == *source_id {
                        self.remote().run(&host, &commands::builder::validate_image(config, version)).await?;
                    }
                    Ok(id)
                })
                .await?;
                for (host, id) in hosts.iter().zip(present) {
                    if id == *source_id {
                        self.remote().report(host, &format!("{image} is already here"), Instant::now(), true);
                    } else {
                        missing.push(host.clone());
                    }
                }
                if !missing.is_empty() {
                    let started = Instant::now();
                    match builder {
                        None => {
                            let save = commands::builder::save(config, version, &archive.path_text());
                            self.local(save.script(), None).await?;
                        }
                        Some((remote, host)) => {
                            let mut file = tokio::fs::File::create(&archive.path).await.map_err(|source| {
                                EngineError::Local { what: format!("creating {}", archive.path.display()), source }
                            })?;
                            remote
                                .run_with_stdout_to(
                                    host,
                                    &commands::builder::save_to_stdout(config, version),
                                    &mut file,
                                )
                                .await?;
                        }
                    }
                    self.sink().emit(super::output::Event::Step {
                        host: None,
                        text: format!("Saved {image} ({})", archive.size_text()),
                        elapsed: started.elapsed(),
                        ok: true,
                    });
                }
                on_hosts(&missing, |host| {
                    let path = archive.path.clone();
                    let image = &image;
                    async move {
                        let started = Instant::now();
                        let audit = self.audit_record(&[], Message::PulledImage { version });
                        let load = audit
                            .and(commands::builder::load())
                            .and(commands::builder::validate_image(config, version));
                        let file = tokio::fs::File::open(&path).await.map_err(|source| EngineError::Local {
                            what: format!("reading {}", path.display()),
                            source,
                        })?;
                        self.remote().run_with_stdin_stream(&host, &load, file).await?;
                        self.remote().report(&host, &format!("Sent {image}"), started, true);
                        Ok(())
                    }
                })
                .await?;
                Ok(())
            })
            .await;
        drop(archive);
        result
    }
}

/// The temporary file an image is saved to, removed when this is dropped (also after a failure or Ctrl-C).
struct ImageArchive {
    path: std::path::PathBuf,
}

impl ImageArchive {
    fn new() -> ImageArchive {
        let name = format!("berth-image-{}.tar", super::app::random_hex(8));
        ImageArchive { path: std::env::temp_dir().join(name) }
    }

    fn path_text(&self) -> String {
        self.path.display().to_string()
    }

    fn size_text(&self) -> String {
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        format!("{:.1} MB", bytes as f64 / 1_000_000.0)
    }
}

impl Drop for ImageArchive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
