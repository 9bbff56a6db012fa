//! The image of berth's own proxy, made from the running berth binary — no registry, no internet needed.
//!
//! The tarball holds the binary at `/usr/local/bin/kamal-proxy` (invoked by that name, berth *is* kamal-proxy's
//! CLI, so `docker exec kamal-proxy kamal-proxy deploy …` works whichever proxy sits on the host), the shared
//! libraries `ldd` lists for it (none for a static release build), and an empty `/tmp` for the control socket.
//! It is streamed over SSH into `docker import`, tagged by a hash of the binary so a new berth makes a new image.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::command::Cmd;

/// Where the binary lives in the image, and the name it answers to.
pub const BINARY_PATH: &str = "/usr/local/bin/kamal-proxy";
/// The repository of berth proxy images on each host.
pub const REPOSITORY: &str = "berth-proxy";

/// The kamal-proxy release whose control surface berth's proxy implements.
pub const KAMAL_PROXY_COMPATIBLE: &str = "0.9.2";

/// The image tag: `v<kamal-proxy version>.1-berth.<berth version>.<hash>`. Kamal reads the proxy's version
/// from the tag after the last `:` and refuses hosts whose proxy is older than v0.9.2 (Ruby's `Gem::Version`,
/// where any letter makes a pre-release, sorting before the plain version): the extra `.1` segment keeps the
/// tag above v0.9.2, so `kamal deploy` accepts a host whose proxy berth booted.
fn tag(berth_version: &str, hash: &str) -> String {
    format!("v{KAMAL_PROXY_COMPATIBLE}.1-berth.{berth_version}.{hash}")
}

/// A proxy image ready to import.
pub struct ProxyImage {
    /// `berth-proxy:v0.9.2.1-berth.<berth version>.<12 hex of the binary's sha256>` (see [`tag`])
    pub image: String,
    pub tarball: Vec<u8>,
}

impl ProxyImage {
    /// Builds the image from the berth binary that is running now.
    pub fn from_current_exe() -> io::Result<ProxyImage> {
        let exe = std::env::current_exe()?;
        ProxyImage::from_binary(&exe)
    }

    pub fn from_binary(binary: &Path) -> io::Result<ProxyImage> {
        let bytes = std::fs::read(binary)?;
        let digest = Sha256::digest(&bytes);
        let hash: String = digest.iter().take(6).map(|byte| format!("{byte:02x}")).collect();
        let image = format!("{REPOSITORY}:{}", tag(env!("CARGO_PKG_VERSION"), &hash));

        let mut tar = tar::Builder::new(Vec::new());
        let mut directories = std::collections::BTreeSet::new();
        for dir in ["tmp", "usr", "usr/local", "usr/local/bin", "home", "home/kamal-proxy"] {
            directories.insert(dir.to_string());
            append_dir(&mut tar, dir, if dir == "tmp" { 0o1777 } else { 0o755 })?;
        }
        append_file(&mut tar, BINARY_PATH, &bytes, 0o755)?;
        for library in shared_libraries(binary)? {
            let contents = std::fs::read(&library)?;
            let mut parents = PathBuf::new();
            for component in library.parent().into_iter().flat_map(Path::components).skip(1) {
                parents.push(component);
                if directories.insert(parents.to_string_lossy().into_owned()) {
                    append_dir(&mut tar, &parents.to_string_lossy(), 0o755)?;
                }
            }
            append_file(&mut tar, &library.to_string_lossy(), &contents, 0o755)?;
        }
        let tarball = tar.into_inner()?;
        Ok(ProxyImage { image, tarball })
    }

    /// `docker image inspect` that succeeds when a host already has this image.
    pub fn exists_cmd(&self) -> Cmd {
        Cmd::new("docker").args(["image", "inspect", "--format", "{{.Id}}"]).arg(&self.image)
    }

    /// `docker import` of the tarball on stdin, with the image config kamal-proxy's own image has (no entrypoint;
    /// `kamal-proxy run` found on PATH), so Kamal's `docker run … IMAGE kamal-proxy run` works with it too.
    pub fn import_cmd(&self) -> Cmd {
        Cmd::new("docker")
            .arg("import")
            .args(["--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin"])
            .args(["--change", "ENV HOME=/home/kamal-proxy"])
            .args(["--change", "CMD [\"kamal-proxy\", \"run\"]"])
            .args(["--change", "EXPOSE 80 443"])
            .args(["--change", "LABEL org.opencontainers.image.title=kamal-proxy"])
            .arg("-")
            .arg(&self.image)
    }
}

/// The libraries the dynamic loader would load for `binary`, from `ldd` (empty for a static binary).
fn shared_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let output = std::process::Command::new("ldd").arg(binary).output();
    let Ok(output) = output else { return Ok(Vec::new()) };
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(mode);
    header.set_size(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, format!("{}/", path.trim_start_matches('/')), io::empty())
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(contents.len() as u64);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, path.trim_start_matches('/'), contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_holds_the_binary_its_libraries_and_tmp() {
        let image = ProxyImage::from_binary(Path::new("/bin/true")).unwrap();
        assert!(image.image.starts_with("berth-proxy:"));
        let mut archive = tar::Archive::new(&image.tarball[..]);
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.contains(&"usr/local/bin/kamal-proxy".to_string()), "{names:?}");
        assert!(names.contains(&"tmp/".to_string()), "{names:?}");
        assert!(names.iter().any(|name| name.contains("libc.so")), "{names:?}");
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "docker import refuses duplicate paths: {names:?}");
        let again = ProxyImage::from_binary(Path::new("/bin/true")).unwrap();
        assert_eq!(image.image, again.image, "same binary, same tag");
    }

    /// Kamal's own check (`Kamal::Utils.older_version?` against `MINIMUM_VERSION`), run by Ruby itself.
    #[test]
    fn kamal_finds_the_tag_new_enough() {
        let image = format!("{REPOSITORY}:{}", tag(env!("CARGO_PKG_VERSION"), "3fa9c2b1d0e4"));
        let version = image.rsplit(':').next().unwrap(); // awk -F: '{print $NF}'
        let older = |version: &str| {
            let script = r#"print(Gem::Version.new(ARGV[0].delete_prefix("v")) < Gem::Version.new("0.9.2"))"#;
            let out = std::process::Command::new("ruby")
                .args(["-e", script, version])
                .output()
                .expect("ruby runs Kamal's version check (scripts/test.sh installs it)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(older("v0.9.1"), "true", "the check itself");
        assert_eq!(older(version), "false", "{version}");
    }
}
