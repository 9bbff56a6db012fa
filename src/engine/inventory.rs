//! What a host runs of the app, from one `docker ps --all` (`commands::app::inventory`): the running version of
//! each role, a same-named container in the way, what a deploy stops and what prune removes — decided here, in
//! pure code, instead of one `docker` call per question as Kamal's shell pipelines do.

use std::collections::BTreeSet;

/// One container of the app on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub id: String,
    /// `running`, `restarting`, `exited`, `created`, `dead`, `paused`.
    pub state: String,
    /// The image reference it was created from (`registry/app:v7`).
    pub image: String,
    pub role: String,
}

impl Container {
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "restarting")
    }

    fn is_prunable(&self) -> bool {
        matches!(self.state.as_str(), "created" | "exited" | "dead")
    }
}

/// The app's containers on one host, newest first (docker's order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub containers: Vec<Container>,
    /// Ids of the containers made from the image tagged `latest`.
    pub from_latest: BTreeSet<String>,
}

impl Inventory {
    /// Reads `commands::app::inventory`'s output: `INVENTORY_FORMAT` lines, then the ids made from `latest`.
    pub fn parse(text: &str) -> Inventory {
        let (listing, from_latest) = match text.split_once(crate::commands::app::INVENTORY_FROM_LATEST) {
            Some((listing, ids)) => (listing, ids.split_whitespace().map(str::to_string).collect()),
            None => (text, BTreeSet::new()),
        };
        let containers = listing
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                Some(Container {
                    name: fields.next()?.trim().to_string(),
                    id: fields.next()?.trim().to_string(),
                    state: fields.next()?.trim().to_string(),
                    image: fields.next()?.trim().to_string(),
                    role: fields.next().unwrap_or_default().trim().to_string(),
                })
            })
            .filter(|container| !container.name.is_empty())
            .collect();
        Inventory { containers, from_latest }
    }

    /// Running containers of `role`, newest first.
    pub fn running<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.iter().filter(move |container| container.role == role && container.is_running())
    }

    /// The version `role` runs and that container: as Kamal decides, the newest running container made from
    /// the image tagged `latest`, else the newest running one; the version is its name without `prefix-`.
    pub fn running_version<'a>(&'a self, role: &'a str, prefix: &str) -> Option<(String, &'a Container)> {
        let container = self
            .running(role)
            .find(|container| self.from_latest.contains(&container.id))
            .or_else(|| self.running(role).next())?;
        let version = container.name.strip_prefix(prefix)?.strip_prefix('-')?;
        Some((version.to_string(), container))
    }

    pub fn named(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|container| container.name == name)
    }

    /// Stopped containers beyond the newest `retain` (Kamal's `prune containers`: service-wide, all roles).
    pub fn prunable(&self, retain: usize) -> Vec<&Container> {
        self.containers.iter().filter(|container| container.is_prunable()).skip(retain).collect()
    }

    /// The same host after `ids` were stopped.
    pub fn after_stopping(&self, ids: &[String]) -> Inventory {
        let mut after = self.clone();
        for container in &mut after.containers {
            if ids.iter().any(|id| container.id.starts_with(id.as_str()) || id.starts_with(container.id.as_str())) {
                container.state = "exited".to_string();
            }
        }
        after
    }

    /// Images only the `removed` containers used: none of the others, nor `keep` (the image just deployed),
    /// and never a `latest` tag. What a prune can remove without listing the images.
    pub fn images_freed_by(&self, removed: &[&Container], keep: &str) -> Vec<String> {
        let removed_ids: BTreeSet<&str> = removed.iter().map(|container| container.id.as_str()).collect();
        let still_used: BTreeSet<&str> = self
            .containers
            .iter()
            .filter(|container| !removed_ids.contains(container.id.as_str()))
            .map(|container| container.image.as_str())
            .chain([keep])
            .collect();
        let mut freed: Vec<String> = Vec::new();
        for container in removed {
            let tag = container.image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
            let latest = tag == "latest" || tag.starts_with("latest-");
            if !latest && !still_used.contains(container.image.as_str()) && !freed.contains(&container.image) {
                freed.push(container.image.clone());
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "app-web-v3\tc3\trunning\tr/app:v3\tweb\n\
        app-workers-v3\tw3\trunning\tr/app:v3\tworkers\n\
        app-web-v2\tc2\texited\tr/app:v2\tweb\n\
        app-web-v1_replaced_ab12\tc1r\texited\tr/app:v1\tweb\n\
        app-web-v1\tc1\texited\tr/app:v1\tweb\n\
        app-web-api-v9\tx9\trunning\tr/app:v9\tweb-api\n";

    #[test]
    fn the_running_version_is_the_newest_running_container_of_the_role() {
        let inventory = Inventory::parse(LISTING);
        let (version, container) = inventory.running_version("web", "app-web").unwrap();
        assert_eq!((version.as_str(), container.id.as_str()), ("v3", "c3"));
        assert_eq!(inventory.running_version("web-api", "app-web-api").unwrap().0, "v9", "roles apart by label");
        assert_eq!(inventory.running_version("db", "app-db"), None);
        assert!(inventory.named("app-web-v2").is_some());
    }

    #[test]
    fn a_running_container_of_the_latest_image_is_preferred_as_kamal_does() {
        // v4 runs too (left by a deploy that never tagged it latest): v3, from `latest`, is the current version.
        let listing = format!(
            "app-web-v4\tc4\trunning\tr/app:v4\tweb\n{LISTING}{}\nc3\nc2\n",
            crate::commands::app::INVENTORY_FROM_LATEST
        );
        let inventory = Inventory::parse(&listing);
        assert_eq!(inventory.containers.len(), 7, "the id lines are not containers");
        assert_eq!(inventory.running_version("web", "app-web").unwrap().0, "v3");
        let without_latest = format!("{}\n", crate::commands::app::INVENTORY_FROM_LATEST);
        let inventory = Inventory::parse(&format!("app-web-v4\tc4\trunning\tr/app:v4\tweb\n{LISTING}{without_latest}"));
        assert_eq!(inventory.running_version("web", "app-web").unwrap().0, "v4", "else the newest running one");
    }

    #[test]
    fn prune_keeps_the_newest_stopped_containers_and_images_still_used() {
        let inventory = Inventory::parse(LISTING);
        let prunable: Vec<&str> = inventory.prunable(1).iter().map(|c| c.id.as_str()).collect();
        assert_eq!(prunable, ["c1r", "c1"]);
        let removed = inventory.prunable(1);
        assert_eq!(inventory.images_freed_by(&removed, "r/app:v4"), ["r/app:v1"]);
        assert!(inventory.images_freed_by(&removed, "r/app:v1").is_empty(), "the deployed image stays");
    }

    #[test]
    fn stopping_makes_containers_prunable() {
        let inventory = Inventory::parse(LISTING).after_stopping(&["c3".to_string()]);
        let prunable: Vec<&str> = inventory.prunable(2).iter().map(|c| c.id.as_str()).collect();
        assert_eq!(prunable, ["c1r", "c1"], "c3 and c2 are the newest stopped ones now");
    }
}
