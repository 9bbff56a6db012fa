//! The persisted routing state: written atomically (temp file, fsync, rename, fsync of the directory) and
//! restored service by service, so one bad entry is reported and skipped instead of emptying the table.
//! kamal-proxy's own file is kept beside it ([`kamal`]), so either proxy can take over the other's host.

mod kamal;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ProxyError;
use super::options::ServiceOptions;
use super::router::{PauseState, RolloutSplit};

/// The state file's name inside the state directory (kamal-proxy's own file, `kamal-proxy.state`, is written
/// beside it in kamal-proxy's format).
pub const STATE_FILE: &str = "berth-proxy.state.json";

const FORMAT_VERSION: u32 = 1;

/// One service as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedService {
    pub name: String,
    pub options: ServiceOptions,
    pub targets: Vec<String>,
    #[serde(default)]
    pub rollout_targets: Vec<String>,
    #[serde(default)]
    pub rollout_split: Option<RolloutSplit>,
    #[serde(default)]
    pub pause: PauseState,
}

#[derive(Serialize, Deserialize)]
struct StateFile<T> {
    version: u32,
    services: Vec<T>,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Writes the state so that a crash at any point leaves either the old or the new file, never a torn one; first
/// kamal-proxy's copy (best effort: it only matters if kamal-proxy replaces this proxy), then berth's, which so
/// is never older than kamal-proxy's unless kamal-proxy wrote after it (see [`load`]).
pub fn save(path: &Path, services: &[PersistedService]) -> Result<(), ProxyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(kamal_json) = kamal::export(services, dir) {
        let _ = write_atomically(&dir.join(kamal::STATE_FILE), &kamal_json);
    }
    let json = serde_json::to_vec_pretty(&StateFile { version: FORMAT_VERSION, services: services.to_vec() })
        .map_err(|e| ProxyError::Protocol(format!("cannot encode state: {e}")))?;
    write_atomically(path, &json)
}

/// Temp file, fsync, rename over `path`, fsync of the directory.
fn write_atomically(path: &Path, json: &[u8]) -> Result<(), ProxyError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ProxyError::Io { action, path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create state directory", dir))?;
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::File::create(&temp).map_err(io("create", &temp))?;
    file.write_all(json).map_err(io("write", &temp))?;
    file.sync_all().map_err(io("fsync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io("rename into place", path))?;
    if let Ok(dir_handle) = std::fs::File::open(dir) {
        // Makes the rename itself durable; not all filesystems allow fsync on a directory, hence no error.
        let _ = dir_handle.sync_all();
    }
    Ok(())
}

/// Reads the state: every service that decodes, plus a description of each entry that did not. kamal-proxy's
/// file is read instead when it is newer than berth's (kamal-proxy ran here since) or berth's is missing.
pub fn load(path: &Path) -> (Vec<PersistedService>, Vec<String>) {
    let kamal_path = path.parent().unwrap_or(Path::new(".")).join(kamal::STATE_FILE);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let Some(kamal_time) = modified(&kamal_path)
        && modified(path).is_none_or(|berth_time| kamal_time > berth_time)
    {
        return match std::fs::read(&kamal_path) {
            Ok(text) => {
                let (services, mut notes) = kamal::import(&text);
                notes.insert(
                    0,
                    format!("restoring {} service(s) from kamal-proxy's {}", services.len(), kamal_path.display()),
                );
                (services, notes)
            }
            Err(e) => (Vec::new(), vec![format!("cannot read {}: {e}", kamal_path.display())]),
        };
    }
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![format!("cannot read {}: {e}", path.display())]),
    };
    let file: StateFile<serde_json::Value> = match serde_json::from_slice(&text) {
        Ok(file) => file,
        Err(e) => {
            let kept = path.with_extension("corrupt");
            let _ = std::fs::copy(path, &kept);
            return (
                Vec::new(),
                vec![format!(
                    "{} is not a valid state file ({e}); a copy is kept at {}",
                    path.display(),
                    kept.display()
                )],
            );
        }
    };
    let mut services = Vec::new();
    let mut problems = Vec::new();
    for (index, entry) in file.services.into_iter().enumerate() {
        let name = entry.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
        match serde_json::from_value::<PersistedService>(entry) {
            Ok(service) => services.push(service),
            Err(e) => problems.push(format!("state entry {index} (service {name:?}) skipped: {e}")),
        }
    }
    (services, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> PersistedService {
        PersistedService {
            name: name.to_string(),
            options: ServiceOptions { hosts: vec![format!("{name}.example.com")], ..ServiceOptions::default() },
            targets: vec![format!("{name}-1:80")],
            rollout_targets: vec![],
            rollout_split: None,
            pause: PauseState::Stopped { message: "back soon".into() },
        }
    }

    #[test]
    fn state_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        save(&path, &[service("a"), service("b")]).unwrap();
        let (services, problems) = load(&path);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(services, vec![service("a"), service("b")]);
        let mut leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        leftovers.sort();
        assert_eq!(leftovers, [STATE_FILE, kamal::STATE_FILE], "no temporary file stays");
    }

    #[test]
    fn one_bad_entry_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        save(&path, &[service("a"), service("b")]).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["services"][0]["targets"] = serde_json::json!("not a list");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let (services, problems) = load(&path);
        assert_eq!(services, vec![service("b")]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("\"a\""), "{problems:?}");
    }

    #[test]
    fn kamal_proxys_file_is_kept_beside_and_read_when_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        save(&path, &[service("a")]).unwrap();
        let kamal_path = dir.path().join(kamal::STATE_FILE);
        assert!(kamal_path.exists(), "kamal-proxy's copy is written too");
        let (services, notes) = load(&path);
        assert_eq!((services, notes), (vec![service("a")], vec![]), "berth's own file wins when not older");

        // kamal-proxy replaced berth's proxy and deployed another version: its file is newer.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut kamal_json: serde_json::Value = serde_json::from_slice(&std::fs::read(&kamal_path).unwrap()).unwrap();
        kamal_json[0]["active_targets"] = serde_json::json!(["a-2:80"]);
        std::fs::write(&kamal_path, serde_json::to_vec(&kamal_json).unwrap()).unwrap();
        let (services, notes) = load(&path);
        assert_eq!(services[0].targets, ["a-2:80"]);
        assert_eq!(services[0].pause, PauseState::Stopped { message: "back soon".into() });
        assert!(notes[0].contains("from kamal-proxy's"), "{notes:?}");
    }

    #[test]
    fn garbage_file_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        std::fs::write(&path, "{not json").unwrap();
        let (services, problems) = load(&path);
        assert!(services.is_empty());
        assert!(problems[0].contains("copy is kept"), "{problems:?}");
    }
}
